using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// gemv.cu and gemm.cu on every backend present (checks: src/Model/Selftest/ProjectionCases.cs). On the emulator the real
/// decode shapes (qkv, o_proj, lm_head: the slowest kernel check, ~40 s there) also hold DRAM bytes, coalescing and grid
/// to bounds; the GEMM cases check that the tensor-core path ran.
/// </summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class ProjectionKernelTests(string backend) : KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(ProjectionCases), nameof(ProjectionCases.Gemv))]
    public void Gemv(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(ProjectionCases), nameof(ProjectionCases.Gemm))]
    public void Gemm(KernelCase c) => Passes(c);
}

public sealed class ProjectionLauncherTests
{
    private EmulatorContext _emu = null!;

    [OneTimeSetUp]
    public void SetUp() => _emu = new EmulatorContext();

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    [Test]
    public void PlanCoversTheMultiprocessorsAtDecodeShapes()
    {
        var gemv = new GemvLaunchers(_emu.Loader);
        foreach (var (t, n, k) in new[] { (1, 5120, 2048), (1, 2048, 4096), (1, 151936, 2048), (8, 151936, 2048), (1, 128, 2048), (8, 2048, 4096) })
        {
            GemvPlan plan = gemv.Plan(t, n, k);
            Assert.That(plan.Ctas, Is.GreaterThanOrEqualTo(n >= 2048 ? 132 : 128), $"CTAs for T {t} N {n} K {k}: {plan}");
            Assert.That(t * plan.KSplit * 2, Is.LessThanOrEqualTo(32 * 1024), $"x slice fits in 32 KiB: {plan}");
            Assert.That(plan.SplitK * plan.KSplit, Is.GreaterThanOrEqualTo(k), $"the splits cover K: {plan}");
        }
        Assert.That(gemv.Plan(1, 151936, 2048).RowsPerWarp, Is.EqualTo(8), "lm_head: 8 rows per warp");
    }

    [Test]
    public void ChoosesBigTilesOnlyWhenTheyFillTheMachine()
    {
        var gemm = new GemmLaunchers(_emu.Loader);
        Assert.That(gemm.ChooseTile(2048, 5120), Is.EqualTo(GemmTile.Tile128x128));
        Assert.That(gemm.ChooseTile(64, 5120), Is.EqualTo(GemmTile.Tile64x64));
    }

    [Test]
    public void ParamsMirrorsMatchCuda()
    {
        StructLayoutCheck.AssertMatches(typeof(GemvParams), "gemv.cu", "GemvParams");
        StructLayoutCheck.AssertMatches(typeof(GemmParams), "gemm.cu", "GemmParams");
    }

    [Test]
    public void RejectsBadShapes()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new GemvLaunchers(_emu.Loader).Gemv(_emu.Stream, default, 8, default, 8, default, default, 9, 8, 8, default, 0));
        Assert.Throws<ArgumentException>(() => new GemmLaunchers(_emu.Loader).Gemm(_emu.Stream, default, 8, default, 12, default, 12, default, 4, 8, 12));
    }
}
