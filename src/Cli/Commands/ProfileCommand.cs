using Qwen3Cuda.Model;
using System.CommandLine;
using System.Globalization;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda profile --model DIR [--device emulator|cuda|auto] [--tokens N]`: one prefill of N tokens and one decode
/// step. On the emulator: a per-kernel table (launches, warp instructions, global bytes, distinct DRAM sectors,
/// coalescing) and the decode step's DRAM bytes against the minimum it must move. On CUDA: each step's time as the
/// model runs it (decode: the graph replay), and a per-kernel GPU time table from the step run again with its kernels
/// launched one by one between CUDA events (<see cref="DeviceProfiler"/>).
/// </summary>
public static class ProfileCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model directory (config.json + safetensors)", Required = true };
        var device = new Option<string>("--device") { Description = "emulator (counters: instructions, bytes, DRAM sectors) | cuda (per-kernel GPU times) | auto (cuda when a GPU opens)", DefaultValueFactory = _ => "emulator" };
        var tokens = new Option<int>("--tokens") { Description = "Prompt tokens of the profiled prefill", DefaultValueFactory = _ => 8 };
        var util = GpuMemoryCliOption.Create();
        var cmd = new Command("profile", "Per-kernel profile of one prefill and one decode step") { model, device, tokens, util };
        cmd.SetAction(parse => Guard(parse.InvocationConfiguration.Error, () =>
            Run(parse.GetValue(model)!, parse.GetValue(device)!, parse.GetValue(tokens), GpuMemoryCliOption.Parse(parse.GetValue(util)),
                parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error)));
        return cmd;
    }

    internal static int Guard(TextWriter stderr, Func<int> action)
    {
        try { return action(); }
        catch (Exception e) when (e is ArgumentException or FormatException or IOException or InvalidOperationException or DeviceException
            or NotSupportedException or Model.Config.ConfigException or Model.Checkpoint.CheckpointException)
        {
            stderr.WriteLine($"error: {CliErrors.Message(e)}");
            return 1;
        }
    }

    /// <summary>The result of <see cref="Measure"/>: both steps and the decode minimum.</summary>
    public sealed record Result(StepProfile Prefill, StepProfile Decode, long MinimumDecodeBytes, bool Emulator);

    public static Result Measure(string modelDir, BackendKind backend, int tokens, double? gpuMemoryUtilization = null)
    {
        if (tokens < 1) throw new ArgumentException($"--tokens must be at least 1, got {tokens}");
        if (!Directory.Exists(modelDir)) throw new ArgumentException($"--model: directory '{modelDir}' does not exist");
        backend = DeviceFactory.Resolve(backend);
        if (backend == BackendKind.Cpu) throw new ArgumentException("--device cpu has no kernels to profile (use emulator or cuda)");
        using var device = DeviceFactory.Open(backend);
        using var timing = new KernelTimingDevice(device);   // per-kernel events on CUDA; forwards everything
        var options = new DeviceModelOptions
        {
            ContextLength = tokens + 16, PrefillChunkTokens = Math.Min(tokens, 512), MaxBatch = 1, PageSize = 16, GpuMemoryUtilization = gpuMemoryUtilization,
        };
        using var dm = DeviceModel.Load(timing, modelDir, options);
        int V = dm.VocabSize;
        var prompt = Enumerable.Range(0, tokens).Select(i => (i * 7919 + 11) % V).ToArray();
        var logits = new float[V];
        var prefill = DeviceProfiler.Profile(dm, "prefill", tokens, () => dm.Forward(0, prompt, logits), undo: () => dm.ResetSequence(0));
        int next = Array.IndexOf(logits, logits.Max());
        var decode = DeviceProfiler.Profile(dm, "decode", 1, () => dm.Forward(0, [next], logits), undo: () => dm.TruncateSequence(0, tokens));
        return new Result(prefill, decode, DeviceProfiler.MinimumDecodeBytes(dm.Plan, tokens + 1), backend == BackendKind.Emulator);
    }

    private static int Run(string modelDir, string deviceText, int tokens, double? utilization, TextWriter stdout, TextWriter stderr)
    {
        var backend = DeviceFactory.Resolve(DeviceFactory.Parse(deviceText), stderr);
        var r = Measure(modelDir, backend, tokens, utilization);
        stdout.Write(DeviceProfiler.Table(r.Prefill, r.Emulator));
        stdout.Write(DeviceProfiler.Table(r.Decode, r.Emulator));
        if (r.Emulator)
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"decode step DRAM: {ByteSize.Format(r.Decode.DramBytes)} vs minimum {ByteSize.Format(r.MinimumDecodeBytes)} (active weights + lm_head + embedding row + KV): {(double)r.Decode.DramBytes / r.MinimumDecodeBytes:F3}x"));
        return 0;
    }
}
