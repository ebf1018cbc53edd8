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
/// sees it, called as the generator calls it (<see cref="DeviceModel.Step"/> with one reused <see cref="StepBatch"/>):
/// checking the batch, reserving KV pages, filling the pinned inputs (token, position, slot, context length, block table; the
/// sampling settings) in a staging-ring slot, their copies, the graph launch call, the result copy, the wait and reading
/// the result. The emulator's copies are memcpy; on CUDA each is a driver call instead (CudaCheck formats nothing on success).
/// Paths: greedy (the id comes back), sampled (settings copied too) and logits (V bf16 logits copied back and widened
/// into the batch: scales with the vocabulary, 2048 in the default model); and greedy and sampled as Generate runs them,
/// pipelined (DeviceModel.Enqueue of the next step with a fed token, then Complete of the one before: the same work on
/// the input and result streams, and a wait on the result copy's event).
/// The model: $QWEN3CUDA_BENCH_MODEL, else the small synthetic preset written to a temp folder; context 1000..4000.
/// Run: dotnet run -c Release --project bench -- --filter '*HostOverheadBench*' --job short
/// </summary>
[MemoryDiagnoser]
public class HostOverheadBench
{
    public enum StepKind { Greedy, Sampled, Logits, GreedyPipelined, SampledPipelined }

    [Params(StepKind.Greedy, StepKind.Sampled, StepKind.Logits, StepKind.GreedyPipelined, StepKind.SampledPipelined)]
    public StepKind Step { get; set; }

    EmulatedDevice _emu = null!;
    HostOnlyDevice _device = null!;
    DeviceModel _model = null!;
    readonly StepBatch _batch = new(1);
    readonly StepBatch[] _ring = [new(1), new(1)];   // pipelined: the step queued and the one before it
    int _queued;
    static readonly SamplingSettings Greedy = new(Temperature: 0f);
    static readonly SamplingSettings Sampling = new(Temperature: 0.6f, TopK: 20, TopP: 0.95f, Seed: 1);

    [GlobalSetup]
    public void Setup()
    {
        string dir = Environment.GetEnvironmentVariable("QWEN3CUDA_BENCH_MODEL") ?? WriteSmall();
        _emu = new EmulatedDevice();
        _device = new HostOnlyDevice(_emu);
        _model = DeviceModel.Load(_device, dir, new DeviceModelOptions { ContextLength = 4096, MaxBatch = 1, UseGraphs = true });
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
        if (Step is StepKind.GreedyPipelined or StepKind.SampledPipelined) { PipelinedStep(); return; }
        if (_model.SequenceLength(0) >= 4000) _model.TruncateSequence(0, 1000);
        // as the generator runs a decode step: one reused StepBatch, one row with an output
        _batch.Clear();
        _batch.Add(0, 100, _model.Kv.Length(0), Step == StepKind.Logits ? StepOutput.Logits : StepOutput.Sample, Step == StepKind.Sampled ? Sampling : Greedy);
        _model.Step(_batch);
        _emu.ClearLaunches();   // the emulator's log of copies is bookkeeping outside the model: keep it from growing
    }

    /// <summary>One token of Generate's loop: queue the next step (its token fed from the step before), complete the one before it.</summary>
    void PipelinedStep()
    {
        var settings = Step == StepKind.SampledPipelined ? Sampling : Greedy;
        if (_model.SequenceLength(0) >= 4000)
        {
            while (_model.PendingSteps > 0) _model.Complete(_ring[(_queued - _model.PendingSteps) & 1]);
            _model.TruncateSequence(0, 1000);
        }
        var b = _ring[_queued & 1];
        b.Clear();
        b.Add(0, _queued == 0 ? 100 : StepBatch.FedToken(0), _model.Kv.Length(0), StepOutput.Sample, settings);
        _model.Enqueue(b);
        _queued++;
        if (_model.PendingSteps == 2) _model.Complete(_ring[_queued & 1]);
        _emu.ClearLaunches();
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        Console.WriteLine($"// graph launches skipped: {_device.GraphLaunches}, kernel launches skipped: {_device.KernelLaunches}");
        _model.Dispose();
        _emu.Dispose();
    }
}
