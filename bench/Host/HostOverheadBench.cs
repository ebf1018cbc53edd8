using BenchmarkDotNet.Attributes;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Bench.Host;

/// <summary>
/// Host time and managed allocations of one decode step of a <see cref="DeviceModel"/> with graphs on, the device's own
/// work taken out: the model runs on the emulator behind <see cref="HostOnlyDevice"/>, which forwards everything but
/// turns kernel and graph launches into no-ops (the graph is captured as usual). What is left is the step as the host
/// sees it: checking the arguments, filling the pinned inputs (token, position, slot, context length, block table; the
/// sampling settings), the five or six input copies, the graph launch call, the result copy, the wait and reading the
/// result. The emulator's copies are memcpy; on CUDA each is a driver call instead (CudaCheck formats nothing on success).
/// Paths: greedy (the id comes back), sampled (settings copied too) and logits (V bf16 logits copied back and widened:
/// scales with the vocabulary, 2048 in the default model).
/// The model: $QWEN3CUDA_BENCH_MODEL, else the small synthetic preset written to a temp folder; context 1000..4000.
/// Run: dotnet run -c Release --project bench -- --filter '*HostOverheadBench*' --job short
/// </summary>
[MemoryDiagnoser]
public class HostOverheadBench
{
    public enum StepKind { Greedy, Sampled, Logits }

    [Params(StepKind.Greedy, StepKind.Sampled, StepKind.Logits)]
    public StepKind Step { get; set; }

    EmulatedDevice _emu = null!;
    HostOnlyDevice _device = null!;
    DeviceModel _model = null!;
    readonly int[] _seqs = [0], _tokens = [100], _ids = new int[1];
    float[] _logits = [];
    static readonly SamplingSettings Sampling = new(Temperature: 0.6f, TopK: 20, TopP: 0.95f, Seed: 1);

    [GlobalSetup]
    public void Setup()
    {
        string dir = Environment.GetEnvironmentVariable("QWEN3CUDA_BENCH_MODEL") ?? WriteSmall();
        _emu = new EmulatedDevice();
        _device = new HostOnlyDevice(_emu);
        _model = DeviceModel.Load(_device, dir, new DeviceModelOptions { ContextLength = 4096, MaxBatch = 1, UseGraphs = true });
        _logits = new float[_model.VocabSize];
        _model.SkipTokens(0, 1000);
        _emu.ClearLaunches();
    }

    static string WriteSmall()
    {
        string dir = Path.Combine(Path.GetTempPath(), "qwen3cuda-bench-small");
        if (!File.Exists(Path.Combine(dir, "config.json"))) SyntheticCheckpoint.Write(SyntheticPreset.Small, 1, dir);
        return dir;
    }

    [Benchmark]
    public void DecodeStepHostTime()
    {
        if (_model.SequenceLength(0) >= 4000) _model.TruncateSequence(0, 1000);
        switch (Step)
        {
            case StepKind.Greedy: _model.DecodeBatchGreedy(_seqs, _tokens, _ids); break;
            case StepKind.Sampled: _model.DecodeBatchSampled(_seqs, _tokens, Sampling, _ids); break;
            default: _model.DecodeBatch(_seqs, _tokens, _logits); break;
        }
        _emu.ClearLaunches();   // the emulator's log of copies is bookkeeping outside the model: keep it from growing
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        Console.WriteLine($"// graph launches skipped: {_device.GraphLaunches}, kernel launches skipped: {_device.KernelLaunches}");
        _model.Dispose();
        _emu.Dispose();
    }
}

/// <summary>
/// An <see cref="IDevice"/> decorator that forwards everything to <see cref="Inner"/> except kernel and graph launches
/// outside a capture, which it counts and drops: the host side of a step without the device's work.
/// </summary>
public sealed class HostOnlyDevice(IDevice inner) : IDevice
{
    public IDevice Inner => inner;
    public long KernelLaunches { get; private set; }
    public long GraphLaunches { get; private set; }

    public void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args)
    {
        if (stream.IsCapturing) inner.Launch(kernel, config, stream, args);
        else KernelLaunches++;
    }

    public void Launch(DeviceGraphExec exec, DeviceStream stream)
    {
        if (stream.IsCapturing) inner.Launch(exec, stream);
        else GraphLaunches++;
    }

    public DeviceInfo Info => inner.Info;
    public DeviceStream DefaultStream => inner.DefaultStream;
    public DevicePtr Allocate(long bytes) => inner.Allocate(bytes);
    public void Free(DevicePtr ptr) => inner.Free(ptr);
    public (long FreeBytes, long TotalBytes) GetMemoryInfo() => inner.GetMemoryInfo();
    public void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src) => inner.CopyToDevice(dst, src);
    public void CopyToHost(Span<byte> dst, DevicePtr src) => inner.CopyToHost(dst, src);
    public void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream) => inner.CopyToDeviceAsync(dst, src, srcOffset, bytes, stream);
    public void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream) => inner.CopyToHostAsync(dst, dstOffset, src, bytes, stream);
    public void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream) => inner.CopyDeviceToDeviceAsync(dst, src, bytes, stream);
    public void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream) => inner.MemsetAsync(dst, value, bytes, stream);
    public PinnedBuffer AllocatePinned(long bytes) => inner.AllocatePinned(bytes);
    public DeviceModule LoadModule(CompiledModule module) => inner.LoadModule(module);
    public DeviceKernel GetKernel(DeviceModule module, string name) => inner.GetKernel(module, name);
    public KernelAttributes GetAttributes(DeviceKernel kernel) => inner.GetAttributes(kernel);
    public void SetMaxDynamicSharedMemory(DeviceKernel kernel, int bytes) => inner.SetMaxDynamicSharedMemory(kernel, bytes);
    public int MaxActiveBlocksPerMultiprocessor(DeviceKernel kernel, int blockThreads, int dynamicSharedBytes) => inner.MaxActiveBlocksPerMultiprocessor(kernel, blockThreads, dynamicSharedBytes);
    public DeviceStream CreateStream() => inner.CreateStream();
    public void Synchronize(DeviceStream stream) => inner.Synchronize(stream);
    public void Synchronize() => inner.Synchronize();
    public DeviceEvent CreateEvent(bool timing = true) => inner.CreateEvent(timing);
    public void Record(DeviceEvent evt, DeviceStream stream) => inner.Record(evt, stream);
    public void Wait(DeviceStream stream, DeviceEvent evt) => inner.Wait(stream, evt);
    public void Synchronize(DeviceEvent evt) => inner.Synchronize(evt);
    public float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end) => inner.ElapsedMilliseconds(start, end);
    public void BeginCapture(DeviceStream stream) => inner.BeginCapture(stream);
    public DeviceGraph EndCapture(DeviceStream stream) => inner.EndCapture(stream);
    public DeviceGraphExec Instantiate(DeviceGraph graph) => inner.Instantiate(graph);
    public bool TryUpdate(DeviceGraphExec exec, DeviceGraph graph) => inner.TryUpdate(exec, graph);
    public void Dispose() { }
}
