using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Model.Reference;

/// <summary>
/// The CPU reference of every op of the Qwen3-MoE forward (docs/architecture.md, "A decode step"), public so
/// kernel tests can compare against them. Activations are float32 spans holding bf16-exact values
/// where the reference rounds; weights are bf16 bits (ushort), row-major as stored ([out, in]).
/// Math is fp32 with the doc's bf16 rounding points; matmuls run in parallel over output rows and are
/// vectorised with Vector256. Accumulation order differs from PyTorch's, so results agree with it to
/// fp32 reduction-order error before each bf16 rounding (i.e. occasionally one bf16 ulp).
/// </summary>
public static unsafe class ReferenceOps
{
    /// <summary>Below this many multiply-adds a matmul runs on the calling thread.</summary>
    const long ParallelThreshold = 1 << 16;

    // ---------------------------------------------------------------- matmul

    /// <summary>
    /// y[r, o] = sum_i x[r, i] * w[o, i] (nn.Linear: x W^T) with fp32 accumulation, rounded to bf16
    /// when <paramref name="roundToBf16"/> (a bf16 Linear's output). x [rows, inDim], w [outDim, inDim] bf16, y [rows, outDim].
    /// </summary>
    public static void Matmul(ReadOnlySpan<float> x, ReadOnlySpan<ushort> weight, Span<float> y, int rows, int inDim, int outDim, bool roundToBf16 = true)
    {
        CheckLength(x, (long)rows * inDim, nameof(x));
        CheckLength(weight, (long)outDim * inDim, nameof(weight));
        CheckLength(y, (long)rows * outDim, nameof(y));
        fixed (float* px = x) fixed (ushort* pw = weight) fixed (float* py = y)
        {
            nint ax = (nint)px, aw = (nint)pw, ay = (nint)py;
            long work = (long)rows * inDim * outDim;
            if (work < ParallelThreshold || outDim < 2)
            {
                MatmulRows(px, pw, py, rows, inDim, outDim, 0, outDim, roundToBf16);
                return;
            }
            int blocks = Math.Min(outDim, Environment.ProcessorCount * 4);
            Parallel.For(0, blocks, b =>
            {
                int o0 = (int)((long)outDim * b / blocks), o1 = (int)((long)outDim * (b + 1) / blocks);
                MatmulRows((float*)ax, (ushort*)aw, (float*)ay, rows, inDim, outDim, o0, o1, roundToBf16);
            });
        }
    }

    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    static void MatmulRows(float* x, ushort* w, float* y, int rows, int inDim, int outDim, int o0, int o1, bool round)
    {
        Span<float> wRow = inDim <= 8192 ? stackalloc float[inDim] : new float[inDim];
        fixed (float* pr = wRow)
        {
            for (int o = o0; o < o1; o++)
            {
                Bf16.ToFloat(new ReadOnlySpan<ushort>(w + (long)o * inDim, inDim), wRow);
                for (int r = 0; r < rows; r++)
                {
                    float acc = Dot(x + (long)r * inDim, pr, inDim);
                    y[(long)r * outDim + o] = round ? Bf16.Round(acc) : acc;
                }
            }
        }
    }

    /// <summary>fp32 dot product, 8-wide with two accumulators.</summary>
    public static float Dot(ReadOnlySpan<float> a, ReadOnlySpan<float> b)
    {
        if (a.Length != b.Length) throw new ArgumentException("length mismatch");
        fixed (float* pa = a) fixed (float* pb = b) return Dot(pa, pb, a.Length);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining | MethodImplOptions.AggressiveOptimization)]
    static float Dot(float* a, float* b, int n)
    {
        int i = 0;
        float sum = 0;
        if (Vector256.IsHardwareAccelerated && n >= 16)
        {
            var acc0 = Vector256<float>.Zero;
            var acc1 = Vector256<float>.Zero;
            for (; i + 16 <= n; i += 16)
            {
                acc0 += Vector256.Load(a + i) * Vector256.Load(b + i);
                acc1 += Vector256.Load(a + i + 8) * Vector256.Load(b + i + 8);
            }
            sum = Vector256.Sum(acc0 + acc1);
        }
        for (; i < n; i++) sum += a[i] * b[i];
        return sum;
    }

    // ---------------------------------------------------------------- RMSNorm

    /// <summary>
    /// Row-wise RMSNorm over rows of length n: y = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))), fp32
    /// statistics, no mean subtraction. x and y [rows, n] (may alias), weight [n] bf16.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<ushort> weight, float eps, Span<float> y, int n)
    {
        if (n <= 0 || x.Length % n != 0) throw new ArgumentException($"x length {x.Length} is not a multiple of n {n}");
        CheckLength(weight, n, nameof(weight));
        CheckLength(y, x.Length, nameof(y));
        int rows = x.Length / n;
        for (int r = 0; r < rows; r++)
        {
            var xr = x.Slice(r * n, n);
            var yr = y.Slice(r * n, n);
            float meanSquare = Dot(xr, xr) / n;
            float inv = 1.0f / MathF.Sqrt(meanSquare + eps);
            for (int i = 0; i < n; i++) yr[i] = Bf16.Round(Bf16.ToFloat(weight[i]) * Bf16.Round(xr[i] * inv));
        }
    }

    // ---------------------------------------------------------------- rotary embedding

    /// <summary>
    /// inv_freq [D/2] and attention_scaling as transformers computes them: default
    /// inv_freq[j] = 1 / theta^(2j/D) (fp32), or YaRN (blend of interpolated and extrapolated
    /// frequencies over the correction range from beta_fast/beta_slow; attention_factor from mscale).
    /// The explicit rope_scaling.factor is used, as in current transformers; some 4.5x releases replaced it by
    /// max_position_embeddings / original_max_position_embeddings whenever the latter is present. The two agree
    /// when config.json is consistent (max_position_embeddings = factor x original).
    /// </summary>
    public static (float[] InvFreq, float AttentionScaling) RopeParameters(int headDim, double theta, RopeScalingConfig? scaling, int maxPositionEmbeddings)
    {
        if (headDim <= 0 || headDim % 2 != 0) throw new ArgumentException($"head_dim {headDim} must be positive and even");
        int half = headDim / 2;
        var posFreqs = new float[half];
        for (int j = 0; j < half; j++) posFreqs[j] = (float)Math.Pow((float)theta, (float)(2 * j) / headDim);
        var invFreq = new float[half];
        if (scaling is null || scaling.IsDynamic)   // dynamic NTK: the default table up to max_position_embeddings
        {
            for (int j = 0; j < half; j++) invFreq[j] = 1.0f / posFreqs[j];
            return (invFreq, 1.0f);
        }
        double factor = scaling.Factor;
        int originalMax = scaling.OriginalMaxPositionEmbeddings ?? maxPositionEmbeddings;
        static double GetMscale(double scale, double mscale = 1) => scale <= 1 ? 1.0 : 0.1 * mscale * Math.Log(scale) + 1.0;
        double attentionFactor = scaling.AttentionFactor
            ?? (scaling.Mscale is double m && scaling.MscaleAllDim is double mad && m != 0 && mad != 0
                ? GetMscale(factor, m) / GetMscale(factor, mad)
                : GetMscale(factor));
        double CorrectionDim(double rotations) =>
            headDim * Math.Log(originalMax / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
        double low = CorrectionDim(scaling.BetaFast), high = CorrectionDim(scaling.BetaSlow);
        if (scaling.Truncate) { low = Math.Floor(low); high = Math.Ceiling(high); }
        low = Math.Max(low, 0); high = Math.Min(high, headDim - 1);
        if (low == high) high += 0.001;
        for (int j = 0; j < half; j++)
        {
            float ramp = Math.Clamp((float)((j - low) / (high - low)), 0f, 1f);
            float extrapolationFactor = 1 - ramp;
            float extrapolated = 1.0f / posFreqs[j];
            float interpolated = 1.0f / ((float)factor * posFreqs[j]);
            invFreq[j] = interpolated * (1 - extrapolationFactor) + extrapolated * extrapolationFactor;
        }
        return (invFreq, (float)attentionFactor);
    }

    /// <summary>
    /// Dynamic NTK inv_freq [D/2] for a forward whose last position is <paramref name="sequenceLength"/> - 1, as transformers
    /// computes it: when sequenceLength &gt; max_position_embeddings the base becomes
    /// theta * ((factor * sequenceLength / max_position_embeddings) - (factor - 1))^(D / (D - 2)) (double, like Python),
    /// then inv_freq[j] = 1 / base^(2j/D) in fp32; otherwise the default table. attention_scaling stays 1.
    /// Returns false (and writes the default table) when the length does not exceed max_position_embeddings.
    /// </summary>
    public static bool DynamicNtkInvFreq(int headDim, double theta, double factor, int maxPositionEmbeddings, int sequenceLength, Span<float> invFreq)
    {
        if (headDim <= 2 || headDim % 2 != 0) throw new ArgumentException($"head_dim {headDim} must be even and greater than 2");
        CheckLength(invFreq, headDim / 2, nameof(invFreq));
        bool scaled = sequenceLength > maxPositionEmbeddings;
        double b = theta;
        if (scaled) b = theta * Math.Pow(factor * sequenceLength / maxPositionEmbeddings - (factor - 1), (double)headDim / (headDim - 2));
        for (int j = 0; j < invFreq.Length; j++) invFreq[j] = 1.0f / (float)Math.Pow((float)b, (float)(2 * j) / headDim);
        return scaled;
    }

    /// <summary>
    /// cos/sin [D] for one position: freqs = pos * inv_freq (fp32) over cat(freqs, freqs), times
    /// attention_scaling, rounded to bf16.
    /// </summary>
    public static void RopeCosSin(ReadOnlySpan<float> invFreq, float attentionScaling, int position, Span<float> cos, Span<float> sin)
    {
        int half = invFreq.Length;
        CheckLength(cos, 2 * half, nameof(cos));
        CheckLength(sin, 2 * half, nameof(sin));
        for (int j = 0; j < half; j++)
        {
            float f = (float)position * invFreq[j];
            float c = Bf16.Round((float)Math.Cos(f) * attentionScaling), s = Bf16.Round((float)Math.Sin(f) * attentionScaling);
            cos[j] = cos[j + half] = c;
            sin[j] = sin[j + half] = s;
        }
    }

    /// <summary>
    /// In-place rotate-half RoPE on x [heads, D] with bf16 ops: for i &lt; D/2,
    /// x'[i] = bf16(bf16(x[i]c[i]) + bf16(-x[i+D/2]s[i])), x'[i+D/2] = bf16(bf16(x[i+D/2]c[i+D/2]) + bf16(x[i]s[i+D/2])).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ApplyRope(Span<float> x, int heads, int headDim, ReadOnlySpan<float> cos, ReadOnlySpan<float> sin)
    {
        CheckLength(x, (long)heads * headDim, nameof(x));
        int half = headDim / 2;
        for (int h = 0; h < heads; h++)
        {
            var v = x.Slice(h * headDim, headDim);
            for (int i = 0; i < half; i++)
            {
                float a = v[i], b = v[i + half];
                v[i] = Bf16.Round(Bf16.Round(a * cos[i]) + Bf16.Round(-b * sin[i]));
                v[i + half] = Bf16.Round(Bf16.Round(b * cos[i + half]) + Bf16.Round(a * sin[i + half]));
            }
        }
    }

    // ---------------------------------------------------------------- attention

    /// <summary>
    /// Causal GQA attention with fp32 scores and softmax (the sdpa/flash math), output rounded to bf16 once.
    /// q [tokens, nH*D]; keys/values [S, nKV*D] hold the whole sequence so far (K after norm + RoPE);
    /// query t sits at position firstPosition + t and sees key rows 0..firstPosition + t.
    /// Query head h uses KV head h / (nH / nKV). output [tokens, nH*D], head-major columns.
    /// </summary>
    public static void Attention(ReadOnlySpan<float> q, ReadOnlySpan<float> keys, ReadOnlySpan<float> values, Span<float> output,
        int tokens, int firstPosition, int numHeads, int numKvHeads, int headDim)
    {
        if (numHeads % numKvHeads != 0) throw new ArgumentException("numHeads must be a multiple of numKvHeads");
        int qDim = numHeads * headDim, kvDim = numKvHeads * headDim, seen = firstPosition + tokens;
        CheckLength(q, (long)tokens * qDim, nameof(q));
        CheckLength(output, (long)tokens * qDim, nameof(output));
        if (keys.Length < (long)seen * kvDim || values.Length < (long)seen * kvDim)
            throw new ArgumentException($"keys/values hold fewer than {seen} positions");
        int group = numHeads / numKvHeads;
        float scale = 1.0f / MathF.Sqrt(headDim);
        fixed (float* pq = q) fixed (float* pk = keys) fixed (float* pv = values) fixed (float* po = output)
        {
            nint aq = (nint)pq, ak = (nint)pk, av = (nint)pv, ao = (nint)po;
            [MethodImpl(MethodImplOptions.AggressiveOptimization)]
            void One(int item)
            {
                int t = item / numHeads, h = item % numHeads, kvh = h / group, last = firstPosition + t;
                float* qv = (float*)aq + (long)t * qDim + h * headDim;
                float* kb = (float*)ak + kvh * headDim;
                float* vb = (float*)av + kvh * headDim;
                float[]? rented = last + 1 > 4096 ? new float[last + 1] : null;
                Span<float> scores = rented ?? stackalloc float[last + 1];
                float max = float.NegativeInfinity;
                for (int s = 0; s <= last; s++)
                {
                    float sc = Dot(qv, kb + (long)s * kvDim, headDim) * scale;
                    scores[s] = sc;
                    if (sc > max) max = sc;
                }
                float sum = 0;
                for (int s = 0; s <= last; s++) { float e = MathF.Exp(scores[s] - max); scores[s] = e; sum += e; }
                Span<float> acc = stackalloc float[headDim];
                acc.Clear();
                for (int s = 0; s <= last; s++)
                {
                    float p = scores[s];
                    float* vr = vb + (long)s * kvDim;
                    for (int d = 0; d < headDim; d++) acc[d] += p * vr[d];
                }
                float* outv = (float*)ao + (long)t * qDim + h * headDim;
                for (int d = 0; d < headDim; d++) outv[d] = Bf16.Round(acc[d] / sum);
            }
            int items = tokens * numHeads;
            if ((long)items * seen * headDim < ParallelThreshold) for (int i = 0; i < items; i++) One(i);
            else Parallel.For(0, items, One);
        }
    }

    // ---------------------------------------------------------------- routing and MLPs

    /// <summary>Numerically stable softmax in fp32, in place.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Softmax(Span<float> x)
    {
        float max = float.NegativeInfinity;
        foreach (float v in x) if (v > max) max = v;
        float sum = 0;
        for (int i = 0; i < x.Length; i++) { x[i] = MathF.Exp(x[i] - max); sum += x[i]; }
        for (int i = 0; i < x.Length; i++) x[i] /= sum;
    }

    /// <summary>
    /// Router for one token: p = softmax_fp32(routerLogits) over all E (logits already bf16-rounded),
    /// top-k by value descending with ties going to the lower expert index; if normTopkProb the k
    /// weights are divided by their fp32 sum. experts/weights [k]. A NaN logit counts as -inf (as in moe_router.cu:
    /// garbage never selects an expert outside [0, E)).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RouterTopK(ReadOnlySpan<float> routerLogits, int k, bool normTopkProb, Span<int> experts, Span<float> weights)
    {
        int n = routerLogits.Length;
        if (k < 1 || k > n) throw new ArgumentOutOfRangeException(nameof(k));
        CheckLength(experts, k, nameof(experts));
        CheckLength(weights, k, nameof(weights));
        Span<float> p = n <= 1024 ? stackalloc float[n] : new float[n];
        for (int e = 0; e < n; e++) p[e] = float.IsNaN(routerLogits[e]) ? float.NegativeInfinity : routerLogits[e];
        Softmax(p);
        Span<bool> taken = n <= 1024 ? stackalloc bool[n] : new bool[n];
        taken.Clear();
        for (int j = 0; j < k; j++)
        {
            int best = -1;
            for (int e = 0; e < n; e++)
                if (!taken[e] && (best < 0 || p[e] > p[best])) best = e; // strict '>' keeps the lower index on ties
            taken[best] = true;
            experts[j] = best;
            weights[j] = p[best];
        }
        if (normTopkProb)
        {
            float sum = 0;
            for (int j = 0; j < k; j++) sum += weights[j];
            for (int j = 0; j < k; j++) weights[j] /= sum;
        }
    }

    /// <summary>silu(x) = x / (1 + exp(-x)) in fp32.</summary>
    public static float Silu(float x) => x / (1.0f + MathF.Exp(-x));

    /// <summary>
    /// SwiGLU MLP: y = bf16(down(bf16(bf16(silu(bf16(h Wg^T))) * bf16(h Wu^T)))). h [rows, hidden],
    /// gate/up [inter, hidden], down [hidden, inter], y [rows, hidden].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SwiGluMlp(ReadOnlySpan<float> h, ReadOnlySpan<ushort> gate, ReadOnlySpan<ushort> up, ReadOnlySpan<ushort> down,
        Span<float> y, int rows, int hidden, int inter)
    {
        var g = new float[(long)rows * inter];
        var u = new float[(long)rows * inter];
        Matmul(h, gate, g, rows, hidden, inter);
        Matmul(h, up, u, rows, hidden, inter);
        for (int i = 0; i < g.Length; i++) g[i] = Bf16.Round(Bf16.Round(Silu(g[i])) * u[i]);
        Matmul(g, down, y, rows, inter, hidden);
    }

    public static void SwiGluMlp(ReadOnlySpan<float> h, MlpWeights w, Span<float> y, int rows) =>
        SwiGluMlp(h, w.GateProj.Span, w.UpProj.Span, w.DownProj.Span, y, rows, w.GateProj.Cols, w.GateProj.Rows);

    /// <summary>
    /// Sparse MoE block on h [rows, H] (already post-attention-normed): router logits bf16(h Wr^T) [rows, E],
    /// <see cref="RouterTopK"/> per row, each chosen expert's SwiGLU output (bf16), then
    /// y = bf16(sum_k w_k * y_k) accumulated in fp32 in rank order. Optional outputs: routerLogits
    /// [rows, E], experts and weights [rows, K].
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void MoeBlock(ReadOnlySpan<float> h, MoeWeights w, int topK, bool normTopkProb, Span<float> y, int rows,
        Span<float> routerLogits = default, Span<int> experts = default, Span<float> weights = default)
    {
        int hidden = w.Router.Cols, numExperts = w.Router.Rows, inter = w.Experts[0].GateProj.Rows;
        CheckLength(h, (long)rows * hidden, nameof(h));
        CheckLength(y, (long)rows * hidden, nameof(y));
        var logits = routerLogits.IsEmpty ? new float[(long)rows * numExperts] : routerLogits;
        var idx = experts.IsEmpty ? new int[rows * topK] : experts;
        var wts = weights.IsEmpty ? new float[rows * topK] : weights;
        CheckLength(logits, (long)rows * numExperts, nameof(routerLogits));
        CheckLength(idx, (long)rows * topK, nameof(experts));
        CheckLength(wts, (long)rows * topK, nameof(weights));
        Matmul(h, w.Router.Span, logits, rows, hidden, numExperts);
        for (int r = 0; r < rows; r++)
            RouterTopK(logits.Slice(r * numExperts, numExperts), topK, normTopkProb, idx.Slice(r * topK, topK), wts.Slice(r * topK, topK));

        // Group (row, rank) slots by expert, run each expert once over its rows, scatter to slot outputs.
        var slotOut = new float[(long)rows * topK * hidden];
        var slotsOf = new List<int>[numExperts];
        for (int s = 0; s < rows * topK; s++) (slotsOf[idx[s]] ??= new List<int>()).Add(s);
        for (int e = 0; e < numExperts; e++)
        {
            var slots = slotsOf[e];
            if (slots is null) continue;
            int n = slots.Count;
            var xs = new float[(long)n * hidden];
            for (int i = 0; i < n; i++) h.Slice(slots[i] / topK * hidden, hidden).CopyTo(xs.AsSpan(i * hidden, hidden));
            var ys = new float[(long)n * hidden];
            SwiGluMlp(xs, w.Experts[e], ys, n);
            for (int i = 0; i < n; i++) ys.AsSpan(i * hidden, hidden).CopyTo(slotOut.AsSpan(slots[i] * hidden, hidden));
        }
        for (int r = 0; r < rows; r++)
        {
            var yr = y.Slice(r * hidden, hidden);
            yr.Clear();
            for (int k = 0; k < topK; k++)
            {
                float wk = wts[r * topK + k];
                var src = slotOut.AsSpan((r * topK + k) * hidden, hidden);
                for (int i = 0; i < hidden; i++) yr[i] += wk * src[i];
            }
            Bf16.RoundInPlace(yr);
        }
    }

    /// <summary>y = bf16(a + b) elementwise (a bf16 residual add). y may alias a or b.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AddBf16(ReadOnlySpan<float> a, ReadOnlySpan<float> b, Span<float> y)
    {
        CheckLength(b, a.Length, nameof(b));
        CheckLength(y, a.Length, nameof(y));
        for (int i = 0; i < a.Length; i++) y[i] = Bf16.Round(a[i] + b[i]);
    }

    static void CheckLength<T>(ReadOnlySpan<T> s, long expected, string name)
    {
        if (s.Length != expected) throw new ArgumentException($"{name} has {s.Length} elements, expected {expected}", name);
    }

    static void CheckLength<T>(Span<T> s, long expected, string name) => CheckLength((ReadOnlySpan<T>)s, expected, name);
}
