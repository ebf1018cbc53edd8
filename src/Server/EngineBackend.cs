using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Server;

/// <summary>The server's view of the real <see cref="Engine"/>; sampling defaults come from the model folder's generation_config.json.</summary>
public sealed class EngineBackend(Engine engine, string modelDirectory) : IServingEngine
{
    public Engine Engine { get; } = engine;
    public string ModelName => Engine.ModelName;
    public int ContextLength => Engine.ContextLength;
    public int VocabSize => Engine.Tokenizer.VocabSize;
    public SamplingOptions DefaultSampling(bool thinking) => SamplingOptions.DefaultsFor(modelDirectory, thinking);
    public IReadOnlyList<int> Tokenize(string text) => Engine.Tokenizer.Encode(text);
    public string Detokenize(IReadOnlyList<int> ids) => Engine.Tokenizer.Decode([.. ids]);
    public IReadOnlyList<int> RenderChat(IReadOnlyList<ChatMessage> messages, RequestOptions options) => Engine.RenderChat(messages, options);
    public IServingRequest Submit(IReadOnlyList<int> promptTokens, RequestOptions options, CancellationToken ct) =>
        new Request(Engine.Submit(promptTokens, options, ct));
    public Task ShutdownAsync(bool cancelInFlight, CancellationToken ct) => Engine.ShutdownAsync(cancelInFlight, ct);

    public EngineMetrics Metrics => Engine.Metrics;

    sealed class Request(EngineRequest r) : IServingRequest
    {
        public IAsyncEnumerable<EnginePiece> Pieces => r.Pieces;
        public Task<RequestResult> Result => r.Result;
        public int PromptTokens => r.PromptTokens;
    }
}
