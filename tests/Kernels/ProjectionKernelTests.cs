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
            Assert.That(t * plan.KSplit * 4, Is.LessThanOrEqualTo(44 * 1024), $"x slice (fp32) fits in 44 KiB: {plan}");
            Assert.That(plan.SplitK * plan.KSplit, Is.GreaterThanOrEqualTo(k), $"the splits cover K: {plan}");
            // the norm prologue: about half the CTAs, never fewer than 2 per SM or 1 row per warp, the same workspace
            GemvPlan norm = gemv.Plan(t, n, k, WeightFormat.Bf16, normPrologue: true);
            Assert.That(norm.RowsPerWarp == 1 || norm.GridX >= 2 * 132, $"norm plan {norm} covers the SMs twice");
            Assert.That(norm.PartialBytes(t, n), Is.EqualTo(plan.PartialBytes(t, n)), $"norm plan {norm} vs {plan}: the same workspace");
        }
        Assert.That(gemv.Plan(1, 151936, 2048).RowsPerWarp, Is.EqualTo(8), "lm_head: 8 rows per warp");
        Assert.That((gemv.Plan(1, 5120, 2048).RowsPerWarp, gemv.Plan(1, 5120, 2048, WeightFormat.Bf16, normPrologue: true).RowsPerWarp), Is.EqualTo((1, 2)),
            "qkv: 640 CTAs of one row per warp, 320 of two with the norm prologue");
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
