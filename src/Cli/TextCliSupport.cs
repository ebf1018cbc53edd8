using System.CommandLine;
using System.Text;
using System.Text.Json;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Generation;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Cli;

/// <summary>Options and helpers shared by the text verbs (generate, chat, tokenize, detokenize, template).</summary>
static class TextCliSupport
{
    public static Option<string> ModelOption() =>
        new("--model") { Description = "Model directory (config.json, safetensors, tokenizer.json, tokenizer_config.json)", Required = true };

    /// <summary>Runs a verb body, turning expected failures into one "error: ..." line and exit code 1.</summary>
    public static int Guard(ParseResult parse, Func<TextWriter, TextWriter, int> body)
    {
        var stdout = parse.InvocationConfiguration.Output;
        var stderr = parse.InvocationConfiguration.Error;
        try
        {
            return body(stdout, stderr);
        }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException or InvalidDataException
                                      or NotSupportedException or JsonException or JinjaException or ConfigException
                                      or CheckpointException or FormatException or Model.Device.ModelDoesNotFitException)
        {
            stdout.Flush();
            stderr.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    /// <summary>A file's text decoded as UTF-8 (invalid bytes become U+FFFD; a BOM is kept as U+FEFF).</summary>
    public static string ReadText(string path, string option)
    {
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
}

/// <summary>The sampling and generation options of generate and chat; unset values come from the model's defaults.</summary>
sealed class SamplingCliOptions
{
    public readonly Option<float?> Temperature = new("--temperature") { Description = "Sampling temperature (0 = greedy)" };
    public readonly Option<int?> TopK = new("--top-k") { Description = "Keep the K most likely tokens (0 = off)" };
    public readonly Option<float?> TopP = new("--top-p") { Description = "Nucleus sampling mass in (0, 1]" };
    public readonly Option<float?> MinP = new("--min-p") { Description = "Drop tokens below this fraction of the most likely one" };
    public readonly Option<float?> PresencePenalty = new("--presence-penalty") { Description = "Subtracted from logits of generated tokens, in [-2, 2]" };
    public readonly Option<float?> RepetitionPenalty = new("--repetition-penalty") { Description = "Repetition penalty (> 0, 1 = off)" };
    public readonly Option<ulong?> Seed = new("--seed") { Description = "Random seed for reproducible sampling" };
    public readonly Option<int> MaxNewTokens = new("--max-new-tokens") { Description = "Most tokens to generate per answer", DefaultValueFactory = _ => 512 };
    public readonly Option<string> Device = new("--device") { Description = "auto (default: cuda when a GPU opens, else the PTX emulator; says which on stderr) | cuda | emulator (slow) | cpu (the C# reference)", DefaultValueFactory = _ => "auto" };
    public readonly Option<int?> Context = new("--context") { Description = "Context length in tokens (default: the model's max_position_embeddings)" };
    public readonly Option<bool> NoThink = new("--no-think") { Description = "Disable thinking (enable_thinking=false in the chat template)" };
    public readonly Option<string?> GpuMemoryUtilization = GpuMemoryCliOption.Create();

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Temperature, TopK, TopP, MinP, PresencePenalty, RepetitionPenalty, Seed, MaxNewTokens, Device, Context, NoThink, GpuMemoryUtilization })
            cmd.Options.Add(o);
    }

    public SamplingOptions Sampling(ParseResult p, string modelDir, bool thinking)
    {
        var d = SamplingOptions.DefaultsFor(modelDir, thinking);
        var o = d with
        {
            Temperature = p.GetValue(Temperature) ?? d.Temperature,
            TopK = p.GetValue(TopK) ?? d.TopK,
            TopP = p.GetValue(TopP) ?? d.TopP,
            MinP = p.GetValue(MinP) ?? d.MinP,
            PresencePenalty = p.GetValue(PresencePenalty) ?? d.PresencePenalty,
            RepetitionPenalty = p.GetValue(RepetitionPenalty) ?? d.RepetitionPenalty,
            Seed = p.GetValue(Seed) ?? d.Seed,
        };
        o.Validate();
        return o;
    }

    public int CheckedMaxNewTokens(ParseResult p)
    {
        int n = p.GetValue(MaxNewTokens);
        if (n < 1) throw new ArgumentException($"--max-new-tokens must be >= 1, got {n}");
        return n;
    }

    public double? CheckedGpuMemoryUtilization(ParseResult p) => GpuMemoryCliOption.Parse(p.GetValue(GpuMemoryUtilization));

    public int? CheckedContext(ParseResult p)
    {
        int? n = p.GetValue(Context);
        if (n < 1) throw new ArgumentException($"--context must be >= 1, got {n}");
        return n;
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

    public static string Stats(GenerationResult r) =>
        $"prompt {r.Stats.PromptTokens} tokens ({r.Stats.PrefilledTokens} prefilled, {r.Stats.PrefillTokensPerSecond:F1} tok/s), " +
        $"eval {r.Stats.GeneratedTokens} tokens, TTFT {r.Stats.TimeToFirstToken.TotalMilliseconds:F0} ms, " +
        $"{r.Stats.DecodeTokensPerSecond:F2} tok/s, stop: {StopText(r.StopReason)}";

    static string StopText(StopReason r) => r switch
    {
        StopReason.EndOfSequence => "end of turn",
        StopReason.StopString => "stop string",
        StopReason.MaxNewTokens => "max new tokens",
        StopReason.ContextFull => "context full",
        _ => "cancelled",
    };
}
