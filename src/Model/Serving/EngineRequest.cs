using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Threading.Channels;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Serving;

/// <summary>A request in flight: stream its pieces, then read <see cref="Result"/> (set when the stream ends).</summary>
public sealed class EngineRequest
{
    private readonly RequestState _state;

    internal EngineRequest(RequestState state)
    {
        _state = state;
        Pieces = new PieceStream(state);
    }

    /// <summary>The pieces as they are decoded (single reader). Cancelling the enumeration's token, or stopping the
    /// enumeration early, cancels the request: its pages are freed at the next step.</summary>
    public IAsyncEnumerable<EnginePiece> Pieces { get; }
    /// <summary>The whole answer, set when the request finishes (a model fault faults it).</summary>
    public Task<RequestResult> Result => _state.Completion.Task;
    public int PromptTokens => _state.PromptLength;

    /// <summary>Stops the request at the next step (its result says <see cref="FinishReason.Cancelled"/>).</summary>
    public void Cancel() => _state.RequestCancel();

    private sealed class PieceStream(RequestState state) : IAsyncEnumerable<EnginePiece>
    {
        private int _taken;

        public IAsyncEnumerator<EnginePiece> GetAsyncEnumerator(CancellationToken cancellationToken = default)
        {
            if (Interlocked.Exchange(ref _taken, 1) != 0) throw new InvalidOperationException("a request's pieces can be enumerated once");
            return Read().GetAsyncEnumerator(cancellationToken);
        }

        private async IAsyncEnumerable<EnginePiece> Read([EnumeratorCancellation] CancellationToken cancellationToken = default)
        {
            using var registration = cancellationToken.Register(static s => ((RequestState)s!).RequestCancel(), state);
            bool completed = false;
            try
            {
                var reader = state.Output.Reader;
                while (await reader.WaitToReadAsync(CancellationToken.None).ConfigureAwait(false))
                    while (reader.TryRead(out var piece)) yield return piece;
                completed = true;
            }
            finally
            {
                if (!completed) state.RequestCancel();   // abandoned: free its pages at the next step
            }
        }
    }
}

/// <summary>
/// One request's state, owned by the engine's worker (docs/architecture.md, "Engine"): its tokens (prompt and generated),
/// how many have their K/V in its sequence, the per-token rules (EOS, stop token ids, stop strings, token budget,
/// context), the reasoning split at &lt;think&gt;/&lt;/think&gt;, tool-call parsing and UTF-8-safe streaming, and the
/// penalty counts. Only <see cref="RequestCancel"/> is called from other threads.
/// </summary>
internal sealed class RequestState
{
    private readonly Engine _engine;
    private readonly StreamingDecoder _decoder;
    private readonly OutputText _text;
    private readonly List<TokenLogprob> _pendingLogprobs = [];
    private long _firstTokenTicks, _lastTokenTicks;
    private int? _stopToken;
    private volatile bool _cancel;

    public readonly long Id;
    public readonly RequestOptions Options;
    public readonly SamplingSettings Settings;
    public readonly List<int> Tokens;           // prompt, then generated
    public readonly int PromptLength;
    public readonly long SubmitTicks = Stopwatch.GetTimestamp();
    public readonly Channel<EnginePiece> Output = Channel.CreateUnbounded<EnginePiece>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
    public readonly TaskCompletionSource<RequestResult> Completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    /// <summary>The request's penalties (none: <see cref="PenaltySettings.IsNone"/>).</summary>
    public readonly PenaltySettings Penalties;
    /// <summary>The penalty state: distinct token ids (the prompt's when the repetition penalty is on, and the answer's)
    /// and their occurrences in the answer, in the layout a step takes (<see cref="StepBatch.SetPenalties"/>).</summary>
    public readonly List<int> PenaltyTokens = [], PenaltyCounts = [];
    private readonly Dictionary<int, int> _penaltyIndex = [];

    public int Sequence = -1;       // the model sequence holding its K/V, -1 while waiting
    public int Computed;            // tokens whose K/V are in the sequence
    public bool Admitted;           // admitted at least once (counted in the prefix-cache statistics)
    public int CachedPromptTokens;
    public bool Finished;
    public CancellationTokenRegistration Registration;
    /// <summary>Speculative decoding: the decoder while the request holds a sequence, and the counts over its rounds.</summary>
    public Speculative.SpeculativeDecoder? Speculative;
    public readonly Speculative.SpeculationStats? SpeculationStats;
    /// <summary>The guided tool call's token constraint (null: unconstrained); its rows return logits for the host to mask and sample.</summary>
    public readonly Constraints.ToolCallConstraint? Constraint;

    public RequestState(Engine engine, long id, IReadOnlyList<int> prompt, RequestOptions options)
    {
        _engine = engine;
        Id = id;
        Options = options;
        PromptLength = prompt.Count;
        Tokens = new List<int>(prompt.Count + Math.Min(options.MaxNewTokens ?? 256, 4096));
        Tokens.AddRange(prompt);
        Penalties = new PenaltySettings(options.EffectivePresencePenalty, options.FrequencyPenalty, options.EffectiveRepetitionPenalty);
        NumDraftTokens = options.Drafter is not null ? options.NumDraftTokens : engine.NumDraftTokens;
        // The engine's drafters serve requests without logprobs (a verification round reports tokens, not their logprobs).
        // A guided tool call samples every token on the host from masked logits: it never speculates.
        if (options.ToolCall is { } call) Constraint = new Constraints.ToolCallConstraint(call, Constraints.TokenVocabulary.For(engine.Tokenizer));
        else if (options.Drafter is not null || (engine.DraftSource is not null && options.TopLogprobs < 0)) SpeculationStats = new();
        if (Penalties.Repetition != 1f)
            foreach (int t in prompt) if (_penaltyIndex.TryAdd(t, PenaltyTokens.Count)) { PenaltyTokens.Add(t); PenaltyCounts.Add(0); }
        var s = options.Sampling;
        Settings = new SamplingSettings(s.Temperature, s.TopK, s.TopP, s.MinP, s.Seed ?? (ulong)Random.Shared.NextInt64());
        _decoder = engine.Tokenizer.CreateStreamingDecoder(skipSpecialTokens: true);
        _text = new OutputText(options.Stop, options.ParseToolCalls, Emit) { Kind = StartsInThinking(prompt) ? PieceKind.Reasoning : PieceKind.Content };
    }

    public bool CancelRequested => _cancel;

    /// <summary>
    /// The speculative decoder for the request's current sequence (made on first use; with penalties, a processor applies
    /// them to every verification row with that row's context: the answer so far and the proposals before the row).
    /// </summary>
    public Speculative.SpeculativeDecoder SpeculativeDecoder(ICausalLanguageModel target) =>
        Speculative ??= new Speculative.SpeculativeDecoder(target, Sequence, Drafter!, NumDraftTokens)
        {
            Processor = Penalties.IsNone ? null : (logits, _, proposed) =>
            {
                var tokens = new List<int>(PenaltyTokens);
                var counts = new List<int>(PenaltyCounts);
                foreach (int t in proposed)
                {
                    int at = tokens.IndexOf(t);
                    if (at >= 0) counts[at]++;
                    else { tokens.Add(t); counts.Add(1); }
                }
                Sampling.Penalties.Apply(logits, CollectionsMarshal.AsSpan(tokens), CollectionsMarshal.AsSpan(counts), Penalties);
            },
        };

    /// <summary>True when the request decodes speculatively (its own drafter, or one from the engine's draft source).</summary>
    public bool Speculates => SpeculationStats is not null;
    /// <summary>Tokens proposed per round: the request's with its own drafter, else the engine's.</summary>
    public readonly int NumDraftTokens;
    private Speculative.IDrafter? _engineDrafter;   // made by the engine's draft source for this request alone
    /// <summary>The request's drafter: its options' one, else the one the engine's source made for it (null: none yet).</summary>
    public Speculative.IDrafter? Drafter => Options.Drafter ?? _engineDrafter;

    /// <summary>Gets a drafter from <paramref name="source"/> when the request has none; false when none is free.</summary>
    public bool EnsureDrafter(Speculative.IDraftSource? source)
    {
        if (Drafter is not null) return true;
        _engineDrafter = source?.Create();
        return _engineDrafter is not null;
    }

    /// <summary>Drops the speculative decoder (the request leaves its sequence), keeping its counts; an engine-made
    /// drafter goes back to its source (a draft model's sequence is freed; a later round gets one again).</summary>
    public void ReleaseSpeculative()
    {
        if (Speculative is not null)
        {
            SpeculationStats!.Add(Speculative.Stats);
            Speculative.Dispose();
            Speculative = null;
        }
        _engineDrafter?.Dispose();
        _engineDrafter = null;
    }
    public int Generated => Tokens.Count - PromptLength;
    /// <summary>The step's output row: a token sampled on the backend (penalties applied there), or logits for host sampling (logprobs, a guided tool call).</summary>
    public StepOutput OutputKind => Options.TopLogprobs >= 0 || Constraint is not null ? StepOutput.Logits : StepOutput.Sample;
    public Span<int> TokenSpan => CollectionsMarshal.AsSpan(Tokens);

    public void RequestCancel()
    {
        _cancel = true;
        _engine.Wake();
    }

    private bool StartsInThinking(IReadOnlyList<int> prompt)
    {
        if (_engine.ThinkStart is not int start) return false;
        for (int i = prompt.Count - 1; i >= 0; i--)
        {
            if (prompt[i] == _engine.ThinkEnd) return false;
            if (prompt[i] == start) return true;
        }
        return false;
    }

    /// <summary>Takes a generated token; returns the finish reason when the request is done.</summary>
    public FinishReason? Accept(int token, TokenLogprob? logprob, long nowTicks, EngineStatistics stats)
    {
        if (Generated == 0)
        {
            _firstTokenTicks = nowTicks;
            stats.TimeToFirstToken.Observe(Stopwatch.GetElapsedTime(SubmitTicks, nowTicks).TotalSeconds);
        }
        else stats.InterTokenLatency.Observe(Stopwatch.GetElapsedTime(_lastTokenTicks, nowTicks).TotalSeconds);
        _lastTokenTicks = nowTicks;
        stats.GeneratedTokens++;
        Tokens.Add(token);
        if (!Penalties.IsNone)
        {
            if (_penaltyIndex.TryGetValue(token, out int at)) PenaltyCounts[at]++;
            else { _penaltyIndex[token] = PenaltyTokens.Count; PenaltyTokens.Add(token); PenaltyCounts.Add(1); }
        }
        if (logprob is not null) _pendingLogprobs.Add(logprob);

        if ((!Options.IgnoreEos && _engine.EosTokenIds.Contains(token)) || Options.StopTokenIds.Contains(token)) { _stopToken = token; return FinishReason.Stop; }
        if (token == _engine.ThinkStart) { _text.Write(_decoder.Flush()); _text.Kind = PieceKind.Reasoning; }
        else if (token == _engine.ThinkEnd) { _text.Write(_decoder.Flush()); _text.Kind = PieceKind.Content; }
        else if (token == _engine.ToolCallStart) _text.Write(_decoder.Flush() + "<tool_call>");   // written as text even when the tokenizer calls it special
        else if (token == _engine.ToolCallEnd) _text.Write(_decoder.Flush() + "</tool_call>");
        else _text.Write(_decoder.Push(token));
        if (_text.Stopped) return FinishReason.Stop;
        if (Constraint is { IsComplete: true }) return FinishReason.Stop;   // the call's closing tag is written
        if (Options.MaxNewTokens is int max && Generated >= max) return FinishReason.Length;
        if (Tokens.Count >= _engine.ContextLength) return FinishReason.Length;
        return null;
    }

    /// <summary>Ends the stream and sets the result.</summary>
    public void Finish(FinishReason reason, long nowTicks)
    {
        Finished = true;
        Registration.Dispose();
        if (!_text.Stopped) { _text.Write(_decoder.Flush()); }
        _text.Finish();
        if (_pendingLogprobs.Count > 0) Emit(new EnginePiece(_text.Kind == PieceKind.Reasoning ? PieceKind.Reasoning : PieceKind.Content, ""));
        if (reason == FinishReason.Stop && _text.ToolCalls.Count > 0) reason = FinishReason.ToolCalls;
        bool contextFull = reason == FinishReason.Length && Tokens.Count >= _engine.ContextLength && !(Options.MaxNewTokens is int m && Generated >= m);
        var usage = new RequestUsage(PromptLength, Generated, CachedPromptTokens,
            Generated > 0 ? Stopwatch.GetElapsedTime(SubmitTicks, _firstTokenTicks) : TimeSpan.Zero,
            Stopwatch.GetElapsedTime(SubmitTicks, Generated > 0 && reason != FinishReason.Cancelled ? _lastTokenTicks : nowTicks));
        var result = new RequestResult(_text.Reasoning.ToString().Trim('\n'), _text.Content.ToString().TrimStart('\n'), [.. _text.ToolCalls],
            Tokens.GetRange(PromptLength, Generated), reason, usage) { ContextFull = contextFull, StopString = _text.StopString, StopTokenId = _stopToken, Speculation = SpeculationStats };
        Output.Writer.TryComplete();
        Completion.TrySetResult(result);
    }

    public void Fail(Exception error)
    {
        Finished = true;
        Registration.Dispose();
        Output.Writer.TryComplete(error);
        Completion.TrySetException(error);
    }

    private void Emit(EnginePiece piece)
    {
        if (_pendingLogprobs.Count > 0)
        {
            piece = piece with { Logprobs = [.. _pendingLogprobs] };
            _pendingLogprobs.Clear();
        }
        Output.Writer.TryWrite(piece);
    }
}
