namespace Qwen3Cuda.Model.Config;

/// <summary>config.json is missing, malformed, or describes a model this runtime does not support.
/// The message names the file and the field.</summary>
public sealed class ConfigException : Runtime.Qwen3CudaException
{
    public ConfigException(string message) : base(message) { }
    public ConfigException(string message, Exception inner) : base(message, inner) { }
    public override Runtime.ErrorKind Kind => Runtime.ErrorKind.InvalidInput;
}
