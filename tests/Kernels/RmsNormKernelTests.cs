using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>rmsnorm.cu on every backend present (checks: src/Model/Selftest/NormRopeCases.cs).</summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class RmsNormKernelTests(string backend) : KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(NormRopeCases), nameof(NormRopeCases.AddRmsNorm))]
    public void AddRmsNorm(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(NormRopeCases), nameof(NormRopeCases.RmsNormHeads))]
    public void RmsNormHeads(KernelCase c) => Passes(c);
}

public sealed class RmsNormLauncherTests
{
    [Test]
    public void ParamsMirrorsMatchCuda()
    {
        StructLayoutCheck.AssertMatches(typeof(AddRmsNormParams), "rmsnorm.cu", "AddRmsNormParams");
        StructLayoutCheck.AssertMatches(typeof(RmsNormHeadsParams), "rmsnorm.cu", "RmsNormHeadsParams");
    }

    [Test]
    public void RejectsWidthNotMultipleOf8()
    {
        using var emu = new EmulatorContext();
        Assert.Throws<ArgumentException>(() => new RmsNormLaunchers(emu.Loader).AddRmsNorm(emu.Stream, default, default, default, default, 1, 12, 1e-6f));
    }
}
