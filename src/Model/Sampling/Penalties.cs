namespace Qwen3Cuda.Model.Sampling;

/// <summary>
/// Presence, frequency and repetition penalties on one row of logits (docs/architecture.md, "Engine"), in vLLM's order:
/// the repetition penalty (transformers/HF) over every token in the prompt or generated so far (a positive logit is
/// divided by it, a negative one multiplied), then the frequency penalty times the token's count in the generated
/// tokens plus the presence penalty once for every generated token (OpenAI) are subtracted.
/// </summary>
public static class Penalties
{
    /// <param name="outputCounts">Generated token id -> occurrences.</param>
    /// <param name="seen">Token ids in the prompt or generated (the repetition penalty's set).</param>
    public static void Apply(Span<float> logits, IReadOnlyDictionary<int, int> outputCounts, IEnumerable<int> seen,
        float presence, float frequency, float repetition)
    {
        if (repetition != 1f)
            foreach (int t in seen)
            {
                if ((uint)t >= (uint)logits.Length) continue;
                float l = logits[t];
                logits[t] = l > 0 ? l / repetition : l * repetition;
            }
        if (presence != 0f || frequency != 0f)
            foreach (var (t, count) in outputCounts)
                if ((uint)t < (uint)logits.Length && count > 0) logits[t] -= frequency * count + presence;
    }
}
