using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// kernels/persistent_gemv.cu: a chain of GEMVs in one launch whose CTAs pull tiles and wait on per-stage counters
/// (docs/kernels.md, "Persistent launches"). Its rows are computed by the same code as gemv_bf16_t1 (gemv.cuh), so the
/// chain must equal that kernel launched once per stage bit for bit (exact: no tolerance), whatever the grid and however
/// the emulator schedules the CTAs: one after another, in parallel, or co-resident and interleaved. The shape (dim
/// 1280) is one the GEMV launcher does not split over K, so both add the same products in the same order. The oracle's
/// rows are also checked against an fp64 reference (<see cref="AssertNearReference"/>, its tolerance stated there).
/// </summary>
[TestFixture]
public class PersistentGemvTests
{
    const int Dim = 1280, Stages = 3;

    private static readonly object[] Modes =
    [
        new object[] { "sequential", new EmulatorOptions { Sequential = true }, false },
        new object[] { "parallel", new EmulatorOptions { ConcurrentTilesInOrder = true }, false },
        new object[] { "co-resident, interleaved", new EmulatorOptions { Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 3 + EmulatorModes.Ambient.ScheduleSeed } }, true },
    ];

    /// <summary>Weights ~ U(-1, 1) / sqrt(dim) and the input ~ U(-1, 1), as bf16 bits (activations stay of order 1).</summary>
    static (ushort[] W, ushort[] X) Data(int seed)
    {
        var rng = new Random(seed);
        float scale = 1f / MathF.Sqrt(Dim);
        var w = new ushort[Stages * Dim * Dim];
        for (int i = 0; i < w.Length; i++) w[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1) * scale);
        var x = new ushort[Dim];
        for (int i = 0; i < x.Length; i++) x[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1));
        return (w, x);
    }

    /// <summary>The chain as gemv_bf16_t1 launched once per stage: the oracle.</summary>
    static ushort[] Oracle(KernelCheckContext emu, DevicePtr w, ushort[] x)
    {
        var gemv = new GemvLaunchers(emu.Loader, tensorCores: false);   // gemv_bf16_t1, whose sums persistent_gemv shares
        Assert.That(gemv.Plan(1, Dim, Dim).SplitK, Is.EqualTo(1), "the oracle's GEMV must not split K (a different sum order)");
        var act = emu.Upload<ushort>([.. x, .. new ushort[Stages * Dim]]);
        for (int s = 0; s < Stages; s++)
            gemv.Gemv(emu.Stream, act + (long)(s + 1) * Dim * 2, Dim, act + (long)s * Dim * 2, Dim, w + (long)s * Dim * Dim * 2, default, 1, Dim, Dim, default, 0);
        emu.Synchronize();
        return emu.Download<ushort>(act, (Stages + 1) * Dim);
    }

    [TestCaseSource(nameof(Modes))]
    public void Chain_EqualsOneGemvLaunchPerStage_Bitwise_AndLeavesItsCountersZero(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        // 2 rows per warp: 16-row tiles, 80 per stage, 240 in all, pulled by 24 CTAs; then again by 7 CTAs of 64-row tiles
        ChainMatchesTheOracle(ctx, mode, cooperative, [(2, 24), (8, 7)], seed: 7);
    }

    /// <summary>
    /// On a GPU (skipped without one): the chain against gemv_bf16_t1 there, pulled by a grid of one CTA per SM and by
    /// four times more, as an ordinary and as a cooperative launch.
    /// </summary>
    [Test, Category(KernelBackends.GpuCategory)]
    public void OnCuda_Chain_EqualsOneGemvLaunchPerStage_Bitwise()
    {
        using var ctx = KernelBackends.Open(KernelBackends.Cuda);
        int sms = ctx.Device.Info.MultiprocessorCount;
        foreach (bool cooperative in new[] { false, true })
            ChainMatchesTheOracle(ctx, $"cuda, cooperative {cooperative}", cooperative, [(1, sms), (2, 4 * sms)], seed: 5);
    }

    static void ChainMatchesTheOracle(KernelCheckContext ctx, string what, bool cooperative, (int RowsPerWarp, int Ctas)[] shapes, int seed)
    {
        var (wHost, x) = Data(seed);
        var w = ctx.Upload(wHost);
        var pointers = ctx.Upload(Enumerable.Range(0, Stages).Select(s => (w + (long)s * Dim * Dim * 2).Address).ToArray());
        var expected = Oracle(ctx, w, x);
        AssertNearReference(wHost, expected, what);
        var launcher = new PersistentGemvLaunchers(ctx.Loader);
        var counters = ctx.Upload(new int[2 + Stages]);
        foreach (var (rowsPerWarp, ctas) in shapes)
        {
            var act = ctx.AllocFilled<ushort>((Stages + 1) * Dim);
            ctx.Device.CopyToDevice(act, MemoryMarshal.AsBytes(x.AsSpan()));
            launcher.Chain(ctx.Stream, pointers, act, counters, Stages, Dim, rowsPerWarp, ctas, cooperative);
            ctx.Synchronize();
            Assert.That(ctx.Download<ushort>(act, (Stages + 1) * Dim), Is.EqualTo(expected), $"{what}: {ctas} CTAs, {rowsPerWarp} rows per warp");
            Assert.That(ctx.Download<int>(counters, 2 + Stages), Is.All.Zero, $"{what}: the last CTA out resets the counters for the next launch");
        }
    }

    /// <summary>
    /// The oracle's chain (so the persistent one, which equals it bitwise) against an fp64 reference, stage by stage from
    /// the device's own input to that stage (errors do not compound): each output within one bf16 rounding of the exact
    /// sum (2^-8 of its magnitude) plus the fp32 accumulation's error, bounded by Dim x 2^-24 x sum |w x|.
    /// </summary>
    static void AssertNearReference(ushort[] w, ushort[] act, string what)
    {
        for (int s = 0; s < Stages; s++)
            for (int row = 0; row < Dim; row++)
            {
                double exact = 0, magnitude = 0;
                for (int k = 0; k < Dim; k++)
                {
                    double p = (double)Bf16.ToFloat(w[((long)s * Dim + row) * Dim + k]) * Bf16.ToFloat(act[s * Dim + k]);
                    exact += p;
                    magnitude += Math.Abs(p);
                }
                double got = Bf16.ToFloat(act[(s + 1) * Dim + row]);
                double tolerance = Math.Abs(exact) * Math.Pow(2, -8) + Dim * Math.Pow(2, -24) * magnitude;
                if (Math.Abs(got - exact) > tolerance)
                    Assert.Fail($"{what}: stage {s} row {row}: {got} against the fp64 sum {exact} (tolerance {tolerance:G3})");
            }
    }

    /// <summary>
    /// More CTAs than tiles (the extra ones take an index past the end and leave), and one CTA alone (it runs every tile in
    /// order, so it never waits): the same rows.
    /// </summary>
    [Test]
    public void AnyGrid_FromOneCtaToMoreThanTheTiles_GivesTheSameRows()
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions { Sequential = true }));
        ChainMatchesTheOracle(ctx, "sequential", false, [(8, 1), (8, 100)], seed: 11);   // 64-row tiles: 20 per stage, 60 in all
    }

    [Test]
    public void BadArguments_AreRefusedBeforeTheLaunch()
    {
        using var emu = new KernelCheckContext(new EmulatedDevice());
        var launcher = new PersistentGemvLaunchers(emu.Loader);
        var buf = emu.Alloc<int>(16);
        Assert.That(() => launcher.Chain(emu.Stream, buf, buf, buf, 0, 64, 1, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("at least one stage"));
        Assert.That(() => launcher.Chain(emu.Stream, buf, buf, buf, 1, 60, 1, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("multiple of 8"));
        Assert.That(() => launcher.Chain(emu.Stream, buf, buf, buf, 1, 64, 9, 1), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("rows per warp"));
        Assert.That(() => launcher.Chain(emu.Stream, buf, buf, buf, 1, 64, 1, 0), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("at least one CTA"));
        Assert.That(() => launcher.Chain(emu.Stream, default, buf, buf, 1, 64, 1, 1), Throws.ArgumentException.With.Message.Contains("device buffers"));
    }

    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(PersistentGemvParams), "persistent_gemv.cu", "PersistentGemvParams");
}
