using System.Text.Json;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Serving.Constraints;

namespace Qwen3Cuda.Server;

/// <summary>
/// tool_choice "required" and named functions: the prompt is extended with the start of a Qwen tool call (an empty think
/// block when the template left thinking open, then <c>&lt;tool_call&gt;</c> and, for a named function,
/// <c>{"name": "NAME", "arguments": </c>), the engine guides the answer (<see cref="GuidedToolCall"/>: one of the tools'
/// names for "required", a JSON object as the arguments, then <c>}</c> and <c>&lt;/tool_call&gt;</c>), and the text the
/// model wrote is read back as the call. A call cut short by the token budget is returned as far as it got
/// (docs/serving.md, tool_choice).
/// </summary>
public static class ForcedToolCalls
{
    /// <summary>The text appended to the prompt ids <paramref name="prompt"/> (the chat template with its generation prompt).</summary>
    public static string Prefill(ForcedToolCall forced, IServingEngine engine, IReadOnlyList<int> prompt)
    {
        string tail = engine.Detokenize(prompt.Skip(Math.Max(0, prompt.Count - 8)).ToList());
        // Qwen3 templates close an empty think block themselves when thinking is off; otherwise the model would think first.
        bool thinkingOpen = engine.Tokenize("<think>").Count == 1 && !tail.TrimEnd().EndsWith("</think>", StringComparison.Ordinal);
        return (thinkingOpen ? "<think>\n\n</think>\n\n" : "") + "<tool_call>\n" + Head(forced);
    }

    static string Head(ForcedToolCall forced) => forced.Name is null ? "" : GuidedToolCall.Header(forced.Name);

    /// <summary>The result with its content read as the forced call (finish_reason tool_calls when it ended at
    /// &lt;/tool_call&gt;); unchanged when nothing was forced, or when "required" output names no tool.</summary>
    public static RequestResult Apply(ForcedToolCall? forced, RequestResult r, string? id = null)
    {
        if (forced is null) return r;
        var call = Parse(forced, r.Content, id);
        if (call is null) return r;
        return r with
        {
            Content = "",
            ToolCalls = [call],
            FinishReason = r.FinishReason == FinishReason.Stop ? FinishReason.ToolCalls : r.FinishReason,
        };
    }

    /// <summary>The call in <paramref name="content"/> (the text after the prefill, up to &lt;/tool_call&gt;).</summary>
    public static ToolCall? Parse(ForcedToolCall forced, string content, string? id = null)
    {
        string text = content.Trim();
        id ??= NewId();
        try
        {
            using var doc = JsonDocument.Parse(Head(forced) + text);
            var root = doc.RootElement;
            string? name = root.ValueKind == JsonValueKind.Object && root.TryGetProperty("name", out var n) && n.ValueKind == JsonValueKind.String ? n.GetString() : forced.Name;
            if (name is null) return null;
            string args = root.TryGetProperty("arguments", out var a) ? a.ValueKind == JsonValueKind.String ? a.GetString()! : a.GetRawText() : "{}";
            return new ToolCall(id, name, args);
        }
        catch (JsonException)
        {
            if (forced.Name is null) return null;
            // Not JSON as a whole: the arguments are the text the model wrote, less the call's closing brace.
            if (text.EndsWith('}')) text = text[..^1].TrimEnd();
            return new ToolCall(id, forced.Name, text);
        }
    }

    public static string NewId() => "call_" + Guid.NewGuid().ToString("N")[..24];

    /// <summary>
    /// The arguments of a named forced call as they stream: everything up to the last character that is neither white
    /// space nor '}' is sent (what is held back may be the call's own closing brace); <see cref="Finish"/> sends the rest
    /// of the final arguments. Arguments that do not start as a JSON object are held whole until the end.
    /// </summary>
    public sealed class ArgumentStream
    {
        readonly System.Text.StringBuilder _raw = new();
        string _sent = "";

        public string Add(string text)
        {
            _raw.Append(text);
            string t = _raw.ToString().TrimStart();
            if (t.Length == 0 || t[0] != '{') return "";
            int end = t.Length - 1;
            while (end >= 0 && (char.IsWhiteSpace(t[end]) || t[end] == '}')) end--;
            if (end + 1 <= _sent.Length) return "";
            string delta = t[_sent.Length..(end + 1)];
            _sent = t[..(end + 1)];
            return delta;
        }

        /// <summary>The rest of <paramref name="arguments"/> (the parsed call's) after what was sent; what was sent is always its prefix.</summary>
        public string Finish(string arguments) => arguments.StartsWith(_sent, StringComparison.Ordinal) ? arguments[_sent.Length..] : "";
    }
}
