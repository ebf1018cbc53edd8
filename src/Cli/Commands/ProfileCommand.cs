using System.CommandLine;
using System.Globalization;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda profile -m MODEL [--device emulator|cuda|auto] [-p N]`: one prefill of N tokens and one decode
/// step. On the emulator: a per-kernel table (launches, warp instructions, global bytes, distinct DRAM sectors,
/// coalescing) and the decode step's DRAM bytes against the minimum it must move. On CUDA: each step's time as the
/// model runs it (decode: the graph replay), and a per-kernel GPU time table from the step run again with its kernels
/// launched one by one between CUDA events (<see cref="DeviceProfiler"/>).
/// </summary>
public static class ProfileCommand
{
    public static Command Create()
    {
        var model = CliOptions.Model();
        var device = CliOptions.Device("emulator", "emulator (default; counters: instructions, bytes, DRAM sectors) | cuda (per-kernel GPU times) | auto (cuda when a GPU opens, else the emulator)",
            "emulator", "cuda", "auto");
        var tokens = CliOptions.Int("--n-prompt", ["-p", "--tokens"], "Prompt tokens of the profiled prefill (the decode step follows it)", 8, 1, CliOptions.MaxContextTokens);
        var util = CliOptions.GpuMemoryUtilization();
        var cmd = new Command("profile", "Per-kernel profile of one prefill and one decode step") { model, device, tokens, util };
        cmd.SetAction(parse => Run(parse.GetValue(model)!, parse.GetValue(device)!, parse.GetValue(tokens), parse.GetValue(util),
            parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error));
        return cmd;
    }

    /// <summary>The result of <see cref="Measure"/>: both steps and the decode minimum.</summary>
    public sealed record Result(StepProfile Prefill, StepProfile Decode, long MinimumDecodeBytes, bool Emulator);

    /// <summary>Most prompt tokens profiled on the emulator: it checks every access of every thread, so a prefill costs
    /// seconds per token on a real-shape model; beyond this, profile on a GPU (the traffic per token is what matters).</summary>
    public const int EmulatorMaxTokens = 4096;

    /// <param name="log">Hears, for a long prompt on the emulator, that this will take a while.</param>
    public static Result Measure(string modelDir, BackendKind backend, int tokens, TextWriter? log = null, double? utilization = null)
    {
        if (tokens < 1) throw new UsageException($"--n-prompt must be at least 1, got {tokens}");
        if (!Directory.Exists(modelDir)) throw new ModelNotFoundException($"--model: folder '{modelDir}' does not exist");
        var config = ModelConfig.Load(modelDir);
        if (tokens + 1 > config.MaxPositionEmbeddings)
            throw new UsageException($"--n-prompt {tokens}: the prefill and one decode step need {tokens + 1} positions, the model's context is {config.MaxPositionEmbeddings} (max_position_embeddings)");
        backend = DeviceFactory.Resolve(backend);
        if (backend == BackendKind.Emulator && tokens > EmulatorMaxTokens)
            throw new UsageException($"--n-prompt {tokens}: the emulator profiles at most {EmulatorMaxTokens} prompt tokens (it checks every memory access; a longer prefill takes hours); use --device cuda for longer prompts");
        if (backend == BackendKind.Emulator && tokens > 64)
            log?.WriteLine($"profile: a prefill of {tokens} tokens on the PTX emulator checks every memory access of every thread and can take minutes " +
                "(what profile measures, the traffic per token, shows at -p 8)");
        if (backend == BackendKind.Cpu) throw new ArgumentException("--device cpu has no kernels to profile (use emulator or cuda)");
        using var device = DeviceFactory.Open(backend);
        using var timing = new KernelTimingDevice(device);   // per-kernel events on CUDA; forwards everything
        var options = new DeviceModelOptions
        {
            ContextLength = tokens + 16, PrefillChunkTokens = Math.Min(tokens, 512), MaxBatch = 1, PageSize = 16, GpuMemoryUtilization = utilization,
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
        string dir = ModelOpener.Resolve(modelDir, stderr);
        var backend = ModelOpener.ChooseBackend(deviceText, stderr, autoFallback: BackendKind.Emulator);
        var r = Measure(dir, backend, tokens, stderr, utilization);
        stdout.Write(DeviceProfiler.Table(r.Prefill, r.Emulator));
        stdout.Write(DeviceProfiler.Table(r.Decode, r.Emulator));
        if (r.Emulator)
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"decode step DRAM: {ByteSize.Format(r.Decode.DramBytes)} vs minimum {ByteSize.Format(r.MinimumDecodeBytes)} (active weights + lm_head + embedding row + KV): {(double)r.Decode.DramBytes / r.MinimumDecodeBytes:F3}x"));
        return 0;
    }
}
