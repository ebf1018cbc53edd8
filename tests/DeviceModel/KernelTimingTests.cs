using Qwen3Cuda.Cli.Commands;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// The profiler's per-kernel timing path (<see cref="KernelTimingDevice"/> + <see cref="DeviceProfiler.TimeKernels"/>):
/// a decode step run with graph replay off and events around each launch launches exactly what the captured graph
/// holds and computes the same logits; on a GPU, `profile` prints a per-kernel GPU time column.
/// </summary>
[NonParallelizable]
public class KernelTimingTests
{
    /// <summary>The tiny device-legal model, named in one place (a preset rename is a one-line change).</summary>
    internal static string TinyModel() => DeviceCheckpoints.Tiny();

    static readonly DeviceModelOptions Options = new() { ContextLength = 32, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 2, MaxSequences = 2 };

    static (string Kernel, Dim3 Grid, Dim3 Block, int Shared)[] Shapes(IEnumerable<LaunchRecord> records) =>
        [.. records.Select(r => (r.Kernel, r.Grid, r.Block, r.DynamicSharedBytes))];

    /// <summary>
    /// Batched decode (bucket 2) through the graph, undone, then through the timing path: the same kernels in the same
    /// order with the same grid, block and shared memory (the timing device's names, from DeviceKernel.Name, equal the
    /// emulator's records of the graph replay), and bit-identical logits (same kernels on the same data).
    /// </summary>
    [Test]
    public void TimedDecodeStep_LaunchesAndLogits_EqualTheGraphReplay()
    {
        using var emu = new EmulatedDevice();
        var counting = new CountingDevice(emu);
        using var timing = new KernelTimingDevice(counting);
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(timing, TinyModel(), Options);
        Assert.That(dm.GraphBuckets, Does.Contain(2));
        int V = dm.VocabSize;
        var logits = new float[V];
        dm.Forward(0, [5, 6, 7], logits);
        dm.Forward(1, [9, 10, 11, 12, 13], logits);

        var graphLogits = new float[2 * V];
        emu.ClearLaunches();
        counting.Reset();
        dm.DecodeBatch([0, 1], [14, 15], graphLogits);
        Assert.That((counting.GraphLaunches, counting.KernelLaunches), Is.EqualTo((1, 0)), "the reference run is one graph replay");
        var graph = Shapes(emu.Launches);
        Assert.That(graph, Is.Not.Empty);

        dm.TruncateSequence(0, 3);
        dm.TruncateSequence(1, 5);
        var timedLogits = new float[2 * V];
        emu.ClearLaunches();
        counting.Reset();
        var timed = DeviceProfiler.TimeKernels(dm, timing, () => dm.DecodeBatch([0, 1], [14, 15], timedLogits));

        Assert.That(counting.GraphLaunches, Is.EqualTo(0), "the timing path launches kernels one by one");
        Assert.That(counting.KernelLaunches, Is.EqualTo(graph.Length));
        Assert.That(timed.Select(t => (t.Kernel, t.Config.Grid, t.Config.Block, t.Config.DynamicSharedBytes)), Is.EqualTo(graph),
            "timed launches equal the graph's launches (kernel names, order, grid, block, shared bytes)");
        Assert.That(Shapes(emu.Launches), Is.EqualTo(graph), "the emulator saw the same launches");
        Assert.That(timedLogits, Is.EqualTo(graphLogits), "same kernels on the same data: bit-identical logits");
        Assert.That(timed.Select(t => t.Milliseconds), Has.All.GreaterThanOrEqualTo(0.0));
        Assert.That(dm.ReplayGraphs, Is.True, "graph replay is back on after timing");
        Assert.That(timing.IsTiming, Is.False);

        // The next plain decode step replays the graph again.
        counting.Reset();
        dm.DecodeBatch([0, 1], [16, 17], timedLogits);
        Assert.That(counting.GraphLaunches, Is.EqualTo(1));
    }

    /// <summary>
    /// The timing device times only launches between Begin and End that are not being captured (a captured launch
    /// becomes a graph node; events there would too), names them by DeviceKernel.Name, and refuses a nested Begin or
    /// an End without Begin.
    /// </summary>
    [Test]
    public void TimingDevice_TimesUncapturedLaunchesBetweenBeginAndEnd()
    {
        using var emu = new EmulatedDevice();
        using var timing = new KernelTimingDevice(emu);
        using var loader = new KernelLoader(timing);
        var sampling = new Qwen3Cuda.Runtime.Launchers.SamplingLaunchers(loader);
        using var stream = timing.CreateStream();
        DevicePtr logits = timing.Allocate(64 * sizeof(ushort)), ids = timing.Allocate(sizeof(int));
        timing.MemsetAsync(logits, 0, 64 * sizeof(ushort), stream);
        var scratch = new Qwen3Cuda.Runtime.Launchers.SamplingScratch(timing.Allocate(Qwen3Cuda.Runtime.Launchers.SamplingScratch.Bytes(1, 64)), 1, 64);
        timing.MemsetAsync(scratch.Base, 0, Qwen3Cuda.Runtime.Launchers.SamplingScratch.Bytes(1, 64), stream);
        sampling.Argmax(stream, logits, 64, 1, 64, ids, scratch);                 // before Begin: not timed
        timing.Begin();
        Assert.Throws<InvalidOperationException>(() => timing.Begin());
        sampling.Argmax(stream, logits, 64, 1, 64, ids, scratch);                 // timed
        timing.BeginCapture(stream);
        sampling.Argmax(stream, logits, 64, 1, 64, ids, scratch);                 // captured: not timed
        using (var graph = timing.EndCapture(stream)) Assert.That(graph.KernelNodeCount, Is.EqualTo(1), "the captured launch went into the graph");
        var launches = timing.End();
        Assert.That(launches, Has.Count.EqualTo(1));
        Assert.That(launches[0].Kernel, Is.EqualTo("sample_reduce_bf16"));
        Assert.That((launches[0].Config.Grid, launches[0].Config.Block), Is.EqualTo((new Dim3(1, 1), new Dim3(512))));
        Assert.Throws<InvalidOperationException>(() => timing.End());
        timing.Free(ids);
        timing.Free(logits);
    }

    /// <summary>On the emulator the profile has counters and no time column: its events read the host clock.</summary>
    [Test]
    public void EmulatorProfile_HasNoGpuTimes()
    {
        var r = ProfileCommand.Measure(TinyModel(), BackendKind.Emulator, tokens: 3);
        Assert.That(r.Decode.Kernels.Select(k => k.GpuMilliseconds), Has.All.Null);
        Assert.That(r.Decode.KernelMilliseconds, Is.Null);
        string table = DeviceProfiler.Table(r.Decode, emulator: true);
        Assert.That(table, Does.Contain("warp instr").And.Not.Contain("GPU ms").And.Contain("no timings"));
    }

    /// <summary>The CUDA table's layout from given times (no GPU needed): the time columns, shares summing to 100%.</summary>
    [Test]
    public void CudaTable_HasTimeColumns()
    {
        var p = new StepProfile("decode", 1,
        [
            new KernelProfile("gemv_bf16_t1", 4, 0, 0, 0, 0, 0.030),
            new KernelProfile("moe_combine", 2, 0, 0, 0, 0, 0.010),
        ], Milliseconds: 0.035);
        string table = DeviceProfiler.Table(p, emulator: false);
        TestContext.Out.Write(table);
        Assert.That(table, Does.Contain("GPU ms").And.Contain("% of step").And.Contain("us/launch"));
        Assert.That(table, Does.Contain("0.035 ms as run").And.Contain("6 launches one by one: 0.040 ms"));
        Assert.That(table, Does.Contain("75.0%").And.Contain("25.0%"), "0.030 and 0.010 of 0.040 ms");
        Assert.That(table, Does.Contain("7.50"), "gemv: 30 us over 4 launches");
    }

    /// <summary>GPU only: `profile --device cuda` measures every kernel of both steps and prints the time column.</summary>
    [Test]
    [Category(Kernels.KernelBackends.GpuCategory)]
    public void Profile_OnCuda_HasPerKernelGpuTimes()
    {
        var status = CudaDriver.Probe();
        if (status.Devices.Count == 0) Assert.Ignore("needs a CUDA GPU: " + (status.Problem ?? "none present"));
        var r = ProfileCommand.Measure(TinyModel(), BackendKind.Cuda, tokens: 5);
        Assert.That(r.Emulator, Is.False);
        foreach (var step in new[] { r.Prefill, r.Decode })
        {
            Assert.That(step.Kernels, Is.Not.Empty, step.Name);
            Assert.That(step.Kernels.Select(k => k.GpuMilliseconds), Has.All.GreaterThan(0.0), step.Name);
            Assert.That(step.Kernels[0].Kernel, Is.EqualTo("embedding_gather_bf16"), step.Name);
        }
        Assert.That(r.Decode.Kernels.Select(k => k.Kernel), Does.Contain("sample_reduce_bf16"));
        var (exit, stdout, stderr) = Support.CliRunner.Run("profile", "--model", TinyModel(), "--device", "cuda", "--tokens", "5");
        Assert.That(exit, Is.EqualTo(0), stderr);
        TestContext.Out.Write(stdout);
        Assert.That(stdout, Does.Contain("GPU ms").And.Contain("% of step"));
    }
}
