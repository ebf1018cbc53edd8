using System.Globalization;
using System.Text.Json;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Serving.Constraints;
using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Server;

/// <summary>A chat or completion request, checked field by field (each error names its field, OpenAI style).</summary>
public sealed record ParsedRequest
{
    public string? Model { get; init; }
    public bool Stream { get; init; }
    public bool IncludeUsage { get; init; }
    /// <summary>Choices to generate (n); choice i samples with seed + i.</summary>
    public int N { get; init; } = 1;
    /// <summary>The engine options of choice 0 (its seed is <see cref="Seed"/>).</summary>
    public RequestOptions Options { get; init; } = new();
    public ulong Seed { get; init; }
    /// <summary>Logprobs asked for (chat: logprobs true; completions: logprobs N).</summary>
    public bool Logprobs { get; init; }
    /// <summary>max_tokens / max_completion_tokens as given (null: up to the context).</summary>
    public int? MaxTokens { get; init; }
    // chat
    public IReadOnlyList<ChatMessage> Messages { get; init; } = [];
    // completions: one prompt (text or token ids) per entry
    public IReadOnlyList<object> Prompts { get; init; } = [];
    public bool Echo { get; init; }
    /// <summary>tool_choice "required" (any tool) or a named function: the answer is made to start a call (see docs/serving.md).</summary>
    public ForcedToolCall? ForcedTool { get; init; }
}

/// <summary>A tool call the request forces: <see cref="Name"/> null for "required" (the model picks the tool).</summary>
public sealed record ForcedToolCall(string? Name);

/// <summary>
/// Reads the JSON bodies of POST /v1/chat/completions and /v1/completions into <see cref="ParsedRequest"/>: the fields of
/// OpenAI's API (and vLLM's extensions top_k, min_p, repetition_penalty, ignore_eos, stop_token_ids, chat_template_kwargs).
/// Unknown fields are ignored, as vLLM does. Ranges follow OpenAI's documentation (docs/serving.md lists them).
/// </summary>
public static class RequestParser
{
    static readonly string[] Roles = ["system", "developer", "user", "assistant", "tool"];
    /// <summary>Where Qwen's tool call ends; a forced call stops there.</summary>
    public const string ToolCallEnd = "</tool_call>";

    public static ParsedRequest ParseChat(JsonElement root, IServingEngine engine)
    {
        RequireObject(root);
        var messages = ParseMessages(Prop(root, "messages") ?? throw ApiException.BadRequest("messages", "'messages' is required: a list of {role, content} objects", "missing_required_parameter"));
        bool? thinking = null;
        if (Prop(root, "chat_template_kwargs") is { } kw)
        {
            if (kw.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("chat_template_kwargs", "'chat_template_kwargs' must be an object, e.g. {\"enable_thinking\": false}");
            if (Prop(kw, "enable_thinking") is { } et) thinking = Bool(et, "chat_template_kwargs.enable_thinking");
        }
        var tools = ParseTools(root);
        var choice = ParseToolChoice(root, tools);
        bool logprobs = Prop(root, "logprobs") is { } lp && Bool(lp, "logprobs");
        int? top = Prop(root, "top_logprobs") is { } tl ? Int(tl, "top_logprobs", 0, 20) : null;
        if (top is not null && !logprobs) throw ApiException.BadRequest("top_logprobs", "'top_logprobs' needs 'logprobs': true");
        int? max = MaxTokens(root, "max_completion_tokens") ?? MaxTokens(root, "max_tokens");
        var common = Common(root, engine, thinking ?? true, max);
        var options = common.Options with
        {
            EnableThinking = thinking,
            Tools = choice == "none" ? null : tools,
            ParseToolCalls = tools is not null && choice != "none",
            TopLogprobs = logprobs ? top ?? 0 : -1,
        };
        ForcedToolCall? forced = choice switch { "required" => new ForcedToolCall(null), ['=', .. var name] => new ForcedToolCall(name), _ => null };
        if (forced is not null)
        {
            // Guided decoding: the engine masks every token that would not continue the call (docs/serving.md, tool_choice).
            var names = tools!.Value.EnumerateArray().Select(t => t.GetProperty("function").GetProperty("name").GetString()!).ToList();
            options = options with { ParseToolCalls = false, Stop = [.. options.Stop, ToolCallEnd], ToolCall = new GuidedToolCall(forced.Name, names) };
        }
        return common with { Messages = messages, Options = options, Logprobs = logprobs, ForcedTool = forced };
    }

    public static ParsedRequest ParseCompletion(JsonElement root, IServingEngine engine)
    {
        RequireObject(root);
        var prompt = Prop(root, "prompt") ?? throw ApiException.BadRequest("prompt", "'prompt' is required: a string, a list of strings, or token ids", "missing_required_parameter");
        var prompts = new List<object>();
        switch (prompt.ValueKind)
        {
            case JsonValueKind.String: prompts.Add(prompt.GetString()!); break;
            case JsonValueKind.Array when prompt.GetArrayLength() > 0 && prompt[0].ValueKind == JsonValueKind.Number:
                prompts.Add(TokenIds(prompt, "prompt", engine.VocabSize)); break;
            case JsonValueKind.Array when prompt.GetArrayLength() > 0:
                int i = 0;
                foreach (var p in prompt.EnumerateArray())
                {
                    if (p.ValueKind == JsonValueKind.String) prompts.Add(p.GetString()!);
                    else if (p.ValueKind == JsonValueKind.Array) prompts.Add(TokenIds(p, $"prompt[{i}]", engine.VocabSize));
                    else throw ApiException.BadRequest($"prompt[{i}]", "each prompt must be a string or a list of token ids");
                    i++;
                }
                break;
            default: throw ApiException.BadRequest("prompt", "'prompt' must be a non-empty string, list of strings, or list of token ids");
        }
        int? logprobs = Prop(root, "logprobs") is { ValueKind: not JsonValueKind.Null } lp ? Int(lp, "logprobs", 0, 20) : null;
        bool echo = Prop(root, "echo") is { } e && Bool(e, "echo");
        if (echo) throw ApiException.BadRequest("echo", "'echo' is not supported by this server", "unsupported_parameter");
        if (Prop(root, "suffix") is { ValueKind: JsonValueKind.String }) throw ApiException.BadRequest("suffix", "'suffix' is not supported by this server", "unsupported_parameter");
        if (Prop(root, "best_of") is { ValueKind: JsonValueKind.Number } bo && bo.GetDouble() != 1) throw ApiException.BadRequest("best_of", "'best_of' other than 1 is not supported by this server", "unsupported_parameter");
        var common = Common(root, engine, thinking: false, MaxTokens(root, "max_tokens") ?? 16);
        return common with
        {
            Prompts = prompts,
            Logprobs = logprobs is not null,
            Options = common.Options with { TopLogprobs = logprobs ?? -1, ParseToolCalls = false },
        };
    }

    /// <summary>The fields chat and completions share.</summary>
    static ParsedRequest Common(JsonElement root, IServingEngine engine, bool thinking, int? maxTokens)
    {
        // Fields that would change the answer and that this server cannot honour are refused, not ignored.
        if (Prop(root, "response_format") is { ValueKind: JsonValueKind.Object } rf && Prop(rf, "type") is { ValueKind: JsonValueKind.String } rft && rft.GetString() != "text")
            throw ApiException.BadRequest("response_format", $"'response_format' type '{rft.GetString()}' needs constrained decoding, which this server does not have; leave it out or use 'text'", "unsupported_parameter");
        if (Prop(root, "logit_bias") is { ValueKind: JsonValueKind.Object } lb && lb.EnumerateObject().Any())
            throw ApiException.BadRequest("logit_bias", "'logit_bias' is not supported by this server", "unsupported_parameter");
        foreach (var legacy in new[] { "functions", "function_call" })
            if (Prop(root, legacy) is { ValueKind: not JsonValueKind.Null })
                throw ApiException.BadRequest(legacy, $"'{legacy}' (the deprecated function-calling API) is not supported; use 'tools' and 'tool_choice'", "unsupported_parameter");
        string? model = Prop(root, "model") is { } m ? Str(m, "model") : null;
        bool stream = Prop(root, "stream") is { } s && Bool(s, "stream");
        bool includeUsage = false;
        if (Prop(root, "stream_options") is { ValueKind: not JsonValueKind.Null } so)
        {
            if (!stream) throw ApiException.BadRequest("stream_options", "'stream_options' is only allowed when 'stream' is true");
            if (so.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest("stream_options", "'stream_options' must be an object");
            if (Prop(so, "include_usage") is { } iu) includeUsage = Bool(iu, "stream_options.include_usage");
        }
        int n = Prop(root, "n") is { } nn ? Int(nn, "n", 1, 128) : 1;
        var d = engine.DefaultSampling(thinking);
        float? temperature = Float(root, "temperature", 0, 2, closedLow: true);
        var sampling = d with
        {
            Temperature = temperature ?? d.Temperature,
            TopP = Float(root, "top_p", 0, 1, closedLow: false) ?? d.TopP,
            TopK = Prop(root, "top_k") is { } tk ? Math.Max(0, Int(tk, "top_k", -1, int.MaxValue)) : d.TopK,
            MinP = Float(root, "min_p", 0, 1, closedLow: true) ?? d.MinP,
            PresencePenalty = 0,
            RepetitionPenalty = 1,
        };
        float presence = Float(root, "presence_penalty", -2, 2, closedLow: true) ?? 0;
        float frequency = Float(root, "frequency_penalty", -2, 2, closedLow: true) ?? 0;
        float repetition = 1;
        if (Prop(root, "repetition_penalty") is { ValueKind: not JsonValueKind.Null } rp)
        {
            repetition = (float)Number(rp, "repetition_penalty");
            if (!(repetition > 0) || !float.IsFinite(repetition)) throw ApiException.BadRequest("repetition_penalty", $"'repetition_penalty' must be > 0 (1 = off), got {G(repetition)}");
        }
        else repetition = d.RepetitionPenalty;
        ulong seed;
        if (Prop(root, "seed") is { ValueKind: not JsonValueKind.Null } sd)
        {
            if (sd.ValueKind != JsonValueKind.Number || !sd.TryGetInt64(out long sv)) throw ApiException.BadRequest("seed", "'seed' must be an integer");
            seed = unchecked((ulong)sv);
        }
        else seed = (ulong)Random.Shared.NextInt64(0, 1L << 53);
        var stop = new List<string>();
        if (Prop(root, "stop") is { ValueKind: not JsonValueKind.Null } st)
        {
            if (st.ValueKind == JsonValueKind.String) { if (st.GetString()!.Length > 0) stop.Add(st.GetString()!); }
            else if (st.ValueKind == JsonValueKind.Array)
            {
                int i = 0;
                foreach (var x in st.EnumerateArray())
                {
                    if (x.ValueKind != JsonValueKind.String) throw ApiException.BadRequest($"stop[{i}]", "'stop' must be a string or a list of strings");
                    if (x.GetString()!.Length > 0) stop.Add(x.GetString()!);
                    i++;
                }
            }
            else throw ApiException.BadRequest("stop", "'stop' must be a string or a list of strings");
        }
        var stopIds = Prop(root, "stop_token_ids") is { ValueKind: JsonValueKind.Array } sti ? TokenIds(sti, "stop_token_ids", engine.VocabSize, allowEmpty: true) : [];
        bool ignoreEos = Prop(root, "ignore_eos") is { } ie && Bool(ie, "ignore_eos");
        var options = new RequestOptions
        {
            Sampling = sampling with { Seed = seed },
            MaxNewTokens = maxTokens,
            Stop = stop,
            StopTokenIds = stopIds,
            IgnoreEos = ignoreEos,
            PresencePenalty = presence,
            FrequencyPenalty = frequency,
            RepetitionPenalty = repetition,
        };
        return new ParsedRequest { Model = model, Stream = stream, IncludeUsage = includeUsage, N = n, Options = options, Seed = seed, MaxTokens = maxTokens };
    }

    static int? MaxTokens(JsonElement root, string name) =>
        Prop(root, name) is { ValueKind: not JsonValueKind.Null } v ? Int(v, name, 1, int.MaxValue) : null;

    static List<ChatMessage> ParseMessages(JsonElement messages)
    {
        if (messages.ValueKind != JsonValueKind.Array || messages.GetArrayLength() == 0)
            throw ApiException.BadRequest("messages", "'messages' must be a non-empty list of {role, content} objects");
        var list = new List<ChatMessage>();
        int i = 0;
        foreach (var m in messages.EnumerateArray())
        {
            string at = $"messages[{i}]";
            if (m.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest(at, $"'{at}' must be an object with 'role' and 'content'");
            string role = Prop(m, "role") is { } r ? Str(r, at + ".role") : throw ApiException.BadRequest(at + ".role", $"'{at}.role' is required", "missing_required_parameter");
            if (!Roles.Contains(role))
                throw ApiException.BadRequest(at + ".role", $"'{at}.role' is '{role}'; it must be one of system, developer, user, assistant, tool");
            if (role == "developer") role = "system";
            string content = Content(Prop(m, "content"), at + ".content", nullable: role == "assistant");
            string? reasoning = null;
            if (role == "assistant")
                foreach (var name in new[] { "reasoning_content", "reasoning" })
                    if (Prop(m, name) is { ValueKind: not JsonValueKind.Null } rc) { reasoning = Str(rc, $"{at}.{name}"); break; }
            JsonElement? toolCalls = null;
            if (Prop(m, "tool_calls") is { ValueKind: not JsonValueKind.Null } tc)
            {
                if (role != "assistant") throw ApiException.BadRequest(at + ".tool_calls", $"'{at}.tool_calls' is only allowed on assistant messages");
                toolCalls = ParseAssistantToolCalls(tc, at + ".tool_calls");
            }
            list.Add(new ChatMessage(role, content, reasoning) { ToolCalls = toolCalls });
            i++;
        }
        return list;
    }

    /// <summary>Content as a string: a string, null (assistant with tool calls), or a list of text parts (joined).</summary>
    static string Content(JsonElement? content, string at, bool nullable)
    {
        switch (content)
        {
            case null or { ValueKind: JsonValueKind.Null } when nullable: return "";
            case null or { ValueKind: JsonValueKind.Null }: throw ApiException.BadRequest(at, $"'{at}' is required", "missing_required_parameter");
            case { ValueKind: JsonValueKind.String } s: return s.GetString()!;
            case { ValueKind: JsonValueKind.Array } parts:
                var text = new System.Text.StringBuilder();
                int j = 0;
                foreach (var p in parts.EnumerateArray())
                {
                    string pat = $"{at}[{j}]";
                    string type = p.ValueKind == JsonValueKind.Object && Prop(p, "type") is { ValueKind: JsonValueKind.String } t ? t.GetString()! : throw ApiException.BadRequest(pat, $"'{pat}' must be an object with a 'type'");
                    if (type != "text") throw ApiException.BadRequest(pat + ".type", $"'{pat}.type' is '{type}'; this text-only model takes only 'text' parts");
                    text.Append(Prop(p, "text") is { } tx ? Str(tx, pat + ".text") : throw ApiException.BadRequest(pat + ".text", $"'{pat}.text' is required", "missing_required_parameter"));
                    j++;
                }
                return text.ToString();
            default: throw ApiException.BadRequest(at, $"'{at}' must be a string or a list of text parts");
        }
    }

    static JsonElement ParseAssistantToolCalls(JsonElement tc, string at)
    {
        if (tc.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest(at, $"'{at}' must be a list");
        int k = 0;
        foreach (var c in tc.EnumerateArray())
        {
            string cat = $"{at}[{k}]";
            if (c.ValueKind != JsonValueKind.Object || Prop(c, "function") is not { ValueKind: JsonValueKind.Object } f)
                throw ApiException.BadRequest(cat + ".function", $"'{cat}' must be {{\"id\", \"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}");
            if (Prop(f, "name") is not { ValueKind: JsonValueKind.String } nm || nm.GetString()!.Length == 0)
                throw ApiException.BadRequest(cat + ".function.name", $"'{cat}.function.name' must be a non-empty string");
            if (Prop(f, "arguments") is { } args)
            {
                if (args.ValueKind == JsonValueKind.String)
                {
                    try { using var _ = JsonDocument.Parse(args.GetString()!); }
                    catch (JsonException) { throw ApiException.BadRequest(cat + ".function.arguments", $"'{cat}.function.arguments' is not valid JSON"); }
                }
                else if (args.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest(cat + ".function.arguments", $"'{cat}.function.arguments' must be a JSON string");
            }
            k++;
        }
        return tc.Clone();
    }

    static JsonElement? ParseTools(JsonElement root)
    {
        if (Prop(root, "tools") is not { ValueKind: not JsonValueKind.Null } tools) return null;
        if (tools.ValueKind != JsonValueKind.Array) throw ApiException.BadRequest("tools", "'tools' must be a list of {\"type\": \"function\", \"function\": {...}}");
        if (tools.GetArrayLength() == 0) return null;
        int i = 0;
        foreach (var t in tools.EnumerateArray())
        {
            string at = $"tools[{i}]";
            if (t.ValueKind != JsonValueKind.Object) throw ApiException.BadRequest(at, $"'{at}' must be an object");
            if (Prop(t, "type") is { } ty && (ty.ValueKind != JsonValueKind.String || ty.GetString() != "function"))
                throw ApiException.BadRequest(at + ".type", $"'{at}.type' must be 'function'");
            if (Prop(t, "function") is not { ValueKind: JsonValueKind.Object } f) throw ApiException.BadRequest(at + ".function", $"'{at}.function' is required: {{\"name\", \"description\", \"parameters\"}}", "missing_required_parameter");
            if (Prop(f, "name") is not { ValueKind: JsonValueKind.String } nm || nm.GetString()!.Length == 0)
                throw ApiException.BadRequest(at + ".function.name", $"'{at}.function.name' must be a non-empty string");
            if (Prop(f, "parameters") is { } ps && ps.ValueKind is not (JsonValueKind.Object or JsonValueKind.Null))
                throw ApiException.BadRequest(at + ".function.parameters", $"'{at}.function.parameters' must be a JSON Schema object");
            i++;
        }
        return tools.Clone();
    }

    /// <summary>"none", "auto" (the default with tools), "required", or "=NAME" for a named function.</summary>
    static string ParseToolChoice(JsonElement root, JsonElement? tools)
    {
        if (Prop(root, "tool_choice") is not { ValueKind: not JsonValueKind.Null } tc) return tools is null ? "none" : "auto";
        string? word = tc.ValueKind == JsonValueKind.String ? tc.GetString() : null;
        if (word == "none") return "none";
        if (tools is null) throw ApiException.BadRequest("tool_choice", "'tool_choice' other than 'none' needs 'tools'");
        if (word is "auto" or "required") return word;
        if (word is not null)
            throw ApiException.BadRequest("tool_choice", $"'tool_choice' is '{word}'; it must be 'none', 'auto', 'required' or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}");
        if (tc.ValueKind != JsonValueKind.Object || Prop(tc, "function") is not { ValueKind: JsonValueKind.Object } f)
            throw ApiException.BadRequest("tool_choice", "'tool_choice' must be 'none', 'auto', 'required' or {\"type\": \"function\", \"function\": {\"name\": ...}}");
        if (Prop(f, "name") is not { ValueKind: JsonValueKind.String } n || n.GetString()!.Length == 0)
            throw ApiException.BadRequest("tool_choice.function.name", "'tool_choice.function.name' must be a non-empty string");
        string named = n.GetString()!;
        if (!tools.Value.EnumerateArray().Any(t => Prop(t, "function") is { } tf && Prop(tf, "name") is { ValueKind: JsonValueKind.String } tn && tn.GetString() == named))
            throw ApiException.BadRequest("tool_choice.function.name", $"'tool_choice' names '{named}', which is not in 'tools'");
        return "=" + named;
    }

    static int[] TokenIds(JsonElement a, string at, int vocab, bool allowEmpty = false)
    {
        if (a.ValueKind != JsonValueKind.Array || (!allowEmpty && a.GetArrayLength() == 0)) throw ApiException.BadRequest(at, $"'{at}' must be a non-empty list of token ids");
        var ids = new int[a.GetArrayLength()];
        int i = 0;
        foreach (var x in a.EnumerateArray())
        {
            if (x.ValueKind != JsonValueKind.Number || !x.TryGetInt32(out int id) || id < 0 || id >= vocab)
                throw ApiException.BadRequest($"{at}[{i}]", $"'{at}[{i}]' is {x.GetRawText()}, not a token id in [0, {vocab})");
            ids[i++] = id;
        }
        return ids;
    }

    static void RequireObject(JsonElement root)
    {
        if (root.ValueKind != JsonValueKind.Object) throw ApiException.BadJson("The request body must be a JSON object.");
    }

    internal static JsonElement? Prop(JsonElement o, string name) => o.ValueKind == JsonValueKind.Object && o.TryGetProperty(name, out var v) ? v : null;

    static string Str(JsonElement v, string at) =>
        v.ValueKind == JsonValueKind.String ? v.GetString()! : throw ApiException.BadRequest(at, $"'{at}' must be a string");

    static bool Bool(JsonElement v, string at) => v.ValueKind switch
    {
        JsonValueKind.True => true,
        JsonValueKind.False or JsonValueKind.Null => false,
        _ => throw ApiException.BadRequest(at, $"'{at}' must be true or false"),
    };

    static double Number(JsonElement v, string at) =>
        v.ValueKind == JsonValueKind.Number ? v.GetDouble() : throw ApiException.BadRequest(at, $"'{at}' must be a number");

    static int Int(JsonElement v, string at, int min, int max)
    {
        if (v.ValueKind != JsonValueKind.Number || !v.TryGetInt64(out long x)) throw ApiException.BadRequest(at, $"'{at}' must be an integer");
        if (x < min || x > max)
            throw ApiException.BadRequest(at, max == int.MaxValue ? $"'{at}' must be at least {min}, got {x}" : $"'{at}' must be from {min} to {max}, got {x}");
        return (int)x;
    }

    /// <summary>A number in [low, high] (or (low, high] when !closedLow); null when absent or null.</summary>
    static float? Float(JsonElement root, string name, double low, double high, bool closedLow)
    {
        if (Prop(root, name) is not { ValueKind: not JsonValueKind.Null } v) return null;
        double x = Number(v, name);
        bool ok = (closedLow ? x >= low : x > low) && x <= high;
        if (!ok) throw ApiException.BadRequest(name, $"'{name}' must be in {(closedLow ? "[" : "(")}{G(low)}, {G(high)}], got {G(x)}");
        return (float)x;
    }

    static string G(double v) => v.ToString(CultureInfo.InvariantCulture);
}
