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
            Assert.That(plan.TensorCores ? t * (plan.KSplit + 32) * 2 : t * plan.KSplit * 4, Is.LessThanOrEqualTo(44 * 1024), $"x slice (bf16 rows on tensor cores, else fp32) fits in 44 KiB: {plan}");
            Assert.That(plan.SplitK * plan.KSplit, Is.GreaterThanOrEqualTo(k), $"the splits cover K: {plan}");
            // the norm prologue: about half the CTAs, never fewer than 2 per SM or 1 row per warp, the same workspace
            GemvPlan norm = gemv.Plan(t, n, k, WeightFormat.Bf16, normPrologue: true);
            Assert.That(norm.RowsPerWarp == 1 || norm.GridX >= 2 * 132, $"norm plan {norm} covers the SMs twice");
            Assert.That(norm.PartialBytes(t, n), Is.EqualTo(plan.PartialBytes(t, n)), $"norm plan {norm} vs {plan}: the same workspace");
        }
        Assert.That(gemv.Plan(1, 151936, 2048).RowsPerWarp, Is.EqualTo(8), "lm_head: 8 rows per warp");
        var core = new GemvLaunchers(_emu.Loader, tensorCores: false);
        Assert.That((core.Plan(1, 5120, 2048).RowsPerWarp, core.Plan(1, 5120, 2048, WeightFormat.Bf16, normPrologue: true).RowsPerWarp), Is.EqualTo((1, 2)),
            "qkv on CUDA cores: 640 CTAs of one row per warp, 320 of two with the norm prologue");
        Assert.That((gemv.Plan(1, 5120, 2048).RowsPerWarp, gemv.Plan(1, 5120, 2048, WeightFormat.Bf16, normPrologue: true).RowsPerWarp), Is.EqualTo((2, 2)),
            "qkv on tensor cores: 320 CTAs of two row groups either way");
    }

    /// <summary>
    /// gemv_bf16_mma takes the decode shapes of Qwen3-30B-A3B on 132 SMs with the rows per CTA of the CUDA-core plan with
    /// the norm prologue, and no split:
    /// qkv with its norm prologue 320 CTAs of 2 row groups, o_proj 256 of 1, the lm_head 2374 of 8, and 8 tokens of the
    /// lm_head too (33 KB of bf16 x, where the fp32 slice splits K). It leaves the CUDA-core kernel what it cannot take:
    /// quantized weights, 8 tokens of o_proj (66 KB of x), grids under one CTA per SM (split K to fill them), a K that the
    /// warps of a group cannot share in 32-wide steps.
    /// </summary>
    [Test]
    public void TensorCorePlan_TakesTheDecodeShapes_AndLeavesTheRest()
    {
        Assert.That(GemvLaunchers.TensorCorePlan(132, 1, 5120, 2048, WeightFormat.Bf16, normPrologue: true), Is.EqualTo(new GemvPlan(2, 1, 2048, 320, true)));
        Assert.That(GemvLaunchers.TensorCorePlan(132, 1, 5120, 2048, WeightFormat.Bf16), Is.EqualTo(new GemvPlan(2, 1, 2048, 320, true)),
            "without the prologue the same row groups (the CUDA-core plan would take 640 CTAs of 1), so the unfused pair sums in the same order");
        Assert.That(GemvLaunchers.TensorCorePlan(132, 1, 2048, 4096, WeightFormat.Bf16), Is.EqualTo(new GemvPlan(1, 1, 4096, 256, true)));
        Assert.That(GemvLaunchers.TensorCorePlan(132, 1, 151936, 2048, WeightFormat.Bf16, normPrologue: true), Is.EqualTo(new GemvPlan(8, 1, 2048, 2374, true)));
        Assert.That(GemvLaunchers.TensorCorePlan(132, 8, 151936, 2048, WeightFormat.Bf16, normPrologue: true), Is.EqualTo(new GemvPlan(8, 1, 2048, 2374, true)));
        Assert.That(GemvLaunchers.Plan(132, 8, 151936, 2048, normPrologue: true).SplitK, Is.EqualTo(2), "the fp32 slice of 8 tokens splits K 2048");
        foreach (var (t, n, k, f, why) in new[]
        {
            (1, 5120, 2048, WeightFormat.Int8Channel, "quantized"),
            (8, 2048, 4096, WeightFormat.Bf16, "8 x (4096 + 32) bf16 = 66 KB of x"),
            (1, 1024, 2048, WeightFormat.Bf16, "128 CTAs: split K to fill 132 SMs"),
            (1, 4096, 2056, WeightFormat.Bf16, "K 2056: 8 warps cannot share it in 32-wide steps"),
        })
        {
            GemvPlan core = GemvLaunchers.Plan(132, t, n, k, f == WeightFormat.Bf16 ? 8 : 16);
            Assert.That(GemvLaunchers.TensorCorePlan(132, t, n, k, f), Is.EqualTo(core), why);
            Assert.That(core.TensorCores, Is.False, why);
        }
        var emu = new GemvLaunchers(_emu.Loader);
        Assert.That(emu.Plan(1, 5120, 2048, WeightFormat.Bf16, normPrologue: true).TensorCores, Is.True, "the launchers plan what they launch");
        Assert.That(new GemvLaunchers(_emu.Loader, tensorCores: false).Plan(1, 5120, 2048, WeightFormat.Bf16, normPrologue: true).TensorCores, Is.False, "unless told not to");
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
