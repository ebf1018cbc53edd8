using System.Diagnostics;
using System.Globalization;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli;

/// <summary>A model a verb loaded: the model, its folder and config, what it runs on, and how long loading took.</summary>
public sealed class LoadedModel(ICausalLanguageModel model, string directory, ModelConfig config, BackendKind backend, string backendName, TimeSpan loadTime)
    : IDisposable
{
    public ICausalLanguageModel Model { get; } = model;
    public string Directory { get; } = directory;
    public ModelConfig Config { get; } = config;
    public BackendKind Backend { get; } = backend;
    /// <summary>"CPU reference", "PTX emulator", or the GPU's name.</summary>
    public string BackendName { get; } = backendName;
    public TimeSpan LoadTime { get; } = loadTime;
    public void Dispose() => Model.Dispose();
}

/// <summary>
/// Where the verbs get their model: the one place that resolves --model (<see cref="ModelLocator"/>: a folder, a Hugging
/// Face repo id in the local cache, or demo), wires a --device backend in, and reports the load (progress, memory
/// summary, load time) on stderr. cpu is the CPU reference; emulator and cuda open the <see cref="DeviceModel"/> on that
/// backend; auto is cuda when a driver loads and a GPU opens, else the verb's fallback (the CPU reference for
/// generation), and says which and why in one line.
/// </summary>
public static class ModelOpener
{
    /// <summary>The folder for a --model value; for demo, says (one line) what the demo is.</summary>
    public static string Resolve(string model, TextWriter stderr)
    {
        string dir = ModelLocator.Resolve(model, line => { stderr.WriteLine(line); stderr.Flush(); });
        if (model == ModelLocator.DemoName)
            stderr.WriteLine($"demo model ({dir}): random weights with the real Qwen3 tokenizer, so its text is meaningless; it shows that everything runs. For real text, use --model with a Qwen3 checkpoint.");
        return dir;
    }

    /// <summary>Which backend a --device value means for a verb whose no-GPU fallback is <paramref name="autoFallback"/>; auto says why on stderr.</summary>
    public static BackendKind ChooseBackend(string device, TextWriter stderr, BackendKind autoFallback = BackendKind.Cpu)
    {
        var kind = DeviceFactory.Parse(device);
        if (kind != BackendKind.Auto) return kind;
        var choice = DeviceFactory.ChooseAuto(autoFallback);
        stderr.WriteLine($"--device auto: {choice.Reason}");
        stderr.Flush();
        return choice.Backend;
    }

    /// <summary>Loads the model in <paramref name="dir"/> (a resolved folder) on <paramref name="backend"/> (not auto).</summary>
    /// <param name="gpuMemoryUtilization">--gpu-memory-utilization (device backends only).</param>
    /// <param name="kvCacheDtype">--kv-cache-dtype: the KV cache's storage (the CPU reference rounds its cache the same way).</param>
    public static LoadedModel Open(string dir, BackendKind backend, int maxSequences, int? contextLength, long? gpuMemoryBytes, TextWriter stderr,
        double? gpuMemoryUtilization = null, Qwen3Cuda.Runtime.Memory.KvCacheDtype kvCacheDtype = Qwen3Cuda.Runtime.Memory.KvCacheDtype.Bf16)
    {
        var config = ModelConfig.Load(dir);
        CliOptions.ContextCheck(contextLength, config, stderr);
        var sw = Stopwatch.StartNew();
        if (backend == BackendKind.Cpu)
        {
            if (gpuMemoryBytes is not null || gpuMemoryUtilization is not null)
                throw new UsageException($"{(gpuMemoryBytes is not null ? "--gpu-memory" : "--gpu-memory-utilization")} plans device memory; --device cpu has none (drop it, or use --device cuda or emulator)");
            var m = ReferenceModel.Load(dir, maxSequences, contextLength, kvCacheDtype);
            sw.Stop();
            long kvPerToken = 2L * config.NumHiddenLayers * config.KeyValueDim * sizeof(float);
            long parameters = new WeightLayout(config, m.Weights.Checkpoint.Contains("lm_head.weight")).ParameterCount;
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"loaded {config.ModelType} ({parameters / 1e6:F1} M parameters) on the CPU reference in {sw.Elapsed.TotalSeconds:F2} s; " +
                $"memory: weights {ByteSize.Format(2 * parameters)} (memory-mapped), KV cache grows to {ByteSize.Format(kvPerToken * m.ContextLength * maxSequences)} " +
                $"at {m.ContextLength} tokens x {maxSequences} sequence(s)"));
            return new LoadedModel(m, dir, config, backend, "CPU reference", sw.Elapsed);
        }
        IDevice device = DeviceFactory.Open(backend);
        var progress = new LoadProgress(stderr, LoadProgress.IsTerminal(stderr));
        KernelLoader? loader = null;
        try
        {
            var compiler = new KernelCompiler { CompileStarting = progress.CompileStarting };
            loader = new KernelLoader(device, compiler);
            var options = new DeviceModelOptions
            {
                MaxSequences = maxSequences,
                ContextLength = contextLength ?? (backend == BackendKind.Emulator ? Math.Min(4096, config.MaxPositionEmbeddings) : null),
                GpuMemoryBytes = gpuMemoryBytes,
                GpuMemoryUtilization = gpuMemoryUtilization,
                KvCacheDtype = kvCacheDtype,
                MaxBatch = Math.Min(8, Math.Max(1, maxSequences)),
                PrefillChunkTokens = backend == BackendKind.Emulator ? 64 : 512,
                LoadProgress = progress.Upload,
            };
            DeviceModel dm;
            try { dm = DeviceModel.Load(device, dir, options, loader); }
            finally { progress.Finish(); }
            sw.Stop();
            var (free, total) = device.GetMemoryInfo();
            var p = dm.Plan;
            stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"loaded {config.ModelType} ({p.Weights.ParameterCount / 1e6:F1} M parameters) on {device.Info.Name} in {sw.Elapsed.TotalSeconds:F2} s; " +
                $"memory: weights {ByteSize.Format(p.Weights.TotalBytes)}, KV cache {ByteSize.Format(p.KvBytes)} ({p.ContextLength} tokens x {p.Options.MaxSequences} sequence(s), " +
                $"{p.KvPages} pages of {p.Options.PageSize}), workspace {ByteSize.Format(p.Workspace.TotalBytes)}; device {ByteSize.Format(free)} free of {ByteSize.Format(total)}"));
            return new LoadedModel(new OwningModel(dm, loader, device), dir, config, backend, device.Info.Name, sw.Elapsed);
        }
        catch (Exception original)
        {
            DeviceCapture.CleanupKeeping(original, "kernel modules dispose", () => loader?.Dispose());
            DeviceCapture.CleanupKeeping(original, "device dispose", device.Dispose);
            throw;
        }
    }

    /// <summary>A model that also disposes its kernel modules and device.</summary>
    private sealed class OwningModel(DeviceModel model, KernelLoader loader, IDevice device) : ICausalLanguageModel
    {
        public int VocabSize => model.VocabSize;
        public int ContextLength => model.ContextLength;
        public int MaxSequences => model.MaxSequences;
        public int MaxStepRows => model.MaxStepRows;
        public int MaxOutputRows => model.MaxOutputRows;
        public KvPageTable Kv => model.Kv;
        public void Step(StepBatch batch) => model.Step(batch);
        public void Dispose() { model.Dispose(); loader.Dispose(); device.Dispose(); }
    }
}
