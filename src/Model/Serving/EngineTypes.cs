using System.Globalization;
using System.Text.Json;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Model.Serving;

/// <summary>How an <see cref="Engine"/> schedules and where it loads its model (docs/architecture.md, "Engine").</summary>
public sealed record EngineOptions
{
    /// <summary>--max-num-seqs: requests running at once (sequences holding KV pages); decode rows per step.</summary>
    public int MaxNumSeqs { get; init; } = 64;
    /// <summary>--max-num-batched-tokens: token rows per step (decode rows plus prefill chunks).</summary>
    public int MaxNumBatchedTokens { get; init; } = 2048;
    /// <summary>Requests waiting for admission; one more is refused with <see cref="EngineOverloadedException"/>.</summary>
    public int MaxWaitingRequests { get; init; } = 1024;
    /// <summary>Keep full KV pages keyed by their tokens so that later prompts sharing a prefix prefill only the rest.</summary>
    public bool EnablePrefixCaching { get; init; } = true;
    /// <summary>
    /// Queue the next decode step before reading this one's tokens while every running request only decodes and nothing
    /// else waits (docs/architecture.md, "Pipelined decode"), on a model that pipelines (<see cref="IPipelinedModel"/>).
    /// The tokens are the same either way. Default: on unless QWEN3CUDA_PIPELINE=0.
    /// </summary>
    public bool PipelineDecode { get; init; } = Environment.GetEnvironmentVariable("QWEN3CUDA_PIPELINE") != "0";
    /// <summary>Tokens per sequence (--ctx-size); null: the model's default (the memory plan's).</summary>
    public int? ContextLength { get; init; }
    /// <summary>cpu | emulator | cuda | auto (auto: cuda when a GPU opens, else the CPU reference).</summary>
    public string Device { get; init; } = "auto";
    public long? GpuMemoryBytes { get; init; }
    public double? GpuMemoryUtilization { get; init; }
    /// <summary>The served model name; default: the folder name, the Hugging Face repo id, or demo.</summary>
    public string? ModelName { get; init; }
    /// <summary>Load progress and one-line notes; null: silent.</summary>
    public TextWriter? Log { get; init; }
    /// <summary>--draft-model: speculative decoding on every request with this draft model (a folder or Hugging Face id of
    /// a smaller model with the target's tokenizer), loaded once; each request drafts in a sequence of its own.</summary>
    public string? DraftModel { get; init; }
    /// <summary>--draft: speculative decoding on every request without a draft model ("ngram": prompt lookup).</summary>
    public string? Draft { get; init; }
    /// <summary>--num-draft-tokens: tokens proposed per verification step (k); null: <see cref="DefaultNumDraftTokens"/>
    /// with a drafter, and refused without one.</summary>
    public int? NumDraftTokens { get; init; }
    public const int DefaultNumDraftTokens = 4;
    /// <summary>True when every request speculates (<see cref="DraftModel"/> or <see cref="Draft"/>).</summary>
    public bool Speculates => DraftModel is not null || Draft is not null;

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> naming the option.</summary>
    public void Validate()
    {
        if (MaxNumSeqs < 1 || MaxNumSeqs > 4096) throw new ArgumentOutOfRangeException(nameof(MaxNumSeqs), MaxNumSeqs, $"--max-num-seqs {MaxNumSeqs} must be in [1, 4096]");
        if (MaxNumBatchedTokens < 1) throw new ArgumentOutOfRangeException(nameof(MaxNumBatchedTokens), MaxNumBatchedTokens, $"--max-num-batched-tokens {MaxNumBatchedTokens} must be positive");
        if (MaxWaitingRequests < 0) throw new ArgumentOutOfRangeException(nameof(MaxWaitingRequests), MaxWaitingRequests, $"max waiting requests {MaxWaitingRequests} must be >= 0");
        if (DraftModel is not null && Draft is not null)
            throw new ArgumentException("give either --draft-model DIR or --draft ngram, not both", nameof(Draft));
        if (DraftModel is { Length: 0 }) throw new ArgumentException("--draft-model is empty: give a model folder or Hugging Face id", nameof(DraftModel));
        if (Draft is not null && Draft != "ngram") throw new ArgumentException($"--draft: '{Draft}' is not one of ngram", nameof(Draft));
        if (NumDraftTokens is int k)
        {
            if (!Speculates) throw new ArgumentException("--num-draft-tokens needs --draft-model DIR or --draft ngram", nameof(NumDraftTokens));
            if (k < 1 || k > Speculative.SpeculativeDecoder.MaxDraftTokens)
                throw new ArgumentOutOfRangeException(nameof(NumDraftTokens), k, $"--num-draft-tokens: {k} is out of range (1 to {Speculative.SpeculativeDecoder.MaxDraftTokens})");
        }
    }
}

/// <summary>
/// What one request asks for. Penalties follow OpenAI/vLLM: presence subtracts once from every token already generated,
/// frequency subtracts per occurrence in the generated tokens, repetition (transformers/HF) divides positive logits and
/// multiplies negative ones of every token in the prompt or generated. A penalty set here wins over the same one in
/// <see cref="Sampling"/>.
/// </summary>
public sealed record RequestOptions
{
    public SamplingOptions Sampling { get; init; } = SamplingOptions.Greedy;
    /// <summary>Null: up to the context.</summary>
    public int? MaxNewTokens { get; init; }
    /// <summary>Stop strings (the text up to the first one is returned, the stop string is not).</summary>
    public IReadOnlyList<string> Stop { get; init; } = [];
    public IReadOnlyList<int> StopTokenIds { get; init; } = [];
    /// <summary>Keep generating past EOS tokens (until the budget, a stop token id or a stop string).</summary>
    public bool IgnoreEos { get; init; }
    public float PresencePenalty { get; init; }
    public float FrequencyPenalty { get; init; }
    public float RepetitionPenalty { get; init; } = 1f;
    /// <summary>-1: no logprobs; 0: the chosen token's only; 1..20: also that many most likely tokens.</summary>
    public int TopLogprobs { get; init; } = -1;
    /// <summary>The chat template's enable_thinking (null: the template's default).</summary>
    public bool? EnableThinking { get; init; }
    /// <summary>OpenAI tools array, rendered by the chat template.</summary>
    public JsonElement? Tools { get; init; }
    /// <summary>Turn &lt;tool_call&gt;{"name":..,"arguments":..}&lt;/tool_call&gt; in the answer into <see cref="PieceKind.ToolCall"/> pieces.</summary>
    public bool ParseToolCalls { get; init; } = true;
    /// <summary>Speculative decoding (docs/speculative.md): proposes tokens that one target step verifies; null: plain
    /// decoding. Not owned, and used by this request alone (a draft model's drafter holds one sequence).</summary>
    public Speculative.IDrafter? Drafter { get; init; }
    /// <summary>Tokens the drafter proposes per verification step (k).</summary>
    public int NumDraftTokens { get; init; } = 4;
    /// <summary>Guided decoding of a forced tool call (tool_choice required or named, docs/serving.md): each token is
    /// sampled on the host from the logits with the tokens that would break the call masked out; null: unconstrained.</summary>
    public Constraints.GuidedToolCall? ToolCall { get; init; }

    /// <summary>The presence penalty in effect (this record's, else the sampling options').</summary>
    public float EffectivePresencePenalty => PresencePenalty != 0f ? PresencePenalty : Sampling.PresencePenalty;
    /// <summary>The repetition penalty in effect (this record's, else the sampling options').</summary>
    public float EffectiveRepetitionPenalty => RepetitionPenalty != 1f ? RepetitionPenalty : Sampling.RepetitionPenalty;
    /// <summary>True when a penalty changes the logits before sampling.</summary>
    public bool HasPenalties => EffectivePresencePenalty != 0f || FrequencyPenalty != 0f || EffectiveRepetitionPenalty != 1f;

    /// <summary>Throws <see cref="InvalidRequestException"/> naming the first bad field by its OpenAI name (top_p, max_tokens, ...).</summary>
    public void Validate(int vocabSize)
    {
        static string G(float v) => v.ToString(CultureInfo.InvariantCulture);
        var s = Sampling ?? throw new InvalidRequestException("sampling", "sampling options are missing");
        if (!float.IsFinite(s.Temperature) || s.Temperature < 0) throw new InvalidRequestException("temperature", $"temperature must be >= 0 (0 = greedy), got {G(s.Temperature)}");
        if (s.TopK < 0) throw new InvalidRequestException("top_k", $"top_k must be >= 0 (0 = disabled), got {s.TopK}");
        if (!(s.TopP > 0 && s.TopP <= 1)) throw new InvalidRequestException("top_p", $"top_p must be in (0, 1], got {G(s.TopP)}");
        if (!(s.MinP >= 0 && s.MinP <= 1)) throw new InvalidRequestException("min_p", $"min_p must be in [0, 1], got {G(s.MinP)}");
        float presence = EffectivePresencePenalty, repetition = EffectiveRepetitionPenalty;
        if (!(presence >= -2 && presence <= 2)) throw new InvalidRequestException("presence_penalty", $"presence_penalty must be in [-2, 2], got {G(presence)}");
        if (!(FrequencyPenalty >= -2 && FrequencyPenalty <= 2)) throw new InvalidRequestException("frequency_penalty", $"frequency_penalty must be in [-2, 2], got {G(FrequencyPenalty)}");
        if (!(repetition > 0) || !float.IsFinite(repetition)) throw new InvalidRequestException("repetition_penalty", $"repetition_penalty must be > 0 (1 = disabled), got {G(repetition)}");
        if (MaxNewTokens is < 1) throw new InvalidRequestException("max_tokens", $"max_tokens must be >= 1, got {MaxNewTokens}");
        if (TopLogprobs < -1 || TopLogprobs > 20) throw new InvalidRequestException("top_logprobs", $"top_logprobs must be in [0, 20], got {TopLogprobs}");
        if (Stop is null) throw new InvalidRequestException("stop", "stop must be a list of strings");
        foreach (var t in Stop)
            if (string.IsNullOrEmpty(t)) throw new InvalidRequestException("stop", "stop strings must not be empty");
        if (StopTokenIds is null) throw new InvalidRequestException("stop_token_ids", "stop_token_ids must be a list of token ids");
        foreach (int id in StopTokenIds)
            if ((uint)id >= (uint)vocabSize) throw new InvalidRequestException("stop_token_ids", $"stop_token_ids: token id {id} is outside the vocabulary [0, {vocabSize})");
        if (Drafter is not null && (NumDraftTokens < 1 || NumDraftTokens > Speculative.SpeculativeDecoder.MaxDraftTokens))
            throw new InvalidRequestException("num_draft_tokens", $"num_draft_tokens must be in [1, {Speculative.SpeculativeDecoder.MaxDraftTokens}], got {NumDraftTokens}");
        if (ToolCall is { } call)
        {
            if (call.ToolNames is null || call.ToolNames.Any(string.IsNullOrEmpty)) throw new InvalidRequestException("tools", "a guided tool call needs the tools' names (non-empty strings)");
            if (call.Name is null && call.ToolNames.Count == 0) throw new InvalidRequestException("tool_choice", "tool_choice 'required' needs at least one tool");
            if (call.Name is { Length: 0 }) throw new InvalidRequestException("tool_choice", "the named tool_choice has an empty name");
            if (Drafter is not null) throw new InvalidRequestException("tool_choice", "a guided tool call (tool_choice required or named) does not combine with speculative decoding");
        }
        if (Tools is { } tools && tools.ValueKind != JsonValueKind.Array) throw new InvalidRequestException("tools", $"tools must be an array of tool definitions, got {tools.ValueKind}");
    }
}

/// <summary>What a piece of a streamed answer is.</summary>
public enum PieceKind
{
    /// <summary>Text between &lt;think&gt; and &lt;/think&gt; (reasoning_content).</summary>
    Reasoning,
    /// <summary>The answer text.</summary>
    Content,
    /// <summary>A parsed tool call (<see cref="EnginePiece.ToolCall"/>).</summary>
    ToolCall,
}

/// <summary>A tool call the model made: its id ("call_..."), the function name and the arguments as JSON text.</summary>
public sealed record ToolCall(string Id, string Name, string ArgumentsJson);

/// <summary>The log-probability of a generated token and of the most likely alternatives at its position.</summary>
public sealed record TokenLogprob(int Token, string Text, float Logprob, IReadOnlyList<(int Token, string Text, float Logprob)> Top);

/// <summary>A piece of a streamed answer: whole characters of reasoning or content, or one tool call.</summary>
public readonly record struct EnginePiece(PieceKind Kind, string Text)
{
    /// <summary>The call, for <see cref="PieceKind.ToolCall"/> pieces.</summary>
    public ToolCall? ToolCall { get; init; }
    /// <summary>The tokens this piece's text came from, when logprobs were asked for.</summary>
    public IReadOnlyList<TokenLogprob>? Logprobs { get; init; }
}

public enum FinishReason
{
    /// <summary>An EOS token, a stop token id or a stop string.</summary>
    Stop,
    /// <summary>The token budget (max tokens) or the context is used up.</summary>
    Length,
    /// <summary>The answer ended after one or more tool calls.</summary>
    ToolCalls,
    /// <summary>The caller cancelled, abandoned the stream, or the engine shut down.</summary>
    Cancelled,
}

/// <summary>Token counts and timings of one request.</summary>
/// <param name="CachedPromptTokens">Prompt tokens whose KV came from the prefix cache (not prefilled).</param>
public sealed record RequestUsage(int PromptTokens, int CompletionTokens, int CachedPromptTokens, TimeSpan TimeToFirstToken, TimeSpan Total)
{
    /// <summary>Prompt tokens run through the model (recomputation after a preemption not counted).</summary>
    public int PrefilledTokens => PromptTokens - CachedPromptTokens;
    /// <summary>Decode rate after the first token.</summary>
    public double DecodeTokensPerSecond => CompletionTokens > 1 && Total > TimeToFirstToken ? (CompletionTokens - 1) / (Total - TimeToFirstToken).TotalSeconds : 0;
    /// <summary>Prefilled tokens over the time to the first token (queueing included).</summary>
    public double PrefillTokensPerSecond => PrefilledTokens > 0 && TimeToFirstToken > TimeSpan.Zero ? PrefilledTokens / TimeToFirstToken.TotalSeconds : 0;
}

/// <summary>What a request produced. <paramref name="Reasoning"/> is trimmed of newlines at both ends, <paramref name="Content"/> at its start.</summary>
public sealed record RequestResult(string Reasoning, string Content, IReadOnlyList<ToolCall> ToolCalls, IReadOnlyList<int> Tokens,
    FinishReason FinishReason, RequestUsage Usage)
{
    /// <summary>True when the request stopped because the context was full (a <see cref="FinishReason.Length"/> finish short of the token budget).</summary>
    public bool ContextFull { get; init; }
    /// <summary>The stop string that ended the answer (vLLM's stop_reason), if one did.</summary>
    public string? StopString { get; init; }
    /// <summary>The EOS or stop token id that ended the answer, if one did.</summary>
    public int? StopTokenId { get; init; }
    /// <summary>Acceptance counts when the request used speculative decoding (else null).</summary>
    public Speculative.SpeculationStats? Speculation { get; init; }
}

/// <summary>A request parameter is invalid; <see cref="Parameter"/> names it as the OpenAI API does (top_p, max_tokens, messages, ...).</summary>
public sealed class InvalidRequestException(string parameter, string message) : Qwen3CudaException(message)
{
    public string Parameter { get; } = parameter;
    public override ErrorKind Kind => ErrorKind.InvalidArgument;
}

/// <summary>The prompt has more tokens than the context holds.</summary>
public sealed class PromptTooLongException(int promptTokens, int contextLength)
    : Qwen3CudaException($"the prompt has {promptTokens} tokens, but the model's context holds {contextLength} (prompt and answer together)")
{
    public int PromptTokens { get; } = promptTokens;
    public int ContextLength { get; } = contextLength;
    public override ErrorKind Kind => ErrorKind.InvalidInput;
}

/// <summary>The waiting queue is full (the server answers 429 with Retry-After).</summary>
public sealed class EngineOverloadedException(string message) : Qwen3CudaException(message)
{
    public override ErrorKind Kind => ErrorKind.Unavailable;
}

/// <summary>The engine is shutting down or stopped (after a fault of the model, the message says which); no new requests.</summary>
public sealed class EngineShutDownException(string message, Exception? inner = null) : Qwen3CudaException(message, inner)
{
    public override ErrorKind Kind => ErrorKind.Unavailable;
}

/// <summary>A latency histogram (seconds) with Prometheus-style cumulative buckets.</summary>
public sealed class LatencyHistogram
{
    /// <summary>Upper bounds (seconds) of the buckets; a last +Inf bucket is implied.</summary>
    public static readonly double[] DefaultBounds = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80];
    private readonly long[] _counts = new long[DefaultBounds.Length + 1];

    public IReadOnlyList<double> Bounds => DefaultBounds;
    /// <summary>Observations per bucket (not cumulative); the last is the +Inf bucket.</summary>
    public IReadOnlyList<long> Counts => _counts;
    public long Count { get; private set; }
    public double Sum { get; private set; }

    public void Observe(double seconds)
    {
        int i = 0;
        while (i < DefaultBounds.Length && seconds > DefaultBounds[i]) i++;
        _counts[i]++;
        Count++;
        Sum += seconds;
    }

    public LatencyHistogram Copy()
    {
        var h = new LatencyHistogram { Count = Count, Sum = Sum };
        _counts.CopyTo(h._counts, 0);
        return h;
    }
}

/// <summary>A snapshot of the engine's counters (taken after a step).</summary>
public sealed record EngineMetrics
{
    public int Running { get; init; }
    public int Waiting { get; init; }
    public int KvPagesUsed { get; init; }
    public int KvPagesTotal { get; init; }
    /// <summary>Prompt tokens looked up in the prefix cache.</summary>
    public long PrefixCacheQueries { get; init; }
    /// <summary>Prompt tokens found in the prefix cache.</summary>
    public long PrefixCacheHits { get; init; }
    public double PrefixCacheHitRate => PrefixCacheQueries > 0 ? (double)PrefixCacheHits / PrefixCacheQueries : 0;
    public long PromptTokens { get; init; }
    public long GeneratedTokens { get; init; }
    public long RequestsFinished { get; init; }
    public long Preemptions { get; init; }
    public long Steps { get; init; }
    /// <summary>Speculative decoding (docs/speculative.md): verification rounds (vLLM's num_drafts), tokens the drafters
    /// proposed, and of those the ones the target accepted.</summary>
    public long SpecDecodeRounds { get; init; }
    public long SpecDecodeDraftTokens { get; init; }
    public long SpecDecodeAcceptedTokens { get; init; }
    /// <summary>Accepted over proposed tokens (0 when none were proposed).</summary>
    public double SpecDecodeAcceptanceRate => SpecDecodeDraftTokens > 0 ? (double)SpecDecodeAcceptedTokens / SpecDecodeDraftTokens : 0;
    /// <summary>Tokens a verification round emits on average: the accepted proposals plus the target's own token (vLLM's
    /// mean acceptance length; 0 before the first round).</summary>
    public double SpecDecodeMeanAcceptanceLength => SpecDecodeRounds > 0 ? 1 + (double)SpecDecodeAcceptedTokens / SpecDecodeRounds : 0;
    /// <summary>The engine's own latencies (from submission, without HTTP).</summary>
    public LatencyHistogram TimeToFirstToken { get; init; } = new();
    public LatencyHistogram InterTokenLatency { get; init; } = new();
}
