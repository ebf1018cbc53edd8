using System.Collections.Concurrent;
using System.Runtime.CompilerServices;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Server;

namespace Qwen3Cuda.Tests.Server;

/// <summary>
/// A test double behind the server's <see cref="IServingEngine"/>: each request streams a fixed script of engine pieces
/// (reasoning, content, tool calls: what the engine's request state emits for Qwen's &lt;think&gt; and &lt;tool_call&gt;
/// output, which a random tiny model never writes), so the tests pin the wire format the server makes of them. One token
/// per character of the rendered prompt; it records what the server asked for.
/// </summary>
sealed class ScriptedEngine : IServingEngine
{
    public string ModelName { get; init; } = "scripted";
    public int ContextLength { get; init; } = 256;
    public int VocabSize => 1000;
    public IReadOnlyList<EnginePiece> Script { get; set; } = [new EnginePiece(PieceKind.Content, "Hello")];
    public FinishReason Finish { get; set; } = FinishReason.Stop;
    /// <summary>Requests never finish on their own: they end when cancelled.</summary>
    public bool Hang { get; set; }
    /// <summary>Submit throws this (queue full, shutting down) when set.</summary>
    public Exception? SubmitThrows { get; set; }
    public int CachedPromptTokens { get; set; }

    public readonly ConcurrentQueue<(IReadOnlyList<ChatMessage> Messages, RequestOptions Options)> Rendered = new();
    public readonly ConcurrentQueue<(IReadOnlyList<int> Prompt, RequestOptions Options)> Submitted = new();
    int _running, _cancelled, _finished;
    public int Running => Volatile.Read(ref _running);
    public int Cancelled => Volatile.Read(ref _cancelled);
    public bool ShutDown { get; private set; }

    public SamplingOptions DefaultSampling(bool thinking) => SamplingOptions.Greedy;
    public IReadOnlyList<int> Tokenize(string text) => text.Select(c => c % VocabSize).ToArray();
    public string Detokenize(IReadOnlyList<int> ids) => new(ids.Select(i => (char)i).ToArray());

    public IReadOnlyList<int> RenderChat(IReadOnlyList<ChatMessage> messages, RequestOptions options)
    {
        Rendered.Enqueue((messages, options));
        return Tokenize(string.Concat(messages.Select(m => $"<{m.Role}>{m.Content}")));
    }

    public IServingRequest Submit(IReadOnlyList<int> promptTokens, RequestOptions options, CancellationToken ct)
    {
        if (SubmitThrows is { } e) throw e;
        if (promptTokens.Count >= ContextLength) throw new PromptTooLongException(promptTokens.Count, ContextLength);
        Submitted.Enqueue((promptTokens, options));
        Interlocked.Increment(ref _running);
        return new Request(this, promptTokens.Count, options, ct);
    }

    public EngineMetrics Metrics => new() { Running = Running, RequestsFinished = Volatile.Read(ref _finished), KvPagesTotal = 16 };

    public Task ShutdownAsync(bool cancelInFlight, CancellationToken ct)
    {
        ShutDown = true;
        return Task.CompletedTask;
    }

    sealed class Request(ScriptedEngine e, int prompt, RequestOptions options, CancellationToken ct) : IServingRequest
    {
        readonly TaskCompletionSource<RequestResult> _result = new(TaskCreationOptions.RunContinuationsAsynchronously);
        public int PromptTokens => prompt;
        public Task<RequestResult> Result => _result.Task;
        public IAsyncEnumerable<EnginePiece> Pieces => Run();

        async IAsyncEnumerable<EnginePiece> Run([EnumeratorCancellation] CancellationToken readerCt = default)
        {
            using var linked = CancellationTokenSource.CreateLinkedTokenSource(ct, readerCt);
            int tokens = 0;
            var finish = e.Finish;
            try
            {
                foreach (var p in e.Script)
                {
                    if (options.MaxNewTokens is int max && tokens >= max) { finish = FinishReason.Length; break; }
                    await Task.Delay(5, linked.Token);
                    tokens++;
                    yield return p;
                }
                if (e.Hang) await Task.Delay(Timeout.Infinite, linked.Token);
            }
            finally
            {
                Interlocked.Decrement(ref e._running);
                if (linked.IsCancellationRequested)
                {
                    Interlocked.Increment(ref e._cancelled);
                    _result.TrySetCanceled();
                }
                else Interlocked.Increment(ref e._finished);
            }
            var text = (PieceKind k) => string.Concat(e.Script.Take(tokens).Where(p => p.Kind == k).Select(p => p.Text));
            var calls = e.Script.Take(tokens).Where(p => p.Kind == PieceKind.ToolCall).Select(p => p.ToolCall!).ToList();
            _result.SetResult(new RequestResult(text(PieceKind.Reasoning), text(PieceKind.Content), calls, Enumerable.Range(0, tokens).ToArray(),
                finish, new RequestUsage(prompt, tokens, e.CachedPromptTokens, TimeSpan.Zero, TimeSpan.Zero)));
        }
    }
}
