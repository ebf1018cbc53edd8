using System.Collections.Concurrent;
using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Serving;

/// <summary>Counters the worker keeps (copied into <see cref="EngineMetrics"/> snapshots).</summary>
internal sealed class EngineStatistics
{
    public long PrefixQueries, PrefixHits, PromptTokens, GeneratedTokens, RequestsFinished, Preemptions, Steps;
    /// <summary>Speculative decoding: verification rounds, tokens proposed, proposals accepted.</summary>
    public long SpecRounds, SpecDraftTokens, SpecAcceptedTokens;
    public readonly LatencyHistogram TimeToFirstToken = new(), InterTokenLatency = new();
}

/// <summary>
/// The one generation engine (docs/architecture.md, "Engine"): requests arrive and leave at any step; one worker thread
/// owns the model and runs steps (<see cref="ICausalLanguageModel.Step"/>), each made of a decode row of every running
/// request plus prefill chunks of the others under a token budget (<see cref="EngineOptions.MaxNumBatchedTokens"/>)
/// and a sequence cap (<see cref="EngineOptions.MaxNumSeqs"/>). Requests are admitted first come, first served while
/// KV pages are free; when a running request needs a page and none is free, the newest running request is preempted
/// (its pages freed, its tokens recomputed when it is admitted again). Full pages are shared through the prefix cache
/// of the model's <see cref="KvPageTable"/>. Callers talk to the worker through channels; nothing here blocks on the
/// model.
/// </summary>
public sealed class Engine : IAsyncDisposable
{
    private readonly ICausalLanguageModel _model;
    private readonly ChatTemplate? _template;
    private readonly EngineOptions _options;
    private readonly ConcurrentQueue<RequestState> _incoming = new();
    private readonly ManualResetEventSlim _wake = new(false);
    private readonly Thread _worker;
    private readonly TaskCompletionSource _stopped = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly int _seqCap, _stepTokens;
    private readonly EngineStatistics _stats = new();
    private volatile bool _accepting = true, _stopWhenIdle, _cancelAll;
    private volatile Exception? _fault;
    private int _runningCount, _kvPagesUsed;   // published by the worker under lock (_stats)
    private int _waitingCount, _disposed;
    private long _nextId;

    // worker-owned
    private readonly List<RequestState> _running = [];           // by admission order (oldest first)
    private readonly LinkedList<RequestState> _waiting = new();  // first come, first served; preempted ones go first
    private readonly Stack<int> _freeSequences = new();
    private StepBatch _batch;
    private List<(RequestState Request, int Rows, int Row)> _scheduled = [];
    /// <summary>Pipelined decode: the model (when it pipelines and the option is on), and the step queued after <see cref="_batch"/>.</summary>
    private readonly IPipelinedModel? _pipe;
    private StepBatch _ahead;
    private List<(RequestState Request, int Rows, int Row)> _aheadScheduled = [];
    private readonly CounterSampler _sampler = new();
    private readonly List<int> _emitted = [];
    private readonly float[] _logits;

    private readonly Speculative.IDraftSource? _drafts;

    /// <summary>Takes ownership of <paramref name="model"/> and <paramref name="drafts"/> (disposed with the engine).</summary>
    /// <param name="drafts">speculative decoding for every request without a drafter of its own (docs/speculative.md):
    /// each gets its own drafter from this source, proposing <see cref="EngineOptions.NumDraftTokens"/> tokens per round</param>
    public Engine(ICausalLanguageModel model, Qwen3Tokenizer tokenizer, ChatTemplate? template, IReadOnlyList<int> eosTokenIds, EngineOptions options,
        Speculative.IDraftSource? drafts = null)
    {
        ArgumentNullException.ThrowIfNull(model);
        ArgumentNullException.ThrowIfNull(tokenizer);
        ArgumentNullException.ThrowIfNull(options);
        options.Validate();
        _model = model;
        _template = template;
        _options = options;
        Tokenizer = tokenizer;
        EosTokenIds = new HashSet<int>(eosTokenIds);
        ModelName = options.ModelName ?? "model";
        ThinkStart = tokenizer.TokenToId("<think>");
        ThinkEnd = tokenizer.TokenToId("</think>");
        ToolCallStart = tokenizer.TokenToId("<tool_call>");
        ToolCallEnd = tokenizer.TokenToId("</tool_call>");
        NumDraftTokens = options.NumDraftTokens ?? EngineOptions.DefaultNumDraftTokens;
        if (drafts is not null)
        {
            int limit = Speculative.SpeculativeDecoder.MaxDraftLimit(model);
            if (NumDraftTokens > limit)
                throw new Speculative.SpeculativeDecodingException($"--num-draft-tokens {NumDraftTokens}: a verification step of {NumDraftTokens + 1} rows does not fit the model's step of {limit + 1} output rows (give at most {limit})");
            Speculative.SpeculativeDecoder.CheckVocabulary(model.VocabSize, drafts.VocabSize);
        }
        _drafts = drafts;
        _seqCap = Math.Min(options.MaxNumSeqs, model.MaxSequences);
        _stepTokens = Math.Min(options.MaxNumBatchedTokens, model.MaxStepRows);
        for (int s = model.MaxSequences - 1; s >= 0; s--) _freeSequences.Push(s);
        model.Kv.PrefixCaching = options.EnablePrefixCaching;
        _batch = new StepBatch(Math.Min(_stepTokens, 4096));
        _pipe = options.PipelineDecode ? model as IPipelinedModel : null;
        _ahead = new StepBatch(_pipe is null ? 1 : Math.Min(_seqCap, _pipe.MaxPipelinedRows));
        _logits = new float[model.VocabSize];
        _kvPagesUsed = model.Kv.UsedPages;
        _worker = new Thread(Run) { IsBackground = true, Name = "qwen3cuda engine" };
        _worker.Start();
    }

    /// <summary>Loads <paramref name="model"/> (a folder, a Hugging Face repo id in the local cache, or demo) and starts an engine on it.</summary>
    public static Task<Engine> LoadAsync(string model, EngineOptions options, CancellationToken ct = default) =>
        Task.Run(() => ModelLoader.LoadEngine(model, options, ct), ct);

    public string ModelName { get; }
    public Qwen3Tokenizer Tokenizer { get; }
    public int ContextLength => _model.ContextLength;
    public int VocabSize => _model.VocabSize;
    public IReadOnlySet<int> EosTokenIds { get; }
    public ChatTemplate? Template => _template;
    /// <summary>The source of every request's drafter when the engine speculates on all of them (null: only requests with <see cref="RequestOptions.Drafter"/>).</summary>
    internal Speculative.IDraftSource? DraftSource => _drafts;
    /// <summary>Tokens proposed per round with the engine's draft source.</summary>
    public int NumDraftTokens { get; }
    internal int? ThinkStart { get; }
    internal int? ThinkEnd { get; }
    internal int? ToolCallStart { get; }
    internal int? ToolCallEnd { get; }

    /// <summary>A snapshot of the counters (as of the last step scheduled or finished).</summary>
    public EngineMetrics Metrics
    {
        get { lock (_stats) return Snapshot(); }
    }

    /// <summary>The prompt ids of a conversation: the chat template with the generation prompt, the options' tools and enable_thinking.</summary>
    public IReadOnlyList<int> RenderChat(IReadOnlyList<ChatMessage> messages, RequestOptions options)
    {
        if (_template is null) throw new InvalidRequestException("messages", "this model has no chat template (tokenizer_config.json has no chat_template); send a plain prompt");
        if (messages.Count == 0) throw new InvalidRequestException("messages", "messages is empty");
        return Tokenizer.Encode(_template.Render(messages, addGenerationPrompt: true, options.EnableThinking, options.Tools));
    }

    /// <summary>
    /// Queues a request. Throws <see cref="InvalidRequestException"/> for bad options or prompt tokens,
    /// <see cref="PromptTooLongException"/> for a prompt the context cannot hold with one answer token,
    /// <see cref="EngineOverloadedException"/> when the waiting queue is full, <see cref="EngineShutDownException"/>
    /// after shutdown. Never blocks on the model. Cancelling <paramref name="ct"/> stops the request at the next step.
    /// </summary>
    public EngineRequest Submit(IReadOnlyList<int> promptTokens, RequestOptions options, CancellationToken ct = default)
    {
        ArgumentNullException.ThrowIfNull(promptTokens);
        if (options is null) throw new InvalidRequestException("options", "request options are missing");
        if (!_accepting) throw _fault is { } fault
            ? new EngineShutDownException($"the engine stopped after a model fault: {fault.Message}", fault)
            : new EngineShutDownException("the engine is shutting down and takes no new requests");
        options.Validate(VocabSize);
        if (promptTokens.Count == 0) throw new InvalidRequestException("prompt", "the prompt is empty (0 tokens)");
        for (int i = 0; i < promptTokens.Count; i++)
            if ((uint)promptTokens[i] >= (uint)VocabSize) throw new InvalidRequestException("prompt", $"prompt token {i} has id {promptTokens[i]}, outside the vocabulary [0, {VocabSize})");
        if (promptTokens.Count >= ContextLength) throw new PromptTooLongException(promptTokens.Count, ContextLength);
        if (options.Drafter is { } drafter)
        {
            int limit = Speculative.SpeculativeDecoder.MaxDraftLimit(_model);
            if (options.NumDraftTokens > limit)
                throw new InvalidRequestException("num_draft_tokens", $"num_draft_tokens {options.NumDraftTokens} needs {options.NumDraftTokens + 1} output rows in one step; the model takes {limit + 1} (at most {limit} draft tokens)");
            Speculative.SpeculativeDecoder.CheckVocabulary(VocabSize, drafter.VocabSize);
        }
        if (Interlocked.Increment(ref _waitingCount) > _options.MaxWaitingRequests)
        {
            Interlocked.Decrement(ref _waitingCount);
            throw new EngineOverloadedException($"the engine has {_options.MaxWaitingRequests} requests waiting; try again later");
        }
        var state = new RequestState(this, Interlocked.Increment(ref _nextId), promptTokens, options);
        lock (_incoming)   // against the worker's decision to stop: a request is either refused here or seen by the worker
        {
            if (!_accepting)
            {
                Interlocked.Decrement(ref _waitingCount);
                throw _fault is { } fault
                    ? new EngineShutDownException($"the engine stopped after a model fault: {fault.Message}", fault)
                    : new EngineShutDownException("the engine is shutting down and takes no new requests");
            }
            _incoming.Enqueue(state);
        }
        if (ct.CanBeCanceled) state.Registration = ct.Register(static s => ((RequestState)s!).RequestCancel(), state);
        Wake();
        return new EngineRequest(state);
    }

    public IAsyncEnumerable<EnginePiece> GenerateAsync(IReadOnlyList<int> promptTokens, RequestOptions options, CancellationToken ct = default) =>
        Submit(promptTokens, options, ct).Pieces;

    public IAsyncEnumerable<EnginePiece> ChatAsync(IReadOnlyList<ChatMessage> messages, RequestOptions options, CancellationToken ct = default) =>
        GenerateAsync(RenderChat(messages, options), options, ct);

    /// <summary>Runs a request to its end and returns its result (pieces are not streamed).</summary>
    public async Task<RequestResult> CompleteAsync(IReadOnlyList<int> promptTokens, RequestOptions options, CancellationToken ct = default)
    {
        var request = Submit(promptTokens, options, ct);
        await foreach (var _ in request.Pieces.ConfigureAwait(false)) { }
        return await request.Result.ConfigureAwait(false);
    }

    /// <summary>Stops admitting requests; finishes the ones in flight (or cancels them) and stops the worker.</summary>
    public async Task ShutdownAsync(bool cancelInFlight, CancellationToken ct = default)
    {
        lock (_incoming) _accepting = false;
        if (cancelInFlight) _cancelAll = true;
        _stopWhenIdle = true;
        Wake();
        await _stopped.Task.WaitAsync(ct).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        await ShutdownAsync(cancelInFlight: true).ConfigureAwait(false);
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        _worker.Join();
        _model.Dispose();
        _drafts?.Dispose();
        _wake.Dispose();
    }

    internal void Wake() => _wake.Set();

    // ---------------- the worker ----------------

    private void Run()
    {
        try
        {
            while (true)
            {
                Intake();
                bool scheduled;
                lock (_stats)
                {
                    Reap();
                    scheduled = _running.Count + _waiting.Count > 0 && Schedule();
                    Publish();
                }
                if (_running.Count == 0 && _waiting.Count == 0)
                {
                    if (_stopWhenIdle) lock (_incoming) if (_incoming.IsEmpty) break;   // Submit refuses from now on (_accepting is false)
                    _wake.Wait();
                    _wake.Reset();
                    continue;
                }
                if (!scheduled) { _wake.Wait(TimeSpan.FromMilliseconds(1)); _wake.Reset(); continue; }
                if (_pipe is not null && PlainDecode()) { RunPipelined(); continue; }
                _model.Step(_batch);
                lock (_stats)
                {
                    _stats.Steps++;
                    Collect();
                    Publish();
                }
            }
        }
        catch (Exception e)
        {
            _fault = e;
            lock (_incoming) _accepting = false;
            Monitor.Enter(_stats);   // released in finally
            foreach (var r in _running) r.Fail(e);
            foreach (var r in _waiting) r.Fail(e);
            while (_incoming.TryDequeue(out var r)) r.Fail(e);
            _running.Clear();
            _waiting.Clear();
        }
        finally
        {
            if (!Monitor.IsEntered(_stats)) Monitor.Enter(_stats);
            Publish();
            Monitor.Exit(_stats);
            _stopped.TrySetResult();
        }
    }

    private void Intake()
    {
        while (_incoming.TryDequeue(out var r)) _waiting.AddLast(r);
    }

    /// <summary>Finishes cancelled requests (running ones free their pages now).</summary>
    private void Reap()
    {
        bool all = _cancelAll;
        long now = Stopwatch.GetTimestamp();
        for (int i = _running.Count - 1; i >= 0; i--)
        {
            var r = _running[i];
            if (!all && !r.CancelRequested) continue;
            Release(r);
            _running.RemoveAt(i);
            r.Finish(FinishReason.Cancelled, now);
            _stats.RequestsFinished++;
        }
        for (var n = _waiting.First; n is not null;)
        {
            var next = n.Next;
            if (all || n.Value.CancelRequested)
            {
                if (!n.Value.Admitted) Interlocked.Decrement(ref _waitingCount);
                _waiting.Remove(n);
                n.Value.Finish(FinishReason.Cancelled, now);
                _stats.RequestsFinished++;
            }
            n = next;
        }
    }

    /// <summary>
    /// Builds the next step: every running request gets its remaining rows (a decode row, or the next prefill chunk)
    /// within the token budget, oldest first, preempting the newest when pages run out; then waiting requests are
    /// admitted while a sequence, the budget and pages allow. False when nothing could be scheduled.
    /// </summary>
    private bool Schedule()
    {
        var kv = _model.Kv;
        _batch.Clear();
        _scheduled.Clear();
        int budget = _stepTokens, outputs = _model.MaxOutputRows;
        long planned = 0;
        for (int i = 0; i < _running.Count && budget > 0;)
        {
            var r = _running[i];
            if (r.Tokens.Count - r.Computed == 1 && outputs == 0) { i++; continue; }   // out of output rows, not pages
            if (r.Speculates && r.Tokens.Count - r.Computed == 1 && TrySpeculate(r, ref budget, ref outputs, ref planned)) { i++; continue; }
            int n = Fit(r, budget, outputs, kv.FreePages - planned);
            if (n > 0) { planned += Add(r, n, ref budget, ref outputs); i++; continue; }
            if (_running.Count == 1 && planned == 0)
            {
                _running.RemoveAt(i);
                Release(r);
                r.Fail(new KvCacheFullException($"KV cache full: the request needs more pages than the whole cache has ({kv.Pages - 1} pages of {kv.PageSize} tokens)"));
                _stats.RequestsFinished++;
                continue;
            }
            var victim = _running[^1];   // the newest: its pages go, it is recomputed later
            Preempt(victim);
            if (victim == r) break;
        }
        while (_waiting.First is { } node && budget > 0 && _running.Count < _seqCap && _freeSequences.Count > 0)
        {
            var r = node.Value;
            int seq = _freeSequences.Peek();
            int cached = r.Computed = kv.MatchPrefix(seq, r.TokenSpan);
            r.Sequence = seq;
            int n = Fit(r, budget, outputs, kv.FreePages - planned);
            if (n == 0)
            {
                kv.Reset(seq);
                r.Sequence = -1;
                r.Computed = 0;
                if (_running.Count > 0 || planned > 0) break;   // wait for pages to come free
                _waiting.RemoveFirst();
                if (!r.Admitted) Interlocked.Decrement(ref _waitingCount);
                r.Fail(new KvCacheFullException($"KV cache full: the request needs more pages than the whole cache has ({kv.Pages - 1} pages of {kv.PageSize} tokens)"));
                _stats.RequestsFinished++;
                continue;
            }
            _freeSequences.Pop();
            _waiting.RemoveFirst();
            if (!r.Admitted)
            {
                r.Admitted = true;
                r.CachedPromptTokens = cached;
                _stats.PrefixQueries += r.PromptLength;
                _stats.PrefixHits += cached;
                _stats.PromptTokens += r.PromptLength;
                Interlocked.Decrement(ref _waitingCount);
            }
            _running.Add(r);
            planned += Add(r, n, ref budget, ref outputs);
        }
        return _batch.Count > 0;
    }

    /// <summary>
    /// A speculative round for a decoding request (docs/speculative.md) when the step has room for all k + 1
    /// verification rows and their pages: the drafter proposes, the rows join the step; false: a plain decode row instead.
    /// </summary>
    private bool TrySpeculate(RequestState r, ref int budget, ref int outputs, ref long planned)
    {
        var kv = _model.Kv;
        int rows = r.NumDraftTokens + 1;
        if (rows > budget || rows > outputs || kv.PagesNeeded(r.Sequence, rows) > kv.FreePages - planned) return false;
        if (!r.EnsureDrafter(_drafts)) return false;   // every draft sequence is taken: a plain decode row this step
        var decoder = r.SpeculativeDecoder(_model);
        int left = r.Options.MaxNewTokens is int max ? max - r.Generated : int.MaxValue;
        int drafted = decoder.Propose(r.Tokens, r.Settings, Math.Max(1, Math.Min(left, ContextLength - r.Tokens.Count + 1)));
        int first = _batch.Count;
        planned += kv.PagesNeeded(r.Sequence, drafted + 1);
        decoder.AddVerificationRows(_batch, r.Tokens);
        budget -= drafted + 1;
        outputs -= drafted + 1;
        _scheduled.Add((r, drafted + 1, SpeculativeRound));
        return true;
    }

    /// <summary>Marks a speculative round in <see cref="_scheduled"/> (its rows are the decoder's).</summary>
    private const int SpeculativeRound = -1;

    /// <summary>Rows request <paramref name="r"/> can run this step: its remaining tokens within the budget, the output
    /// rows and <paramref name="freePages"/> (0 when none fit).</summary>
    private int Fit(RequestState r, int budget, int outputs, long freePages)
    {
        var kv = _model.Kv;
        int remaining = r.Tokens.Count - r.Computed;
        int n = Math.Min(remaining, budget);
        if (n == remaining && outputs == 0) n = remaining - 1;   // no output row left: stop the chunk short of the last token
        if (n <= 0) return 0;
        if (kv.PagesNeeded(r.Sequence, n) > freePages)
        {
            long room = (long)kv.BlockTable(r.Sequence).Count * kv.PageSize - kv.Length(r.Sequence) + freePages * kv.PageSize;
            n = (int)Math.Min(n, Math.Max(0, room));
            while (n > 0 && kv.PagesNeeded(r.Sequence, n) > freePages) n--;
        }
        return n;
    }

    /// <summary>Appends the request's next <paramref name="n"/> rows; returns the pages they take.</summary>
    private int Add(RequestState r, int n, ref int budget, ref int outputs)
    {
        var kv = _model.Kv;
        bool output = r.Computed + n == r.Tokens.Count;
        int pages = kv.PagesNeeded(r.Sequence, n);
        int first = _batch.Count;
        var kind = output ? r.OutputKind : StepOutput.None;
        // Penalties go with the sampled row to the backend while the step has room for their entries; past it the row
        // returns logits and the host applies them (the same operations, Sampling/Penalties.cs).
        bool penalties = output && !r.Penalties.IsNone && r.PenaltyTokens.Count > 0;
        if (penalties && kind == StepOutput.Sample && (long)_batch.PenaltyEntries + r.PenaltyTokens.Count > _model.MaxPenaltyEntries) kind = StepOutput.Logits;
        _batch.AddTokens(r.Sequence, r.TokenSpan.Slice(r.Computed, n), r.Computed, kind, r.Settings);
        if (penalties && kind == StepOutput.Sample)
            _batch.SetPenalties(first + n - 1, r.Penalties, CollectionsMarshal.AsSpan(r.PenaltyTokens), CollectionsMarshal.AsSpan(r.PenaltyCounts));
        budget -= n;
        if (output) outputs--;
        _scheduled.Add((r, n, first + n - 1));
        return pages;
    }

    // ---------------- pipelined decode (docs/architecture.md, "Pipelined decode") ----------------

    /// <summary>
    /// The scheduled step is one the model can queue: one decode row per request, each sampled on the device (no
    /// penalties, logits or speculative rounds), at most <see cref="IPipelinedModel.MaxPipelinedRows"/> rows.
    /// </summary>
    private bool PlainDecode()
    {
        if (_batch.Count > _pipe!.MaxPipelinedRows || _batch.PenaltyRows > 0 || _batch.Count != _scheduled.Count) return false;
        foreach (var (r, rows, row) in _scheduled)
            if (row == SpeculativeRound || rows != 1 || _batch.Output(row) != StepOutput.Sample) return false;
        return true;
    }

    /// <summary>
    /// Runs the scheduled plain decode step as a queued step and, while nothing else needs scheduling, queues each next
    /// step (every request's row again, its token fed from this step's id) before reading this one's tokens. A request
    /// that finishes meanwhile leaves its row in the step queued after it: that row's token is discarded (its K/V goes
    /// to the positions past its end, in pages it releases; the steps after it run after it on the model's stream).
    /// </summary>
    private void RunPipelined()
    {
        _pipe!.Enqueue(_batch);
        while (true)
        {
            bool ahead = CanQueueAhead() && QueueAhead();
            _pipe.Complete(_batch);
            lock (_stats)
            {
                _stats.Steps++;
                Collect();
                Publish();
            }
            if (!ahead) return;
            (_batch, _ahead) = (_ahead, _batch);
            (_scheduled, _aheadScheduled) = (_aheadScheduled, _scheduled);
        }
    }

    /// <summary>
    /// Whether the step after the queued one is the step <see cref="Schedule"/> would build after it: every running
    /// request's next decode row. So nothing waits or arrives, no request is cancelled, speculating or two tokens from the
    /// context, and every running request is in the queued step (one the token budget or the output rows cut short is
    /// followed by a scheduled step). A request whose queued token is its last gets no row.
    /// </summary>
    private bool CanQueueAhead()
    {
        if (!_incoming.IsEmpty || _waiting.Count > 0 || _cancelAll) return false;
        int live = 0, next = 0;
        foreach (var (r, _, _) in _scheduled)
        {
            if (r.Sequence < 0) continue;   // finished: its row in the queued step is discarded
            if (r.CancelRequested || r.Speculates || r.Tokens.Count + 2 > ContextLength) return false;
            live++;
            if (!EndsWithQueuedToken(r)) next++;
        }
        return live == _running.Count && next > 0;
    }

    /// <summary>The token the queued step samples for <paramref name="r"/> is the last its budget allows.</summary>
    private static bool EndsWithQueuedToken(RequestState r) => r.Options.MaxNewTokens is int max && r.Generated + 1 >= max;

    /// <summary>Queues every running request's next row, its token the one the queued step samples for it; false when the pages are short.</summary>
    private bool QueueAhead()
    {
        _ahead.Clear();
        _aheadScheduled.Clear();
        foreach (var (r, _, row) in _scheduled)
        {
            if (r.Sequence < 0 || EndsWithQueuedToken(r)) continue;
            _aheadScheduled.Add((r, 1, _ahead.Count));
            _ahead.Add(r.Sequence, StepBatch.FedToken(_batch.OutputIndex(row)), r.Computed + 1, StepOutput.Sample, r.Settings);
        }
        try { _pipe!.Enqueue(_ahead); }
        catch (KvCacheFullException) { return false; }   // the next step schedules it, preempting if need be
        return true;
    }

    /// <summary>Frees a running request's pages; it waits (first in line) to be recomputed.</summary>
    private void Preempt(RequestState r)
    {
        _running.Remove(r);
        Release(r);
        _waiting.AddFirst(r);
        _stats.Preemptions++;
    }

    private void Release(RequestState r)
    {
        r.ReleaseSpeculative();
        if (r.Sequence < 0) return;
        _model.Kv.Reset(r.Sequence);
        _freeSequences.Push(r.Sequence);
        r.Sequence = -1;
        r.Computed = 0;
    }

    /// <summary>After a step: advances the requests, takes their tokens, finishes the ones that are done.</summary>
    private void Collect()
    {
        var kv = _model.Kv;
        long now = Stopwatch.GetTimestamp();
        foreach (var (r, rows, row) in _scheduled)
        {
            if (r.Sequence < 0) continue;   // finished while the step queued after its last one ran: that row's token is discarded
            if (row == SpeculativeRound) { CollectSpeculative(r, now); continue; }
            r.Computed += rows;
            kv.Commit(r.Sequence, r.TokenSpan);
            if (_batch.Output(row) == StepOutput.None) continue;
            TokenLogprob? logprob = null;
            int token;
            if (_batch.Output(row) == StepOutput.Sample) token = _batch.SampledToken(row);
            else
            {
                var logits = _logits.AsSpan();
                _batch.Logits(row).CopyTo(logits);
                Penalties.Apply(logits, CollectionsMarshal.AsSpan(r.PenaltyTokens), CollectionsMarshal.AsSpan(r.PenaltyCounts), r.Penalties);
                // A guided tool call masks the tokens that would break it before temperature, top-k, top-p and min-p
                // (vLLM's order: logits processors first); none allowed cannot happen while the call is open (every byte
                // has a token), but ends the request rather than sampling from nothing.
                if (r.Constraint is { } constraint && constraint.Mask(logits) == 0)
                {
                    FailGuided(r, "no token continues its guided tool call");
                    continue;
                }
                token = _sampler.Sample(logits, r.Settings, (ulong)_batch.Position(row) + 1);
                // Only logits that are NaN everywhere could make the sampler pick a masked token: that request fails alone.
                if (r.Constraint is { } c && !c.Advance(token))
                {
                    FailGuided(r, $"token {token} does not continue its guided tool call (the model's logits are not finite?)");
                    continue;
                }
                if (r.Options.TopLogprobs >= 0) logprob = Logprobs(_batch.Logits(row), token, r.Options.TopLogprobs);
            }
            if (r.Accept(token, logprob, now, _stats) is FinishReason reason)
            {
                Release(r);
                _running.Remove(r);
                r.Finish(reason, now);
                _stats.RequestsFinished++;
            }
        }
    }

    private void FailGuided(RequestState r, string why)
    {
        Release(r);
        _running.Remove(r);
        r.Fail(new InvalidOperationException($"request {r.Id}: {why}"));
        _stats.RequestsFinished++;
    }

    /// <summary>A speculative round's verification: the accepted tokens (and the correction or bonus) go through the request's rules one by one.</summary>
    private void CollectSpeculative(RequestState r, long now)
    {
        var kv = _model.Kv;
        kv.Commit(r.Sequence, r.TokenSpan);
        _emitted.Clear();
        var stats = r.Speculative!.Stats;
        long drafted = stats.DraftedTokens, accepted = stats.AcceptedTokens;
        r.Speculative.Accept(_batch, r.Tokens, _emitted);
        _stats.SpecRounds++;
        _stats.SpecDraftTokens += stats.DraftedTokens - drafted;
        _stats.SpecAcceptedTokens += stats.AcceptedTokens - accepted;   // rolls the sequence back to the history and the accepted proposals
        r.Computed = kv.Length(r.Sequence);
        foreach (int token in _emitted)
        {
            if (r.Accept(token, null, now, _stats) is not FinishReason reason) continue;
            Release(r);
            _running.Remove(r);
            r.Finish(reason, now);
            _stats.RequestsFinished++;
            return;
        }
    }

    /// <summary>The log-probabilities (log-softmax of the model's logits, before penalties) of the chosen token and the <paramref name="top"/> most likely ones.</summary>
    private TokenLogprob Logprobs(ReadOnlySpan<float> logits, int token, int top)
    {
        float max = float.NegativeInfinity;
        foreach (float v in logits) max = Math.Max(max, v);
        double sum = 0;
        foreach (float v in logits) sum += Math.Exp(v - max);
        float logZ = max + (float)Math.Log(sum);
        var best = new List<(int Token, string Text, float Logprob)>(top);
        if (top > 0)
        {
            var heap = new PriorityQueue<int, (float, int)>(top + 1);   // min-heap of the best so far: lowest logit, then highest id, first
            for (int i = 0; i < logits.Length; i++)
            {
                heap.Enqueue(i, (logits[i], -i));
                if (heap.Count > top) heap.Dequeue();
            }
            while (heap.TryDequeue(out int id, out var key)) best.Add((id, TokenText(id), key.Item1 - logZ));
            best.Reverse();
        }
        return new TokenLogprob(token, TokenText(token), logits[token] - logZ, best);
    }

    /// <summary>A token's text ("" for ids past the tokenizer's vocabulary, which model vocabularies pad to).</summary>
    private string TokenText(int id) => (uint)id < (uint)Tokenizer.VocabSize ? Tokenizer.Decode([id]) : "";

    /// <summary>Copies what the worker's lists and page table say into fields <see cref="Metrics"/> reads (under lock (_stats)).</summary>
    private void Publish()
    {
        _runningCount = _running.Count;
        _kvPagesUsed = _model.Kv.UsedPages;
    }

    private EngineMetrics Snapshot()
    {
        return new EngineMetrics
        {
            Running = _runningCount,
            Waiting = Volatile.Read(ref _waitingCount),
            KvPagesUsed = _kvPagesUsed,
            KvPagesTotal = _model.Kv.Pages - 1,
            PrefixCacheQueries = _stats.PrefixQueries,
            PrefixCacheHits = _stats.PrefixHits,
            PromptTokens = _stats.PromptTokens,
            GeneratedTokens = _stats.GeneratedTokens,
            RequestsFinished = _stats.RequestsFinished,
            Preemptions = _stats.Preemptions,
            Steps = _stats.Steps,
            SpecDecodeRounds = _stats.SpecRounds,
            SpecDecodeDraftTokens = _stats.SpecDraftTokens,
            SpecDecodeAcceptedTokens = _stats.SpecAcceptedTokens,
            TimeToFirstToken = _stats.TimeToFirstToken.Copy(),
            InterTokenLatency = _stats.InterTokenLatency.Copy(),
        };
    }

    /// <summary>
    /// EOS ids: generation_config.json's eos_token_id (a number or a list) when present, plus &lt;|im_end|&gt; and
    /// &lt;|endoftext|&gt; when the tokenizer has them.
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
}
