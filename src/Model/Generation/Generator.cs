using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Model.Generation;

/// <summary>
/// Autoregressive generation over an <see cref="ICausalLanguageModel"/> sequence: prefill, then one
/// token at a time until an EOS id, a stop string, the token budget, the context limit or cancellation.
/// Splits reasoning from the answer at &lt;think&gt;/&lt;/think&gt; (looked up by text in the tokenizer).
/// Keeps the tokens in the KV cache so that a following prompt sharing a prefix (the next chat turn)
/// only prefills the new part; a prompt that diverges keeps the common prefix
/// (<c>TruncateSequence</c>).
/// </summary>
public sealed class Generator
{
    readonly ICausalLanguageModel _model;
    readonly Qwen3Tokenizer _tokenizer;
    readonly int _sequence;
    readonly HashSet<int> _eos;
    readonly int? _thinkStart, _thinkEnd;
    readonly List<int> _cached = new();
    readonly float[] _logits;
    readonly StepBatch _batch = new();

    public Generator(ICausalLanguageModel model, Qwen3Tokenizer tokenizer, IEnumerable<int> eosTokenIds, int sequence = 0)
    {
        _model = model;
        _tokenizer = tokenizer;
        _sequence = sequence;
        _eos = eosTokenIds.ToHashSet();
        _thinkStart = tokenizer.TokenToId("<think>");
        _thinkEnd = tokenizer.TokenToId("</think>");
        _logits = new float[model.VocabSize];
        if (sequence < 0 || sequence >= model.MaxSequences)
            throw new ArgumentOutOfRangeException(nameof(sequence), $"sequence {sequence} is outside 0..{model.MaxSequences - 1}");
        model.ResetSequence(sequence);
    }

    public IReadOnlySet<int> EosTokenIds => _eos;

    /// <summary>
    /// EOS ids: generation_config.json's eos_token_id (a number or a list) when present, plus
    /// &lt;|im_end|&gt; and &lt;|endoftext|&gt; when the tokenizer has them.
    /// </summary>
    public static IReadOnlyList<int> DefaultEosTokenIds(Qwen3Tokenizer tokenizer, string? modelDir)
    {
        var ids = new List<int>();
        var path = modelDir == null ? null : Path.Combine(modelDir, "generation_config.json");
        if (path != null && File.Exists(path))
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            if (doc.RootElement.TryGetProperty("eos_token_id", out var e))
            {
                if (e.ValueKind == JsonValueKind.Number) ids.Add(e.GetInt32());
                else if (e.ValueKind == JsonValueKind.Array) ids.AddRange(e.EnumerateArray().Select(x => x.GetInt32()));
            }
        }
        foreach (var s in new[] { "<|im_end|>", "<|endoftext|>" })
            if (tokenizer.TokenToId(s) is int id && !ids.Contains(id)) ids.Add(id);
        return ids;
    }

    /// <summary>Forgets the KV cache (the next prompt is prefilled from scratch).</summary>
    public void Reset()
    {
        _model.ResetSequence(_sequence);
        _cached.Clear();
    }

    public IAsyncEnumerable<GenerationPiece> GenerateStreamAsync(IReadOnlyList<int> prompt, GenerationOptions options,
        CancellationToken cancellationToken = default) => GenerateStreamAsync(prompt, options, null, cancellationToken);

    /// <summary>Streams pieces as they are decoded; <paramref name="onFinished"/> receives the result.</summary>
    public async IAsyncEnumerable<GenerationPiece> GenerateStreamAsync(IReadOnlyList<int> prompt, GenerationOptions options,
        Action<GenerationResult>? onFinished, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var channel = Channel.CreateUnbounded<GenerationPiece>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        var worker = Task.Run(() =>
        {
            try
            {
                var result = Generate(prompt, options, p => channel.Writer.TryWrite(p), cancellationToken);
                onFinished?.Invoke(result);
                channel.Writer.Complete();
            }
            catch (Exception e)
            {
                channel.Writer.Complete(e);
            }
        }, CancellationToken.None);
        await foreach (var piece in channel.Reader.ReadAllAsync(CancellationToken.None)) yield return piece;
        await worker;
    }

    /// <summary>
    /// Generates from <paramref name="prompt"/>. Cancellation stops after the current token and returns
    /// normally with <see cref="StopReason.Cancelled"/>; the generator stays usable.
    /// </summary>
    public GenerationResult Generate(IReadOnlyList<int> prompt, GenerationOptions options, Action<GenerationPiece>? onPiece = null,
        CancellationToken cancellationToken = default)
    {
        options.Sampling.Validate();
        if (options.MaxNewTokens < 1) throw new ArgumentException($"--max-new-tokens must be >= 1, got {options.MaxNewTokens}");
        if (prompt.Count == 0) throw new ArgumentException("the prompt is empty (0 tokens)");
        if (prompt.Count > _model.ContextLength)
            throw new ArgumentException($"the prompt has {prompt.Count} tokens but the model's context holds {_model.ContextLength}");
        foreach (int t in prompt)
            if ((uint)t >= (uint)_model.VocabSize) throw new ArgumentException($"prompt token id {t} is outside the model's vocabulary (0..{_model.VocabSize - 1})");

        var sampler = new Sampler(options.Sampling);
        var o = options.Sampling;
        // Speculation: penalties apply to the target's verification rows with the row's own context (prompt, generated
        // tokens, and the proposals before the row), as plain decoding applies them to its one row.
        var penaltyScratch = new List<int>();
        void Penalties(Span<float> logits, IReadOnlyList<int> history, ReadOnlySpan<int> proposed)
        {
            penaltyScratch.Clear();
            for (int i = 0; i < history.Count; i++) penaltyScratch.Add(history[i]);
            foreach (int t in proposed) penaltyScratch.Add(t);
            var context = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(penaltyScratch);
            sampler.ApplyPenalties(logits, context, context[prompt.Count..]);
        }
        using var speculative = options.Drafter is { } drafter
            ? new Speculative.SpeculativeDecoder(_model, _sequence, drafter, options.NumDraftTokens) { Processor = o.PresencePenalty == 0f && o.RepetitionPenalty == 1f ? null : Penalties }
            : null;
        var pending = new Queue<int>();   // tokens a speculative round emitted, not yet processed
        var emitted = new List<int>();
        // Sampling on the model's backend (only the id comes back) unless a penalty needs the logits on the host.
        bool backendSampling = o.PresencePenalty == 0f && o.RepetitionPenalty == 1f;
        var settings = new Qwen3Cuda.Runtime.Launchers.SamplingSettings(o.Temperature, o.TopK, o.TopP, o.MinP,
            o.Seed ?? (ulong)Random.Shared.NextInt64());
        int sampledToken = -1;
        var stopIds = new HashSet<int>(_eos);
        stopIds.UnionWith(options.ExtraStopTokenIds);
        var clock = Stopwatch.StartNew();

        // Prefill what the KV cache does not already hold.
        int common = 0;
        while (common < _cached.Count && common < prompt.Count && _cached[common] == prompt[common]) common++;
        if (common == prompt.Count) common--; // the last prompt token must run to produce logits
        if (common < _cached.Count)
        {
            if (common > 0)
            {
                _model.TruncateSequence(_sequence, common);
                _cached.RemoveRange(common, _cached.Count - common);
            }
            else { Reset(); common = 0; }
        }
        var suffix = new int[prompt.Count - common];
        for (int i = 0; i < suffix.Length; i++) suffix[i] = prompt[common + i];
        // Prefill in steps of at most MaxStepRows tokens; only the last row has an output.
        int chunk = _model.MaxStepRows;
        for (int start = 0; start < suffix.Length; start += chunk)
        {
            if (cancellationToken.IsCancellationRequested) break;
            int n = Math.Min(chunk, suffix.Length - start);
            sampledToken = Run(suffix.AsSpan(start, n), start + n == suffix.Length, backendSampling, settings);
            _cached.AddRange(suffix.AsSpan(start, n));
        }
        var prefillTime = clock.Elapsed;

        var stream = new TextStream(options.StopStrings, onPiece);
        stream.Kind = StartsInThinking(prompt) ? PieceKind.Thinking : PieceKind.Content;
        var decoder = _tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        var all = new List<int>(prompt.Count + options.MaxNewTokens);
        all.AddRange(prompt);
        var generated = new List<int>();
        TimeSpan firstToken = TimeSpan.Zero;
        StopReason reason;
        while (true)
        {
            if (cancellationToken.IsCancellationRequested) { reason = StopReason.Cancelled; break; }
            int token = pending.Count > 0 ? pending.Dequeue()
                : backendSampling ? sampledToken : sampler.Sample(_logits, System.Runtime.InteropServices.CollectionsMarshal.AsSpan(all),
                System.Runtime.InteropServices.CollectionsMarshal.AsSpan(generated));
            if (generated.Count == 0) firstToken = clock.Elapsed;
            generated.Add(token);
            all.Add(token);
            if (stopIds.Contains(token)) { reason = StopReason.EndOfSequence; break; }
            if (token == _thinkStart && _thinkStart != null)
            {
                stream.Write(decoder.Flush());
                stream.Kind = PieceKind.Thinking;
            }
            else if (token == _thinkEnd && _thinkEnd != null)
            {
                stream.Write(decoder.Flush());
                stream.Kind = PieceKind.Content;
            }
            else stream.Write(decoder.Push(token));
            if (stream.Stopped) { reason = StopReason.StopString; break; }
            if (generated.Count >= options.MaxNewTokens) { reason = StopReason.MaxNewTokens; break; }
            if (all.Count - 1 >= _model.ContextLength) { reason = StopReason.ContextFull; break; }   // the KV cache holds all but the last token
            if (speculative is not null)
            {
                if (pending.Count > 0) continue;
                emitted.Clear();
                speculative.Step(all, settings, options.MaxNewTokens - generated.Count, emitted);
                foreach (int t in emitted) pending.Enqueue(t);
                continue;
            }
            sampledToken = Run([token], true, backendSampling, settings);
            _cached.Add(token);
        }
        if (speculative is not null)
        {
            // The cache may hold emitted tokens past where generation stopped: keep all processed tokens but the last.
            int keep = Math.Min(_model.SequenceLength(_sequence), all.Count - 1);
            _model.TruncateSequence(_sequence, keep);
            _cached.Clear();
            for (int i = 0; i < keep; i++) _cached.Add(all[i]);
        }
        if (!stream.Stopped)
        {
            stream.Write(decoder.Flush());
            stream.Finish();
        }
        var total = clock.Elapsed;
        var stats = new GenerationStats
        {
            PromptTokens = prompt.Count,
            PrefilledTokens = suffix.Length,
            GeneratedTokens = generated.Count,
            PrefillTime = prefillTime,
            TimeToFirstToken = generated.Count > 0 ? firstToken : TimeSpan.Zero,
            TotalTime = total,
            Speculation = speculative?.Stats,
        };
        return new GenerationResult(stream.Thinking.ToString().Trim('\n'), stream.Content.ToString().TrimStart('\n'), generated, reason, stats);
    }

    /// <summary>One step of this generator's sequence; the last row samples on the backend or returns its logits into _logits.</summary>
    int Run(ReadOnlySpan<int> tokens, bool output, bool backendSampling, in Qwen3Cuda.Runtime.Launchers.SamplingSettings settings)
    {
        _batch.Clear();
        var kind = !output ? StepOutput.None : backendSampling ? StepOutput.Sample : StepOutput.Logits;
        _batch.AddTokens(_sequence, tokens, _model.Kv.Length(_sequence), kind, settings);
        _model.Step(_batch);
        int last = _batch.Count - 1;
        if (kind == StepOutput.Logits) _batch.Logits(last).CopyTo(_logits);
        return kind == StepOutput.Sample ? _batch.SampledToken(last) : -1;
    }

    /// <summary>True when the prompt's last &lt;think&gt; is not closed (templates that open the think block for the model).</summary>
    bool StartsInThinking(IReadOnlyList<int> prompt)
    {
        if (_thinkStart == null) return false;
        for (int i = prompt.Count - 1; i >= 0; i--)
        {
            if (prompt[i] == _thinkEnd) return false;
            if (prompt[i] == _thinkStart) return true;
        }
        return false;
    }

    /// <summary>Routes text to the thinking or content stream, holding back a tail that may begin a stop string.</summary>
    internal sealed class TextStream(IReadOnlyList<string> stopStrings, Action<GenerationPiece>? onPiece)
    {
        PieceKind _kind;
        string _held = "";
        public readonly StringBuilder Thinking = new(), Content = new();
        public bool Stopped { get; private set; }

        public PieceKind Kind
        {
            get => _kind;
            set
            {
                if (value == _kind) return;
                Finish();
                _kind = value;
            }
        }

        public void Write(string text)
        {
            if (text.Length == 0 || Stopped) return;
            if (stopStrings.Count == 0) { Emit(text); return; }
            _held += text;
            int at = -1, stopLength = 0;
            foreach (var s in stopStrings)
            {
                if (s.Length == 0) continue;
                int k = _held.IndexOf(s, StringComparison.Ordinal);
                if (k >= 0 && (at < 0 || k < at)) { at = k; stopLength = s.Length; }
            }
            if (at >= 0)
            {
                Emit(_held[..at]);
                _held = "";
                Stopped = true;
                return;
            }
            int keep = 0;
            foreach (var s in stopStrings)
                for (int len = Math.Min(s.Length - 1, _held.Length); len > keep; len--)
                    if (_held.AsSpan(_held.Length - len).SequenceEqual(s.AsSpan(0, len))) { keep = len; break; }
            Emit(_held[..^keep]);
            _held = _held[^keep..];
        }

        /// <summary>Emits the held-back tail (no stop string can complete any more).</summary>
        public void Finish()
        {
            if (_held.Length > 0) Emit(_held);
            _held = "";
        }

        void Emit(string text)
        {
            if (text.Length == 0) return;
            (_kind == PieceKind.Thinking ? Thinking : Content).Append(text);
            onPiece?.Invoke(new GenerationPiece(text, _kind));
        }
    }
}
