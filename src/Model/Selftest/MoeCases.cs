using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// The MoE kernels (moe_router.cu, moe_align.cu, moe_decode.cu, moe_gemm.cu, moe_combine.cu): the router against
/// ReferenceOps.Matmul + RouterTopK, the token grouping against a CPU grouping, and the whole block (router -> grouping ->
/// experts -> combine) against <see cref="MoeCase.Reference"/>, at the Qwen3-30B-A3B shape and reduced and odd shapes.
/// </summary>
public static class MoeCases
{
    public static IEnumerable<KernelCase> Router()
    {
        yield return RouterCase(MoeCase.Real, 20, 11, false, "real router, 20 tokens (three token blocks)", real: true);
        yield return new KernelCase("moe_router", "router with exact ties: pairs of equal rows go to the lower index", false, ExactTies);
        yield return RouterCase(new MoeShape(256, 16, 512, 64, true), 9, 13, false, "256 experts, top-16");
        yield return RouterCase(new MoeShape(60, 4, 264, 64, false), 3, 14, false, "60 experts, top-4, no renormalisation");
        yield return new KernelCase("moe_router", "top-k = expert count: every expert once, weights sum to 1", false, TopKEqualsExpertCount);
        yield return new KernelCase("moe_router", "non-finite logits (NaN row, NaN token, +inf): ids always in [0, E)", false, NonFiniteLogits);
        // The decode router with the post-attention RMSNorm fused in (moe_router_norm_topk) against the unfused pair.
        yield return RouterNormCase(MoeCase.Real, 1, 21, "real shape, 1 token", real: true);
        yield return RouterNormCase(MoeCase.Real, 8, 22, "real shape, 8 tokens");
        yield return RouterNormCase(new MoeShape(60, 4, 264, 64, false), 3, 23, "60 experts, top-4, H 264 (33 chunks: a ragged norm warp)");
        yield return RouterNormCase(new MoeShape(256, 16, 512, 64, true), 5, 24, "256 experts, top-16");
        yield return RouterNormCase(new MoeShape(8, 2, 4104, 64, true), 2, 25, "H 4104 (513 chunks: 544 norm threads, two chunks per thread)");
        // The kernel's body is compiled per token count (1..8): the remaining counts.
        yield return RouterNormCase(MoeCase.Real, 6, 26, "real shape, 6 tokens");
        yield return RouterNormCase(new MoeShape(60, 4, 264, 64, false), 4, 27, "60 experts, top-4, 4 tokens");
        yield return RouterNormCase(new MoeShape(256, 16, 512, 64, true), 7, 28, "256 experts, top-16, 7 tokens");
    }

    /// <summary>
    /// moe_router_norm_topk vs add_rmsnorm_bf16 + moe_router_topk on the same x: h bitwise equal (the norm sums in the norm
    /// kernel's order); logits within one bf16 rounding step (the same products summed in another fp32 order may round to the
    /// neighbouring bf16: relative 2^-7 at most); ids exactly RouterTopK of the fused kernel's own logits and weights within
    /// the router cases' 2e-6; the ticket reset; one launch of E CTAs.
    /// </summary>
    static KernelCase RouterNormCase(MoeShape s, int tokens, int seed, string name, bool real = false) =>
        new("moe_router", $"moe_router_norm_topk: {name}", real, ctx =>
        {
            var mc = MoeCase.Create(s, tokens, seed, withExperts: false);
            var moe = ctx.Cached("moe", () => new MoeLaunchers(ctx.Loader));
            var rms = ctx.Cached("rmsnorm", () => new RmsNormLaunchers(ctx.Loader));
            var nw = KernelData.Random(new Random(seed), s.Hidden, 1.5f);
            const float eps = 1e-6f;
            int H = s.Hidden, E = s.Experts, k = s.TopK;
            DevicePtr dX = ctx.Upload(mc.Hidden), dR = ctx.Upload(mc.Router), dNw = ctx.Upload(nw);
            DevicePtr h1 = ctx.AllocFilled<ushort>(tokens * H), l1 = ctx.Alloc<float>(tokens * E), c1 = ctx.AllocFilled<int>(1, 0), i1 = ctx.Alloc<int>(tokens * k), w1 = ctx.Alloc<float>(tokens * k);
            DevicePtr h2 = ctx.AllocFilled<ushort>(tokens * H), l2 = ctx.Alloc<float>(tokens * E), c2 = ctx.AllocFilled<int>(1, 0), i2 = ctx.Alloc<int>(tokens * k), w2 = ctx.Alloc<float>(tokens * k);
            rms.AddRmsNorm(ctx.Stream, h1, dX, DevicePtr.Null, dNw, tokens, H, eps);
            moe.Router(ctx.Stream, s, tokens, h1, dR, l1, c1, i1, w1);
            ctx.Synchronize();
            var launches = ctx.RecordLaunches(() => moe.RouterNorm(ctx.Stream, s, tokens, dX, dNw, eps, dR, h2, l2, c2, i2, w2));
            var c = new Checker();
            c.Exact<ushort>(ctx.Download<ushort>(h2, tokens * H), ctx.Download<ushort>(h1, tokens * H), "h == add_rmsnorm_bf16's, bitwise");
            var logits = ctx.Download<float>(l2, tokens * E);
            c.Close(logits, ctx.Download<float>(l1, tokens * E), 0, 1.0 / 128, "logits vs the unfused router (one bf16 step)");
            var ids = ctx.Download<int>(i2, tokens * k);
            var wts = ctx.Download<float>(w2, tokens * k);
            var refIds = new int[k];
            var refW = new float[k];
            for (int t = 0; t < tokens; t++)
            {
                ReferenceOps.RouterTopK(logits.AsSpan(t * E, E), k, s.NormTopkProb, refIds, refW);
                c.Exact<int>(ids.AsSpan(t * k, k).ToArray(), refIds, $"token {t}: ids = RouterTopK of its logits");
                c.Close(wts.AsSpan(t * k, k), refW, 2e-6, 0, $"token {t}: weights");   // fp32 softmax order: a few ulps
            }
            c.Exact<int>(ctx.Download<int>(c2, 1), [0], "ticket reset for the next launch");
            if (launches.Count > 0) c.True(launches.Count == 1 && launches[0].GridBlocks == E, "emulator: one launch of E CTAs", string.Join(",", launches.Select(l => $"{l.Kernel}x{l.GridBlocks}")));
            if (real && tokens == 1 && launches.Count == 1 && !EmulatorModes.Ambient.Interleaved)   // lockstep counters: interleaved lanes split a warp's work
            {
                // The decode router is latency-bound: its time is the critical warp's chain (docs/timing-model.md, section 2),
                // the last CTA's warp 0 (norm, logit, ticket, softmax + top-k of 128 experts, k 8). 1038 instructions with the
                // sorted-key top-k and the one-token body; 1955 with the shuffle arg-max over 8 guarded tokens.
                c.AtMost(launches[0].MaxWarpInstructions, 1200, "emulator: the critical warp's instructions");
                c.AtMost(launches[0].MaxWarpDramRoundTrips + launches[0].MaxWarpL2RoundTrips, 6, "emulator: the critical warp's dependent round trips (weights, x, ticket, logits, ...)");
            }
            return c.Result();
        });

    public static IEnumerable<KernelCase> Align()
    {
        yield return AlignCase("moe_align 1 token, 128 experts", 128, 1, 8, (t, j) => j * 16 + 3, real: true);
        yield return AlignCase("moe_align 300 tokens over 128 experts (random, partial tiles)", 128, 300, 8, (t, j) => (Hash(t, j, 1) % 16) * 8 + j, real: true);
        yield return AlignCase("moe_align 300 tokens on 3 hot experts (many full tiles, 125 empty)", 128, 300, 8, (t, j) => new[] { 5, 77, 127 }[Hash(t, j, 2) % 3]);
        yield return AlignCase("moe_align odd: 60 experts, top-4, 37 tokens", 60, 37, 4, (t, j) => (t + 15 * j) % 60);
    }

    public static IEnumerable<KernelCase> Block()
    {
        var small = MoeCase.Small;
        yield return BlockCheck("small shape, 3 tokens, norm_topk_prob false, residual (decode)", () => MoeCase.Create(small with { NormTopkProb = false }, 3, seed: 3), residual: true, repeat: true);
        yield return BlockCheck("small shape, 64 tokens (grouped GEMMs)", () => MoeCase.Create(small, 64, seed: 4), repeat: true);
        yield return BlockCheck("small shape, 300 tokens (grouped GEMMs)", () => MoeCase.Create(small, 300, seed: 5));
        yield return BlockCheck("small shape, 300 tokens, 10 hot experts, 22 unused", () => MoeCase.Create(small, 300, seed: 6, hotExperts: 10), residual: true);
        yield return BlockCheck("small shape, 9 tokens (the smallest prefill: partial tiles everywhere)", () => MoeCase.Create(small, 9, seed: 7));
        yield return BlockCheck("small shape, 8 tokens on the same 8 experts (decode)", () => MoeCase.Create(small, 8, seed: 8, hotExperts: 8), repeat: true);
        yield return BlockCheck("tiny preset shape E 8 k 2 H 64 I 32, 20 tokens (guarded grouped GEMMs)", () => MoeCase.Create(new MoeShape(8, 2, 64, 32, true), 20, seed: 10));
        yield return BlockCheck("H 192 / I 96, 40 tokens (partial last N blocks, guarded)", () => MoeCase.Create(new MoeShape(8, 2, 192, 96, false), 40, seed: 11), residual: true);
        yield return NaNToken(3, 1);    // decode path: expert GEMVs
        yield return NaNToken(12, 5);   // prefill path: moe_align + grouped GEMMs
    }

    /// <summary>
    /// The real shape, its stacked expert arrays at full size ([128, 1536, 2048] / [128, 2048, 768], 1.2 GB; only the experts
    /// the cases route to are filled). Random routing at 64/300 tokens would touch ~all 128 experts with ~128 mostly padded
    /// tiles, so the prefill checks route 64 tokens to 8 hot experts (one full 64-row tile each) and 300 tokens among 24 hot
    /// experts (uneven tiles with padding; 104 experts get none).
    /// </summary>
    public static IEnumerable<KernelCase> RealBlock()
    {
        var real = MoeCase.Real;
        yield return BlockCheck("real shape, 1 token (decode) + DRAM bytes and coalescing per kernel", () => MoeCase.Create(real, 3, seed: 1), tokens: 1, real: true, counters: true);
        yield return BlockCheck("real shape, 3 tokens (decode) + residual", () => MoeCase.Create(real, 3, seed: 1), residual: true, real: true);
        yield return BlockCheck("real shape, 64 tokens on 8 hot experts (grouped GEMMs)", () => MoeCase.Create(real, 64, seed: 2, hotExperts: 8), real: true, heavy: true);
        yield return BlockCheck("real shape, 300 tokens on 24 hot experts (grouped GEMMs), bitwise repeatable", () => MoeCase.Create(real, 300, seed: 3, hotExperts: 24), real: true, repeat: true, heavy: true);
    }

    public static IEnumerable<KernelCase> All() => Router().Concat(Align()).Concat(Block()).Concat(RealBlock()).Concat(QuantizedCases.MoeBlock());

    // ---------------- router ----------------

    static (int[] Ids, float[] Weights, CheckResult Result) RunRouter(KernelCheckContext ctx, MoeShape s, int tokens, int seed, bool tied)
    {
        var c = MoeCase.Create(s, tokens, seed, tiedRouter: tied, withExperts: false);
        var moe = ctx.Cached("moe", () => new MoeLaunchers(ctx.Loader));
        var hidden = ctx.Upload(c.Hidden);
        var router = ctx.Upload(c.Router);
        var logits = ctx.Alloc<float>(tokens * s.Experts);
        var counters = ctx.AllocFilled<int>((tokens + 7) / 8, 0);   // zero once: the router leaves its tickets zero
        var ids = ctx.Alloc<int>(tokens * s.TopK);
        var wts = ctx.Alloc<float>(tokens * s.TopK);
        moe.Router(ctx.Stream, s, tokens, hidden, router, logits, counters, ids, wts);
        var refLogits = new float[tokens * s.Experts];
        ReferenceOps.Matmul(KernelData.ToFloats(c.Hidden), c.Router, refLogits, tokens, s.Hidden, s.Experts);
        var ch = new Checker();
        // Exact: with exact-sum data fp32 accumulation is order-independent, then one bf16 rounding.
        ch.Close(ctx.Download<float>(logits, tokens * s.Experts), refLogits, 0, 0, "router logits (exact)");
        ch.Exact<int>(ctx.Download<int>(counters, (tokens + 7) / 8), new int[(tokens + 7) / 8], "tickets reset for the next launch");
        var gotIds = ctx.Download<int>(ids, tokens * s.TopK);
        var gotW = ctx.Download<float>(wts, tokens * s.TopK);
        ch.Exact<int>(gotIds, c.RefIds, "top-k expert ids (ties to the lower index)");
        // Softmax in fp32 with a different exp implementation and summation order: a few fp32 ulps of values <= 1.
        ch.Close(gotW, c.RefWeights, 2e-6, 0, "top-k weights");
        return (gotIds, gotW, ch.Result());
    }

    static KernelCase RouterCase(MoeShape s, int tokens, int seed, bool tied, string name, bool real = false) =>
        new("moe_router", $"moe_router_topk: {name}", real, ctx => RunRouter(ctx, s, tokens, seed, tied).Result);

    /// <summary>Router rows 2m and 2m+1 are identical: every logit is tied with its pair, so the top-8 is 4 pairs, each (2m, 2m+1).</summary>
    static CheckResult ExactTies(KernelCheckContext ctx)
    {
        var (ids, w, r) = RunRouter(ctx, new MoeShape(128, 8, 256, 64, true), 5, 12, tied: true);
        var c = new Checker();
        int bad = 0;
        for (int t = 0; t < 5; t++)
            for (int q = 0; q < 4; q++)
            {
                int a = ids[t * 8 + 2 * q], b = ids[t * 8 + 2 * q + 1];
                if (a % 2 != 0 || b != a + 1 || w[t * 8 + 2 * q + 1] != w[t * 8 + 2 * q]) bad++;
            }
        c.True(bad == 0, "each tied pair is (2m, 2m+1) with bitwise equal weights", $"{bad} pairs are not");
        return new CheckResult([.. r.Lines, .. c.Result().Lines]);
    }

    static CheckResult TopKEqualsExpertCount(KernelCheckContext ctx)
    {
        var (ids, w, r) = RunRouter(ctx, new MoeShape(8, 8, 128, 64, true), 2, 15, tied: false);
        var c = new Checker();
        for (int t = 0; t < 2; t++)
        {
            c.Exact<int>(ids.Skip(t * 8).Take(8).Order().ToArray(), Enumerable.Range(0, 8).ToArray(), $"token {t}: every expert chosen once");
            // Renormalised weights sum to 1 up to fp32 rounding of 8 terms.
            c.Close([w.Skip(t * 8).Take(8).Sum()], [1f], 1e-6, 0, $"token {t}: weights sum to 1");
        }
        return new CheckResult([.. r.Lines, .. c.Result().Lines]);
    }

    /// <summary>
    /// Non-finite router logits (issue 12, fault 3): expert 5's router row holds a NaN (its logit is NaN for every token),
    /// token 2's hidden row is all NaN (all its logits NaN) and token 3's holds +inf (logits +inf, -inf or NaN, as inf * 0
    /// is NaN). A NaN logit counts as -inf, so the other tokens route exactly as the reference with expert 5 excluded;
    /// tokens 2 and 3 get k distinct ids in [0, E). Before the fix every id was 0x7fffffff.
    /// </summary>
    static CheckResult NonFiniteLogits(KernelCheckContext ctx)
    {
        var s = new MoeShape(128, 8, 256, 64, true);
        const int tokens = 11;
        var mc = MoeCase.Create(s, tokens, seed: 16, withExperts: false);
        var router = (ushort[])mc.Router.Clone();
        var hidden = (ushort[])mc.Hidden.Clone();
        router[5 * s.Hidden + 17] = 0x7fc0;                                           // NaN in expert 5's row
        for (int h = 0; h < s.Hidden; h++) hidden[2 * s.Hidden + h] = 0x7fc0;        // token 2: all NaN
        hidden[3 * s.Hidden + 9] = 0x7f80;                                           // token 3: +inf in one column
        var moe = ctx.Cached("moe", () => new MoeLaunchers(ctx.Loader));
        var logits = ctx.Alloc<float>(tokens * s.Experts);
        var counters = ctx.AllocFilled<int>((tokens + 7) / 8, 0);   // zero once: the router leaves its tickets zero
        var ids = ctx.Alloc<int>(tokens * s.TopK);
        var wts = ctx.Alloc<float>(tokens * s.TopK);
        moe.Router(ctx.Stream, s, tokens, ctx.Upload(hidden), ctx.Upload(router), logits, counters, ids, wts);
        var gotIds = ctx.Download<int>(ids, tokens * s.TopK);
        var gotW = ctx.Download<float>(wts, tokens * s.TopK);
        var gotLogits = ctx.Download<float>(logits, tokens * s.Experts);
        var c = new Checker();
        c.True(float.IsNaN(gotLogits[5]) && float.IsNaN(gotLogits[2 * s.Experts]), "the case really has NaN logits");
        for (int t = 0; t < tokens; t++)
        {
            var row = gotIds.AsSpan(t * s.TopK, s.TopK).ToArray();
            c.True(row.All(e => e >= 0 && e < s.Experts) && row.Distinct().Count() == s.TopK, $"token {t}: k distinct ids in [0, E)", string.Join(",", row));
            if (t is 2 or 3) continue;
            var refIds = new int[s.TopK];
            var refW = new float[s.TopK];
            ReferenceOps.RouterTopK(gotLogits.AsSpan(t * s.Experts, s.Experts), s.TopK, s.NormTopkProb, refIds, refW);
            c.Exact<int>(row, refIds, $"token {t}: ids as the reference with the NaN expert 5 excluded");
            c.Close(gotW.AsSpan(t * s.TopK, s.TopK), refW, 2e-6, 0, $"token {t}: weights");   // fp32 softmax order: a few ulps
        }
        c.Exact<int>(ctx.Download<int>(counters, (tokens + 7) / 8), new int[(tokens + 7) / 8], "tickets reset");
        return c.Result();
    }

    // ---------------- align ----------------

    static int Hash(int t, int j, int seed) => (int)((uint)((t * 7919 + j * 104729 + seed) * 2654435761u) >> 8);

    static KernelCase AlignCase(string name, int experts, int tokens, int topK, Func<int, int, int> expertOf, bool real = false) =>
        new("moe_align", name, real, ctx =>
        {
            const int BM = MoeWorkspace.TileRows;
            int slots = tokens * topK;
            var ids = new int[slots];
            for (int t = 0; t < tokens; t++) for (int j = 0; j < topK; j++) ids[t * topK + j] = expertOf(t, j);
            // CPU expectation: padded runs per expert, ascending slot order, -1 padding, one expert per tile.
            var counts = new int[experts];
            foreach (int e in ids) counts[e]++;
            var offsets = new int[experts + 1];
            for (int e = 0; e < experts; e++) offsets[e + 1] = offsets[e] + (counts[e] + BM - 1) / BM * BM;
            int rows = offsets[experts], tiles = rows / BM;
            var sorted = Enumerable.Repeat(-1, rows).ToArray();
            var fill = offsets[..experts].ToArray();
            for (int s = 0; s < slots; s++) sorted[fill[ids[s]]++] = s;
            var tileExpert = new int[tiles];
            for (int e = 0; e < experts; e++) for (int b = offsets[e] / BM; b < offsets[e + 1] / BM; b++) tileExpert[b] = e;

            var ws = MoeWorkspace.Compute(tokens, experts, topK, 64, 128);
            var c = new Checker();
            c.True(tiles <= ws.MaxTiles, "workspace bound on tiles", $"{tiles} > {ws.MaxTiles}");
            var moe = ctx.Cached("moe", () => new MoeLaunchers(ctx.Loader));
            var idsPtr = ctx.Upload(ids);
            var mem = ctx.Alloc<byte>(ws.TotalBytes);
            moe.Align(ctx.Stream, experts, slots, idsPtr, mem + ws.Counts, mem + ws.Offsets, mem + ws.SortedSlots, mem + ws.TileExpert, mem + ws.NumTiles);
            c.Exact<int>(ctx.Download<int>(mem + ws.Counts, experts), counts, "counts");
            c.Exact<int>(ctx.Download<int>(mem + ws.Offsets, experts + 1), offsets, "padded offsets");
            c.Exact<int>(ctx.Download<int>(mem + ws.NumTiles, 1), [tiles], "tile count");
            c.Exact<int>(ctx.Download<int>(mem + ws.SortedSlots, rows), sorted, "sorted slots (ascending within an expert, -1 padding)");
            c.Exact<int>(ctx.Download<int>(mem + ws.TileExpert, tiles), tileExpert, "expert of each tile");
            return c.Result();
        });

    // ---------------- block ----------------

    /// <summary>
    /// Runs the case's first <paramref name="tokens"/> tokens through the block and checks routing, output and (with
    /// <paramref name="repeat"/>) bitwise repeatability of a second run.
    /// </summary>
    public static KernelCase BlockCheck(string name, Func<MoeCase> make, bool residual = false, int tokens = -1, bool repeat = false,
        bool real = false, bool counters = false, bool heavy = false) =>
        new("moe_block", $"moe block: {name}", real, ctx =>
        {
            var mc = make();
            var run = new MoeRun(ctx, MoeWeightsOnDevice.For(ctx, mc.Shape, mc), mc, tokens);
            int T = run.Tokens, H = mc.Shape.Hidden, k = mc.Shape.TopK;
            ushort[]? res = null;
            DevicePtr resPtr = default;
            if (residual)
            {
                res = new ushort[mc.Tokens * H];
                MoeCase.Fill(res, 999);
                resPtr = ctx.Upload(res);
            }
            var launches = ctx.RecordLaunches(() => run.Run(resPtr));
            var first = run.ReadOutput();
            var c = new Checker();
            var gotIds = run.ReadIds();
            c.Exact<int>(gotIds, mc.RefIds.AsSpan(0, T * k), "expert ids (exact: logits are exact)");
            // Routing weights: softmax in fp32 with a different exp and summation order: a few fp32 ulps of values <= 1.
            c.Close(run.ReadWeights(), mc.RefWeights.AsSpan(0, T * k), 2e-6, 0, "routing weights");
            MoeCase.Compare(c, mc.Reference(res).AsSpan(0, T * H).ToArray(), first, "block output");
            if (repeat)
            {
                run.Run(resPtr);
                c.Exact<ushort>(run.ReadOutput(), first, "a second run is bitwise equal");
            }
            if (counters && launches.Count > 0) DecodeCounters(c, launches, mc.Shape, T, gotIds.Distinct().Count());
            return c.Result();
        }, heavy);

    /// <summary>
    /// The emulator counters of a one-token decode block: two launches (no memset; the experts' gate_up and down GEMVs and
    /// the combine in one, moe_experts_gemv), distinct DRAM sectors within 5% of the bytes each kernel must move (the
    /// selected experts' weights, the router weight, activations), coalescing >= 0.95, and >= 132 CTAs for the experts'
    /// launch (the router moves &lt; 1% of the bytes).
    /// </summary>
    static void DecodeCounters(Checker c, IReadOnlyList<LaunchRecord> launches, MoeShape s, int T, long experts)
    {
        int k = s.TopK, E = s.Experts, H = s.Hidden, I = s.Inter;
        static long Sec(long bytes) => (bytes + 31) / 32 * 32;
        long hidden = Sec(T * H * 2L), ids = Sec(T * k * 4L), wts = Sec(T * k * 4L), inter = Sec(T * k * I * 2L), y = Sec(T * k * H * 2L);
        var minBytes = new Dictionary<string, long>
        {
            ["moe_router_topk"] = Sec((long)E * H * 2) + hidden + Sec(T * E * 4L) + 32 /* ticket */ + ids + wts,
            // gate_up and down weights, hidden, ids, inter (written, read back from L2), y, the combine's routing weights and
            // output rows (each down tile combines its own rows), and the tile counters
            ["moe_experts_gemv"] = experts * (2 * I * H * 2 + H * I * 2L) + hidden + ids + inter + y + wts + Sec(T * H * 2L)
                + Sec((2 + T) * 4L),
        };
        c.Exact<string>(launches.Select(l => l.Kernel).ToArray(), ["moe_router_topk", "moe_experts_gemv"], "emulator: decode launches (the experts and the combine in one)");
        foreach (LaunchRecord l in launches)
        {
            if (!minBytes.TryGetValue(l.Kernel, out long min)) continue;
            double ratio = (double)l.DistinctSectors * 32 / min;
            c.True(ratio >= 1, $"emulator: {l.Kernel} moves at least the minimum", $"{ratio:F4}");
            c.AtMost(ratio, 1.05, $"emulator: {l.Kernel} distinct DRAM bytes / minimum");
            c.AtLeast(l.CoalescingEfficiency, 0.95, $"emulator: {l.Kernel} coalescing");
            if (l.Kernel is "moe_experts_gemv") c.AtLeast(l.GridBlocks, 132, $"emulator: {l.Kernel} CTAs");
        }
    }

    /// <summary>
    /// A token whose hidden row is all NaN (issue 12, fault 3): its router logits are all NaN. The block must stay in bounds
    /// (before the fix the router gave expert id 0x7fffffff, which the decode GEMVs used as an index), the other tokens must
    /// match the reference, and the NaN token's output must be NaN (visible, not a silently plausible row).
    /// </summary>
    static KernelCase NaNToken(int tokens, int nanToken) =>
        new("moe_block", $"moe block: small shape, {tokens} tokens, token {nanToken} all NaN ({(tokens <= MoeLaunchers.DecodeMaxTokens ? "decode" : "prefill")})", false, ctx =>
        {
            var mc = MoeCase.Create(MoeCase.Small, tokens, seed: 20 + tokens);
            var run = new MoeRun(ctx, MoeWeightsOnDevice.For(ctx, mc.Shape, mc), mc);
            int H = mc.Shape.Hidden, k = mc.Shape.TopK;
            ctx.Device.CopyToDevice(run.Hidden + (long)nanToken * H * 2, System.Runtime.InteropServices.MemoryMarshal.AsBytes(Enumerable.Repeat((ushort)0x7fc0, H).ToArray().AsSpan()));
            run.Run();
            var ids = run.ReadIds();
            var output = run.ReadOutput();
            var reference = mc.Reference();
            var keep = Enumerable.Range(0, tokens).Where(t => t != nanToken).ToArray();
            var c = new Checker();
            c.True(ids.All(e => e >= 0 && e < mc.Shape.Experts), "expert ids in [0, E)");
            c.Exact<int>(keep.SelectMany(t => ids.Skip(t * k).Take(k)).ToArray(), keep.SelectMany(t => mc.RefIds.Skip(t * k).Take(k)).ToArray(), "ids of the finite tokens");
            MoeCase.Compare(c, keep.SelectMany(t => reference.Skip(t * H).Take(H)).ToArray(), keep.SelectMany(t => output.Skip(t * H).Take(H)).ToArray(), "finite tokens' output");
            c.True(output.Skip(nanToken * H).Take(H).All(v => float.IsNaN(Bf16.ToFloat(v))), "the NaN token's output is NaN");
            return c.Result();
        });
}
