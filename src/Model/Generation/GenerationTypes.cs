using Qwen3Cuda.Model.Sampling;

namespace Qwen3Cuda.Model.Generation;

public sealed record GenerationOptions
{
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    public int MaxNewTokens { get; init; } = 512;
    /// <summary>Generation stops when the answer text contains one of these; the stop string is not returned.</summary>
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    /// <summary>Extra token ids that end generation (besides the generator's EOS ids).</summary>
    public IReadOnlyList<int> ExtraStopTokenIds { get; init; } = [];
    /// <summary>Speculative decoding (docs/speculative.md): the drafter proposing tokens (null: plain decoding). Not owned.</summary>
    public Speculative.IDrafter? Drafter { get; init; }
    /// <summary>Tokens the drafter proposes per verification step (k).</summary>
    public int NumDraftTokens { get; init; } = 4;
}

public enum PieceKind { Thinking, Content }

/// <summary>A piece of streamed text: always whole characters (never a split UTF-8 sequence).</summary>
public readonly record struct GenerationPiece(string Text, PieceKind Kind);

public enum StopReason { EndOfSequence, StopString, MaxNewTokens, ContextFull, Cancelled }

public sealed record GenerationStats
{
    /// <summary>Tokens of the prompt (the whole conversation for chat).</summary>
    public int PromptTokens { get; init; }
    /// <summary>Prompt tokens actually run through the model (the rest came from the KV cache).</summary>
    public int PrefilledTokens { get; init; }
    public int GeneratedTokens { get; init; }
    public TimeSpan PrefillTime { get; init; }
    public TimeSpan TimeToFirstToken { get; init; }
    public TimeSpan TotalTime { get; init; }
    /// <summary>Acceptance counts when the generation used speculative decoding (else null).</summary>
    public Speculative.SpeculationStats? Speculation { get; init; }

    /// <summary>Decode rate after the first token (tokens 2..n over the time they took).</summary>
    public double DecodeTokensPerSecond => GeneratedTokens > 1 && TotalTime > TimeToFirstToken
        ? (GeneratedTokens - 1) / (TotalTime - TimeToFirstToken).TotalSeconds : 0;
    public double PrefillTokensPerSecond => PrefilledTokens > 0 && PrefillTime > TimeSpan.Zero ? PrefilledTokens / PrefillTime.TotalSeconds : 0;
}

/// <summary>What a generation produced.</summary>
/// <param name="Thinking">Reasoning text between &lt;think&gt; and &lt;/think&gt; (without the tags).</param>
/// <param name="Content">Answer text (after &lt;/think&gt;, or all of it without thinking), stop string removed.</param>
/// <param name="Tokens">The generated token ids.</param>
/// <param name="StopReason">Why generation stopped.</param>
/// <param name="Stats">Token counts and timings.</param>
public sealed record GenerationResult(
    string Thinking,
    string Content,
    IReadOnlyList<int> Tokens,
    StopReason StopReason,
    GenerationStats Stats);
