namespace Qwen3Cuda.Runtime;

/// <summary>What kind of failure a <see cref="Qwen3CudaException"/> is, for callers that map errors to exit codes or statuses.</summary>
public enum ErrorKind
{
    /// <summary>A file, folder, model, tokenizer, template or other input is missing, malformed or unsupported.</summary>
    InvalidInput,
    /// <summary>An argument or option value is out of range or contradicts another.</summary>
    InvalidArgument,
    /// <summary>Something this machine lacks: NVRTC, the CUDA driver, a GPU.</summary>
    Unavailable,
    /// <summary>The model, its KV cache or an allocation does not fit the device memory.</summary>
    OutOfMemory,
    /// <summary>A driver call or a kernel failed (a CUDA error, an emulator memory/race/sync check, a watchdog stop).</summary>
    DeviceFault,
}

/// <summary>
/// The base of every error this library raises on purpose. Its <see cref="Exception.Message"/> is written for the
/// person running the program: one sentence (the emulator's faults add the PTX lines below it) that names the file,
/// tensor, field or option at fault and, where there is one, the fix. Anything else that escapes the library
/// (NullReferenceException, InvalidOperationException, ...) is a bug. See docs/troubleshooting.md.
/// </summary>
public abstract class Qwen3CudaException : Exception
{
    protected Qwen3CudaException(string message) : base(message) { }
    protected Qwen3CudaException(string message, Exception? inner) : base(message, inner) { }

    public abstract ErrorKind Kind { get; }
}

/// <summary>A backend that cannot run here, e.g. `--device cuda` without a driver or a GPU; the message says why.</summary>
public sealed class DeviceUnavailableException(string message, Exception? inner = null) : Qwen3CudaException(message, inner)
{
    public override ErrorKind Kind => ErrorKind.Unavailable;
}
