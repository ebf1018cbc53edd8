using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>swiglu.cu and the dense MLP path on every backend present (checks: src/Model/Selftest/MlpCases.cs).</summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class MlpKernelTests(string backend) : KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(MlpCases), nameof(MlpCases.SwiGlu))]
    public void SwiGlu(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(MlpCases), nameof(MlpCases.DenseMlp))]
    public void DenseMlp(KernelCase c) => Passes(c);
}

public sealed class SwiGluLauncherTests
{
    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(SwiGluParams), "swiglu.cu", "SwiGluParams");

    [Test]
    public void RejectsBadShapes()
    {
        using var emu = new EmulatorContext();
        var l = new SwiGluLaunchers(emu.Loader);
        var p = emu.Alloc<ushort>(64);
        var e = Assert.Throws<ArgumentException>(() => l.SwiGlu(emu.Stream, p, 12, p, 24, 1, 12));
        Assert.That(e!.Message, Does.StartWith("swiglu_bf16: intermediate size 12 must be a positive multiple of 8"));
        e = Assert.Throws<ArgumentException>(() => l.SwiGlu(emu.Stream, p, 16, p, 24, 1, 16));
        Assert.That(e!.Message, Does.StartWith("swiglu_bf16: input stride 24 must be a multiple of 8 and at least 2 x 16"));
    }
}
