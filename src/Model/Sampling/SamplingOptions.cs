using System.Globalization;
using System.Text.Json;

namespace Qwen3Cuda.Model.Sampling;

/// <summary>
/// How the next token is chosen. Temperature 0 is greedy (argmax). Disabled values: TopK 0, TopP 1,
/// MinP 0, PresencePenalty 0, RepetitionPenalty 1. Seed null draws a random seed.
/// Errors name the CLI option, e.g. "--top-p must be in (0, 1], got 1.5".
/// </summary>
public sealed record SamplingOptions
{
    public float Temperature { get; init; } = 0.7f;
    public int TopK { get; init; } = 20;
    public float TopP { get; init; } = 0.8f;
    public float MinP { get; init; }
    /// <summary>Subtracted from the logit of every token already generated (OpenAI/vLLM presence penalty).</summary>
    public float PresencePenalty { get; init; }
    /// <summary>CTRL/transformers repetition penalty over prompt and generated tokens: positive logits divided, negative multiplied.</summary>
    public float RepetitionPenalty { get; init; } = 1f;
    public ulong? Seed { get; init; }

    public bool IsGreedy => Temperature == 0;

    public static SamplingOptions Greedy => new() { Temperature = 0, TopK = 0, TopP = 1, MinP = 0 };

    /// <summary>Model card recommendations for Qwen3 (thinking: 0.6/0.95/20/0; non-thinking: 0.7/0.8/20/0).</summary>
    public static SamplingOptions ModelCardDefaults(bool thinking) => thinking
        ? new SamplingOptions { Temperature = 0.6f, TopP = 0.95f, TopK = 20, MinP = 0 }
        : new SamplingOptions { Temperature = 0.7f, TopP = 0.8f, TopK = 20, MinP = 0 };

    /// <summary>
    /// Defaults for a model directory: its generation_config.json when present (temperature, top_p,
    /// top_k, min_p, repetition_penalty; do_sample false means greedy), else <see cref="ModelCardDefaults"/>.
    /// </summary>
    public static SamplingOptions DefaultsFor(string modelDir, bool thinking)
    {
        var card = ModelCardDefaults(thinking);
        var path = Path.Combine(modelDir, "generation_config.json");
        if (!File.Exists(path)) return card;
        try
        {
            using var doc = JsonDocument.Parse(File.ReadAllText(path));
            var r = doc.RootElement;
            float F(string name, float fallback) => r.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetSingle() : fallback;
            int I(string name, int fallback) => r.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetInt32() : fallback;
            var o = card with
            {
                Temperature = F("temperature", card.Temperature),
                TopP = F("top_p", card.TopP),
                TopK = I("top_k", card.TopK),
                MinP = F("min_p", card.MinP),
                RepetitionPenalty = F("repetition_penalty", card.RepetitionPenalty),
            };
            if (r.TryGetProperty("do_sample", out var ds) && ds.ValueKind == JsonValueKind.False) o = o with { Temperature = 0 };
            return o;
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid option.</summary>
    public void Validate()
    {
        static string G(float v) => v.ToString(CultureInfo.InvariantCulture);
        if (!float.IsFinite(Temperature) || Temperature < 0) throw new ArgumentException($"--temperature must be >= 0 (0 = greedy), got {G(Temperature)}");
        if (TopK < 0) throw new ArgumentException($"--top-k must be >= 0 (0 = disabled), got {TopK}");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"--top-p must be in (0, 1], got {G(TopP)}");
        if (!(MinP >= 0 && MinP <= 1)) throw new ArgumentException($"--min-p must be in [0, 1], got {G(MinP)}");
        if (!(PresencePenalty >= -2 && PresencePenalty <= 2)) throw new ArgumentException($"--presence-penalty must be in [-2, 2], got {G(PresencePenalty)}");
        if (!(RepetitionPenalty > 0) || !float.IsFinite(RepetitionPenalty)) throw new ArgumentException($"--repetition-penalty must be > 0 (1 = disabled), got {G(RepetitionPenalty)}");
    }
}
