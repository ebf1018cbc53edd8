using System.Text;
using System.Text.Json;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Serving;

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

    /// <summary>
    /// An engine for one CLI session over a loaded model (it takes the model over): one sequence,
    /// --max-num-batched-tokens rows per step, EOS ids from the model folder.
    /// </summary>
    public static Engine StartEngine(LoadedModel lm, Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer tokenizer, Qwen3Cuda.Model.Templates.ChatTemplate? template, int maxBatchedTokens) =>
        new(lm.Model, tokenizer, template, Engine.DefaultEosTokenIds(tokenizer, lm.Directory),
            new EngineOptions { MaxNumSeqs = 1, MaxNumBatchedTokens = maxBatchedTokens, MaxWaitingRequests = 1, ModelName = Path.GetFileName(lm.Directory) });

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
    bool _thinking, _started, _contentStarted;

    public void Write(EnginePiece p)
    {
        if (p.Kind == PieceKind.Reasoning)
        {
            if (!_thinking || !_started) output.Write(ansi ? "\x1b[2m" : "[thinking]\n");
            var text = !_thinking || !_started ? p.Text.TrimStart('\n') : p.Text;
            output.Write(text);
            _thinking = true;
        }
        else
        {
            if (_thinking) output.Write(ansi ? "\x1b[0m\n\n" : "\n[/thinking]\n");
            // The CLI asks for raw text (no tool-call parsing); a parsed call is shown as the model wrote it.
            var raw = p.Kind == PieceKind.ToolCall ? "<tool_call>\n" + p.Text + "\n</tool_call>" : p.Text;
            var text = _contentStarted ? raw : raw.TrimStart('\n');
            if (text.Length > 0) _contentStarted = true;
            output.Write(text);
            _thinking = false;
        }
        _started = true;
        output.Flush();
    }

    public void End()
    {
        if (_thinking) output.Write(ansi ? "\x1b[0m\n" : "\n[/thinking]\n");
        output.Flush();
    }

    /// <summary>Runs one request on the engine, streaming its pieces here; returns its result (cancelled by <paramref name="ct"/>: a Cancelled result).</summary>
    public RequestResult Run(Engine engine, IReadOnlyList<int> prompt, RequestOptions options, CancellationToken ct)
    {
        var request = engine.Submit(prompt, options, ct);
        return Task.Run(async () =>
        {
            await foreach (var p in request.Pieces) Write(p);
            return await request.Result;
        }).GetAwaiter().GetResult();
    }

    /// <summary>The stats line after an answer; <paramref name="seed"/> when sampling (so the run can be repeated), the load time once.</summary>
    public static string Stats(RequestResult r, ulong? seed = null, TimeSpan? loadTime = null) =>
        string.Create(System.Globalization.CultureInfo.InvariantCulture,
            $"prompt {r.Usage.PromptTokens} tokens ({r.Usage.PrefilledTokens} prefilled, {r.Usage.PrefillTokensPerSecond:F1} tok/s), " +
            $"eval {r.Usage.CompletionTokens} tokens, TTFT {r.Usage.TimeToFirstToken.TotalMilliseconds:F0} ms, " +
            $"{r.Usage.DecodeTokensPerSecond:F2} tok/s, stop: {StopText(r)}") +
        (loadTime is { } t ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $", load {t.TotalSeconds:F2} s") : "") +
        (seed is { } s ? $", seed {s}" : "");

    static string StopText(RequestResult r) => r.FinishReason switch
    {
        FinishReason.Stop or FinishReason.ToolCalls => r.StopString is not null ? "stop string" : "end of turn",
        FinishReason.Length => r.ContextFull ? "context full" : "max new tokens",
        _ => "cancelled",
    };
}
