using System.Text;
using System.Text.Json;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Serving.Constraints;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Server;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Tests.Serving;

/// <summary>
/// Guided tool calls (docs/serving.md, tool_choice): the JSON prefix validator, the token mask on a hand-made vocabulary,
/// and the engine on a synthetic model with the real Qwen3 vocabulary whose logits favour JSON punctuation (but leave
/// every token some mass), so that only the mask makes its answers well-formed calls.
/// </summary>
public class GuidedToolCallTests
{
    static bool Accepts(string text, bool objectOnly = false) => new JsonPrefixValidator(objectOnly).Push(Encoding.UTF8.GetBytes(text));

    static bool Complete(string text)
    {
        var v = new JsonPrefixValidator();
        return v.Push(Encoding.UTF8.GetBytes(text)) && v.IsComplete;
    }

    [TestCase("{")]
    [TestCase("{\"a\": [1, -2.5e+3, 0, 0.25E-2, true, false, null")]
    [TestCase("{\"k\\\"ey\": \"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9\\uD83D\\uDE00")]
    [TestCase("{\"caf\u00e9\": \"\u6f22\u5b57 \U0001F600")]
    [TestCase("[[[{\"a\": [{}, []]}]], ")]
    [TestCase("  {\n\t\"a\" :\r 1 ,\"b\":{ } ")]
    [TestCase("\"\\u00")]
    [TestCase("-")]
    [TestCase("-0.")]
    [TestCase("1e")]
    [TestCase("1e-")]
    [TestCase("nul")]
    public void Validator_AcceptsValidPrefixes(string prefix) => Assert.That(Accepts(prefix), Is.True, prefix);

    [TestCase("{a")]
    [TestCase("{\"a\" 1")]
    [TestCase("{\"a\": 1,}")]
    [TestCase("[1,]")]
    [TestCase("[01")]
    [TestCase("[1.,")]
    [TestCase("[1e]")]
    [TestCase("[-a")]
    [TestCase("[.5")]
    [TestCase("[+1")]
    [TestCase("\"\\x")]
    [TestCase("\"\\u12g")]
    [TestCase("[tru ")]
    [TestCase("[nulx")]
    [TestCase("{\"a\": 1}}")]
    [TestCase("{\"a\": 1]")]
    [TestCase("[1}")]
    [TestCase("{,")]
    [TestCase("\"line\nbreak")]
    [TestCase("{\"a\": 'x'")]
    [TestCase("{} x")]
    [TestCase("]")]
    public void Validator_RefusesInvalidPrefixes(string text) => Assert.That(Accepts(text), Is.False, text);

    [Test]
    public void Validator_RefusesMalformedUtf8InStrings()
    {
        static bool Bytes(params byte[] tail)
        {
            var v = new JsonPrefixValidator();
            return v.Push((byte)'"') && v.Push(tail);
        }
        Assert.That(Bytes(0xC3, 0xA9), Is.True, "é");
        Assert.That(Bytes(0xF0, 0x9F, 0x98), Is.True, "the start of an emoji (a token may end mid-character)");
        Assert.That(Bytes(0xC0, 0x80), Is.False, "overlong");
        Assert.That(Bytes(0xED, 0xA0, 0x80), Is.False, "a surrogate");
        Assert.That(Bytes(0xF4, 0x90, 0x80, 0x80), Is.False, "past U+10FFFF");
        Assert.That(Bytes(0x80), Is.False, "a lone continuation byte");
        Assert.That(Bytes(0xC3, 0x41), Is.False, "a lead byte without its continuation");
    }

    [Test]
    public void Validator_KnowsWhenAValueIsCompleteAndRefusesDeepNestingAndNonObjectsWhenAskedTo()
    {
        Assert.That(Complete("{\"a\": [1, {\"b\": null}], \"c\": \"\\u0041\"}"), Is.True);
        Assert.That(Complete("  -0.0e-0 "), Is.True);
        Assert.That(Complete("\"\u00e9\""), Is.True);
        Assert.That(Complete("{\"a\": [1, 2]"), Is.False);
        Assert.That(Complete("12"), Is.True, "a top-level number may end here");
        Assert.That(Complete("1."), Is.False);

        Assert.That(Accepts("{}", objectOnly: true), Is.True);
        Assert.That(Accepts("  {\"a\": [1]", objectOnly: true), Is.True);
        Assert.That(Accepts("[", objectOnly: true), Is.False);
        Assert.That(Accepts("\"x\"", objectOnly: true), Is.False);
        Assert.That(Accepts("1", objectOnly: true), Is.False);

        Assert.That(Accepts(new string('[', JsonPrefixValidator.MaxDepth)), Is.True);
        Assert.That(Accepts(new string('[', JsonPrefixValidator.MaxDepth + 1)), Is.False);
    }

    [Test]
    public void Validator_CopyFromCarriesOpenContainersAndStringState()
    {
        var a = new JsonPrefixValidator();
        Assert.That(a.Push("{\"a\": [{\"b\": \"x\\u00"u8), Is.True);
        var b = new JsonPrefixValidator();
        b.CopyFrom(a);
        Assert.That(b.Depth, Is.EqualTo(3));
        Assert.That(b.Push("e9\"}]}"u8) && b.IsComplete, Is.True);
        Assert.That(a.Push((byte)'"'), Is.False, "the original still wants two hex digits");
    }

    // A hand-made vocabulary: every id's bytes, and which are added tokens.
    static readonly (string Text, bool Added)[] Hand =
    [
        ("{", false), ("}", false), ("\"", false), ("\"a\"", false), (":", false), (" ", false), ("1", false), ("1.", false),   // 0..7
        ("true", false), ("}\n", false), ("</tool_call>", true), ("<|im_end|>", true), ("\"}", false), (",", false), ("x", false), ("", false), // 8..15
        ("{\"name\": \"get_", false), ("time\", \"arguments\": ", false), ("weather\", \"arguments\": {", false), ("{\"name\": \"other\", \"arguments\": ", false), // 16..19
        ("\n</tool_call>", false), ("\"", true),   // 20..21 (21: an added token spelled like a quote)
    ];

    static TokenVocabulary HandVocabulary() => new([.. Hand.Select(h => Encoding.UTF8.GetBytes(h.Text))], [.. Hand.Select(h => h.Added)]);

    static int[] Ids(params string[] texts) => [.. texts.Select(t => Array.FindIndex(Hand, h => h.Text == t && !h.Added))];

    static ToolCallConstraint After(GuidedToolCall call, params int[] tokens)
    {
        var c = new ToolCallConstraint(call, HandVocabulary());
        foreach (int t in tokens) Assert.That(c.Advance(t), Is.True, $"token {t} ('{Hand[t].Text}')");
        return c;
    }

    [Test]
    public void Mask_NamedCall_IsExactlyTheTokensThatKeepTheCallValid()
    {
        var named = new GuidedToolCall("f", ["f"]);
        Assert.That(After(named).AllowedTokens(), Is.EqualTo(Ids("{", " ", "{\"name\": \"get_", "{\"name\": \"other\", \"arguments\": ")),
            "the arguments start as an object (whose keys may be anything)");
        Assert.That(After(named, Ids("{")).AllowedTokens(), Is.EqualTo(Ids("}", "\"", "\"a\"", " ", "\"}")),
            "a key or the end; '}\\n' would close the arguments but not the call; added tokens never inside the arguments");
        Assert.That(After(named, Ids("{", "\"a\"")).AllowedTokens(), Is.EqualTo(Ids(":", " ")));
        Assert.That(After(named, Ids("{", "\"a\"", ":", " ", "1")).AllowedTokens(), Is.EqualTo(Ids("}", " ", "1", "1.", ",")));
        Assert.That(After(named, Ids("{", "}")).AllowedTokens(), Is.EqualTo(Ids("}", "}\n")), "the call's own closing brace");
        var tail = After(named, Ids("{", "}", "}\n"));
        Assert.That(tail.AllowedTokens(), Is.EqualTo(new[] { 10 }), "the </tool_call> token (added tokens are fine outside the arguments)");
        Assert.That(tail.IsComplete, Is.False);
        Assert.That(tail.Advance(10), Is.True);
        Assert.That(tail.IsComplete, Is.True);
        Assert.That(tail.AllowedTokens(), Is.Empty);

        Assert.That(After(named, Ids("{", "\"")).AllowedTokens(), Is.EqualTo(Ids("{", "}", "\"", ":", " ", "1", "1.", "true", ",", "x")),
            "inside a key: plain text, or the closing quote alone ('\"a\"' and '\"}' continue wrongly after it; '}\\n' holds a control character)");

        var alt = After(named, Ids("{", "}", "}"));
        Assert.That(alt.AllowedTokens(), Is.EqualTo(Ids("\n</tool_call>")));
        Assert.That(alt.Advance(11), Is.False, "<|im_end|> does not continue the call");
    }

    [Test]
    public void Mask_RequiredCall_NamesOnlyTheTools_AndMaskMatchesAllowedTokens()
    {
        var required = new GuidedToolCall(null, ["get_weather", "get_time"]);
        Assert.That(After(required).AllowedTokens(), Is.EqualTo(Ids("{", "{\"name\": \"get_")), "the header's start; an unknown tool's header and a space are refused");
        var get = After(required, Ids("{\"name\": \"get_"));
        Assert.That(get.AllowedTokens(), Is.EqualTo(Ids("time\", \"arguments\": ", "weather\", \"arguments\": {")), "the rest of either name, crossing into the arguments");
        var weather = After(required, Ids("{\"name\": \"get_", "weather\", \"arguments\": {"));
        Assert.That(weather.AllowedTokens(), Is.EqualTo(Ids("}", "\"", "\"a\"", " ", "\"}")));

        // Mask sets exactly the others to -inf, padded ids past the vocabulary included, and counts the allowed.
        var logits = new float[Hand.Length + 3];
        Array.Fill(logits, 1.5f);
        Assert.That(weather.Mask(logits), Is.EqualTo(5));
        var kept = Enumerable.Range(0, logits.Length).Where(i => !float.IsNegativeInfinity(logits[i])).ToArray();
        Assert.That(kept, Is.EqualTo(weather.AllowedTokens()));
        Assert.That(kept.All(i => logits[i] == 1.5f), Is.True, "allowed logits untouched");

        Assert.Throws<InvalidRequestException>(() => _ = new ToolCallConstraint(new GuidedToolCall(null, []), HandVocabulary()));
    }

    /// <summary>The tokens an independent byte-by-byte check allows after <paramref name="prefix"/> (a named call's
    /// arguments so far): a fresh validator runs the prefix and the token; once the object closes, the rest must follow
    /// the tail; added tokens never inside the arguments.</summary>
    static List<int> OracleAllowed(Qwen3Tokenizer tok, string prefix)
    {
        byte[] tail = Encoding.UTF8.GetBytes(GuidedToolCall.Tail), before = Encoding.UTF8.GetBytes(prefix);
        var check = new JsonPrefixValidator(objectOnly: true);
        Assert.That(check.Push(before), Is.True, prefix);
        bool inArguments = !check.IsComplete;
        var ids = new List<int>();
        for (int id = 0; id < tok.VocabSize; id++)
        {
            var bytes = tok.TokenBytes(id);
            if (bytes.IsEmpty || (tok.IsAddedToken(id) && inArguments)) continue;
            byte[] all = [.. before, .. bytes];
            var v = new JsonPrefixValidator(objectOnly: true);
            int i = 0;
            bool ok = true;
            while (ok && i < all.Length && !v.IsComplete) ok = v.Push(all[i++]);
            if (!ok) continue;
            int rest = all.Length - i;
            if (rest > tail.Length || !all.AsSpan(i).SequenceEqual(tail.AsSpan(0, rest))) continue;
            ids.Add(id);
        }
        return ids;
    }

    [TestCase("")]
    [TestCase("{")]
    [TestCase("{\"city\": \"Par")]
    [TestCase("{\"k\": \"a\\")]
    [TestCase("{\"a\": 12")]
    [TestCase("{\"a\": [1, {\"b\": tr")]
    [TestCase("{\"a\": \"x\"}")]
    public void Mask_OnTheRealVocabulary_EqualsAnIndependentByteByByteCheck(string arguments)
    {
        var tok = RealTokenizer();
        var c = new ToolCallConstraint(new GuidedToolCall("f", ["f"]), TokenVocabulary.For(tok));
        foreach (int t in tok.Encode(arguments, parseAddedTokens: false)) Assert.That(c.Advance(t), Is.True, $"token {t} of '{arguments}'");
        var logits = new float[tok.VocabSize + 100];
        int allowed = c.Mask(logits);
        var kept = Enumerable.Range(0, logits.Length).Where(i => !float.IsNegativeInfinity(logits[i])).ToList();
        var expected = OracleAllowed(tok, arguments);
        Assert.That(kept, Is.EqualTo(expected));
        Assert.That(allowed, Is.EqualTo(expected.Count));
        Assert.That(expected, Is.Not.Empty);
    }

    // ---- the engine, on a synthetic model with the real vocabulary ----

    /// <summary>
    /// Logits: every token gets a pseudo-random value in [-6, -4) from (position, id); JSON punctuation and a few words get
    /// +10 to +12 on top (closers most). Sampled, the model writes JSON-ish text with an occasional arbitrary token; only the
    /// mask turns that into a well-formed call.
    /// </summary>
    sealed class JsonishModel(int vocabSize, int contextLength, IReadOnlyDictionary<int, float> favoured) : ICausalLanguageModel
    {
        readonly CounterSampler _sampler = new();
        public int VocabSize => vocabSize;
        public int ContextLength => contextLength;
        public int MaxSequences => 8;
        public int MaxStepRows => 8 * contextLength;
        public int MaxOutputRows => 8;
        public int MaxPenaltyEntries => 1 << 16;
        public KvPageTable Kv { get; } = new(8 * contextLength + 1, 1, 8, contextLength);

        public void Step(StepBatch batch)
        {
            batch.Prepare(vocabSize, contextLength, MaxStepRows, MaxOutputRows, Kv);
            batch.ReservePages(Kv);
            var logits = new float[vocabSize];
            for (int r = 0; r < batch.Count; r++)
            {
                if (batch.Output(r) == StepOutput.None) continue;
                uint h = (uint)batch.Position(r) * 2654435761u + (uint)batch.Token(r) * 40503u;
                for (int i = 0; i < vocabSize; i++)
                {
                    h = h * 1664525u + 1013904223u;
                    logits[i] = -6f + 2f * (h >> 8) / (1 << 24);
                }
                foreach (var (id, bias) in favoured) logits[id] += bias;
                if (batch.Output(r) == StepOutput.Logits) logits.CopyTo(batch.LogitsBuffer(r));
                else batch.SetSampled(batch.OutputIndex(r), _sampler.Sample(logits, batch.Sampling(r), (ulong)batch.Position(r) + 1));
            }
            batch.AdvanceSequences(Kv);
        }

        public void Dispose() { }
    }

    static string RealTokenizerDir()
    {
        string? dir = SyntheticCheckpoint.FindTokenizerDir(AppContext.BaseDirectory);
        if (dir is null) Assert.Ignore("the real Qwen3 tokenizer is not installed in .cache (run .ci/setup)");
        return dir!;
    }

    static Qwen3Tokenizer RealTokenizer() => Qwen3Tokenizer.FromModelDirectory(RealTokenizerDir());

    static Engine JsonishEngine(Qwen3Tokenizer tok, ChatTemplate? template = null)
    {
        var favoured = new Dictionary<int, float>();
        void Favour(string text, float bias)
        {
            var ids = tok.Encode(text);
            if (ids.Length == 1) favoured[ids[0]] = bias;
        }
        foreach (var t in new[] { "}", "]", "\"", "\"}", "\"]" }) Favour(t, 12f);
        foreach (var t in new[] { ",", ":", " ", "1", "0", ".", "true", "null", "\"a", "\"b", "\":", " \"", "\\", "e", "-", "x" }) Favour(t, 11f);
        foreach (var t in new[] { "{", "[", "{\"", "<|im_end|>", "</tool_call>", "<tool_call>" }) Favour(t, 10f);
        var model = new JsonishModel(tok.VocabSize + 64, 512, favoured);   // padded rows past the tokenizer, as real checkpoints have
        return new Engine(model, tok, template, Engine.DefaultEosTokenIds(tok, null), new EngineOptions { MaxNumSeqs = 8, ModelName = "jsonish" });
    }

    static readonly SamplingOptions[] Settings =
    [
        new() { Temperature = 1f, TopK = 0, TopP = 1f, MinP = 0f },
        new() { Temperature = 0.7f, TopK = 40, TopP = 1f, MinP = 0f },
        new() { Temperature = 1.3f, TopK = 0, TopP = 0.9f, MinP = 0.02f },
    ];

    static readonly string[] Tools = ["get_weather", "get_time", "search_web"];

    [Test, CancelAfter(300_000)]
    public async Task Engine_NamedAndRequiredCalls_AreWellFormedForEverySeedAndSetting()
    {
        var tok = RealTokenizer();
        await using var engine = JsonishEngine(tok);
        string opening = "<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n<tool_call>\n";
        var named = tok.Encode(opening + GuidedToolCall.Header("get_weather"));
        var required = tok.Encode(opening);

        var runs = new List<(string Kind, ulong Seed, int Setting, Task<RequestResult> Result)>();
        for (int s = 0; s < Settings.Length; s++)
            for (ulong seed = 1; seed <= 3; seed++)
            {
                var sampling = Settings[s] with { Seed = seed };
                RequestOptions Options(string? name) => new() { Sampling = sampling, MaxNewTokens = 400, ParseToolCalls = false, ToolCall = new GuidedToolCall(name, Tools) };
                runs.Add(("named", seed, s, engine.CompleteAsync(named, Options("get_weather"))));
                runs.Add(("required", seed, s, engine.CompleteAsync(required, Options(null))));
            }

        var names = new HashSet<string>();
        int nonTrivial = 0;
        foreach (var (kind, seed, setting, task) in runs)
        {
            var r = await task;
            string at = $"{kind}, seed {seed}, setting {setting}: {r.Content}";
            Assert.That(r.FinishReason, Is.EqualTo(FinishReason.Stop), at);
            Assert.That(r.Content, Does.EndWith(GuidedToolCall.Tail), at);
            string call = r.Content[..^"\n</tool_call>".Length];
            if (kind == "named") call = GuidedToolCall.Header("get_weather") + call;
            using var doc = JsonDocument.Parse(call);   // throws when the call is not JSON
            var root = doc.RootElement;
            Assert.That(root.ValueKind, Is.EqualTo(JsonValueKind.Object), at);
            string name = root.GetProperty("name").GetString()!;
            Assert.That(Tools, Does.Contain(name), at);
            if (kind == "named") Assert.That(name, Is.EqualTo("get_weather"), at);
            else names.Add(name);
            var arguments = root.GetProperty("arguments");
            Assert.That(arguments.ValueKind, Is.EqualTo(JsonValueKind.Object), at);
            Assert.That(root.EnumerateObject().Select(p => p.Name), Is.EqualTo(new[] { "name", "arguments" }), at);
            if (arguments.EnumerateObject().Any()) nonTrivial++;
            Assert.That(r.Tokens, Has.None.EqualTo(tok.TokenToId("<|im_end|>")), at);
        }
        Assert.That(nonTrivial, Is.GreaterThan(0), "some calls have arguments (not all '{}')");
        Assert.That(engine.Metrics.KvPagesUsed, Is.EqualTo(0));
    }

    [Test, CancelAfter(300_000)]
    public async Task Server_ToolChoiceNamedAndRequired_ReturnToolCallsWhoseArgumentsParse_WholeAndStreamed()
    {
        string dir = RealTokenizerDir();
        var tok = Qwen3Tokenizer.FromModelDirectory(dir);
        await using var engine = JsonishEngine(tok, ChatTemplate.FromModelDirectory(dir));
        var server = await OpenAiServer.StartAsync(new EngineBackend(engine, dir), new ServerOptions { Host = "127.0.0.1", Port = 0 });
        await using var owned = server;
        using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromSeconds(240) };
        const string tools = """[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}, {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}]""";
        const string named = """{"type": "function", "function": {"name": "get_time"}}""";

        foreach (var (choice, seed) in new[] { (named, 7), ("\"required\"", 7), (named, 8), ("\"required\"", 9) })
        {
            string body = $$"""{"messages": [{"role": "user", "content": "Time in Oslo?"}], "tools": {{tools}}, "tool_choice": {{choice}}, "temperature": 1.0, "top_p": 0.95, "seed": {{seed}}, "max_tokens": 300""";
            string at = $"tool_choice {choice}, seed {seed}";

            var whole = await http.PostAsync("/v1/chat/completions", new StringContent(body + "}", Encoding.UTF8, "application/json"));
            var json = JsonDocument.Parse(await whole.Content.ReadAsStringAsync()).RootElement;
            Assert.That(whole.IsSuccessStatusCode, Is.True, json.ToString());
            var c = json.GetProperty("choices")[0];
            Assert.That(c.GetProperty("finish_reason").GetString(), Is.EqualTo("tool_calls"), $"{at}: {c}");
            var call = c.GetProperty("message").GetProperty("tool_calls")[0].GetProperty("function");
            string name = call.GetProperty("name").GetString()!;
            if (choice == named) Assert.That(name, Is.EqualTo("get_time"), at);
            else Assert.That(name, Is.AnyOf("get_weather", "get_time"), at);
            string arguments = call.GetProperty("arguments").GetString()!;
            using (var parsed = JsonDocument.Parse(arguments)) Assert.That(parsed.RootElement.ValueKind, Is.EqualTo(JsonValueKind.Object), $"{at}: {arguments}");

            // Streamed with the same seed: the same call, its arguments concatenated from the deltas.
            var streamed = await http.PostAsync("/v1/chat/completions", new StringContent(body + ", \"stream\": true}", Encoding.UTF8, "application/json"));
            var events = (await streamed.Content.ReadAsStringAsync()).Split("\n").Where(l => l.StartsWith("data: ", StringComparison.Ordinal) && l != "data: [DONE]")
                .Select(l => JsonDocument.Parse(l["data: ".Length..]).RootElement.GetProperty("choices")[0]).ToList();
            var deltas = events.Where(e => e.GetProperty("delta").TryGetProperty("tool_calls", out _)).Select(e => e.GetProperty("delta").GetProperty("tool_calls")[0].GetProperty("function")).ToList();
            Assert.That(deltas[0].GetProperty("name").GetString(), Is.EqualTo(name), at);
            Assert.That(string.Concat(deltas.Select(d => d.GetProperty("arguments").GetString())), Is.EqualTo(arguments), at);
            Assert.That(events[^1].GetProperty("finish_reason").GetString(), Is.EqualTo("tool_calls"), at);
        }
        Assert.That(engine.Metrics.KvPagesUsed, Is.EqualTo(0));
    }
}
