namespace Qwen3Cuda.Model.Sampling;

/// <summary>
/// Host-side next-token selection, in transformers' order: repetition penalty, presence penalty,
/// then greedy argmax (temperature 0) or temperature -> top-k -> top-p -> min-p -> draw. Ties are
/// broken toward the lower token id. Deterministic for a given seed (SplitMix64 generator).
/// Holds scratch buffers sized to the vocabulary: one sampler per generation loop, not thread-safe.
/// </summary>
public sealed class Sampler
{
    readonly SamplingOptions _o;
    ulong _state;
    int[] _order = [];
    double[] _probs = [];
    float[] _keys = [];
    readonly HashSet<int> _seen = new();

    public Sampler(SamplingOptions options)
    {
        options.Validate();
        _o = options;
        _state = options.Seed ?? (ulong)Random.Shared.NextInt64();
    }

    public SamplingOptions Options => _o;

    /// <summary>Next double in [0, 1) from SplitMix64.</summary>
    double NextUniform()
    {
        ulong z = _state += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        z ^= z >> 31;
        return (z >> 11) * (1.0 / (1UL << 53));
    }

    /// <summary>
    /// Picks the next token. <paramref name="logits"/> is modified in place (penalties).
    /// <paramref name="repetitionContext"/>: tokens the repetition penalty applies to (prompt and generated);
    /// <paramref name="presenceContext"/>: tokens the presence penalty applies to (generated).
    /// </summary>
    public int Sample(Span<float> logits, ReadOnlySpan<int> repetitionContext = default, ReadOnlySpan<int> presenceContext = default)
    {
        if (logits.IsEmpty) throw new ArgumentException("logits are empty", nameof(logits));
        ApplyPenalties(logits, repetitionContext, presenceContext);
        if (_o.IsGreedy) return ArgMax(logits);
        return Draw(logits);
    }

    /// <summary>
    /// The repetition penalty (HF: divides a positive logit, multiplies a negative one) over the distinct tokens of
    /// <paramref name="repetition"/>, then the presence penalty over those of <paramref name="presence"/>, in place.
    /// </summary>
    public void ApplyPenalties(Span<float> logits, ReadOnlySpan<int> repetition, ReadOnlySpan<int> presence)
    {
        if (_o.RepetitionPenalty != 1f && !repetition.IsEmpty)
        {
            _seen.Clear();
            foreach (int t in repetition)
            {
                if ((uint)t >= (uint)logits.Length || !_seen.Add(t)) continue;
                float l = logits[t];
                logits[t] = l > 0 ? l / _o.RepetitionPenalty : l * _o.RepetitionPenalty;
            }
        }
        if (_o.PresencePenalty != 0f && !presence.IsEmpty)
        {
            _seen.Clear();
            foreach (int t in presence)
                if ((uint)t < (uint)logits.Length && _seen.Add(t)) logits[t] -= _o.PresencePenalty;
        }
    }

    /// <summary>Index of the largest logit, lowest index on ties; NaN never wins.</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        float bestValue = float.NegativeInfinity;
        bool found = false;
        for (int i = 0; i < logits.Length; i++)
        {
            float v = logits[i];
            if (!found ? !float.IsNaN(v) : v > bestValue)
            {
                best = i;
                bestValue = v;
                found = true;
            }
        }
        return best;
    }

    int Draw(ReadOnlySpan<float> logits)
    {
        int v = logits.Length;
        if (_order.Length < v) { _order = new int[v]; _probs = new double[v]; _keys = new float[v]; }
        int n = SelectCandidates(logits, _o.TopK > 0 && _o.TopK < v ? _o.TopK : v);
        var order = _order.AsSpan(0, n);
        var probs = _probs.AsSpan(0, n);

        // Softmax of logits / T over the candidates (sorted by descending logit), stable.
        double invT = 1.0 / _o.Temperature, max = logits[order[0]], sum = 0;
        for (int i = 0; i < n; i++)
        {
            double p = float.IsNaN(logits[order[i]]) ? 0 : Math.Exp((logits[order[i]] - max) * invT);
            probs[i] = p;
            sum += p;
        }
        for (int i = 0; i < n; i++) probs[i] /= sum;

        // Top-p: the shortest prefix whose mass reaches top_p (at least one token).
        int keep = n;
        if (_o.TopP < 1f)
        {
            double cum = 0;
            for (int i = 0; i < n; i++)
            {
                cum += probs[i];
                if (cum >= _o.TopP) { keep = i + 1; break; }
            }
        }
        // Min-p: drop tokens below min_p times the most likely one (ratios are unchanged by renormalising).
        if (_o.MinP > 0f)
        {
            double threshold = _o.MinP * probs[0];
            int k = 1;
            while (k < keep && probs[k] >= threshold) k++;
            keep = k;
        }
        double mass = 0;
        for (int i = 0; i < keep; i++) mass += probs[i];
        double u = NextUniform() * mass, acc = 0;
        for (int i = 0; i < keep; i++)
        {
            acc += probs[i];
            if (u < acc) return order[i];
        }
        return order[keep - 1];
    }

    /// <summary>
    /// Fills _order[0..k) with the k highest logits' ids, sorted by descending logit then ascending id.
    /// k = vocabulary size sorts everything (top-k disabled).
    /// </summary>
    int SelectCandidates(ReadOnlySpan<float> logits, int k)
    {
        int v = logits.Length;
        var order = _order.AsSpan(0, v);
        for (int i = 0; i < v; i++) order[i] = i;
        var keys = _keys;
        for (int i = 0; i < v; i++) keys[i] = float.IsNaN(logits[i]) ? float.NegativeInfinity : logits[i];
        Comparison<int> cmp = (a, b) => keys[a] != keys[b] ? keys[b].CompareTo(keys[a]) : a.CompareTo(b);
        if (k < v)
        {
            // Partial selection: a min-heap of the best k seen so far.
            var heap = new PriorityQueue<int, int>(k, Comparer<int>.Create((a, b) => -cmp(a, b)));
            for (int i = 0; i < v; i++)
            {
                if (heap.Count < k) heap.Enqueue(i, i);
                else if (cmp(i, heap.Peek()) < 0) heap.EnqueueDequeue(i, i);
            }
            int c = heap.Count;
            for (int i = c - 1; i >= 0; i--) order[i] = heap.Dequeue();
            return c;
        }
        order.Sort(cmp);
        return v;
    }
}
