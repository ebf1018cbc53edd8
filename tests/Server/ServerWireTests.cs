using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Server;

namespace Qwen3Cuda.Tests.Server;

/// <summary>
/// The HTTP layer of `qwen3cuda serve` over a scripted engine (<see cref="ScriptedEngine"/>), with HttpClient on loopback:
/// the OpenAI wire format of reasoning, content and tool-call pieces (whole and streamed), usage, and every error status
/// in OpenAI's {"error": {...}} shape. The real engine behind the same server is driven by the openai npm client in
/// <see cref="OpenAiClientTests"/>.
/// </summary>
[TestFixture, CancelAfter(60_000)]
public sealed class ServerWireTests
{
    static readonly EnginePiece[] ReasonThenCall =
    [
        new(PieceKind.Reasoning, "The user wants "), new(PieceKind.Reasoning, "weather."),
        new(PieceKind.Content, "Checking."),
        new(PieceKind.ToolCall, "") { ToolCall = new ToolCall("call_abc123", "get_weather", "{\"city\": \"Paris\"}") },
    ];

    internal static async Task<(OpenAiServer Server, HttpClient Http)> Start(ScriptedEngine engine, ServerOptions? options = null)
    {
        var server = await OpenAiServer.StartAsync(engine, (options ?? new ServerOptions()) with { Host = "127.0.0.1", Port = 0 });
        return (server, new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromSeconds(30) });
    }

    static StringContent Body(string json) => new(json, Encoding.UTF8, "application/json");

    static async Task<(HttpStatusCode Status, JsonElement Json, HttpResponseMessage Response)> Post(HttpClient http, string path, string json)
    {
        var r = await http.PostAsync(path, Body(json));
        string text = await r.Content.ReadAsStringAsync();
        return (r.StatusCode, text.Length > 0 ? JsonDocument.Parse(text).RootElement.Clone() : default, r);
    }

    const string Tools = """[{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]""";

    [Test]
    public async Task WholeChat_SplitsReasoningContentAndToolCalls_WithUsage()
    {
        var engine = new ScriptedEngine { Script = ReasonThenCall, Finish = FinishReason.ToolCalls, CachedPromptTokens = 3 };
        var (server, http) = await Start(engine);
        await using var owned = server;
        var (status, json, _) = await Post(http, "/v1/chat/completions",
            $$"""{"model": "scripted", "messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": {{Tools}}}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), json.ToString());
        Assert.That(json.GetProperty("object").GetString(), Is.EqualTo("chat.completion"));
        Assert.That(json.GetProperty("id").GetString(), Does.StartWith("chatcmpl-"));
        var choice = json.GetProperty("choices")[0];
        var message = choice.GetProperty("message");
        Assert.That(message.GetProperty("role").GetString(), Is.EqualTo("assistant"));
        Assert.That(message.GetProperty("reasoning_content").GetString(), Is.EqualTo("The user wants weather."));
        Assert.That(message.GetProperty("reasoning").GetString(), Is.EqualTo("The user wants weather."));
        Assert.That(message.GetProperty("content").GetString(), Is.EqualTo("Checking."));
        var call = message.GetProperty("tool_calls")[0];
        Assert.That(call.GetProperty("id").GetString(), Is.EqualTo("call_abc123"));
        Assert.That(call.GetProperty("type").GetString(), Is.EqualTo("function"));
        Assert.That(call.GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(call.GetProperty("function").GetProperty("arguments").GetString(), Is.EqualTo("{\"city\": \"Paris\"}"), "arguments are a JSON string");
        Assert.That(choice.GetProperty("finish_reason").GetString(), Is.EqualTo("tool_calls"));
        var usage = json.GetProperty("usage");
        int prompt = "<user>Weather in Paris?".Length;
        Assert.That(usage.GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(prompt));
        Assert.That(usage.GetProperty("completion_tokens").GetInt32(), Is.EqualTo(4));
        Assert.That(usage.GetProperty("total_tokens").GetInt32(), Is.EqualTo(prompt + 4));
        Assert.That(usage.GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32(), Is.EqualTo(3));
        Assert.That(engine.Rendered.Single().Options.Tools, Is.Not.Null, "tools reach the chat template");
        Assert.That(engine.Rendered.Single().Options.ParseToolCalls, Is.True);
    }

    [Test]
    public async Task StreamedChat_SendsRoleReasoningContentToolCallDeltasFinishUsageAndDone()
    {
        var engine = new ScriptedEngine { Script = ReasonThenCall, Finish = FinishReason.ToolCalls };
        var (server, http) = await Start(engine);
        await using var owned = server;
        var r = await http.PostAsync("/v1/chat/completions", Body(
            $$"""{"messages": [{"role": "user", "content": "hi"}], "tools": {{Tools}}, "stream": true, "stream_options": {"include_usage": true} }"""));
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(r.Content.Headers.ContentType!.MediaType, Is.EqualTo("text/event-stream"));
        var events = SseEvents(await r.Content.ReadAsStringAsync());
        Assert.That(events[^1], Is.EqualTo("[DONE]"));
        var chunks = events.SkipLast(1).Select(e => JsonDocument.Parse(e).RootElement).ToList();
        Assert.That(chunks.All(c => c.GetProperty("object").GetString() == "chat.completion.chunk"));
        Assert.That(chunks.Select(c => c.GetProperty("id").GetString()).Distinct().Count(), Is.EqualTo(1), "one id for the whole stream");
        var deltas = chunks.Where(c => c.GetProperty("choices").GetArrayLength() > 0).Select(c => c.GetProperty("choices")[0]).ToList();
        Assert.That(deltas[0].GetProperty("delta").GetProperty("role").GetString(), Is.EqualTo("assistant"));
        string reasoning = string.Concat(deltas.Select(d => d.GetProperty("delta").TryGetProperty("reasoning_content", out var v) ? v.GetString() : ""));
        string content = string.Concat(deltas.Select(d => d.GetProperty("delta").TryGetProperty("content", out var v) ? v.GetString() : ""));
        Assert.That(reasoning, Is.EqualTo("The user wants weather."));
        Assert.That(content, Is.EqualTo("Checking."));
        var calls = deltas.Where(d => d.GetProperty("delta").TryGetProperty("tool_calls", out _)).Select(d => d.GetProperty("delta").GetProperty("tool_calls")[0]).ToList();
        Assert.That(calls, Has.Count.EqualTo(2), "a header delta (id, name) and an arguments delta");
        Assert.That(calls[0].GetProperty("index").GetInt32(), Is.EqualTo(0));
        Assert.That(calls[0].GetProperty("id").GetString(), Is.EqualTo("call_abc123"));
        Assert.That(calls[0].GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(string.Concat(calls.Select(c => c.GetProperty("function").GetProperty("arguments").GetString())), Is.EqualTo("{\"city\": \"Paris\"}"));
        Assert.That(deltas[^1].GetProperty("finish_reason").GetString(), Is.EqualTo("tool_calls"));
        Assert.That(deltas.SkipLast(1).All(d => d.GetProperty("finish_reason").ValueKind == JsonValueKind.Null));
        var usage = chunks[^1];
        Assert.That(usage.GetProperty("choices").GetArrayLength(), Is.EqualTo(0), "the usage chunk has no choices");
        Assert.That(usage.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(4));
        Assert.That(chunks.SkipLast(1).All(c => c.GetProperty("usage").ValueKind == JsonValueKind.Null), "usage is null before the last chunk");
    }

    internal static List<string> SseEvents(string body) =>
        body.Split("\n\n", StringSplitOptions.RemoveEmptyEntries).Select(e => e.Trim()).Where(e => e.Length > 0)
            .Select(e => e.StartsWith("data: ", StringComparison.Ordinal) ? e[6..] : throw new AssertionException($"not an SSE data line: {e}")).ToList();

    [Test]
    public async Task NChoices_AndCompletions_AndStopAndLength()
    {
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "a"), new(PieceKind.Content, "b"), new(PieceKind.Content, "c")] };
        var (server, http) = await Start(engine);
        await using var owned = server;
        var (status, json, _) = await Post(http, "/v1/chat/completions", """{"messages": [{"role": "user", "content": "x"}], "n": 2, "seed": 7, "max_tokens": 2, "stop": ["zz"]}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), json.ToString());
        Assert.That(json.GetProperty("choices").GetArrayLength(), Is.EqualTo(2));
        Assert.That(json.GetProperty("choices")[1].GetProperty("index").GetInt32(), Is.EqualTo(1));
        Assert.That(json.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("length"));
        Assert.That(json.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), Is.EqualTo("ab"));
        Assert.That(json.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(4), "two choices of two tokens");
        var seeds = engine.Submitted.Select(s => s.Options.Sampling.Seed).ToList();
        Assert.That(seeds, Is.EqualTo(new ulong?[] { 7, 8 }), "choice i samples with seed + i");
        Assert.That(engine.Submitted.First().Options.Stop, Is.EqualTo(new[] { "zz" }));

        var (cs, cj, _) = await Post(http, "/v1/completions", """{"model": "scripted", "prompt": "Once", "max_tokens": 5}""");
        Assert.That(cs, Is.EqualTo(HttpStatusCode.OK), cj.ToString());
        Assert.That(cj.GetProperty("object").GetString(), Is.EqualTo("text_completion"));
        Assert.That(cj.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo("abc"));
        Assert.That(cj.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("stop"));
        Assert.That(cj.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(4));

        var models = JsonDocument.Parse(await http.GetStringAsync("/v1/models")).RootElement;
        Assert.That(models.GetProperty("data")[0].GetProperty("id").GetString(), Is.EqualTo("scripted"));
        Assert.That(models.GetProperty("data")[0].GetProperty("max_model_len").GetInt32(), Is.EqualTo(256));
    }

    [Test]
    public async Task RequestFields_ReachTheEngineOptions()
    {
        var engine = new ScriptedEngine();
        var (server, http) = await Start(engine);
        await using var owned = server;
        var (status, json, _) = await Post(http, "/v1/chat/completions", """
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                          {"role": "assistant", "content": "c", "reasoning_content": "r"}, {"role": "developer", "content": "d"}],
             "temperature": 0.5, "top_p": 0.9, "top_k": 7, "min_p": 0.05, "presence_penalty": 0.5, "frequency_penalty": -0.25,
             "repetition_penalty": 1.1, "seed": 42, "stop": "END", "stop_token_ids": [5, 6], "ignore_eos": true,
             "max_completion_tokens": 9, "logprobs": true, "top_logprobs": 3, "chat_template_kwargs": {"enable_thinking": false}}
            """);
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), json.ToString());
        var o = engine.Submitted.Single().Options;
        Assert.That((o.Sampling.Temperature, o.Sampling.TopP, o.Sampling.TopK, o.Sampling.MinP, o.Sampling.Seed), Is.EqualTo((0.5f, 0.9f, 7, 0.05f, (ulong?)42)));
        Assert.That((o.PresencePenalty, o.FrequencyPenalty, o.RepetitionPenalty), Is.EqualTo((0.5f, -0.25f, 1.1f)));
        Assert.That(o.Stop, Is.EqualTo(new[] { "END" }));
        Assert.That(o.StopTokenIds, Is.EqualTo(new[] { 5, 6 }));
        Assert.That((o.IgnoreEos, o.MaxNewTokens, o.TopLogprobs, o.EnableThinking), Is.EqualTo((true, (int?)9, 3, (bool?)false)));
        var m = engine.Rendered.Single().Messages;
        Assert.That(m.Select(x => (x.Role, x.Content)), Is.EqualTo(new[] { ("system", "s"), ("user", "ab"), ("assistant", "c"), ("system", "d") }));
        Assert.That(m[2].ReasoningContent, Is.EqualTo("r"));

        var (cs, _, _) = await Post(http, "/v1/completions", """{"prompt": [[1, 2, 3], "hi"], "n": 2}""");
        Assert.That(cs, Is.EqualTo(HttpStatusCode.OK));
        var prompts = engine.Submitted.Skip(1).Select(x => x.Prompt).ToList();
        Assert.That(prompts, Has.Count.EqualTo(4), "two prompts, two choices each");
        Assert.That(prompts[0], Is.EqualTo(new[] { 1, 2, 3 }));
        Assert.That(prompts[3], Is.EqualTo(engine.Tokenize("hi")));
        Assert.That(engine.Submitted.Skip(1).All(x => x.Options.MaxNewTokens == 16 && !x.Options.ParseToolCalls), "completions: 16 tokens by default, no tool parsing");
    }

    [Test]
    public async Task Completions_ReturnTheRawText_WithTheThinkTagsTheEngineSplitOn()
    {
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "a "), new(PieceKind.Reasoning, "hmm"), new(PieceKind.Content, "b")] };
        var (server, http) = await Start(engine);
        await using var owned = server;
        var (_, whole, _) = await Post(http, "/v1/completions", """{"prompt": "x"}""");
        Assert.That(whole.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo("a <think>hmm</think>b"));
        var r = await http.PostAsync("/v1/completions", Body("""{"prompt": "x", "stream": true}"""));
        var text = string.Concat(SseEvents(await r.Content.ReadAsStringAsync()).SkipLast(1).Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.That(text, Is.EqualTo("a <think>hmm</think>b"));
        // A prompt that opened the think block itself: the answer starts in reasoning, and no tag is invented before it.
        engine.Script = [new(PieceKind.Reasoning, "hmm"), new(PieceKind.Content, "b")];
        var (_, open, _) = await Post(http, "/v1/completions", """{"prompt": "x"}""");
        Assert.That(open.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo("hmm</think>b"));
    }

    [Test]
    public async Task Stop_CancelsWhatIsStillRunningAfterTheShutdownTimeout()
    {
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "first")], Hang = true };
        var (server, http) = await Start(engine, new ServerOptions { ShutdownTimeout = TimeSpan.FromSeconds(1) });
        var response = await http.SendAsync(new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions")
            { Content = Body("""{"messages": [{"role": "user", "content": "x"}], "stream": true}""") }, HttpCompletionOption.ResponseHeadersRead);
        var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        string? line;
        while ((line = await reader.ReadLineAsync()) != null && !line.Contains("first")) { }
        var sw = System.Diagnostics.Stopwatch.StartNew();
        await server.DisposeAsync();
        Assert.That(sw.Elapsed, Is.GreaterThanOrEqualTo(TimeSpan.FromSeconds(0.9)), "in-flight requests had the shutdown timeout to finish");
        var deadline = DateTime.UtcNow.AddSeconds(5);
        while (engine.Cancelled == 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(engine.Cancelled, Is.EqualTo(1), "the hanging request was cancelled");
        Assert.That(engine.ShutDown, Is.True);
        response.Dispose();
    }

    [Test]
    public async Task Logprobs_ChatAndCompletionShapes()
    {
        var lp = new TokenLogprob(17, "Hi", -0.5f, [(17, "Hi", -0.5f), (18, "Yo", -1.25f)]);
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "Hi") { Logprobs = [lp] }] };
        var (server, http) = await Start(engine);
        await using var owned = server;
        var (_, chat, _) = await Post(http, "/v1/chat/completions", """{"messages": [{"role": "user", "content": "x"}], "logprobs": true, "top_logprobs": 2}""");
        var content = chat.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("content")[0];
        Assert.That(content.GetProperty("token").GetString(), Is.EqualTo("Hi"));
        Assert.That(content.GetProperty("logprob").GetSingle(), Is.EqualTo(-0.5f));
        Assert.That(content.GetProperty("bytes").EnumerateArray().Select(b => b.GetInt32()), Is.EqualTo(new[] { 72, 105 }));
        Assert.That(content.GetProperty("top_logprobs")[1].GetProperty("token").GetString(), Is.EqualTo("Yo"));
        Assert.That(content.GetProperty("top_logprobs")[1].GetProperty("logprob").GetSingle(), Is.EqualTo(-1.25f));
        var (_, none, _) = await Post(http, "/v1/chat/completions", """{"messages": [{"role": "user", "content": "x"}]}""");
        Assert.That(none.GetProperty("choices")[0].GetProperty("logprobs").ValueKind, Is.EqualTo(JsonValueKind.Null));
        var (_, cmpl, _) = await Post(http, "/v1/completions", """{"prompt": "x", "logprobs": 2}""");
        var l = cmpl.GetProperty("choices")[0].GetProperty("logprobs");
        Assert.That(l.GetProperty("tokens")[0].GetString(), Is.EqualTo("Hi"));
        Assert.That(l.GetProperty("token_logprobs")[0].GetSingle(), Is.EqualTo(-0.5f));
        Assert.That(l.GetProperty("top_logprobs")[0].GetProperty("Yo").GetSingle(), Is.EqualTo(-1.25f));
        Assert.That(l.GetProperty("text_offset")[0].GetInt32(), Is.EqualTo(0));
        Assert.That(engine.Submitted.Last().Options.TopLogprobs, Is.EqualTo(2));
    }

    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "top_p": 2}""", "top_p")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "n": 0}""", "n")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "temperature": -1}""", "temperature")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}""", "max_tokens")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "presence_penalty": 3}""", "presence_penalty")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "top_logprobs": 3}""", "top_logprobs")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "stream_options": {"include_usage": true}}""", "stream_options")]
    [TestCase("""{"messages": [{"role": "wizard", "content": "x"}]}""", "messages[0].role")]
    [TestCase("""{"messages": []}""", "messages")]
    [TestCase("""{"model": "scripted"}""", "messages")]
    [TestCase("""{"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}""", "messages[0].content[0].type")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", "function": {"description": "no name"}}]}""", "tools[0].function.name")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "tools": {"not": "a list"}}""", "tools")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "tool_choice": "auto"}""", "tool_choice")]
    [TestCase("""{"messages": [{"role": "assistant", "content": null, "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}""", "messages[0].tool_calls[0].function.arguments")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_object"}}""", "response_format")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "logit_bias": {"12": 5}}""", "logit_bias")]
    [TestCase("""{"messages": [{"role": "user", "content": "x"}], "functions": [{"name": "f"}]}""", "functions")]
    public async Task BadParameter_Is400NamingIt(string body, string param)
    {
        var engine = new ScriptedEngine();
        var (server, http) = await Start(engine);
        await using var owned = server;
        var (status, json, _) = await Post(http, "/v1/chat/completions", body);
        Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest), json.ToString());
        AssertErrorShape(json, "invalid_request_error");
        Assert.That(json.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo(param), json.ToString());
        Assert.That(engine.Submitted, Is.Empty, "nothing reached the engine");
    }

    internal static void AssertErrorShape(JsonElement json, string type)
    {
        var error = json.GetProperty("error");
        Assert.That(error.GetProperty("message").GetString(), Is.Not.Empty);
        Assert.That(error.GetProperty("type").GetString(), Is.EqualTo(type));
        Assert.That(error.TryGetProperty("param", out _) && error.TryGetProperty("code", out _), "param and code are present (maybe null)");
    }

    [Test]
    public async Task ToolChoice_NoneDropsTools_UnknownNameIs400()
    {
        var engine = new ScriptedEngine();
        var (server, http) = await Start(engine);
        await using var owned = server;
        var (s1, _, _) = await Post(http, "/v1/chat/completions", $$"""{"messages": [{"role": "user", "content": "x"}], "tools": {{Tools}}, "tool_choice": "none"}""");
        Assert.That(s1, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(engine.Rendered.Single().Options.Tools, Is.Null);
        Assert.That(engine.Rendered.Single().Options.ParseToolCalls, Is.False);
        var (s3, j3, _) = await Post(http, "/v1/chat/completions", $$"""{"messages": [{"role": "user", "content": "x"}], "tools": {{Tools}}, "tool_choice": {"type": "function", "function": {"name": "nope"} } }""");
        Assert.That(s3, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(j3.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo("tool_choice.function.name"));
        var (s4, j4, _) = await Post(http, "/v1/chat/completions", $$"""{"messages": [{"role": "user", "content": "x"}], "tools": {{Tools}}, "tool_choice": "always"}""");
        Assert.That(s4, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(j4.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo("tool_choice"));
    }

    [Test]
    public async Task ToolChoiceNamed_PrefillsTheCallStart_AndReadsTheAnswerAsTheCall_WholeAndStreamed()
    {
        // The model's text after the prefill `<tool_call>\n{"name": "get_weather", "arguments": ` (the server stops it at </tool_call>).
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "{\"city\": "), new(PieceKind.Content, "\"Paris\"}}")] };
        var (server, http) = await Start(engine);
        await using var owned = server;
        const string choice = """ "tool_choice": {"type": "function", "function": {"name": "get_weather"} } """;
        var (status, json, _) = await Post(http, "/v1/chat/completions", $$"""{"messages": [{"role": "user", "content": "x"}], "tools": {{Tools}}, {{choice}} }""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), json.ToString());
        var sent = engine.Submitted.Single();
        Assert.That(engine.Detokenize(sent.Prompt), Does.EndWith("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": "));
        Assert.That(sent.Options.ParseToolCalls, Is.False);
        Assert.That(sent.Options.Stop, Does.Contain("</tool_call>"));
        Assert.That(sent.Options.ToolCall, Is.Not.Null, "the engine guides the call");
        Assert.That(sent.Options.ToolCall!.Name, Is.EqualTo("get_weather"));
        Assert.That(sent.Options.ToolCall.ToolNames, Is.EqualTo(new[] { "get_weather" }));
        var message = json.GetProperty("choices")[0].GetProperty("message");
        Assert.That(message.GetProperty("content").ValueKind, Is.EqualTo(JsonValueKind.Null));
        var call = message.GetProperty("tool_calls")[0];
        Assert.That(call.GetProperty("id").GetString(), Does.StartWith("call_"));
        Assert.That(call.GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(call.GetProperty("function").GetProperty("arguments").GetString(), Is.EqualTo("{\"city\": \"Paris\"}"));
        Assert.That(json.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("tool_calls"));

        var r = await http.PostAsync("/v1/chat/completions", Body($$"""{"messages": [{"role": "user", "content": "x"}], "tools": {{Tools}}, {{choice}}, "stream": true}"""));
        var deltas = SseEvents(await r.Content.ReadAsStringAsync()).SkipLast(1).Select(e => JsonDocument.Parse(e).RootElement.GetProperty("choices")[0]).ToList();
        Assert.That(deltas.Any(d => d.GetProperty("delta").TryGetProperty("content", out var c) && c.GetString()!.Length > 0), Is.False, "no content deltas");
        var calls = deltas.Where(d => d.GetProperty("delta").TryGetProperty("tool_calls", out _)).Select(d => d.GetProperty("delta").GetProperty("tool_calls")[0]).ToList();
        Assert.That(calls[0].GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(calls[0].GetProperty("id").GetString(), Does.StartWith("call_"));
        Assert.That(string.Concat(calls.Select(c => c.GetProperty("function").GetProperty("arguments").GetString())), Is.EqualTo("{\"city\": \"Paris\"}"));
        Assert.That(calls.Skip(1).Select(c => c.GetProperty("function").GetProperty("arguments").GetString()),
            Is.EqualTo(new[] { "{\"city\":", " \"Paris\"", "}" }), "the arguments stream as the model writes them; the call's own brace is held back");
        Assert.That(calls.Skip(1).All(c => !c.TryGetProperty("id", out _)), "only the header carries the id");
        Assert.That(deltas[^1].GetProperty("finish_reason").GetString(), Is.EqualTo("tool_calls"));
    }

    [TestCase(new[] { " {\"a\": {\"b\": 1}", "}", "\n}" }, "{\"a\": {\"b\": 1}}")]
    [TestCase(new[] { "{\"a\": [1, 2]}", "}" }, "{\"a\": [1, 2]}")]
    [TestCase(new[] { "\"text args\"}" }, "text args")]
    [TestCase(new[] { "{\"a\": 1", ", \"b\"" }, "{\"a\": 1, \"b\"")]
    public void ForcedArgumentStream_ConcatenatesToTheParsedArguments(string[] pieces, string arguments)
    {
        var stream = new ForcedToolCalls.ArgumentStream();
        string sent = string.Concat(pieces.Select(stream.Add));
        var call = ForcedToolCalls.Parse(new ForcedToolCall("f"), string.Concat(pieces))!;
        Assert.That(call.ArgumentsJson, Is.EqualTo(arguments));
        Assert.That(sent + stream.Finish(call.ArgumentsJson), Is.EqualTo(arguments));
    }

    [Test]
    public async Task ToolChoiceRequired_TheModelNamesTheTool_UnparsableOutputStaysContent()
    {
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Oslo\"}}")] };
        var (server, http) = await Start(engine);
        await using var owned = server;
        string body = $$"""{"messages": [{"role": "user", "content": "x"}], "tools": {{Tools}}, "tool_choice": "required"}""";
        var (status, json, _) = await Post(http, "/v1/chat/completions", body);
        Assert.That(status, Is.EqualTo(HttpStatusCode.OK), json.ToString());
        Assert.That(engine.Detokenize(engine.Submitted.Single().Prompt), Does.EndWith("<tool_call>\n"));
        Assert.That(engine.Submitted.Single().Options.ToolCall, Is.EqualTo(new Qwen3Cuda.Model.Serving.Constraints.GuidedToolCall(null, ["get_weather"])).Using<Qwen3Cuda.Model.Serving.Constraints.GuidedToolCall>(
            (a, b) => a.Name == b.Name && a.ToolNames.SequenceEqual(b.ToolNames)), "the engine guides the call to one of the tools");
        var call = json.GetProperty("choices")[0].GetProperty("message").GetProperty("tool_calls")[0];
        Assert.That(call.GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(call.GetProperty("function").GetProperty("arguments").GetString(), Is.EqualTo("{\"city\": \"Oslo\"}"));

        engine.Script = [new(PieceKind.Content, "no idea")];
        var (s2, j2, _) = await Post(http, "/v1/chat/completions", body);
        Assert.That(s2, Is.EqualTo(HttpStatusCode.OK));
        Assert.That(j2.GetProperty("choices")[0].GetProperty("message").GetProperty("content").GetString(), Is.EqualTo("no idea"));
        Assert.That(j2.GetProperty("choices")[0].GetProperty("message").TryGetProperty("tool_calls", out _), Is.False);
        Assert.That(j2.GetProperty("choices")[0].GetProperty("finish_reason").GetString(), Is.EqualTo("stop"));
    }

    [Test]
    public async Task BadJson_AndNotAnObject_Are400()
    {
        var (server, http) = await Start(new ScriptedEngine());
        await using var owned = server;
        var (s1, j1, _) = await Post(http, "/v1/chat/completions", "{\"messages\": [");
        Assert.That(s1, Is.EqualTo(HttpStatusCode.BadRequest));
        AssertErrorShape(j1, "invalid_request_error");
        Assert.That(j1.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("invalid_json"));
        var (s2, j2, _) = await Post(http, "/v1/completions", "[1, 2]");
        Assert.That(s2, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(j2.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("invalid_json"));
    }

    [Test]
    public async Task PromptLongerThanContext_Is400WithBothCounts()
    {
        var engine = new ScriptedEngine { ContextLength = 64 };
        var (server, http) = await Start(engine);
        await using var owned = server;
        string text = new('x', 100);
        var (status, json, _) = await Post(http, "/v1/chat/completions", $$"""{"messages": [{"role": "user", "content": "{{text}}"}]}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.BadRequest));
        string message = json.GetProperty("error").GetProperty("message").GetString()!;
        Assert.That(message, Does.Contain("64").And.Contain("106"), "context and prompt token counts");
        Assert.That(json.GetProperty("error").GetProperty("code").GetString(), Is.EqualTo("context_length_exceeded"));
        var (s2, j2, _) = await Post(http, "/v1/completions", """{"prompt": "0123456789", "max_tokens": 60}""");
        Assert.That(s2, Is.EqualTo(HttpStatusCode.BadRequest));
        Assert.That(j2.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo("max_tokens"));
        Assert.That(j2.GetProperty("error").GetProperty("message").GetString(), Does.Contain("64").And.Contain("70"));
    }

    [Test]
    public async Task ApiKey_401WithoutIt_HealthAndMetricsStayOpen()
    {
        var (server, http) = await Start(new ScriptedEngine(), new ServerOptions { ApiKey = "sekret" });
        await using var owned = server;
        var (s1, j1, _) = await Post(http, "/v1/chat/completions", """{"messages": [{"role": "user", "content": "x"}]}""");
        Assert.That(s1, Is.EqualTo(HttpStatusCode.Unauthorized));
        AssertErrorShape(j1, "authentication_error");
        var wrong = new HttpRequestMessage(HttpMethod.Get, "/v1/models") { Headers = { Authorization = new AuthenticationHeaderValue("Bearer", "nope") } };
        Assert.That((await http.SendAsync(wrong)).StatusCode, Is.EqualTo(HttpStatusCode.Unauthorized));
        var right = new HttpRequestMessage(HttpMethod.Get, "/v1/models") { Headers = { Authorization = new AuthenticationHeaderValue("Bearer", "sekret") } };
        Assert.That((await http.SendAsync(right)).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That((await http.GetAsync("/health")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
        Assert.That((await http.GetAsync("/metrics")).StatusCode, Is.EqualTo(HttpStatusCode.OK));
    }

    [Test]
    public async Task UnknownModel_AndUnknownPath_Are404()
    {
        var (server, http) = await Start(new ScriptedEngine());
        await using var owned = server;
        var (status, json, _) = await Post(http, "/v1/chat/completions", """{"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.NotFound));
        AssertErrorShape(json, "invalid_request_error");
        Assert.That(json.GetProperty("error").GetProperty("param").GetString(), Is.EqualTo("model"));
        Assert.That(json.GetProperty("error").GetProperty("message").GetString(), Does.Contain("gpt-4o").And.Contain("scripted"));
        var r = await http.GetAsync("/v1/nothing");
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.NotFound));
        AssertErrorShape(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement, "invalid_request_error");
    }

    [Test]
    public async Task OversizedBody_Is413()
    {
        var engine = new ScriptedEngine();
        var (server, http) = await Start(engine, new ServerOptions { MaxBodyBytes = 1000 });
        await using var owned = server;
        var (status, json, _) = await Post(http, "/v1/chat/completions", $$"""{"messages": [{"role": "user", "content": "{{new string('x', 5000)}}"}]}""");
        Assert.That(status, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        AssertErrorShape(json, "invalid_request_error");
        // Without a Content-Length (chunked), the limit holds while reading.
        var chunked = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = new StreamContent(new MemoryStream(Encoding.UTF8.GetBytes(new string(' ', 5000) + "{}"))) };
        chunked.Headers.TransferEncodingChunked = true;
        var r = await http.SendAsync(chunked);
        Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.RequestEntityTooLarge));
        Assert.That(engine.Submitted, Is.Empty);
    }

    [Test]
    public async Task QueueFull_Is429_ShuttingDown_Is503_BothWithRetryAfter()
    {
        var engine = new ScriptedEngine { SubmitThrows = new EngineOverloadedException("the waiting queue is full (1024 requests)") };
        var (server, http) = await Start(engine, new ServerOptions { RetryAfterSeconds = 2 });
        await using var owned = server;
        const string body = """{"messages": [{"role": "user", "content": "x"}]}""";
        var (s1, j1, r1) = await Post(http, "/v1/chat/completions", body);
        Assert.That(s1, Is.EqualTo(HttpStatusCode.TooManyRequests));
        AssertErrorShape(j1, "rate_limit_error");
        Assert.That(r1.Headers.RetryAfter?.Delta, Is.EqualTo(TimeSpan.FromSeconds(2)));
        engine.SubmitThrows = new EngineShutDownException("the engine is shutting down");
        var (s2, j2, r2) = await Post(http, "/v1/chat/completions", body);
        Assert.That(s2, Is.EqualTo(HttpStatusCode.ServiceUnavailable));
        AssertErrorShape(j2, "service_unavailable_error");
        Assert.That(r2.Headers.RetryAfter?.Delta, Is.EqualTo(TimeSpan.FromSeconds(2)));
    }

    [Test]
    public async Task ClientDisconnectMidStream_CancelsTheEngineRequest()
    {
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "first")], Hang = true };
        var (server, http) = await Start(engine);
        await using var owned = server;
        var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Body("""{"messages": [{"role": "user", "content": "x"}], "stream": true}""") };
        var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        var stream = await response.Content.ReadAsStreamAsync();
        var reader = new StreamReader(stream);
        string? line;
        while ((line = await reader.ReadLineAsync()) != null && !line.Contains("first")) { }
        Assert.That(line, Does.Contain("first"), "the first piece arrived");
        Assert.That(engine.Running, Is.EqualTo(1));
        response.Dispose();   // the client goes away mid-stream
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (engine.Cancelled == 0 && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(engine.Cancelled, Is.EqualTo(1), "the engine request was cancelled");
        Assert.That(engine.Running, Is.EqualTo(0));
        var metrics = await http.GetStringAsync("/metrics");
        Assert.That(metrics, Does.Contain("outcome=\"cancelled\"} 1"));
    }

    [Test]
    public async Task Stop_RefusesNewRequestsWith503_AndShutsTheEngineDown()
    {
        var engine = new ScriptedEngine();
        var (server, http) = await Start(engine);
        var (ok, _, _) = await Post(http, "/v1/chat/completions", """{"messages": [{"role": "user", "content": "x"}]}""");
        Assert.That(ok, Is.EqualTo(HttpStatusCode.OK));
        await server.DisposeAsync();
        Assert.That(engine.ShutDown, Is.True);
        Assert.ThrowsAsync<HttpRequestException>(() => http.GetAsync("/health"), "the listener is closed");
    }

    [Test]
    public async Task Metrics_IsPrometheusText_WithLatencyHistogramsAndEngineGauges()
    {
        var engine = new ScriptedEngine { Script = [new(PieceKind.Content, "a"), new(PieceKind.Content, "b"), new(PieceKind.Content, "c")] };
        var (server, http) = await Start(engine);
        await using var owned = server;
        for (int i = 0; i < 2; i++)
            Assert.That((await Post(http, "/v1/chat/completions", """{"messages": [{"role": "user", "content": "x"}]}""")).Status, Is.EqualTo(HttpStatusCode.OK));
        var r = await http.GetAsync("/metrics");
        Assert.That(r.Content.Headers.ContentType!.MediaType, Is.EqualTo("text/plain"));
        var samples = ParsePrometheus(await r.Content.ReadAsStringAsync());
        Assert.That(samples["qwen3cuda_time_to_first_token_seconds_count"], Is.EqualTo(2));
        Assert.That(samples["qwen3cuda_inter_token_latency_seconds_count"], Is.EqualTo(4), "two gaps in each of two requests");
        Assert.That(samples["qwen3cuda_generation_tokens_total"], Is.EqualTo(6));
        Assert.That(samples["qwen3cuda_num_requests_running"], Is.EqualTo(0));
        Assert.That(samples["qwen3cuda_kv_pages_total"], Is.EqualTo(16));
        Assert.That(samples["qwen3cuda_requests_total{outcome=\"stop\"}"], Is.EqualTo(2));
        Assert.That(samples.Keys, Does.Contain("qwen3cuda_prefix_cache_hit_rate").And.Contain("qwen3cuda_num_requests_waiting").And.Contain("qwen3cuda_kv_pages_used"));
    }

    /// <summary>Prometheus text into name{labels but model_name} -> value; every line must parse (comments are HELP/TYPE).</summary>
    internal static Dictionary<string, double> ParsePrometheus(string text)
    {
        var samples = new Dictionary<string, double>();
        var types = new HashSet<string>();
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            if (line.StartsWith("# HELP ", StringComparison.Ordinal)) continue;
            if (line.StartsWith("# TYPE ", StringComparison.Ordinal))
            {
                var parts = line.Split(' ');
                Assert.That(parts[3], Is.AnyOf("gauge", "counter", "histogram"), line);
                types.Add(parts[2]);
                continue;
            }
            var m = System.Text.RegularExpressions.Regex.Match(line, @"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$");
            Assert.That(m.Success, line);
            string labels = System.Text.RegularExpressions.Regex.Replace(m.Groups[2].Value, @"model_name=""[^""]*"",?", "");
            string name = m.Groups[1].Value + (labels is "{}" or "" ? "" : labels);
            Assert.That(types.Any(t => m.Groups[1].Value.StartsWith(t, StringComparison.Ordinal)), $"{line}: no TYPE line before it");
            samples[name] = double.Parse(m.Groups[3].Value, System.Globalization.CultureInfo.InvariantCulture);
        }
        return samples;
    }
}
