using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>
/// Qwen3 / Qwen3-MoE on an <see cref="IDevice"/> (CUDA or the PTX emulator): the weights in one device arena, a
/// workspace arena for activations, a paged KV cache, and one forward per step (DeviceModel.Step.cs) that launches the
/// kernels layer by layer in the reference's order. Its one entry point is <see cref="Step"/> (docs/architecture.md,
/// "The step contract"): rows of several sequences, prefill chunks and decode rows mixed. Decode steps of 1..MaxBatch
/// sequences are captured once per batch bucket as graphs and replayed. Step inputs (token ids, positions, slots,
/// context lengths, block tables, output rows, sampling settings) are written into a slot of a pinned staging ring and
/// copied into fixed device buffers; a slot is reused only after an event says its copies ran. Nothing is allocated
/// inside a step; the only host synchronisation is the wait for the result copy of a step that has outputs.
/// Not thread-safe: one call at a time.
/// </summary>
public sealed partial class DeviceModel : IPipelinedModel
{
    private readonly IDevice _device;
    private readonly KernelLoader _loader;
    private readonly bool _ownsLoader;
    private readonly DeviceStream _stream;
    private readonly DeviceArena _weights, _workspace;
    private readonly PagedKvCache _kv;
    private readonly StagingRing _staging;       // pinned slots mirroring the workspace's step-input arrays
    private readonly PinnedBuffer _result;       // the workspace's result region: embed error flag | sampled ids | logits (bf16)
    private readonly RmsNormLaunchers _rms;
    private readonly GemvLaunchers _gemv;
    private readonly GemmLaunchers _gemm;
    private readonly RopeLaunchers _rope;
    private readonly AttentionDecodeLaunchers _attn;
    /// <summary>persistent_decode.cu, when <see cref="DeviceModelOptions.PersistentAttentionBlock"/> is on and the head size allows it.</summary>
    private readonly PersistentDecodeLaunchers? _persistentAttn;
    private readonly AttentionPrefillLaunchers _attnPrefill;
    private readonly MoeLaunchers? _moe;       // null: no MoE layer
    private readonly SwiGluLaunchers? _swiglu; // null: no dense layer
    private readonly EmbeddingLaunchers _embedding;
    private readonly SamplingLaunchers _sampling;
    private readonly PenaltiesLaunchers _penalties;
    private readonly CheckFiniteLaunchers? _checkFinite;   // debug: DeviceModelOptions.CheckFinite
    private readonly EarlyRoutingLaunchers? _earlyRouting; // early_route.cu: DeviceModelOptions.EarlyRouting
    private readonly MoeShape[] _mlpShapes;
    private readonly float _attentionScaling;
    private readonly float[] _defaultInvFreq = [];   // the RoPE table below max_position_embeddings (padding rows of a dynamic-NTK step)
    /// <summary>
    /// The captured decode steps: per I/O slot (0, or the pipeline's 1), batch bucket, and whether they end in sampling
    /// (sample_reduce_bf16 + sample_draw_bf16, or their fusions) or in the argmax.
    /// </summary>
    private readonly Dictionary<(int Slot, int Rows, bool Sample), DeviceGraphExec> _graphs = [];
    /// <summary>The I/O slot of the step being written or captured: <see cref="WorkspaceLayout.Io"/> but while a pipelined step runs on the second.</summary>
    private StepIoLayout _io = null!;
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
    /// <summary>Token rows one step takes: the workspace's rows (max of the prefill chunk and the decode batch).</summary>
    public int MaxStepRows => Plan.Workspace.Rows;
    public int MaxOutputRows => Plan.Workspace.MaxOutputs;
    /// <summary>Penalty entries one step carries (the workspace's penalty_entries).</summary>
    public int MaxPenaltyEntries => Plan.Workspace.PenaltyCapacity;
    /// <summary>Batch sizes with a captured decode graph (empty when graphs are off).</summary>
    public IReadOnlyCollection<int> GraphBuckets => [.. _graphs.Keys.Where(k => k.Slot == 0 && !k.Sample).Select(k => k.Rows)];

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
        options.Validate();
        _ownsLoader = loader is null;
        _loader = loader ?? new KernelLoader(device);
        var disposables = new List<IDisposable>();
        try
        {
            // Fixed allocations first (kernel modules, the stream), then the plan from the memory they leave (issue 12); the
            // kernel variants depend only on the weight layout, which config.json alone gives.
            var layout = new WeightLayout(c, hasLmHead, foldedRouters: options.EarlyRouting);
            _rms = new RmsNormLaunchers(_loader);
            _gemv = new GemvLaunchers(_loader, layout.DenseFormats);
            _gemm = new GemmLaunchers(_loader, layout.DenseFormats);
            bool kvFp8 = options.KvCacheDtype == KvCacheDtype.Fp8;
            _rope = new RopeLaunchers(_loader, c.HeadDim, kvFp8);
            _attn = new AttentionDecodeLaunchers(_loader, c.HeadDim, kvFp8);
            _persistentAttn = options.PersistentAttentionBlock && PersistentDecodeLaunchers.SupportsHeadDim(c.HeadDim)
                ? new PersistentDecodeLaunchers(_loader, c.HeadDim, kvFp8) : null;
            _attnPrefill = new AttentionPrefillLaunchers(_loader, c.HeadDim, kvFp8);
            _embedding = new EmbeddingLaunchers(_loader);
            _sampling = new SamplingLaunchers(_loader);
            _penalties = new PenaltiesLaunchers(_loader);
            _checkFinite = options.CheckFinite ? new CheckFiniteLaunchers(_loader) : null;
            _earlyRouting = layout.Layers.Any(l => l.FoldedRouter is not null) ? new EarlyRoutingLaunchers(_loader) : null;
            _mlpShapes = new MoeShape[c.NumHiddenLayers];
            for (int l = 0; l < _mlpShapes.Length; l++)
            {
                _mlpShapes[l] = WorkspaceLayout.MlpShape(c, l);
                if (c.IsMoeLayer(l)) MoeLaunchers.CheckShape(_mlpShapes[l], decodeOnly: Math.Max(options.PrefillChunkTokens, options.MaxBatch) <= MoeLaunchers.DecodeMaxTokens);
                else if (c.IntermediateSize % 8 != 0)
                    throw new NotSupportedException($"dense MLP: intermediate_size {c.IntermediateSize} must be a multiple of 8 on the device (swiglu.cu loads 8 values at once)");
            }
            // The MoE kernels only when some layer routes (the guarded grouped GEMMs only when a shape needs them); the dense
            // layers' SwiGLU activation otherwise (their projections are GEMV / GEMM launches).
            var moeShapes = Enumerable.Range(0, c.NumHiddenLayers).Where(c.IsMoeLayer).Select(l => _mlpShapes[l]).ToArray();
            _moe = moeShapes.Length > 0 ? new MoeLaunchers(_loader, moeShapes, layout.ExpertFormats) : null;
            _swiglu = moeShapes.Length < c.NumHiddenLayers ? new SwiGluLaunchers(_loader) : null;

            _stream = device.CreateStream(); disposables.Add(_stream);
            options = PrefillChunkSizing.Choose(c, options, device.GetMemoryInfo(), device.Info.MultiprocessorCount, hasLmHead);
            Plan = MemoryPlan.Compute(c, options, device.GetMemoryInfo(), device.Info.MultiprocessorCount, hasLmHead);
            Plan.ThrowIfDoesNotFit();
            _weights = new DeviceArena(device, Plan.Weights.TotalBytes, "weight arena"); disposables.Add(_weights);
            _workspace = new DeviceArena(device, Plan.Workspace.TotalBytes, "workspace arena"); disposables.Add(_workspace);
            _kv = new PagedKvCache(device, c.NumHiddenLayers, c.NumKeyValueHeads, c.HeadDim, options.PageSize, Plan.KvPages,
                options.MaxSequences, Plan.Workspace.MaxPagesPerSeq, options.KvCacheDtype); disposables.Add(_kv);
            _staging = new StagingRing(device, Plan.Workspace.Io.InputsEnd - Plan.Workspace.Io.InputsBegin); disposables.Add(_staging);
            _result = device.AllocatePinned(Plan.Workspace.ResultBytes(Plan.Workspace.MaxOutputs, c.VocabSize)); disposables.Add(_result);
            _deviceRow = new int[Plan.Workspace.Rows];
            _io = Plan.Workspace.Io;
            _pipeline = new PipelineResources(device, Plan.Workspace.PipelineIo, Plan.Options.MaxBatch); disposables.Add(_pipeline);
            foreach (var io in (StepIoLayout[])[Plan.Workspace.Io, Plan.Workspace.PipelineIo])
            {
                device.MemsetAsync(_workspace.Base + io.EmbedError, 0, sizeof(int), _stream);
                device.MemsetAsync(_workspace.Base + io.NonFinite, 0xff, sizeof(ulong), _stream);   // NonFiniteRecord.None
            }
            device.MemsetAsync(_workspace.Base + Plan.Workspace.SampleScratch, 0, Plan.Workspace.SampleScratchBytes, _stream);   // sampling.cu's histograms and tickets
            device.MemsetAsync(_workspace.Base + Plan.Workspace.ArgmaxScratch, 0, Plan.Workspace.ArgmaxScratchBytes, _stream);   // the lm_head's fused argmax, likewise
            _kv.ZeroScratchPage(_stream);
            _gemv.ClearTickets(_stream, _workspace.Base + Plan.Workspace.GemvPartial, Plan.Workspace.GemvPartialCapacity);   // split-K tickets, likewise
            device.MemsetAsync(_workspace.Base + Plan.Workspace.AttnTickets, 0, Plan.Workspace.AttnTicketBytes, _stream);   // attn_decode_fused's tickets and persistent_attn_block's counters, likewise
            foreach (var shape in moeShapes.Distinct())   // the MoE tickets start at zero and every kernel leaves them so: no memset in a step
                _moe!.ClearTickets(_stream, _workspace.Base + Plan.Workspace.Moe, MoeWorkspace.Compute(Plan.Workspace.Rows, shape));
            (float[] invFreq, _attentionScaling) = ReferenceOps.RopeParameters(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
            _defaultInvFreq = invFreq;
            UploadWeights(weights, invFreq, options.LoadProgress);
            FoldRouters();
            _buckets = [.. options.BatchBuckets()];
            if (options.UseGraphs) CaptureDecodeGraphs();
        }
        catch (Exception original)
        {
            // Cleanup after a device error may fail too (CUDA errors are sticky): keep the exception that says what went wrong.
            foreach (var g in _graphs.Values) DeviceCapture.CleanupKeeping(original, "graph dispose", g.Dispose);
            for (int i = disposables.Count - 1; i >= 0; i--) DeviceCapture.CleanupKeeping(original, "dispose", disposables[i].Dispose);
            if (_ownsLoader) DeviceCapture.CleanupKeeping(original, "kernel loader dispose", _loader.Dispose);
            throw;
        }
    }

    private DevicePtr W(DeviceTensor t) => _weights.Base + t.Offset;

    /// <summary>A weight matrix as the launchers take it: its format picks the kernel variant.</summary>
    private WeightOperand Operand(DeviceTensor t) =>
        new(W(t), t.Format, t.Scales.Count > 0 ? W(t.Scales[0]) : DevicePtr.Null) { ScaleRowShift = t.ScaleRowShift, ScaleKShift = t.ScaleKShift, ScaleCols = t.ScaleCols };

    private void UploadWeights(ModelWeights weights, float[] invFreq, Action<UploadProgress>? progress)
    {
        var ckpt = weights.Checkpoint;
        long total = Plan.Weights.Tensors.SelectMany(t => t.Sources).Sum(s => s.Bytes) + invFreq.Length * sizeof(float);
        using var up = new StagedUploader(_device, total, progress);
        foreach (var t in Plan.Weights.Tensors)
        {
            DevicePtr dst = _weights.Base + t.Offset;
            if (t.IsDerived) { up.Zero(dst, t.Bytes); continue; }
            if (t.GptqRepack is { } repack)
            {
                long k = t.GptqRepack == "gptq-qweight" ? t.Shape[^1] : t.Shape[1] * Plan.Weights.Format.GroupSize;
                foreach (var s in t.Sources)
                {
                    var view = ckpt.Get(s.CheckpointName);
                    int n = (int)view.Shape[1];
                    var bytes = new byte[s.Bytes];
                    if (repack == "gptq-qweight")
                        WeightQuantization.RepackGptq(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(view.Bytes), n, (int)k, bytes);
                    else
                    {
                        var src = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(view.Bytes);
                        var transposed = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(bytes.AsSpan());
                        int groups = (int)view.Shape[0];
                        for (int gi = 0; gi < groups; gi++) for (int c = 0; c < n; c++) transposed[c * groups + gi] = src[gi * n + c];
                    }
                    unsafe { fixed (byte* p = bytes) up.Upload(dst + s.DeviceOffset, (nint)p, s.Bytes, s.CheckpointName); }
                }
                continue;
            }
            if (t.ScaleSourceRows is { } sourceRows)
            {
                for (int i = 0; i < t.Sources.Count; i++)
                {
                    float[] scales = DeviceScales(ckpt.Get(t.Sources[i].CheckpointName), sourceRows[i], t);
                    if (scales.Length * sizeof(float) != t.Sources[i].Bytes)
                        throw new InvalidDataException($"{t.Sources[i].CheckpointName}: {scales.Length} fp32 scales for device tensor {t.Name}, expected {t.Sources[i].Bytes / sizeof(float)}");
                    unsafe { fixed (float* p = scales) up.Upload(dst + t.Sources[i].DeviceOffset, (nint)p, t.Sources[i].Bytes, t.Sources[i].CheckpointName); }
                }
                continue;
            }
            foreach (var s in t.Sources)
            {
                var view = ckpt.Get(s.CheckpointName);
                if (view.DType == SafetensorsDType.F16 && t.DType == SafetensorsDType.BF16 && view.ByteLength == s.Bytes)
                {
                    UploadF16AsBf16(up, dst + s.DeviceOffset, view, s.CheckpointName);   // GPTQ's fp16 tensors (CheckpointFormat.AcceptsF16)
                    continue;
                }
                if (view.DType != t.DType || view.ByteLength != s.Bytes)
                    throw new InvalidDataException($"{view.Info.FilePath}: tensor '{s.CheckpointName}': expected {s.Bytes} bytes of {t.DType.Name()} for device tensor {t.Name} {t.ShapeText}, the checkpoint has {view.ByteLength} bytes of {view.DType.Name()}");
                up.Upload(dst + s.DeviceOffset, view.Pointer, s.Bytes, s.CheckpointName);
            }
        }
        unsafe
        {
            fixed (float* p = invFreq) { up.Upload(W(Plan.Weights.InvFreq), (nint)p, invFreq.Length * sizeof(float), "rope.inv_freq"); up.Finish(); }
        }
    }

    /// <summary>
    /// Early routing's folded routers, <c>W_r diag(post_norm) W_o</c> per MoE layer (moe_router_fold, on the step's stream
    /// after the upload: the weights it reads are on the device; docs/kernels.md, "Early routing").
    /// </summary>
    private void FoldRouters()
    {
        if (_earlyRouting is null) return;
        var c = Config;
        foreach (var L in Plan.Weights.Layers)
            if (L.FoldedRouter is { } folded)
                _earlyRouting.Fold(_stream, L.Experts, c.HiddenSize, c.QueryDim, W(L.Router!), W(L.PostNorm), W(L.OProj), W(folded));
        _device.Synchronize(_stream);
    }

    /// <summary>An fp16 checkpoint tensor uploaded as bf16 (rounded to nearest even), converted a chunk at a time on the host.</summary>
    private static void UploadF16AsBf16(StagedUploader up, DevicePtr dst, Checkpoint.TensorView view, string name)
    {
        const int Chunk = 1 << 20;
        long n = view.ByteLength / 2;
        var buf = new ushort[Math.Min(Chunk, n)];
        for (long at = 0; at < n; at += Chunk)
        {
            int len = (int)Math.Min(Chunk, n - at);
            unsafe
            {
                var src = new ReadOnlySpan<Half>((Half*)view.Pointer + at, len);
                for (int i = 0; i < len; i++) buf[i] = Bf16.FromFloat((float)src[i]);
                fixed (ushort* p = buf) up.Upload(dst + at * 2, (nint)p, len * 2L, name);
            }
        }
    }

    /// <summary>
    /// One source's scales as the device holds them (docs/formats.md): fp32, one row per 2^ScaleRowShift weight rows; the
    /// checkpoint's scale row of weight row r is r / ScaleBlockRows.
    /// </summary>
    private static float[] DeviceScales(Checkpoint.TensorView view, long weightRows, DeviceTensor scaleTensor)
    {
        float[] src = WeightQuantization.ScalesToFloat(view);
        int cols = (int)scaleTensor.Shape[1];
        long rows = weightRows >> scaleTensor.ScaleRowShift;
        var dst = new float[rows * cols];
        for (long j = 0; j < rows; j++)
            Array.Copy(src, (j << scaleTensor.ScaleRowShift) / scaleTensor.ScaleBlockRows * cols, dst, j * cols, cols);
        return dst;
    }

    // ---------------- ICausalLanguageModel ----------------

    public KvPageTable Kv => _kv.Table;

    /// <summary>
    /// Appends <paramref name="count"/> positions to a sequence without computing them: their KV pages are taken and
    /// their K and V set to zero in every layer. A profiling aid (`profile --context`): a step at a long context does the
    /// same work whatever the cached values are, so it can be run or emulated without the prefill before it.
    /// </summary>
    public void SkipTokens(int sequence, int count)
    {
        if (_pending.Count > 0) throw new InvalidOperationException($"{_pending.Count} pipelined step(s) are still queued: Complete them before SkipTokens");
        var table = _kv.Table;
        if (count < 0) throw new ArgumentOutOfRangeException(nameof(count), count, "cannot skip a negative number of tokens");
        int p0 = table.Length(sequence);
        if ((long)p0 + count > ContextLength)
            throw new ArgumentException($"sequence {sequence} would hold {(long)p0 + count} tokens, more than the context length {ContextLength}", nameof(count));
        table.Reserve(sequence, count);
        _kv.ApplyPendingCopies(_stream);
        long slotBytes = PagedKvCache.PageBytes(Config.NumKeyValueHeads, Config.HeadDim, 1, Plan.Options.KvCacheDtype);
        var pages = table.BlockTable(sequence);
        int P = table.PageSize;
        for (int pos = p0; pos < p0 + count;)
        {
            // one run of consecutive slots: to the end of the page, extended over following pages that are consecutive too
            int first = pages[pos / P] * P + pos % P, slots = Math.Min(P - pos % P, p0 + count - pos);
            while (pos + slots < p0 + count && (pos + slots) % P == 0 && pages[(pos + slots) / P] == pages[(pos + slots) / P - 1] + 1)
                slots += Math.Min(P, p0 + count - pos - slots);
            for (int l = 0; l < Config.NumHiddenLayers; l++)
            {
                _device.MemsetAsync(_kv.K(l) + first * slotBytes, 0, slots * slotBytes, _stream);
                _device.MemsetAsync(_kv.V(l) + first * slotBytes, 0, slots * slotBytes, _stream);
            }
            pos += slots;
        }
        table.Advance(sequence, count);
    }

    public void Dispose()
    {
        if (!_stream.IsDisposed) _device.Synchronize(_stream);
        if (!_pipeline.ResultStream.IsDisposed) _device.Synchronize(_pipeline.ResultStream);
        if (!_pipeline.InputStream.IsDisposed) _device.Synchronize(_pipeline.InputStream);
        _pending.Clear();
        foreach (var g in _graphs.Values) g.Dispose();
        _graphs.Clear();
        _pipeline.Dispose();
        _result.Dispose();
        _staging.Dispose();
        _kv.Dispose();
        _workspace.Dispose();
        _weights.Dispose();
        _stream.Dispose();
        if (_ownsLoader) _loader.Dispose();
    }
}
