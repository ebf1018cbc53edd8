using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// embedding.cu, sampling.cu, penalties.cu and check_finite.cu on every backend present (checks: src/Model/Selftest/SamplingCases.cs),
/// including issue 12's fault 5 (the draw at a warp boundary of the scan: a gap or an overlap of the old per-thread claim).
/// </summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class EmbeddingSamplingKernelTests(string backend) : KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(SamplingCases), nameof(SamplingCases.All))]
    public void Check(KernelCase c) => Passes(c);
}

public sealed class EmbeddingSamplingLauncherTests
{
    [Test]
    public void ParamsMirrorsMatchCuda()
    {
        StructLayoutCheck.AssertMatches(typeof(EmbeddingParams), "embedding.cu", "EmbeddingParams");
        StructLayoutCheck.AssertMatches(typeof(SampleRowSettings), "sampling.cu", "SampleRowSettings");
        StructLayoutCheck.AssertMatches(typeof(SampleRowsParams), "sampling.cu", "SampleRowsParams");
        StructLayoutCheck.AssertMatches(typeof(CheckFiniteParams), "check_finite.cu", "CheckFiniteParams");
        StructLayoutCheck.AssertMatches(typeof(PenaltyRow), "penalties.cu", "PenaltyRow");
        StructLayoutCheck.AssertMatches(typeof(PenaltiesParams), "penalties.cu", "PenaltiesParams");
    }

    [Test]
    public void CheckFinite_RejectsUnsupportedShapes()
    {
        using var emu = new EmulatorContext();
        var check = new CheckFiniteLaunchers(emu.Loader);
        Assert.That(() => check.CheckFinite(emu.Stream, default, 12, default, 1, 12, 0, default), Throws.ArgumentException.With.Message.Contains("multiple of 8"));
        Assert.That(() => check.CheckFinite(emu.Stream, default, 16, default, 1, 8, 4096, default), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }
}
