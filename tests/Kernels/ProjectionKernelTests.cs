using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
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

    /// <summary>
    /// MmaGridX: one CTA per row tile while the tiles fit on the GPU at once, else one wave of 4 CTAs per SM (fewer when the
    /// staged x leaves less shared memory): the lm_head's 2374 tiles on 528 CTAs of an H100 (132 SMs), 8 tokens too (33 KiB
    /// of x: 4 x 37 KiB fit in 228 KiB), and on an RTX 4090's 100 KiB per SM only 2 CTAs per SM at 8 tokens.
    /// </summary>
    [Test]
    public void MmaGridX_IsOneWaveWhenTheTilesAreMore()
    {
        Assert.That(GemvLaunchers.MmaGridX(320, 132, 228 * 1024, 2 * (2048 + 32)), Is.EqualTo(320), "qkv: 320 tiles, a CTA each");
        Assert.That(GemvLaunchers.MmaGridX(2374, 132, 228 * 1024, 2 * (2048 + 32)), Is.EqualTo(528), "lm_head, 1 token");
        Assert.That(GemvLaunchers.MmaGridX(2374, 132, 228 * 1024, 8 * 2 * (2048 + 32)), Is.EqualTo(528), "lm_head, 8 tokens");
        Assert.That(GemvLaunchers.MmaGridX(2374, 128, 100 * 1024, 8 * 2 * (2048 + 32)), Is.EqualTo(256), "8 tokens on 100 KiB per SM: 2 CTAs per SM");
        Assert.That(GemvLaunchers.MmaGridX(2374, 128, 16 * 1024, 8 * 2 * (2048 + 32)), Is.EqualTo(128), "never fewer than one CTA per SM");
        Assert.Throws<ArgumentOutOfRangeException>(() => GemvLaunchers.MmaGridX(0, 132, 228 * 1024, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => GemvLaunchers.MmaGridX(10, 0, 228 * 1024, 0));
    }

    /// <summary>
    /// gemv_bf16_mma with more row tiles than one wave of CTAs: on 4 emulated SMs the launcher's grid is 16 CTAs for 47 tiles
    /// (3 tokens, N 3000 in tiles of 64 rows, the last one ragged), so each CTA runs 2 or 3 tiles and stages x (with its norm)
    /// once. Each tile's sums are a CTA's own, so y must equal the same kernel launched with one CTA per tile bit for bit
    /// (no tolerance), with the residual and with the norm prologue; and that launch is held to the fp64 reference at the
    /// stated tolerance, so the equality is not between two wrong answers.
    /// </summary>
    [Test]
    public void TensorCoreGemv_MoreTilesThanOneWave_EqualsOneCtaPerTile_Bitwise()
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions { MultiprocessorCount = 4 }));
        var gemv = new GemvLaunchers(ctx.Loader);
        const int tokens = 3, n = 3000, k = 512;
        const float eps = 1e-6f;
        GemvPlan plan = gemv.Plan(tokens, n, k, WeightFormat.Bf16, normPrologue: true);
        Assert.That((plan.TensorCores, plan.RowsPerWarp, plan.GridX), Is.EqualTo((true, 8, 47)), $"plan {plan}");
        int smem = tokens * (k + GemvLaunchers.MmaPadElements) * 2;
        Assert.That(GemvLaunchers.MmaGridX(plan.GridX, 4, ctx.Device.Info.SharedMemoryPerMultiprocessor, smem), Is.EqualTo(16));
        var rng = new Random(3000);
        ushort[] x = KernelData.Random(rng, tokens * k, 4f), w = KernelData.Random(rng, n * k), r = KernelData.Random(rng, tokens * n, 4f);
        ushort[] nw = KernelData.Random(rng, k, 1.5f);
        DevicePtr dX = ctx.Upload(x), dW = ctx.Upload(w), dR = ctx.Upload(r), dNw = ctx.Upload(nw);
        foreach (bool norm in new[] { false, true })
        {
            DevicePtr dWave = ctx.AllocFilled<ushort>(tokens * n), dOne = ctx.AllocFilled<ushort>(tokens * n);
            var launches = ctx.RecordLaunches(() => gemv.Gemv(ctx.Stream, dWave, n, dX, k, WeightOperand.Bf16(dW), dR, tokens, n, k, DevicePtr.Null, 0,
                normWeight: norm ? dNw : default, normEps: eps));
            Assert.That((launches[0].Kernel, launches[0].GridBlocks), Is.EqualTo((GemvLaunchers.TensorCoreKernel, 16L)), "one wave of 16 CTAs");
            LaunchOneCtaPerTile(ctx, new GemvParams
            {
                Y = dOne, X = dX, W = dW, Residual = dR, Tokens = tokens, N = n, K = k, Ldx = k, Ldy = n, RowsPerWarp = plan.RowsPerWarp,
                KSplit = k, SplitK = 1, NormWeight = norm ? dNw : DevicePtr.Null, Eps = eps,
            }, plan.GridX, smem);
            ushort[] wave = ctx.Download<ushort>(dWave, tokens * n), one = ctx.Download<ushort>(dOne, tokens * n);
            Assert.That(wave, Is.EqualTo(one), $"norm {norm}: 16 CTAs running 47 tiles vs 47 CTAs, bit for bit");
            if (!norm)
            {
                var (exp, tol) = KernelReference.ProjectBf16(x, w, r, n, tokens, n, k);
                var c = new Checker();
                c.Within(KernelData.ToFloats(one), exp, tol, KernelReference.ProjectToleranceText, "y, one CTA per tile");
                Assert.That(c.Result().Passed, Is.True, c.Result().ToString());
            }
        }
    }

    /// <summary>
    /// gemv_bf16_mma_argmax (the greedy decode step's lm_head with its argmax in the same launch) against the pair it
    /// replaces, gemv_bf16_mma and then sample_reduce_bf16's argmax: the logits bit for bit and the same token per row,
    /// exact (no tolerance: both pick the largest bf16 logit, ties to the lowest index). Cases: random weights (3 tokens on
    /// 4 emulated SMs, so each CTA runs several tiles, and 8 tokens on 132); rows 7, 1500 and 2999 equal to the largest row,
    /// so three logits tie for the maximum (the lowest index, 7, wins); rows of NaN, +inf and -inf weights (x is
    /// positive, so their logits are NaN, +inf and -inf: +inf wins, NaN and -inf never do); and every row NaN or -inf
    /// (nothing is chosen: token 0). A second launch gives the same ids: the launch leaves its ticket and keys zero.
    /// </summary>
    [TestCase(4, 3, "random")]
    [TestCase(132, 8, "random")]
    [TestCase(4, 3, "ties")]
    [TestCase(4, 2, "nan-inf")]
    [TestCase(4, 2, "none")]
    public void FusedArgmax_EqualsTheGemvThenSampleReduce(int sms, int tokens, string weights)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions { MultiprocessorCount = sms }));
        var gemv = new GemvLaunchers(ctx.Loader);
        var sampling = new SamplingLaunchers(ctx.Loader);
        const int k = 256;
        int n = weights == "none" ? 40 : 3000;
        const float eps = 1e-6f;
        var rng = new Random(n + tokens + weights.Length);
        ushort[] x = new ushort[tokens * k], nw = new ushort[k];
        for (int i = 0; i < x.Length; i++) x[i] = Bf16.FromFloat(0.25f + (float)rng.NextDouble());   // positive: a row of +inf weights sums to +inf
        for (int i = 0; i < k; i++) nw[i] = Bf16.FromFloat(0.5f + (float)rng.NextDouble());
        ushort[] w = KernelData.Random(rng, n * k);
        void Row(int row, Func<int, float> value) { for (int j = 0; j < k; j++) w[row * k + j] = Bf16.FromFloat(value(j)); }
        switch (weights)
        {
            case "ties":
                Row(100, j => 1f);                              // the largest row: every product positive
                foreach (int r in new[] { 7, 1500, 2999 }) Array.Copy(w, 100 * k, w, r * k, k);
                break;
            case "nan-inf":
                Row(11, j => float.NaN);
                Row(12, j => float.NegativeInfinity);
                Row(2500, j => j == 3 ? float.PositiveInfinity : 0f);
                Row(2600, j => j == 5 ? float.PositiveInfinity : 0f);   // a second +inf: the lower index, 2500, wins
                break;
            case "none":
                for (int r = 0; r < n; r++) Row(r, j => r % 2 == 0 ? float.NaN : float.NegativeInfinity);
                break;
        }
        DevicePtr dX = ctx.Upload(x), dW = ctx.Upload(w), dNw = ctx.Upload(nw);
        GemvPlan plan = gemv.Plan(tokens, n, k, WeightFormat.Bf16, normPrologue: true);
        Assert.That(GemvLaunchers.CanFuseArgmax(plan), Is.True, $"plan {plan}");
        // the pair: the GEMV, then sample_reduce_bf16's argmax
        DevicePtr dLogits = ctx.AllocFilled<ushort>(tokens * n), dIds = ctx.AllocFilled<int>(tokens);
        var scratch = new SamplingScratch(ctx.AllocFilled<byte>(SamplingScratch.Bytes(tokens, n), 0), tokens, n);
        gemv.Gemv(ctx.Stream, dLogits, n, dX, k, WeightOperand.Bf16(dW), DevicePtr.Null, tokens, n, k, DevicePtr.Null, 0, dNw, eps);
        sampling.Argmax(ctx.Stream, dLogits, n, tokens, n, dIds, scratch);
        // the fused launch, twice
        long argmaxBytes = GemvLaunchers.ArgmaxScratchBytes(tokens);
        DevicePtr dFused = ctx.AllocFilled<ushort>(tokens * n), dFusedIds = ctx.AllocFilled<int>(tokens), dArgmax = ctx.AllocFilled<byte>(argmaxBytes, 0);
        for (int launch = 0; launch < 2; launch++)
        {
            var launches = ctx.RecordLaunches(() => gemv.Gemv(ctx.Stream, dFused, n, dX, k, WeightOperand.Bf16(dW), DevicePtr.Null, tokens, n, k, DevicePtr.Null, 0, dNw, eps,
                argmaxIds: dFusedIds, argmaxScratch: dArgmax, argmaxScratchBytes: argmaxBytes));
            Assert.That(launches.Select(l => l.Kernel), Is.EqualTo(new[] { GemvLaunchers.TensorCoreArgmaxKernel }), "one launch");
            Assert.That(ctx.Download<ushort>(dFused, tokens * n), Is.EqualTo(ctx.Download<ushort>(dLogits, tokens * n)), "the logits, bit for bit");
            int[] want = ctx.Download<int>(dIds, tokens), got = ctx.Download<int>(dFusedIds, tokens);
            Assert.That(got, Is.EqualTo(want), $"launch {launch + 1}: the argmax of each row (sample_reduce_bf16's)");
            Assert.That(ctx.Download<byte>(dArgmax, argmaxBytes), Is.All.EqualTo((byte)0), "the ticket and keys left zero");
            int[] expect = weights switch
            {
                "ties" => Enumerable.Repeat(7, tokens).ToArray(),
                "nan-inf" => Enumerable.Repeat(2500, tokens).ToArray(),
                "none" => new int[tokens],
                _ => want,
            };
            Assert.That(got, Is.EqualTo(expect), $"{weights}: the expected token");
        }
        Assert.Throws<ArgumentException>(() => gemv.Gemv(ctx.Stream, dFused, n, dX, k, WeightOperand.Bf16(dW), DevicePtr.Null, tokens, n, k, DevicePtr.Null, 0, dNw, eps,
            argmaxIds: dFusedIds, argmaxScratch: dArgmax, argmaxScratchBytes: argmaxBytes - 1), "too little scratch is refused");
    }

    /// <summary>
    /// gemv_bf16_mma_sample (the sampled decode step's lm_head with sample_reduce_bf16's work in the same launch) and then
    /// sample_draw_bf16, against the three launches it replaces (gemv_bf16_mma, sample_reduce_bf16, sample_draw_bf16) with
    /// the same per-row settings in device memory: the logits bit for bit; each row's state exactly (the maximum, the argmax,
    /// the key range, the mode, and the threshold: the top-k bucket is found by integer counts, and the top-p bucket by
    /// masses that are the same sums in another fp32 order, which on these rows land in the same bucket); the drawn token of
    /// each row for three counters. Then the workspace is as it was: histogram and tickets zero. Cases: one row at top-k 20
    /// and top-p 0.9 on 4 emulated SMs (each CTA runs several tiles) and on 132; min-p with temperature only (no histogram);
    /// top-p alone (its threshold from the row's total mass) on logits that rise with the row, so each CTA's sum is rescaled
    /// to a new maximum at almost every tile;
    /// three rows (greedy, top-k + top-p, top-p + min-p: the last CTA merges each in turn); NaN / +inf / -inf logits (a +inf
    /// logit takes all the mass); every logit NaN or -inf (nothing has mass: the argmax fallback, token 0).
    /// </summary>
    [TestCase(4, "topk-topp")]
    [TestCase(132, "topk-topp")]
    [TestCase(4, "minp")]
    [TestCase(4, "topp-trend")]
    [TestCase(4, "rows")]
    [TestCase(4, "nan-inf")]
    [TestCase(4, "none")]
    public void FusedSample_EqualsTheGemvThenSampleReduce(int sms, string shape)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions { MultiprocessorCount = sms }));
        var gemv = new GemvLaunchers(ctx.Loader);
        var sampling = new SamplingLaunchers(ctx.Loader);
        const int k = 256;
        int tokens = shape == "rows" ? 3 : 1, n = shape == "none" ? 40 : 3000;
        const float eps = 1e-6f;
        var rng = new Random(n + tokens + shape.Length);
        ushort[] x = new ushort[tokens * k], nw = new ushort[k];
        for (int i = 0; i < x.Length; i++) x[i] = Bf16.FromFloat(0.25f + (float)rng.NextDouble());   // positive: a row of +inf weights sums to +inf
        for (int i = 0; i < k; i++) nw[i] = Bf16.FromFloat(0.5f + (float)rng.NextDouble());
        ushort[] w = KernelData.Random(rng, n * k);
        void Row(int row, Func<int, float> value) { for (int j = 0; j < k; j++) w[row * k + j] = Bf16.FromFloat(value(j)); }
        SamplingSettings[] rows = shape switch
        {
            "minp" => [new(0.9f, 0, 1f, 0.05f, Seed: 5)],
            "topp-trend" => [new(0.5f, 0, 0.7f, 0f, Seed: 6)],
            "rows" => [new(0f, Seed: 1), new(0.7f, 20, 0.9f, 0f, Seed: 2), new(1.1f, 0, 0.8f, 0.02f, Seed: 3)],
            _ => [new(0.7f, 20, 0.9f, 0f, Seed: 9)],
        };
        switch (shape)
        {
            case "nan-inf":
                Row(11, j => float.NaN);
                Row(12, j => float.NegativeInfinity);
                Row(2500, j => j == 3 ? float.PositiveInfinity : 0f);
                break;
            case "none":
                for (int r = 0; r < n; r++) Row(r, j => r % 2 == 0 ? float.NaN : float.NegativeInfinity);
                break;
            case "topp-trend":   // logits rising with the row (about 0.004 per row): each CTA's maximum grows tile by tile
                for (int r = 0; r < n; r++) { int row = r; Row(r, j => Bf16.ToFloat(w[row * k + j]) + 0.05f * row / n); }
                break;
        }
        DevicePtr dX = ctx.Upload(x), dW = ctx.Upload(w), dNw = ctx.Upload(nw);
        GemvPlan plan = gemv.Plan(tokens, n, k, WeightFormat.Bf16, normPrologue: true);
        int gridX = gemv.SampleGridX(tokens, n, k, normPrologue: true);
        Assert.That(GemvLaunchers.CanFuseSample(plan, gridX), Is.True, $"plan {plan} on {gridX} CTAs");
        if (sms == 4 && shape != "none") Assert.That(gridX, Is.LessThan(plan.GridX), "fewer CTAs than tiles: each CTA folds several tiles");
        long scratchBytes = SamplingScratch.Bytes(tokens, n), ticketBytes = GemvLaunchers.ArgmaxScratchBytes(tokens);
        for (int counter = 0; counter < 3; counter++)
        {
            var settings = rows.Select(r => SampleRowSettings.From(r, 100 + (ulong)counter)).ToArray();
            DevicePtr dSettings = ctx.Upload(settings);
            // the three launches
            DevicePtr dLogits = ctx.AllocFilled<ushort>(tokens * n), dIds = ctx.AllocFilled<int>(tokens);
            var scratch = new SamplingScratch(ctx.AllocFilled<byte>(scratchBytes, 0), tokens, n);
            gemv.Gemv(ctx.Stream, dLogits, n, dX, k, WeightOperand.Bf16(dW), DevicePtr.Null, tokens, n, k, DevicePtr.Null, 0, dNw, eps);
            sampling.SampleRows(ctx.Stream, dLogits, n, tokens, n, dSettings, dIds, scratch);
            // the fused launch, then the draw
            DevicePtr dFused = ctx.AllocFilled<ushort>(tokens * n), dFusedIds = ctx.AllocFilled<int>(tokens), dTicket = ctx.AllocFilled<byte>(ticketBytes, 0);
            var fusedScratch = new SamplingScratch(ctx.AllocFilled<byte>(scratchBytes, 0), tokens, n);
            var sample = SamplingLaunchers.RowsParams(dFused, n, tokens, n, dSettings, dFusedIds, fusedScratch);
            var launches = ctx.RecordLaunches(() =>
            {
                gemv.GemvSample(ctx.Stream, dFused, n, dX, k, WeightOperand.Bf16(dW), tokens, n, k, dNw, eps, sample, dTicket, ticketBytes);
                sampling.Draw(ctx.Stream, sample);
            });
            Assert.That(launches.Select(l => l.Kernel), Is.EqualTo(new[] { GemvLaunchers.TensorCoreSampleKernel, "sample_draw_bf16" }), "two launches");
            Assert.That(ctx.Download<ushort>(dFused, tokens * n), Is.EqualTo(ctx.Download<ushort>(dLogits, tokens * n)), "the logits, bit for bit");
            byte[] wantState = ctx.Download<byte>(scratch.State, tokens * 32L), gotState = ctx.Download<byte>(fusedScratch.State, tokens * 32L);
            for (int r = 0; r < tokens; r++)
            {
                var (want, got) = (StateText(wantState, r), StateText(gotState, r));
                Assert.That(got, Is.EqualTo(want), $"counter {counter} row {r}: the row state (xmax, thr, argmax, lo, hi, mode)");
            }
            int[] wantIds = ctx.Download<int>(dIds, tokens), gotIds = ctx.Download<int>(dFusedIds, tokens);
            Assert.That(gotIds, Is.EqualTo(wantIds), $"counter {counter}: the drawn tokens");
            if (shape == "nan-inf") Assert.That(gotIds, Is.All.EqualTo(2500), "the +inf logit takes all the mass");
            if (shape == "none") Assert.That(gotIds, Is.All.EqualTo(0), "nothing has mass: token 0");
            Assert.That(ctx.Download<uint>(fusedScratch.Hist, tokens * (long)SamplingScratch.Buckets), Is.All.EqualTo(0u), "the histogram left zero");
            Assert.That(ctx.Download<byte>(fusedScratch.Tickets, tokens * 8L), Is.All.EqualTo((byte)0), "the sampler's tickets left zero");
            Assert.That(ctx.Download<byte>(dTicket, ticketBytes), Is.All.EqualTo((byte)0), "the launch's ticket left zero");
        }
        var bad = SamplingLaunchers.RowsParams(dX, n, tokens, n, ctx.Upload(new SampleRowSettings[tokens]), ctx.AllocFilled<int>(tokens), new SamplingScratch(ctx.AllocFilled<byte>(scratchBytes, 0), tokens, n));
        DevicePtr dY = ctx.AllocFilled<ushort>(tokens * n);
        Assert.Throws<ArgumentException>(() => gemv.GemvSample(ctx.Stream, dY, n, dX, k, WeightOperand.Bf16(dW), tokens, n, k, dNw, eps, bad, ctx.AllocFilled<byte>(ticketBytes, 0), ticketBytes),
            "sampling rows of other logits are refused");
        var good = bad with { Logits = dY };
        Assert.Throws<ArgumentException>(() => gemv.GemvSample(ctx.Stream, dY, n, dX, k, WeightOperand.Bf16(dW), tokens, n, k, dNw, eps, good, ctx.AllocFilled<byte>(ticketBytes, 0), ticketBytes - 1),
            "too little ticket scratch is refused");
    }

    /// <summary>Row r of SampleRowState[] (32 bytes: xmax, thr, best_i, lo, hi, mode) as text, floats by their bits.</summary>
    private static string StateText(byte[] state, int r)
    {
        var s = state.AsSpan(r * 32, 32);
        float xmax = BitConverter.ToSingle(s[..4]), thr = BitConverter.ToSingle(s[4..8]);
        int bestI = BitConverter.ToInt32(s[8..12]), lo = BitConverter.ToInt32(s[12..16]), hi = BitConverter.ToInt32(s[16..20]), mode = BitConverter.ToInt32(s[20..24]);
        return $"xmax {xmax:R} ({BitConverter.SingleToInt32Bits(xmax):x8}), thr {thr:R} ({BitConverter.SingleToInt32Bits(thr):x8}), argmax {bestI}, lo {lo}, hi {hi}, mode {mode}";
    }

    private static void LaunchOneCtaPerTile(KernelCheckContext ctx, GemvParams p, int tiles, int smem)
    {
        var args = new KernelArgs(stackalloc byte[192], stackalloc nint[1]);
        args.Add(p);
        ctx.Device.Launch(ctx.Loader.Get(GemvLaunchers.File, GemvLaunchers.TensorCoreKernel), new LaunchConfig(new Dim3((uint)tiles), 256, smem), ctx.Stream, args);
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
        StructLayoutCheck.AssertMatches(typeof(GemvSampleParams), "gemv.cu", "GemvSampleParams");
        StructLayoutCheck.AssertMatches(typeof(GemmParams), "gemm.cu", "GemmParams");
    }

    [Test]
    public void RejectsBadShapes()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new GemvLaunchers(_emu.Loader).Gemv(_emu.Stream, default, 8, default, 8, default, default, 9, 8, 8, default, 0));
        Assert.Throws<ArgumentException>(() => new GemmLaunchers(_emu.Loader).Gemm(_emu.Stream, default, 8, default, 12, default, 12, default, 4, 8, 12));
    }
}
