using System.Text.Json;

namespace Qwen3Cuda.Model.Templates;

/// <summary>One chat message as the Qwen3 templates read it.</summary>
public sealed record ChatMessage(string Role, string Content, string? ReasoningContent = null)
{
    /// <summary>Tool calls of an assistant message, as JSON ([{"type":"function","function":{"name":..,"arguments":{..}}}]).</summary>
    public JsonElement? ToolCalls { get; init; }

    internal JinjaDict ToJinja()
    {
        var d = new JinjaDict();
        d.Entries["role"] = new JinjaString(Role);
        d.Entries["content"] = new JinjaString(Content);
        if (ReasoningContent != null) d.Entries["reasoning_content"] = new JinjaString(ReasoningContent);
        if (ToolCalls is JsonElement tc) d.Entries["tool_calls"] = JinjaValue.FromJson(tc);
        return d;
    }
}

/// <summary>
/// A model's chat template (tokenizer_config.json "chat_template", or chat_template.jinja), parsed once
/// and rendered with the variables transformers passes: messages, tools, add_generation_prompt,
/// enable_thinking (only when given, since templates test `enable_thinking is defined`).
/// </summary>
public sealed class ChatTemplate
{
    readonly List<JinjaNode> _program;
    public string Source { get; }

    public ChatTemplate(string source)
    {
        Source = source;
        _program = JinjaParser.Parse(source);
    }

    /// <summary>Reads the template from &lt;dir&gt;/chat_template.jinja or &lt;dir&gt;/tokenizer_config.json.</summary>
    public static ChatTemplate FromModelDirectory(string modelDir)
    {
        var jinjaPath = Path.Combine(modelDir, "chat_template.jinja");
        if (File.Exists(jinjaPath)) return Parse(File.ReadAllText(jinjaPath), jinjaPath);
        var configPath = Path.Combine(modelDir, "tokenizer_config.json");
        if (!File.Exists(configPath))
            throw new FileNotFoundException($"no chat template in model directory '{modelDir}' (neither chat_template.jinja nor tokenizer_config.json)", configPath);
        using var doc = JsonDocument.Parse(File.ReadAllText(configPath));
        if (!doc.RootElement.TryGetProperty("chat_template", out var t))
            throw new InvalidDataException($"{configPath}: no \"chat_template\" field");
        string source = t.ValueKind switch
        {
            JsonValueKind.String => t.GetString()!,
            // A list of named templates: use "default".
            JsonValueKind.Array => t.EnumerateArray().FirstOrDefault(x => x.GetProperty("name").GetString() == "default")
                .GetProperty("template").GetString()!,
            _ => throw new InvalidDataException($"{configPath}: \"chat_template\" must be a string or a list of named templates"),
        };
        return Parse(source, configPath);
    }

    static ChatTemplate Parse(string source, string origin)
    {
        try
        {
            return new ChatTemplate(source);
        }
        catch (JinjaException e)
        {
            throw new JinjaException($"{origin}: chat template: {e.Message}");
        }
    }

    public string Render(IEnumerable<ChatMessage> messages, bool addGenerationPrompt, bool? enableThinking = null, JsonElement? tools = null)
        => Render(new JinjaList(messages.Select(m => (JinjaValue)m.ToJinja()).ToList()), addGenerationPrompt, enableThinking,
            tools is JsonElement t ? JinjaValue.FromJson(t) : null);

    /// <summary>Renders with messages (and optional tools) given as JSON arrays.</summary>
    public string Render(JsonElement messages, bool addGenerationPrompt, bool? enableThinking = null, JsonElement? tools = null)
        => Render(JinjaValue.FromJson(messages), addGenerationPrompt, enableThinking, tools is JsonElement t ? JinjaValue.FromJson(t) : null);

    internal string Render(JinjaValue messages, bool addGenerationPrompt, bool? enableThinking, JinjaValue? tools,
        IReadOnlyDictionary<string, JinjaValue>? extra = null)
    {
        var globals = JinjaInterpreter.CreateGlobals();
        var env = new JinjaEnvironment(globals);
        env.Set("messages", messages);
        if (tools != null) env.Set("tools", tools);
        env.Set("add_generation_prompt", JinjaValue.Bool(addGenerationPrompt));
        if (enableThinking is bool e) env.Set("enable_thinking", JinjaValue.Bool(e));
        if (extra != null) foreach (var kv in extra) env.Set(kv.Key, kv.Value);
        return new JinjaInterpreter().Render(_program, env);
    }
}
