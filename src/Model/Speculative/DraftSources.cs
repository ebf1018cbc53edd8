namespace Qwen3Cuda.Model.Speculative;

/// <summary>
/// Makes the drafter of each request for an engine that speculates on every request (`serve --draft-model DIR |
/// --draft ngram`, docs/speculative.md). A drafter holds one request's state (a draft model's KV sequence), so every
/// request gets its own; disposing the drafter gives its resources back to the source. Used from the engine's worker
/// thread only (every draft model step runs there, one after another).
/// </summary>
public interface IDraftSource : IDisposable
{
    /// <summary>Vocabulary size of the drafts (a draft model's; null: any, the drafter copies tokens of the history).</summary>
    int? VocabSize { get; }
    /// <summary>"prompt lookup" or "draft model NAME" (for logs).</summary>
    string Description { get; }
    /// <summary>A drafter for one request; null when none is free (the request then decodes without speculation until one is).</summary>
    IDrafter? Create();
}

/// <summary>Prompt lookup for every request: a stateless <see cref="NgramDrafter"/> each.</summary>
public sealed class NgramDraftSource : IDraftSource
{
    public int? VocabSize => null;
    public string Description => "prompt lookup (ngram)";
    public IDrafter? Create() => new NgramDrafter();
    public void Dispose() { }
}

/// <summary>
/// One draft model shared by the requests: each request's <see cref="ModelDrafter"/> holds a sequence of its own in the
/// draft's KV cache (so concurrent requests never see each other's draft state); disposing it resets that sequence and
/// returns it. With more requests than the draft model's sequences, the extra ones decode without speculation.
/// </summary>
public sealed class ModelDraftSource : IDraftSource
{
    /// <summary>A draft model's tokens per sequence without --ctx-size (Qwen3-0.6B: 112 KiB of KV per token, 1.75 GiB at 16384).</summary>
    public const int DefaultContextTokens = 16384;
    private readonly ICausalLanguageModel _model;
    private readonly bool _ownsModel;
    private readonly Stack<int> _free = new();
    private bool _disposed;

    public ModelDraftSource(ICausalLanguageModel model, string name, bool ownsModel)
    {
        ArgumentNullException.ThrowIfNull(model);
        _model = model;
        _ownsModel = ownsModel;
        Description = $"draft model {name}";
        for (int s = model.MaxSequences - 1; s >= 0; s--) _free.Push(s);
    }

    public int? VocabSize => _model.VocabSize;
    public string Description { get; }
    /// <summary>Draft sequences not held by a request.</summary>
    public int FreeSequences { get { lock (_free) return _free.Count; } }

    public IDrafter? Create()
    {
        int sequence;
        lock (_free)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            if (!_free.TryPop(out sequence)) return null;
        }
        return new Pooled(this, new ModelDrafter(_model, sequence));
    }

    private void Return(int sequence)
    {
        lock (_free) if (!_disposed) _free.Push(sequence);
    }

    public void Dispose()
    {
        lock (_free)
        {
            if (_disposed) return;
            _disposed = true;
        }
        if (_ownsModel) _model.Dispose();
    }

    /// <summary>A request's drafter: disposing it frees its draft sequence's pages and gives the sequence back.</summary>
    private sealed class Pooled(ModelDraftSource source, ModelDrafter inner) : IDrafter
    {
        private bool _disposed;
        public int? VocabSize => inner.VocabSize;
        public int Propose(IReadOnlyList<int> history, int maxTokens, in Qwen3Cuda.Runtime.Launchers.SamplingSettings sampling, Span<int> draft, Span<double> draftProbs, ulong counter) =>
            inner.Propose(history, maxTokens, sampling, draft, draftProbs, counter);
        public void Dispose()
        {
            if (_disposed) return;
            _disposed = true;
            if (!source._disposed) inner.Dispose();   // resets the sequence (the model is not the drafter's)
            source.Return(inner.Sequence);
        }
    }
}
