using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Device;

/// <summary>The forward pass itself: step inputs, one function per layer in the reference's order, graphs.</summary>
public sealed partial class DeviceModel
{
    // ---------------- step inputs ----------------

    /// <summary>Chunked prefill of one sequence; leaves the last token's logits in the workspace (row 0).</summary>
    private void Prefill(int sequence, ReadOnlySpan<int> tokens, SamplingSettings? sampling = null)
    {
        CheckSequence(sequence);
        CheckTokens(tokens);
        if (tokens.Length == 0) throw new ArgumentException("no tokens to forward", nameof(tokens));
        int p0 = _kv.Length(sequence);
        if ((long)p0 + tokens.Length > ContextLength)
            throw new ArgumentException($"sequence {sequence} would hold {p0 + tokens.Length} tokens, more than the context length {ContextLength}", nameof(tokens));
        _kv.Reserve(sequence, tokens.Length);
        int chunk = Plan.Options.PrefillChunkTokens;
        for (int start = 0; start < tokens.Length; start += chunk)
        {
            int n = Math.Min(chunk, tokens.Length - start);
            int pos = _kv.Length(sequence);
            bool flash = n > GemvLaunchers.MaxTokens && Plan.Options.FlashPrefillAttention;
            var ids = InputSpan(Plan.Workspace.Tokens, n);
            var positions = InputSpan(Plan.Workspace.Positions, n);
            var slots = InputSpan(Plan.Workspace.Slots, n);
            var lens = InputSpan(Plan.Workspace.ContextLens, n);
            int stride = Plan.Workspace.MaxPagesPerSeq;
            var tables = InputSpan(Plan.Workspace.BlockTables, n * stride);
            _kv.WriteBlockTable(sequence, tables[..stride]);
            for (int i = 0; i < n; i++)
            {
                ids[i] = tokens[start + i];
                positions[i] = pos + i;
                slots[i] = _kv.Slot(sequence, pos + i);
                lens[i] = pos + i + 1;                   // row i attends to keys 0..pos+i (causal)
                if (i > 0 && !flash) tables[..stride].CopyTo(tables.Slice(i * stride, stride));   // decode attention: one table row per query row
            }
            var qStart = InputSpan(Plan.Workspace.QStart, 2);
            qStart[0] = 0; qStart[1] = n;
            CopyInputs(n, tableRows: flash ? 1 : n);
            if (flash) CopyInput(Plan.Workspace.QStart, 2 * sizeof(int));
            bool sample = sampling is not null && start + n == tokens.Length;
            if (sample)
            {
                SettingsSpan(1)[0] = SampleRowSettings.From(sampling!.Value, (ulong)(pos + n));   // counter: the new token's position
                CopyInput(Plan.Workspace.SampleSettings, SettingsBytes(1));
            }
            RunStep(n, lastRowOnly: true, sample);
            _kv.Advance(sequence, n);
        }
    }

    /// <summary>Fills the inputs of a decode step (padded to its bucket), then replays the bucket's graph or launches the step.</summary>
    /// <remarks><paramref name="sampling"/>: empty for no sampling (argmax), one element for every row, or one per sequence.</remarks>
    private void DecodeStep(ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, ReadOnlySpan<SamplingSettings> sampling = default)
    {
        int count = sequences.Length;
        if (count < 1 || count > MaxBatch) throw new ArgumentException($"decode batch of {count} sequences; supported 1..{MaxBatch}", nameof(sequences));
        if (tokens.Length != count) throw new ArgumentException($"{tokens.Length} tokens for {count} sequences", nameof(tokens));
        CheckTokens(tokens);
        for (int i = 0; i < count; i++)
        {
            int s = CheckSequence(sequences[i]);
            for (int j = 0; j < i; j++)
                if (sequences[j] == s) throw new ArgumentException($"sequence {s} appears twice in one decode batch", nameof(sequences));
            if (_kv.Length(s) + 1 > ContextLength)
                throw new ArgumentException($"sequence {s} would hold {_kv.Length(s) + 1} tokens, more than the context length {ContextLength}", nameof(tokens));
        }
        for (int i = 0; i < count; i++) _kv.Reserve(sequences[i], 1);
        int bucket = BucketFor(count);
        int stride = Plan.Workspace.MaxPagesPerSeq;
        var ids = InputSpan(Plan.Workspace.Tokens, bucket);
        var positions = InputSpan(Plan.Workspace.Positions, bucket);
        var slots = InputSpan(Plan.Workspace.Slots, bucket);
        var lens = InputSpan(Plan.Workspace.ContextLens, bucket);
        var tables = InputSpan(Plan.Workspace.BlockTables, bucket * stride);
        for (int i = 0; i < bucket; i++)
        {
            var row = tables.Slice(i * stride, stride);
            if (i < count)
            {
                int s = sequences[i], pos = _kv.Length(s);
                ids[i] = tokens[i]; positions[i] = pos; slots[i] = _kv.Slot(s, pos); lens[i] = pos + 1;
                _kv.WriteBlockTable(s, row);
            }
            else
            {
                // Padding row: reads key 0 of the scratch page 0, writes nothing (slot -1); its outputs are ignored.
                ids[i] = 0; positions[i] = 0; slots[i] = -1; lens[i] = 1;
                row.Clear();
            }
        }
        CopyInputs(bucket, bucket);
        bool sample = !sampling.IsEmpty;
        if (sample)
        {
            var settings = SettingsSpan(bucket);
            for (int i = 0; i < bucket; i++)   // padding rows: greedy (cheapest), their ids are ignored
                settings[i] = i < count ? SampleRowSettings.From(sampling[sampling.Length == 1 ? 0 : i], (ulong)(positions[i] + 1)) : default;
            CopyInput(Plan.Workspace.SampleSettings, SettingsBytes(bucket));
        }
        if (ReplayGraphs && (sample ? _sampleGraphs : _graphs).TryGetValue(bucket, out var graph)) _device.Launch(graph, _stream);
        else RunStep(bucket, lastRowOnly: false, sample);
        for (int i = 0; i < count; i++) _kv.Advance(sequences[i], 1);
    }

    private int BucketFor(int count)
    {
        foreach (int b in _buckets) if (b >= count) return b;
        return _buckets[^1];
    }

    private Span<SampleRowSettings> SettingsSpan(int count) =>
        _inputs.AsSpan<SampleRowSettings>().Slice((int)((Plan.Workspace.SampleSettings - Plan.Workspace.InputsBegin) / SettingsBytes(1)), count);

    private static long SettingsBytes(int count) => count * (long)System.Runtime.CompilerServices.Unsafe.SizeOf<SampleRowSettings>();

    private Span<int> InputSpan(long offset, int count) =>
        _inputs.AsSpan<int>().Slice((int)((offset - Plan.Workspace.InputsBegin) / sizeof(int)), count);

    /// <summary>Five async copies from the pinned mirror: token ids, positions, slots, context lengths, block tables.</summary>
    private void CopyInput(long offset, long bytes) =>
        _device.CopyToDeviceAsync(_workspace.Base + offset, _inputs, offset - Plan.Workspace.InputsBegin, bytes, _stream);

    private void CopyInputs(int rows, int tableRows)
    {
        var w = Plan.Workspace;
        void Copy(long offset, long bytes) => CopyInput(offset, bytes);
        Copy(w.Tokens, rows * 4L);
        Copy(w.Positions, rows * 4L);
        Copy(w.Slots, rows * 4L);
        Copy(w.ContextLens, rows * 4L);
        Copy(w.BlockTables, (long)tableRows * w.MaxPagesPerSeq * 4);
    }

    // ---------------- graphs ----------------

    /// <summary>Captures one decode step per batch bucket (1, 2, 4, 8): the launches read their inputs from the fixed buffers.</summary>
    private void CaptureDecodeGraphs()
    {
        foreach (int b in _buckets)
        {
            foreach (bool sample in (bool[])[false, true])
            {
                // A failed launch keeps its own exception (EndCapture of an invalidated capture fails too on CUDA).
                using var graph = _device.Capture(_stream, () => RunStep(b, lastRowOnly: false, sample));
                (sample ? _sampleGraphs : _graphs)[b] = _device.Instantiate(graph);
            }
        }
    }

    // ---------------- the forward pass ----------------

    private DevicePtr W(long offset) => _weights.Base + offset;
    private DevicePtr Ws(long offset) => _workspace.Base + offset;

    /// <summary>
    /// Embedding -> every layer -> final norm -> lm_head (last row only, or every row for a decode batch) -> argmax.
    /// Inputs are already in the workspace; everything goes to <see cref="_stream"/> (capturable).
    /// </summary>
    private void RunStep(int rows, bool lastRowOnly, bool sample = false)
    {
        var c = Config;
        var w = Plan.Workspace;
        int H = c.HiddenSize;
        _embedding.Gather(_stream, Ws(w.X), W(Plan.Weights.Embedding), Ws(w.Tokens), Ws(w.EmbedError), rows, c.VocabSize, H);
        for (int l = 0; l < c.NumHiddenLayers; l++) LayerStep(l, rows);
        int first = lastRowOnly ? rows - 1 : 0, outRows = rows - first;
        DevicePtr x = Ws(w.X) + (long)first * H * sizeof(ushort);
        _rms.AddRmsNorm(_stream, Ws(w.H), x, DevicePtr.Null, W(Plan.Weights.FinalNorm), outRows, H, (float)c.RmsNormEps);
        Project(Ws(w.Logits), c.VocabSize, Ws(w.H), H, W(Plan.Weights.LmHead), DevicePtr.Null, outRows, c.VocabSize, H);
        if (sample) _sampling.SampleRows(_stream, Ws(w.Logits), c.VocabSize, outRows, c.VocabSize, Ws(w.SampleSettings), Ws(w.Sampled));
        else _sampling.Argmax(_stream, Ws(w.Logits), c.VocabSize, outRows, c.VocabSize, Ws(w.Sampled));
    }

    /// <summary>
    /// One decoder layer for <paramref name="rows"/> token rows (a prefill chunk of one sequence, or one token of
    /// each sequence of a decode batch): x += Attn(RMSNorm(x)); x += MLP(RMSNorm(x)).
    /// </summary>
    private void LayerStep(int layer, int rows)
    {
        var c = Config;
        var w = Plan.Workspace;
        var L = Plan.Weights.Layers[layer];
        int H = c.HiddenSize, qDim = c.QueryDim, qkvDim = qDim + 2 * c.KeyValueDim;
        float eps = (float)c.RmsNormEps;

        // AddRmsNorm: h = RMSNorm(x) * w_in   (the residual adds are fused into o_proj and the MoE combine)
        _rms.AddRmsNorm(_stream, Ws(w.H), Ws(w.X), DevicePtr.Null, W(L.InputNorm), rows, H, eps);
        // QkvProj: qkv = h [q|k|v]^T   (GEMV; prefill chunks as slices of 8 rows until the GEMM lands)
        Project(Ws(w.Qkv), qkvDim, Ws(w.H), H, W(L.Qkv), DevicePtr.Null, rows, qkvDim, H);
        // QkNormRopeKvWrite: q -> q buffer; k, v -> the layer's KV pages at slot[t]
        _rope.QkNormRopeKvWrite(_stream, new QkNormRopeParams
        {
            Qkv = Ws(w.Qkv), QOut = Ws(w.Q), KCache = _kv.K(layer), VCache = _kv.V(layer),
            QNormWeight = W(L.QNorm), KNormWeight = W(L.KNorm), InvFreq = W(Plan.Weights.InvFreq),
            Positions = Ws(w.Positions), SlotMapping = Ws(w.Slots), Tokens = rows,
            NumQHeads = c.NumAttentionHeads, NumKvHeads = c.NumKeyValueHeads, QkvStride = qkvDim, QOutStride = qDim,
            Eps = eps, AttentionScaling = _attentionScaling,
        });
        // Attention: a prefill chunk (T > 8): causal flash attention of the chunk's rows over the sequence's pages;
        // otherwise flash decoding (split-K + combine), one query row per attention row (the chunk's rows see
        // context lengths p0+1 .. p0+T, which is the causal mask).
        if (rows > GemvLaunchers.MaxTokens && Plan.Options.FlashPrefillAttention)
            _attnPrefill.Prefill(_stream, new AttnPrefillParams
            {
                Q = Ws(w.Q), KCache = _kv.K(layer), VCache = _kv.V(layer), BlockTable = Ws(w.BlockTables),
                ContextLens = Ws(w.ContextLens) + (rows - 1) * sizeof(int), QStart = Ws(w.QStart), Out = Ws(w.Attn), Seqs = 1,
                NumQHeads = c.NumAttentionHeads, NumKvHeads = c.NumKeyValueHeads, PageSize = _kv.PageSize,
                MaxPagesPerSeq = w.MaxPagesPerSeq, QStride = qDim, OutStride = qDim,
            }, rows);
        else _attn.Decode(_stream, new DecodeAttentionArgs(
            Ws(w.Q), qDim, _kv.K(layer), _kv.V(layer), Ws(w.BlockTables), w.MaxPagesPerSeq, _kv.PageSize,
            Ws(w.ContextLens), rows, ContextLength, c.NumAttentionHeads, c.NumKeyValueHeads, Ws(w.Attn), qDim,
            Ws(w.AttnPartialOut), Ws(w.AttnPartialLse), Math.Max(1, w.AttnSplitRows / rows)));
        // OProj (+residual): x = x + attn Wo^T
        Project(Ws(w.X), H, Ws(w.Attn), qDim, W(L.OProj), Ws(w.X), rows, H, qDim);
        // AddRmsNorm: h = RMSNorm(x) * w_post
        _rms.AddRmsNorm(_stream, Ws(w.H), Ws(w.X), DevicePtr.Null, W(L.PostNorm), rows, H, eps);
        // Router -> GroupTokens -> ExpertsGateUp -> ExpertsDown (+combine, +residual): x = x + MoE(h)
        // (a dense layer is the same block with one expert of weight 1 and a zero router row)
        _moe.MoeBlock(_stream, _mlpShapes[layer], rows, Ws(w.H), W(L.Router), W(L.GateUp), W(L.Down),
            Ws(w.X), Ws(w.X), Ws(w.Moe), w.MoeBytes);
    }

    /// <summary>y[T, N] = x[T, K] W^T (+ residual): the decode GEMV for T &lt;= 8, the tensor-core GEMM for prefill chunks.</summary>
    private void Project(DevicePtr y, int ldy, DevicePtr x, int ldx, DevicePtr weight, DevicePtr residual, int rows, int n, int k)
    {
        var w = Plan.Workspace;
        if (rows > GemvLaunchers.MaxTokens)
        {
            _gemm.Gemm(_stream, y, ldy, x, ldx, weight, k, residual, rows, n, k);
            return;
        }
        for (int r = 0; r < rows; r += GemvLaunchers.MaxTokens)
        {
            int t = Math.Min(GemvLaunchers.MaxTokens, rows - r);
            DevicePtr yr = y + (long)r * ldy * sizeof(ushort);
            DevicePtr res = residual.IsNull ? DevicePtr.Null : residual + (long)r * ldy * sizeof(ushort);
            _gemv.Gemv(_stream, yr, ldy, x + (long)r * ldx * sizeof(ushort), ldx, weight, res, t, n, k, Ws(w.GemvPartial), w.GemvPartialCapacity);
        }
    }
}
