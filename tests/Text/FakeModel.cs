using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Generation;

namespace Qwen3Cuda.Tests.Text;

/// <summary>
/// Deterministic stand-in for a model: the next token is chosen by <see cref="Next"/> from the sequence's
/// history, written as logit 10 (others 0; a negative choice gives flat logits). Records forward calls to check what was prefilled.
/// </summary>
sealed class FakeModel(int vocabSize, int contextLength, Func<IReadOnlyList<int>, int> next) : ICausalLanguageModel
{
    readonly List<int>[] _seqs = [new(), new()];
    public Func<IReadOnlyList<int>, int> Next { get; set; } = next;
    public List<int> ForwardSizes { get; } = new();
    public int VocabSize => vocabSize;
    public int ContextLength => contextLength;
    public int MaxSequences => _seqs.Length;
    public int SequenceLength(int sequence) => _seqs[sequence].Count;
    public void ResetSequence(int sequence) => _seqs[sequence].Clear();
    public IReadOnlyList<int> History(int sequence) => _seqs[sequence];

    public void Forward(int sequence, ReadOnlySpan<int> tokens, Span<float> lastLogits)
    {
        if (_seqs[sequence].Count + tokens.Length > contextLength)
            throw new ArgumentException($"sequence {sequence} would exceed the context ({contextLength})");
        ForwardSizes.Add(tokens.Length);
        _seqs[sequence].AddRange(tokens.ToArray());
        lastLogits.Clear();
        int next = Next(_seqs[sequence]);
        if (next >= 0) lastLogits[next] = 10f; // a negative choice leaves all logits equal (a flat distribution)
    }

    /// <summary>A model that, after the prompt, emits <paramref name="script"/> and then repeats its last token.</summary>
    public static FakeModel Scripted(int vocabSize, int contextLength, int promptLength, IReadOnlyList<int> script) =>
        new(vocabSize, contextLength, h => script[Math.Min(h.Count - promptLength, script.Count - 1)]);

    public void TruncateSequence(int sequence, int length) => _seqs[sequence].RemoveRange(length, _seqs[sequence].Count - length);

    public void Dispose() { }
}
