using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>rope.cu (qk_norm_rope_kv_write) on every backend present (checks: src/Model/Selftest/NormRopeCases.cs).</summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class RopeKernelTests(string backend) : KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(NormRopeCases), nameof(NormRopeCases.Rope))]
    public void QkNormRopeKvWrite(KernelCase c) => Passes(c);
}

public sealed class RopeLauncherTests
{
    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(QkNormRopeParams), "rope.cu", "QkNormRopeParams");

    [Test]
    public void RejectsUnsupportedHeadDim()
    {
        using var emu = new EmulatorContext();
        Assert.Throws<ArgumentException>(() => _ = new RopeLaunchers(emu.Loader, 96));
    }
}
