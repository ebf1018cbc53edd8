using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>
/// kernels/moe_decode.cu's moe_experts_gemv: the decode experts' gate_up and down GEMVs (the combine included) in one
/// launch whose CTAs take tiles in order and whose down tiles wait on a per-slot counter (docs/kernels.md, "Persistent
/// launches"). Every row is computed by the code of moe_gate_up_gemv and moe_down_gemv, so the launch must equal that pair
/// bit for bit (exact: no tolerance) in inter, in each slot's expert output y and in the combined output, however the
/// emulator schedules the CTAs: one after another (the default for such a launch), in parallel, or co-resident and
/// interleaved; and it must leave its counters and the combine's tickets zero, so a second launch gives the same bits.
/// The pair itself is held to the CPU reference (MoeCase.Compare's stated tolerance) so equality is not between two
/// wrong answers; MoeKernelTests hold the whole block, which now runs this launch, to the reference at every shape.
/// </summary>
[TestFixture]
public class MoeExpertsGemvTests
{
    private static readonly object[] Modes =
    [
        new object[] { "sequential (the default for a launch of ordered tiles)", new EmulatorOptions(), false },
        new object[] { "parallel", new EmulatorOptions { ConcurrentTilesInOrder = true }, false },
        new object[] { "co-resident, interleaved", new EmulatorOptions { Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 5 + EmulatorModes.Ambient.ScheduleSeed } }, true },
        // 5 SMs: a one-wave grid of 40 CTAs, so each CTA takes several tiles (7 at 1 token: 259 tickets for 256 tiles)
        new object[] { "5 SMs, several tiles per CTA, sequential", new EmulatorOptions { MultiprocessorCount = 5 }, false },
        new object[] { "5 SMs, several tiles per CTA, parallel", new EmulatorOptions { MultiprocessorCount = 5, ConcurrentTilesInOrder = true }, false },
        new object[] { "5 SMs, several tiles per CTA, co-resident, interleaved", new EmulatorOptions { MultiprocessorCount = 5, Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 7 + EmulatorModes.Ambient.ScheduleSeed } }, true },
    ];

    private static readonly WeightFormat[] Quantized = [WeightFormat.Fp8Block, WeightFormat.Int8Channel, WeightFormat.Int4Gptq];

    [TestCaseSource(nameof(Modes))]
    public void Bf16_EqualsTheTwoKernels_Bitwise_AndLeavesItsCountersZero(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        foreach (int tokens in new[] { 1, 3 })
            foreach (bool residual in new[] { false, true })
                EqualsThePair(ctx, WeightFormat.Bf16, MoeCase.Small, tokens, residual, cooperative, $"{mode}, {tokens} token(s), residual {residual}");
    }

    [TestCaseSource(nameof(Modes))]
    public void Quantized_EqualsTheTwoKernels_Bitwise(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        foreach (var f in Quantized)
            EqualsThePair(ctx, f, MoeCase.Small, tokens: 2, residual: true, cooperative, $"{mode}, {f.Name()}");
    }

    /// <summary>
    /// A down tile runs max(1, 16 / k) rows of each of a token's k slots (ExpertsDownRowsPerTile): top-3 gives 5 rows, so a
    /// warp's 4 row dots span two slots and H 264 (or 256) leaves a last tile of 4 (or 1) rows; top-16 gives one row of 16
    /// slots. Each still equals the two kernels (whose CTAs run 16 rows of one slot and combine through tickets) bit for bit.
    /// </summary>
    [TestCaseSource(nameof(Modes))]
    public void OtherTopK_RaggedDownTiles_EqualTheTwoKernels_Bitwise(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        Assert.That(new[] { 3, 8, 16 }.Select(MoeLaunchers.ExpertsDownRowsPerTile), Is.EqualTo(new[] { 5, 2, 1 }));
        EqualsThePair(ctx, WeightFormat.Bf16, new MoeShape(16, 3, 264, 64, false), tokens: 2, residual: true, cooperative, $"{mode}, top-3, H 264");
        EqualsThePair(ctx, WeightFormat.Bf16, new MoeShape(32, 16, 64, 32, true), tokens: 1, residual: false, cooperative, $"{mode}, top-16");
        foreach (var f in Quantized)
            EqualsThePair(ctx, f, new MoeShape(16, 3, 256, 128, true), tokens: 2, residual: true, cooperative, $"{mode}, {f.Name()}, top-3");
    }

    /// <summary>
    /// With a follow-on GEMV (the next layer's qkv projection with its RMSNorm prologue, ExpertsFollowOn) the launch also
    /// equals the pair followed by that GEMV's own launch, gemv_bf16_mma with the norm prologue, bit for bit: the follow-on
    /// tiles wait for every down tile (so read the combined output) and repeat the 2-row-group plan's sums on 4 warps. N is
    /// 40 rows per SM, so the standalone plan has 2 row groups (CanFollowOn) on 132 and on 5 SMs. The GEMV's own launch is
    /// held to the fp64 reference in ProjectionCases; here the expected bits are that launch's.
    /// </summary>
    [TestCaseSource(nameof(Modes))]
    public void FollowOn_EqualsTheTwoKernelsThenTheGemv_Bitwise(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        foreach (int tokens in new[] { 1, 3 })
            EqualsThePair(ctx, WeightFormat.Bf16, MoeCase.Small, tokens, residual: true, cooperative, $"{mode}, {tokens} token(s), follow-on GEMV",
                followOnRows: 40 * ctx.Device.Info.MultiprocessorCount);
    }

    /// <summary>
    /// With the router's logits (routerLogits: the attention block's router tiles write only those, TopkByExperts) every
    /// CTA runs the router's own softmax + top-k (router_topk_select): the launch must equal the launch given the router
    /// kernel's ids and weights bit for bit, and CTA 0 must leave exactly those ids and weights in the workspace's places
    /// (poisoned before). 1 and 3 tokens, every scheduling mode; a tied router (hot experts with equal logits) checks that
    /// ties go to the lower expert as in the router. Quantized experts and more than 128 experts are refused (CanRunTopK).
    /// </summary>
    [TestCaseSource(nameof(Modes))]
    public void RouterLogits_TheExpertsOwnTopK_EqualsTheRoutersIds_Bitwise(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        var s = MoeCase.Small;
        var moe = new MoeLaunchers(ctx.Loader, [s]);
        foreach (int tokens in new[] { 1, 3 })
            foreach (bool tied in new[] { false, true })
            {
                string what = $"{mode}, {tokens} token(s){(tied ? ", tied router" : "")}";
                var mc = MoeCase.Create(s, tokens, seed: 41 + tokens, hotExperts: tied ? 3 : 0, tiedRouter: tied);
                var w = MoeWeightsOnDevice.For(ctx, s, mc);
                int k = s.TopK, slots = tokens * k, H = s.Hidden, I = s.Inter;
                var (hidden, router) = (ctx.Upload(mc.Hidden), ctx.Upload(mc.Router));
                var (logits, counters) = (ctx.AllocFilled<float>(tokens * s.Experts), ctx.AllocFilled<int>(1, 0));
                var (ids, weights) = (ctx.AllocFilled<int>(slots), ctx.AllocFilled<float>(slots));
                moe.Router(ctx.Stream, s, tokens, hidden, router, logits, counters, ids, weights);
                ctx.Synchronize();
                var (routerIds, routerWeights) = (ctx.Download<int>(ids, slots), ctx.Download<float>(weights, slots));
                Assert.That(routerIds.Distinct().Count(), Is.GreaterThan(1), $"{what}: the router chose several experts");

                (ushort[] Inter, ushort[] Y, ushort[] Out) Run(DevicePtr idsIn, DevicePtr weightsIn, DevicePtr routerLogits)
                {
                    var (inter, y, output) = (ctx.Alloc<ushort>((long)slots * I), ctx.Alloc<ushort>((long)slots * H), ctx.Alloc<ushort>((long)tokens * H));
                    var sync = ctx.Upload(new int[MoeWorkspace.ExpertsSyncInts]);
                    moe.ExpertsGemv(ctx.Stream, s, tokens, hidden, WeightOperand.Bf16(w.GateUp), WeightOperand.Bf16(w.Down), idsIn, inter, y, weightsIn,
                        DevicePtr.Null, output, sync, cooperative, routerLogits: routerLogits);
                    ctx.Synchronize();
                    Assert.That(ctx.Download<int>(sync, MoeWorkspace.ExpertsSyncInts), Is.All.Zero, $"{what}: counters zero after the launch");
                    return (ctx.Download<ushort>(inter, slots * I), ctx.Download<ushort>(y, slots * H), ctx.Download<ushort>(output, tokens * H));
                }
                var expected = Run(ids, weights, DevicePtr.Null);
                var (poisonIds, poisonWeights) = (ctx.AllocFilled<int>(slots), ctx.AllocFilled<float>(slots));   // 0xff bytes: -1 and NaN
                var got = Run(poisonIds, poisonWeights, logits);
                Assert.That(got.Inter, Is.EqualTo(expected.Inter), $"{what}: inter");
                Assert.That(got.Y, Is.EqualTo(expected.Y), $"{what}: y");
                Assert.That(got.Out, Is.EqualTo(expected.Out), $"{what}: the combined output");
                Assert.That(ctx.Download<int>(poisonIds, slots), Is.EqualTo(routerIds), $"{what}: CTA 0 stored the router's ids");
                Assert.That(ctx.Download<float>(poisonWeights, slots).Select(BitConverter.SingleToInt32Bits), Is.EqualTo(routerWeights.Select(BitConverter.SingleToInt32Bits)),
                    $"{what}: CTA 0 stored the router's weights (bitwise)");
            }
    }

    [Test]
    public void RouterLogits_AreRefused_ForQuantizedExpertsAndMoreThan128Experts()
    {
        Assert.That(MoeLaunchers.CanRunTopK(MoeCase.Real, WeightFormat.Bf16), Is.True);
        Assert.That(MoeLaunchers.CanRunTopK(MoeCase.Real, WeightFormat.Int4Gptq), Is.False);
        Assert.That(MoeLaunchers.CanRunTopK(new MoeShape(256, 8, 256, 128, true), WeightFormat.Bf16), Is.False);
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions()));
        var s = new MoeShape(256, 8, 256, 128, true);
        var moe = new MoeLaunchers(ctx.Loader, [s]);
        var buf = ctx.Alloc<byte>(1 << 20);
        var ex = Assert.Throws<ArgumentException>(() => moe.ExpertsGemv(ctx.Stream, s, 1, buf, WeightOperand.Bf16(buf), WeightOperand.Bf16(buf), buf, buf, buf, buf,
            DevicePtr.Null, buf, buf, routerLogits: buf));
        Assert.That(ex!.Message, Does.Contain("at most 128 experts").And.Contain("256 experts"));
    }

    /// <summary>CanFollowOn: the standalone tensor-core plan with the norm prologue must take 2 row groups (4 warps each), at
    /// most 4 tokens; Qwen3-30B-A3B's qkv (5120 x 2048) qualifies on 132 SMs, not on 80 (4 groups) or 200 (1 group).</summary>
    [Test]
    public void CanFollowOn_IsTheTwoGroupPlan()
    {
        foreach (int t in new[] { 1, 2, 3, 4 }) Assert.That(MoeLaunchers.CanFollowOn(132, t, 5120, 2048), Is.True, $"{t} token(s)");
        Assert.That(MoeLaunchers.CanFollowOn(132, 5, 5120, 2048), Is.False, "5 tokens: the 4 warps finish one norm row each");
        Assert.That(MoeLaunchers.CanFollowOn(80, 1, 5120, 2048), Is.False, "80 SMs: 4 row groups");
        Assert.That(MoeLaunchers.CanFollowOn(200, 1, 5120, 2048), Is.False, "200 SMs: 1 row group");
        Assert.That(MoeLaunchers.CanFollowOn(132, 1, 5120, 2000), Is.False, "K not in 128-wide steps of 4 warps");
        Assert.That(GemvLaunchers.TensorCorePlan(132, 1, 5120, 2048, WeightFormat.Bf16, normPrologue: true).RowsPerWarp, Is.EqualTo(2));
    }

    /// <summary>On a GPU (skipped without one): the same equality there, as an ordinary and as a cooperative launch.</summary>
    [Test, Category(Kernels.KernelBackends.GpuCategory)]
    public void OnCuda_EqualsTheTwoKernels_Bitwise()
    {
        using var ctx = Kernels.KernelBackends.Open(Kernels.KernelBackends.Cuda);
        foreach (bool cooperative in new[] { false, true })
        {
            EqualsThePair(ctx, WeightFormat.Bf16, MoeCase.Real, tokens: 1, residual: true, cooperative, $"cuda, real shape, cooperative {cooperative}");
            int sms = ctx.Device.Info.MultiprocessorCount;
            if (MoeLaunchers.CanFollowOn(sms, 1, 40 * sms, MoeCase.Real.Hidden))
                EqualsThePair(ctx, WeightFormat.Bf16, MoeCase.Real, tokens: 1, residual: true, cooperative, $"cuda, real shape, follow-on GEMV, cooperative {cooperative}",
                    followOnRows: 40 * sms);
            foreach (var f in Quantized)
                EqualsThePair(ctx, f, MoeCase.Small, tokens: 4, residual: true, cooperative, $"cuda, {f.Name()}, cooperative {cooperative}");
        }
    }

    static void EqualsThePair(KernelCheckContext ctx, WeightFormat format, MoeShape s, int tokens, bool residual, bool cooperative, string what,
        int followOnRows = 0)
    {
        var mc = MoeCase.Create(s, tokens, seed: 31 + tokens);
        int H = s.Hidden, I = s.Inter, k = s.TopK, slots = tokens * k;
        WeightOperand gateUp, down;
        if (format == WeightFormat.Bf16)
        {
            var w = MoeWeightsOnDevice.For(ctx, s, mc);
            (gateUp, down) = (WeightOperand.Bf16(w.GateUp), WeightOperand.Bf16(w.Down));
        }
        else
        {
            gateUp = QuantizedCases.StackLossless(format, mc.GateUp, 2 * I, H, s.Experts, sourceRows: I).Upload(ctx);
            down = QuantizedCases.StackLossless(format, mc.Down, H, I, s.Experts, sourceRows: H).Upload(ctx);
        }
        var moe = new MoeLaunchers(ctx.Loader, [s], [format]);
        var hidden = ctx.Upload(mc.Hidden);
        var ids = ctx.Upload(mc.RefIds);
        var weights = ctx.Upload(mc.RefWeights);
        ushort[]? resHost = null;
        if (residual)
        {
            resHost = new ushort[tokens * H];
            MoeCase.Fill(resHost, 77);
        }
        var res = resHost is null ? DevicePtr.Null : ctx.Upload(resHost);
        int ticketInts = tokens * MoeWorkspace.DownTicketsPerToken(H);

        // the pair: moe_gate_up_gemv, then moe_down_gemv
        var (inter1, y1, out1) = (ctx.Alloc<ushort>((long)slots * I), ctx.Alloc<ushort>((long)slots * H), ctx.Alloc<ushort>((long)tokens * H));
        var tickets1 = ctx.Upload(new int[ticketInts]);
        moe.GateUpGemv(ctx.Stream, s, tokens, hidden, gateUp, ids, inter1);
        moe.DownGemv(ctx.Stream, s, tokens, inter1, down, ids, y1, weights, res, out1, tickets1);
        ctx.Synchronize();
        var expected = (Inter: ctx.Download<ushort>(inter1, slots * I), Y: ctx.Download<ushort>(y1, slots * H), Out: ctx.Download<ushort>(out1, tokens * H));
        var c = new Checker();
        MoeCase.Compare(c, mc.Reference(resHost), expected.Out, "the pair against the CPU reference");
        Assert.That(c.Result().Passed, Is.True, $"{what}: {c.Result()}");

        // the follow-on GEMV on its own: gemv_bf16_mma with the norm prologue over the pair's output
        int N = followOnRows;
        ExpertsFollowOn? followOn = null;
        ushort[]? expectedNext = null;
        DevicePtr next2 = DevicePtr.Null;
        if (N > 0)
        {
            Assert.That(MoeLaunchers.CanFollowOn(ctx.Device.Info.MultiprocessorCount, tokens, N, H), Is.True, $"{what}: the case qualifies");
            var wHost = new ushort[(long)N * H];
            var normHost = new ushort[H];
            MoeCase.Fill(wHost, 91);
            MoeCase.Fill(normHost, 92);
            var (wNext, norm) = (ctx.Upload(wHost), ctx.Upload(normHost));
            var next1 = ctx.Alloc<ushort>((long)tokens * N);
            var gemv = new GemvLaunchers(ctx.Loader);
            var plan = gemv.Gemv(ctx.Stream, next1, N, out1, H, WeightOperand.Bf16(wNext), DevicePtr.Null, tokens, N, H, DevicePtr.Null, 0, norm, 1e-6f);
            Assert.That(plan, Is.EqualTo(new GemvPlan(2, 1, H, (N + 15) / 16, TensorCores: true)), $"{what}: the standalone launch is gemv_bf16_mma with 2 row groups");
            ctx.Synchronize();
            expectedNext = ctx.Download<ushort>(next1, tokens * N);
            followOn = new ExpertsFollowOn(DevicePtr.Null, N, DevicePtr.Null, H, wNext, norm, 1e-6f, N, H);
        }

        // one launch, twice: the counters it leaves must serve the next launch
        var (inter2, y2, out2) = (ctx.Alloc<ushort>((long)slots * I), ctx.Alloc<ushort>((long)slots * H), ctx.Alloc<ushort>((long)tokens * H));
        var sync = ctx.Upload(new int[MoeWorkspace.ExpertsSyncInts]);
        if (followOn is { } f) followOn = f with { X = out2 };
        for (int run = 0; run < 2; run++)
        {
            if (followOn is { } fo)
            {
                next2 = ctx.AllocFilled<ushort>((long)tokens * N);   // 0xffff (NaN) where a row is not written
                followOn = fo with { Y = next2 };
            }
            moe.ExpertsGemv(ctx.Stream, s, tokens, hidden, gateUp, down, ids, inter2, y2, weights, res, out2, sync, cooperative, followOn);
            ctx.Synchronize();
            string which = $"{what}, launch {run + 1}";
            if (N > 0) Assert.That(ctx.Download<ushort>(next2, tokens * N), Is.EqualTo(expectedNext), $"{which}: the follow-on GEMV's output");
            Assert.That(ctx.Download<ushort>(inter2, slots * I), Is.EqualTo(expected.Inter), $"{which}: inter (the SwiGLU activations)");
            Assert.That(ctx.Download<ushort>(y2, slots * H), Is.EqualTo(expected.Y), $"{which}: y (each slot's expert output)");
            Assert.That(ctx.Download<ushort>(out2, tokens * H), Is.EqualTo(expected.Out), $"{which}: the combined output");
            Assert.That(ctx.Download<int>(sync, MoeWorkspace.ExpertsSyncInts), Is.All.Zero, $"{which}: the last CTA out resets the tile counters");
        }
    }

    /// <summary>
    /// On the emulator a launch of ordered tiles runs its CTAs one after another unless told otherwise, so its counters never
    /// hold a CTA polling for another (the schedule the timing model takes): the default device counts exactly what one
    /// set to run every launch sequentially counts. The launch is one node of k x (I / 8 + H / 16) tiles.
    /// </summary>
    [Test]
    public void ByDefault_TheEmulatorRunsItInOrder_OneLaunchOfAllTiles()
    {
        var s = MoeCase.Small;
        var mc = MoeCase.Create(s, 1, seed: 3);
        LaunchRecord Run(EmulatorOptions options)
        {
            using var ctx = new KernelCheckContext(new EmulatedDevice(options));
            var w = MoeWeightsOnDevice.For(ctx, s, mc);
            var moe = new MoeLaunchers(ctx.Loader, [s]);
            var (hidden, ids, weights) = (ctx.Upload(mc.Hidden), ctx.Upload(mc.RefIds), ctx.Upload(mc.RefWeights));
            var (inter, y, output) = (ctx.Alloc<ushort>(s.TopK * s.Inter), ctx.Alloc<ushort>(s.TopK * s.Hidden), ctx.Alloc<ushort>(s.Hidden));
            var sync = ctx.Upload(new int[MoeWorkspace.ExpertsSyncInts]);
            var launches = ctx.RecordLaunches(() => moe.ExpertsGemv(ctx.Stream, s, 1, hidden, WeightOperand.Bf16(w.GateUp), WeightOperand.Bf16(w.Down),
                ids, inter, y, weights, DevicePtr.Null, output, sync));
            Assert.That(launches.Select(l => l.Kernel), Is.EqualTo(new[] { "moe_experts_gemv" }));
            return launches[0];
        }
        var byDefault = Run(new EmulatorOptions());
        var sequential = Run(new EmulatorOptions { Sequential = true });
        Assert.That(MoeLaunchers.ExpertsGemvTiles(s, 1), Is.EqualTo(8 * 128 / 8 + 256 / 2), "k x I / 8 gate_up tiles + H / 2 down tiles (2 rows of the 8 slots each)");
        Assert.That(byDefault.GridBlocks, Is.EqualTo(MoeLaunchers.ExpertsGemvTiles(s, 1)), "132 SMs: one tile per CTA");
        Assert.That(byDefault.WarpInstructions, Is.EqualTo(sequential.WarpInstructions), "instructions: no poll beyond the first read of a complete counter");
        Assert.That(byDefault.MaxWarpInstructions, Is.EqualTo(sequential.MaxWarpInstructions), "the critical warp");
    }

    /// <summary>
    /// The grid is one wave of at most 5 CTAs per SM (bf16: room for an attention block CTA beside them; quantized: their
    /// launch bound), with the fewest tickets per CTA that cover the tiles: Qwen3-30B-A3B's 8 x (96 + 128) = 1792 tiles on
    /// 132 SMs (H100, H200) take 3 tickets each on 598 CTAs (660 fit at 5 per SM), bf16 or quantized; A100's 108 SMs, 540
    /// fit: 4 each, 448.
    /// </summary>
    [Test]
    public void Grid_IsOneWave_WithEqualShares()
    {
        Assert.That(MoeLaunchers.ExpertsGemvGrid(1792, 132, WeightFormat.Bf16), Is.EqualTo((598, 3)));
        Assert.That(MoeLaunchers.ExpertsGemvGrid(1792, 132, WeightFormat.Int4Gptq), Is.EqualTo((598, 3)));
        Assert.That(MoeLaunchers.ExpertsGemvGrid(1792, 108, WeightFormat.Bf16), Is.EqualTo((448, 4)));
        Assert.That(MoeLaunchers.ExpertsGemvGrid(256, 132, WeightFormat.Bf16), Is.EqualTo((256, 1)), "fewer tiles than fit: one each");
        Assert.That(MoeLaunchers.ExpertsGemvGrid(256, 5, WeightFormat.Bf16), Is.EqualTo((24, 11)), "25 fit: 11 each on 24 CTAs, 8 tickets past the tiles");
        Assert.That(MoeLaunchers.ExpertsGemvGrid(660, 132, WeightFormat.Bf16), Is.EqualTo((660, 1)), "exactly one wave");
        Assert.That(MoeLaunchers.ExpertsGemvGrid(661, 132, WeightFormat.Bf16), Is.EqualTo((331, 2)));
        Assert.That(() => MoeLaunchers.ExpertsGemvGrid(0, 132, WeightFormat.Bf16), Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("0 tiles"));
        // with the follow-on qkv (640 tiles of 8 rows): 5 CTAs per SM, 660 fit, 4 tickets each on 608 CTAs
        Assert.That(MoeLaunchers.ExpertsGemvGrid(1792 + 640, 132, WeightFormat.Bf16), Is.EqualTo((608, 4)));
        // 5 CTAs of 128 threads x 64 registers (the launch bound) leave an SM's 64 K registers room for one attention CTA
        // (attn_decode_fused: 128 threads, 168 registers on sm_90; persistent_attn_block: 128 registers)
        Assert.That(MoeLaunchers.FollowOnCtasPerSm * 128 * 64 + 128 * 168, Is.LessThanOrEqualTo(65536));
        Assert.That((MoeLaunchers.FollowOnCtasPerSm + 1) * 128 * 64 + 128 * 168, Is.GreaterThan(65536), "and 6 would not");
        Assert.That(MoeLaunchers.ExpertsGemvGridCtasPerSm(WeightFormat.Bf16) * 128 * 64 + 128 * 128, Is.LessThanOrEqualTo(65536),
            "the bf16 grid leaves room for one persistent_attn_block CTA");
    }

    /// <summary>The launcher's CTAs per SM are the kernels' <c>__launch_bounds__</c> minimum, which is what makes them fit.</summary>
    [Test]
    public void CtasPerSm_AreTheKernelsLaunchBounds()
    {
        string src = KernelSources.Read("moe_decode.cu");
        int Define(string name) => int.Parse(System.Text.RegularExpressions.Regex.Match(src, $@"#define {name} (\d+)").Groups[1].Value);
        Assert.That(MoeLaunchers.ExpertsGemvCtasPerSm(WeightFormat.Bf16), Is.EqualTo(Define("EXPERTS_MIN_CTAS_PER_SM")));
        foreach (var f in Quantized)
            Assert.That(MoeLaunchers.ExpertsGemvCtasPerSm(f), Is.EqualTo(Define("EXPERTS_QUANT_MIN_CTAS_PER_SM")), f.Name());
        Assert.That(src, Does.Contain("__launch_bounds__(GEMV_THREADS, EXPERTS_MIN_CTAS_PER_SM) moe_experts_gemv("));
        foreach (var v in new[] { "fp8", "int8", "int4" })
            Assert.That(src, Does.Contain($"__launch_bounds__(GEMV_THREADS, EXPERTS_QUANT_MIN_CTAS_PER_SM) moe_experts_gemv_{v}("));
    }

    [Test]
    public void BadArguments_AreRejectedWithTheirName()
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions()));
        var s = MoeCase.Small;
        var moe = new MoeLaunchers(ctx.Loader, [s]);
        var p = ctx.Alloc<byte>(1 << 20);
        var bf16 = WeightOperand.Bf16(p);
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 9, p, bf16, bf16, p, p, p, p, DevicePtr.Null, p, p),
            Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("moe_experts_gemv: 9 tokens"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16, p, p, p, p, DevicePtr.Null, p, DevicePtr.Null),
            Throws.ArgumentException.With.Message.Contains("counters (sync)"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16 with { Format = WeightFormat.Int8Channel }, p, p, p, p, DevicePtr.Null, p, p),
            Throws.ArgumentException.With.Message.Contains("one launch takes one format"));
        // the follow-on GEMV: bf16 experts only, reading the block's output, of a shape CanFollowOn admits
        var q = p + (1 << 19);   // another buffer: the output below
        var fo = new ExpertsFollowOn(p, 40 * 132, q, s.Hidden, p, p, 1e-6f, 40 * 132, s.Hidden);
        var int8 = bf16 with { Format = WeightFormat.Int8Channel };
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, int8, int8, p, p, p, p, DevicePtr.Null, q, p, followOn: fo),
            Throws.ArgumentException.With.Message.Contains("follow-on GEMV runs only with bf16 experts"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16, p, p, p, p, DevicePtr.Null, p, p, followOn: fo),
            Throws.ArgumentException.With.Message.Contains("reads the block's output"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16, p, p, p, p, DevicePtr.Null, q, p, followOn: fo with { NormWeight = DevicePtr.Null }),
            Throws.ArgumentException.With.Message.Contains("needs y, x, its weight and its norm weight"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16, p, p, p, p, DevicePtr.Null, q, p, followOn: fo with { N = 64, Ldy = 64 }),
            Throws.ArgumentException.With.Message.Contains("does not qualify (CanFollowOn)"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 5, p, bf16, bf16, p, p, p, p, DevicePtr.Null, q, p, followOn: fo),
            Throws.ArgumentException.With.Message.Contains("5 token(s)"));
        // the fetch-ahead: bf16 experts only, never negative
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, int8, int8, p, p, p, p, DevicePtr.Null, q, p, fetchAhead: p, fetchAheadBytes: 1024),
            Throws.ArgumentException.With.Message.Contains("fetch-ahead runs only with bf16 experts").And.Message.Contains("fetchAheadBytes"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16, p, p, p, p, DevicePtr.Null, q, p, fetchAhead: p, fetchAheadBytes: -1),
            Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("must not be negative"));
    }
}
