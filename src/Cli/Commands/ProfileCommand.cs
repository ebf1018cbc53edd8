using Qwen3Cuda.Model;
using System.CommandLine;
using System.Globalization;
using System.Text;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda profile --model DIR [--device emulator|cuda|auto] [--tokens N] [--context N] [--predict GPU] [--scale-layers N] [--what-if persistent] [--lines KERNEL]`:
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
        var model = CliOptions.Model();
        var device = CliOptions.Device("emulator", "emulator (default; counters: instructions, bytes, DRAM sectors) | cuda (per-kernel GPU times) | auto (cuda when a GPU opens, else the emulator)",
            "emulator", "cuda", "auto");
        var tokens = CliOptions.Int("--n-prompt", ["-p", "--tokens"], "Prompt tokens of the profiled prefill (the decode steps follow it)", 8, 1, CliOptions.MaxContextTokens);
        var context = CliOptions.NullableInt("--ctx-size", ["-c", "--context"],
            "Context length of the profiled decode steps (default: the prompt + 1); the positions before the prefill are skipped, not computed (their K, V are zero)", 2, CliOptions.MaxContextTokens);
        var predict = PredictOption();
        var scale = CliOptions.NullableInt("--scale-layers", [], "Also predict the steps with this many decoder layers (a slice of a model whose layers are alike, e.g. 48 for Qwen3-30B-A3B); needs a prediction", 1, 4096, "L");
        var util = CliOptions.GpuMemoryUtilization();
        var chunk = CliOptions.PrefillChunk();
        var detail = new Option<bool>("--detail")
        {
            Description = "With a prediction: also print each kernel's model terms (DRAM, L2, SM fill, issue, latency) and its critical warp's round trips and instructions (docs/timing-model.md)",
        };
        var assume = AssumeOption();
        var maxLen = CliOptions.NullableInt("--max-model-len", [],
            "Context the model is set up for, as a server's --ctx-size: what the decode graphs are captured for, and the decode attention's grid (default: the decode context + 16); at least --ctx-size", 2, CliOptions.MaxContextTokens);
        var whatIf = WhatIfOption();
        var lines = new Option<string?>("--lines")
        {
            Description = "On the emulator: where the critical warp (the one that executes the most instructions) of KERNEL's first launch in the greedy decode step (the sampled step for a kernel only it launches: its lm_head and sampler) spends them, per CUDA source line; KERNEL:N takes stage N of a stage-ordered launch measured apart (persistent_attn_block:3, its router)",
            HelpName = "KERNEL[:STAGE]",
        };
        var measureOnly = new Option<bool>("--measure-only")
        {
            Description = "On a GPU: print the measured times alone, without the prediction next to them (it runs the model again on the emulator: minutes for a real-shape slice); predict the same step elsewhere with --device emulator --predict GPU",
        };
        var cmd = new Command("profile", "Per-kernel profile of one prefill and one decode step; with --predict, predicted GPU times") { model, device, tokens, context, predict, scale, util, chunk, detail, assume, maxLen, whatIf, lines, measureOnly };
        cmd.SetAction(parse => Run(parse.GetValue(model)!, parse.GetValue(device)!, parse.GetValue(tokens), parse.GetValue(context), parse.GetValue(predict),
            parse.GetValue(scale), parse.GetValue(util), parse.GetValue(chunk), parse.GetValue(detail), parse.GetValue(assume) ?? [], parse.GetValue(maxLen),
            parse.GetValue(whatIf) is not null, parse.GetValue(lines), parse.GetValue(measureOnly), parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error));
        return cmd;
    }

    /// <summary>
    /// --assume NAME=VALUE (repeatable): a number of the GPU description replaced for this run's predictions (the
    /// calibration knobs; <see cref="GpuCatalog.WithAssumptions"/> checks the names and values).
    /// </summary>
    private static Option<(string Name, string Value)[]> AssumeOption() => new("--assume")
    {
        Description = "With a prediction: replace a number of the GPU description (gpus.json's camelCase name), e.g. --assume pdlNodeGapUs=0.3; repeatable; the predictions name every change (docs/timing-model.md, \"Calibrating\")",
        HelpName = "NAME=VALUE",
        Arity = ArgumentArity.OneOrMore,
        AllowMultipleArgumentsPerToken = false,
        CustomParser = r =>
        {
            var result = new List<(string, string)>();
            foreach (var t in r.Tokens)
            {
                int eq = t.Value.IndexOf('=', StringComparison.Ordinal);
                if (eq <= 0 || eq == t.Value.Length - 1) { r.AddError($"--assume '{t.Value}': expected NAME=VALUE, e.g. pdlNodeGapUs=0.3"); return []; }
                result.Add((t.Value[..eq], t.Value[(eq + 1)..]));
            }
            return [.. result];
        },
    };

    /// <summary>--what-if persistent: the greedy decode step composed as one persistent launch (<see cref="PersistentWhatIf"/>; not built).</summary>
    private static Option<string?> WhatIfOption() => new("--what-if")
    {
        Description = "With a prediction: 'persistent' also predicts the greedy decode step's kernels as the stages of one persistent launch (not built: docs/timing-model.md, section 7); with the experts' follow-on qkv on (QWEN3CUDA_EXPERTS_FOLLOW_ON=1), that step is measured once more without it, so that each kernel is a stage",
        HelpName = "persistent",
        CustomParser = r =>
        {
            string v = CliOptions.Token(r).Trim().ToLowerInvariant();
            if (v != "persistent") r.AddError($"{CliOptions.Name(r)}: '{CliOptions.Token(r)}' is not a what-if; known: persistent");
            return v;
        },
    };

    /// <summary>--predict KEY: one of the GPUs gpus.json describes (checked while parsing).</summary>
    private static Option<string?> PredictOption()
    {
        string[] keys = [.. GpuCatalog.All.Select(g => g.Key)];
        return new Option<string?>("--predict")
        {
            Description = $"Predict each kernel's time on this GPU with the timing model (docs/timing-model.md); on CUDA the default is the GPU present, when described",
            HelpName = string.Join("|", keys),
            CustomParser = r =>
            {
                string v = CliOptions.Token(r).Trim().ToLowerInvariant();
                if (!keys.Contains(v)) r.AddError($"{CliOptions.Name(r)}: '{CliOptions.Token(r)}' is not a described GPU; known: {string.Join(", ", keys)}");
                return v;
            },
        };
    }

    /// <summary>The result of <see cref="Measure"/>: both steps, the decode minimum and where they ran.</summary>
    public sealed record Result(StepProfile Prefill, StepProfile Decode, StepProfile SampledDecode, long MinimumDecodeBytes, bool Emulator, int Context, MemoryPlan Plan, string DeviceName)
    {
        /// <summary>Measured again for --what-if persistent, without the experts' follow-on qkv (<see cref="WhatIfStages"/>).</summary>
        public bool WhatIfRemeasured { get; init; }
    }

    /// <summary>The sampled decode step's settings: Qwen3's recommended thinking-mode sampling (temperature 0.6, top-k 20, top-p 0.95).</summary>
    public static readonly Runtime.Launchers.SamplingSettings ProfileSampling = new(Temperature: 0.6f, TopK: 20, TopP: 0.95f, MinP: 0f, Seed: 1);

    /// <summary>Most prompt tokens profiled on the emulator: it checks every access of every thread, so a prefill costs
    /// seconds per token on a real-shape model; beyond this, profile on a GPU (the traffic per token is what matters).</summary>
    public const int EmulatorMaxTokens = 4096;

    /// <summary>
    /// Profiles one prefill of <paramref name="tokens"/> tokens and a greedy and a sampled decode step at context length
    /// <paramref name="context"/> (default tokens + 1; the positions before the prefill are skipped). With
    /// <paramref name="emulateAs"/>, the backend is an emulator presenting itself as that GPU.
    /// </summary>
    /// <param name="log">Hears, for a long prompt on the emulator, that this will take a while.</param>
    /// <param name="prefillChunk">--max-num-batched-tokens: token rows per prefill chunk; null: the prompt, at most
    /// <see cref="PrefillChunkSizing.DefaultMaxChunkTokens"/>, smaller when the memory does not allow it (<see cref="PrefillChunkSizing"/>).</param>
    public static Result Measure(string modelDir, BackendKind backend, int tokens, TextWriter? log = null, double? utilization = null,
        int? context = null, GpuSpec? emulateAs = null, int? prefillChunk = null, int? maxModelLen = null, bool criticalWarpLines = false,
        bool? expertsFollowOn = null)
    {
        if (tokens < 1) throw new UsageException($"--n-prompt must be at least 1, got {tokens}");
        if (prefillChunk is < 1 or > PrefillChunkSizing.MaxChunkTokens)
            throw new UsageException($"--max-num-batched-tokens {prefillChunk}: the prefill chunk must be 1 to {PrefillChunkSizing.MaxChunkTokens} token rows");
        int ctx = context ?? tokens + 1;
        if (ctx < tokens + 1) throw new UsageException($"--ctx-size {ctx}: must be at least --n-prompt + 1 = {tokens + 1} (the prompt and the decoded token)");
        if (maxModelLen < ctx) throw new UsageException($"--max-model-len {maxModelLen}: must be at least the decode context --ctx-size {ctx}");
        if (!Directory.Exists(modelDir)) throw new ModelNotFoundException($"--model: folder '{modelDir}' does not exist");
        var config = ModelConfig.Load(modelDir);
        if (ctx > config.MaxPositionEmbeddings)
            throw new UsageException(context is null
                ? $"--n-prompt {tokens}: the prefill and one decode step need {tokens + 1} positions, the model's context is {config.MaxPositionEmbeddings} (max_position_embeddings)"
                : $"--ctx-size {ctx}: more than the model's context of {config.MaxPositionEmbeddings} (max_position_embeddings)");
        if (maxModelLen > config.MaxPositionEmbeddings)
            throw new UsageException($"--max-model-len {maxModelLen}: more than the model's context of {config.MaxPositionEmbeddings} (max_position_embeddings)");
        backend = DeviceFactory.Resolve(backend);
        if (backend == BackendKind.Emulator && tokens > EmulatorMaxTokens)
            throw new UsageException($"--n-prompt {tokens}: the emulator profiles at most {EmulatorMaxTokens} prompt tokens (it checks every memory access; a longer prefill takes hours); use --device cuda for longer prompts");
        if (backend == BackendKind.Emulator && tokens > 64)
            log?.WriteLine($"profile: a prefill of {tokens} tokens on the PTX emulator checks every memory access of every thread and can take minutes " +
                "(what profile measures, the traffic per token, shows at -p 8)");
        if (backend == BackendKind.Cpu) throw new ArgumentException("--device cpu has no kernels to profile (use emulator or cuda)");
        using var device = (emulateAs is not null || criticalWarpLines) && backend == BackendKind.Emulator
            ? new EmulatedDevice((emulateAs?.EmulatorOptions(PredictHeapBytes) ?? new EmulatorOptions()) with { CriticalWarpLines = criticalWarpLines })
            : DeviceFactory.Open(backend);
        using var timing = new KernelTimingDevice(device);   // per-kernel events on CUDA; forwards everything
        var options = new DeviceModelOptions
        {
            ContextLength = maxModelLen ?? ctx + 16, MaxBatch = 1, PageSize = 16, GpuMemoryUtilization = utilization,
            PrefillChunkTokens = prefillChunk ?? Math.Min(tokens, PrefillChunkSizing.DefaultMaxChunkTokens), AutoPrefillChunk = prefillChunk is null,
            ExpertsFollowOnQkv = expertsFollowOn ?? DeviceModelOptions.ExpertsFollowOnFromEnvironment(),
            // the persistent attention block's stages as launches apart on the emulator, which the predictor composes back
            // into one launch (docs/timing-model.md, section 7); on a GPU the launch as it runs
            PersistentStagesApart = backend == BackendKind.Emulator,
        };
        using var dm = DeviceModel.Load(timing, modelDir, options);
        int V = dm.VocabSize;
        int skipped = ctx - 1 - tokens;
        dm.SkipTokens(0, skipped);
        var prompt = Enumerable.Range(0, tokens).Select(i => (i * 7919 + 11) % V).ToArray();
        var logits = new float[V];
        var prefill = DeviceProfiler.Profile(dm, "prefill", tokens, () => dm.Forward(0, prompt, logits), undo: () => dm.TruncateSequence(0, skipped));
        int next = Array.IndexOf(logits, logits.Max());
        // the decode steps as generation runs them (Generate): a pipelined step, the captured graph on its I/O slot with its
        // inputs and its token on the input and result streams, only the token id coming back (docs/architecture.md,
        // "Pipelined decode")
        var batch = new StepBatch(1);
        void Pipelined(in SamplingSettings s)
        {
            batch.Clear();
            batch.Add(0, next, dm.SequenceLength(0), StepOutput.Sample, s);
            dm.Enqueue(batch);
            dm.Complete(batch);
        }
        var decode = DeviceProfiler.Profile(dm, "decode", 1, () => Pipelined(new SamplingSettings(Temperature: 0f)), undo: () => dm.TruncateSequence(0, ctx - 1));
        dm.TruncateSequence(0, ctx - 1);
        var sampled = DeviceProfiler.Profile(dm, "sampled decode", 1, () => Pipelined(ProfileSampling), undo: () => dm.TruncateSequence(0, ctx - 1));
        return new Result(prefill, decode, sampled, DeviceProfiler.MinimumDecodeBytes(dm.Plan, ctx), backend == BackendKind.Emulator, ctx, dm.Plan, device.Info.Name);
    }

    /// <summary>The timing model's prefill and decode predictions from an emulator <see cref="Result"/>, optionally scaled to <paramref name="layers"/> decoder layers.</summary>
    public sealed record Predictions(StepPrediction Prefill, StepPrediction Decode, StepPrediction SampledDecode, long MinimumDecodeBytes);

    /// <summary>"weights: fp8 e4m3 block 128x128, 29.0 GiB on the device": the weight format the kernels read (docs/formats.md).</summary>
    public static string WeightsLine(MemoryPlan plan) =>
        $"weights: {plan.Weights.Format.Name}, {ByteSize.Format(plan.Weights.TotalBytes)} on the device";

    public static Predictions Predict(Result r, GpuSpec gpu, int? layers = null)
    {
        if (!r.Emulator) throw new ArgumentException("predictions need the emulator's counters");
        if (layers is not null && r.Prefill.Tokens > r.Plan.Options.PrefillChunkTokens)
            throw new UsageException(ScaleChunksMessage(r.Prefill.Tokens, r.Plan.Options.PrefillChunkTokens));
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

    private static int Run(string modelSpec, string deviceText, int tokens, int? context, string? predictKey, int? scaleLayers, double? utilization, int? chunk, bool detail,
        (string Name, string Value)[] assume, int? maxModelLen, bool whatIf, string? linesKernel, bool measureOnly, TextWriter stdout, TextWriter stderr)
    {
        if (measureOnly && (predictKey is not null || scaleLayers is not null || detail || assume.Length > 0 || whatIf))
            throw new UsageException("--measure-only prints no prediction: leave out --predict, --scale-layers, --detail, --assume and --what-if");
        GpuSpec? gpu = predictKey is null ? null : Assume(GpuCatalog.Get(predictKey), assume);
        if (assume.Length > 0 && gpu is not null) stderr.WriteLine($"--assume: predictions for {gpu.Name} with {string.Join(", ", gpu.Assumed)}");
        string modelDir = ModelOpener.Resolve(modelSpec, stderr);
        var backend = ModelOpener.ChooseBackend(deviceText, stderr, autoFallback: BackendKind.Emulator);
        if (backend == BackendKind.Emulator)
        {
            if (measureOnly) throw new UsageException("--measure-only measures a GPU: give --device cuda (the emulator measures no times)");
            if (scaleLayers is not null && gpu is null) throw new UsageException("--scale-layers scales the predicted steps: give --predict GPU too");
            if (detail && gpu is null) throw new UsageException("--detail prints the timing model's terms: give --predict GPU too");
            if (assume.Length > 0 && gpu is null) throw new UsageException("--assume changes the GPU description of a prediction: give --predict GPU too");
            if (whatIf && gpu is null) throw new UsageException("--what-if composes a predicted step: give --predict GPU too");
            if (scaleLayers is not null && chunk < tokens) throw new UsageException(ScaleChunksMessage(tokens, chunk.Value));
            var r = Measure(modelDir, backend, tokens, stderr, utilization, context, gpu, chunk, maxModelLen, criticalWarpLines: linesKernel is not null);
            stdout.WriteLine(WeightsLine(r.Plan));
            stdout.Write(DeviceProfiler.Table(r.Prefill, r.Emulator));
            stdout.Write(DeviceProfiler.Table(r.Decode, r.Emulator));
            stdout.Write(DeviceProfiler.Table(r.SampledDecode, r.Emulator));
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"decode step DRAM: {ByteSize.Format(r.Decode.DramBytes)} vs minimum {ByteSize.Format(r.MinimumDecodeBytes)} (active weights + lm_head + embedding row + KV): {(double)r.Decode.DramBytes / r.MinimumDecodeBytes:F3}x"));
            if (linesKernel is not null) stdout.Write(CriticalWarpTable(r.Decode, r.SampledDecode, linesKernel));
            if (gpu is not null) WritePredictions(r, gpu, scaleLayers, detail, whatIf ? WhatIfStages(r, modelDir, tokens, stderr, utilization, context, gpu, chunk, maxModelLen) : null, stdout);
            return 0;
        }
        if (linesKernel is not null) throw new UsageException("--lines counts instructions on the emulator: give --device emulator");
        var measured = Measure(modelDir, backend, tokens, stderr, utilization, context, prefillChunk: chunk, maxModelLen: maxModelLen);
        stdout.WriteLine(WeightsLine(measured.Plan));
        stdout.Write(DeviceProfiler.Table(measured.Prefill, false));
        stdout.Write(DeviceProfiler.Table(measured.Decode, false));
        stdout.Write(DeviceProfiler.Table(measured.SampledDecode, false));
        if (measureOnly)
        {
            stdout.WriteLine("predicted: skipped (--measure-only)");
            return 0;
        }
        if (gpu is null && GpuCatalog.ForDeviceName(measured.DeviceName) is GpuSpec present) gpu = Assume(present, assume);
        if (gpu is null)
        {
            stdout.WriteLine($"predicted: none (no description of '{measured.DeviceName}' in gpus.json; pass --predict {string.Join("|", GpuCatalog.All.Select(g => g.Key))})");
            return 0;
        }
        Result emulated;
        try { emulated = Measure(modelDir, BackendKind.Emulator, tokens, stderr, null, context, gpu, chunk, maxModelLen); }
        catch (Qwen3CudaException e) when (e.Kind == ErrorKind.OutOfMemory)
        {
            stdout.WriteLine($"predicted: skipped ({CliErrors.Message(e)}; the prediction runs the model on the emulator: profile a slice, e.g. qwen3cuda-convert synth --preset real-shape-slice)");
            return 0;
        }
        var predicted = Predict(emulated, gpu);
        stdout.Write(Comparison(measured.Prefill, predicted.Prefill));
        stdout.Write(Comparison(measured.Decode, predicted.Decode));
        stdout.Write(Comparison(measured.SampledDecode, predicted.SampledDecode));
        if (detail)
            foreach (var step in new[] { predicted.Prefill, predicted.Decode, predicted.SampledDecode }) stdout.Write(StepPredictor.TermsTable(step));
        var stages = whatIf ? WhatIfStages(emulated, modelDir, tokens, stderr, null, context, gpu, chunk, maxModelLen) : null;
        if (stages is not null) WriteWhatIf(stages, Predict(stages, gpu), stdout);
        if (scaleLayers is not null) WritePredictions(emulated, gpu, scaleLayers, detail, stages, stdout);
        return 0;
    }

    /// <summary>
    /// --what-if persistent composes the decode step's kernels as the stages of one launch. Its stages are the separate
    /// kernels, the qkv projection one of them: a step measured with the experts' follow-on qkv
    /// (DeviceModelOptions.ExpertsFollowOnQkv) is measured again (emulator) without it, since inside the experts' launch the
    /// qkv weights could not be fetched ahead. Otherwise the step measured is the one composed.
    /// </summary>
    private static Result WhatIfStages(Result measured, string modelDir, int tokens, TextWriter stderr, double? utilization, int? context, GpuSpec gpu, int? chunk, int? maxModelLen) =>
        measured.Plan.Options.ExpertsFollowOnQkv
            ? Measure(modelDir, BackendKind.Emulator, tokens, stderr, utilization, context, gpu, chunk, maxModelLen, expertsFollowOn: false) with { WhatIfRemeasured = true }
            : measured;

    private static void WriteWhatIf(Result stages, Predictions p, TextWriter stdout)
    {
        if (stages.WhatIfRemeasured)
            stdout.WriteLine("what-if stages: the decode step measured again without the experts' follow-on qkv (each kernel a stage; docs/timing-model.md, section 7)");
        var c = stages.Plan.Config;
        // early routing built (QWEN3CUDA_EARLY_ROUTING=1): its tiles and the folded router are in the block's measured
        // stages, so the early-routing lines add nothing to them (with QWEN3CUDA_EARLY_PREFETCH=0 the router tiles prefetch
        // none of the experts' bytes either, and all of them are the what-if's to fetch ahead from o_proj's done)
        bool earlyBuilt = c.NumExperts > 0 && stages.Plan.Options.EarlyRouting;
        if (earlyBuilt)
            stdout.WriteLine($"what-if stages: early routing built and measured (its router tiles prefetching {ByteSize.Format(stages.Plan.Options.EarlyRoutingPrefetchBytesOrDefault)} per chosen expert): the early-routing lines take its cost as measured");
        stdout.Write(PersistentWhatIf.Report(p.Decode, p.MinimumDecodeBytes, earlyBuilt ? 0 : c.NumExperts > 0 ? (long)c.NumExperts * c.QueryDim * 2 : 0, earlyBuilt));
    }

    /// <summary>
    /// `profile --lines KERNEL`: the critical warp of <paramref name="kernel"/>'s first launch in the greedy decode step
    /// (<paramref name="greedy"/>), or in the sampled one (<paramref name="sampled"/>) for a kernel only that one launches
    /// (its lm_head and sampler: gemv_bf16_mma_sample, sample_draw_bf16), its instructions per CUDA source line (emulator
    /// counts of PTX instructions; the top 20). A kernel neither step launches is a usage error naming those the greedy
    /// step launches.
    /// </summary>
    public static string CriticalWarpTable(StepProfile greedy, StepProfile sampled, string kernel, int top = 20)
    {
        int? stage = null;
        if (kernel.LastIndexOf(':') is int colon and > 0)
        {
            if (!int.TryParse(kernel.AsSpan(colon + 1), NumberStyles.None, CultureInfo.InvariantCulture, out int n))
                throw new UsageException($"--lines {kernel}: the stage after ':' must be a number (persistent_attn_block:3)");
            (kernel, stage) = (kernel[..colon], n);
        }
        var step = !greedy.Records.Any(x => x.Kernel == kernel) && sampled.Records.Any(x => x.Kernel == kernel) ? sampled : greedy;
        var r = step.Records.FirstOrDefault(x => x.Kernel == kernel && (stage is null || x.Stage?.Index == stage))
            ?? throw new UsageException(stage is null || !step.Records.Any(x => x.Kernel == kernel)
                ? $"--lines {kernel}: the {step.Name} step launches no such kernel; it launches {string.Join(", ", step.Records.Select(x => x.Kernel).Distinct())}"
                : $"--lines {kernel}:{stage}: {kernel} has no stage {stage} in the {step.Name} step; its stages: {string.Join(", ", step.Records.Where(x => x.Kernel == kernel).Select(x => x.Stage?.Index.ToString(CultureInfo.InvariantCulture) ?? "whole").Distinct())}");
        if (stage is not null) kernel = $"{kernel}:{stage}";
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        long total = r.CriticalWarpLines.Sum(l => l.Instructions);
        sb.Append(inv, $"{step.Name}: {kernel} (grid {r.Grid}, block {r.Block}), its critical warp: {r.MaxWarpInstructions} instructions ({r.MaxWarpPreWaitInstructions} before its griddepcontrol.wait), ");
        sb.Append(inv, $"{r.MaxWarpDramRoundTrips} DRAM and {r.MaxWarpL2RoundTrips} L2 round trips; its instructions by CUDA source line (emulator counts of PTX instructions, the top {top}):\n");
        sb.Append(inv, $"  {"instructions",12}{"share",8}  line\n");
        foreach (var l in r.CriticalWarpLines.Take(top))
            sb.Append(inv, $"  {l.Instructions,12}{100.0 * l.Instructions / Math.Max(1, total),7:F1}%  {l.Where}\n");
        if (r.CriticalWarpLines.Count > top)
            sb.Append(inv, $"  {r.CriticalWarpLines.Skip(top).Sum(l => l.Instructions),12}{100.0 * r.CriticalWarpLines.Skip(top).Sum(l => l.Instructions) / Math.Max(1, total),7:F1}%  {r.CriticalWarpLines.Count - top} more line(s)\n");
        return sb.ToString();
    }

    /// <summary>--assume's changes to a description; a bad name or value is a usage error (exit 2), as a bad option is.</summary>
    private static GpuSpec Assume(GpuSpec gpu, (string Name, string Value)[] assume)
    {
        try { return GpuCatalog.WithAssumptions(gpu, assume); }
        catch (ArgumentException e) { throw new UsageException(e.Message); }
    }

    private static void WritePredictions(Result r, GpuSpec gpu, int? scaleLayers, bool detail, Result? whatIfStages, TextWriter stdout)
    {
        void Write(Predictions p, Predictions? stages)
        {
            stdout.Write(StepPredictor.Table(p.Prefill, $"positions {r.Context - 1 - r.Prefill.Tokens}..{r.Context - 2}", null));
            if (detail) stdout.Write(StepPredictor.TermsTable(p.Prefill));
            stdout.Write(StepPredictor.Table(p.Decode, $"context {r.Context}, greedy", p.MinimumDecodeBytes));
            if (detail) stdout.Write(StepPredictor.TermsTable(p.Decode));
            if (stages is not null) WriteWhatIf(whatIfStages!, stages, stdout);
            stdout.Write(StepPredictor.Table(p.SampledDecode, $"context {r.Context}, {Describe(ProfileSampling)}", p.MinimumDecodeBytes));
            if (detail) stdout.Write(StepPredictor.TermsTable(p.SampledDecode));
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"predicted sampled decode / greedy decode: {p.SampledDecode.TotalUs / p.Decode.TotalUs:F3}x the time ({p.SampledDecode.Layers} layers)"));
        }
        Write(Predict(r, gpu), whatIfStages is null ? null : Predict(whatIfStages, gpu));
        if (scaleLayers is int n && n != r.Plan.Config.NumHiddenLayers)
        {
            stdout.WriteLine($"scaled from {r.Plan.Config.NumHiddenLayers} to {n} layers (the layers' launches repeated; predicted):");
            Write(Predict(r, gpu, n), whatIfStages is null ? null : Predict(whatIfStages, gpu, n));
        }
    }

    /// <summary>Scaling finds the layers of one chunk (<see cref="StepPredictor.FindLayers"/>); a prefill of several chunks repeats the whole model per chunk.</summary>
    private static string ScaleChunksMessage(int tokens, int chunk) =>
        $"--scale-layers predicts a prefill of one chunk: -p {tokens} runs in chunks of {chunk} (--max-num-batched-tokens); give -p {chunk} or a larger chunk";

    private static string Describe(Runtime.Launchers.SamplingSettings s) =>
        string.Create(CultureInfo.InvariantCulture, $"sampled: temperature {s.Temperature}, top-k {s.TopK}, top-p {s.TopP}");

    /// <summary>Measured (CUDA events around each launch, the step run kernel by kernel) next to predicted, per kernel.</summary>
    public static string Comparison(StepProfile measured, StepPrediction predicted)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        sb.Append(inv, $"{measured.Name}: measured on the GPU vs PREDICTED for {predicted.Gpu.Name} (timing model, docs/timing-model.md){StepPredictor.AssumedText(predicted.Gpu)}\n");
        sb.Append(inv, $"  {"kernel",-28}{"launches",9}{"measured us",13}{"predicted us",14}{"pred/meas",11}\n");
        // per kernel its time on its own: the measurement runs the step kernel by kernel, so a programmatic launch has no overlap there
        var pred = predicted.Launches.GroupBy(l => l.Kernel).ToDictionary(g => g.Key, g => (Count: g.Count(), Us: g.Sum(x => x.IsolatedMicroseconds)));
        foreach (var k in measured.Kernels)
        {
            double meas = 1000 * (k.GpuMilliseconds ?? 0);
            if (pred.TryGetValue(k.Kernel, out var p))
                sb.Append(inv, $"  {k.Kernel,-28}{k.Launches,9}{meas,13:F1}{p.Us,14:F1}{(meas > 0 ? p.Us / meas : 0),11:F2}\n");
            else sb.Append(inv, $"  {k.Kernel,-28}{k.Launches,9}{meas,13:F1}{"(not emulated)",14}\n");
        }
        double measuredKernels = 1000 * (measured.KernelMilliseconds ?? 0);
        sb.Append(inv, $"  kernels: measured {measuredKernels:F1} us, predicted {predicted.Launches.Sum(x => x.IsolatedMicroseconds):F1} us; step as run: measured {1000 * measured.Milliseconds:F1} us, predicted {predicted.TotalUs:F1} us\n");
        return sb.ToString();
    }
}
