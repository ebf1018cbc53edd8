using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// Early routing's kernels (kernels/early_route.cu, docs/kernels.md "Early routing") against the host reference
/// <see cref="EarlyRouting"/>: <c>moe_router_fold</c>'s folded router <c>M = W_r diag(g) W_o</c>, and
/// <c>moe_early_route</c>'s unscaled logits <c>u = W_r (g * x) + M a</c> and their top-k ids, at the tiny preset's shape,
/// odd shapes and Qwen3-30B-A3B's (E 128, k 8, H 2048, Q 4096).
/// </summary>
public static class EarlyRoutingCases
{
    public static IEnumerable<KernelCase> All()
    {
        yield return FoldCase(8, 64, 64, 1, "tiny preset shape: E 8, H 64, Q 64");
        yield return FoldCase(60, 264, 136, 2, "odd: E 60 (a partial row block), H 264 (a partial chunk), Q 136 (a partial column block)");
        yield return FoldCase(128, 256, 256, 3, "128 experts, H 256, Q 256");
        yield return RouteCase(8, 2, 64, 64, 1, 11, "tiny preset shape, 1 token");
        yield return RouteCase(60, 4, 264, 136, 3, 12, "odd: E 60, top-4, H 264, Q 136, 3 tokens");
        yield return RouteCase(128, 8, 2048, 4096, 1, 13, "real shape, 1 token", real: true);
        yield return RouteCase(128, 8, 2048, 4096, 4, 14, "real shape, 4 tokens", real: true);
        yield return RouteCase(256, 16, 128, 64, 2, 15, "256 experts, top-16, 2 tokens");
        yield return new KernelCase("early_route", "moe_early_route: exact ties go to the lower expert", false, Ties);
    }

    /// <summary>
    /// moe_router_fold vs <see cref="EarlyRouting.FoldRouter"/> (fp64 sums): each element within its bf16 rounding (half
    /// an ulp: 2^-8 of the value at most) plus the fp32 accumulation's bound, H fmas in order: (H + 1) 2^-24 sum_i
    /// |W_r[e, i] g[i] W_o[i, j]| (each fma one rounding; the product W_r g is exact).
    /// </summary>
    static KernelCase FoldCase(int experts, int hidden, int qDim, int seed, string name) =>
        new("early_route", $"moe_router_fold: {name}", false, ctx =>
        {
            var rng = new Random(seed);
            ushort[] router = KernelData.Random(rng, experts * hidden), g = KernelData.Random(rng, hidden, 2f), wo = KernelData.Random(rng, hidden * qDim, 0.5f);
            var launchers = ctx.Cached("early_route", () => new EarlyRoutingLaunchers(ctx.Loader));
            DevicePtr dR = ctx.Upload(router), dG = ctx.Upload(g), dO = ctx.Upload(wo), dM = ctx.AllocFilled<ushort>(experts * qDim);
            var launches = ctx.RecordLaunches(() => launchers.Fold(ctx.Stream, experts, hidden, qDim, dR, dG, dO, dM));
            var expected = EarlyRouting.FoldRouter(new MoeWeights(new Bf16Weight(router, experts, hidden, "router"), []),
                new Bf16Weight(g, 1, hidden, "norm"), new Bf16Weight(wo, hidden, qDim, "o_proj"));
            var tol = new float[experts * qDim];
            for (int e = 0; e < experts; e++)
                for (int j = 0; j < qDim; j++)
                {
                    double abs = 0;
                    for (int i = 0; i < hidden; i++)
                        abs += Math.Abs((double)Bf16.ToFloat(router[e * hidden + i]) * Bf16.ToFloat(g[i]) * Bf16.ToFloat(wo[i * qDim + j]));
                    tol[e * qDim + j] = (float)(Math.Pow(2, -8) * Math.Abs(expected[e * qDim + j]) + (hidden + 1) * Math.Pow(2, -24) * abs * (1 + Math.Pow(2, -8)));
                }
            var c = new Checker();
            c.Within(KernelData.ToFloats(ctx.Download<ushort>(dM, experts * qDim)), expected, tol, "2^-8|ref| + (H+1) 2^-24 sum|terms|", "M vs the fp64 fold (bf16 rounding + fp32 sum)");
            if (launches.Count > 0)
                c.True(launches.Count == 1 && launches[0].GridBlocks == (qDim + 127) / 128 * ((experts + 7) / 8), "emulator: one launch of ceil(Q/128) x ceil(E/8) CTAs",
                    string.Join(",", launches.Select(l => $"{l.Kernel}x{l.GridBlocks}")));
            return c.Result();
        });

    /// <summary>
    /// moe_early_route vs <see cref="EarlyRouting.UnscaledLogits"/> (fp64 sums) on the same bf16 M: u within the fp32
    /// accumulation's bound, n roundings on a lane's chain (8 fmas per 16-byte chunk of W_r's row; 8 per chunk of M's row
    /// and the add of that chunk's sum: 9) then 5 shuffle adds: (n + 6) 2^-24 sum |terms|; the ids exactly the top-k of the kernel's own u (descending, ties to the lower expert);
    /// the ticket reset; one launch of ceil(E / 4) CTAs.
    /// </summary>
    static KernelCase RouteCase(int experts, int topK, int hidden, int qDim, int tokens, int seed, string name, bool real = false) =>
        new("early_route", $"moe_early_route: {name}", real, ctx =>
        {
            var rng = new Random(seed);
            ushort[] x = KernelData.Random(rng, tokens * hidden, 4f), a = KernelData.Random(rng, tokens * qDim),
                router = KernelData.Random(rng, experts * hidden, 0.05f), g = KernelData.Random(rng, hidden, 2f), m = KernelData.Random(rng, experts * qDim, 0.05f);
            var (u, ids, counter, launches) = Run(ctx, tokens, experts, topK, hidden, qDim, x, a, router, g, m);
            var expected = new float[tokens * experts];
            float[] xf = KernelData.ToFloats(x), af = KernelData.ToFloats(a), mf = KernelData.ToFloats(m);
            EarlyRouting.UnscaledLogits(xf, af, new MoeWeights(new Bf16Weight(router, experts, hidden, "router"), []), new Bf16Weight(g, 1, hidden, "norm"),
                mf, tokens, expected);
            int perLane = 8 * ((hidden / 8 + 31) / 32) + 9 * ((qDim / 8 + 31) / 32);
            var tol = new float[tokens * experts];
            for (int t = 0; t < tokens; t++)
                for (int e = 0; e < experts; e++)
                {
                    double abs = 0;
                    for (int i = 0; i < hidden; i++) abs += Math.Abs((double)Bf16.ToFloat(router[e * hidden + i]) * Bf16.ToFloat(g[i]) * xf[t * hidden + i]);
                    for (int j = 0; j < qDim; j++) abs += Math.Abs((double)mf[e * qDim + j] * af[t * qDim + j]);
                    tol[t * experts + e] = (float)((perLane + 6) * Math.Pow(2, -24) * abs);
                }
            var c = new Checker();
            c.Within(u, expected, tol, "(n+6) 2^-24 sum|terms|", "u vs the fp64 reference (fp32 sum)");
            CheckIds(c, u, ids, tokens, experts, topK);
            c.Exact<int>(counter, [0], "ticket reset for the next launch");
            if (launches.Count > 0)
                c.True(launches.Count == 1 && launches[0].GridBlocks == (experts + 3) / 4, "emulator: one launch of ceil(E/4) CTAs",
                    string.Join(",", launches.Select(l => $"{l.Kernel}x{l.GridBlocks}")));
            return c.Result();
        });

    /// <summary>
    /// Exact ties: pairs of equal router rows and equal M rows (x and a the same for both) give equal u, and the top-k takes
    /// the lower expert of a pair first; its ids are the host's order of u (descending, then the lower index).
    /// </summary>
    static CheckResult Ties(KernelCheckContext ctx)
    {
        const int experts = 16, topK = 5, hidden = 64, qDim = 32, tokens = 2;
        var rng = new Random(21);
        ushort[] x = KernelData.Random(rng, tokens * hidden), a = KernelData.Random(rng, tokens * qDim),
            router = KernelData.Random(rng, experts * hidden), g = KernelData.Random(rng, hidden), m = KernelData.Random(rng, experts * qDim);
        for (int e = 1; e < experts; e += 2)
        {
            Array.Copy(router, (e - 1) * hidden, router, e * hidden, hidden);
            Array.Copy(m, (e - 1) * qDim, m, e * qDim, qDim);
        }
        var (u, ids, _, _) = Run(ctx, tokens, experts, topK, hidden, qDim, x, a, router, g, m);
        var c = new Checker();
        for (int t = 0; t < tokens; t++)
            for (int e = 1; e < experts; e += 2)
                c.True(u[t * experts + e] == u[t * experts + e - 1], $"token {t}: experts {e - 1} and {e} have the same u", $"{u[t * experts + e - 1]} vs {u[t * experts + e]}");
        CheckIds(c, u, ids, tokens, experts, topK);
        return c.Result();
    }

    /// <summary>The ids are the top-k of the kernel's own u, by value descending, ties to the lower expert.</summary>
    static void CheckIds(Checker c, float[] u, int[] ids, int tokens, int experts, int topK)
    {
        for (int t = 0; t < tokens; t++)
        {
            var row = u.AsSpan(t * experts, experts).ToArray();
            var expected = Enumerable.Range(0, experts).OrderByDescending(e => row[e]).ThenBy(e => e).Take(topK).ToArray();
            c.Exact<int>(ids.AsSpan(t * topK, topK).ToArray(), expected, $"token {t}: ids = the top-{topK} of its u, ties to the lower expert");
        }
    }

    static (float[] U, int[] Ids, int[] Counter, IReadOnlyList<LaunchRecord> Launches) Run(KernelCheckContext ctx, int tokens, int experts, int topK, int hidden, int qDim,
        ushort[] x, ushort[] a, ushort[] router, ushort[] g, ushort[] m)
    {
        var launchers = ctx.Cached("early_route", () => new EarlyRoutingLaunchers(ctx.Loader));
        DevicePtr dX = ctx.Upload(x), dA = ctx.Upload(a), dR = ctx.Upload(router), dG = ctx.Upload(g), dM = ctx.Upload(m);
        DevicePtr dU = ctx.AllocFilled<float>(tokens * experts), dIds = ctx.AllocFilled<int>(tokens * topK), dC = ctx.AllocFilled<int>(1, 0);
        var launches = ctx.RecordLaunches(() => launchers.Route(ctx.Stream, tokens, experts, topK, hidden, qDim, dX, dA, dR, dG, dM, dU, dIds, dC));
        ctx.Synchronize();
        return (ctx.Download<float>(dU, tokens * experts), ctx.Download<int>(dIds, tokens * topK), ctx.Download<int>(dC, 1), launches);
    }
}
