namespace Qwen3Cuda.Model.Selftest;

/// <summary>Test data for the kernel checks: seeded random bf16 arrays and conversions (bf16 as raw ushort bits).</summary>
public static class KernelData
{
    public static ushort[] FromFloats(ReadOnlySpan<float> v)
    {
        var r = new ushort[v.Length];
        Bf16.FromFloat(v, r);
        return r;
    }

    public static float[] ToFloats(ReadOnlySpan<ushort> v)
    {
        var r = new float[v.Length];
        Bf16.ToFloat(v, r);
        return r;
    }

    /// <summary>Random bf16 values uniform in [-scale, scale), from a seeded generator.</summary>
    public static ushort[] Random(Random rng, int count, float scale = 1f)
    {
        var r = new ushort[count];
        for (int i = 0; i < count; i++) r[i] = Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1) * scale);
        return r;
    }
}

/// <summary>
/// Small CPU references for the kernel checks, following design notes in docs/ (bf16 values held as floats; every bf16
/// rounding of the reference is an explicit Bf16.Round). Where a statistic is summed, fp64 here: the kernel's fp32 sum
/// differs from it only in reduction order, which the checks' tolerances state.
/// </summary>
public static class KernelReference
{
    /// <summary>out = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))), statistics in fp64.</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps, Span<float> output)
    {
        double ss = 0;
        for (int i = 0; i < x.Length; i++) ss += (double)x[i] * x[i];
        float inv = (float)(1.0 / Math.Sqrt(ss / x.Length + eps));
        for (int i = 0; i < x.Length; i++) output[i] = Bf16.Round(w[i] * Bf16.Round(x[i] * inv));
    }

    /// <summary>inv_freq[j] = theta^(-2j/D) in fp32 (the default rope).</summary>
    public static float[] InvFreq(int headDim, double theta)
    {
        var r = new float[headDim / 2];
        for (int j = 0; j < r.Length; j++) r[j] = (float)(1.0 / Math.Pow(theta, 2.0 * j / headDim));
        return r;
    }

    /// <summary>Rotate-half RoPE on one head row (bf16 values), cos/sin = bf16(cos(pos * inv_freq) * scaling).</summary>
    public static void Rope(Span<float> x, int pos, ReadOnlySpan<float> invFreq, float attentionScaling)
    {
        int half = x.Length / 2;
        for (int j = 0; j < half; j++)
        {
            float f = pos * invFreq[j];                              // fp32 product, as torch
            float c = Bf16.Round((float)Math.Cos(f) * attentionScaling);
            float s = Bf16.Round((float)Math.Sin(f) * attentionScaling);
            float a = x[j], b = x[j + half];
            x[j] = Bf16.Round(Bf16.Round(a * c) + Bf16.Round(-b * s));
            x[j + half] = Bf16.Round(Bf16.Round(b * c) + Bf16.Round(a * s));
        }
    }

    /// <summary>Softmax attention of one query row over keys [n, D] / values [n, D], scale D^-0.5, fp64 internals.</summary>
    public static void AttendOne(ReadOnlySpan<float> q, Func<int, int, float> k, Func<int, int, float> v, int n, int d, Span<float> output)
    {
        var s = new double[n];
        double scale = 1.0 / Math.Sqrt(d), max = double.NegativeInfinity;
        for (int j = 0; j < n; j++)
        {
            double dot = 0;
            for (int i = 0; i < d; i++) dot += (double)q[i] * k(j, i);
            s[j] = dot * scale;
            max = Math.Max(max, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < n; j++) { s[j] = Math.Exp(s[j] - max); sum += s[j]; }
        for (int i = 0; i < d; i++)
        {
            double acc = 0;
            for (int j = 0; j < n; j++) acc += s[j] * v(j, i);
            output[i] = (float)(acc / sum);
        }
    }

    /// <summary>
    /// y = x W^T (+ residual) as the GEMV and GEMM kernels round it: bf16(acc) (then bf16(residual + that)), acc in fp64;
    /// per element tolerance: the fp32 accumulation may flip the bf16 rounding of acc (one ulp: 2^-7 |acc|) and of the
    /// residual add (2^-7 |y|), plus the fp32 sum error bound K * 2^-24 * sum |x w|.
    /// </summary>
    public static (float[] Expected, float[] Tolerance) ProjectBf16(ushort[] x, ushort[] w, ushort[]? residual, int ldr, int t, int n, int k)
    {
        float[] xf = KernelData.ToFloats(x), wf = KernelData.ToFloats(w);
        var exp = new float[t * n];
        var tol = new float[t * n];
        Parallel.For(0, t, r =>
        {
            for (int c = 0; c < n; c++)
            {
                double acc = 0, abs = 0;
                for (int i = 0; i < k; i++) { double v = (double)xf[r * k + i] * wf[c * k + i]; acc += v; abs += Math.Abs(v); }
                float y = Bf16.Round((float)acc);
                if (residual is not null) y = Bf16.Round(Bf16.ToFloat(residual[r * ldr + c]) + y);
                exp[r * n + c] = y;
                tol[r * n + c] = (float)(Math.Abs(acc) / 128 + (residual is not null ? Math.Abs(y) / 128 : 0) + k * abs / (1 << 24));
            }
        });
        return (exp, tol);
    }

    public const string ProjectToleranceText = "2^-7|acc| (+2^-7|y| with residual) + K 2^-24 sum|xw|";
}

/// <summary>
/// A random paged KV cache for attention checks: slot-major pools [pages, pageSize, nKV, D] bf16, per-sequence block
/// tables with scrambled page order, unused block-table entries poisoned (a kernel that reads one faults on memcheck).
/// </summary>
public sealed class PagedKvFixture
{
    /// <param name="fp8">Also hold the cache as FP8 E4M3 codes (<see cref="K8"/>, <see cref="V8"/>; --kv-cache-dtype fp8): the bf16
    /// values are first rounded to E4M3 values, which bf16 holds exactly, so the bf16 reference applies to both.</param>
    /// <param name="maxContextLen">the block table's width in keys when larger than the rows need (a graph captured for a
    /// longer context than it runs); the entries past a row's pages hold an invalid page either way</param>
    public PagedKvFixture(Random rng, int[] contextLens, int nKV, int d, int pageSize, float valueScale = 1f, bool fp8 = false, int maxContextLen = 0)
    {
        ContextLens = contextLens;
        NumKvHeads = nKV;
        HeadDim = d;
        PageSize = pageSize;
        MaxPagesPerSeq = Math.Max(Math.Max(1, contextLens.Max(l => (l + pageSize - 1) / pageSize) + 1), (maxContextLen + pageSize - 1) / pageSize);
        int used = contextLens.Sum(l => (l + pageSize - 1) / pageSize);
        Pages = used + 3;
        var order = Enumerable.Range(0, Pages).OrderBy(_ => rng.Next()).ToArray();
        BlockTable = new int[contextLens.Length * MaxPagesPerSeq];
        Array.Fill(BlockTable, 1 << 26);
        int next = 0;
        for (int s = 0; s < contextLens.Length; s++)
            for (int pg = 0; pg < (contextLens[s] + pageSize - 1) / pageSize; pg++)
                BlockTable[s * MaxPagesPerSeq + pg] = order[next++];
        K = KernelData.Random(rng, (int)((long)Pages * pageSize * nKV * d), valueScale);
        V = KernelData.Random(rng, K.Length, valueScale);
        if (fp8)
        {
            K8 = K.Select(b => Checkpoint.Fp8E4M3.FromFloat(Bf16.ToFloat(b))).ToArray();
            V8 = V.Select(b => Checkpoint.Fp8E4M3.FromFloat(Bf16.ToFloat(b))).ToArray();
            K = K8.Select(b => Bf16.FromFloat(Checkpoint.Fp8E4M3.ToFloat(b))).ToArray();
            V = V8.Select(b => Bf16.FromFloat(Checkpoint.Fp8E4M3.ToFloat(b))).ToArray();
        }
        _kf = KernelData.ToFloats(K);
        _vf = KernelData.ToFloats(V);
    }

    private readonly float[] _kf, _vf;

    public int[] ContextLens { get; }
    public int NumKvHeads { get; }
    public int HeadDim { get; }
    public int PageSize { get; }
    public int Pages { get; }
    public int MaxPagesPerSeq { get; }
    public int[] BlockTable { get; }
    public ushort[] K { get; }
    public ushort[] V { get; }
    /// <summary>The FP8 E4M3 codes of <see cref="K"/> / <see cref="V"/> (fixtures made with fp8 only).</summary>
    public byte[]? K8 { get; }
    public byte[]? V8 { get; }
    /// <summary>The cache as the kernel of that dtype reads it.</summary>
    public Qwen3Cuda.Runtime.DevicePtr UploadK(KernelCheckContext ctx) => K8 is { } k ? ctx.Upload(k) : ctx.Upload(K);
    public Qwen3Cuda.Runtime.DevicePtr UploadV(KernelCheckContext ctx) => V8 is { } v ? ctx.Upload(v) : ctx.Upload(V);

    public long Offset(int seq, int key, int kvh)
    {
        int page = BlockTable[seq * MaxPagesPerSeq + key / PageSize];
        long slot = (long)page * PageSize + key % PageSize;
        return (slot * NumKvHeads + kvh) * HeadDim;
    }

    public float KAt(int seq, int key, int kvh, int i) => _kf[Offset(seq, key, kvh) + i];
    public float VAt(int seq, int key, int kvh, int i) => _vf[Offset(seq, key, kvh) + i];
}
