using System.Diagnostics;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Generation;

/// <summary>One request of a batched generation: its prompt and its own options (sampling and seed, token budget, stops).</summary>
public sealed record GenerationRequest(IReadOnlyList<int> Prompt, GenerationOptions Options);

/// <summary>
/// Generates several prompts at once, sampling on the model's backend: request i is prefilled in sequence i, then each
/// round advances every unfinished sequence by one token in decode steps of up to the model's output rows, each row sampled with its own request's settings (seed, temperature,
/// top-k, top-p, min-p). A row's random number depends on its seed and position only, so with a fixed seed a request
/// yields the tokens it yields alone through <see cref="Generator"/>. Stops per request exactly as
/// <see cref="Generator"/> does (EOS, extra stop ids, stop strings, token budget, full context); reasoning is split at
/// &lt;think&gt;/&lt;/think&gt;. Presence and repetition penalties need the logits on the host and are refused.
/// Every call starts the sequences from scratch; the stats' times count from the start of the call. Not thread-safe.
/// </summary>
public sealed class BatchGenerator
{
    readonly ICausalLanguageModel _model;
    readonly Qwen3Tokenizer _tokenizer;
    readonly HashSet<int> _eos;
    readonly int? _thinkStart, _thinkEnd;

    public BatchGenerator(ICausalLanguageModel model, Qwen3Tokenizer tokenizer, IEnumerable<int> eosTokenIds)
    {
        _model = model;
        _tokenizer = tokenizer;
        _eos = eosTokenIds.ToHashSet();
        _thinkStart = tokenizer.TokenToId("<think>");
        _thinkEnd = tokenizer.TokenToId("</think>");
    }

    /// <summary>Generates every request (request i in sequence i); results in request order.</summary>
    public IReadOnlyList<GenerationResult> Generate(IReadOnlyList<GenerationRequest> requests, CancellationToken cancellationToken = default)
    {
        if (requests.Count == 0) return [];
        if (requests.Count > _model.MaxSequences)
            throw new ArgumentException($"{requests.Count} requests, but the model holds {_model.MaxSequences} sequences at once");
        var clock = Stopwatch.StartNew();
        var states = new State[requests.Count];
        for (int i = 0; i < states.Length; i++) states[i] = new State(this, i, requests[i]);
        foreach (var s in states)
        {
            _model.ResetSequence(s.Sequence);
            s.Accept(_model.ForwardSampled(s.Sequence, s.Prompt, s.Settings), clock.Elapsed, prefill: true);
        }
        int maxBatch = Math.Max(1, Math.Min(_model.MaxOutputRows, _model.MaxStepRows));
        var sequences = new int[maxBatch];
        var tokens = new int[maxBatch];
        var settings = new SamplingSettings[maxBatch];
        var next = new int[maxBatch];
        var batch = new State[maxBatch];
        while (true)
        {
            if (cancellationToken.IsCancellationRequested)
            {
                foreach (var s in states) if (!s.Done) s.Stop(StopReason.Cancelled);
                break;
            }
            int n = 0;
            bool any = false;
            foreach (var s in states)
            {
                if (s.Done) continue;
                any = true;
                batch[n] = s; sequences[n] = s.Sequence; tokens[n] = s.LastToken; settings[n] = s.Settings;
                if (++n == maxBatch) { Step(n); n = 0; }
            }
            if (n > 0) Step(n);
            if (!any) break;
        }
        return [.. states.Select(s => s.Result(clock.Elapsed))];

        void Step(int n)
        {
            _model.DecodeBatchSampled(sequences.AsSpan(0, n), tokens.AsSpan(0, n), settings.AsSpan(0, n), next.AsSpan(0, n));
            var now = clock.Elapsed;
            for (int i = 0; i < n; i++) batch[i].Accept(next[i], now, prefill: false);
        }
    }

    /// <summary>One request's progress: the same per-token rules as <see cref="Generator.Generate"/>.</summary>
    sealed class State
    {
        readonly BatchGenerator _g;
        readonly GenerationOptions _options;
        readonly HashSet<int> _stopIds;
        readonly Generator.TextStream _stream;
        readonly StreamingDecoder _decoder;
        readonly List<int> _generated = [];
        TimeSpan _prefillTime, _firstToken, _finished;
        StopReason _reason;

        public readonly int Sequence;
        public readonly int[] Prompt;
        public readonly SamplingSettings Settings;
        public bool Done { get; private set; }
        public int LastToken => _generated[^1];

        public State(BatchGenerator g, int sequence, GenerationRequest request)
        {
            _g = g;
            _options = request.Options;
            Sequence = sequence;
            Prompt = [.. request.Prompt];
            var o = _options.Sampling;
            string who = $"request {sequence}";
            try { o.Validate(); }
            catch (ArgumentException e) { throw new ArgumentException($"{who}: {e.Message}", e); }
            if (o.PresencePenalty != 0f || o.RepetitionPenalty != 1f)
                throw new ArgumentException($"{who}: presence and repetition penalties need the logits on the host; batched generation samples on the device");
            if (_options.MaxNewTokens < 1) throw new ArgumentException($"{who}: max new tokens must be >= 1, got {_options.MaxNewTokens}");
            if (Prompt.Length == 0) throw new ArgumentException($"{who}: the prompt is empty (0 tokens)");
            if (Prompt.Length > g._model.ContextLength)
                throw new ArgumentException($"{who}: the prompt has {Prompt.Length} tokens but the model's context holds {g._model.ContextLength}");
            foreach (int t in Prompt)
                if ((uint)t >= (uint)g._model.VocabSize) throw new ArgumentException($"{who}: prompt token id {t} is outside the model's vocabulary (0..{g._model.VocabSize - 1})");
            Settings = new SamplingSettings(o.Temperature, o.TopK, o.TopP, o.MinP, o.Seed ?? (ulong)Random.Shared.NextInt64());
            _stopIds = [.. g._eos, .. _options.ExtraStopTokenIds];
            _stream = new Generator.TextStream(_options.StopStrings, null) { Kind = StartsInThinking() ? PieceKind.Thinking : PieceKind.Content };
            _decoder = g._tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        }

        bool StartsInThinking()
        {
            if (_g._thinkStart == null) return false;
            for (int i = Prompt.Length - 1; i >= 0; i--)
            {
                if (Prompt[i] == _g._thinkEnd) return false;
                if (Prompt[i] == _g._thinkStart) return true;
            }
            return false;
        }

        /// <summary>Takes the sampled token: streams its text and decides whether the request is finished.</summary>
        public void Accept(int token, TimeSpan now, bool prefill)
        {
            if (prefill) _prefillTime = now;
            if (_generated.Count == 0) _firstToken = now;
            _generated.Add(token);
            _finished = now;
            if (_stopIds.Contains(token)) { Stop(StopReason.EndOfSequence); return; }
            if (token == _g._thinkStart && _g._thinkStart != null)
            {
                _stream.Write(_decoder.Flush());
                _stream.Kind = PieceKind.Thinking;
            }
            else if (token == _g._thinkEnd && _g._thinkEnd != null)
            {
                _stream.Write(_decoder.Flush());
                _stream.Kind = PieceKind.Content;
            }
            else _stream.Write(_decoder.Push(token));
            if (_stream.Stopped) Stop(StopReason.StopString);
            else if (_generated.Count >= _options.MaxNewTokens) Stop(StopReason.MaxNewTokens);
            else if (_g._model.SequenceLength(Sequence) >= _g._model.ContextLength) Stop(StopReason.ContextFull);
        }

        public void Stop(StopReason reason)
        {
            Done = true;
            _reason = reason;
            if (_stream.Stopped) return;
            _stream.Write(_decoder.Flush());
            _stream.Finish();
        }

        public GenerationResult Result(TimeSpan now) => new(
            _stream.Thinking.ToString().Trim('\n'), _stream.Content.ToString().TrimStart('\n'), _generated, _reason,
            new GenerationStats
            {
                PromptTokens = Prompt.Length,
                PrefilledTokens = Prompt.Length,
                GeneratedTokens = _generated.Count,
                PrefillTime = _prefillTime,
                TimeToFirstToken = _firstToken,
                TotalTime = _finished > TimeSpan.Zero ? _finished : now,
            });
    }
}
