using System.Security.Cryptography;
using System.Text;
using System.Text.Json;

namespace Qwen3Cuda.Model.Serving;

/// <summary>
/// Turns the decoded text of one request into pieces (docs/architecture.md, "Engine"): stop strings first (a tail that
/// may begin one is held back; the text up to the first match is kept, the match is not), then reasoning vs content
/// (switched by the caller at &lt;think&gt;/&lt;/think&gt;), then, in content, &lt;tool_call&gt;...&lt;/tool_call&gt;
/// blocks become <see cref="PieceKind.ToolCall"/> pieces (a block that is not a JSON object with a name stays text).
/// </summary>
internal sealed class OutputText(IReadOnlyList<string> stopStrings, bool parseToolCalls, Action<EnginePiece> emit)
{
    private const string CallOpen = "<tool_call>", CallClose = "</tool_call>";
    private PieceKind _kind = PieceKind.Content;
    private string _held = "";          // held back for the stop strings
    private string _toolHeld = "";      // held back for a tool-call tag or an unfinished block
    private bool _inCall;
    public readonly StringBuilder Reasoning = new(), Content = new();
    public readonly List<ToolCall> ToolCalls = [];
    public bool Stopped { get; private set; }
    /// <summary>The stop string that matched.</summary>
    public string? StopString { get; private set; }

    public PieceKind Kind
    {
        get => _kind;
        set
        {
            if (value == _kind) return;
            Finish();
            _kind = value;
        }
    }

    public void Write(string text)
    {
        if (text.Length == 0 || Stopped) return;
        if (stopStrings.Count == 0) { Route(text); return; }
        _held += text;
        int at = -1;
        foreach (var s in stopStrings)
        {
            if (s.Length == 0) continue;
            int k = _held.IndexOf(s, StringComparison.Ordinal);
            if (k >= 0 && (at < 0 || k < at)) { at = k; StopString = s; }
        }
        if (at >= 0)
        {
            Route(_held[..at]);
            _held = "";
            Stopped = true;
            FlushTools();
            return;
        }
        int keep = 0;
        foreach (var s in stopStrings)
            for (int len = Math.Min(s.Length - 1, _held.Length); len > keep; len--)
                if (_held.AsSpan(_held.Length - len).SequenceEqual(s.AsSpan(0, len))) { keep = len; break; }
        Route(_held[..^keep]);
        _held = _held[^keep..];
    }

    /// <summary>Emits everything held back (no stop string or tag can complete any more).</summary>
    public void Finish()
    {
        if (_held.Length > 0) Route(_held);
        _held = "";
        FlushTools();
    }

    private void Route(string text)
    {
        if (text.Length == 0) return;
        if (_kind != PieceKind.Content || !parseToolCalls) { Emit(_kind, text); return; }
        _toolHeld += text;
        while (_toolHeld.Length > 0)
        {
            if (_inCall)
            {
                int end = _toolHeld.IndexOf(CallClose, StringComparison.Ordinal);
                if (end < 0) return;   // the block is not finished yet
                string body = _toolHeld[..end];
                _toolHeld = _toolHeld[(end + CallClose.Length)..];
                _inCall = false;
                if (ParseCall(body) is { } call)
                {
                    ToolCalls.Add(call);
                    emit(new EnginePiece(PieceKind.ToolCall, body.Trim()) { ToolCall = call });
                }
                else Emit(PieceKind.Content, CallOpen + body + CallClose);
                continue;
            }
            int open = _toolHeld.IndexOf(CallOpen, StringComparison.Ordinal);
            if (open >= 0)
            {
                Emit(PieceKind.Content, _toolHeld[..open]);
                _toolHeld = _toolHeld[(open + CallOpen.Length)..];
                _inCall = true;
                continue;
            }
            int keep = 0;   // a tail that may begin <tool_call>
            for (int len = Math.Min(CallOpen.Length - 1, _toolHeld.Length); len > 0; len--)
                if (_toolHeld.AsSpan(_toolHeld.Length - len).SequenceEqual(CallOpen.AsSpan(0, len))) { keep = len; break; }
            Emit(PieceKind.Content, _toolHeld[..^keep]);
            _toolHeld = _toolHeld[^keep..];
            return;
        }
    }

    private void FlushTools()
    {
        if (_toolHeld.Length == 0 && !_inCall) return;
        Emit(PieceKind.Content, (_inCall ? CallOpen : "") + _toolHeld);
        _toolHeld = "";
        _inCall = false;
    }

    private void Emit(PieceKind kind, string text)
    {
        if (text.Length == 0) return;
        (kind == PieceKind.Reasoning ? Reasoning : Content).Append(text);
        emit(new EnginePiece(kind, text));
    }

    /// <summary>{"name": "...", "arguments": {...}} as a <see cref="ToolCall"/> with a fresh id; null when it is not one.</summary>
    internal static ToolCall? ParseCall(string body)
    {
        try
        {
            using var doc = JsonDocument.Parse(body.Trim());
            var root = doc.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String) return null;
            string arguments = !root.TryGetProperty("arguments", out var a) ? "{}"
                : a.ValueKind == JsonValueKind.String ? a.GetString()! : a.GetRawText();
            return new ToolCall(NewCallId(), name.GetString()!, arguments);
        }
        catch (JsonException) { return null; }
    }

    internal static string NewCallId() => "call_" + Convert.ToHexString(RandomNumberGenerator.GetBytes(12)).ToLowerInvariant();
}
