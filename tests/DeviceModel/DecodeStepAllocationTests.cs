using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// A decode step as the generator runs it (<see cref="Qwen3Cuda.Model.Device.DeviceModel.Step"/> with one reused
/// <see cref="StepBatch"/>, graphs on) allocates no managed memory: this thread's allocation counter over 20 steps of
/// each kind (greedy, sampled, logits), the device's work dropped by <see cref="HostOnlyDevice"/> over the emulator (the
/// emulator's own log of copies is cleared each step; the struct list keeps its capacity). It failed with 96 bytes per
/// step while WriteInputs enumerated the batch's segments with foreach over an IReadOnlyList (a boxed enumerator).
/// Time per step is bench/Host/HostOverheadBench's business, not this test's.
/// </summary>
[NonParallelizable]
public class DecodeStepAllocationTests
{
    [TestCase(StepOutput.Sample, 0f, TestName = "DecodeStep_AllocatesNothing(greedy)")]
    [TestCase(StepOutput.Sample, 0.6f, TestName = "DecodeStep_AllocatesNothing(sampled)")]
    [TestCase(StepOutput.Logits, 0f, TestName = "DecodeStep_AllocatesNothing(logits)")]
    public void DecodeStep_AllocatesNothing(StepOutput output, float temperature)
    {
        // Eager streams (EmulatorModes.Fast): the strict-stream queue of the emulator itself allocates per queued copy,
        // and this test measures the model's host code, not the emulator's bookkeeping.
        using var emu = new EmulatedDevice(new EmulatorOptions { Modes = EmulatorModes.Fast });
        var device = new HostOnlyDevice(emu);
        using var model = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), new DeviceModelOptions { ContextLength = 256, MaxBatch = 1 });
        var settings = new SamplingSettings(Temperature: temperature, TopK: 20, TopP: 0.95f, Seed: 1);
        var batch = new StepBatch(1);
        void Step()
        {
            batch.Clear();
            batch.Add(0, 7, model.Kv.Length(0), output, settings);
            model.Step(batch);
            emu.ClearLaunches();
        }
        for (int i = 0; i < 5; i++) Step();   // first-use allocations (JIT, lazy statics)
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(device.GraphLaunches, Is.EqualTo(25), "every step replayed the captured graph");
        Assert.That(allocated, Is.Zero, $"{allocated / 20.0:F0} bytes per step");
    }

    /// <summary>
    /// The engine's decode step: one row of each of four running sequences at different lengths in one batch (the
    /// batch-4 graph replayed), the pinned inputs of all four rows, the block tables, and their results. It failed with
    /// 56 bytes over the 20 steps while a sequence's block table (a List) grew its array when the sequence took its fifth
    /// page; the page table now sizes it for the longest sequence up front.
    /// </summary>
    [TestCase(StepOutput.Sample, 0f, TestName = "BatchedDecodeStep_AllocatesNothing(greedy)")]
    [TestCase(StepOutput.Sample, 0.6f, TestName = "BatchedDecodeStep_AllocatesNothing(sampled)")]
    [TestCase(StepOutput.Logits, 0f, TestName = "BatchedDecodeStep_AllocatesNothing(logits)")]
    public void BatchedDecodeStep_AllocatesNothing(StepOutput output, float temperature)
    {
        const int rows = 4;
        using var emu = new EmulatedDevice(new EmulatorOptions { Modes = EmulatorModes.Fast });
        var device = new HostOnlyDevice(emu);
        using var model = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), new DeviceModelOptions { ContextLength = 256, MaxSequences = rows, MaxBatch = rows });
        for (int s = 0; s < rows; s++) model.SkipTokens(s, 10 + 17 * s);   // different lengths and page counts per sequence
        var settings = new SamplingSettings(Temperature: temperature, TopK: 20, TopP: 0.95f, Seed: 1);
        var batch = new StepBatch(rows);
        void Step()
        {
            batch.Clear();
            for (int s = 0; s < rows; s++) batch.Add(s, 7 + s, model.Kv.Length(s), output, settings);
            model.Step(batch);
            emu.ClearLaunches();
        }
        for (int i = 0; i < 5; i++) Step();
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 20; i++) Step();
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.That(device.GraphLaunches, Is.EqualTo(25), "every step replayed the captured batch-4 graph");
        Assert.That(allocated, Is.Zero, $"{allocated / 20.0:F0} bytes per step");
    }

    /// <summary>
    /// Generate's pipelined loop (DeviceModel.Enqueue / Complete with two batches that alternate) allocates nothing per
    /// token: a call for 45 tokens allocates what one for 5 does (the call's own ring and queue), on the tiny model with
    /// the device's work dropped (every step after the first is a graph launch on the second I/O slot or the first).
    /// </summary>
    [TestCase(0f, TestName = "PipelinedGenerate_AllocatesNothingPerToken(greedy)")]
    [TestCase(0.6f, TestName = "PipelinedGenerate_AllocatesNothingPerToken(sampled)")]
    public void PipelinedGenerate_AllocatesNothingPerToken(float temperature)
    {
        using var emu = new EmulatedDevice(new EmulatorOptions { Modes = EmulatorModes.Fast });
        var device = new HostOnlyDevice(emu);
        using var model = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), new DeviceModelOptions { ContextLength = 256, MaxBatch = 1 });
        var settings = new SamplingSettings(Temperature: temperature, TopK: 20, TopP: 0.95f, Seed: 1);
        var generated = new int[45];
        long Run(int tokens)
        {
            model.ResetSequence(0);
            emu.ClearLaunches();
            long before = GC.GetAllocatedBytesForCurrentThread();
            int n = model.Generate(0, [7], settings, generated.AsSpan(0, tokens));
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            Assert.That(n, Is.EqualTo(tokens));
            return allocated;
        }
        Run(45);   // first-use allocations, and the emulator's log of copies at its largest
        long launches = device.GraphLaunches;
        long few = Run(5), many = Run(45);
        Assert.That(device.GraphLaunches - launches, Is.EqualTo(50), "every step replayed a captured graph");
        Assert.That(many - few, Is.Zero, $"{(many - few) / 40.0:F0} bytes per token");
    }
}
