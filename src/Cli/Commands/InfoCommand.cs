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
/// `qwen3cuda info -m MODEL [-c N] [--gpu-memory 80GiB]`: the device memory plan (weights, KV cache,
/// workspace, free) from config.json alone; exit code 1 with the missing amount when the model does not fit.
/// </summary>
public static class InfoCommand
{
    /// <summary>The budget assumed when neither --gpu-memory nor a CUDA device says otherwise (an 80 GB H100).</summary>
    public const long DefaultGpuMemoryBytes = 80L << 30;

    public static Command Create()
    {
        var model = CliOptions.Model(required: false);
        model.Description = "Print the device memory plan of this model from its config.json (no weights read). " + CliOptions.ModelDescription;
        var ctx = CliOptions.CtxSize();
        ctx.Description = "Tokens of context per sequence (default: max_position_embeddings); the plan fails when the KV pool cannot hold one sequence of it";
        var mem = CliOptions.GpuMemory();
        mem.Description = "Device memory to plan for, e.g. 80GiB (default: the CUDA device's free memory, else 80 GiB)";
        var seqs = CliOptions.Int("--sequences", ["--max-num-seqs"], "Sequences held at once: the KV pool takes at most what they use at full context", 1, 1, 4096);
        var util = CliOptions.GpuMemoryUtilization();
        var kv = CliOptions.KvCacheDtype();
        var cmd = new Command("info", "Print the NVRTC version, the CUDA driver version and the devices, or a model's memory plan") { model, ctx, mem, seqs, util, kv };
        cmd.SetAction(parse => parse.GetValue(model) is string m
            ? RunPlan(parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error, m, parse.GetValue(ctx), parse.GetValue(mem), parse.GetValue(seqs), parse.GetValue(util), CliOptions.ParseKvCacheDtype(parse.GetValue(kv)))
            : Run(parse.InvocationConfiguration.Output));
        return cmd;
    }

    private static int RunPlan(TextWriter stdout, TextWriter stderr, string modelSpec, int? ctxSize, long? gpuMemory, int sequences, double? utilization,
        Qwen3Cuda.Runtime.Memory.KvCacheDtype kvCacheDtype)
    {
        string modelDir = ModelOpener.Resolve(modelSpec, stderr);
        var config = ModelConfig.Load(modelDir);
        Model.Checkpoint.CheckpointFormat.FromConfig(config);   // an unsupported quantization_config is refused by name
        CliOptions.ContextCheck(ctxSize, config, stderr);
        // The options a CUDA load with this many sequences gets (the engine's output rows; the prefill chunk as a GPU load
        // without --max-num-batched-tokens chooses it: docs/memory.md, "The prefill chunk").
        var options = Model.ModelLoader.DeviceOptions(new Model.ModelLoadOptions
        {
            ContextLength = ctxSize, GpuMemoryBytes = gpuMemory, GpuMemoryUtilization = utilization, MaxSequences = sequences, MaxOutputRows = sequences, KvCacheDtype = kvCacheDtype,
        }, config, emulator: false);
        options.Validate();
        MemoryPlan plan;
        string? source = null;
        if (gpuMemory is long budget)
            plan = MemoryPlan.Compute(config, PrefillChunkSizing.Choose(config, options, (budget, budget), 132, false), budget, checkpointHasLmHead: false);
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
            plan = MemoryPlan.Compute(config, PrefillChunkSizing.Choose(config, options, memory, 132, false), memory, checkpointHasLmHead: false);
        }
        stdout.Write(plan.Describe());
        if (source is not null) stdout.WriteLine($"  (device memory {source})");
        stdout.Flush();
        plan.ThrowIfDoesNotFit();
        return 0;
    }

    private static int Run(TextWriter stdout)
    {
        if (NativeLibraries.TryNvrtc(out _))
        {
            var (major, minor) = NvrtcLibrary.Version;
            stdout.WriteLine($"NVRTC: {major}.{minor} ({NativeLibraries.NvrtcPath}), archs sm_{string.Join(" sm_", NvrtcLibrary.SupportedArchs())}");
        }
        else
        {
            stdout.WriteLine("NVRTC: not found (tried " + string.Join(", ", NativeLibraries.NvrtcCandidates()) + "): kernels cannot be compiled");
        }

        CudaDriverStatus driver = CudaDriver.Probe();
        if (!driver.DriverLoaded)
        {
            stdout.WriteLine("CUDA driver: " + driver.Problem);
            stdout.WriteLine("Devices: none (use --device emulator or --device cpu)");
            return 0;
        }
        stdout.WriteLine($"CUDA driver: {driver.DriverVersionText} ({driver.LibraryPath})");
        if (driver.Problem != null) stdout.WriteLine("Devices: none: " + driver.Problem);
        for (int i = 0; i < driver.Devices.Count; i++)
        {
            var d = driver.Devices[i];
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"Device {i}: {d.Name}, {d.Arch}, {d.MultiprocessorCount} SMs, {d.TotalMemoryBytes / (1024.0 * 1024 * 1024):F1} GiB, {d.SharedMemoryPerBlockOptin / 1024} KiB shared memory per block (opt-in)"));
        }
        return 0;
    }
}
