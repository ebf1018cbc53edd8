using System.Buffers;
using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Server;

/// <summary>
/// The OpenAI-compatible HTTP server (Kestrel, minimal APIs) in front of an <see cref="IServingEngine"/>: POST
/// /v1/chat/completions and /v1/completions (streamed as server-sent events or whole), GET /v1/models, /health and
/// /metrics. Errors are answered in OpenAI's JSON shape (<see cref="ApiException"/>). A client that disconnects cancels its
/// request (the engine frees it at its next step). Stopping (SIGTERM with <see cref="ServerOptions.HandleSignals"/>, or
/// <see cref="StopAsync"/>) refuses new requests with 503, lets in-flight ones finish for
/// <see cref="ServerOptions.ShutdownTimeout"/>, then cancels the rest. See docs/serving.md.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    readonly WebApplication _app;
    readonly IServingEngine _engine;
    readonly ServerOptions _options;
    readonly string _modelName;
    readonly long _created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
    readonly object _logLock = new();
    volatile bool _stopping;
    int _disposed;

    public ServerMetrics Metrics { get; } = new();
    /// <summary>Where the server listens, e.g. http://127.0.0.1:8000 (the real port when <see cref="ServerOptions.Port"/> is 0).</summary>
    public Uri Address { get; private set; } = null!;
    public string ModelName => _modelName;

    OpenAiServer(IServingEngine engine, ServerOptions options)
    {
        _engine = engine;
        _options = options;
        _modelName = options.ServedModelName ?? engine.ModelName;
        var builder = WebApplication.CreateSlimBuilder(new WebApplicationOptions { Args = [], ApplicationName = "qwen3cuda", ContentRootPath = AppContext.BaseDirectory });
        builder.Logging.ClearProviders();
        builder.Services.Configure<HostOptions>(h => h.ShutdownTimeout = options.ShutdownTimeout);
        builder.Services.Configure<ConsoleLifetimeOptions>(c => c.SuppressStatusMessages = true);
        if (!options.HandleSignals) builder.Services.AddSingleton<IHostLifetime, NoSignalsLifetime>();
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.AddServerHeader = false;
            k.Limits.MaxRequestBodySize = options.MaxBodyBytes;
            k.Listen(ResolveHost(options.Host), options.Port);
        });
        _app = builder.Build();
        _app.Lifetime.ApplicationStopping.Register(() => _stopping = true);
        _app.Use(Guard);
        _app.MapPost("/v1/chat/completions", Chat);
        _app.MapPost("/v1/completions", Completions);
        _app.MapGet("/v1/models", Models);
        _app.MapGet("/v1/models/{**id}", (HttpContext ctx, string id) => Model(ctx, id));
        _app.MapGet("/health", Health);
        _app.MapGet("/metrics", MetricsText);
        _app.MapFallback(ctx => throw ApiException.NotFound($"{ctx.Request.Method} {ctx.Request.Path}"));
    }

    /// <summary>Binds and starts serving; the engine stays the caller's (dispose it after the server).</summary>
    public static async Task<OpenAiServer> StartAsync(IServingEngine engine, ServerOptions options, CancellationToken ct = default)
    {
        var server = new OpenAiServer(engine, options);
        try { await server._app.StartAsync(ct).ConfigureAwait(false); }
        catch (IOException e)
        {
            await server._app.DisposeAsync().ConfigureAwait(false);
            throw new ServerBindException($"cannot listen on {options.Host}:{options.Port}: {e.Message} (choose another --port, or --port 0 for a free one)", e);
        }
        var addresses = server._app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
        server.Address = new Uri(addresses.First());
        return server;
    }

    /// <summary>The address for --host (an IP, localhost, or a name resolved here); <see cref="ServerBindException"/> when it resolves to none.</summary>
    public static IPAddress ResolveHost(string host)
    {
        if (IPAddress.TryParse(host, out var ip)) return ip;
        if (host == "localhost") return IPAddress.Loopback;
        try { return Dns.GetHostAddresses(host).First(); }
        catch (Exception e) when (e is System.Net.Sockets.SocketException or InvalidOperationException)
        {
            throw new ServerBindException($"--host '{host}' is neither an IP address nor a name this machine resolves", e);
        }
    }

    /// <summary>Completes when the server has stopped (SIGTERM / Ctrl+C with HandleSignals, or <see cref="StopAsync"/>).</summary>
    public Task WaitForShutdownAsync(CancellationToken ct = default) => _app.WaitForShutdownAsync(ct);

    /// <summary>Refuses new requests (503), lets in-flight ones finish within the shutdown timeout, cancels the rest, and
    /// shuts the engine down (its in-flight requests cancelled).</summary>
    public async Task StopAsync()
    {
        _stopping = true;
        await _app.StopAsync().ConfigureAwait(false);
        await _engine.ShutdownAsync(cancelInFlight: true, CancellationToken.None).ConfigureAwait(false);
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0) return;
        await StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
    }

    // ---- middleware: auth, the one error path, the access log ----

    async Task Guard(HttpContext ctx, RequestDelegate next)
    {
        var sw = Stopwatch.StartNew();
        try
        {
            if (_options.ApiKey is { } key && ctx.Request.Path.StartsWithSegments("/v1") && !Authorized(ctx.Request.Headers.Authorization.ToString(), key))
                throw ApiException.Unauthorized();
            await next(ctx).ConfigureAwait(false);
        }
        catch (Exception e) when (!ctx.RequestAborted.IsCancellationRequested || e is not OperationCanceledException)
        {
            var api = ToApiError(e);
            if (!ctx.Response.HasStarted) await WriteError(ctx, api).ConfigureAwait(false);
            else Log($"{ctx.Request.Method} {ctx.Request.Path}: error after the response started: {e.Message}");
        }
        catch (OperationCanceledException) { /* the client went away; its request was cancelled */ }
        string tokens = ctx.Items.TryGetValue(TokensKey, out var t) ? $" {t}" : "";
        Log(string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"{ctx.Request.Method} {ctx.Request.Path} {(ctx.RequestAborted.IsCancellationRequested ? "client disconnected" : ctx.Response.StatusCode.ToString(System.Globalization.CultureInfo.InvariantCulture))}{tokens} {sw.Elapsed.TotalSeconds:F3}s"));
    }

    const string TokensKey = "qwen3cuda.tokens";

    /// <summary>"Bearer KEY", compared in constant time.</summary>
    static bool Authorized(string header, string key) =>
        System.Security.Cryptography.CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(header), Encoding.UTF8.GetBytes("Bearer " + key));

    /// <summary>Every exception a handler lets out, as the status and JSON error a client gets.</summary>
    ApiException ToApiError(Exception e) => e switch
    {
        ApiException a => a,
        InvalidRequestException r => ApiException.BadRequest(r.Parameter, r.Message),
        PromptTooLongException p => ApiException.BadRequest("messages",
            $"This model's maximum context length is {p.ContextLength} tokens, but the prompt has {p.PromptTokens} tokens.", "context_length_exceeded"),
        EngineOverloadedException o => ApiException.Overloaded(o.Message, _options.RetryAfterSeconds),
        EngineShutDownException => ApiException.ShuttingDown(_options.RetryAfterSeconds),
        BadHttpRequestException { StatusCode: 413 } => ApiException.TooLarge(_options.MaxBodyBytes),
        BadHttpRequestException b => new ApiException(b.StatusCode, "invalid_request_error", null, null, b.Message),
        JsonException j => ApiException.BadJson($"The request body is not valid JSON: {j.Message}"),
        Qwen3CudaException { Kind: ErrorKind.InvalidInput or ErrorKind.InvalidArgument } q => ApiException.BadRequest(null, q.Message),
        Qwen3CudaException q => ApiException.Internal(q.Message),
        _ => ApiException.Internal($"internal error (a bug in qwen3cuda): {e.GetType().Name}: {e.Message}"),
    };

    static async Task WriteError(HttpContext ctx, ApiException e)
    {
        ctx.Response.Clear();
        ctx.Response.StatusCode = e.Status;
        if (e.RetryAfterSeconds is int s) ctx.Response.Headers.RetryAfter = s.ToString(System.Globalization.CultureInfo.InvariantCulture);
        ctx.Response.ContentType = "application/json";
        await ctx.Response.Body.WriteAsync(ErrorJson(e)).ConfigureAwait(false);
    }

    internal static byte[] ErrorJson(ApiException e) => Json(w =>
    {
        w.WriteStartObject();
        w.WriteStartObject("error");
        w.WriteString("message", e.Message);
        w.WriteString("type", e.Type);
        if (e.Param is null) w.WriteNull("param"); else w.WriteString("param", e.Param);
        if (e.Code is null) w.WriteNull("code"); else w.WriteString("code", e.Code);
        w.WriteEndObject();
        w.WriteEndObject();
    });

    void Log(string line)
    {
        if (_options.Log is not { } log) return;
        lock (_logLock) { log.WriteLine(line); log.Flush(); }
    }

    // ---- GET endpoints ----

    Task Models(HttpContext ctx) => WriteJson(ctx, w =>
    {
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        ModelObject(w);
        w.WriteEndArray();
        w.WriteEndObject();
    });

    Task Model(HttpContext ctx, string id)
    {
        if (!IsServed(id)) throw ApiException.ModelNotFound(id, _modelName);
        return WriteJson(ctx, ModelObject);
    }

    void ModelObject(Utf8JsonWriter w)
    {
        w.WriteStartObject();
        w.WriteString("id", _modelName);
        w.WriteString("object", "model");
        w.WriteNumber("created", _created);
        w.WriteString("owned_by", "qwen3cuda");
        w.WriteString("root", _engine.ModelName);
        w.WriteNumber("max_model_len", _engine.ContextLength);
        w.WriteEndObject();
    }

    bool IsServed(string model) => model == _modelName || model == _engine.ModelName;

    Task Health(HttpContext ctx)
    {
        if (_stopping) throw ApiException.ShuttingDown(_options.RetryAfterSeconds);
        ctx.Response.StatusCode = 200;
        return Task.CompletedTask;
    }

    async Task MetricsText(HttpContext ctx)
    {
        ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
        await ctx.Response.WriteAsync(Metrics.Render(_engine.Metrics, _modelName)).ConfigureAwait(false);
    }

    // ---- generation ----

    async Task Chat(HttpContext ctx)
    {
        var started = Stopwatch.GetTimestamp();
        using var doc = await ReadJson(ctx).ConfigureAwait(false);
        var req = RequestParser.ParseChat(doc.RootElement, _engine);
        CheckModel(req.Model);
        var ids = _engine.RenderChat(req.Messages, req.Options);
        if (req.ForcedTool is { } forced) ids = [.. ids, .. _engine.Tokenize(ForcedToolCalls.Prefill(forced, _engine, ids))];
        CheckLength(ids.Count, req.MaxTokens, "messages");
        await Generate(ctx, req, [ids], chat: true, started).ConfigureAwait(false);
    }

    async Task Completions(HttpContext ctx)
    {
        var started = Stopwatch.GetTimestamp();
        using var doc = await ReadJson(ctx).ConfigureAwait(false);
        var req = RequestParser.ParseCompletion(doc.RootElement, _engine);
        CheckModel(req.Model);
        var prompts = req.Prompts.Select(p => p is string s ? _engine.Tokenize(s) : (IReadOnlyList<int>)p).ToList();
        for (int i = 0; i < prompts.Count; i++)
            CheckLength(prompts[i].Count, req.MaxTokens, prompts.Count == 1 ? "prompt" : $"prompt[{i}]");
        await Generate(ctx, req, prompts, chat: false, started).ConfigureAwait(false);
    }

    /// <summary>Bytes past the limit read and dropped before a 413, so that a client still sending gets the answer
    /// instead of a reset connection; a larger body gets the 413 and the connection closes.</summary>
    const long DrainBytes = 8L << 20;

    async Task<JsonDocument> ReadJson(HttpContext ctx)
    {
        // The limit is enforced here rather than by Kestrel, which would close the connection under a client still sending.
        if (ctx.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size)
            size.MaxRequestBodySize = null;
        long limit = _options.MaxBodyBytes;
        var body = ctx.Request.Body;
        var ct = ctx.RequestAborted;
        var chunk = new byte[16 * 1024];
        async Task<ApiException> TooLarge(long read)
        {
            int n;
            while (read < limit + DrainBytes && (n = await body.ReadAsync(chunk, ct).ConfigureAwait(false)) > 0) read += n;
            ctx.Response.Headers.Connection = "close";
            return ApiException.TooLarge(limit);
        }
        if (ctx.Request.ContentLength > limit) throw await TooLarge(0).ConfigureAwait(false);
        using var buffer = new MemoryStream();
        int read;
        while ((read = await body.ReadAsync(chunk, ct).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + read > limit) throw await TooLarge(buffer.Length + read).ConfigureAwait(false);
            buffer.Write(chunk, 0, read);
        }
        buffer.Position = 0;
        try { return JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length)); }
        catch (JsonException e) { throw ApiException.BadJson($"The request body is not valid JSON: {e.Message}"); }
    }

    void CheckModel(string? model)
    {
        if (model is not null && !IsServed(model)) throw ApiException.ModelNotFound(model, _modelName);
    }

    void CheckLength(int promptTokens, int? maxTokens, string param)
    {
        int ctx = _engine.ContextLength;
        if (promptTokens >= ctx)
            throw ApiException.BadRequest(param, $"This model's maximum context length is {ctx} tokens, but the prompt has {promptTokens} tokens (it must leave room for at least one generated token).", "context_length_exceeded");
        if (maxTokens is int m && (long)promptTokens + m > ctx)
            throw ApiException.BadRequest("max_tokens", $"This model's maximum context length is {ctx} tokens, but {promptTokens} prompt tokens plus max_tokens {m} is {(long)promptTokens + m}; lower max_tokens to at most {ctx - promptTokens}.", "context_length_exceeded");
    }

    /// <summary>One choice in flight: its engine request, and what it streamed so far.</summary>
    sealed class Choice(int index, int prompt, IServingRequest request, ForcedToolCall? forced)
    {
        public ForcedToolCall? Forced { get; } = forced;
        public int Index { get; } = index;
        public int Prompt { get; } = prompt;
        public IServingRequest Request { get; } = request;
        public readonly List<TokenLogprob> Logprobs = [];
        public readonly StringBuilder Text = new();
        public int ToolCalls;
        public long LastPiece;
        public PieceKind? LastKind;
        public RequestResult? Result;
    }

    async Task Generate(HttpContext ctx, ParsedRequest req, IReadOnlyList<IReadOnlyList<int>> prompts, bool chat, long started)
    {
        if (_stopping) throw ApiException.ShuttingDown(_options.RetryAfterSeconds);
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted);
        var choices = new List<Choice>();
        try
        {
            for (int p = 0; p < prompts.Count; p++)
                for (int i = 0; i < req.N; i++)
                {
                    var options = req.Options with { Sampling = req.Options.Sampling with { Seed = unchecked(req.Seed + (ulong)i) } };
                    choices.Add(new Choice(choices.Count, p, _engine.Submit(prompts[p], options, cts.Token), req.ForcedTool));
                }
        }
        catch
        {
            cts.Cancel();   // frees the choices already queued
            throw;
        }

        string id = (chat ? "chatcmpl-" : "cmpl-") + Guid.NewGuid().ToString("N");
        long created = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string outcome = "error";
        try
        {
            if (req.Stream) await Stream(ctx, req, chat, choices, id, created, started, cts.Token).ConfigureAwait(false);
            else
            {
                await Task.WhenAll(choices.Select(c => Drain(c, chat, started, cts.Token))).ConfigureAwait(false);
                await WriteJson(ctx, w => WholeResponse(w, req, chat, choices, prompts, id, created)).ConfigureAwait(false);
            }
            var reasons = choices.Select(c => FinishReasonText(c.Result!)).Distinct().ToList();
            outcome = reasons.Count == 1 ? reasons[0] : "mixed";   // n > 1 choices that ended differently
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            outcome = "cancelled";
            throw;
        }
        finally
        {
            cts.Cancel();
            int completion = choices.Sum(c => c.Result?.Usage.CompletionTokens ?? 0);
            Metrics.RequestFinished(outcome, prompts.Sum(p => p.Count), completion);
            ctx.Items[TokensKey] = $"prompt {prompts.Sum(p => p.Count)} completion {completion} {outcome}";
            if (choices.All(c => c.Result is not null)) Metrics.RequestLatency.Observe(Seconds(started));
        }
    }

    static double Seconds(long since) => Stopwatch.GetElapsedTime(since).TotalSeconds;

    void Observe(Choice c, long started)
    {
        long now = Stopwatch.GetTimestamp();
        if (c.LastPiece == 0) Metrics.TimeToFirstToken.Observe(Stopwatch.GetElapsedTime(started, now).TotalSeconds);
        else Metrics.InterTokenLatency.Observe(Stopwatch.GetElapsedTime(c.LastPiece, now).TotalSeconds);
        c.LastPiece = now;
    }

    async Task Drain(Choice c, bool chat, long started, CancellationToken ct)
    {
        await foreach (var piece in c.Request.Pieces.WithCancellation(ct).ConfigureAwait(false))
        {
            Observe(c, started);
            if (piece.Logprobs is { } lps) c.Logprobs.AddRange(lps);
            if (piece.Kind != PieceKind.ToolCall) c.Text.Append(chat ? piece.Text : RawText(c, piece));
        }
        c.Result = ForcedToolCalls.Apply(c.Forced, await c.Request.Result.WaitAsync(ct).ConfigureAwait(false));
    }

    /// <summary>A completion's text as the model wrote it: the engine splits reasoning from content at &lt;think&gt; and
    /// &lt;/think&gt; (and drops those tokens); a raw completion puts the tags back where the kind switches.</summary>
    static string RawText(Choice c, EnginePiece piece)
    {
        string tag = c.LastKind is { } last && last != piece.Kind ? piece.Kind == PieceKind.Reasoning ? "<think>" : "</think>" : "";
        c.LastKind = piece.Kind;
        return tag + piece.Text;
    }

    static string FinishReasonText(RequestResult r) => r.FinishReason switch
    {
        FinishReason.Length => "length",
        FinishReason.ToolCalls => "tool_calls",
        FinishReason.Cancelled => "abort",
        _ => r.ToolCalls.Count > 0 ? "tool_calls" : "stop",
    };

    void WholeResponse(Utf8JsonWriter w, ParsedRequest req, bool chat, List<Choice> choices, IReadOnlyList<IReadOnlyList<int>> prompts, string id, long created)
    {
        w.WriteStartObject();
        w.WriteString("id", id);
        w.WriteString("object", chat ? "chat.completion" : "text_completion");
        w.WriteNumber("created", created);
        w.WriteString("model", _modelName);
        w.WriteStartArray("choices");
        foreach (var c in choices)
        {
            var r = c.Result!;
            w.WriteStartObject();
            w.WriteNumber("index", c.Index);
            if (chat)
            {
                w.WriteStartObject("message");
                w.WriteString("role", "assistant");
                if (r.Content.Length == 0 && r.ToolCalls.Count > 0) w.WriteNull("content"); else w.WriteString("content", r.Content);
                WriteReasoning(w, r.Reasoning.Length > 0 ? r.Reasoning : null, always: true);
                if (r.ToolCalls.Count > 0)
                {
                    w.WriteStartArray("tool_calls");
                    foreach (var t in r.ToolCalls) WriteToolCall(w, t, index: null, withHeader: true, arguments: t.ArgumentsJson);
                    w.WriteEndArray();
                }
                w.WriteEndObject();
            }
            else w.WriteString("text", c.Text.ToString());
            if (req.Logprobs) WriteLogprobs(w, c.Logprobs, chat); else w.WriteNull("logprobs");
            w.WriteString("finish_reason", FinishReasonText(r));
            w.WriteEndObject();
        }
        w.WriteEndArray();
        WriteUsage(w, choices, prompts);
        w.WriteEndObject();
    }

    static void WriteReasoning(Utf8JsonWriter w, string? reasoning, bool always)
    {
        if (reasoning is null && !always) return;
        foreach (var name in new[] { "reasoning_content", "reasoning" })
            if (reasoning is null) w.WriteNull(name); else w.WriteString(name, reasoning);
    }

    static void WriteToolCall(Utf8JsonWriter w, ToolCall t, int? index, bool withHeader, string arguments)
    {
        w.WriteStartObject();
        if (index is int i) w.WriteNumber("index", i);
        if (withHeader)
        {
            w.WriteString("id", t.Id);
            w.WriteString("type", "function");
        }
        w.WriteStartObject("function");
        if (withHeader) w.WriteString("name", t.Name);
        w.WriteString("arguments", arguments);
        w.WriteEndObject();
        w.WriteEndObject();
    }

    static void WriteUsage(Utf8JsonWriter w, List<Choice> choices, IReadOnlyList<IReadOnlyList<int>> prompts)
    {
        int prompt = prompts.Sum(p => p.Count);
        int completion = choices.Sum(c => c.Result?.Usage.CompletionTokens ?? 0);
        // Each prompt counted once (its n choices share it); cached tokens of each prompt's first choice.
        int cached = choices.Where(c => c.Result is not null).GroupBy(c => c.Prompt).Sum(g => g.First().Result!.Usage.CachedPromptTokens);
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", prompt);
        w.WriteNumber("completion_tokens", completion);
        w.WriteNumber("total_tokens", prompt + completion);
        w.WriteStartObject("prompt_tokens_details");
        w.WriteNumber("cached_tokens", cached);
        w.WriteEndObject();
        // Speculative decoding, per request, in OpenAI's fields for predicted tokens (present only when a choice
        // speculated): proposals the target accepted and those it rejected (docs/speculative.md).
        var speculated = choices.Select(c => c.Result?.Speculation).OfType<Qwen3Cuda.Model.Speculative.SpeculationStats>().ToList();
        if (speculated.Count > 0)
        {
            long accepted = speculated.Sum(x => x.AcceptedTokens), drafted = speculated.Sum(x => x.DraftedTokens);
            w.WriteStartObject("completion_tokens_details");
            w.WriteNumber("accepted_prediction_tokens", accepted);
            w.WriteNumber("rejected_prediction_tokens", drafted - accepted);
            w.WriteEndObject();
        }
        w.WriteEndObject();
    }

    /// <summary>Chat: {"content": [{token, logprob, bytes, top_logprobs}]}; completions: {tokens, token_logprobs, top_logprobs, text_offset}.</summary>
    static void WriteLogprobs(Utf8JsonWriter w, IReadOnlyList<TokenLogprob> lps, bool chat, int textOffset = 0)
    {
        static float Finite(float v) => float.IsNegativeInfinity(v) || float.IsNaN(v) ? -9999f : v;
        w.WriteStartObject("logprobs");
        if (chat)
        {
            w.WriteStartArray("content");
            foreach (var t in lps)
            {
                w.WriteStartObject();
                w.WriteString("token", t.Text);
                w.WriteNumber("logprob", Finite(t.Logprob));
                WriteBytes(w, t.Text);
                w.WriteStartArray("top_logprobs");
                foreach (var (_, text, lp) in t.Top)
                {
                    w.WriteStartObject();
                    w.WriteString("token", text);
                    w.WriteNumber("logprob", Finite(lp));
                    WriteBytes(w, text);
                    w.WriteEndObject();
                }
                w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndArray();
        }
        else
        {
            w.WriteStartArray("tokens");
            foreach (var t in lps) w.WriteStringValue(t.Text);
            w.WriteEndArray();
            w.WriteStartArray("token_logprobs");
            foreach (var t in lps) w.WriteNumberValue(Finite(t.Logprob));
            w.WriteEndArray();
            w.WriteStartArray("top_logprobs");
            foreach (var t in lps)
            {
                w.WriteStartObject();
                var seen = new HashSet<string>(StringComparer.Ordinal);   // two tokens can decode to the same text (partial UTF-8)
                foreach (var (_, text, lp) in t.Top)
                    if (seen.Add(text)) w.WriteNumber(text, Finite(lp));
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteStartArray("text_offset");
            int offset = textOffset;
            foreach (var t in lps) { w.WriteNumberValue(offset); offset += t.Text.Length; }
            w.WriteEndArray();
        }
        w.WriteEndObject();
    }

    static void WriteBytes(Utf8JsonWriter w, string text)
    {
        w.WriteStartArray("bytes");
        foreach (byte b in Encoding.UTF8.GetBytes(text)) w.WriteNumberValue(b);
        w.WriteEndArray();
    }

    // ---- streaming (server-sent events) ----

    async Task Stream(HttpContext ctx, ParsedRequest req, bool chat, List<Choice> choices, string id, long created, long started, CancellationToken ct)
    {
        ctx.Response.StatusCode = 200;
        ctx.Response.ContentType = "text/event-stream; charset=utf-8";
        ctx.Response.Headers.CacheControl = "no-cache";
        ctx.Response.Headers["X-Accel-Buffering"] = "no";
        await ctx.Response.StartAsync(ct).ConfigureAwait(false);
        var gate = new SemaphoreSlim(1, 1);
        string obj = chat ? "chat.completion.chunk" : "text_completion";

        async Task Send(byte[] json)
        {
            await gate.WaitAsync(ct).ConfigureAwait(false);
            try
            {
                await ctx.Response.Body.WriteAsync("data: "u8.ToArray(), ct).ConfigureAwait(false);
                await ctx.Response.Body.WriteAsync(json, ct).ConfigureAwait(false);
                await ctx.Response.Body.WriteAsync("\n\n"u8.ToArray(), ct).ConfigureAwait(false);
                await ctx.Response.Body.FlushAsync(ct).ConfigureAwait(false);
            }
            finally { gate.Release(); }
        }

        // The fields every chunk of this stream opens with, up to its (opened) choices array.
        void ChunkHeader(Utf8JsonWriter w)
        {
            w.WriteStartObject();
            w.WriteString("id", id);
            w.WriteString("object", obj);
            w.WriteNumber("created", created);
            w.WriteString("model", _modelName);
            w.WriteStartArray("choices");
        }

        byte[] Chunk(Choice c, Action<Utf8JsonWriter>? delta, IReadOnlyList<TokenLogprob>? logprobs, string? finish, string text = "") => Json(w =>
        {
            ChunkHeader(w);
            w.WriteStartObject();
            w.WriteNumber("index", c.Index);
            if (chat)
            {
                w.WriteStartObject("delta");
                delta?.Invoke(w);
                w.WriteEndObject();
            }
            else w.WriteString("text", text);
            if (logprobs is { Count: > 0 } && req.Logprobs) WriteLogprobs(w, logprobs, chat, c.Text.Length - text.Length);
            else w.WriteNull("logprobs");
            if (finish is null) w.WriteNull("finish_reason"); else w.WriteString("finish_reason", finish);
            w.WriteEndObject();
            w.WriteEndArray();
            if (req.IncludeUsage) w.WriteNull("usage");
            w.WriteEndObject();
        });

        async Task Pump(Choice c)
        {
            if (chat) await Send(Chunk(c, w => { w.WriteString("role", "assistant"); w.WriteString("content", ""); }, null, null)).ConfigureAwait(false);
            // A named forced call streams: its header now, its arguments as the model writes them.
            var named = c.Forced is { Name: { } forcedName } ? new ForcedToolCalls.ArgumentStream() : null;
            var forcedId = ForcedToolCalls.NewId();
            if (named is not null)
            {
                var header = new ToolCall(forcedId, c.Forced!.Name!, "");
                await Send(Chunk(c, w => { w.WriteStartArray("tool_calls"); WriteToolCall(w, header, 0, withHeader: true, ""); w.WriteEndArray(); }, null, null)).ConfigureAwait(false);
            }
            async Task SendArguments(string delta)
            {
                if (delta.Length == 0) return;
                var part = new ToolCall(forcedId, "", delta);
                await Send(Chunk(c, w => { w.WriteStartArray("tool_calls"); WriteToolCall(w, part, 0, withHeader: false, delta); w.WriteEndArray(); }, null, null)).ConfigureAwait(false);
            }
            await foreach (var piece in c.Request.Pieces.WithCancellation(ct).ConfigureAwait(false))
            {
                Observe(c, started);
                switch (piece.Kind)
                {
                    case PieceKind.ToolCall when chat && piece.ToolCall is { } t:
                        int k = c.ToolCalls++;
                        // vLLM's shape: the header (id, name, empty arguments), then the arguments as a delta.
                        await Send(Chunk(c, w => { w.WriteStartArray("tool_calls"); WriteToolCall(w, t, k, withHeader: true, ""); w.WriteEndArray(); }, piece.Logprobs, null)).ConfigureAwait(false);
                        await Send(Chunk(c, w => { w.WriteStartArray("tool_calls"); WriteToolCall(w, t, k, withHeader: false, t.ArgumentsJson); w.WriteEndArray(); }, null, null)).ConfigureAwait(false);
                        break;
                    case PieceKind.Reasoning when chat:
                        await Send(Chunk(c, w => WriteReasoning(w, piece.Text, always: false), piece.Logprobs, null)).ConfigureAwait(false);
                        break;
                    case PieceKind.Content when c.Forced is not null:
                        // The forced call's arguments: streamed for a named call, sent whole at the end for "required".
                        if (named is not null) await SendArguments(named.Add(piece.Text)).ConfigureAwait(false);
                        break;
                    default:
                        if (piece.Kind == PieceKind.ToolCall) break;
                        string text = chat ? piece.Text : RawText(c, piece);
                        c.Text.Append(text);
                        await Send(Chunk(c, w => w.WriteString("content", text), piece.Logprobs, null, text)).ConfigureAwait(false);
                        break;
                }
            }
            c.Result = await c.Request.Result.WaitAsync(ct).ConfigureAwait(false);
            if (c.Forced is not null)
            {
                c.Result = ForcedToolCalls.Apply(c.Forced, c.Result, forcedId);
                if (named is not null && c.Result.ToolCalls is [var call, ..])
                    await SendArguments(named.Finish(call.ArgumentsJson)).ConfigureAwait(false);
                else if (c.Result.ToolCalls is [var t, ..])
                {
                    await Send(Chunk(c, w => { w.WriteStartArray("tool_calls"); WriteToolCall(w, t, 0, withHeader: true, ""); w.WriteEndArray(); }, null, null)).ConfigureAwait(false);
                    await Send(Chunk(c, w => { w.WriteStartArray("tool_calls"); WriteToolCall(w, t, 0, withHeader: false, t.ArgumentsJson); w.WriteEndArray(); }, null, null)).ConfigureAwait(false);
                }
                else if (c.Result.Content.Length > 0)
                    await Send(Chunk(c, w => w.WriteString("content", c.Result.Content), null, null)).ConfigureAwait(false);
            }
            await Send(Chunk(c, null, null, FinishReasonText(c.Result))).ConfigureAwait(false);
        }

        try
        {
            await Task.WhenAll(choices.Select(Pump)).ConfigureAwait(false);
        }
        catch (Exception e) when (!ct.IsCancellationRequested)
        {
            // Headers are out: the error goes in the stream, as vLLM does, then [DONE].
            await Send(ErrorJson(ToApiError(e))).ConfigureAwait(false);
            await Send("[DONE]"u8.ToArray()).ConfigureAwait(false);
            Log($"stream {id} failed: {e.Message}");
            return;
        }
        if (req.IncludeUsage)
            await Send(Json(w =>
            {
                ChunkHeader(w);
                w.WriteEndArray();
                WriteUsage(w, choices, PromptsOf(choices));
                w.WriteEndObject();
            })).ConfigureAwait(false);
        await Send("[DONE]"u8.ToArray()).ConfigureAwait(false);
    }

    /// <summary>Prompt lengths per prompt (choice 0 of each), for usage.</summary>
    static List<IReadOnlyList<int>> PromptsOf(List<Choice> choices) =>
        choices.GroupBy(c => c.Prompt).Select(g => (IReadOnlyList<int>)new int[g.First().Request.PromptTokens]).ToList();

    static Task WriteJson(HttpContext ctx, Action<Utf8JsonWriter> write)
    {
        ctx.Response.ContentType = "application/json";
        return ctx.Response.Body.WriteAsync(Json(write)).AsTask();
    }

    internal static byte[] Json(Action<Utf8JsonWriter> write)
    {
        var buffer = new ArrayBufferWriter<byte>(512);
        using (var w = new Utf8JsonWriter(buffer, new JsonWriterOptions { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping }))
            write(w);
        return buffer.WrittenSpan.ToArray();
    }

    /// <summary>No SIGTERM/Ctrl+C handling: the owner stops the server (tests, embedding programs).</summary>
    sealed class NoSignalsLifetime : IHostLifetime
    {
        public Task WaitForStartAsync(CancellationToken cancellationToken) => Task.CompletedTask;
        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}

/// <summary>The server cannot listen where asked (port in use, unknown host); the message names --host/--port.</summary>
public sealed class ServerBindException(string message, Exception? inner = null) : Qwen3CudaException(message, inner)
{
    public override ErrorKind Kind => ErrorKind.InvalidArgument;
}
