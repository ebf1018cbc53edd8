using System.CommandLine;
using System.Globalization;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Memory;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda info`: NVRTC version, driver version and devices (or why there are none).
/// `qwen3cuda info --model DIR [--ctx-size N] [--gpu-memory 80GiB | --gpu-memory-utilization U]`: the device memory plan
/// (weights, KV cache, workspace, reserve, free) from config.json alone; exit code 1 with the missing amount when the model
/// does not fit.
/// </summary>
public static class InfoCommand
{
    /// <summary>The budget assumed when neither --gpu-memory nor a CUDA device says otherwise (an 80 GB H100).</summary>
    public const long DefaultGpuMemoryBytes = 80L << 30;

    public static Command Create()
    {
        var model = new Option<string?>("--model") { Description = "Model directory: print the device memory plan from its config.json (no weights read)" };
        var ctx = new Option<int?>("--ctx-size") { Description = "Tokens of context per sequence (default: as many as fit, at most max_position_embeddings)" };
        var mem = new Option<string?>("--gpu-memory") { Description = "Device memory to plan for, e.g. 80GiB (default: the CUDA device's free memory, else 80 GiB)" };
        var seqs = new Option<int>("--sequences") { Description = "Sequences held at once", DefaultValueFactory = _ => 1 };
        var util = GpuMemoryCliOption.Create();
        var cmd = new Command("info", "Print the NVRTC version, the CUDA driver version and the devices, or a model's memory plan") { model, ctx, mem, seqs, util };
        cmd.SetAction(parse => parse.GetValue(model) is string dir
            ? PlanGuard(parse.InvocationConfiguration.Error, () => RunPlan(parse.InvocationConfiguration.Output, dir, parse.GetValue(ctx), parse.GetValue(mem),
                parse.GetValue(seqs), GpuMemoryCliOption.Parse(parse.GetValue(util))))
            : PlanGuard(parse.InvocationConfiguration.Error, () => { GpuMemoryCliOption.Parse(parse.GetValue(util)); return CliErrors.Run(Run); }));
        return cmd;
    }

    private static int PlanGuard(TextWriter stderr, Func<int> action)
    {
        try { return action(); }
        catch (Exception e) when (e is ArgumentException or FormatException or IOException or InvalidDataException or InvalidOperationException or DeviceException)
        {
            stderr.WriteLine($"error: {CliErrors.Message(e)}");
            return 1;
        }
    }

    private static int RunPlan(TextWriter stdout, string modelDir, int? ctxSize, string? gpuMemory, int sequences, double? utilization)
    {
        if (!Directory.Exists(modelDir) && !File.Exists(modelDir)) throw new ArgumentException($"--model: directory '{modelDir}' does not exist");
        ModelConfig config;
        try
        {
            config = ModelConfig.Load(modelDir);
            Model.Checkpoint.CheckpointFormat.FromConfig(config);   // an unsupported quantization_config is refused by name
        }
        catch (ConfigException e) { throw new InvalidDataException(e.Message, e); }
        long? budget = gpuMemory is null ? null : ByteSize.Parse(gpuMemory, "--gpu-memory");
        var options = new DeviceModelOptions { ContextLength = ctxSize, GpuMemoryBytes = budget, GpuMemoryUtilization = utilization, MaxSequences = sequences };
        options.Validate();
        MemoryPlan plan;
        string? source = null;
        if (budget is long b) plan = MemoryPlan.Compute(config, options, b, checkpointHasLmHead: false);
        else
        {
            (long Free, long Total) memory = (DefaultGpuMemoryBytes, DefaultGpuMemoryBytes);
            source = "assumed: an 80 GiB device (no --gpu-memory, no CUDA device)";
            if (CudaDriver.IsDeviceAvailable())
            {
                using var device = Runtime.DeviceFactory.Open(Runtime.BackendKind.Cuda);
                memory = device.GetMemoryInfo();
                source = $"measured on {device.Info.Name} now; loading the model's kernels takes some more";
            }
            plan = MemoryPlan.Compute(config, options, memory, checkpointHasLmHead: false);
        }
        stdout.Write(plan.Describe());
        if (source is not null) stdout.WriteLine($"  (device memory {source})");
        plan.ThrowIfDoesNotFit();
        return 0;
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
