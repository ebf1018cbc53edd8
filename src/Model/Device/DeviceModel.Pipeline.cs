using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>
/// Pipelined decode (docs/architecture.md, "Pipelined decode"): <see cref="Enqueue"/> queues a decode step and returns
/// before it ran; <see cref="Complete"/> waits for the oldest queued step and fills its batch. With a step queued behind
/// the one running, the GPU never waits for the host: the host reads step i's token while step i + 1 runs.
/// </summary>
/// <remarks>
/// Two I/O slots (<see cref="WorkspaceLayout.Io"/>, <see cref="WorkspaceLayout.PipelineIo"/>) alternate, each with its
/// inputs, its result head and its own captured graphs. A step's inputs are copied on an input stream while the step
/// before runs, and its result head goes back on a result stream while the step after runs, so neither copy is on the
/// compute stream between two steps. A row's token may be a fed token (<see cref="StepBatch.FedToken"/>): the
/// embedding takes the id the previous step sampled, in the other slot, on the device. Events order the streams:
/// <list type="bullet">
/// <item>a slot's input copy waits for the last step that ran on that slot (it read those inputs);</item>
/// <item>a step waits for its input copy, and for the result copy of the last step on its slot (it rewrites that head);</item>
/// <item>the result copy waits for its step.</item>
/// </list>
/// The host side: a slot's staging buffer is the staging ring's (its events), its pinned result buffer is read only after
/// <see cref="Complete"/> synchronised on the copy into it, and at most two steps are queued, so the next
/// <see cref="Enqueue"/> on that slot comes after its last result was read.
/// </remarks>
public sealed partial class DeviceModel
{
    /// <summary>Streams, events and the second pinned result buffer of the pipeline.</summary>
    private sealed class PipelineResources : IDisposable
    {
        public readonly DeviceStream InputStream, ResultStream;
        public readonly DeviceEvent[] InputsCopied = new DeviceEvent[2], StepDone = new DeviceEvent[2], ResultCopied = new DeviceEvent[2];
        public readonly bool[] Ran = new bool[2];   // a pipelined step ran on the slot (its events are recorded)
        public readonly PinnedBuffer SecondResult;  // slot 1's result head (slot 0's goes to the model's result buffer)
        private readonly List<IDisposable> _owned = [];

        public PipelineResources(IDevice device, StepIoLayout second, int maxBatch)
        {
            try
            {
                InputStream = device.CreateStream(); _owned.Add(InputStream);
                ResultStream = device.CreateStream(); _owned.Add(ResultStream);
                for (int i = 0; i < 2; i++)
                {
                    InputsCopied[i] = device.CreateEvent(timing: false); _owned.Add(InputsCopied[i]);
                    StepDone[i] = device.CreateEvent(timing: false); _owned.Add(StepDone[i]);
                    ResultCopied[i] = device.CreateEvent(timing: false); _owned.Add(ResultCopied[i]);
                }
                SecondResult = device.AllocatePinned(second.Sampled - second.EmbedError + maxBatch * sizeof(int)); _owned.Add(SecondResult);
            }
            catch { Dispose(); throw; }
        }

        public void Dispose()
        {
            for (int i = _owned.Count - 1; i >= 0; i--) _owned[i].Dispose();
            _owned.Clear();
        }
    }

    private readonly PipelineResources _pipeline;
    private readonly Queue<(StepBatch Batch, int Slot)> _pending = new(2);
    /// <summary>The I/O slot of the last step queued (Step runs on slot 0).</summary>
    private int _lastSlot;
    /// <summary>Output rows of the last step whose sampled ids a fed token may take (0: none, e.g. the step returned logits).</summary>
    private int _lastSampledOutputs;

    /// <summary>Steps queued by <see cref="Enqueue"/> and not yet completed (at most 2).</summary>
    public int PendingSteps => _pending.Count;
    /// <summary>Rows a queued step takes at most: <see cref="MaxBatch"/>.</summary>
    public int MaxPipelinedRows => MaxBatch;

    /// <summary>
    /// Queues a decode step without waiting for it: one row per sequence, each at its sequence's next position, every row
    /// sampled (greedy or not, no penalties), at most <see cref="MaxBatch"/> rows. A row's token may be
    /// <see cref="StepBatch.FedToken"/>(j): the id the previous step sampled for its output row j. The host's view of the
    /// sequences advances now; the results arrive with <see cref="Complete"/>, which must be called for every queued step in
    /// order, with the same batch (keep it untouched until then). At most two steps are queued at once. Complete every
    /// queued step before a <see cref="Step"/> or <see cref="SkipTokens"/>, and before truncating or sharing pages a queued
    /// step reads. Releasing a sequence's pages (a reset) while a queued step writes its last position is safe: every later
    /// step runs after it on the model's stream.
    /// </summary>
    public void Enqueue(StepBatch batch)
    {
        if (_pending.Count == 2) throw new InvalidOperationException("two pipelined steps are queued already: Complete the oldest before queuing another");
        var table = _kv.Table;
        batch.Prepare(VocabSize, ContextLength, MaxStepRows, MaxOutputRows, table, MaxPenaltyEntries, fedOutputs: _lastSampledOutputs);
        if (batch.Count > MaxBatch)
            throw new ArgumentException($"a pipelined step takes at most MaxBatch = {MaxBatch} rows; this one has {batch.Count}", nameof(batch));
        if (batch.Segments.Count != batch.Count || batch.OutputCount != batch.Count || batch.LogitsCount > 0 || batch.PenaltyRows > 0)
            throw new ArgumentException("a pipelined step has one row per sequence, each with a sampled output (no logits, no penalties); use Step for others", nameof(batch));
        int slot = 1 - _lastSlot;
        var io = SlotIo(slot);
        var p = _pipeline;
        batch.ReservePages(table);
        _kv.ApplyPendingCopies(_stream);
        // the slot's inputs were last read by the step that ran on it: copy over them only after it
        if (p.Ran[slot]) _device.Wait(p.InputStream, p.StepDone[slot]);
        var inputs = _staging.Acquire();
        StepShape shape;
        _io = io;
        try { shape = WriteInputs(batch, inputs, p.InputStream); }
        catch { _staging.Abandon(); _io = Plan.Workspace.Io; throw; }
        _staging.Release(p.InputStream);
        _device.Record(p.InputsCopied[slot], p.InputStream);
        _device.Wait(_stream, p.InputsCopied[slot]);
        if (p.Ran[slot]) _device.Wait(_stream, p.ResultCopied[slot]);   // this step rewrites the head that copy read
        try
        {
            if (TryGraph(slot, shape, out var exec)) _device.Launch(exec, _stream);
            else RunStep(shape);
        }
        finally { _io = Plan.Workspace.Io; }
        _device.Record(p.StepDone[slot], _stream);
        _device.Wait(p.ResultStream, p.StepDone[slot]);
        _device.CopyToHostAsync(SlotResult(slot), 0, _workspace.Base + io.EmbedError, io.Sampled - io.EmbedError + batch.OutputCount * sizeof(int), p.ResultStream);
        _device.Record(p.ResultCopied[slot], p.ResultStream);
        p.Ran[slot] = true;
        batch.AdvanceSequences(table);
        _pending.Enqueue((batch, slot));
        _lastSlot = slot;
        _lastSampledOutputs = batch.OutputCount;
    }

    /// <summary>
    /// Waits for the oldest step queued by <see cref="Enqueue"/> and fills <paramref name="batch"/> (the batch queued
    /// with it) with its sampled tokens.
    /// </summary>
    public void Complete(StepBatch batch)
    {
        if (!_pending.TryPeek(out var oldest)) throw new InvalidOperationException("no pipelined step is queued");
        if (!ReferenceEquals(oldest.Batch, batch)) throw new ArgumentException("Complete takes the batch of the oldest queued step", nameof(batch));
        _pending.Dequeue();
        int slot = oldest.Slot;
        var io = SlotIo(slot);
        var result = SlotResult(slot);
        _device.Synchronize(_pipeline.ResultCopied[slot]);
        CheckEmbedError(result, io);
        var sampled = result.AsSpan<int>().Slice((int)((io.Sampled - io.EmbedError) / sizeof(int)), batch.OutputCount);
        for (int o = 0; o < batch.OutputCount; o++) batch.SetSampled(o, sampled[o]);
    }

    /// <summary>The pinned buffer I/O slot <paramref name="slot"/>'s result head comes back to.</summary>
    private PinnedBuffer SlotResult(int slot) => slot == 0 ? _result : _pipeline.SecondResult;
}
