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

    /// <summary>Auto resolves to CUDA when a driver loads and device 0 opens, else to the emulator (<see cref="ChooseAuto()"/>).</summary>
    public static BackendKind Resolve(BackendKind kind) => kind == BackendKind.Auto ? ChooseAuto().Backend : kind;

    /// <summary>Like <see cref="Resolve(BackendKind)"/>; for auto also writes "--device auto: REASON" (one line) to <paramref name="log"/>.</summary>
    public static BackendKind Resolve(BackendKind kind, TextWriter? log)
    {
        if (kind != BackendKind.Auto) return kind;
        var choice = ChooseAuto();
        log?.WriteLine($"--device auto: {choice.Reason}");
        log?.Flush();
        return choice.Backend;
    }

    /// <summary>What `--device auto` picks on this machine: probes the driver (<see cref="CudaDriver.Probe"/>) and decides.</summary>
    public static BackendChoice ChooseAuto() => ChooseAuto(BackendKind.Emulator);

    /// <summary>
    /// What `--device auto` picks when the verb's fallback without a GPU is <paramref name="fallback"/>: the emulator for
    /// verbs that need kernels (profile), the CPU reference for generation (the emulator is 30-40x slower; it is for
    /// testing kernels).
    /// </summary>
    public static BackendChoice ChooseAuto(BackendKind fallback)
    {
        CudaDriverStatus status;
        try { status = CudaDriver.Probe(); }
        catch (DeviceException e)
        {
            status = new CudaDriverStatus(true, null, 0, [], $"the CUDA driver failed while listing devices: {e.Message}");
        }
        return ChooseAuto(status, fallback);
    }

    /// <summary>
    /// The decision of `--device auto` from a driver probe: CUDA device 0 when the probe opened at least one device,
    /// otherwise the emulator, with the probe's problem as the reason. Pure (testable without a GPU).
    /// </summary>
    public static BackendChoice ChooseAuto(CudaDriverStatus status) => ChooseAuto(status, BackendKind.Emulator);

    /// <summary>Like <see cref="ChooseAuto(CudaDriverStatus)"/> with the backend to use without a GPU (emulator or cpu).</summary>
    public static BackendChoice ChooseAuto(CudaDriverStatus status, BackendKind fallback)
    {
        if (status.Devices.Count > 0)
        {
            var d = status.Devices[0];
            return new BackendChoice(BackendKind.Cuda, $"CUDA device 0 ({d.Name}, {d.Arch}, driver {status.DriverVersionText}): running on the GPU");
        }
        string why = status.Problem ?? (status.DriverLoaded ? "no CUDA device present" : "no CUDA driver found");
        return fallback switch
        {
            BackendKind.Cpu => new BackendChoice(BackendKind.Cpu, $"{why}: running on the CPU reference (--device emulator runs the CUDA kernels on the PTX emulator, for testing: 30-40x slower)"),
            BackendKind.Emulator => new BackendChoice(BackendKind.Emulator, $"{why}: running on the PTX emulator (slow; --device cpu for the C# reference)"),
            _ => throw new ArgumentOutOfRangeException(nameof(fallback), $"--device auto falls back to cpu or emulator, not {fallback}"),
        };
    }

    /// <summary>
    /// Opens a device backend. <see cref="BackendKind.Cpu"/> is not a device: the caller uses the reference model.
    /// CUDA without a driver or a device is a <see cref="DeviceUnavailableException"/> saying so.
    /// </summary>
    public static IDevice Open(BackendKind kind, int ordinal = 0, EmulatorOptions? emulator = null) => Resolve(kind) switch
    {
        BackendKind.Cuda => OpenCuda(ordinal),
        BackendKind.Emulator => new EmulatedDevice(emulator),
        BackendKind.Cpu => throw new ArgumentException("--device cpu runs the CPU reference model, which is not an IDevice", nameof(kind)),
        var k => throw new ArgumentOutOfRangeException(nameof(kind), $"unknown backend {k}"),
    };

    private static IDevice OpenCuda(int ordinal)
    {
        try { return CudaDevice.Open(ordinal); }
        catch (Native.NativeLibraryMissingException e)
        {
            throw new DeviceUnavailableException($"--device cuda is not available on this machine: {e.Message} (--device cpu runs the C# reference)", e);
        }
        catch (Exception e) when (e is Native.CudaException { Result: Native.CuResult.NoDevice or Native.CuResult.InvalidDevice } or ArgumentOutOfRangeException)
        {
            throw new DeviceUnavailableException($"--device cuda is not available on this machine: {e.Message} (--device cpu runs the C# reference)", e);
        }
    }
}

/// <summary>A backend picked by `--device auto` and the one-line reason the CLI prints on stderr.</summary>
public readonly record struct BackendChoice(BackendKind Backend, string Reason);
