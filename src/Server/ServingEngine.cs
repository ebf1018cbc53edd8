using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Server;

/// <summary>
/// What the HTTP layer needs from an engine. <see cref="EngineBackend"/> is the real one (the <see cref="Engine"/> of
/// src/Model/Serving); tests put a scripted double behind the same interface to pin the wire format of pieces a tiny random
/// model would never produce (tool calls). Every call is thread-safe; none blocks on the model.
/// </summary>
public interface IServingEngine
{
    /// <summary>The name clients send as "model" (also listed by GET /v1/models).</summary>
    string ModelName { get; }
    /// <summary>Tokens of context per sequence: prompt plus completion.</summary>
    int ContextLength { get; }
    /// <summary>Token ids a prompt may hold are 0 .. VocabSize-1.</summary>
    int VocabSize { get; }
    /// <summary>The model's sampling defaults (generation_config.json) for a request that leaves them unset.</summary>
    SamplingOptions DefaultSampling(bool thinking);
    IReadOnlyList<int> Tokenize(string text);
    string Detokenize(IReadOnlyList<int> ids);
    /// <summary>The prompt ids of a conversation through the model's chat template (tools and enable_thinking from <paramref name="options"/>).</summary>
    IReadOnlyList<int> RenderChat(IReadOnlyList<ChatMessage> messages, RequestOptions options);
    /// <summary>Queues a request; throws InvalidRequestException, PromptTooLongException, EngineOverloadedException or
    /// EngineShutDownException. Cancelling <paramref name="ct"/> frees the request at the engine's next step.</summary>
    IServingRequest Submit(IReadOnlyList<int> promptTokens, RequestOptions options, CancellationToken ct);
    /// <summary>The engine's gauges and counters that GET /metrics reports (the server adds its own latency histograms).</summary>
    EngineMetrics Metrics { get; }
    /// <summary>Stops admitting; finishes (or cancels) what is in flight.</summary>
    Task ShutdownAsync(bool cancelInFlight, CancellationToken ct);
}

/// <summary>A request in flight: read <see cref="Pieces"/> (once) to the end, then <see cref="Result"/>.</summary>
public interface IServingRequest
{
    IAsyncEnumerable<EnginePiece> Pieces { get; }
    Task<RequestResult> Result { get; }
    int PromptTokens { get; }
}
