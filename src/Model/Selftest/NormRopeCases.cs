using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>rmsnorm.cu (add_rmsnorm_bf16, rmsnorm_heads_bf16) and rope.cu (qk_norm_rope_kv_write) against the CPU reference.</summary>
public static class NormRopeCases
{
    // Two bf16 roundings, each of which may land on the other side of a rounding boundary because the kernel's
    // rsqrt.approx and fp32 sum order differ from the fp64 reference: at most 2 bf16 ulps = 2 * 2^-7 relative.
    internal const double RmsRtol = 1.0 / 64, RmsAtol = 1e-6;

    // Normed values are at most ~3 in magnitude (bf16 ulp there: 2^-6). A rounding flip in the norm (2 ulps: rsqrt.approx vs
    // fp64) or in bf16(cos/sin) (sincosf is within 2 fp32 ulps of the true value) moves a product by about one ulp of the
    // inputs, not of the (possibly cancelled) output: hence an absolute term of 2.5 ulps at magnitude 2-4, plus 2^-6 relative.
    private const double RopeAtol = 0.04, RopeRtol = 1.0 / 64;

    public static IEnumerable<KernelCase> AddRmsNorm()
    {
        yield return AddRmsNormCase(3, 2048, true, real: true);    // real hidden rows (decode, a few tokens)
        yield return AddRmsNormCase(2, 2048, false, real: true);   // final norm / no residual
        yield return AddRmsNormCase(1, 8, true);                   // one chunk
        yield return AddRmsNormCase(5, 136, true);                 // 17 chunks: not a multiple of a warp
        yield return AddRmsNormCase(2, 4104, true);                // 513 chunks: 544 threads, ragged last warp
    }

    public static IEnumerable<KernelCase> RmsNormHeads()
    {
        yield return HeadsCase(2, 32, 128, 40 * 128, real: true);  // q heads inside fused qkv rows (32 q + 4 k + 4 v heads of 128), in place
        yield return HeadsCase(3, 4, 128, 4 * 128, real: true);    // k heads, packed
        yield return HeadsCase(1, 3, 24, 100);                     // odd: width 24 (3 chunks), padded token stride
    }

    public static IEnumerable<KernelCase> Rope()
    {
        yield return RopeCase(128, 32, 4, [0, 17, 40000], 1.0f, false, real: true);   // real shape, position 0 (identity rope), large position
        yield return RopeCase(128, 32, 4, [5], 1.25f, true, real: true);               // one token, q in place, attention_scaling (YaRN-like)
        yield return RopeCase(64, 6, 2, [3, 4, 5, 6, 7], 1.0f, false);                 // odd: 10 heads (partial warp group), D 64
        yield return RopeCase(256, 2, 1, [100, 1], 1.0f, true);                        // D 256
        yield return RopeCase(32, 4, 2, [0, 9, 3000], 1.0f, false);                    // D 32 (one element per lane; the small preset)
        yield return RopeCase(32, 8, 2, [7, 2], 1.25f, true);                          // D 32, q in place, 12 heads (partial warp group)
        yield return RopeCase(16, 4, 2, [0, 5, 900], 1.0f, false);                     // D 16 (lanes 0..15; 16..31 idle; the tiny preset)
        yield return RopeCase(128, 16, 8, [40000, 40001, 70000], 1.0f, false, real: true, perToken: true); // dynamic NTK: a table per token (Qwen3-0.6B heads)
        yield return RopeCase(16, 4, 2, [3, 900, 901, 4], 1.0f, true, perToken: true);             // per-token tables, D 16, in place
        yield return new KernelCase("rope", "rope at position 0 is the per-head norm (bitwise), D 128", true, PositionZeroIsNormOnly);
    }

    public static IEnumerable<KernelCase> All() => AddRmsNorm().Concat(RmsNormHeads()).Concat(Rope());

    static KernelCase AddRmsNormCase(int rows, int width, bool withDelta, bool real = false) =>
        new("rmsnorm", $"add_rmsnorm rows {rows} width {width}{(withDelta ? " + residual" : "")}", real, ctx =>
        {
            var launchers = ctx.Cached("rmsnorm", () => new RmsNormLaunchers(ctx.Loader));
            var rng = new Random(rows * 7919 + width);
            ushort[] hidden = KernelData.Random(rng, rows * width, 4f), delta = KernelData.Random(rng, rows * width, 2f);
            ushort[] weight = KernelData.Random(rng, width, 1.5f);
            DevicePtr dHidden = ctx.Upload(hidden), dDelta = withDelta ? ctx.Upload(delta) : DevicePtr.Null;
            DevicePtr dWeight = ctx.Upload(weight), dOut = ctx.AllocFilled<ushort>(rows * width);
            launchers.AddRmsNorm(ctx.Stream, dOut, dHidden, dDelta, dWeight, rows, width, 1e-6f);

            var expectedHidden = new float[rows * width];
            var expectedOut = new float[rows * width];
            float[] w = KernelData.ToFloats(weight);
            for (int r = 0; r < rows; r++)
            {
                for (int i = 0; i < width; i++)
                {
                    float h = Bf16.ToFloat(hidden[r * width + i]);
                    expectedHidden[r * width + i] = withDelta ? Bf16.Round(h + Bf16.ToFloat(delta[r * width + i])) : h;
                }
                KernelReference.RmsNorm(expectedHidden.AsSpan(r * width, width), w, 1e-6f, expectedOut.AsSpan(r * width, width));
            }
            var c = new Checker();
            // The residual add is one fp32 add of two bf16 values rounded once, the same on both sides: exact.
            c.CloseBf16(ctx.Download<ushort>(dHidden, rows * width), expectedHidden, 0, 0, "hidden after add");
            c.CloseBf16(ctx.Download<ushort>(dOut, rows * width), expectedOut, RmsAtol, RmsRtol, "normalised output");
            return c.Result();
        });

    static KernelCase HeadsCase(int tokens, int heads, int width, int stride, bool real = false) =>
        new("rmsnorm", $"rmsnorm_heads tokens {tokens} heads {heads} x {width} stride {stride}", real, ctx =>
        {
            var launchers = ctx.Cached("rmsnorm", () => new RmsNormLaunchers(ctx.Loader));
            var rng = new Random(tokens * 31 + heads * 7 + width);
            ushort[] data = KernelData.Random(rng, tokens * stride, 3f);
            ushort[] weight = KernelData.Random(rng, width, 1.5f);
            DevicePtr dData = ctx.Upload(data), dWeight = ctx.Upload(weight);
            launchers.RmsNormHeads(ctx.Stream, dData, stride, dData, stride, weight: dWeight, tokens, heads, width, 1e-6f);
            float[] expected = KernelData.ToFloats(data);   // columns outside the heads must stay untouched
            float[] w = KernelData.ToFloats(weight);
            for (int t = 0; t < tokens; t++)
                for (int h = 0; h < heads; h++)
                {
                    var row = expected.AsSpan(t * stride + h * width, width);
                    KernelReference.RmsNorm(row.ToArray(), w, 1e-6f, row);
                }
            var c = new Checker();
            c.CloseBf16(ctx.Download<ushort>(dData, tokens * stride), expected, RmsAtol, RmsRtol, "per-head norm");
            return c.Result();
        });

    static KernelCase RopeCase(int d, int nH, int nKV, int[] positions, float scaling, bool inPlace, bool real = false, bool perToken = false) =>
        new("rope", $"qk_norm_rope_kv_write D {d} heads {nH}/{nKV} positions {string.Join("/", positions)}{(scaling != 1f ? $" scaling {scaling}" : "")}{(inPlace ? " in place" : "")}{(perToken ? " inv_freq per token" : "")}",
            real, ctx =>
        {
            var launchers = ctx.Cached($"rope{d}", () => new RopeLaunchers(ctx.Loader, d));
            int tokens = positions.Length, heads = nH + 2 * nKV, stride = heads * d;
            const int pageSize = 16, pages = 3;
            var rng = new Random(d + nH * 13 + tokens);
            ushort[] qkv = KernelData.Random(rng, tokens * stride, 3f);
            ushort[] qw = KernelData.Random(rng, d, 1.5f), kw = KernelData.Random(rng, d, 1.5f);
            // per token: row t has its own base (as dynamic NTK gives each sequence of a step the table of its length)
            float[][] invFreqRows = Enumerable.Range(0, perToken ? tokens : 1).Select(t => KernelReference.InvFreq(d, 1e6 * (1 + 3.5 * t))).ToArray();
            float[] invFreq = invFreqRows.SelectMany(r => r).ToArray();
            // slots spread over pages in a scrambled order; the last token of a multi-token case is padding (-1)
            var slots = new int[tokens];
            for (int t = 0; t < tokens; t++) slots[t] = (t * 37 + 5) % (pages * pageSize);
            if (tokens > 2) slots[^1] = -1;

            DevicePtr dQkv = ctx.Upload(qkv);
            DevicePtr dQ = inPlace ? dQkv : ctx.AllocFilled<ushort>(tokens * nH * d);
            long cacheElems = (long)pages * pageSize * nKV * d;
            DevicePtr dK = ctx.AllocFilled<ushort>(cacheElems, 0x7f), dV = ctx.AllocFilled<ushort>(cacheElems, 0x7f);
            var p = new QkNormRopeParams
            {
                Qkv = dQkv, QOut = dQ, KCache = dK, VCache = dV, QNormWeight = ctx.Upload(qw), KNormWeight = ctx.Upload(kw),
                InvFreq = ctx.Upload(invFreq), Positions = ctx.Upload(positions), SlotMapping = ctx.Upload(slots),
                Tokens = tokens, NumQHeads = nH, NumKvHeads = nKV, QkvStride = stride, QOutStride = inPlace ? stride : nH * d,
                Eps = 1e-6f, AttentionScaling = scaling, InvFreqPerToken = perToken ? 1 : 0,
            };
            launchers.QkNormRopeKvWrite(ctx.Stream, p);

            int qStride = p.QOutStride;
            ushort[] gotQ = ctx.Download<ushort>(dQ, tokens * qStride);
            ushort[] gotK = ctx.Download<ushort>(dK, cacheElems), gotV = ctx.Download<ushort>(dV, cacheElems);
            float[] wq = KernelData.ToFloats(qw), wk = KernelData.ToFloats(kw);
            var expQ = new List<float>();
            var actQ = new List<float>();
            var expK = new List<float>();
            var actK = new List<float>();
            var expV = new List<ushort>();
            var actV = new List<ushort>();
            var written = new bool[cacheElems];
            for (int t = 0; t < tokens; t++)
            {
                for (int h = 0; h < nH + nKV; h++)
                {
                    bool isQ = h < nH;
                    if (!isQ && slots[t] < 0) continue;
                    var row = KernelData.ToFloats(qkv.AsSpan(t * stride + h * d, d));
                    KernelReference.RmsNorm(row.ToArray(), isQ ? wq : wk, 1e-6f, row);
                    KernelReference.Rope(row, positions[t], invFreqRows[perToken ? t : 0], scaling);
                    long at = isQ ? (long)t * qStride + h * d : ((long)slots[t] * nKV + (h - nH)) * d;
                    for (int i = 0; i < d; i++)
                    {
                        if (isQ) { expQ.Add(row[i]); actQ.Add(Bf16.ToFloat(gotQ[at + i])); }
                        else { expK.Add(row[i]); actK.Add(Bf16.ToFloat(gotK[at + i])); written[at + i] = true; }
                    }
                }
                if (slots[t] < 0) continue;
                for (int h = 0; h < nKV; h++)
                    for (int i = 0; i < d; i++)
                    {
                        expV.Add(qkv[t * stride + (nH + nKV + h) * d + i]);            // V is copied, bit for bit
                        actV.Add(gotV[((long)slots[t] * nKV + h) * d + i]);
                    }
            }
            var c = new Checker();
            c.Close(actQ.ToArray(), expQ.ToArray(), RopeAtol, RopeRtol, "q after norm + rope");
            c.Close(actK.ToArray(), expK.ToArray(), RopeAtol, RopeRtol, "k cache after norm + rope");
            c.Exact<ushort>(actV.ToArray(), expV.ToArray(), "v cache (copied)");
            int stray = 0;
            for (long i = 0; i < cacheElems; i++) if (!written[i] && gotK[i] != 0x7f7f) stray++;
            c.True(stray == 0, "no K cache element written outside the token slots", $"{stray} elements written where no token maps");
            return c.Result();
        });

    /// <summary>Analytic case: at position 0, cos = 1 and sin = 0, so rope is the identity and q equals the per-head norm.</summary>
    static CheckResult PositionZeroIsNormOnly(KernelCheckContext ctx)
    {
        var launchers = ctx.Cached("rope128", () => new RopeLaunchers(ctx.Loader, 128));
        var norms = ctx.Cached("rmsnorm", () => new RmsNormLaunchers(ctx.Loader));
        const int d = 128, nH = 4, nKV = 1, stride = (nH + 2 * nKV) * d;
        var rng = new Random(5);
        ushort[] qkv = KernelData.Random(rng, stride, 2f), w = KernelData.Random(rng, d, 1f);
        DevicePtr dQkv = ctx.Upload(qkv), dW = ctx.Upload(w), dQ = ctx.AllocFilled<ushort>(nH * d), dNormed = ctx.AllocFilled<ushort>(nH * d);
        DevicePtr cache = ctx.AllocFilled<ushort>(16 * nKV * d);
        launchers.QkNormRopeKvWrite(ctx.Stream, new QkNormRopeParams
        {
            Qkv = dQkv, QOut = dQ, KCache = cache, VCache = cache, QNormWeight = dW, KNormWeight = dW,
            InvFreq = ctx.Upload(KernelReference.InvFreq(d, 1e6)), Positions = ctx.Upload(new[] { 0 }), SlotMapping = ctx.Upload(new[] { -1 }),
            Tokens = 1, NumQHeads = nH, NumKvHeads = nKV, QkvStride = stride, QOutStride = nH * d, Eps = 1e-6f, AttentionScaling = 1f,
        });
        norms.RmsNormHeads(ctx.Stream, dNormed, nH * d, dQkv, stride, dW, 1, nH, d, 1e-6f);
        var c = new Checker();
        c.Exact<ushort>(ctx.Download<ushort>(dQ, nH * d), ctx.Download<ushort>(dNormed, nH * d), "q at position 0 vs rmsnorm_heads");
        return c.Result();
    }
}
