using Qwen3Cuda.Model;
using BenchmarkDotNet.Attributes;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;

namespace Qwen3Cuda.Bench.EndToEnd;

/// <summary>
/// End-to-end DeviceModel steps on a CUDA device: one greedy decode step (one graph launch + the id copy) for a batch of
/// 1..8 sequences, and one prefill chunk. The model is $QWEN3CUDA_BENCH_MODEL, else a 2-layer real-shape synthetic slice
/// written to a temp folder. Without a GPU the emulator would take minutes per step: Setup says so and the methods do
/// nothing (use `qwen3cuda profile --device emulator` for the simulated-traffic view).
/// </summary>
public class DecodeStepBench
{
    [Params(1, 4, 8)]
    public int Batch { get; set; }

    IDevice? _device;
    DeviceModel? _model;
    int[] _seqs = [], _tokens = [], _next = [];
    int[] _prompt = [];

    [GlobalSetup]
    public void Setup()
    {
        if (!CudaDriver.IsDeviceAvailable()) { Console.WriteLine("// no CUDA device: end-to-end steps are not timed on the emulator"); return; }
        string dir = Environment.GetEnvironmentVariable("QWEN3CUDA_BENCH_MODEL") ?? WriteSlice();
        _device = DeviceFactory.Open(BackendKind.Cuda);
        _model = DeviceModel.Load(_device, dir, new DeviceModelOptions { ContextLength = 4096, MaxSequences = 8, MaxBatch = 8 });
        _seqs = Enumerable.Range(0, Batch).ToArray();
        _tokens = Enumerable.Range(0, Batch).Select(i => 100 + i).ToArray();
        _next = new int[Batch];
        _prompt = Enumerable.Range(0, 512).Select(i => (i * 7919 + 11) % _model.VocabSize).ToArray();
        foreach (int s in _seqs) _model.ForwardGreedy(s, [1, 2, 3, 4]);
    }

    static string WriteSlice()
    {
        string dir = Path.Combine(Path.GetTempPath(), "qwen3cuda-bench-real-shape-slice");
        if (!File.Exists(Path.Combine(dir, "config.json"))) SyntheticCheckpoint.Write(SyntheticPreset.RealShapeSlice, 1, dir, layers: 2);
        return dir;
    }

    [Benchmark]
    public void GreedyDecodeStep()
    {
        if (_model is null) return;
        if (_model.SequenceLength(0) > 4000) foreach (int s in _seqs) _model.TruncateSequence(s, 4);
        _model.DecodeBatchGreedy(_seqs, _tokens, _next);
    }

    [Benchmark]
    public void Prefill512()
    {
        if (_model is null || Batch != 1) return;
        _model.ResetSequence(7);
        _model.ForwardGreedy(7, _prompt);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _model?.Dispose();
        _device?.Dispose();
    }
}
