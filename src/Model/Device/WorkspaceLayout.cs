using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>
/// Offsets of every activation buffer in the workspace arena, sized for the largest step: <see cref="Rows"/> =
/// max(prefill chunk, decode batch) token rows. One layout serves every step; buffers are reused layer after
/// layer. Step inputs (token ids, positions, slots, context lengths, block tables) are int32 arrays that the
/// host fills in a pinned mirror and copies in before the step (or the graph launch).
/// <code>
/// tokens, positions, slots, ctx_lens   int32 [Rows]
/// block_tables    int32 [Rows, MaxPagesPerSeq]  one row per decode-attention row, then one per flash-prefill segment
/// q_start         int32 [Rows + 1]        query row offsets of the flash-prefill segments
/// output_rows     int32 [MaxOutputs]      the rows whose logits the step computes (gathered, in batch order)
/// sample_settings SampleRowSettings [MaxOutputs] (steps with sampled rows only)
/// penalty_rows    PenaltyRow [MaxOutputs]  (steps with penalties only; penalties.cu)
/// sample_scratch  SamplingScratch(MaxOutputs, V): sampling.cu's histograms, tickets (zeroed once at load), partials
/// penalty_entries int32 [PenaltyCapacity, 2]  token id, occurrences in the answer
/// rope_inv_freq   fp32 [Rows, D/2]        dynamic NTK only (else empty): each row's RoPE table, that of its sequence's length
/// pipeline ...   the same arrays for MaxBatch rows (no penalties): the second I/O slot (StepIoLayout; pipelined decode)
/// x               bf16 [Rows, H]          residual stream
/// h               bf16 [Rows, H]          normed activations
/// qkv             bf16 [Rows, (nH + 2 nKV) D]
/// q, attn         bf16 [Rows, nH D]
/// gemv_partial    fp32 split-K partials of the decode GEMV
/// attn_partial    fp32 [AttnSplitRows, nH, D] + lse [AttnSplitRows, nH] (flash-decoding splits)
/// attn_tickets    int32 [Rows, nKV]       attn_decode_fused's combine tickets (zeroed once at load, left zero)
/// moe             MoeWorkspace(Rows) of the MoE layers' shape (empty for a dense model)
/// x_attn          bf16 [min(Rows, 4), H]  early routing: x after the attention (o_proj's output, x the layer's input)
/// early_logits    fp32 [min(Rows, 4), E]  early routing's unscaled logits; early_ids int32 [min(Rows, 4), k] its ids
///                                         (the three empty for a dense model)
/// mlp_gate_up     bf16 [Rows, 2 I]        dense layers: gate|up projection (I = intermediate_size; empty without dense layers)
/// mlp_act         bf16 [Rows, I]          dense layers: bf16(silu(gate)) * up
/// result:  one contiguous region, so that the host reads the error flag with the result in ONE copy
///   embed_error   int32 (16 bytes)        sticky flag of the embedding kernel (a token id outside [0, V)); at +8 the
///                                         uint64 record of the debug non-finite check (check_finite.cu; ~0: none)
///   sampled       int32 [MaxOutputs] (the three padded so that logits stay 256-byte aligned)  sampled token ids
///   logits        bf16 [MaxOutputs, V]    lm_head output of the step's output rows
/// pipeline result: embed_error (16 bytes) | sampled int32 [MaxBatch]: the second I/O slot's result head
/// </code>
/// </summary>
public sealed record WorkspaceLayout
{
    public int Rows { get; init; }
    public int MaxBatch { get; init; }
    /// <summary>Rows with an output (logits or a sampled token) one step can have.</summary>
    public int MaxOutputs { get; init; }
    public int MaxPagesPerSeq { get; init; }
    /// <summary>The step inputs and result head of every step but a pipelined one of the second slot (docs/architecture.md, "Pipelined decode").</summary>
    public required StepIoLayout Io { get; init; }
    /// <summary>
    /// The second I/O slot: inputs and result head of a pipelined decode step of at most <see cref="MaxBatch"/> rows, so
    /// that the host copies the next step's inputs, and reads the last step's token, while the step between runs.
    /// </summary>
    public required StepIoLayout PipelineIo { get; init; }
    /// <summary>int32 [Rows, MaxPagesPerSeq]: grows with the context and the step's rows (20 MiB for 2048 rows at 40960 tokens in pages of 16).</summary>
    public long BlockTableBytes => (long)Rows * MaxPagesPerSeq * sizeof(int);
    /// <summary>sampling.cu's scratch for <see cref="MaxOutputs"/> rows (not a step input; zeroed once at load).</summary>
    public long SampleScratch { get; init; }
    public long SampleScratchBytes { get; init; }
    /// <summary>The lm_head's fused argmax (gemv_bf16_mma_argmax, the greedy decode step): its ticket and a key per row, zero between launches.</summary>
    public long ArgmaxScratch { get; init; }
    public long ArgmaxScratchBytes { get; init; }
    /// <summary>Penalty entries one step can carry: MaxOutputs x the context, at most <see cref="MaxPenaltyCapacity"/>.</summary>
    public int PenaltyCapacity { get; init; }
    /// <summary>Cap of <see cref="PenaltyCapacity"/> (2 MiB of entries); rows past it sample on the host.</summary>
    public const int MaxPenaltyCapacity = 1 << 18;
    public bool PerRowRope { get; init; }
    public long X { get; init; }
    public long H { get; init; }
    public long Qkv { get; init; }
    public long Q { get; init; }
    public long Attn { get; init; }
    public long GemvPartial { get; init; }
    public long GemvPartialCapacity { get; init; }
    public long AttnPartialOut { get; init; }
    public long AttnPartialLse { get; init; }
    /// <summary>
    /// int32 [Rows, nKV]: attn_decode_fused's tickets, then the persistent attention block's counters
    /// (<see cref="PersistentCounters"/>); zero (cleared once at load; the kernels leave them zero). Bytes: both.
    /// </summary>
    public long AttnTickets { get; init; }
    public long AttnTicketBytes { get; init; }
    /// <summary>int32 [PersistentDecodeLaunchers.CounterInts]: persistent_attn_block's counters, right after the tickets.</summary>
    public long PersistentCounters { get; init; }
    /// <summary>Attention (row x split) pairs the partial buffers hold.</summary>
    public int AttnSplitRows { get; init; }
    public long Moe { get; init; }
    public long MoeBytes { get; init; }
    /// <summary>bf16 [min(Rows, 4), H]: early routing's residual stream after the attention (docs/kernels.md, "Early routing").</summary>
    public long XAttn { get; init; }
    /// <summary>fp32 [min(Rows, 4), E] and int32 [min(Rows, 4), k]: early routing's unscaled logits and ids.</summary>
    public long EarlyLogits { get; init; }
    public long EarlyIds { get; init; }
    /// <summary>bf16 [Rows, 2 I]: a dense layer's gate|up projection.</summary>
    public long MlpGateUp { get; init; }
    /// <summary>bf16 [Rows, I]: a dense layer's activation, input of its down projection.</summary>
    public long MlpAct { get; init; }
    /// <summary>bf16 [MaxOutputs, V]: the logits, after slot 0's result head (<see cref="StepIoLayout.EmbedError"/>, sampled ids) in one region.</summary>
    public long Logits { get; init; }
    /// <summary>Bytes from slot 0's <see cref="StepIoLayout.EmbedError"/> to the end of the logits row <paramref name="rows"/> - 1.</summary>
    public long ResultBytes(int rows, int vocab) => Logits - Io.EmbedError + (long)rows * vocab * sizeof(ushort);
    public long TotalBytes { get; init; }

    public static WorkspaceLayout Compute(ModelConfig c, int rows, int maxBatch, int maxOutputs, int contextLength, int pageSize, int multiprocessors)
    {
        int maxPages = (contextLength + pageSize - 1) / pageSize;
        int qkvDim = c.QueryDim + 2 * c.KeyValueDim;
        var a = new ArenaLayout();
        long bf = sizeof(ushort);
        int penaltyCapacity = (int)Math.Min((long)maxOutputs * contextLength, MaxPenaltyCapacity);
        bool perRowRope = c.RopeScaling is { IsDynamic: true };
        int ropeHalf = perRowRope ? c.HeadDim / 2 : 0;
        var io = StepIoLayout.TakeInputs(a, "", rows, maxOutputs, maxPages, penaltyCapacity, ropeHalf);
        // the second I/O slot (pipelined decode steps: graph buckets only, no penalties)
        var pipeIo = StepIoLayout.TakeInputs(a, "pipeline ", maxBatch, maxBatch, maxPages, 0, ropeHalf);
        long sampleScratchBytes = SamplingScratch.Bytes(maxOutputs, c.VocabSize);
        long sampleScratch = a.Take("sample_scratch", sampleScratchBytes);
        long argmaxScratchBytes = GemvLaunchers.ArgmaxScratchBytes(Math.Min(maxOutputs, GemvLaunchers.MaxTokens));
        long argmaxScratch = a.Take("argmax_scratch", argmaxScratchBytes);
        long x = a.Take("x", (long)rows * c.HiddenSize * bf), h = a.Take("h", (long)rows * c.HiddenSize * bf);
        long qkv = a.Take("qkv", (long)rows * qkvDim * bf), q = a.Take("q", (long)rows * c.QueryDim * bf), attn = a.Take("attn", (long)rows * c.QueryDim * bf);

        bool anyDense = Enumerable.Range(0, c.NumHiddenLayers).Any(l => !c.IsMoeLayer(l));
        var gemvShapes = new List<(int N, int K)> { (qkvDim, c.HiddenSize), (c.HiddenSize, c.QueryDim), (c.VocabSize, c.HiddenSize) };
        if (anyDense) gemvShapes.AddRange([(2 * c.IntermediateSize, c.HiddenSize), (c.HiddenSize, c.IntermediateSize)]);   // dense MLPs
        long gemv = 0;   // split-K partials: the launcher's own plan for every GEMV the step runs
        for (int t = 1; t <= Math.Min(rows, GemvLaunchers.MaxTokens); t++)
            foreach (var (n, k) in gemvShapes)
                gemv = Math.Max(gemv, GemvLaunchers.Plan(multiprocessors, t, n, k).PartialBytes(t, n));
        long gemvPartial = a.Take("gemv_partial", gemv);

        // The decode attention's own split plan for every decode batch up to 8 rows (the latency-bound batches that need
        // the splits); a larger batch has rows x KV heads CTAs of its own and takes AttnSplitRows / rows splits per row
        // (the launcher's workspaceSplits), so the partials stay a few MiB instead of growing with the step's rows.
        int splitRows = 0;
        for (int t = 1; t <= Math.Min(rows, GemvLaunchers.MaxTokens); t++)
            splitRows = Math.Max(splitRows, t * AttentionDecodeLaunchers.PlanSplits(multiprocessors, t, c.NumKeyValueHeads, contextLength));
        long lse = (long)splitRows * c.NumAttentionHeads * sizeof(float);
        long partialOut = a.Take("attn_partial_out", lse * c.HeadDim), partialLse = a.Take("attn_partial_lse", lse);
        long attnTicketBytes = AttentionDecodeLaunchers.TicketBytes(rows, c.NumKeyValueHeads) + PersistentDecodeLaunchers.CounterBytes;
        long attnTickets = a.Take("attn_tickets", attnTicketBytes);

        long moeBytes = 0;
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            if (!c.IsMoeLayer(l)) continue;
            moeBytes = Math.Max(moeBytes, MoeWorkspace.Compute(rows, MlpShape(c, l)).TotalBytes);
        }
        long moe = a.Take("moe", moeBytes);
        long earlyRows = moeBytes > 0 ? Math.Min(rows, PersistentDecodeLaunchers.MaxRows) : 0;
        long xAttn = a.Take("x_attn", earlyRows * c.HiddenSize * bf);
        long earlyLogits = a.Take("early_logits", earlyRows * c.NumExperts * 4L), earlyIds = a.Take("early_ids", earlyRows * c.NumExpertsPerTok * 4L);
        long I = anyDense ? c.IntermediateSize : 0;
        long mlpGateUp = a.Take("mlp_gate_up", rows * 2 * I * bf), mlpAct = a.Take("mlp_act", rows * I * bf);
        const long flagBytes = 16;
        long head = ByteSize.AlignUp(flagBytes + maxOutputs * 4L, DeviceArena.Alignment);   // logits keep the arena alignment
        long embedError = a.Take("result (embed_error | sampled | logits)", head + (long)maxOutputs * c.VocabSize * bf);
        long logits = embedError + head;
        io = io with { EmbedError = embedError, Sampled = embedError + flagBytes };
        long pipeHead = a.Take("pipeline result (embed_error | sampled)", flagBytes + maxBatch * 4L);
        pipeIo = pipeIo with { EmbedError = pipeHead, Sampled = pipeHead + flagBytes };
        return new WorkspaceLayout
        {
            Rows = rows, MaxBatch = maxBatch, MaxOutputs = maxOutputs, MaxPagesPerSeq = maxPages,
            Io = io, PipelineIo = pipeIo,
            SampleScratch = sampleScratch, SampleScratchBytes = sampleScratchBytes, ArgmaxScratch = argmaxScratch, ArgmaxScratchBytes = argmaxScratchBytes, PenaltyCapacity = penaltyCapacity,
            PerRowRope = perRowRope,
            X = x, H = h, Qkv = qkv, Q = q, Attn = attn, GemvPartial = gemvPartial, GemvPartialCapacity = gemv,
            AttnPartialOut = partialOut, AttnPartialLse = partialLse, AttnSplitRows = splitRows,
            AttnTickets = attnTickets, AttnTicketBytes = attnTicketBytes,
            PersistentCounters = attnTickets + AttentionDecodeLaunchers.TicketBytes(rows, c.NumKeyValueHeads),
            Moe = moe, MoeBytes = moeBytes, XAttn = xAttn, EarlyLogits = earlyLogits, EarlyIds = earlyIds, MlpGateUp = mlpGateUp, MlpAct = mlpAct, Logits = logits, TotalBytes = a.TotalBytes,
        };
    }

    /// <summary>The MLP of layer <paramref name="layer"/> as a MoE shape: the routed experts (a dense layer: one expert of I, for sizing only).</summary>
    public static MoeShape MlpShape(ModelConfig c, int layer) => c.IsMoeLayer(layer)
        ? new MoeShape(c.NumExperts, c.NumExpertsPerTok, c.HiddenSize, c.MoeIntermediateSize, c.NormTopkProb)
        : new MoeShape(1, 1, c.HiddenSize, c.IntermediateSize, false);
}

/// <summary>
/// One I/O slot of the workspace: the step-input arrays (int32 unless noted; their pinned mirror has the same layout from
/// <see cref="InputsBegin"/>) and the result head (the error flags and the sampled ids). Slot 0 (<see cref="WorkspaceLayout.Io"/>)
/// takes any step; slot 1 (<see cref="WorkspaceLayout.PipelineIo"/>) the pipelined decode steps that alternate with it.
/// </summary>
public sealed record StepIoLayout
{
    public long Tokens { get; init; }
    public long Positions { get; init; }
    public long Slots { get; init; }
    public long ContextLens { get; init; }
    public long BlockTables { get; init; }
    /// <summary>int32 [rows + 1]: query row offsets of the flash-prefill segments (relative to the first of their rows).</summary>
    public long QStart { get; init; }
    /// <summary>int32 [outputs]: the rows whose hidden states go through the final norm and lm_head, in output order.</summary>
    public long OutputRows { get; init; }
    /// <summary>SampleRowSettings [outputs]: per-output-row sampling settings.</summary>
    public long SampleSettings { get; init; }
    /// <summary>PenaltyRow [outputs] and int32 [penalty capacity, 2] (token, count) entries (slot 0 only).</summary>
    public long PenaltyRows { get; init; }
    public long PenaltyEntries { get; init; }
    /// <summary>fp32 [rows, D/2]: per-row RoPE inv_freq (dynamic NTK rope_scaling; empty otherwise).</summary>
    public long RopeInvFreq { get; init; }
    /// <summary>Offset of the first step-input array and the end of the last (their pinned mirror has the same layout).</summary>
    public long InputsEnd { get; init; }
    public long InputsBegin => Tokens;
    /// <summary>The result head: the embedding's sticky error flag (int32), at +8 the non-finite record (uint64), then <see cref="Sampled"/>.</summary>
    public long EmbedError { get; init; }
    public long NonFinite => EmbedError + 8;
    /// <summary>int32 [outputs]: the sampled ids.</summary>
    public long Sampled { get; init; }

    /// <summary>Takes the input arrays of a slot for <paramref name="rows"/> token rows in the order of the layout's table.</summary>
    internal static StepIoLayout TakeInputs(ArenaLayout a, string prefix, int rows, int maxOutputs, int maxPages, int penaltyCapacity, int ropeHalf)
    {
        long tokens = a.Take(prefix + "tokens", rows * 4L), positions = a.Take(prefix + "positions", rows * 4L), slots = a.Take(prefix + "slots", rows * 4L);
        long ctx = a.Take(prefix + "ctx_lens", rows * 4L), tables = a.Take(prefix + "block_tables", (long)rows * maxPages * 4);
        long qstart = a.Take(prefix + "q_start", (rows + 1) * 4L);
        long outputRows = a.Take(prefix + "output_rows", maxOutputs * 4L);
        long sampleSettings = a.Take(prefix + "sample_settings", maxOutputs * (long)System.Runtime.CompilerServices.Unsafe.SizeOf<SampleRowSettings>());
        long penaltyRows = a.Take(prefix + "penalty_rows", penaltyCapacity > 0 ? maxOutputs * (long)System.Runtime.CompilerServices.Unsafe.SizeOf<PenaltyRow>() : 0);
        long penaltyEntries = a.Take(prefix + "penalty_entries", penaltyCapacity * 8L);
        long ropeInvFreq = a.Take(prefix + "rope_inv_freq", (long)rows * ropeHalf * sizeof(float));
        return new StepIoLayout
        {
            Tokens = tokens, Positions = positions, Slots = slots, ContextLens = ctx, BlockTables = tables, QStart = qstart, OutputRows = outputRows,
            SampleSettings = sampleSettings, PenaltyRows = penaltyRows, PenaltyEntries = penaltyEntries, RopeInvFreq = ropeInvFreq, InputsEnd = a.TotalBytes,
        };
    }
}
