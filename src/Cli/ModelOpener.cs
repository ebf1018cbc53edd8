using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Cli;

/// <summary>
/// Where `generate` and `chat` get their model: the one place to wire a device backend in.
/// cpu is the CPU reference; emulator and cuda open the <see cref="DeviceModel"/> on that backend; auto is cuda when a
/// driver loads and a GPU opens, else the emulator (<see cref="DeviceFactory.ChooseAuto()"/>), and says which and why
/// in one line on stderr (the emulator is slow: the line points at --device cpu).
/// </summary>
public static class ModelOpener
{
    public static readonly string[] Devices = ["cpu", "emulator", "cuda", "auto"];

    /// <param name="stderr">Receives the one line saying what --device auto chose and why.</param>
    /// <param name="gpuMemoryUtilization">--gpu-memory-utilization (device backends; the CPU reference ignores it).</param>
    public static ICausalLanguageModel Open(string modelDir, string device, int maxSequences, int? contextLength, TextWriter? stderr = null,
        double? gpuMemoryUtilization = null)
    {
        if (!Directory.Exists(modelDir)) throw new DirectoryNotFoundException($"--model: directory '{modelDir}' does not exist");
        return device switch
        {
            "cpu" => ReferenceModel.Load(modelDir, maxSequences, contextLength),
            "auto" => OpenDevice(modelDir, DeviceFactory.Resolve(BackendKind.Auto, stderr), maxSequences, contextLength, gpuMemoryUtilization),
            "emulator" => OpenDevice(modelDir, BackendKind.Emulator, maxSequences, contextLength, gpuMemoryUtilization),
            "cuda" => OpenDevice(modelDir, BackendKind.Cuda, maxSequences, contextLength, gpuMemoryUtilization),
            _ => throw new ArgumentException($"--device must be one of {string.Join(", ", Devices)}, got '{device}'"),
        };
    }

    /// <summary>The device model on a backend; the model owns the device (disposing the model closes it).</summary>
    public static ICausalLanguageModel OpenDevice(string modelDir, BackendKind backend, int maxSequences, int? contextLength, double? gpuMemoryUtilization = null)
    {
        IDevice device;
        try { device = DeviceFactory.Open(backend); }
        catch (Exception e) when (e is DeviceException or Runtime.Native.NativeLibraryMissingException)
        {
            throw new ArgumentException($"--device {backend.ToString().ToLowerInvariant()} is not available on this machine: {e.Message}", e);
        }
        try
        {
            var options = new DeviceModelOptions
            {
                MaxSequences = maxSequences,
                ContextLength = contextLength ?? (backend == BackendKind.Emulator ? 4096 : null),
                MaxBatch = Math.Min(8, Math.Max(1, maxSequences)),
                PrefillChunkTokens = backend == BackendKind.Emulator ? 64 : 512,
                GpuMemoryUtilization = gpuMemoryUtilization,
            };
            return new OwningModel(DeviceModel.Load(device, modelDir, options), device);
        }
        catch (Exception original) { DeviceCapture.CleanupKeeping(original, "device dispose", device.Dispose); throw; }
    }

    /// <summary>A model that also disposes its device.</summary>
    private sealed class OwningModel(DeviceModel model, IDevice device) : ICausalLanguageModel
    {
        public int VocabSize => model.VocabSize;
        public int ContextLength => model.ContextLength;
        public int MaxSequences => model.MaxSequences;
        public int MaxStepRows => model.MaxStepRows;
        public int MaxOutputRows => model.MaxOutputRows;
        public Qwen3Cuda.Runtime.Memory.KvPageTable Kv => model.Kv;
        public void Step(StepBatch batch) => model.Step(batch);
        public void Dispose() { model.Dispose(); device.Dispose(); }
    }
}
