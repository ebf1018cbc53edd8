using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Sampling;

/// <summary>
/// Presence, frequency and repetition penalties on one row of logits: the host reference of kernels/penalties.cu
/// (docs/architecture.md, "Engine"), in vLLM's order. For every entry (token t, count n): the repetition penalty
/// (transformers/HF) divides a positive logit and multiplies a negative one; then, when n &gt; 0, frequency x n +
/// presence is subtracted. Each step is one IEEE-rounded fp32 operation, as in the kernel; the result is rounded to
/// bf16 when the logits are bf16 values (the device's and the CPU reference's are), so all backends agree bit for bit.
/// </summary>
public static class Penalties
{
    /// <param name="tokens">Distinct token ids: those in the prompt or the answer.</param>
    /// <param name="counts">Per token: its occurrences in the answer (0: prompt only).</param>
    public static void Apply(Span<float> logits, ReadOnlySpan<int> tokens, ReadOnlySpan<int> counts, in PenaltySettings s, bool roundToBf16 = true)
    {
        if (counts.Length != tokens.Length) throw new ArgumentException($"{counts.Length} counts for {tokens.Length} tokens", nameof(counts));
        if (s.IsNone) return;
        for (int i = 0; i < tokens.Length; i++)
        {
            int t = tokens[i], n = counts[i];
            if ((uint)t >= (uint)logits.Length) continue;
            float x = logits[t];
            if (s.Repetition != 1f) x = x > 0f ? x / s.Repetition : x * s.Repetition;
            if (n > 0)
            {
                float product = s.Frequency * n;
                float sub = product + s.Presence;
                x -= sub;
            }
            logits[t] = roundToBf16 ? Bf16.Round(x) : x;
        }
    }
}
