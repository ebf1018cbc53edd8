namespace Qwen3Cuda.Server;

/// <summary>How <see cref="OpenAiServer"/> listens and whom it serves (docs/serving.md).</summary>
public sealed record ServerOptions
{
    /// <summary>An IP address, or a host name resolved to its first address; 0.0.0.0 listens on every interface.</summary>
    public string Host { get; init; } = "127.0.0.1";
    /// <summary>0 picks a free port (see <see cref="OpenAiServer.Address"/>).</summary>
    public int Port { get; init; } = 8000;
    /// <summary>When set, /v1/* requests need "Authorization: Bearer KEY" (401 otherwise); /health and /metrics stay open.</summary>
    public string? ApiKey { get; init; }
    /// <summary>The model name clients send; default: the engine's name. The engine's own name is accepted too.</summary>
    public string? ServedModelName { get; init; }
    /// <summary>Larger request bodies get 413.</summary>
    public long MaxBodyBytes { get; init; } = 32L << 20;
    /// <summary>Stop on SIGTERM and Ctrl+C (the CLI); false in tests and embedding programs, which call StopAsync.</summary>
    public bool HandleSignals { get; init; }
    /// <summary>How long a shutdown lets in-flight requests finish before it cancels them.</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);
    /// <summary>The Retry-After of 429 (queue full) and 503 (shutting down) answers.</summary>
    public int RetryAfterSeconds { get; init; } = 1;
    /// <summary>One line per request (method, path, status, tokens, time); null = silent.</summary>
    public TextWriter? Log { get; init; }
}
