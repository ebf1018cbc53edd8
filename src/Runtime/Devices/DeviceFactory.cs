using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Runtime;

/// <summary>Chooses and opens a backend: what `--device cuda|emulator|cpu|auto` means.</summary>
public static class DeviceFactory
{
    /// <summary>Parses a --device value (case-insensitive), with a clear error naming the option.</summary>
    public static BackendKind Parse(string value) => value.Trim().ToLowerInvariant() switch
    {
        "auto" => BackendKind.Auto,
        "cuda" or "gpu" => BackendKind.Cuda,
        "emulator" or "emu" => BackendKind.Emulator,
        "cpu" => BackendKind.Cpu,
        _ => throw new ArgumentException($"--device '{value}': expected cuda, emulator, cpu or auto", nameof(value)),
    };

    /// <summary>Auto resolves to CUDA when a driver and a device are present, else to the emulator.</summary>
    public static BackendKind Resolve(BackendKind kind) =>
        kind == BackendKind.Auto ? (CudaDriver.IsDeviceAvailable() ? BackendKind.Cuda : BackendKind.Emulator) : kind;

    /// <summary>Opens a device backend. <see cref="BackendKind.Cpu"/> is not a device: the caller uses the reference model.</summary>
    public static IDevice Open(BackendKind kind, int ordinal = 0, EmulatorOptions? emulator = null) => Resolve(kind) switch
    {
        BackendKind.Cuda => CudaDevice.Open(ordinal),
        BackendKind.Emulator => new EmulatedDevice(emulator),
        BackendKind.Cpu => throw new ArgumentException("--device cpu runs the CPU reference model, which is not an IDevice", nameof(kind)),
        var k => throw new ArgumentOutOfRangeException(nameof(kind), $"unknown backend {k}"),
    };
}
