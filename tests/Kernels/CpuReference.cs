namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// Small CPU references for the kernel tests, following docs/architecture.md ("A decode step")
/// (bf16 values held as floats; every bf16 rounding of the reference is an explicit Bf16.Round).
/// </summary>
public static class CpuReference
{
    /// <summary>out = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))), statistics in fp32 (double here: the kernel's fp32
    /// sum differs from it only in reduction order).</summary>
    public static void RmsNorm(ReadOnlySpan<float> x, ReadOnlySpan<float> w, float eps, Span<float> output)
    {
        double ss = 0;
        for (int i = 0; i < x.Length; i++) ss += (double)x[i] * x[i];
        float inv = (float)(1.0 / Math.Sqrt(ss / x.Length + eps));
        for (int i = 0; i < x.Length; i++) output[i] = Bf16.Round(w[i] * Bf16.Round(x[i] * inv));
    }

    /// <summary>inv_freq[j] = theta^(-2j/D) in fp32 (the default rope; YaRN tables come from the caller).</summary>
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

    /// <summary>y[t, n] = sum_k x[t, k] * w[n, k] in fp64 (not rounded).</summary>
    public static float[] MatMulNt(ReadOnlySpan<float> x, ReadOnlySpan<float> w, int t, int n, int k)
    {
        var y = new float[t * n];
        for (int r = 0; r < t; r++)
            for (int c = 0; c < n; c++)
            {
                double acc = 0;
                for (int i = 0; i < k; i++) acc += (double)x[r * k + i] * w[c * k + i];
                y[r * n + c] = (float)acc;
            }
        return y;
    }
}
