using System.Diagnostics;
using System.Globalization;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model;

/// <summary>A loaded model: the model, its folder and config, what it runs on, how long loading took, and a one-line summary.</summary>
public sealed class LoadedModel(ICausalLanguageModel model, string directory, ModelConfig config, BackendKind backend, string backendName, TimeSpan loadTime, string summary)
    : IDisposable
{
    public ICausalLanguageModel Model { get; } = model;
    public string Directory { get; } = directory;
    public ModelConfig Config { get; } = config;
    public BackendKind Backend { get; } = backend;
    /// <summary>"CPU reference", "PTX emulator", or the GPU's name.</summary>
    public string BackendName { get; } = backendName;
    public TimeSpan LoadTime { get; } = loadTime;
    /// <summary>"loaded MODEL (N M parameters) on BACKEND in T s; memory: ...".</summary>
    public string Summary { get; } = summary;
    public void Dispose() => Model.Dispose();
}

/// <summary>How <see cref="ModelLoader.Open"/> sizes the model.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>Sequences held at once.</summary>
    public int MaxSequences { get; init; } = 1;
    /// <summary>Token rows of one step on a device (the prefill chunk), 1 to 8192. Null: on CUDA the largest of 2048, 1024,
    /// 512 that fits the memory (<see cref="PrefillChunkSizing"/>), 64 on the emulator.</summary>
    public int? MaxStepTokens { get; init; }
    /// <summary>Rows with an output one device step may have. Null: the decode batch (the sequences, at most the step).</summary>
    public int? MaxOutputRows { get; init; }
    public int? ContextLength { get; init; }
    public long? GpuMemoryBytes { get; init; }
    public double? GpuMemoryUtilization { get; init; }
    /// <summary>The KV cache's storage (--kv-cache-dtype; the CPU reference rounds its cache the same way).</summary>
    public Qwen3Cuda.Runtime.Memory.KvCacheDtype KvCacheDtype { get; init; } = Qwen3Cuda.Runtime.Memory.KvCacheDtype.Bf16;
    /// <summary>NVRTC starts compiling a kernel file (cold cache).</summary>
    public Action<string>? CompileStarting { get; init; }
    /// <summary>Weight upload progress.</summary>
    public Action<UploadProgress>? UploadProgress { get; init; }
    /// <summary>The upload is over (or failed).</summary>
    public Action? UploadFinished { get; init; }
}

/// <summary>
/// Loads a model folder onto a backend (the library's part of what the CLI's --model/--device do): cpu is the CPU
/// reference; emulator and cuda open the <see cref="DeviceModel"/> on that backend.
/// </summary>
public static class ModelLoader
{
    /// <summary>Loads the model in <paramref name="dir"/> (a resolved folder) on <paramref name="backend"/> (not auto).</summary>
    public static LoadedModel Open(string dir, BackendKind backend, ModelLoadOptions o)
    {
        var config = ModelConfig.Load(dir);
        var sw = Stopwatch.StartNew();
        if (backend == BackendKind.Cpu)
        {
            if (o.GpuMemoryBytes is not null || o.GpuMemoryUtilization is not null)
                throw new ArgumentException($"{(o.GpuMemoryBytes is not null ? "--gpu-memory" : "--gpu-memory-utilization")} plans device memory; --device cpu has none (drop it, or use --device cuda or emulator)");
            var m = ReferenceModel.Load(dir, o.MaxSequences, o.ContextLength, o.KvCacheDtype);
            sw.Stop();
            long kvPerToken = 2L * config.NumHiddenLayers * config.KeyValueDim * sizeof(float);
            long parameters = new WeightLayout(config, m.Weights.Checkpoint.Contains("lm_head.weight")).ParameterCount;
            string summary = string.Create(CultureInfo.InvariantCulture,
                $"loaded {config.ModelType} ({parameters / 1e6:F1} M parameters) on the CPU reference in {sw.Elapsed.TotalSeconds:F2} s; " +
                $"memory: weights {ByteSize.Format(2 * parameters)} (memory-mapped), KV cache grows to {ByteSize.Format(kvPerToken * m.ContextLength * o.MaxSequences)} " +
                $"at {m.ContextLength} tokens x {o.MaxSequences} sequence(s)");
            return new LoadedModel(m, dir, config, backend, "CPU reference", sw.Elapsed, summary);
        }
        IDevice device = DeviceFactory.Open(backend);
        KernelLoader? loader = null;
        try
        {
            var compiler = new KernelCompiler { CompileStarting = o.CompileStarting };
            loader = new KernelLoader(device, compiler);
            bool emulator = backend == BackendKind.Emulator;
            var options = DeviceOptions(o, config, emulator);
            DeviceModel dm;
            try { dm = DeviceModel.Load(device, dir, options, loader); }
            finally { o.UploadFinished?.Invoke(); }
            sw.Stop();
            var (free, total) = device.GetMemoryInfo();
            var p = dm.Plan;
            string summary = string.Create(CultureInfo.InvariantCulture,
                $"loaded {config.ModelType} ({p.Weights.ParameterCount / 1e6:F1} M parameters) on {device.Info.Name} in {sw.Elapsed.TotalSeconds:F2} s; " +
                $"memory: weights {ByteSize.Format(p.Weights.TotalBytes)}, KV cache {ByteSize.Format(p.KvBytes)} (a pool of {p.KvPages - 1} pages of {p.Options.PageSize} = {p.PoolTokens} tokens " +
                $"for up to {p.Options.MaxSequences} sequence(s) of up to {p.ContextLength} tokens; max concurrency at full context {p.MaxConcurrencyAtFullContext:0.00}x), workspace {ByteSize.Format(p.Workspace.TotalBytes)}; device {ByteSize.Format(free)} free of {ByteSize.Format(total)}");
            return new LoadedModel(new OwningModel(dm, loader, device), dir, config, backend, device.Info.Name, sw.Elapsed, summary);
        }
        catch (Exception original)
        {
            DeviceCapture.CleanupKeeping(original, "kernel modules dispose", () => loader?.Dispose());
            DeviceCapture.CleanupKeeping(original, "device dispose", device.Dispose);
            throw;
        }
    }

    /// <summary>The device model's options for <paramref name="o"/>: the step (prefill chunk) of 512 rows on CUDA, 64 on the emulator,
    /// decode graphs for every bucket up to the sequence cap, the emulator's context at most 4096 tokens.</summary>
    public static DeviceModelOptions DeviceOptions(ModelLoadOptions o, ModelConfig config, bool emulator)
    {
        if (o.MaxStepTokens is < 1 or > PrefillChunkSizing.MaxChunkTokens)
            throw new ArgumentOutOfRangeException("--max-num-batched-tokens",
                $"--max-num-batched-tokens {o.MaxStepTokens}: a device step holds 1 to {PrefillChunkSizing.MaxChunkTokens} token rows (the prefill chunk)");
        // No --max-num-batched-tokens: on a GPU the largest chunk up to 2048 that the memory allows (PrefillChunkSizing).
        int stepTokens = o.MaxStepTokens ?? (emulator ? 64 : PrefillChunkSizing.DefaultMaxChunkTokens);
        // Decode graphs for every bucket up to the sequence cap (a decode step has one row per running sequence).
        int maxBatch = Math.Clamp(Math.Min(o.MaxSequences, Math.Max(stepTokens, 8)), 1, DeviceModelOptions.MaxBatchLimit);
        stepTokens = Math.Max(stepTokens, maxBatch);
        return new DeviceModelOptions
        {
            MaxSequences = o.MaxSequences,
            ContextLength = o.ContextLength ?? (emulator ? Math.Min(4096, config.MaxPositionEmbeddings) : null),
            GpuMemoryBytes = o.GpuMemoryBytes,
            GpuMemoryUtilization = o.GpuMemoryUtilization,
            KvCacheDtype = o.KvCacheDtype,
            MaxBatch = maxBatch,
            MaxOutputRows = o.MaxOutputRows is int rows ? Math.Clamp(rows, maxBatch, stepTokens) : null,
            PrefillChunkTokens = stepTokens,
            AutoPrefillChunk = o.MaxStepTokens is null && !emulator,
            LoadProgress = o.UploadProgress,
        };
    }

    /// <summary>The load options an engine needs: its sequence cap, token budget and output rows.</summary>
    public static ModelLoadOptions ForEngine(EngineOptions e) => new()
    {
        MaxSequences = e.MaxNumSeqs,
        MaxStepTokens = e.MaxNumBatchedTokens,
        MaxOutputRows = e.MaxNumSeqs,
        ContextLength = e.ContextLength,
        GpuMemoryBytes = e.GpuMemoryBytes,
        GpuMemoryUtilization = e.GpuMemoryUtilization,
    };

    /// <summary>Resolves <paramref name="model"/>, picks the backend, loads the model, tokenizer and chat template, and starts an engine.</summary>
    internal static Engine LoadEngine(string model, EngineOptions options, CancellationToken ct)
    {
        options.Validate();
        var log = options.Log;
        void Line(string s) { if (log is null) return; log.WriteLine(s); log.Flush(); }
        string dir = ModelLocator.Resolve(model, Line);
        ct.ThrowIfCancellationRequested();
        var backend = DeviceFactory.Parse(options.Device);
        if (backend == BackendKind.Auto)
        {
            var choice = DeviceFactory.ChooseAuto(BackendKind.Cpu);
            Line($"--device auto: {choice.Reason}");
            backend = choice.Backend;
        }
        var tokenizer = Qwen3Tokenizer.FromModelDirectory(dir);
        ChatTemplate? template = null;
        try { template = ChatTemplate.FromModelDirectory(dir); }
        catch (Exception e) when (e is FileNotFoundException or InvalidDataException) { Line($"no chat template ({e.Message}): chat requests are refused"); }
        // A draft model loads first (its KV cache sized to its sequences and context), the target then plans the memory left.
        var drafts = OpenDraftSource(options, dir, tokenizer, backend, Line);
        LoadedModel loaded;
        try
        {
            ct.ThrowIfCancellationRequested();
            var load = ForEngine(options);
            // A verification step takes k + 1 output rows of every speculating request.
            if (drafts is not null) load = load with { MaxOutputRows = options.MaxNumSeqs * ((options.NumDraftTokens ?? EngineOptions.DefaultNumDraftTokens) + 1) };
            loaded = Open(dir, backend, load);
        }
        catch { drafts?.Dispose(); throw; }
        try
        {
            Line(loaded.Summary);
            ct.ThrowIfCancellationRequested();
            string name = options.ModelName ?? (model == ModelLocator.DemoName || !Directory.Exists(model) ? model : Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(dir))));
            return new Engine(loaded.Model, tokenizer, template, Engine.DefaultEosTokenIds(tokenizer, dir), options with { ModelName = name }, drafts);
        }
        catch { loaded.Dispose(); drafts?.Dispose(); throw; }
    }

    /// <summary>
    /// The drafter source of an engine that speculates on every request (<see cref="EngineOptions.DraftModel"/> or
    /// <see cref="EngineOptions.Draft"/>; null: none). A draft model is checked against the target (vocab_size, every
    /// token's bytes) and loaded once, with one KV sequence per request the engine runs at once (--max-num-seqs), each of
    /// --ctx-size tokens (default: at most <see cref="ModelDraftSource.DefaultContextTokens"/>).
    /// </summary>
    internal static IDraftSource? OpenDraftSource(EngineOptions options, string targetDir, Qwen3Tokenizer tokenizer, BackendKind backend, Action<string> log)
    {
        if (options.Draft == "ngram")
        {
            log($"speculative decoding: prompt lookup, {options.NumDraftTokens ?? EngineOptions.DefaultNumDraftTokens} draft tokens per step");
            return new NgramDraftSource();
        }
        if (options.DraftModel is not { } spec) return null;
        string draftDir = ModelLocator.Resolve(spec, log, "--draft-model");
        var target = ModelConfig.Load(targetDir);
        var config = DraftCompatibility.CheckDraftModel(draftDir, $"--draft-model {spec}", target, tokenizer);
        int context = options.ContextLength ?? Math.Min(ModelDraftSource.DefaultContextTokens, Math.Min(config.MaxPositionEmbeddings, target.MaxPositionEmbeddings));
        var loaded = Open(draftDir, backend, new ModelLoadOptions
        {
            MaxSequences = options.MaxNumSeqs,
            ContextLength = context,
            MaxStepTokens = options.MaxNumBatchedTokens,
            GpuMemoryBytes = null,
        });
        log($"draft model: {loaded.Summary}");
        log($"speculative decoding: draft model {spec}, {options.NumDraftTokens ?? EngineOptions.DefaultNumDraftTokens} draft tokens per step, {options.MaxNumSeqs} draft sequence(s)");
        return new ModelDraftSource(loaded.Model, spec, ownsModel: true);
    }

    /// <summary>A model that also disposes its kernel modules and device.</summary>
    private sealed class OwningModel(DeviceModel model, KernelLoader loader, IDevice device) : IPipelinedModel
    {
        public int VocabSize => model.VocabSize;
        public int ContextLength => model.ContextLength;
        public int MaxSequences => model.MaxSequences;
        public int MaxStepRows => model.MaxStepRows;
        public int MaxOutputRows => model.MaxOutputRows;
        public int MaxPenaltyEntries => model.MaxPenaltyEntries;
        public KvPageTable Kv => model.Kv;
        public void Step(StepBatch batch) => model.Step(batch);
        public void Enqueue(StepBatch batch) => model.Enqueue(batch);
        public void Complete(StepBatch batch) => model.Complete(batch);
        public int PendingSteps => model.PendingSteps;
        public int MaxPipelinedRows => model.MaxPipelinedRows;
        public void Dispose() { model.Dispose(); loader.Dispose(); device.Dispose(); }
    }
}
