using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Sampling;

/// <summary>
/// The device sampler's semantics on the host (kernels/sampling.cu, docs/kernels.md "sampling"): transformers' warper
/// order on x = logit / temperature (top-k, then top-p over the top-k survivors, then min-p; ties at a threshold kept),
/// then the first token in index order whose cumulative kept probability exceeds u = Philox4x32-10(key = seed,
/// counter = (step, row 0)) / 2^32 in 24-bit resolution. Greedy settings take the argmax (lower index on ties).
/// The CPU reference model samples with it, so a seeded request draws what it draws on a device up to fp32 rounding
/// at a cumulative boundary. Holds scratch buffers: one per model, not thread-safe.
/// </summary>
public sealed class CounterSampler
{
    private int[] _order = [];
    private double[] _x = [];

    /// <summary>Philox4x32-10 with counter (step lo, step hi, row, 0) and key (seed lo, seed hi): the first output word.</summary>
    public static uint Philox(ulong seed, ulong step, uint row)
    {
        uint c0 = (uint)step, c1 = (uint)(step >> 32), c2 = row, c3 = 0, k0 = (uint)seed, k1 = (uint)(seed >> 32);
        for (int r = 0; r < 10; r++)
        {
            ulong p0 = 0xD2511F53ul * c0, p1 = 0xCD9E8D57ul * c2;
            (c0, c1, c2, c3) = ((uint)(p1 >> 32) ^ c1 ^ k0, (uint)p1, (uint)(p0 >> 32) ^ c3 ^ k1, (uint)p0);
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        return c0;
    }

    /// <summary>The uniform number in [0, 1) a row with <paramref name="seed"/> draws at counter <paramref name="step"/>.</summary>
    public static double Uniform(ulong seed, ulong step) => (Philox(seed, step, 0) >> 8) / 16777216.0;

    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++) if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>The next token for <paramref name="logits"/> under <paramref name="s"/> at Philox counter <paramref name="step"/>.</summary>
    public int Sample(ReadOnlySpan<float> logits, in SamplingSettings s, ulong step)
    {
        SamplingLaunchers.Validate(s);
        if (s.IsGreedy) return ArgMax(logits);
        int n = logits.Length;
        double max, lo;
        var x = Warp(logits, s, out max, out lo);
        double z = 0;
        for (int i = 0; i < n; i++) if (x[i] >= lo) z += Math.Exp(x[i] - max);
        double u = Uniform(s.Seed, step) * z, cumulative = 0;
        int last = -1;
        for (int i = 0; i < n; i++)
        {
            if (x[i] < lo || double.IsNegativeInfinity(x[i])) continue;   // masked tokens (-inf) are never drawn, even at the top of the mass
            cumulative += Math.Exp(x[i] - max);
            last = i;
            if (cumulative > u) return i;
        }
        return last;   // u at the very top of the mass (rounding)
    }

    /// <summary>
    /// The distribution <see cref="Sample"/> draws from, written into <paramref name="probs"/> [V]: softmax of
    /// logit / temperature over the tokens the warpers keep (top-k, top-p, min-p; ties at a threshold kept), 0 elsewhere.
    /// Greedy settings give a one-hot at the argmax. Used by speculative decoding to apply the same warpers to the target's
    /// and the draft's logits (docs/speculative.md).
    /// </summary>
    public void Probabilities(ReadOnlySpan<float> logits, in SamplingSettings s, Span<double> probs)
    {
        SamplingLaunchers.Validate(s);
        if (probs.Length != logits.Length) throw new ArgumentException($"probs has {probs.Length} elements, logits {logits.Length}", nameof(probs));
        if (s.IsGreedy)
        {
            probs.Clear();
            probs[ArgMax(logits)] = 1;
            return;
        }
        var x = Warp(logits, s, out double max, out double lo);
        double z = 0;
        for (int i = 0; i < x.Length; i++)
        {
            double e = x[i] >= lo ? Math.Exp(x[i] - max) : 0;
            probs[i] = e;
            z += e;
        }
        for (int i = 0; i < probs.Length; i++) probs[i] /= z;
    }

    /// <summary>x = logits / temperature (in fp32, as the kernel) in the scratch buffer, its maximum, and the threshold of the kept tokens (x &gt;= lo).</summary>
    private Span<double> Warp(ReadOnlySpan<float> logits, in SamplingSettings s, out double max, out double lo)
    {
        int n = logits.Length;
        if (_x.Length < n) { _x = new double[n]; _order = new int[n]; }
        var x = _x.AsSpan(0, n);
        float invT = 1f / s.Temperature;
        for (int i = 0; i < n; i++) x[i] = logits[i] * invT;   // the kernel scales in fp32
        max = double.NegativeInfinity;
        foreach (double v in x) max = Math.Max(max, v);

        // Thresholds: keep x >= lo.
        lo = double.NegativeInfinity;
        bool needOrder = (s.TopK > 0 && s.TopK < n) || s.TopP < 1f;
        var order = _order.AsSpan(0, n);
        if (needOrder)
        {
            for (int i = 0; i < n; i++) order[i] = i;
            var xs = _x;
            order.Sort((a, b) => xs[b].CompareTo(xs[a]) is int c && c != 0 ? c : a.CompareTo(b));
        }
        if (s.TopK > 0 && s.TopK < n) lo = x[order[s.TopK - 1]];
        if (s.TopP < 1f)
        {
            double kept = 0;
            for (int i = 0; i < n; i++) if (x[i] >= lo) kept += Math.Exp(x[i] - max);
            double cum = 0;
            foreach (int i in order)
            {
                if (x[i] < lo) break;
                cum += Math.Exp(x[i] - max);
                if (cum >= s.TopP * kept) { lo = Math.Max(lo, x[i]); break; }
            }
        }
        if (s.MinP > 0f) lo = Math.Max(lo, max + Math.Log(s.MinP));

        return x;
    }
}
