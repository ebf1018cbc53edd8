using System.Globalization;
using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Tests.Driver;

/// <summary>
/// The test assembly's entry point, used only as a child process: `dotnet Qwen3Cuda.Tests.dll
/// cuda-abi-probe` loads the real CUDA backend against the stub libcuda.so.1 named by
/// QWEN3CUDA_LIBCUDA (a process can bind "cuda" to one library only, so this cannot run inside the
/// test host). It drives the backend and prints what the stub received as "key=value" lines.
/// </summary>
public static class ProbeProgram
{
    /// <summary>A struct passed by value; C layout: int(0) float(4) u64(8) short(16), size 24.</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct ProbeStruct
    {
        public int A;
        public float B;
        public ulong C;
        public short D;
    }

    // Mirror of stub_launch in tests/stubcuda/stubcuda.c.
    [StructLayout(LayoutKind.Sequential)]
    private unsafe struct StubLaunch
    {
        public fixed byte Kernel[64];
        public fixed uint Grid[3];
        public fixed uint Block[3];
        public uint SharedBytes;
        public ulong Stream;
        public int ParamCount;
        public fixed int ParamSize[16];
        public fixed byte ParamBytes[16 * 256];
        public int Programmatic;
        public int Cooperative;
    }

    public static int Main(string[] args)
    {
        if (args is ["cuda-abi-probe"]) return CudaAbiProbe();
        Console.Error.WriteLine("usage: Qwen3Cuda.Tests cuda-abi-probe (with QWEN3CUDA_LIBCUDA set to the stub driver)");
        return 2;
    }

    private static unsafe int CudaAbiProbe()
    {
        string stub = Environment.GetEnvironmentVariable(NativeLibraries.CudaEnvironmentVariable)
            ?? throw new InvalidOperationException("QWEN3CUDA_LIBCUDA is not set");
        nint lib = NativeLibrary.Load(stub);
        var launchCount = (delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "stub_launch_count");
        var getLaunch = (delegate* unmanaged<int, StubLaunch*, int>)NativeLibrary.GetExport(lib, "stub_get_launch");
        var recordSize = (delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "stub_launch_record_size");
        var lastAttr = (delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "stub_last_func_attribute");
        var pdlProbeRuns = (delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "stub_pdl_probe_runs");
        if (recordSize() != sizeof(StubLaunch)) throw new InvalidOperationException($"stub_launch is {recordSize()} bytes, mirror is {sizeof(StubLaunch)}");

        var status = CudaDriver.Probe();
        Print("driver.version", status.DriverVersionText);
        Print("driver.devices", status.Devices.Count);
        using var dev = CudaDevice.Open(0);
        Print("device.name", dev.Info.Name);
        Print("device.arch", dev.Info.Arch);
        Print("device.sms", dev.Info.MultiprocessorCount);
        Print("device.smem_optin", dev.Info.SharedMemoryPerBlockOptin);
        Print("device.peak_bandwidth", dev.Info.PeakMemoryBandwidthBytesPerSecond ?? -1);
        Print("pdl.status", dev.ProgrammaticLaunchStatus);
        Print("pdl.probe_runs", pdlProbeRuns());
        Print("l2persist.status", dev.PersistingL2Status);
        Print("l2persist.limit", ((delegate* unmanaged<int>)NativeLibrary.GetExport(lib, "stub_last_limit"))());
        Print("l2persist.value", ((delegate* unmanaged<nuint>)NativeLibrary.GetExport(lib, "stub_last_limit_value"))());

        // memory: allocate, copy in, memset part, copy device-to-device, copy out
        DevicePtr a = dev.Allocate(256), b = dev.Allocate(256);
        Print("alloc.a", $"0x{a.Address:x}");
        Print("alloc.aligned", a.Address % 256 == 0 && b.Address % 256 == 0);
        byte[] pattern = Enumerable.Range(0, 256).Select(i => (byte)(i * 7 + 1)).ToArray();
        dev.CopyToDevice(a, pattern);
        using var stream = dev.CreateStream();
        dev.MemsetAsync(a + 16, 0xEE, 8, stream);
        dev.CopyDeviceToDeviceAsync(b, a, 256, stream);
        using var pinned = dev.AllocatePinned(256);
        dev.CopyToHostAsync(pinned, 0, b, 256, stream);
        dev.Synchronize(stream);
        Print("copy.roundtrip", Convert.ToHexStringLower(pinned.Span));

        // a module whose "image" declares the parameter sizes, like a cubin's metadata
        var module = new CompiledModule
        {
            Name = "probe.cu", PtxArch = "compute_90", Ptx = ".entry probe_kernel(",
            CubinArch = "sm_90", Cubin = "STUBMODULE\nkernel probe_kernel 8 4 4 24 1 8\n"u8.ToArray(),
        };
        using var mod = dev.LoadModule(module);
        DeviceKernel kernel = dev.GetKernel(mod, "probe_kernel");
        dev.SetMaxDynamicSharedMemory(kernel, 100_000);
        Print("attr.set", lastAttr());
        Print("attr.regs", dev.GetAttributes(kernel).Registers);
        Print("occupancy", dev.MaxActiveBlocksPerMultiprocessor(kernel, 256, 0));

        var probe = new ProbeStruct { A = 7, B = -2.0f, C = 0x1122334455667788, D = 0x99 };
        var args = new KernelArgs(stackalloc byte[KernelArgs.DefaultBufferBytes], stackalloc nint[KernelArgs.MaxArgs]);
        args.Add(a);
        args.Add(0x01020304);
        args.Add(1.5f);
        args.Add(probe);
        args.Add((byte)0xAB);
        args.Add(3.0);
        dev.Launch(kernel, new LaunchConfig(new Dim3(3, 2, 1), new Dim3(128), 4096), stream, args);

        // capture the same launch into a graph and replay it twice
        dev.BeginCapture(stream);
        dev.Launch(kernel, new LaunchConfig(new Dim3(5), new Dim3(64), 0), stream, args);
        using var graph = dev.EndCapture(stream);
        Print("graph.kernels", graph.KernelNodeCount);
        using var exec = dev.Instantiate(graph);
        dev.Launch(exec, stream);
        dev.Launch(exec, stream);
        // programmatic dependent launch: cuLaunchKernelEx with the attribute (the probe passed on the sm_90 stub)
        dev.Launch(kernel, new LaunchConfig(new Dim3(7), new Dim3(32), 64, ProgrammaticDependentLaunch: true), stream, args);
        // a cooperative launch: cuLaunchCooperativeKernel (never programmatic, even when both are asked)
        dev.Launch(kernel, new LaunchConfig(new Dim3(9), new Dim3(96), 0, ProgrammaticDependentLaunch: true, Cooperative: true), stream, args);

        using var e0 = dev.CreateEvent();
        using var e1 = dev.CreateEvent();
        dev.Record(e0, stream);
        dev.Record(e1, stream);
        dev.Synchronize(e1);
        Print("event.ms", dev.ElapsedMilliseconds(e0, e1));

        int n = launchCount();
        Print("launch.count", n);
        for (int i = 0; i < n; i++)
        {
            StubLaunch rec;
            getLaunch(i, &rec);
            Print($"launch{i}.kernel", Marshal.PtrToStringUTF8((nint)rec.Kernel)!);
            Print($"launch{i}.grid", $"{rec.Grid[0]},{rec.Grid[1]},{rec.Grid[2]}");
            Print($"launch{i}.block", $"{rec.Block[0]},{rec.Block[1]},{rec.Block[2]}");
            Print($"launch{i}.smem", rec.SharedBytes);
            Print($"launch{i}.programmatic", rec.Programmatic);
            Print($"launch{i}.cooperative", rec.Cooperative);
            for (int p = 0; p < rec.ParamCount; p++)
                Print($"launch{i}.param{p}", Convert.ToHexStringLower(new ReadOnlySpan<byte>(rec.ParamBytes + p * 256, rec.ParamSize[p])));
        }

        // errors: a PTX image the stub rejects (with a JIT log), a missing kernel, out of memory
        try { dev.LoadModule(module with { CubinArch = "sm_80" }); }
        catch (CudaException e) { Print("error.image", e.Message); }
        try { dev.GetKernel(mod, "missing_kernel"); }
        catch (CudaException e) { Print("error.function", e.Message); }
        try { dev.Allocate(1L << 41); }
        catch (DeviceOutOfMemoryException e) { Print("error.oom", e.Message); }

        dev.Free(a);
        dev.Free(b);
        return 0;
    }

    private static void Print(string key, object value) =>
        Console.WriteLine($"{key}={Convert.ToString(value, CultureInfo.InvariantCulture)}");
}
