using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Tests.Speculative;

/// <summary>
/// A host-only causal LM for fast statistical tests of speculative decoding: a Markov chain whose next-token logits
/// depend only on the current token (row <c>table[token]</c>). Implements the step contract with a real
/// <see cref="KvPageTable"/> (so truncation and page accounting are exercised) and samples rows like the CPU reference
/// (<see cref="CounterSampler"/>, counter = position + 1).
/// </summary>
public sealed class ToyModel : ICausalLanguageModel
{
    private readonly float[,] _table;
    private readonly CounterSampler _sampler = new();

    public ToyModel(float[,] table, int contextLength = 64, int maxSequences = 2, int maxRows = 32)
    {
        _table = table;
        VocabSize = table.GetLength(1);
        ContextLength = contextLength;
        MaxStepRows = maxRows;
        MaxOutputRows = maxRows;
        int pagesPerSeq = (contextLength + 3) / 4;
        Kv = new KvPageTable(maxSequences * pagesPerSeq + 1, 4, maxSequences, pagesPerSeq);
    }

    public int VocabSize { get; }
    public int ContextLength { get; }
    public int MaxSequences => Kv.MaxSequences;
    public int MaxStepRows { get; }
    public int MaxOutputRows { get; }
    public KvPageTable Kv { get; }
    public int Steps { get; private set; }

    /// <summary>A random table of logits in [-2, 2] (seeded).</summary>
    public static float[,] RandomTable(int vocab, int seed)
    {
        var rng = new Random(seed);
        var t = new float[vocab, vocab];
        for (int a = 0; a < vocab; a++)
            for (int b = 0; b < vocab; b++) t[a, b] = (float)(rng.NextDouble() * 4 - 2);
        return t;
    }

    public void Logits(int token, Span<float> logits)
    {
        for (int j = 0; j < VocabSize; j++) logits[j] = _table[token, j];
    }

    public void Step(StepBatch batch)
    {
        batch.Prepare(VocabSize, ContextLength, MaxStepRows, MaxOutputRows, Kv);
        batch.ReservePages(Kv);
        Kv.TakePendingCopies();
        Span<float> logits = stackalloc float[VocabSize];
        foreach (int row in batch.OutputRows)
        {
            if (batch.Output(row) == StepOutput.Logits) Logits(batch.Token(row), batch.LogitsBuffer(row));
            else
            {
                Logits(batch.Token(row), logits);
                batch.SetSampled(batch.OutputIndex(row), _sampler.Sample(logits, batch.Sampling(row), (ulong)batch.Position(row) + 1));
            }
        }
        batch.AdvanceSequences(Kv);
        Steps++;
    }

    public void Dispose() { }
}
