using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Speculative;

/// <summary>
/// Drafting with a second, smaller model that shares the target's vocabulary (e.g. Qwen3-0.6B for Qwen3-30B-A3B): it
/// decodes the proposal token by token in its own KV cache (sequence <see cref="Sequence"/> of <see cref="Model"/>; the
/// draft may even be the target model itself on another sequence). Each call first brings the draft's cache to the
/// longest prefix it shares with the history (a rejected proposal is truncated away) and feeds the rest. Greedy
/// settings: the draft's argmax (computed on its backend, only ids come back); sampling: the draft's logits, warped as
/// the target's, drawn on the host (Philox, docs/speculative.md).
/// </summary>
public sealed class ModelDrafter : IDrafter
{
    private readonly bool _ownsModel;
    private readonly List<int> _inCache = [];     // the tokens in the draft's KV cache, in order
    private readonly StepBatch _batch = new();
    private readonly CounterSampler _sampler = new();
    private readonly float[] _logits;
    private static readonly SamplingSettings Greedy = new(Temperature: 0f);

    /// <param name="model">the draft model (its vocabulary must be the target's: <see cref="SpeculativeDecoder"/> checks)</param>
    /// <param name="sequence">the draft's sequence id for this request</param>
    /// <param name="ownsModel">dispose the model with the drafter</param>
    public ModelDrafter(ICausalLanguageModel model, int sequence = 0, bool ownsModel = false)
    {
        ArgumentNullException.ThrowIfNull(model);
        if ((uint)sequence >= (uint)model.MaxSequences)
            throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"the draft model holds sequences 0..{model.MaxSequences - 1}");
        Model = model;
        Sequence = sequence;
        _ownsModel = ownsModel;
        _logits = new float[model.VocabSize];
        model.ResetSequence(sequence);
    }

    public ICausalLanguageModel Model { get; }
    public int Sequence { get; }
    public int? VocabSize => Model.VocabSize;

    public int Propose(IReadOnlyList<int> history, int maxTokens, in SamplingSettings sampling, Span<int> draft, Span<double> draftProbs, ulong counter)
    {
        if (history.Count == 0) throw new ArgumentException("the history is empty", nameof(history));
        int V = Model.VocabSize;
        // The draft writes at most history.Count - 1 + maxTokens positions (it never feeds its last proposal).
        maxTokens = Math.Min(Math.Min(maxTokens, draft.Length), Model.ContextLength - history.Count + 1);
        if (maxTokens <= 0) return 0;
        bool probs = !draftProbs.IsEmpty;

        // Keep the cached prefix the history still has; the last history token always runs (its logits propose token 1).
        int common = 0;
        while (common < _inCache.Count && common < history.Count - 1 && _inCache[common] == history[common]) common++;
        if (common < _inCache.Count)
        {
            Model.TruncateSequence(Sequence, common);
            _inCache.RemoveRange(common, _inCache.Count - common);
        }
        int chunk = Math.Max(1, Model.MaxStepRows);
        for (int start = common; start < history.Count; start += chunk)
        {
            int n = Math.Min(chunk, history.Count - start);
            bool last = start + n == history.Count;
            _batch.Clear();
            for (int i = 0; i < n; i++)
            {
                bool output = last && i == n - 1;
                _batch.Add(Sequence, history[start + i], start + i, output ? OutputKind(sampling, probs) : StepOutput.None, Greedy);
                _inCache.Add(history[start + i]);
            }
            Model.Step(_batch);
        }
        for (int i = 0; i < maxTokens; i++)
        {
            int row = _batch.Count - 1;
            int token;
            if (_batch.Output(row) == StepOutput.Sample) token = _batch.SampledToken(row);
            else
            {
                _batch.Logits(row).CopyTo(_logits);
                var q = draftProbs.Slice(i * V, V);
                _sampler.Probabilities(_logits, sampling, q);
                token = SpeculativeDecoder.Draw(q, SpeculativeDecoder.Uniform(sampling.Seed, counter + (ulong)i, SpeculativeDecoder.DraftStream));
            }
            draft[i] = token;
            if (i == maxTokens - 1) break;
            _batch.Clear();
            _batch.Add(Sequence, token, _inCache.Count, OutputKind(sampling, probs), Greedy);
            _inCache.Add(token);
            Model.Step(_batch);
        }
        return maxTokens;
    }

    /// <summary>Greedy: the argmax on the draft's backend (ids only); sampling: the logits, drawn on the host.</summary>
    private static StepOutput OutputKind(in SamplingSettings s, bool probs) => probs && !s.IsGreedy ? StepOutput.Logits : StepOutput.Sample;

    /// <summary>Releases the draft's pages of this sequence.</summary>
    public void Reset()
    {
        Model.ResetSequence(Sequence);
        _inCache.Clear();
    }

    public void Dispose()
    {
        if (_ownsModel) Model.Dispose();
        else Model.ResetSequence(Sequence);
    }
}
