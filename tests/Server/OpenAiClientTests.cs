using System.Text.Json;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Server;
using Qwen3Cuda.Tests.Cli;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Server;

/// <summary>
/// The server driven by the official OpenAI client (the openai npm package, tests/Server/openai-client.cjs) on loopback:
/// over the scripted engine (reasoning split, tool calls whole and streamed, the tool round trip, errors as the client
/// raises them), and over the real <see cref="Engine"/> on the demo checkpoint (random weights, the real Qwen3 tokenizer and
/// chat template) on the CPU reference: whole and streamed chat agree, usage, completions, a prompt beyond the context,
/// and a client that aborts mid-stream.
/// </summary>
[TestFixture, NonParallelizable, CancelAfter(120_000)]
public sealed class OpenAiClientTests
{
    string? _oldCache;

    [OneTimeSetUp] public void SaveCache() => _oldCache = Environment.GetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable);
    [OneTimeTearDown] public void RestoreCache() => Environment.SetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable, _oldCache);

    static string Script => Path.Combine(TextTestSupport.TextTestsDir, "..", "Server", "openai-client.cjs");

    static JsonElement RunClient(Uri address, string apiKey, string scenario)
    {
        if (!File.Exists(Path.Combine(TextTestSupport.NodeModules, "openai", "package.json")))
            Assert.Ignore($"the openai npm package is not in {TextTestSupport.NodeModules}: run `bash .ci/setup`");
        string output = TextTestSupport.RunNode(Script, TimeSpan.FromSeconds(90), TextTestSupport.NodeModules, new Uri(address, "v1").ToString(), apiKey, scenario);
        return JsonDocument.Parse(output).RootElement.Clone();
    }

    [Test]
    public async Task OpenAiClient_ScriptedEngine_ReasoningToolCallsRoundTripAndErrors()
    {
        var engine = new ScriptedEngine
        {
            Script =
            [
                new(PieceKind.Reasoning, "Paris, "), new(PieceKind.Reasoning, "so call the tool."),
                new(PieceKind.ToolCall, "") { ToolCall = new ToolCall("call_0d1e2f", "get_weather", "{\"city\": \"Paris\"}") },
            ],
            Finish = FinishReason.ToolCalls,
        };
        var (server, _) = await ServerWireTests.Start(engine, new ServerOptions { ApiKey = "k" });
        await using var owned = server;
        var r = await Task.Run(() => RunClient(server.Address, "k", "scripted"));

        var whole = r.GetProperty("whole");
        Assert.That(whole.GetProperty("message").GetProperty("reasoning_content").GetString(), Is.EqualTo("Paris, so call the tool."));
        Assert.That(whole.GetProperty("message").GetProperty("content").ValueKind, Is.EqualTo(JsonValueKind.Null));
        var call = whole.GetProperty("message").GetProperty("tool_calls")[0];
        Assert.That(call.GetProperty("id").GetString(), Is.EqualTo("call_0d1e2f"));
        Assert.That(call.GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(JsonDocument.Parse(call.GetProperty("function").GetProperty("arguments").GetString()!).RootElement.GetProperty("city").GetString(), Is.EqualTo("Paris"));
        Assert.That(whole.GetProperty("finish").GetString(), Is.EqualTo("tool_calls"));
        Assert.That(whole.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(3));

        var stream = r.GetProperty("stream");
        Assert.That(stream.GetProperty("role").GetString(), Is.EqualTo("assistant"));
        Assert.That(stream.GetProperty("reasoning").GetString(), Is.EqualTo("Paris, so call the tool."));
        Assert.That(stream.GetProperty("content").GetString(), Is.Empty);
        Assert.That(stream.GetProperty("toolCalls")[0].GetProperty("id").GetString(), Is.EqualTo("call_0d1e2f"));
        Assert.That(stream.GetProperty("toolCalls")[0].GetProperty("arguments").GetString(), Is.EqualTo("{\"city\": \"Paris\"}"));
        Assert.That(stream.GetProperty("finish").GetString(), Is.EqualTo("tool_calls"));
        Assert.That(stream.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(whole.GetProperty("usage").GetProperty("prompt_tokens").GetInt32()));

        // The round trip reached the chat template as the assistant's tool call and the tool's answer.
        var third = engine.Rendered.ElementAt(2).Messages;
        Assert.That(third.Select(m => m.Role), Is.EqualTo(new[] { "user", "assistant", "tool" }));
        var sent = third[1].ToolCalls!.Value[0];
        Assert.That(sent.GetProperty("id").GetString(), Is.EqualTo("call_0d1e2f"));
        Assert.That(sent.GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(third[2].Content, Is.EqualTo("{\"temperature_c\":21}"));
        Assert.That(r.GetProperty("models")[0].GetString(), Is.EqualTo("scripted"));

        void Error(string name, int status, string? param)
        {
            var e = r.GetProperty(name);
            Assert.That(e.GetProperty("status").GetInt32(), Is.EqualTo(status), e.ToString());
            if (param != null) Assert.That(e.GetProperty("param").GetString(), Is.EqualTo(param), e.ToString());
        }
        Error("badTopP", 400, "top_p");
        Error("badRole", 400, "messages[0].role");
        Error("unknownModel", 404, "model");
        Error("noKey", 401, null);
    }

    [Test]
    public async Task OpenAiClient_SeesOversizeQueueFullAndShutdownAs413_429_503WithRetryAfter()
    {
        var (tooLarge, _) = await ServerWireTests.Start(new ScriptedEngine(), new ServerOptions { MaxBodyBytes = 1000 });
        var (queueFull, _) = await ServerWireTests.Start(new ScriptedEngine { SubmitThrows = new EngineOverloadedException("the waiting queue is full") });
        var (shuttingDown, _) = await ServerWireTests.Start(new ScriptedEngine { SubmitThrows = new EngineShutDownException("the engine is shutting down") });
        await using var a = tooLarge;
        await using var b = queueFull;
        await using var c = shuttingDown;
        string urls = string.Join(",", new[] { ("tooLarge", tooLarge), ("queueFull", queueFull), ("shuttingDown", shuttingDown) }
            .Select(p => $"{p.Item1}={new Uri(p.Item2.Address, "v1")}"));
        if (!File.Exists(Path.Combine(TextTestSupport.NodeModules, "openai", "package.json")))
            Assert.Ignore($"the openai npm package is not in {TextTestSupport.NodeModules}: run `bash .ci/setup`");
        var r = JsonDocument.Parse(await Task.Run(() => TextTestSupport.RunNode(Script, TimeSpan.FromSeconds(60), TextTestSupport.NodeModules, urls, "k", "statuses"))).RootElement;
        Assert.That(r.GetProperty("tooLarge").GetProperty("status").GetInt32(), Is.EqualTo(413), r.ToString());
        Assert.That(r.GetProperty("queueFull").GetProperty("status").GetInt32(), Is.EqualTo(429), r.ToString());
        Assert.That(r.GetProperty("queueFull").GetProperty("type").GetString(), Is.EqualTo("rate_limit_error"));
        Assert.That(r.GetProperty("queueFull").GetProperty("retryAfter").GetString(), Is.EqualTo("1"));
        Assert.That(r.GetProperty("shuttingDown").GetProperty("status").GetInt32(), Is.EqualTo(503), r.ToString());
        Assert.That(r.GetProperty("shuttingDown").GetProperty("retryAfter").GetString(), Is.EqualTo("1"));
    }

    [Test]
    public async Task OpenAiClient_DemoModelOnCpu_WholeAndStreamedAgree_UsageErrorsAndAbort()
    {
        CliModels.UseTestModelCache();
        string dir = ModelLocator.EnsureDemo();
        await using var engine = await Engine.LoadAsync(dir, new EngineOptions { Device = "cpu", ContextLength = 512, MaxNumSeqs = 4, ModelName = "demo" });
        var server = await OpenAiServer.StartAsync(new EngineBackend(engine, dir), new ServerOptions { Host = "127.0.0.1", Port = 0 });
        await using var owned = server;
        var r = await Task.Run(() => RunClient(server.Address, "unused", "real"));

        var whole = r.GetProperty("whole");
        var stream = r.GetProperty("stream");
        Assert.That(whole.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.InRange(1, 8));
        Assert.That(stream.GetProperty("content").GetString(), Is.EqualTo(whole.GetProperty("content").GetString()),
            "greedy: the streamed answer is the whole answer, piece by piece");
        Assert.That(stream.GetProperty("finish").GetString(), Is.EqualTo(whole.GetProperty("finish").GetString()));
        Assert.That(stream.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(whole.GetProperty("usage").GetProperty("completion_tokens").GetInt32()));
        int prompt = whole.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        var chatIds = engine.RenderChat([new("system", "You are terse."), new("user", "Name three colours.")], new RequestOptions { EnableThinking = false });
        Assert.That(prompt, Is.EqualTo(chatIds.Count), "prompt_tokens counts the rendered chat template");
        Assert.That(stream.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32(), Is.InRange(0, prompt));

        var completion = r.GetProperty("completion");
        Assert.That(completion.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(engine.Tokenizer.Encode("Once upon a time").Length));
        Assert.That(completion.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.InRange(1, 5));

        // A named tool_choice: the call's start is in the prompt (after an empty think block: thinking was left on), the
        // random model's continuation is read back as get_weather's arguments.
        var forced = r.GetProperty("forced");
        var forcedCall = forced.GetProperty("message").GetProperty("tool_calls")[0];
        Assert.That(forcedCall.GetProperty("function").GetProperty("name").GetString(), Is.EqualTo("get_weather"));
        Assert.That(forcedCall.GetProperty("id").GetString(), Does.StartWith("call_"));
        Assert.That(forced.GetProperty("finish").GetString(), Is.AnyOf("length", "tool_calls"));
        var weatherIds = engine.RenderChat([new("user", "Weather in Paris?")], new RequestOptions { Tools = JsonDocument.Parse(
            """[{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]""").RootElement });
        int prefill = engine.Tokenizer.Encode("<think>\n\n</think>\n\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ").Length;
        Assert.That(forced.GetProperty("usage").GetProperty("prompt_tokens").GetInt32(), Is.EqualTo(weatherIds.Count + prefill));

        var tooLong = r.GetProperty("tooLong");
        Assert.That(tooLong.GetProperty("status").GetInt32(), Is.EqualTo(400));
        Assert.That(tooLong.GetProperty("code").GetString(), Is.EqualTo("context_length_exceeded"));
        Assert.That(tooLong.GetProperty("message").GetString(), Does.Contain("512"));

        Assert.That(r.GetProperty("abortedAfter").GetInt32(), Is.EqualTo(2));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while ((engine.Metrics.Running > 0 || engine.Metrics.Waiting > 0) && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.That(engine.Metrics.Running + engine.Metrics.Waiting, Is.EqualTo(0), "the aborted request was freed");
        long generated = engine.Metrics.GeneratedTokens;
        await Task.Delay(300);
        Assert.That(engine.Metrics.GeneratedTokens, Is.EqualTo(generated), "nothing runs after the abort");
        Assert.That(generated, Is.LessThan(8 + 8 + 5 + 400), "the aborted request stopped short of its 400 tokens");
    }
}
