using System.Text;
using System.Text.Json;
using Qwen3Cuda.Model.Generation;

namespace Qwen3Cuda.Cli;

/// <summary>Helpers shared by the text verbs (generate, chat, tokenize, detokenize, template).</summary>
static class TextCliSupport
{
    /// <summary>A file's text decoded as UTF-8 (invalid bytes become U+FFFD; a BOM is kept as U+FEFF); "-" reads stdin to its end.</summary>
    public static string ReadText(string path, string option)
    {
        if (path == "-") return Console.In.ReadToEnd();
        if (Directory.Exists(path)) throw new UsageException($"{option}: '{path}' is a folder, not a file");
        if (!File.Exists(path)) throw new FileNotFoundException($"{option}: file '{path}' does not exist", path);
        return Encoding.UTF8.GetString(File.ReadAllBytes(path));
    }

    public static JsonElement ReadJson(string path, string option)
    {
        var text = ReadText(path, option);
        try
        {
            return JsonDocument.Parse(text).RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{option}: '{path}' is not valid JSON: {e.Message}", e);
        }
    }

    /// <summary>A --tools file: a JSON array of tool definitions (the chat template renders them).</summary>
    public static JsonElement? ReadTools(string? path)
    {
        if (path is null) return null;
        var tools = ReadJson(path, "--tools");
        if (tools.ValueKind != JsonValueKind.Array) throw new InvalidDataException($"--tools: '{path}' must hold a JSON array of tool definitions");
        return tools;
    }

    /// <summary>One token as text for people: its UTF-8 text when its bytes are whole characters, else its bytes in hex.</summary>
    public static string Piece(Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer tokenizer, int id)
    {
        var bytes = tokenizer.TokenBytes(id);
        try { return new UTF8Encoding(false, throwOnInvalidBytes: true).GetString(bytes); }
        catch (DecoderFallbackException) { return "<0x" + Convert.ToHexString(bytes) + ">"; }
    }
}

/// <summary>Writes streamed pieces: thinking dimmed (ANSI) on a terminal, or between [thinking] markers when redirected.</summary>
sealed class PieceWriter(TextWriter output, bool ansi)
{
    PieceKind? _last;
    bool _contentStarted;

    public void Write(GenerationPiece p)
    {
        if (p.Kind == PieceKind.Thinking)
        {
            if (_last != PieceKind.Thinking) output.Write(ansi ? "\x1b[2m" : "[thinking]\n");
            var text = _last != PieceKind.Thinking ? p.Text.TrimStart('\n') : p.Text;
            output.Write(text);
        }
        else
        {
            if (_last == PieceKind.Thinking) output.Write(ansi ? "\x1b[0m\n\n" : "\n[/thinking]\n");
            var text = _contentStarted ? p.Text : p.Text.TrimStart('\n');
            if (text.Length > 0) _contentStarted = true;
            output.Write(text);
        }
        _last = p.Kind;
        output.Flush();
    }

    public void End()
    {
        if (_last == PieceKind.Thinking) output.Write(ansi ? "\x1b[0m\n" : "\n[/thinking]\n");
        output.Flush();
    }

    /// <summary>The stats line after an answer; <paramref name="seed"/> when sampling (so the run can be repeated), the load time once.</summary>
    public static string Stats(GenerationResult r, ulong? seed = null, TimeSpan? loadTime = null) =>
        string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"prompt {r.Stats.PromptTokens} tokens ({r.Stats.PrefilledTokens} prefilled, {r.Stats.PrefillTokensPerSecond:F1} tok/s), " +
            $"eval {r.Stats.GeneratedTokens} tokens, TTFT {r.Stats.TimeToFirstToken.TotalMilliseconds:F0} ms, " +
            $"{r.Stats.DecodeTokensPerSecond:F2} tok/s, stop: {StopText(r.StopReason)}") +
        (loadTime is { } t ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $", load {t.TotalSeconds:F2} s") : "") +
        (seed is { } s ? $", seed {s}" : "");

    static string StopText(StopReason r) => r switch
    {
        StopReason.EndOfSequence => "end of turn",
        StopReason.StopString => "stop string",
        StopReason.MaxNewTokens => "max new tokens",
        StopReason.ContextFull => "context full",
        _ => "cancelled",
    };
}
