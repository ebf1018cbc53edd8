using System.CommandLine;
using System.Globalization;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>`qwen3cuda info`: NVRTC version, driver version and devices (or why there are none).</summary>
public static class InfoCommand
{
    public static Command Create()
    {
        var cmd = new Command("info", "Print the NVRTC version, the CUDA driver version and the devices");
        cmd.SetAction(_ => CliErrors.Run(Run));
        return cmd;
    }

    private static int Run()
    {
        if (NativeLibraries.TryNvrtc(out _))
        {
            var (major, minor) = NvrtcLibrary.Version;
            Console.WriteLine($"NVRTC: {major}.{minor} ({NativeLibraries.NvrtcPath}), archs sm_{string.Join(" sm_", NvrtcLibrary.SupportedArchs())}");
        }
        else
        {
            Console.WriteLine("NVRTC: not found (tried " + string.Join(", ", NativeLibraries.NvrtcCandidates()) + "): kernels cannot be compiled");
        }

        CudaDriverStatus driver = CudaDriver.Probe();
        if (!driver.DriverLoaded)
        {
            Console.WriteLine("CUDA driver: " + driver.Problem);
            Console.WriteLine("Devices: none (use --device emulator or --device cpu)");
            return 0;
        }
        Console.WriteLine($"CUDA driver: {driver.DriverVersionText} ({driver.LibraryPath})");
        if (driver.Problem != null) Console.WriteLine("Devices: none: " + driver.Problem);
        for (int i = 0; i < driver.Devices.Count; i++)
        {
            var d = driver.Devices[i];
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Device {i}: {d.Name}, {d.Arch}, {d.MultiprocessorCount} SMs, {d.TotalMemoryBytes / (1024.0 * 1024 * 1024):F1} GiB, {d.SharedMemoryPerBlockOptin / 1024} KiB shared memory per block (opt-in)"));
        }
        return 0;
    }
}
