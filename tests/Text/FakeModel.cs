using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Tests.Text;

/// <summary>
/// Deterministic stand-in for a model: the next token is chosen by <see cref="Next"/> from the sequence's
/// history, written as logit 10 (others 0; a negative choice gives flat logits); sampled rows draw from those logits
/// with the device sampler's semantics. Records the rows of each sequence's steps to check what was prefilled.
/// </summary>
sealed class FakeModel(int vocabSize, int contextLength, Func<IReadOnlyList<int>, int> next) : ICausalLanguageModel
{
    readonly List<int>[] _seqs = [new(), new()];
    readonly CounterSampler _sampler = new();
    public Func<IReadOnlyList<int>, int> Next { get; set; } = next;
    public List<int> ForwardSizes { get; } = new();
    public int VocabSize => vocabSize;
    public int ContextLength => contextLength;
    public int MaxSequences => _seqs.Length;
    public int MaxStepRows => contextLength;
    public int MaxOutputRows => contextLength;
    /// <summary>One token per page: lengths and truncation only.</summary>
    public KvPageTable Kv { get; } = new(2 * contextLength + 1, 1, 2, contextLength);
    public IReadOnlyList<int> History(int sequence) => _seqs[sequence].Take(Kv.Length(sequence)).ToList();

    public void Step(StepBatch batch)
    {
        batch.Prepare(vocabSize, contextLength, MaxStepRows, MaxOutputRows, Kv);
        batch.ReservePages(Kv);
        var logits = new float[vocabSize];
        foreach (var g in batch.Segments)
        {
            var seq = _seqs[g.Sequence];
            seq.RemoveRange(Kv.Length(g.Sequence), seq.Count - Kv.Length(g.Sequence));   // truncated or reset since
            ForwardSizes.Add(g.Rows);
            for (int r = g.FirstRow; r < g.FirstRow + g.Rows; r++)
            {
                seq.Add(batch.Token(r));
                if (batch.Output(r) == StepOutput.None) continue;
                Array.Clear(logits);
                int choice = Next(seq);
                if (choice >= 0) logits[choice] = 10f; // a negative choice leaves all logits equal (a flat distribution)
                if (batch.Output(r) == StepOutput.Logits) logits.CopyTo(batch.LogitsBuffer(r));
                else
                {
                    if (batch.PenaltyTokens(r).Length > 0) Penalties.Apply(logits, batch.PenaltyTokens(r), batch.PenaltyCounts(r), batch.Penalties(r));
                    batch.SetSampled(batch.OutputIndex(r), _sampler.Sample(logits, batch.Sampling(r), (ulong)batch.Position(r) + 1));
                }
            }
        }
        batch.AdvanceSequences(Kv);
    }

    /// <summary>A model that, after the prompt, emits <paramref name="script"/> and then repeats its last token.</summary>
    public static FakeModel Scripted(int vocabSize, int contextLength, int promptLength, IReadOnlyList<int> script) =>
        new(vocabSize, contextLength, h => script[Math.Min(h.Count - promptLength, script.Count - 1)]);

    public void Dispose() { }
}
