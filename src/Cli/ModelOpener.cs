using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Cli;

/// <summary>
/// Where the verbs get their model: the one place that resolves --model (<see cref="ModelLocator"/>: a folder, a Hugging
/// Face repo id in the local cache, or demo), wires a --device backend in, and reports the load (progress, memory
/// summary, load time) on stderr. cpu is the CPU reference; emulator and cuda open the <see cref="DeviceModel"/> on that
/// backend; auto is cuda when a driver loads and a GPU opens, else the verb's fallback (the CPU reference for
/// generation), and says which and why in one line.
/// </summary>
public static class ModelOpener
{
    /// <summary>The folder for a --model value (or another option's: <paramref name="option"/>); for demo, says (one line) what the demo is.</summary>
    public static string Resolve(string model, TextWriter stderr, string option = "--model")
    {
        string dir = ModelLocator.Resolve(model, line => { stderr.WriteLine(line); stderr.Flush(); }, option);
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

    /// <summary>Loads the model in <paramref name="dir"/> (a resolved folder) on <paramref name="backend"/> (not auto), with progress and the summary line on stderr.</summary>
    /// <param name="gpuMemoryUtilization">--gpu-memory-utilization (device backends only).</param>
    /// <param name="kvCacheDtype">--kv-cache-dtype: the KV cache's storage (the CPU reference rounds its cache the same way).</param>
    public static LoadedModel Open(string dir, BackendKind backend, int maxSequences, int? contextLength, long? gpuMemoryBytes, TextWriter stderr,
        double? gpuMemoryUtilization = null, int? maxOutputRows = null) =>
        Open(dir, backend, new ModelLoadOptions
        {
            MaxSequences = maxSequences, ContextLength = contextLength, GpuMemoryBytes = gpuMemoryBytes, GpuMemoryUtilization = gpuMemoryUtilization,
            MaxOutputRows = maxOutputRows,
        }, stderr);

    /// <summary>Loads with <paramref name="options"/> (the progress callbacks are the CLI's); the summary line goes to stderr.</summary>
    public static LoadedModel Open(string dir, BackendKind backend, ModelLoadOptions options, TextWriter stderr)
    {
        CliOptions.ContextCheck(options.ContextLength, ModelConfig.Load(dir), stderr);
        if (backend == BackendKind.Cpu && (options.GpuMemoryBytes is not null || options.GpuMemoryUtilization is not null))
            throw new UsageException($"{(options.GpuMemoryBytes is not null ? "--gpu-memory" : "--gpu-memory-utilization")} plans device memory; --device cpu has none (drop it, or use --device cuda or emulator)");
        var progress = new LoadProgress(stderr, LoadProgress.IsTerminal(stderr));
        var loaded = ModelLoader.Open(dir, backend, options with
        {
            CompileStarting = progress.CompileStarting, UploadProgress = progress.Upload, UploadFinished = progress.Finish,
        });
        stderr.WriteLine(loaded.Summary);
        return loaded;
    }
}
