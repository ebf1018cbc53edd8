using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Runtime.Cuda;

/// <summary>What `qwen3cuda info` reports about the CUDA driver, probed without throwing.</summary>
public sealed record CudaDriverStatus(bool DriverLoaded, string? LibraryPath, int DriverVersion, IReadOnlyList<DeviceInfo> Devices, string? Problem)
{
    /// <summary>"12.4" from 12040.</summary>
    public string DriverVersionText => DriverVersion == 0 ? "-" : $"{DriverVersion / 1000}.{DriverVersion % 1000 / 10}";
}

public static class CudaDriver
{
    /// <summary>Loads the driver, initialises it and lists the devices; every failure becomes <see cref="CudaDriverStatus.Problem"/>.</summary>
    public static CudaDriverStatus Probe()
    {
        if (!NativeLibraries.TryCuda(out _))
            return new CudaDriverStatus(false, null, 0, [], "no CUDA driver found (tried " + string.Join(", ", NativeLibraries.CudaCandidates()) + ")");
        CuResult r = CudaApi.cuInit(0);
        CudaApi.cuDriverGetVersion(out int version);
        if (r != CuResult.Success)
        {
            var (name, text) = CudaCheck.Describe(r);
            return new CudaDriverStatus(true, NativeLibraries.CudaPath, version, [], $"cuInit failed: {name} ({text})");
        }
        CudaCheck.Check(CudaApi.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        var devices = new List<DeviceInfo>();
        for (int i = 0; i < count; i++)
        {
            using var d = CudaDevice.Open(i);
            devices.Add(d.Info);
        }
        return new CudaDriverStatus(true, NativeLibraries.CudaPath, version, devices, count == 0 ? "no CUDA device present" : null);
    }

    /// <summary>True when a driver loads and reports at least one device (what `--device auto` asks).</summary>
    public static bool IsDeviceAvailable()
    {
        if (!NativeLibraries.TryCuda(out _)) return false;
        return CudaApi.cuInit(0) == CuResult.Success && CudaApi.cuDeviceGetCount(out int n) == CuResult.Success && n > 0;
    }
}
