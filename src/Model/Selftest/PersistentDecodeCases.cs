using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// kernels/persistent_decode.cu (docs/kernels.md, "Persistent launches"): a layer's attention block as one launch must
/// equal gemv_bf16_mma (norm prologue) -> attn_decode_fused -> gemv_bf16_mma (residual) bit for bit: the qkv rows, the
/// K / V caches, the attention output and x. Exact, no tolerance: the tiles are those kernels' own code, and each of
/// them is held to an fp64 reference in its own cases (ProjectionCases, AttentionCases). With a MoE router stage, the block
/// must also equal moe_router_norm_topk after them: h, the logits, the top-k ids and weights (MoeCases holds that kernel
/// to its references); with TopkByExperts, h and the logits, and no ids or weights written.
/// </summary>
public static class PersistentDecodeCases
{
    public const int HeadDim = 128, PageSize = 16;
    const float Eps = 1e-6f;

    /// <summary>
    /// The selftest's cases: a block of hidden 1280 with 8 / 2 heads of 128 (the smallest of this head layout whose
    /// GEMVs take the tensor-core plan on 108 to 160 SMs: qkv 1536 and o_proj 1280 rows of 8), one row; then
    /// Qwen3-30B-A3B's (hidden 2048, 32 / 4 heads) at 1 and 4 rows, heavy on the emulator
    /// (tests/Kernels/PersistentDecodeTests run small shapes there in every scheduling mode).
    /// </summary>
    public static IEnumerable<KernelCase> All()
    {
        yield return new KernelCase("persistent_decode", "persistent_attn_block hidden 1280, heads 8/2, 1 row, context 150", false,
            ctx => Compare(ctx, [150], 1280, 8, 2, cooperative: false, seed: 4));
        yield return new KernelCase("persistent_decode", "persistent_attn_block real shape, 1 row, context 1000", true,
            ctx => Compare(ctx, [1000], 2048, 32, 4, cooperative: false, seed: 5), Heavy: true);
        yield return new KernelCase("persistent_decode", "persistent_attn_block real shape, 4 rows, contexts 1000/37/4000/300", true,
            ctx => Compare(ctx, [1000, 37, 4000, 300], 2048, 32, 4, cooperative: false, seed: 6), Heavy: true);
        yield return new KernelCase("persistent_decode", "persistent_attn_block real shape + router (128 experts, top-8), 1 row, context 1000", true,
            ctx => Compare(ctx, [1000], 2048, 32, 4, cooperative: false, seed: 7, router: RealRouter), Heavy: true);
    }

    /// <summary>Qwen3-30B-A3B's router: 128 experts, top-8, renormalised (the expert size is not the router's).</summary>
    public static readonly MoeShape RealRouter = new(128, 8, 2048, 768, true);

    /// <summary>
    /// The block for rows of context <paramref name="lens"/> (each row's new token is key len - 1) against the three
    /// launches: launched twice (the second finds the counters and tickets the first left, which must be zero), then
    /// with its stages as three launches (the timing model's measurement). <paramref name="cooperative"/>: the first two
    /// as co-resident launches (the emulator's interleaved schedule). <paramref name="router"/> (its hidden size
    /// <paramref name="hidden"/>): the block runs the router as its fourth stage, also fetching ahead 3 KiB of the qkv
    /// weight, and the oracle runs moe_router_norm_topk after the three launches.
    /// </summary>
    /// <remarks>
    /// <paramref name="early"/> (with a router): the block is also run with early routing, whole and with its stages apart:
    /// o_proj's output (in another buffer) and the router's outputs must be the same bits, x unchanged, the early tiles'
    /// logits and ids moe_early_route's on the same inputs (bitwise), and the router tiles must prefetch the chosen
    /// experts' first bytes with evict_last (the emulator's persisting sectors).
    /// </remarks>
    public static CheckResult Compare(KernelCheckContext ctx, int[] lens, int hidden, int nH, int nKV, bool cooperative, int seed, MoeShape? router = null,
        bool early = false)
    {
        const int d = HeadDim;
        var c = new Checker();
        var rng = new Random(seed);
        int rows = lens.Length, qDim = nH * d, qkvDim = (nH + 2 * nKV) * d, workspaceSplits = 64;
        var kv = new PagedKvFixture(rng, lens, nKV, d, PageSize);
        var attn = ctx.Cached("attn_decode128", () => new AttentionDecodeLaunchers(ctx.Loader, d));
        var gemv = ctx.Cached("gemv_mma", () => new GemvLaunchers(ctx.Loader));
        var block = ctx.Cached("persistent_decode128", () => new PersistentDecodeLaunchers(ctx.Loader, d));
        int sms = ctx.Device.Info.MultiprocessorCount;
        int splits = attn.ChooseSplits(rows, nKV, lens.Max(), workspaceSplits);
        c.True(PersistentDecodeLaunchers.CanRun(sms, d, rows, hidden, qkvDim, qDim, splits), $"the shape runs as one launch on {sms} SMs (CanRun)", $"{splits} splits");
        c.True(gemv.Plan(rows, qkvDim, hidden, WeightFormat.Bf16, normPrologue: true).TensorCores && gemv.Plan(rows, hidden, qDim, WeightFormat.Bf16).TensorCores,
            "the oracle's GEMVs take the tensor-core plan", "");
        if (!c.Result().Passed) return c.Result();

        // x ~ U(-2, 2); weights ~ U(-1, 1) / sqrt(K) (activations of order 1); the norm weights in [0.5, 1.5)
        ushort[] x0 = KernelData.Random(rng, rows * hidden, 2f);
        ushort[] wqkv = KernelData.Random(rng, qkvDim * hidden, 1f / MathF.Sqrt(hidden)), wo = KernelData.Random(rng, hidden * qDim, 1f / MathF.Sqrt(qDim));
        ushort[] inNorm = Enumerable.Range(0, hidden).Select(_ => Bf16.FromFloat(0.5f + (float)rng.NextDouble())).ToArray();
        ushort[] qw = KernelData.Random(rng, d, 1.5f), kw = KernelData.Random(rng, d, 1.5f);
        int[] positions = lens.Select(l => l - 1).ToArray();
        int[] slots = Enumerable.Range(0, rows).Select(s => kv.BlockTable[s * kv.MaxPagesPerSeq + positions[s] / PageSize] * PageSize + positions[s] % PageSize).ToArray();
        long cacheBytes = (long)kv.Pages * PageSize * nKV * d * 2;
        DevicePtr dWqkv = ctx.Upload(wqkv), dWo = ctx.Upload(wo), dNorm = ctx.Upload(inNorm), dQw = ctx.Upload(qw), dKw = ctx.Upload(kw);
        DevicePtr dInvFreq = ctx.Upload(KernelReference.InvFreq(d, 1e6)), dPos = ctx.Upload(positions), dSlots = ctx.Upload(slots);
        DevicePtr dTable = ctx.Upload(kv.BlockTable), dLens = ctx.Upload(lens);
        long wsBytes = attn.WorkspaceBytes(rows, nH, workspaceSplits, out long lseBytes);
        var rs = router ?? default;
        int E = rs.Experts, k = rs.TopK;
        var moe = router is null ? null : ctx.Cached("moe", () => new MoeLaunchers(ctx.Loader));
        DevicePtr dPost = router is null ? DevicePtr.Null : ctx.Upload(Enumerable.Range(0, hidden).Select(_ => Bf16.FromFloat(0.5f + (float)rng.NextDouble())).ToArray());
        DevicePtr dRouter = router is null ? DevicePtr.Null : ctx.Upload(KernelData.Random(rng, E * hidden, 1f / MathF.Sqrt(hidden)));
        DevicePtr routerTicket = ctx.AllocFilled<int>(1, 0);

        // One run of either path on fresh x, qkv, caches and attention buffers; what it wrote and the launches' stages.
        // early routing: the folded router of this layer (moe_router_fold, held to its fp64 reference in EarlyRoutingCases),
        // the experts' gate_up weight the router tiles prefetch from (4 KiB per expert, 1 KiB of it prefetched per choice)
        const long expertStride = 4096, earlyPrefetch = 1024;
        var earlyLaunchers = early && router is not null ? ctx.Cached("early_route", () => new EarlyRoutingLaunchers(ctx.Loader)) : null;
        DevicePtr dFolded = DevicePtr.Null, dGateUp = DevicePtr.Null;
        if (earlyLaunchers is not null)
        {
            dFolded = ctx.Alloc<ushort>(E * qDim);
            earlyLaunchers.Fold(ctx.Stream, E, hidden, qDim, dRouter, dPost, dWo, dFolded);
            dGateUp = ctx.AllocFilled<byte>(E * expertStride, 0);
        }

        // One run of either path on fresh x, qkv, caches and attention buffers; what it wrote and the launches' stages.
        // With early routing, o_proj writes xOut (x stays the layer's input) and the early tiles the unscaled logits and ids.
        (ushort[] Qkv, byte[] K, byte[] V, ushort[] Attn, ushort[] X, LaunchStage?[] Stages, ushort[] H, float[] Logits, int[] Ids, float[] Weights,
            ushort[] XIn, float[] EarlyU, int[] EarlyIds, long PersistingSectors) Run(
            bool persistent, DevicePtr counters, DevicePtr tickets, bool apart, bool topkByExperts = false, bool earlyRouting = false)
        {
            DevicePtr dx = ctx.Upload(x0), dXOut = earlyRouting ? ctx.AllocFilled<ushort>(rows * hidden) : DevicePtr.Null;
            DevicePtr dU = earlyRouting ? ctx.AllocFilled<float>(rows * E) : DevicePtr.Null, dEarlyIds = earlyRouting ? ctx.AllocFilled<int>(rows * k) : DevicePtr.Null;
            DevicePtr dQkv = ctx.AllocFilled<ushort>(rows * qkvDim), dAttn = ctx.AllocFilled<ushort>(rows * qDim);
            DevicePtr dH = ctx.AllocFilled<ushort>(rows * hidden), dLogits = ctx.AllocFilled<float>(Math.Max(1, rows * E)),
                dIds = ctx.AllocFilled<int>(Math.Max(1, rows * k)), dW = ctx.AllocFilled<float>(Math.Max(1, rows * k));
            AttentionBlockRouter? stage = router is null ? null
                : new AttentionBlockRouter(rs, dPost, Eps, dRouter, dH, dLogits, dIds, dW, dWqkv, Math.Min(3072, (long)qkvDim * hidden * 2), topkByExperts,
                    earlyRouting ? new AttentionBlockEarlyRouting(dFolded, dU, dEarlyIds, dGateUp, expertStride, earlyPrefetch) : null);
            DevicePtr dK = kv.UploadK(ctx), dV = kv.UploadV(ctx);
            DevicePtr dPartial = ctx.Alloc<byte>(wsBytes), dLse = ctx.AllocFilled<float>(lseBytes / sizeof(float));
            var a = new DecodeAttentionArgs(DevicePtr.Null, qDim, dK, dV, dTable, kv.MaxPagesPerSeq, PageSize, dLens, rows, lens.Max(),
                nH, nKV, dAttn, qDim, dPartial, dLse, workspaceSplits);
            var rope = new DecodeRopeArgs(dQkv, qkvDim, DevicePtr.Null, qDim, dQw, dKw, dInvFreq, false, dPos, dSlots, Eps, 1f, tickets);
            var launches = ctx.RecordLaunches(() =>
            {
                if (persistent)
                    block.AttentionBlock(ctx.Stream, attn, new AttentionBlockWeights(dx, hidden, hidden, dNorm, Eps, dWqkv, dWo, XOut: dXOut), a, rope, counters, cooperative && !apart, apart, stage);
                else
                {
                    gemv.Gemv(ctx.Stream, dQkv, qkvDim, dx, hidden, WeightOperand.Bf16(dWqkv), DevicePtr.Null, rows, qkvDim, hidden, DevicePtr.Null, 0, dNorm, Eps);
                    attn.DecodeFused(ctx.Stream, a, rope);
                    gemv.Gemv(ctx.Stream, dx, hidden, dAttn, qDim, WeightOperand.Bf16(dWo), dx, rows, hidden, qDim, DevicePtr.Null, 0);
                    moe?.RouterNorm(ctx.Stream, rs, rows, dx, dPost, Eps, dRouter, dH, dLogits, routerTicket, dIds, dW);
                }
            });
            return (ctx.Download<ushort>(dQkv, rows * qkvDim), ctx.Download<byte>(dK, cacheBytes), ctx.Download<byte>(dV, cacheBytes),
                ctx.Download<ushort>(dAttn, rows * qDim), ctx.Download<ushort>(earlyRouting ? dXOut : dx, rows * hidden), launches.Select(l => l.Stage).ToArray(),
                ctx.Download<ushort>(dH, rows * hidden), ctx.Download<float>(dLogits, rows * E), ctx.Download<int>(dIds, rows * k), ctx.Download<float>(dW, rows * k),
                ctx.Download<ushort>(dx, rows * hidden), earlyRouting ? ctx.Download<float>(dU, rows * E) : [], earlyRouting ? ctx.Download<int>(dEarlyIds, rows * k) : [],
                launches.Sum(l => l.PersistingSectors));
        }

        DevicePtr oracleTickets = ctx.AllocFilled<int>(rows * nKV, 0), tickets = ctx.AllocFilled<int>(rows * nKV, 0);
        DevicePtr counters = ctx.AllocFilled<int>(PersistentDecodeLaunchers.CounterInts, 0);
        var expected = Run(persistent: false, DevicePtr.Null, oracleTickets, apart: false);
        c.True(!expected.X.AsSpan().SequenceEqual(x0), "the oracle's o_proj added to x", "");
        if (router is not null) c.True(expected.Ids.Distinct().Count() > 1 && expected.Weights.All(w => w > 0), "the oracle's router chose experts", string.Join(",", expected.Ids));
        int stageCount = router is null ? 3 : 4;
        for (int run = 1; run <= 3; run++)
        {
            bool apart = run == 3;
            var got = Run(persistent: true, counters, tickets, apart);
            string r = $"launch {run}{(apart ? ", stages apart" : "")}";
            if (ctx.Emulator is not null)   // (the emulator records launches; a GPU does not)
                c.True(got.Stages.SequenceEqual(apart ? Enumerable.Range(0, stageCount).Select(i => (LaunchStage?)new LaunchStage(i, stageCount)) : new LaunchStage?[] { null }),
                    $"{r}: {(apart ? $"{stageCount} launches, one per stage" : "one launch")}", string.Join(", ", got.Stages.Select(s => s?.ToString() ?? "whole")));
            if (router is not null)
            {
                c.Exact<ushort>(got.H, expected.H, $"{r}: h = moe_router_norm_topk's (bitwise)");
                c.Exact<float>(got.Logits, expected.Logits, $"{r}: router logits = moe_router_norm_topk's (bitwise)");
                c.Exact<int>(got.Ids, expected.Ids, $"{r}: top-k ids = moe_router_norm_topk's");
                c.Exact<float>(got.Weights, expected.Weights, $"{r}: top-k weights = moe_router_norm_topk's (bitwise)");
            }
            c.Exact<ushort>(got.Qkv, expected.Qkv, $"{r}: qkv rows = gemv_bf16_mma's with the norm prologue (bitwise)");
            c.Exact<byte>(got.K, expected.K, $"{r}: K cache = attn_decode_fused's (bitwise)");
            c.Exact<byte>(got.V, expected.V, $"{r}: V cache = attn_decode_fused's (bitwise)");
            c.Exact<ushort>(got.Attn, expected.Attn, $"{r}: attention output = attn_decode_fused's (bitwise)");
            c.Exact<ushort>(got.X, expected.X, $"{r}: x = gemv_bf16_mma's with the residual (bitwise)");
            c.Exact<int>(ctx.Download<int>(counters, PersistentDecodeLaunchers.CounterInts), new int[PersistentDecodeLaunchers.CounterInts], $"{r}: counters zero after the launch");
            c.Exact<int>(ctx.Download<int>(tickets, rows * nKV), new int[rows * nKV], $"{r}: combine tickets zero after the launch");
        }
        if (router is not null)
        {
            // TopkByExperts: the router tiles write h and the logits only; the ids and weights stay as they were (0xff bytes)
            // for the experts' launch to compute (MoeExpertsGemvTests holds that to the router's top-k)
            var got = Run(persistent: true, counters, tickets, apart: false, topkByExperts: true);
            c.Exact<ushort>(got.H, expected.H, "top-k by the experts: h = moe_router_norm_topk's (bitwise)");
            c.Exact<float>(got.Logits, expected.Logits, "top-k by the experts: router logits = moe_router_norm_topk's (bitwise)");
            c.Exact<int>(got.Ids, Enumerable.Repeat(-1, rows * k).ToArray(), "top-k by the experts: the router tiles wrote no ids");
            c.True(got.Weights.All(float.IsNaN), "top-k by the experts: the router tiles wrote no weights", "");
            c.Exact<ushort>(got.X, expected.X, "top-k by the experts: x (bitwise)");
            c.Exact<int>(ctx.Download<int>(counters, PersistentDecodeLaunchers.CounterInts), new int[PersistentDecodeLaunchers.CounterInts], "top-k by the experts: counters zero after the launch");
        }
        if (earlyLaunchers is not null)
        {
            // the oracle of early routing: moe_early_route on the layer's input and the oracle's attention output
            DevicePtr dX0 = ctx.Upload(x0), dA = ctx.Upload(expected.Attn), dU = ctx.AllocFilled<float>(rows * E), dI = ctx.AllocFilled<int>(rows * k);
            earlyLaunchers.Route(ctx.Stream, rows, E, k, hidden, qDim, dX0, dA, dRouter, dPost, dFolded, dU, dI, ctx.AllocFilled<int>(1, 0));
            float[] u = ctx.Download<float>(dU, rows * E);
            int[] ids = ctx.Download<int>(dI, rows * k);
            var plain = Run(persistent: true, counters, tickets, apart: false);
            foreach (bool apart in new[] { false, true })
            {
                var got = Run(persistent: true, counters, tickets, apart, earlyRouting: true);
                string r = $"early routing{(apart ? ", stages apart" : "")}";
                c.Exact<ushort>(got.X, expected.X, $"{r}: o_proj's output (in xOut) = gemv_bf16_mma's with the residual (bitwise)");
                c.Exact<ushort>(got.XIn, x0, $"{r}: x, the layer's input, unchanged");
                c.Exact<ushort>(got.H, expected.H, $"{r}: h = moe_router_norm_topk's (bitwise)");
                c.Exact<float>(got.Logits, expected.Logits, $"{r}: router logits = moe_router_norm_topk's (bitwise)");
                c.Exact<int>(got.Ids, expected.Ids, $"{r}: top-k ids = moe_router_norm_topk's (the hint changes no result)");
                c.Exact<float>(got.Weights, expected.Weights, $"{r}: top-k weights = moe_router_norm_topk's (bitwise)");
                c.Exact<ushort>(got.Attn, expected.Attn, $"{r}: attention output = attn_decode_fused's (bitwise)");
                c.Exact<float>(got.EarlyU, u, $"{r}: unscaled logits = moe_early_route's (bitwise)");
                c.Exact<int>(got.EarlyIds, ids, $"{r}: early ids = moe_early_route's");
                c.Exact<int>(ctx.Download<int>(counters, PersistentDecodeLaunchers.CounterInts), new int[PersistentDecodeLaunchers.CounterInts], $"{r}: counters zero after the launch");
                if (ctx.Emulator is not null && !apart)
                {
                    // the router tiles' prefetch: 1 KiB (32 sectors) of each chosen expert's block, with evict_last, beside the
                    // 3 KiB fetch-ahead both runs make; a row's k choices are distinct experts, rows may share some
                    long extra = got.PersistingSectors - plain.PersistingSectors, perChoice = earlyPrefetch / 32;
                    c.True(extra >= k * perChoice && extra <= (long)rows * k * perChoice, $"{r}: the early-routed experts' bytes prefetched with evict_last",
                        $"{extra} more persisting sectors, expected {k * perChoice} to {rows * k * perChoice}");
                }
            }
        }
        return c.Result();
    }
}
