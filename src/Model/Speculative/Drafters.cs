using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Speculative;

/// <summary>
/// Proposes tokens that continue a sequence, for <see cref="SpeculativeDecoder"/> to verify (docs/speculative.md). A
/// drafter belongs to one sequence (one request): it may keep state between calls (a draft model's KV cache) and
/// re-synchronises it from the history it is given, so any history is valid at any call.
/// </summary>
public interface IDrafter : IDisposable
{
    /// <summary>Vocabulary size of the drafter's tokens (a draft model's; null: any, the drafter copies tokens of the history).</summary>
    int? VocabSize { get; }

    /// <summary>
    /// Proposes up to <paramref name="maxTokens"/> tokens continuing <paramref name="history"/> (prompt and generated
    /// tokens) into <paramref name="draft"/>; returns how many (0: no proposal). When <paramref name="draftProbs"/> is
    /// not empty (sampling), row i [V] receives the distribution token i was drawn from (after the same warpers as the
    /// target's, <paramref name="sampling"/>); a deterministic drafter writes a one-hot. <paramref name="counter"/> is a
    /// per-round number that makes the drafter's random draws reproducible.
    /// </summary>
    int Propose(IReadOnlyList<int> history, int maxTokens, in SamplingSettings sampling, Span<int> draft, Span<double> draftProbs, ulong counter);
}

/// <summary>
/// Prompt lookup (n-gram) drafting: finds the most recent earlier occurrence of the history's last n tokens (n from
/// <see cref="MaxNgram"/> down to <see cref="MinNgram"/>) and proposes the tokens that followed it. No model, no state;
/// its proposals are deterministic (a one-hot draft distribution). Good on inputs that repeat (code edits, quoting the
/// prompt, structured output).
/// </summary>
public sealed class NgramDrafter : IDrafter
{
    public NgramDrafter(int maxNgram = 3, int minNgram = 1)
    {
        if (minNgram < 1 || maxNgram < minNgram || maxNgram > 64)
            throw new ArgumentOutOfRangeException(nameof(maxNgram), $"n-gram sizes must satisfy 1 <= min ({minNgram}) <= max ({maxNgram}) <= 64");
        MaxNgram = maxNgram;
        MinNgram = minNgram;
    }

    public int MaxNgram { get; }
    public int MinNgram { get; }
    public int? VocabSize => null;

    public int Propose(IReadOnlyList<int> history, int maxTokens, in SamplingSettings sampling, Span<int> draft, Span<double> draftProbs, ulong counter)
    {
        int count = history.Count;
        int found = Lookup(history, out int start);
        if (found == 0) return 0;
        int n = Math.Min(Math.Min(maxTokens, draft.Length), count - start);
        for (int i = 0; i < n; i++) draft[i] = history[start + i];
        if (!draftProbs.IsEmpty)
        {
            int V = draftProbs.Length / Math.Max(1, draft.Length);
            for (int i = 0; i < n; i++)
            {
                var row = draftProbs.Slice(i * V, V);
                row.Clear();
                if ((uint)draft[i] >= (uint)V) throw new ArgumentException($"history token {draft[i]} is outside the vocabulary [0, {V})", nameof(history));
                row[draft[i]] = 1;
            }
        }
        return n;
    }

    /// <summary>The longest n in [MinNgram, MaxNgram] whose last-n-token suffix occurred earlier; <paramref name="start"/>: the index after that occurrence.</summary>
    private int Lookup(IReadOnlyList<int> h, out int start)
    {
        int count = h.Count;
        for (int n = Math.Min(MaxNgram, count - 1); n >= MinNgram; n--)
        {
            // the most recent occurrence ending before the suffix itself
            for (int end = count - 1; end >= n; end--)   // candidate occurrence h[end - n .. end - 1], followed by h[end]
            {
                bool match = true;
                for (int i = 0; i < n && match; i++) match = h[end - n + i] == h[count - n + i];
                if (match) { start = end; return n; }
            }
        }
        start = 0;
        return 0;
    }

    public void Dispose() { }
}
