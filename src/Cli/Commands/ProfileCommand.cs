using Qwen3Cuda.Model;
using System.CommandLine;
using System.Globalization;
using System.Text;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda profile --model DIR [--device emulator|cuda|auto] [--tokens N] [--context N] [--predict GPU] [--scale-layers N]`:
/// one prefill of N tokens and one decode step at context length --context (the positions before the prefill are
/// skipped, not computed: <see cref="DeviceModel.SkipTokens"/>). On the emulator: a per-kernel table (launches, warp
/// instructions, global bytes, distinct DRAM sectors, coalescing) and the decode step's DRAM bytes against the minimum
/// it must move; with --predict, the emulator presents itself as that GPU and the timing model predicts each kernel's
/// time, the step's tok/s and the roofline (Model.Performance, docs/timing-model.md). On CUDA: each step's time as the
/// model runs it, a per-kernel GPU time table from the step run again kernel by kernel between CUDA events, and, for a
/// GPU with a description (or --predict) and a model that fits the emulator, predicted next to measured per kernel.
/// </summary>
public static class ProfileCommand
{
    /// <summary>Host memory the emulator may use for a --predict run (a cap, not a reservation).</summary>
    public const long PredictHeapBytes = 12L << 30;

    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model directory (config.json + safetensors)", Required = true };
        var device = new Option<string>("--device") { Description = "emulator (counters: instructions, bytes, DRAM sectors) | cuda (per-kernel GPU times) | auto (cuda when a GPU opens)", DefaultValueFactory = _ => "emulator" };
        var tokens = new Option<int>("--tokens") { Description = "Prompt tokens of the profiled prefill", DefaultValueFactory = _ => 8 };
        var context = new Option<int?>("--context") { Description = "Context length of the profiled decode step (default: the prompt + 1); earlier positions are skipped, not computed (their K, V are zero)" };
        var predict = new Option<string?>("--predict") { Description = $"Predict each kernel's time on a GPU with the timing model: {string.Join("|", GpuCatalog.All.Select(g => g.Key))} (on CUDA: default the GPU present, when described)" };
        var scale = new Option<int?>("--scale-layers") { Description = "Also predict the steps with this many decoder layers (a slice of a model with alike layers, e.g. 48 for Qwen3-30B-A3B)" };
        var util = GpuMemoryCliOption.Create();
        var cmd = new Command("profile", "Per-kernel profile of one prefill and one decode step; with --predict, predicted GPU times") { model, device, tokens, context, predict, scale, util };
        cmd.SetAction(parse => Guard(parse.InvocationConfiguration.Error, () =>
            Run(parse.GetValue(model)!, parse.GetValue(device)!, parse.GetValue(tokens), parse.GetValue(context), parse.GetValue(predict),
                parse.GetValue(scale), GpuMemoryCliOption.Parse(parse.GetValue(util)), parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error)));
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

    /// <summary>The result of <see cref="Measure"/>: both steps, the decode minimum and where they ran.</summary>
    public sealed record Result(StepProfile Prefill, StepProfile Decode, StepProfile SampledDecode, long MinimumDecodeBytes, bool Emulator, int Context, MemoryPlan Plan, string DeviceName);

    /// <summary>The sampled decode step's settings: Qwen3's recommended thinking-mode sampling (temperature 0.6, top-k 20, top-p 0.95).</summary>
    public static readonly Runtime.Launchers.SamplingSettings ProfileSampling = new(Temperature: 0.6f, TopK: 20, TopP: 0.95f, MinP: 0f, Seed: 1);

    /// <summary>
    /// Profiles one prefill of <paramref name="tokens"/> tokens and one decode step at context length
    /// <paramref name="context"/> (default tokens + 1; the positions before the prefill are skipped). With
    /// <paramref name="emulateAs"/>, the backend is an emulator presenting itself as that GPU.
    /// </summary>
    public static Result Measure(string modelDir, BackendKind backend, int tokens, int? context = null, GpuSpec? emulateAs = null, double? gpuMemoryUtilization = null)
    {
        if (tokens < 1) throw new ArgumentException($"--tokens must be at least 1, got {tokens}");
        int ctx = context ?? tokens + 1;
        if (ctx < tokens + 1) throw new ArgumentException($"--context {ctx}: must be at least --tokens + 1 = {tokens + 1} (the prompt and the decoded token)");
        if (!Directory.Exists(modelDir)) throw new ArgumentException($"--model: directory '{modelDir}' does not exist");
        backend = DeviceFactory.Resolve(backend);
        if (backend == BackendKind.Cpu) throw new ArgumentException("--device cpu has no kernels to profile (use emulator or cuda)");
        using var device = emulateAs is not null && backend == BackendKind.Emulator
            ? new EmulatedDevice(emulateAs.EmulatorOptions(PredictHeapBytes)) : DeviceFactory.Open(backend);
        using var timing = new KernelTimingDevice(device);   // per-kernel events on CUDA; forwards everything
        var options = new DeviceModelOptions
        {
            ContextLength = ctx + 16, PrefillChunkTokens = Math.Min(tokens, 512), MaxBatch = 1, PageSize = 16, GpuMemoryUtilization = gpuMemoryUtilization,
        };
        using var dm = DeviceModel.Load(timing, modelDir, options);
        int V = dm.VocabSize;
        int skipped = ctx - 1 - tokens;
        dm.SkipTokens(0, skipped);
        var prompt = Enumerable.Range(0, tokens).Select(i => (i * 7919 + 11) % V).ToArray();
        var logits = new float[V];
        var prefill = DeviceProfiler.Profile(dm, "prefill", tokens, () => dm.Forward(0, prompt, logits), undo: () => dm.TruncateSequence(0, skipped));
        int[] next = [Array.IndexOf(logits, logits.Max())], ids = new int[1];
        // the decode steps as generation runs them: the captured graph, only the token id comes back
        var decode = DeviceProfiler.Profile(dm, "decode", 1, () => dm.DecodeBatchGreedy([0], next, ids), undo: () => dm.TruncateSequence(0, ctx - 1));
        dm.TruncateSequence(0, ctx - 1);
        var sampled = DeviceProfiler.Profile(dm, "sampled decode", 1, () => dm.DecodeBatchSampled([0], next, ProfileSampling, ids), undo: () => dm.TruncateSequence(0, ctx - 1));
        return new Result(prefill, decode, sampled, DeviceProfiler.MinimumDecodeBytes(dm.Plan, ctx), backend == BackendKind.Emulator, ctx, dm.Plan, device.Info.Name);
    }

    /// <summary>The timing model's prefill and decode predictions from an emulator <see cref="Result"/>, optionally scaled to <paramref name="layers"/> decoder layers.</summary>
    public sealed record Predictions(StepPrediction Prefill, StepPrediction Decode, StepPrediction SampledDecode, long MinimumDecodeBytes);

    public static Predictions Predict(Result r, GpuSpec gpu, int? layers = null)
    {
        if (!r.Emulator) throw new ArgumentException("predictions need the emulator's counters");
        var resources = new PtxasResources(new KernelCompiler(), gpu.Arch);
        int ran = r.Plan.Config.NumHiddenLayers;
        StepPrediction One(StepProfile s)
        {
            var p = StepPredictor.Predict(gpu, s.Name, s.Tokens, ran, s.Records, s.Operations, resources.For);
            return layers is int n ? StepPredictor.ScaleLayers(p, n) : p;
        }
        long minimum = layers is int l ? DeviceProfiler.MinimumDecodeBytes(r.Plan, r.Context, l) : r.MinimumDecodeBytes;
        return new Predictions(One(r.Prefill), One(r.Decode), One(r.SampledDecode), minimum);
    }

    private static int Run(string modelDir, string deviceText, int tokens, int? context, string? predictKey, int? scaleLayers, double? utilization, TextWriter stdout, TextWriter stderr)
    {
        GpuSpec? gpu = predictKey is null ? null : GpuCatalog.Get(predictKey);
        if (scaleLayers is < 1) throw new ArgumentException($"--scale-layers must be at least 1, got {scaleLayers}");
        var backend = DeviceFactory.Resolve(DeviceFactory.Parse(deviceText), stderr);
        if (backend == BackendKind.Emulator)
        {
            if (scaleLayers is not null && gpu is null) throw new ArgumentException("--scale-layers scales the predicted steps: give --predict GPU too");
            var r = Measure(modelDir, backend, tokens, context, gpu, utilization);
            stdout.Write(DeviceProfiler.Table(r.Prefill, r.Emulator));
            stdout.Write(DeviceProfiler.Table(r.Decode, r.Emulator));
            stdout.Write(DeviceProfiler.Table(r.SampledDecode, r.Emulator));
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"decode step DRAM: {ByteSize.Format(r.Decode.DramBytes)} vs minimum {ByteSize.Format(r.MinimumDecodeBytes)} (active weights + lm_head + embedding row + KV): {(double)r.Decode.DramBytes / r.MinimumDecodeBytes:F3}x"));
            if (gpu is not null) WritePredictions(r, gpu, scaleLayers, stdout);
            return 0;
        }
        var measured = Measure(modelDir, backend, tokens, context, gpuMemoryUtilization: utilization);
        stdout.Write(DeviceProfiler.Table(measured.Prefill, false));
        stdout.Write(DeviceProfiler.Table(measured.Decode, false));
        stdout.Write(DeviceProfiler.Table(measured.SampledDecode, false));
        gpu ??= GpuCatalog.ForDeviceName(measured.DeviceName);
        if (gpu is null)
        {
            stdout.WriteLine($"predicted: none (no description of '{measured.DeviceName}' in gpus.json; pass --predict {string.Join("|", GpuCatalog.All.Select(g => g.Key))})");
            return 0;
        }
        Result emulated;
        try { emulated = Measure(modelDir, BackendKind.Emulator, tokens, context, gpu); }
        catch (DeviceException e)
        {
            stdout.WriteLine($"predicted: skipped ({CliErrors.Message(e)}; the prediction runs the model on the emulator: profile a slice, e.g. qwen3cuda-convert synth --preset real-shape-slice)");
            return 0;
        }
        var predicted = Predict(emulated, gpu);
        stdout.Write(Comparison(measured.Prefill, predicted.Prefill));
        stdout.Write(Comparison(measured.Decode, predicted.Decode));
        stdout.Write(Comparison(measured.SampledDecode, predicted.SampledDecode));
        if (scaleLayers is not null) WritePredictions(emulated, gpu, scaleLayers, stdout);
        return 0;
    }

    private static void WritePredictions(Result r, GpuSpec gpu, int? scaleLayers, TextWriter stdout)
    {
        void Write(Predictions p)
        {
            stdout.Write(StepPredictor.Table(p.Prefill, $"positions {r.Context - 1 - r.Prefill.Tokens}..{r.Context - 2}", null));
            stdout.Write(StepPredictor.Table(p.Decode, $"context {r.Context}, greedy", p.MinimumDecodeBytes));
            stdout.Write(StepPredictor.Table(p.SampledDecode, $"context {r.Context}, {Describe(ProfileSampling)}", p.MinimumDecodeBytes));
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"predicted sampled decode / greedy decode: {p.SampledDecode.TotalUs / p.Decode.TotalUs:F3}x the time ({p.SampledDecode.Layers} layers)"));
        }
        Write(Predict(r, gpu));
        if (scaleLayers is int n && n != r.Plan.Config.NumHiddenLayers)
        {
            stdout.WriteLine($"scaled from {r.Plan.Config.NumHiddenLayers} to {n} layers (the layers' launches repeated; predicted):");
            Write(Predict(r, gpu, n));
        }
    }

    private static string Describe(Runtime.Launchers.SamplingSettings s) =>
        string.Create(CultureInfo.InvariantCulture, $"sampled: temperature {s.Temperature}, top-k {s.TopK}, top-p {s.TopP}");

    /// <summary>Measured (CUDA events around each launch, the step run kernel by kernel) next to predicted, per kernel.</summary>
    public static string Comparison(StepProfile measured, StepPrediction predicted)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.Append(inv, $"{measured.Name}: measured on the GPU vs PREDICTED for {predicted.Gpu.Name} (timing model, docs/timing-model.md)\n");
        sb.Append(inv, $"  {"kernel",-28}{"launches",9}{"measured us",13}{"predicted us",14}{"pred/meas",11}\n");
        var pred = predicted.Launches.GroupBy(l => l.Kernel).ToDictionary(g => g.Key, g => (Count: g.Count(), Us: g.Sum(x => x.Microseconds)));
        foreach (var k in measured.Kernels)
        {
            double meas = 1000 * (k.GpuMilliseconds ?? 0);
            if (pred.TryGetValue(k.Kernel, out var p))
                sb.Append(inv, $"  {k.Kernel,-28}{k.Launches,9}{meas,13:F1}{p.Us,14:F1}{(meas > 0 ? p.Us / meas : 0),11:F2}\n");
            else sb.Append(inv, $"  {k.Kernel,-28}{k.Launches,9}{meas,13:F1}{"(not emulated)",14}\n");
        }
        double measuredKernels = 1000 * (measured.KernelMilliseconds ?? 0);
        sb.Append(inv, $"  kernels: measured {measuredKernels:F1} us, predicted {predicted.KernelUs:F1} us; step as run: measured {1000 * measured.Milliseconds:F1} us, predicted {predicted.TotalUs:F1} us\n");
        return sb.ToString();
    }
}
