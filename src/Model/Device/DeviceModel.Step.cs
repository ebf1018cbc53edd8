using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Model.Device;

/// <summary>The forward pass itself: the step contract, step inputs, one function per layer in the reference's order, graphs.</summary>
public sealed partial class DeviceModel
{
    /// <summary>A sequence's run of rows goes through the tensor-core flash attention when it has more rows than this (and the option is on).</summary>
    public const int MaxDecodeAttentionRows = GemvLaunchers.MaxTokens;

    private readonly int[] _deviceRow;   // batch row -> row in the step's device order
    private readonly (long Offset, long Bytes)[] _inputCopies = new (long, long)[11];   // WriteInputs' arrays (no allocation per step)

    /// <summary>How a step's rows map onto the kernels (host-known sizes; device inputs carry the rest).</summary>
    /// <param name="Rows">token rows (a graph step: the padded bucket)</param>
    /// <param name="DecodeRows">rows 0..DecodeRows-1 go through the decode attention, one row each with its own table and length</param>
    /// <param name="FlashSegments">runs of rows after them, one per sequence, through the flash prefill attention</param>
    /// <param name="MaxFlashRows">longest of those runs</param>
    /// <param name="Outputs">rows through the final norm and lm_head</param>
    /// <param name="Gather">the output rows are gathered by the output_rows input (else they are rows 0..Outputs-1)</param>
    /// <param name="Sample">run the sampling kernel over the output rows with their settings (else the argmax: greedy rows, logits rows)</param>
    /// <param name="Penalties">run the penalties kernel over the output rows' logits first (penalties.cu)</param>
    /// <param name="DecodeRuns">a decode-attention run has several rows of one sequence, which attend to each other's new keys:
    /// the step writes the KV cache first (qk_norm_rope_kv_write) and then runs split + combine. Otherwise every decode row
    /// is its sequence's only row, and one attn_decode_fused launch does rope, the KV write, attention and the combine.</param>
    private readonly record struct StepShape(int Rows, int DecodeRows, int FlashSegments, int MaxFlashRows, int Outputs, bool Gather, bool Sample, bool Penalties = false, bool DecodeRuns = false);

    // ---------------- the step contract ----------------

    /// <summary>
    /// One forward over the rows of <paramref name="batch"/> (see <see cref="StepBatch"/>): prefill runs longer than
    /// <see cref="MaxDecodeAttentionRows"/> use the flash prefill attention, other rows the paged decode attention. A step
    /// of one decode row per sequence, every row with an output, at most MaxBatch rows, replays the bucket's captured
    /// graph. The host waits only when the step has outputs (their copy back).
    /// </summary>
    public void Step(StepBatch batch)
    {
        if (_pending.Count > 0)
            throw new InvalidOperationException($"{_pending.Count} pipelined step(s) are still queued: Complete them before a Step");
        var table = _kv.Table;
        batch.Prepare(VocabSize, ContextLength, MaxStepRows, MaxOutputRows, table, MaxPenaltyEntries);
        batch.ReservePages(table);
        _kv.ApplyPendingCopies(_stream);
        var inputs = _staging.Acquire();
        StepShape shape;
        try { shape = WriteInputs(batch, inputs, _stream); }
        catch { _staging.Abandon(); throw; }
        _staging.Release(_stream);
        bool graph = shape.DecodeRows == shape.Rows && !shape.Gather && shape.Rows <= MaxBatch && !shape.Penalties;   // the graphs have no penalties kernel
        if (graph && TryGraph(0, shape, out var exec)) _device.Launch(exec, _stream);
        else RunStep(shape);
        batch.AdvanceSequences(table);
        _lastSlot = 0;
        _lastSampledOutputs = batch.LogitsCount == 0 ? batch.OutputCount : 0;   // a fed token takes a sampled id of this step
        if (batch.OutputCount > 0) ReadResults(batch);
    }

    /// <summary>
    /// Fills a staging slot with the step inputs in device row order (decode-attention rows first, then the flash
    /// segments), queues their copies into the workspace, and returns the step's shape. A batch that fits a graph
    /// bucket is padded to it: padding rows read key 0 of the scratch page 0, write nothing (slot -1), and are ignored.
    /// </summary>
    private StepShape WriteInputs(StepBatch batch, PinnedBuffer inputs, DeviceStream copyStream)
    {
        var w = Plan.Workspace;
        var io = _io;
        var segments = batch.Segments;
        bool flashOn = Plan.Options.FlashPrefillAttention;
        int decodeRows = 0, flashSegments = 0, maxFlash = 0;
        bool decodeRuns = false;
        for (int k = 0; k < segments.Count; k++)   // indexed: foreach over the IReadOnlyList would box its enumerator every step
        {
            var g = segments[k];
            if (flashOn && g.Rows > MaxDecodeAttentionRows) { flashSegments++; maxFlash = Math.Max(maxFlash, g.Rows); }
            else { decodeRows += g.Rows; decodeRuns |= g.Rows > 1; }
        }
        int rows = batch.Count, outputs = batch.OutputCount;
        bool decodeOnly = decodeRows == rows && segments.Count == rows && outputs == rows;
        int padded = decodeOnly && rows <= MaxBatch ? BucketFor(rows) : rows;   // graphs on or off: the same launches

        var ids = Input<int>(inputs, io.Tokens, padded);
        var positions = Input<int>(inputs, io.Positions, padded);
        var slots = Input<int>(inputs, io.Slots, padded);
        int attnRows = decodeRows + flashSegments + (padded - rows);
        var lens = Input<int>(inputs, io.ContextLens, attnRows);
        int stride = w.MaxPagesPerSeq;
        var tables = Input<int>(inputs, io.BlockTables, attnRows * stride);
        var qStart = Input<int>(inputs, io.QStart, flashSegments + 1);
        int half = Config.HeadDim / 2;
        var ropeRows = w.PerRowRope ? Input<float>(inputs, io.RopeInvFreq, padded * half) : default;
        var table = _kv.Table;

        // Decode-attention rows first (in batch order), then each flash segment's rows.
        int next = 0, seg = 0, flashRow = decodeRows;
        qStart[0] = 0;
        for (int k = 0; k < segments.Count; k++)
        {
            var g = segments[k];
            bool flash = flashOn && g.Rows > MaxDecodeAttentionRows;
            int first = flash ? flashRow : next;
            if (w.PerRowRope) WriteDynamicRope(g, ropeRows, first, half);
            for (int i = 0; i < g.Rows; i++)
            {
                int r = g.FirstRow + i, d = first + i, pos = g.FirstPosition + i;
                _deviceRow[r] = d;
                ids[d] = batch.Token(r);
                positions[d] = pos;
                slots[d] = table.Slot(g.Sequence, pos);
                if (flash) continue;
                lens[d] = pos + 1;                               // row d attends to keys 0..pos (causal within the run)
                var row = tables.Slice(d * stride, stride);
                if (i == 0) table.WriteBlockTable(g.Sequence, row);
                else tables.Slice(first * stride, stride).CopyTo(row);
            }
            if (flash)
            {
                int at = decodeRows + seg;
                lens[at] = g.FirstPosition + g.Rows;
                table.WriteBlockTable(g.Sequence, tables.Slice(at * stride, stride));
                qStart[seg + 1] = qStart[seg] + g.Rows;
                seg++;
                flashRow += g.Rows;
            }
            else next += g.Rows;
        }
        for (int d = rows; d < padded; d++)
        {
            ids[d] = 0; positions[d] = 0; slots[d] = -1; lens[d] = 1;
            tables.Slice(d * stride, stride).Clear();
            if (w.PerRowRope) _defaultInvFreq.CopyTo(ropeRows.Slice(d * half, half));
        }

        // Output rows (batch order) and their sampling settings.
        // Without a gather the output rows are rows 0..rows-1 in order (a decode batch: its padding rows compute too).
        var outputRows = Input<int>(inputs, io.OutputRows, outputs);
        var batchOutputs = batch.OutputRows;
        bool gather = outputs != rows;
        for (int o = 0; o < outputs; o++)
        {
            outputRows[o] = _deviceRow[batchOutputs[o]];
            gather |= outputRows[o] != o;
        }
        bool sample = false;   // every sampled row greedy: the argmax, no settings to copy
        foreach (int r in batchOutputs) sample |= batch.Output(r) == StepOutput.Sample && !batch.Sampling(r).IsGreedy;
        int outputRowsTotal = gather ? outputs : padded;
        if (sample)
        {
            var settings = Input<SampleRowSettings>(inputs, io.SampleSettings, outputRowsTotal);
            for (int o = 0; o < outputRowsTotal; o++)
            {
                if (o >= outputs) { settings[o] = default; continue; }   // padding rows: greedy (cheapest), ignored
                int r = batchOutputs[o];
                settings[o] = batch.Output(r) == StepOutput.Sample
                    ? SampleRowSettings.From(batch.Sampling(r), (ulong)batch.Position(r) + 1)   // counter: the new token's position
                    : default;
            }
        }

        bool penalties = batch.PenaltyRows > 0;
        if (penalties)
        {
            var penaltyRows = Input<PenaltyRow>(inputs, io.PenaltyRows, outputRowsTotal);
            var entries = Input<int>(inputs, io.PenaltyEntries, 2 * batch.PenaltyEntries);
            for (int o = 0; o < outputRowsTotal; o++)
            {
                if (o >= outputs) { penaltyRows[o] = default; continue; }   // padding rows: none
                int r = batchOutputs[o];
                var tokens = batch.Output(r) == StepOutput.Sample ? batch.PenaltyTokens(r) : default;
                if (tokens.IsEmpty) { penaltyRows[o] = default; continue; }
                ref readonly var ps = ref batch.Penalties(r);
                int start = batch.PenaltyStart(r);
                penaltyRows[o] = new PenaltyRow { Start = start, Count = tokens.Length, Presence = ps.Presence, Frequency = ps.Frequency, Repetition = ps.Repetition };
                var counts = batch.PenaltyCounts(r);
                for (int i = 0; i < tokens.Length; i++) { entries[2 * (start + i)] = tokens[i]; entries[2 * (start + i) + 1] = counts[i]; }
            }
        }

        // Every array in layout order; adjacent ones go to the device as one copy (CopyInputs).
        int n = 0;
        var copies = _inputCopies;
        void Add(long offset, long bytes) { if (bytes > 0) copies[n++] = (offset, bytes); }
        Add(io.Tokens, padded * 4L);
        Add(io.Positions, padded * 4L);
        Add(io.Slots, padded * 4L);
        Add(io.ContextLens, attnRows * 4L);
        Add(io.BlockTables, (long)attnRows * stride * 4);
        if (flashSegments > 0) Add(io.QStart, (flashSegments + 1) * 4L);
        if (gather) Add(io.OutputRows, outputs * 4L);
        if (sample) Add(io.SampleSettings, SettingsBytes(outputRowsTotal));
        if (penalties) Add(io.PenaltyRows, outputRowsTotal * (long)System.Runtime.CompilerServices.Unsafe.SizeOf<PenaltyRow>());
        if (penalties) Add(io.PenaltyEntries, batch.PenaltyEntries * 8L);
        if (w.PerRowRope) Add(io.RopeInvFreq, (long)padded * half * sizeof(float));
        CopyInputs(inputs, copies.AsSpan(0, n), copyStream);
        return new StepShape(padded, decodeRows + (padded - rows), flashSegments, maxFlash, outputRowsTotal, gather, sample, penalties, decodeRuns);
    }

    /// <summary>
    /// Dynamic NTK (docs/model-formats.md, "RoPE scaling"): the rows of segment <paramref name="g"/> (device rows first ..)
    /// get the inv_freq table of the sequence's length after this step, as the CPU reference computes it.
    /// </summary>
    private void WriteDynamicRope(StepSegment g, Span<float> ropeRows, int first, int half)
    {
        var c = Config;
        var row0 = ropeRows.Slice(first * half, half);
        ReferenceOps.DynamicNtkInvFreq(c.HeadDim, c.RopeTheta, c.RopeScaling!.Factor, c.MaxPositionEmbeddings, g.FirstPosition + g.Rows, row0);
        for (int i = 1; i < g.Rows; i++) row0.CopyTo(ropeRows.Slice((first + i) * half, half));
    }

    /// <summary>Copies the result region back (error flag, sampled ids, and the logits when a row asked for them), waits, and fills the batch's results.</summary>
    private void ReadResults(StepBatch batch)
    {
        var w = Plan.Workspace;
        var io = _io;
        int outputs = batch.OutputCount;
        long bytes = batch.LogitsCount > 0 ? w.ResultBytes(outputs, VocabSize) : io.Sampled - io.EmbedError + outputs * sizeof(int);
        _device.CopyToHostAsync(_result, 0, _workspace.Base + io.EmbedError, bytes, _stream);
        _device.Synchronize(_stream);
        _staging.StreamSynchronized();
        CheckEmbedError(_result, io);
        var sampled = _result.AsSpan<int>().Slice((int)((io.Sampled - io.EmbedError) / sizeof(int)), outputs);
        var logits = batch.LogitsCount > 0 ? _result.AsSpan<ushort>().Slice((int)((w.Logits - io.EmbedError) / sizeof(ushort)), outputs * VocabSize) : default;
        var rows = batch.OutputRows;
        for (int o = 0; o < outputs; o++)
        {
            int r = rows[o];
            if (batch.Output(r) == StepOutput.Sample) batch.SetSampled(o, sampled[o]);
            else Bf16.ToFloat(logits.Slice(o * VocabSize, VocabSize), batch.LogitsBuffer(r));
        }
    }

    /// <summary>
    /// Second line of defence behind <see cref="StepBatch.Prepare"/>'s token check: the embedding kernel flags an id
    /// outside [0, V) (it wrote a zero row instead of reading out of bounds). The flag is sticky: it covers every step
    /// since the last read.
    /// </summary>
    private void CheckEmbedError(PinnedBuffer result, StepIoLayout io)
    {
        CheckNonFinite(result, io);
        if (result.AsSpan<int>()[0] == 0) return;
        _device.MemsetAsync(_workspace.Base + io.EmbedError, 0, sizeof(int), _stream);
        throw new InvalidOperationException($"the embedding kernel saw a token id outside the vocabulary [0, {VocabSize}) since the last result; its output row was zeroed, the results are invalid");
    }

    /// <summary>
    /// The debug check (<see cref="DeviceModelOptions.CheckFinite"/>): the first stage (embedding, layer), token row and
    /// column whose activation went NaN / inf in any step since the last read. The record is sticky; it is reset here.
    /// </summary>
    private void CheckNonFinite(PinnedBuffer result, StepIoLayout io)
    {
        ulong key = result.AsSpan<ulong>()[(int)((io.NonFinite - io.EmbedError) / sizeof(ulong))];
        if (NonFiniteRecord.Decode(key) is not { } r) return;
        _device.MemsetAsync(_workspace.Base + io.NonFinite, 0xff, sizeof(ulong), _stream);
        throw new InvalidOperationException($"non-finite hidden state (NaN or inf) {r.Where}: token row {r.Row} of the step (position " +
            $"{(r.Position == 0xfffff ? ">= 1048575" : r.Position)}), column {r.Column}; the results are invalid " +
            $"({DeviceModelOptions.CheckFiniteEnvironmentVariable} check; earlier stages were finite)");
    }

    private int BucketFor(int count)
    {
        foreach (int b in _buckets) if (b >= count) return b;
        return _buckets[^1];
    }

    private static long SettingsBytes(int count) => count * (long)System.Runtime.CompilerServices.Unsafe.SizeOf<SampleRowSettings>();

    /// <summary>The step-input array at workspace offset <paramref name="offset"/> inside a staging slot (same layout).</summary>
    private Span<T> Input<T>(PinnedBuffer slot, long offset, int count) where T : unmanaged =>   // by bytes: an array need not start at a multiple of sizeof(T)
        System.Runtime.InteropServices.MemoryMarshal.Cast<byte, T>(
            slot.AsSpan<byte>().Slice((int)(offset - _io.InputsBegin), count * System.Runtime.CompilerServices.Unsafe.SizeOf<T>()));

    /// <summary>
    /// Two input arrays at most this many bytes apart go to the device as one copy, the bytes between them included: a
    /// copy's fixed cost (a few microseconds: a driver call and a DMA setup, docs/timing-model.md's smallCopyUs) is worth
    /// tens of kilobytes of PCIe transfer. The bytes between are the staging slot's unused capacity of the arrays before,
    /// which no kernel reads (the inputs region holds only host-written arrays, each read up to its used length).
    /// </summary>
    internal const long InputCopyMergeGapBytes = 16 * 1024;

    /// <summary>
    /// Copies the step's input arrays (offset, bytes), in increasing offset order, from the staging slot to the workspace,
    /// merging neighbours fewer than <see cref="InputCopyMergeGapBytes"/> apart: a decode step's tokens, positions, slots,
    /// context lengths and block tables are one copy instead of five.
    /// </summary>
    private void CopyInputs(PinnedBuffer slot, ReadOnlySpan<(long Offset, long Bytes)> arrays, DeviceStream stream)
    {
        Span<(long Offset, long Bytes)> merged = stackalloc (long, long)[arrays.Length];
        int n = MergeInputCopies(arrays, merged, InputCopyMergeGapBytes);
        for (int i = 0; i < n; i++)
            _device.CopyToDeviceAsync(_workspace.Base + merged[i].Offset, slot, merged[i].Offset - _io.InputsBegin, merged[i].Bytes, stream);
    }

    /// <summary>
    /// The copies for <paramref name="arrays"/> (offset, bytes; increasing, not overlapping): each run of arrays whose
    /// neighbours are at most <paramref name="gapBytes"/> apart becomes one copy from the first's start to the last's end.
    /// Returns how many it wrote to <paramref name="merged"/>.
    /// </summary>
    internal static int MergeInputCopies(ReadOnlySpan<(long Offset, long Bytes)> arrays, Span<(long Offset, long Bytes)> merged, long gapBytes)
    {
        int n = 0, i = 0;
        while (i < arrays.Length)
        {
            long begin = arrays[i].Offset, end = begin + arrays[i].Bytes;
            for (i++; i < arrays.Length && arrays[i].Offset >= end && arrays[i].Offset - end <= gapBytes; i++)
                end = arrays[i].Offset + arrays[i].Bytes;
            merged[n++] = (begin, end - begin);
        }
        return n;
    }

    // ---------------- graphs ----------------

    /// <summary>
    /// Captures one decode step per batch bucket (1, 2, 4, 8), ending in the argmax or in sampling, on each I/O slot (the
    /// second for the pipelined steps that alternate with the first's): the launches read their inputs from the slot's
    /// fixed buffers.
    /// </summary>
    private void CaptureDecodeGraphs()
    {
        foreach (int slot in (int[])[0, 1])
            foreach (int b in _buckets)
                foreach (bool sample in (bool[])[false, true])
                {
                    _io = SlotIo(slot);
                    try
                    {
                        // A failed launch keeps its own exception (EndCapture of an invalidated capture fails too on CUDA).
                        using var graph = _device.Capture(_stream, () => RunStep(new StepShape(b, b, 0, 0, b, Gather: false, sample)));
                        _graphs[(slot, b, sample)] = _device.Instantiate(graph);
                    }
                    finally { _io = Plan.Workspace.Io; }
                }
    }

    /// <summary>The captured graph of a decode step of <paramref name="shape"/> on I/O slot <paramref name="slot"/>, when graphs replay and one was captured.</summary>
    private bool TryGraph(int slot, StepShape shape, out DeviceGraphExec exec) =>
        _graphs.TryGetValue((slot, shape.Rows, shape.Sample), out exec!) && ReplayGraphs;

    /// <summary>I/O slot <paramref name="slot"/>'s layout: 0, every synchronous step's; 1, the pipeline's second.</summary>
    private StepIoLayout SlotIo(int slot) => slot == 0 ? Plan.Workspace.Io : Plan.Workspace.PipelineIo;

    // ---------------- the forward pass ----------------

    private DevicePtr Ws(long offset) => _workspace.Base + offset;

    /// <summary>
    /// Embedding -> every layer -> output rows (gathered when needed) -> final norm -> lm_head -> sampling. Inputs are
    /// already in the workspace; everything goes to <see cref="_stream"/> (capturable).
    /// </summary>
    private void RunStep(StepShape s)
    {
        var c = Config;
        var w = Plan.Workspace;
        var io = _io;
        int H = c.HiddenSize;
        // a fed token (pipelined decode) takes the sampled id of the step before, in the other I/O slot
        bool second = ReferenceEquals(io, w.PipelineIo);
        _embedding.Gather(_stream, Ws(w.X), W(Plan.Weights.Embedding), Ws(io.Tokens), Ws(io.EmbedError), s.Rows, c.VocabSize, H,
            Ws(SlotIo(second ? 0 : 1).Sampled), second ? w.MaxOutputs : MaxBatch);
        CheckFinite(0, s);
        for (int l = 0; l < c.NumHiddenLayers; l++) { LayerStep(l, s); CheckFinite(l + 1, s); }
        if (s.Outputs == 0) return;
        // The output rows' hidden states: rows 0..Outputs-1 of x, or gathered into h (the gather kernel is the embedding's, over x).
        DevicePtr x = Ws(w.X);
        if (s.Gather) { _embedding.Gather(_stream, Ws(w.H), Ws(w.X), Ws(io.OutputRows), DevicePtr.Null, s.Outputs, s.Rows, H); x = Ws(w.H); }
        // Final norm -> lm_head (the norm in the GEMV's prologue on the decode path). A greedy step without penalties whose
        // lm_head runs gemv_bf16_mma takes each row's argmax in the same launch (docs/kernels.md, "Fusions"): no sampling node.
        // A sampled step of one row without penalties runs the sampler's reduce in the lm_head's launch, then the draw.
        bool fusedArgmax = !s.Sample && !s.Penalties && LmHeadCanFuseArgmax(s.Outputs);
        bool fusedSample = s.Sample && !s.Penalties && LmHeadCanFuseSample(s.Outputs);
        var scratch = new SamplingScratch(Ws(w.SampleScratch), w.MaxOutputs, c.VocabSize);
        SampleRowsParams? sampleRows = fusedSample
            ? SamplingLaunchers.RowsParams(Ws(w.Logits), c.VocabSize, s.Outputs, c.VocabSize, Ws(io.SampleSettings), Ws(io.Sampled), scratch) : null;
        Project(Ws(w.Logits), c.VocabSize, x, H, Plan.Weights.LmHead, DevicePtr.Null, s.Outputs, c.VocabSize, H, W(Plan.Weights.FinalNorm),
            argmaxIds: fusedArgmax ? Ws(io.Sampled) : default, sampleRows: sampleRows);
        if (s.Penalties) _penalties.ApplyPenalties(_stream, Ws(w.Logits), c.VocabSize, s.Outputs, c.VocabSize, Ws(io.PenaltyRows), Ws(io.PenaltyEntries));
        if (sampleRows is { } rowsParams) _sampling.Draw(_stream, rowsParams);
        else if (s.Sample) _sampling.SampleRows(_stream, Ws(w.Logits), c.VocabSize, s.Outputs, c.VocabSize, Ws(io.SampleSettings), Ws(io.Sampled), scratch);
        else if (!fusedArgmax) _sampling.Argmax(_stream, Ws(w.Logits), c.VocabSize, s.Outputs, c.VocabSize, Ws(io.Sampled), scratch);
    }

    /// <summary>Debug only (<see cref="DeviceModelOptions.CheckFinite"/>): folds the first NaN / inf of x into the sticky record.</summary>
    private void CheckFinite(int stage, StepShape s) =>
        _checkFinite?.CheckFinite(_stream, Ws(Plan.Workspace.X), Config.HiddenSize, Ws(_io.Positions), s.Rows, Config.HiddenSize, stage, Ws(_io.NonFinite));

    /// <summary>Set by a layer whose experts launch ran the next layer's qkv projection (its follow-on tiles); that layer skips it.</summary>
    private bool _qkvRanAhead;

    /// <summary>
    /// One decoder layer for the step's rows (prefill runs and decode rows of several sequences): x += Attn(RMSNorm(x));
    /// x += MLP(RMSNorm(x)).
    /// </summary>
    private void LayerStep(int layer, StepShape s)
    {
        if (layer == 0) _qkvRanAhead = false;
        var c = Config;
        var w = Plan.Workspace;
        var io = _io;
        var L = Plan.Weights.Layers[layer];
        int rows = s.Rows, H = c.HiddenSize, qDim = c.QueryDim, qkvDim = qDim + 2 * c.KeyValueDim;
        float eps = (float)c.RmsNormEps;

        var next = layer + 1 < c.NumHiddenLayers ? Plan.Weights.Layers[layer + 1].Qkv : Plan.Weights.LmHead;
        bool block = AttentionBlockAsOneLaunch(layer, s);   // (only when the qkv projection did not run ahead)
        bool routerInBlock = block && RouterInAttentionBlock(layer, s);
        long ahead = L.IsMoe && rows <= MoeLaunchers.DecodeMaxTokens ? Math.Min(next.Bytes, Plan.Options.FetchAheadBytesFor(routerInBlock)) : 0;
        // o_proj fetches the first OProjFetchAheadBytes of the next weights, a bf16 experts launch the last
        // ExpertsFetchAheadBytes (before its wait: docs/timing-model.md, "The head"), the router the rest between them
        // (docs/timing-model.md, "Weights fetched ahead")
        long oProjAhead = Math.Min(ahead, Plan.Options.OProjFetchAheadBytesFor(routerInBlock));
        bool bf16Experts = L.IsMoe && Operand(L.GateUp).Format == WeightFormat.Bf16;
        long expertsAhead = bf16Experts ? Math.Min(ahead - oProjAhead, Plan.Options.ExpertsFetchAheadBytesOrDefault) : 0;
        var fetch = new FetchAheadShares(W(next), ahead, oProjAhead, expertsAhead);
        // The attention block as one launch (PersistentAttentionBlock): qkv -> attention -> o_proj (+residual), the same
        // bits as the launches below; its o_proj tiles fetch o_proj's share of the next weights.
        if (block)
        {
            var args = DecodeArgs(layer, s);
            // early routing (a MoE layer with its folded router, the router in the block): o_proj writes x_attn, so the early
            // tiles read the layer's input x unchanged; the experts then add to x_attn and write x
            bool early = routerInBlock && L.FoldedRouter is not null && rows <= PersistentDecodeLaunchers.MaxRows;
            var weights = new AttentionBlockWeights(Ws(w.X), H, H, W(L.InputNorm), eps, W(L.Qkv), W(L.OProj), oProjAhead > 0 ? W(next) : default, oProjAhead,
                Plan.Options.OProjEarlyFetchBytes, XOut: early ? Ws(w.XAttn) : default);
            // a MoE layer's router as the block's fourth stage (PersistentRouter), with the router's share of the fetch-ahead
            AttentionBlockRouter? router = null;
            if (routerInBlock)
            {
                var mws = MoeWorkspace.Compute(rows, _mlpShapes[layer]);
                long expertStride = L.GateUp.Bytes / L.Experts;
                var earlyRouting = early
                    ? new AttentionBlockEarlyRouting(W(L.FoldedRouter!), Ws(w.EarlyLogits), Ws(w.EarlyIds), W(L.GateUp), expertStride,
                        Math.Min(expertStride, Plan.Options.EarlyRoutingPrefetchBytesOrDefault))
                    : (AttentionBlockEarlyRouting?)null;
                router = new AttentionBlockRouter(_mlpShapes[layer], W(L.PostNorm), eps, W(L.Router!), Ws(w.H), Ws(w.Moe) + mws.Logits,
                    Ws(w.Moe) + mws.TopkIds, Ws(w.Moe) + mws.TopkWeights, fetch.Router, fetch.RouterBytes,
                    TopkByExperts: MoeLaunchers.CanRunTopK(_mlpShapes[layer], Operand(L.GateUp).Format), Early: earlyRouting);
            }
            _persistentAttn!.AttentionBlock(_stream, _attn, weights, args, DecodeRope(layer), Ws(w.PersistentCounters),
                stagesApart: Plan.Options.PersistentStagesApart, router: router);
            MlpStep(layer, s, fetch, routed: router is not null, residual: early ? Ws(w.XAttn) : default);
            return;
        }
        // InputNorm -> QkvProj: qkv = (RMSNorm(x) * w_in) [q|k|v]^T   (the norm in the GEMV's prologue on the decode path;
        // the residual adds are fused into o_proj and the MoE down GEMV / combine). Skipped when the previous layer's
        // experts launch ran it as its follow-on tiles (ExpertsFollowOnQkv).
        if (!_qkvRanAhead) Project(Ws(w.Qkv), qkvDim, Ws(w.X), H, L.Qkv, DevicePtr.Null, rows, qkvDim, H, W(L.InputNorm));
        _qkvRanAhead = false;
        // QkNormRopeKvWrite: q -> q buffer; k, v -> the layer's KV pages at slot[t]. Decode rows that are their sequence's
        // only row do this inside attn_decode_fused; the other rows (flash segments, or every row when a decode run has
        // several rows) here, first.
        int ropeFirst = s.DecodeRuns ? 0 : s.DecodeRows;
        long invFreqRow = w.PerRowRope ? (long)ropeFirst * (c.HeadDim / 2) * sizeof(float) : 0;
        DevicePtr invFreq = w.PerRowRope ? Ws(io.RopeInvFreq) : W(Plan.Weights.InvFreq);
        if (rows > ropeFirst)
            _rope.QkNormRopeKvWrite(_stream, new QkNormRopeParams
            {
                Qkv = Ws(w.Qkv) + (long)ropeFirst * qkvDim * sizeof(ushort), QOut = Ws(w.Q) + (long)ropeFirst * qDim * sizeof(ushort),
                KCache = _kv.K(layer), VCache = _kv.V(layer), QNormWeight = W(L.QNorm), KNormWeight = W(L.KNorm),
                InvFreq = invFreq + invFreqRow, InvFreqPerToken = w.PerRowRope ? 1 : 0, Positions = Ws(io.Positions) + ropeFirst * sizeof(int),
                SlotMapping = Ws(io.Slots) + ropeFirst * sizeof(int), Tokens = rows - ropeFirst,
                NumQHeads = c.NumAttentionHeads, NumKvHeads = c.NumKeyValueHeads, QkvStride = qkvDim, QOutStride = qDim,
                Eps = eps, AttentionScaling = _attentionScaling,
            });
        // Attention: decode rows by flash decoding (split-K + combine), one query row per attention row with its own
        // table and context length (a short run of one sequence is causal through lengths p+1); then the flash prefill
        // segments (causal flash attention of each run over its sequence's pages).
        if (s.DecodeRows > 0)
        {
            var args = DecodeArgs(layer, s);
            if (s.DecodeRuns) _attn.Decode(_stream, args);
            else _attn.DecodeFused(_stream, args, DecodeRope(layer));
        }
        if (s.FlashSegments > 0)
        {
            long skip = (long)s.DecodeRows;
            _attnPrefill.Prefill(_stream, new AttnPrefillParams
            {
                Q = Ws(w.Q) + skip * qDim * sizeof(ushort), KCache = _kv.K(layer), VCache = _kv.V(layer),
                BlockTable = Ws(io.BlockTables) + skip * w.MaxPagesPerSeq * sizeof(int), ContextLens = Ws(io.ContextLens) + skip * sizeof(int),
                QStart = Ws(io.QStart), Out = Ws(w.Attn) + skip * qDim * sizeof(ushort), Seqs = s.FlashSegments,
                NumQHeads = c.NumAttentionHeads, NumKvHeads = c.NumKeyValueHeads, PageSize = _kv.PageSize,
                MaxPagesPerSeq = w.MaxPagesPerSeq, QStride = qDim, OutStride = qDim,
            }, s.MaxFlashRows);
        }
        // OProj (+residual): x = x + attn Wo^T. On a MoE decode step o_proj and the router are latency-bound: they also fetch
        // the first bytes of the next weight stream (the next layer's qkv, or the lm_head after the last layer) into L2 with
        // evict_last, o_proj the first OProjFetchAheadBytes, the router the rest (docs/timing-model.md, "Weights fetched ahead")
        Project(Ws(w.X), H, Ws(w.Attn), qDim, L.OProj, Ws(w.X), rows, H, qDim, fetchAhead: oProjAhead > 0 ? W(next) : default, fetchAheadBytes: oProjAhead);
        MlpStep(layer, s, fetch);
    }

    /// <summary>
    /// How a MoE decode layer's fetch-ahead of <paramref name="Next"/> (the next weight stream) is shared: o_proj the first
    /// <paramref name="OProjBytes"/>, the experts launch the last <paramref name="ExpertsBytes"/> of the
    /// <paramref name="Bytes"/>, the router what lies between (docs/timing-model.md, "Weights fetched ahead").
    /// </summary>
    private readonly record struct FetchAheadShares(DevicePtr Next, long Bytes, long OProjBytes, long ExpertsBytes)
    {
        public DevicePtr Router => Next + OProjBytes;
        public long RouterBytes => Bytes - OProjBytes - ExpertsBytes;
        public DevicePtr Experts => Next + (Bytes - ExpertsBytes);
    }

    /// <summary>
    /// The MLP half of a layer: x += MLP(RMSNorm(x)). On a MoE decode step the router and the experts launch fetch their
    /// shares of the next weights into L2 (<paramref name="fetch"/>; o_proj fetched its share before).
    /// <paramref name="routed"/>: the attention block ran the router (h, the top-k ids and weights are in the workspace).
    /// </summary>
    /// <remarks><paramref name="residual"/>: where x after the attention is (early routing's x_attn); default: x itself.</remarks>
    private void MlpStep(int layer, StepShape s, FetchAheadShares fetch, bool routed = false, DevicePtr residual = default)
    {
        var c = Config;
        var w = Plan.Workspace;
        var io = _io;
        var L = Plan.Weights.Layers[layer];
        int rows = s.Rows, H = c.HiddenSize, qkvDim = c.QueryDim + 2 * c.KeyValueDim;
        float eps = (float)c.RmsNormEps;
        if (L.IsMoe)
        {
            // PostNorm -> Router -> GroupTokens -> ExpertsGateUp -> ExpertsDown (+combine, +residual): x = x + MoE(RMSNorm(x) * w_post).
            // Decode: the router kernel computes the norm and writes h for the experts; prefill: the norm kernel first.
            if (rows <= MoeLaunchers.DecodeMaxTokens)
            {
                ExpertsFollowOn? followOn = null;
                if (Plan.Options.ExpertsFollowOnQkv && layer + 1 < c.NumHiddenLayers && Operand(L.GateUp).Format == WeightFormat.Bf16)
                {
                    var nextLayer = Plan.Weights.Layers[layer + 1];
                    if (Operand(nextLayer.Qkv).Format == WeightFormat.Bf16 && MoeLaunchers.CanFollowOn(_device.Info.MultiprocessorCount, rows, qkvDim, H))
                        followOn = new ExpertsFollowOn(Ws(w.Qkv), qkvDim, Ws(w.X), H, W(nextLayer.Qkv), W(nextLayer.InputNorm), eps, qkvDim, H);
                }
                DevicePtr xIn = residual.IsNull ? Ws(w.X) : residual;
                _moe!.MoeBlock(_stream, _mlpShapes[layer], rows, xIn, W(L.Router!), Operand(L.GateUp), Operand(L.Down),
                    xIn, Ws(w.X), Ws(w.Moe), w.MoeBytes, W(L.PostNorm), eps, Ws(w.H), fetch.Router, fetch.RouterBytes, followOn, routed,
                    fetch.Experts, fetch.ExpertsBytes, topkByExperts: routed && MoeLaunchers.CanRunTopK(_mlpShapes[layer], Operand(L.GateUp).Format));
                _qkvRanAhead = followOn is not null;
                return;
            }
            _rms.AddRmsNorm(_stream, Ws(w.H), Ws(w.X), DevicePtr.Null, W(L.PostNorm), rows, H, eps);
            _moe!.MoeBlock(_stream, _mlpShapes[layer], rows, Ws(w.H), W(L.Router!), Operand(L.GateUp), Operand(L.Down),
                Ws(w.X), Ws(w.X), Ws(w.Moe), w.MoeBytes);
            return;
        }
        // Dense SwiGLU MLP: PostNorm -> GateUpProj -> SwiGlu -> DownProj (+residual): x = x + down(bf16(silu(gate)) * up)
        int I = L.Inter;
        Project(Ws(w.MlpGateUp), 2 * I, Ws(w.X), H, L.GateUp, DevicePtr.Null, rows, 2 * I, H, W(L.PostNorm));
        _swiglu!.SwiGlu(_stream, Ws(w.MlpAct), I, Ws(w.MlpGateUp), 2 * I, rows, I);
        Project(Ws(w.X), H, Ws(w.MlpAct), I, L.Down, Ws(w.X), rows, H, I);
    }

    /// <summary>The decode attention's arguments for the step's decode rows (rows 0 .. DecodeRows - 1) at layer <paramref name="layer"/>.</summary>
    private DecodeAttentionArgs DecodeArgs(int layer, StepShape s)
    {
        var c = Config;
        var w = Plan.Workspace;
        var io = _io;
        int qDim = c.QueryDim;
        return new DecodeAttentionArgs(
            Ws(w.Q), qDim, _kv.K(layer), _kv.V(layer), Ws(io.BlockTables), w.MaxPagesPerSeq, _kv.PageSize,
            Ws(io.ContextLens), s.DecodeRows, ContextLength, c.NumAttentionHeads, c.NumKeyValueHeads, Ws(w.Attn), qDim,
            Ws(w.AttnPartialOut), Ws(w.AttnPartialLse), Math.Max(1, w.AttnSplitRows / Math.Max(1, s.DecodeRows)));
    }

    /// <summary>attn_decode_fused's prologue arguments at layer <paramref name="layer"/>: q/k norm, RoPE, the KV write from the qkv rows.</summary>
    private DecodeRopeArgs DecodeRope(int layer)
    {
        var c = Config;
        var w = Plan.Workspace;
        var io = _io;
        var L = Plan.Weights.Layers[layer];
        DevicePtr invFreq = w.PerRowRope ? Ws(io.RopeInvFreq) : W(Plan.Weights.InvFreq);
        return new DecodeRopeArgs(Ws(w.Qkv), c.QueryDim + 2 * c.KeyValueDim, DevicePtr.Null, c.QueryDim, W(L.QNorm), W(L.KNorm),
            invFreq, w.PerRowRope, Ws(io.Positions), Ws(io.Slots), (float)c.RmsNormEps, _attentionScaling, Ws(w.AttnTickets));
    }

    /// <summary>
    /// Whether layer <paramref name="layer"/>'s attention block runs as one launch (persistent_attn_block): the option is
    /// on, every row of the step is a decode row that is its sequence's only new token, its qkv projection has not run
    /// ahead, both projections are bf16 and the shapes qualify (<see cref="PersistentDecodeLaunchers.CanRun"/>).
    /// </summary>
    private bool AttentionBlockAsOneLaunch(int layer, StepShape s)
    {
        if (_persistentAttn is null || _qkvRanAhead || s.DecodeRuns || s.FlashSegments > 0 || s.DecodeRows != s.Rows || s.Rows == 0) return false;
        var c = Config;
        var L = Plan.Weights.Layers[layer];
        if (Operand(L.Qkv).Format != WeightFormat.Bf16 || Operand(L.OProj).Format != WeightFormat.Bf16) return false;
        int splits = _attn.ChooseSplits(s.Rows, c.NumKeyValueHeads, ContextLength, Math.Max(1, Plan.Workspace.AttnSplitRows / s.Rows));
        return PersistentDecodeLaunchers.CanRun(_device.Info.MultiprocessorCount, c.HeadDim, s.Rows, c.HiddenSize,
            c.QueryDim + 2 * c.KeyValueDim, c.QueryDim, splits);
    }

    /// <summary>
    /// Whether layer <paramref name="layer"/>'s attention block, running as one launch, also runs its router
    /// (<see cref="DeviceModelOptions.PersistentRouter"/>): a MoE layer on the decode path whose hidden size the router
    /// stage takes (<see cref="PersistentDecodeLaunchers.MaxRouterHidden"/>).
    /// </summary>
    private bool RouterInAttentionBlock(int layer, StepShape s) =>
        Plan.Options.PersistentRouter && Plan.Weights.Layers[layer].IsMoe && s.Rows <= MoeLaunchers.DecodeMaxTokens
        && Config.HiddenSize <= PersistentDecodeLaunchers.MaxRouterHidden;

    /// <summary>
    /// The lm_head of <paramref name="rows"/> output rows can take their argmax in its own launch: the fused argmax is on
    /// (<see cref="DeviceModelOptions.FusedArgmax"/>) and the GEMV of those rows runs <c>gemv_bf16_mma</c> with the final norm
    /// in its prologue (bf16 lm_head, at most 8 rows; <c>GemvLaunchers.CanFuseArgmax</c>).
    /// </summary>
    private bool LmHeadCanFuseArgmax(int rows) =>
        Plan.Options.FusedArgmax && rows <= GemvLaunchers.MaxTokens
        && GemvLaunchers.CanFuseArgmax(_gemv.Plan(rows, Config.VocabSize, Config.HiddenSize, Operand(Plan.Weights.LmHead).Format, normPrologue: true));

    /// <summary>
    /// The lm_head of <paramref name="rows"/> output rows can run the sampler's reduce in its own launch: the fused reduce is
    /// on (<see cref="DeviceModelOptions.FusedSample"/>), one row, and the GEMV runs <c>gemv_bf16_mma</c> with the final norm
    /// in its prologue on few enough CTAs (<c>GemvLaunchers.CanFuseSample</c>).
    /// </summary>
    private bool LmHeadCanFuseSample(int rows) =>
        Plan.Options.FusedSample && rows == 1 && Operand(Plan.Weights.LmHead).Format == WeightFormat.Bf16
        && GemvLaunchers.CanFuseSample(_gemv.Plan(rows, Config.VocabSize, Config.HiddenSize, WeightFormat.Bf16, normPrologue: true),
            _gemv.SampleGridX(rows, Config.VocabSize, Config.HiddenSize, normPrologue: true));

    /// <summary>
    /// y[T, N] = x[T, K] W^T (+ residual): the decode GEMV for T &lt;= 8, the tensor-core GEMM for more rows. With a
    /// <paramref name="norm"/> weight the product takes RMSNorm(x) * norm: in the GEMV's prologue (no separate norm launch),
    /// or, for the GEMM, by the norm kernel into h first (in place when x is h: the gathered output rows). With
    /// <paramref name="argmaxIds"/> (only where <see cref="LmHeadCanFuseArgmax"/> said so) the GEMV also writes each row's argmax there;
    /// with <paramref name="sampleRows"/> (only where <see cref="LmHeadCanFuseSample"/> said so) it also leaves the rows'
    /// sampling state for <c>SamplingLaunchers.Draw</c>.
    /// </summary>
    private void Project(DevicePtr y, int ldy, DevicePtr x, int ldx, DeviceTensor matrix, DevicePtr residual, int rows, int n, int k,
        DevicePtr norm = default, DevicePtr fetchAhead = default, long fetchAheadBytes = 0, DevicePtr argmaxIds = default, SampleRowsParams? sampleRows = null)
    {
        var w = Plan.Workspace;
        var io = _io;
        var weight = Operand(matrix);
        float eps = (float)Config.RmsNormEps;
        if (rows > GemvLaunchers.MaxTokens)
        {
            if (!norm.IsNull)
            {
                _rms.AddRmsNorm(_stream, Ws(w.H), x, DevicePtr.Null, norm, rows, k, eps);
                x = Ws(w.H);
                ldx = k;
            }
            _gemm.Gemm(_stream, y, ldy, x, ldx, weight, k, residual, rows, n, k);
            return;
        }
        if (sampleRows is { } sample)
            _gemv.GemvSample(_stream, y, ldy, x, ldx, weight, rows, n, k, norm, eps, sample, Ws(w.ArgmaxScratch), w.ArgmaxScratchBytes);
        else
            _gemv.Gemv(_stream, y, ldy, x, ldx, weight, residual, rows, n, k, Ws(w.GemvPartial), w.GemvPartialCapacity, norm, eps, fetchAhead, fetchAheadBytes,
                argmaxIds, Ws(w.ArgmaxScratch), w.ArgmaxScratchBytes);
    }
}
