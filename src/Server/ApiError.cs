using System.Net;

namespace Qwen3Cuda.Server;

/// <summary>
/// An error answered in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, with an HTTP status. The message
/// names the request field at fault (<see cref="Param"/>, e.g. "top_p", "messages[1].role"), as OpenAI's API does.
/// </summary>
public sealed class ApiException(int status, string type, string? param, string? code, string message) : Exception(message)
{
    public int Status { get; } = status;
    public string Type { get; } = type;
    public string? Param { get; } = param;
    public string? Code { get; } = code;
    /// <summary>Seconds for a Retry-After header (429, 503).</summary>
    public int? RetryAfterSeconds { get; init; }

    public static ApiException BadRequest(string? param, string message, string code = "invalid_value") =>
        new((int)HttpStatusCode.BadRequest, "invalid_request_error", param, code, message);

    public static ApiException BadJson(string message) =>
        new((int)HttpStatusCode.BadRequest, "invalid_request_error", null, "invalid_json", message);

    public static ApiException Unauthorized() =>
        new((int)HttpStatusCode.Unauthorized, "authentication_error", null, "invalid_api_key",
            "Incorrect or missing API key: send it as 'Authorization: Bearer KEY' (the key given to qwen3cuda serve --api-key).");

    public static ApiException ModelNotFound(string model, string served) =>
        new((int)HttpStatusCode.NotFound, "invalid_request_error", "model", "model_not_found",
            $"The model '{model}' does not exist; this server serves '{served}' (see GET /v1/models).");

    public static ApiException NotFound(string path) =>
        new((int)HttpStatusCode.NotFound, "invalid_request_error", null, "not_found",
            $"No endpoint {path}: this server has POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health and GET /metrics.");

    public static ApiException TooLarge(long limit) =>
        new((int)HttpStatusCode.RequestEntityTooLarge, "invalid_request_error", null, "request_too_large",
            $"The request body is larger than this server accepts ({limit} bytes).");

    public static ApiException Overloaded(string message, int retryAfter) =>
        new((int)HttpStatusCode.TooManyRequests, "rate_limit_error", null, "queue_full", message) { RetryAfterSeconds = retryAfter };

    public static ApiException ShuttingDown(int retryAfter) =>
        new((int)HttpStatusCode.ServiceUnavailable, "service_unavailable_error", null, "shutting_down",
            "The server is shutting down and accepts no new requests.") { RetryAfterSeconds = retryAfter };

    public static ApiException Internal(string message) =>
        new((int)HttpStatusCode.InternalServerError, "internal_error", null, "internal_error", message);
}
