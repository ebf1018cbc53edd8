using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>
/// Qwen3 / Qwen3-MoE on an <see cref="IDevice"/> (CUDA or the PTX emulator): the weights in one device arena, a
/// workspace arena for activations, a paged KV cache, and one step function per layer (DeviceModel.Step.cs)
/// that launches the kernels of kern1/kern2 in the reference's order. Prefill runs in chunks; decode steps of
/// 1..MaxBatch sequences are captured once per batch bucket as graphs and replayed, their inputs (token ids,
/// positions, slots, context lengths, block tables) copied from pinned memory into fixed device buffers first.
/// Nothing is allocated inside a step; the only host synchronisation is the wait for the result copy.
/// Not thread-safe: one call at a time.
/// </summary>
public sealed partial class DeviceModel : ICausalLanguageModel, Generation.IDeviceSampler
{
    private readonly IDevice _device;
    private readonly KernelLoader _loader;
    private readonly bool _ownsLoader;
    private readonly DeviceStream _stream;
    private readonly DeviceArena _weights, _workspace;
    private readonly PagedKvCache _kv;
    private readonly PinnedBuffer _inputs;       // mirror of the workspace's step-input arrays
    private readonly PinnedBuffer _result;       // the workspace's result region: embed error flag | sampled ids | logits (bf16)
    private readonly RmsNormLaunchers _rms;
    private readonly GemvLaunchers _gemv;
    private readonly GemmLaunchers _gemm;
    private readonly RopeLaunchers _rope;
    private readonly AttentionDecodeLaunchers _attn;
    private readonly AttentionPrefillLaunchers _attnPrefill;
    private readonly MoeLaunchers _moe;
    private readonly EmbeddingLaunchers _embedding;
    private readonly SamplingLaunchers _sampling;
    private readonly MoeShape[] _mlpShapes;
    private readonly float _attentionScaling;
    private readonly Dictionary<int, DeviceGraphExec> _graphs = [];
    private readonly Dictionary<int, DeviceGraphExec> _sampleGraphs = [];   // same steps ending in sample_rows_bf16
    private readonly int[] _buckets;

    public ModelConfig Config { get; }
    public MemoryPlan Plan { get; }
    public IDevice Device => _device;
    /// <summary>The stream every step of this model runs on (non-blocking on CUDA: time it with events recorded here).</summary>
    public DeviceStream Stream => _stream;
    public int VocabSize => Config.VocabSize;
    public int ContextLength => Plan.ContextLength;
    public int MaxSequences => Plan.Options.MaxSequences;
    public int MaxBatch => Plan.Options.MaxBatch;
    /// <summary>Batch sizes with a captured decode graph (empty when graphs are off).</summary>
    public IReadOnlyCollection<int> GraphBuckets => _graphs.Keys;

    /// <summary>
    /// When false, decode steps launch their kernels one by one instead of replaying the bucket's captured graph: the
    /// same launches (the graph recorded exactly these) on the same buffers, so the same results. The profiler's
    /// per-kernel timing path (<see cref="DeviceProfiler"/>); true (the default) is the fast path.
    /// </summary>
    public bool ReplayGraphs { get; set; } = true;

    /// <summary>Opens config.json + safetensors in <paramref name="modelDir"/> and uploads the weights.</summary>
    public static DeviceModel Load(IDevice device, string modelDir, DeviceModelOptions? options = null, KernelLoader? loader = null)
    {
        using var weights = ModelWeights.Load(modelDir);
        return new DeviceModel(device, weights, options ?? new DeviceModelOptions(), loader);
    }

    /// <summary>Plans memory, uploads <paramref name="weights"/> (which stay owned by the caller) and captures the decode graphs.</summary>
    public DeviceModel(IDevice device, ModelWeights weights, DeviceModelOptions options, KernelLoader? loader = null)
    {
        _device = device;
        Config = weights.Config;
        var c = Config;
        bool hasLmHead = weights.Checkpoint.Contains("lm_head.weight");
        Plan = MemoryPlan.Compute(c, options, device.GetMemoryInfo().FreeBytes, device.Info.MultiprocessorCount, hasLmHead);
        Plan.ThrowIfDoesNotFit();
        _ownsLoader = loader is null;
        _loader = loader ?? new KernelLoader(device);
        var disposables = new List<IDisposable>();
        try
        {
            _rms = new RmsNormLaunchers(_loader);
            _gemv = new GemvLaunchers(_loader);
            _gemm = new GemmLaunchers(_loader);
            _rope = new RopeLaunchers(_loader, c.HeadDim);
            _attn = new AttentionDecodeLaunchers(_loader, c.HeadDim);
            _attnPrefill = new AttentionPrefillLaunchers(_loader, c.HeadDim);
            _embedding = new EmbeddingLaunchers(_loader);
            _sampling = new SamplingLaunchers(_loader);
            _mlpShapes = new MoeShape[c.NumHiddenLayers];
            for (int l = 0; l < _mlpShapes.Length; l++)
            {
                _mlpShapes[l] = WorkspaceLayout.MlpShape(c, l);
                MoeLaunchers.CheckShape(_mlpShapes[l], decodeOnly: Plan.Workspace.Rows <= MoeLaunchers.DecodeMaxTokens);
            }
            _moe = new MoeLaunchers(_loader, _mlpShapes);   // the guarded grouped GEMMs only when a shape needs them

            _stream = device.CreateStream(); disposables.Add(_stream);
            _weights = new DeviceArena(device, Plan.Weights.TotalBytes, "weight arena"); disposables.Add(_weights);
            _workspace = new DeviceArena(device, Plan.Workspace.TotalBytes, "workspace arena"); disposables.Add(_workspace);
            _kv = new PagedKvCache(device, c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, options.PageSize, Plan.KvPages,
                options.MaxSequences, Plan.Workspace.MaxPagesPerSeq); disposables.Add(_kv);
            _inputs = device.AllocatePinned(Plan.Workspace.InputsEnd - Plan.Workspace.InputsBegin); disposables.Add(_inputs);
            _result = device.AllocatePinned(Plan.Workspace.ResultBytes(options.MaxBatch, c.VocabSize)); disposables.Add(_result);
            _inputs.Span.Clear();
            device.MemsetAsync(_workspace.Base + Plan.Workspace.EmbedError, 0, sizeof(int), _stream);
            (float[] invFreq, _attentionScaling) = ReferenceOps.RopeParameters(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
            UploadWeights(weights, invFreq, options.LoadProgress);
            _buckets = [.. options.BatchBuckets()];
            if (options.UseGraphs) CaptureDecodeGraphs();
        }
        catch
        {
            foreach (var g in _graphs.Values) g.Dispose();
            foreach (var g in _sampleGraphs.Values) g.Dispose();
            for (int i = disposables.Count - 1; i >= 0; i--) disposables[i].Dispose();
            if (_ownsLoader) _loader.Dispose();
            throw;
        }
    }

    private void UploadWeights(ModelWeights weights, float[] invFreq, Action<UploadProgress>? progress)
    {
        var ckpt = weights.Checkpoint;
        long total = Plan.Weights.Tensors.SelectMany(t => t.Sources).Sum(s => s.Bytes) + invFreq.Length * sizeof(float);
        using var up = new StagedUploader(_device, total, progress);
        foreach (var t in Plan.Weights.Tensors)
        {
            DevicePtr dst = _weights.Base + t.Offset;
            if (t.IsDerived) { up.Zero(dst, t.Bytes); continue; }
            foreach (var s in t.Sources)
            {
                var view = ckpt.Get(s.CheckpointName);
                if (view.DType != Checkpoint.SafetensorsDType.BF16 || view.ByteLength != s.Bytes)
                    throw new InvalidDataException($"{s.CheckpointName}: expected {s.Bytes} bytes of BF16 for device tensor {t.Name} {t.Shape}, the checkpoint has {view.ByteLength} bytes of {view.DType}");
                up.Upload(dst + s.DeviceOffset, view.Pointer, s.Bytes, s.CheckpointName);
            }
        }
        unsafe
        {
            fixed (float* p = invFreq) { up.Upload(_weights.Base + Plan.Weights.InvFreq, (nint)p, invFreq.Length * sizeof(float), "rope.inv_freq"); up.Finish(); }
        }
    }

    // ---------------- ICausalLanguageModel ----------------

    public int SequenceLength(int sequence) => _kv.Length(CheckSequence(sequence));

    public void ResetSequence(int sequence) => _kv.Reset(CheckSequence(sequence));

    /// <summary>Keeps the first <paramref name="length"/> tokens of a sequence (its KV pages beyond them are freed).</summary>
    public void TruncateSequence(int sequence, int length) => _kv.Truncate(CheckSequence(sequence), length);

    /// <summary>
    /// Appends <paramref name="count"/> positions to a sequence without computing them: their KV pages are taken and
    /// their K and V set to zero in every layer. A profiling aid (`profile --context`): a step at a long context does the
    /// same work whatever the cached values are, so it can be run or emulated without the prefill before it.
    /// </summary>
    public void SkipTokens(int sequence, int count)
    {
        CheckSequence(sequence);
        if (count < 0) throw new ArgumentOutOfRangeException(nameof(count), count, "cannot skip a negative number of tokens");
        int p0 = _kv.Length(sequence);
        if ((long)p0 + count > ContextLength)
            throw new ArgumentException($"sequence {sequence} would hold {(long)p0 + count} tokens, more than the context length {ContextLength}", nameof(count));
        _kv.Reserve(sequence, count);
        long slotBytes = PagedKvCache.PageBytes(Config.NumKeyValueHeads, Config.HeadDim, 1);
        var table = _kv.BlockTable(sequence);
        int P = _kv.PageSize;
        for (int pos = p0; pos < p0 + count;)
        {
            // one run of consecutive slots: to the end of the page, extended over following pages that are consecutive too
            int page = pos / P, first = table[page] * P + pos % P, slots = Math.Min(P - pos % P, p0 + count - pos);
            while (pos + slots < p0 + count && (pos + slots) % P == 0 && table[(pos + slots) / P] == table[(pos + slots) / P - 1] + 1)
                slots += Math.Min(P, p0 + count - pos - slots);
            for (int l = 0; l < Config.NumHiddenLayers; l++)
            {
                _device.MemsetAsync(_kv.K(l) + first * slotBytes, 0, slots * slotBytes, _stream);
                _device.MemsetAsync(_kv.V(l) + first * slotBytes, 0, slots * slotBytes, _stream);
            }
            pos += slots;
        }
        _kv.Advance(sequence, count);
    }

    /// <summary>Appends tokens (one: a decode step; more: chunked prefill) and writes the last token's logits.</summary>
    public void Forward(int sequence, ReadOnlySpan<int> tokens, Span<float> lastLogits)
    {
        if (lastLogits.Length != VocabSize) throw new ArgumentException($"lastLogits has {lastLogits.Length} elements, expected vocab size {VocabSize}", nameof(lastLogits));
        if (tokens.Length == 1)
        {
            DecodeBatch([sequence], tokens, lastLogits);
            return;
        }
        Prefill(sequence, tokens);
        CopyLogitsBack(1, lastLogits);
    }

    /// <summary>Prefill, then greedy argmax of the last token on the device: only the id comes back.</summary>
    public int ForwardGreedy(int sequence, ReadOnlySpan<int> tokens)
    {
        Span<int> next = stackalloc int[1];
        if (tokens.Length == 1) { DecodeBatchGreedy([sequence], tokens, next); return next[0]; }
        Prefill(sequence, tokens);                // the step ends with the argmax of its last row
        CopyIdsBack(next);
        return next[0];
    }

    /// <summary>
    /// One decode step of several sequences at once: token <paramref name="tokens"/>[i] appended to sequence
    /// <paramref name="sequences"/>[i]; <paramref name="logits"/> receives [count, V] (row i for sequence i).
    /// </summary>
    public void DecodeBatch(ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        if (logits.Length != (long)sequences.Length * VocabSize)
            throw new ArgumentException($"logits has {logits.Length} elements, expected {sequences.Length} x {VocabSize}", nameof(logits));
        DecodeStep(sequences, tokens);
        CopyLogitsBack(sequences.Length, logits);
    }

    /// <summary>Like <see cref="DecodeBatch"/>, with greedy sampling on the device: only the token ids come back.</summary>
    public void DecodeBatchGreedy(ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, Span<int> nextTokens)
    {
        if (nextTokens.Length != sequences.Length) throw new ArgumentException($"nextTokens has {nextTokens.Length} elements, expected {sequences.Length}", nameof(nextTokens));
        DecodeStep(sequences, tokens);
        CopyIdsBack(nextTokens);
    }

    // The result region (error flag | ids | logits) comes back in one copy, so the flag costs no extra copy or sync.
    /// <summary>
    /// Prefill or decode step, then samples the next token on the device with <paramref name="settings"/> (greedy
    /// settings: argmax); only the id comes back. The Philox counter is the new token's position, so a seeded run
    /// is reproducible.
    /// </summary>
    public int ForwardSampled(int sequence, ReadOnlySpan<int> tokens, in SamplingSettings settings)
    {
        Span<int> next = stackalloc int[1];
        if (tokens.Length == 1) { DecodeBatchSampled([sequence], tokens, settings, next); return next[0]; }
        SamplingLaunchers.Validate(settings);
        Prefill(sequence, tokens, settings);
        CopyIdsBack(next);
        return next[0];
    }

    /// <summary>
    /// Like <see cref="DecodeBatchGreedy"/>, sampling each row on the device with <paramref name="settings"/> inside
    /// the bucket's captured graph: the settings and the per-sequence counter (the new token's position) are step
    /// inputs in device memory, so changing them needs no re-capture. Only the token ids come back.
    /// </summary>
    public void DecodeBatchSampled(ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, in SamplingSettings settings, Span<int> nextTokens) =>
        DecodeBatchSampled(sequences, tokens, new ReadOnlySpan<SamplingSettings>(in settings), nextTokens);

    /// <summary>
    /// Like <see cref="DecodeBatchSampled(ReadOnlySpan{int}, ReadOnlySpan{int}, in SamplingSettings, Span{int})"/> with
    /// settings per sequence: row i is sampled with <paramref name="settings"/>[i] (its own seed, temperature, top-k,
    /// top-p, min-p), or every row with <paramref name="settings"/>[0] when one is given. A row's random number depends
    /// only on its seed and its new token's position, so each sequence draws what it would draw alone.
    /// </summary>
    public void DecodeBatchSampled(ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, ReadOnlySpan<SamplingSettings> settings, Span<int> nextTokens)
    {
        if (nextTokens.Length != sequences.Length) throw new ArgumentException($"nextTokens has {nextTokens.Length} elements, expected {sequences.Length}", nameof(nextTokens));
        if (settings.Length != 1 && settings.Length != sequences.Length)
            throw new ArgumentException($"{settings.Length} sampling settings for {sequences.Length} sequences: give one for all or one per sequence", nameof(settings));
        foreach (var s in settings) SamplingLaunchers.Validate(s);
        DecodeStep(sequences, tokens, settings);
        CopyIdsBack(nextTokens);
    }

    private void CopyLogitsBack(int rows, Span<float> logits)
    {
        var w = Plan.Workspace;
        _device.CopyToHostAsync(_result, 0, _workspace.Base + w.EmbedError, w.ResultBytes(rows, VocabSize), _stream);
        _device.Synchronize(_stream);
        CheckEmbedError();
        Bf16.ToFloat(_result.AsSpan<ushort>().Slice((int)((w.Logits - w.EmbedError) / sizeof(ushort)), rows * VocabSize), logits);
    }

    private void CopyIdsBack(Span<int> ids)
    {
        var w = Plan.Workspace;
        long idsEnd = w.Sampled - w.EmbedError + ids.Length * sizeof(int);
        _device.CopyToHostAsync(_result, 0, _workspace.Base + w.EmbedError, idsEnd, _stream);
        _device.Synchronize(_stream);
        CheckEmbedError();
        _result.AsSpan<int>().Slice((int)((w.Sampled - w.EmbedError) / sizeof(int)), ids.Length).CopyTo(ids);
    }

    /// <summary>
    /// Second line of defence behind <see cref="CheckTokens"/>: the embedding kernel flags an id outside [0, V)
    /// (it wrote a zero row instead of reading out of bounds). The flag is sticky, so it covers every chunk since the last read.
    /// </summary>
    private void CheckEmbedError()
    {
        if (_result.AsSpan<int>()[0] == 0) return;
        _device.MemsetAsync(_workspace.Base + Plan.Workspace.EmbedError, 0, sizeof(int), _stream);
        var ids = InputSpan(Plan.Workspace.Tokens, Plan.Workspace.Rows);
        string where = "";
        for (int i = 0; i < ids.Length; i++)
            if ((uint)ids[i] >= (uint)VocabSize) { where = $" (row {i} of the last step inputs holds token id {ids[i]})"; break; }
        throw new InvalidOperationException($"the embedding kernel saw a token id outside the vocabulary [0, {VocabSize}){where}; its output row was zeroed, the results are invalid");
    }

    private int CheckSequence(int sequence) =>
        (uint)sequence < (uint)MaxSequences ? sequence
        : throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"sequence id must be in [0, {MaxSequences})");

    private void CheckTokens(ReadOnlySpan<int> tokens)
    {
        foreach (int t in tokens)
            if ((uint)t >= (uint)VocabSize) throw new ArgumentException($"token id {t} is outside the vocabulary [0, {VocabSize})", nameof(tokens));
    }

    public void Dispose()
    {
        if (!_stream.IsDisposed) _device.Synchronize(_stream);
        foreach (var g in _graphs.Values) g.Dispose();
        foreach (var g in _sampleGraphs.Values) g.Dispose();
        _graphs.Clear();
        _sampleGraphs.Clear();
        _result.Dispose();
        _inputs.Dispose();
        _kv.Dispose();
        _workspace.Dispose();
        _weights.Dispose();
        _stream.Dispose();
        if (_ownsLoader) _loader.Dispose();
    }
}
