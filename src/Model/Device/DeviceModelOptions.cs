using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>How the device model sizes its pools. Null fields are derived (see <see cref="MemoryPlan"/>).</summary>
public sealed record DeviceModelOptions
{
    /// <summary>Tokens per sequence (--ctx-size). Null: as many as the memory left allows, at most max_position_embeddings.</summary>
    public int? ContextLength { get; init; }
    /// <summary>Sequences held at once (KV cache of each).</summary>
    public int MaxSequences { get; init; } = 1;
    /// <summary>Sequences decoded in one step (the largest graph bucket): up to 8 the decode GEMVs, past 8 the tensor-core
    /// GEMMs and the MoE's grouped GEMMs (all captured: their grids are sized for the bucket).</summary>
    public int MaxBatch { get; init; } = 8;
    /// <summary>Rows with an output (logits or a sampled token) one step may have. Null: <see cref="MaxBatch"/>.</summary>
    public int? MaxOutputRows { get; init; }
    /// <summary>Rows with an output one step may have (<see cref="MaxOutputRows"/> or <see cref="MaxBatch"/>).</summary>
    public int OutputRows => MaxOutputRows ?? MaxBatch;
    /// <summary>Tokens per prefill chunk: a step holds at most max(this, MaxBatch) rows. With <see cref="AutoPrefillChunk"/>,
    /// the largest chunk to try.</summary>
    public int PrefillChunkTokens { get; init; } = 512;
    /// <summary>Choose the chunk from the memory budget: <see cref="PrefillChunkTokens"/> or, halving, down to 512 (the
    /// largest whose workspace fits next to the weights and the KV cache the smallest chunk leaves room for;
    /// <see cref="PrefillChunkSizing"/>). Off: exactly <see cref="PrefillChunkTokens"/>.</summary>
    public bool AutoPrefillChunk { get; init; }
    /// <summary>Tokens per KV page.</summary>
    public int PageSize { get; init; } = 16;
    /// <summary>How the KV cache stores K and V (--kv-cache-dtype): bf16, or FP8 E4M3 with per-layer scale 1 (half the bytes; docs/formats.md).</summary>
    public KvCacheDtype KvCacheDtype { get; init; } = KvCacheDtype.Bf16;
    /// <summary>Memory the plan's pools (weights, KV cache, workspace) may use (--gpu-memory), no reserve kept. Null: the
    /// device's free memory after the fixed allocations, less the reserve (<see cref="GpuMemoryUtilization"/>).</summary>
    public long? GpuMemoryBytes { get; init; }
    /// <summary>
    /// --gpu-memory-utilization (vLLM's option), in (0, 1]: the fraction of the device's total memory in use once the model
    /// is loaded. Memory already in use when the plan is made (the CUDA context, our kernel modules, other processes)
    /// counts against it; (1 - U) x total stays free for what is allocated later (graphs, launch-time driver memory).
    /// Null: keep max(1 GiB, 3% of total) free (<see cref="MemoryPlan.DefaultReserveBytes"/>).
    /// </summary>
    public double? GpuMemoryUtilization { get; init; }
    /// <summary>Capture decode steps as CUDA graphs (one per batch bucket) and replay them.</summary>
    public bool UseGraphs { get; init; } = true;
    /// <summary>
    /// Bytes of the next weight stream (the next layer's qkv projection, or the lm_head after the last layer) that the decode
    /// step's latency-bound kernels prefetch into L2 with evict_last while they leave the DRAM idle (docs/timing-model.md,
    /// "Weights fetched ahead"): the o_proj GEMV (or the attention block's o_proj tiles) the first
    /// <see cref="OProjFetchAheadBytes"/> of them, the router (or the block's router tiles) the rest. 0 turns it off; null
    /// (the default) takes <see cref="FetchAheadBytesFor"/>: 12 MiB when the router runs in the attention block
    /// (<see cref="PersistentRouter"/>), whose tiles fetch their share before they wait, while the block's earlier stages
    /// leave DRAM time; else 8 MiB, about what the standalone kernels' idle DRAM time carries on H200 (16 MiB predicted
    /// worse there: o_proj and the router then stream longer than they save the qkv). Results do not depend on it.
    /// </summary>
    public long? FetchAheadBytes { get; init; }
    /// <summary>
    /// The o_proj GEMV's (or the attention block's o_proj tiles') share of <see cref="FetchAheadBytes"/> (the first bytes;
    /// at most all of them); null (the default): <see cref="OProjFetchAheadBytesFor"/>, 2 MiB with the router in the block
    /// (its tiles fetch before their wait, so more of the bytes go there), else 4 MiB.
    /// </summary>
    public long? OProjFetchAheadBytes { get; init; }
    /// <summary>
    /// The decode experts launch's share of <see cref="FetchAheadBytes"/> (the last bytes; at most what o_proj leaves), fetched
    /// before its wait: those bytes stream while its CTAs read their tickets and the expert ids (and, with the router in
    /// the block, run the router's top-k), before the experts' own weight addresses are known, where the DRAM would
    /// otherwise idle (docs/timing-model.md, "The head"). The router fetches what o_proj and the experts leave. Null (the
    /// default): 4 MiB, about that head (0.7 us with the top-k) at 4.3 TB/s (since stop 41; 2 MiB before, when the head
    /// was one round trip; 3 MiB left H200's head partly idle, 6 MiB lengthened its experts). 0 turns it off. Bf16 experts only: with quantized experts the router keeps these bytes. Results do not
    /// depend on it.
    /// </summary>
    public long? ExpertsFetchAheadBytes { get; init; }

    /// <summary>
    /// The first bytes of a layer's o_proj weight that the attention block's qkv tiles (<see cref="PersistentAttentionBlock"/>)
    /// prefetch into L2 with evict_last before their wait, a share per tile (at most all of the weight; 0: none). Those tiles
    /// are resident from the launch's start, while the o_proj tiles' CTAs start only once earlier tiles have left: the
    /// DRAM would otherwise idle between the qkv stage's last bytes and the stages after it (docs/timing-model.md, "A
    /// stage-ordered launch"). With the next layer's qkv bytes still held from the fetch-ahead (12 MiB), 4 MiB keeps the
    /// evict_last lines within the 16 MiB the CUDA backend sets aside. Results do not depend on it.
    /// <see cref="OProjEarlyFetchEnvironmentVariable"/> sets the default in bytes (0 turns it off: the GPU check measures both).
    /// </summary>
    public long OProjEarlyFetchBytes { get; init; } = OProjEarlyFetchFromEnvironment();
    public const string OProjEarlyFetchEnvironmentVariable = "QWEN3CUDA_OPROJ_EARLY_FETCH";

    /// <summary>QWEN3CUDA_OPROJ_EARLY_FETCH's bytes (<see cref="ParseOProjEarlyFetch"/>).</summary>
    public static long OProjEarlyFetchFromEnvironment() => ParseOProjEarlyFetch(Environment.GetEnvironmentVariable(OProjEarlyFetchEnvironmentVariable));

    /// <summary>
    /// The value of QWEN3CUDA_OPROJ_EARLY_FETCH: unset or empty, 4 MiB; else a whole number of bytes (a negative one is
    /// refused by <see cref="Validate"/>); anything else is refused here, naming the variable.
    /// </summary>
    public static long ParseOProjEarlyFetch(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return 4L << 20;
        if (long.TryParse(text.Trim(), System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out long bytes))
            return bytes;
        throw new ArgumentException($"{OProjEarlyFetchEnvironmentVariable}={text}: not a byte count (a whole number; 0 turns the prefetch off)");
    }

    /// <summary>The bytes fetched ahead per MoE layer: <see cref="FetchAheadBytes"/>, or its default for the path (the router as the block's stage or not).</summary>
    public long FetchAheadBytesFor(bool routerInBlock) => FetchAheadBytes ?? (routerInBlock ? 12L << 20 : 8L << 20);
    /// <summary>o_proj's share of them: <see cref="OProjFetchAheadBytes"/>, or its default for the path.</summary>
    public long OProjFetchAheadBytesFor(bool routerInBlock) => OProjFetchAheadBytes ?? (routerInBlock ? 2L << 20 : 4L << 20);
    /// <summary>The experts' share of them: <see cref="ExpertsFetchAheadBytes"/>, or its default.</summary>
    public long ExpertsFetchAheadBytesOrDefault => ExpertsFetchAheadBytes ?? 4L << 20;
    /// <summary>
    /// On a MoE decode step of at most 4 rows, the decode experts launch also runs the next layer's qkv projection (with its
    /// input RMSNorm) as its last tiles, when that GEMV's weights are bf16 and its shape qualifies
    /// (<c>MoeLaunchers.CanFollowOn</c>): one launch less per layer, and the qkv weights stream while the experts' last tiles
    /// run (docs/kernels.md, "Persistent launches"). Results are the same bits either way. Off by default: the qkv tiles
    /// can start their arithmetic only after every down tile, so their norm and product run after the weight stream
    /// instead of under it, which by the timing model's own constants costs more than the launch gap and DRAM latency it
    /// saves (docs/timing-model.md, section 7, "An in-launch boundary"); a GPU measurement decides. On when
    /// <see cref="ExpertsFollowOnEnvironmentVariable"/> is "1" or "true".
    /// </summary>
    public bool ExpertsFollowOnQkv { get; init; } = ExpertsFollowOnFromEnvironment();
    public const string ExpertsFollowOnEnvironmentVariable = "QWEN3CUDA_EXPERTS_FOLLOW_ON";

    /// <summary>QWEN3CUDA_EXPERTS_FOLLOW_ON is "1" or "true" (any case).</summary>
    public static bool ExpertsFollowOnFromEnvironment() =>
        EnvironmentSaysOn(ExpertsFollowOnEnvironmentVariable);
    /// <summary>
    /// On a decode step of at most 4 rows (one per sequence, each its sequence's only new token), each layer's attention
    /// block (the qkv projection with its input norm, the fused attention, o_proj with the residual) runs as one launch
    /// whose tiles wait on counters instead of kernel boundaries (persistent_decode.cu; docs/kernels.md, "Persistent
    /// launches"), when both projections are bf16 and the shapes qualify (<c>PersistentDecodeLaunchers.CanRun</c>): two
    /// launches fewer per layer. Results are the same bits either way. On by default: the timing model, which composes the
    /// launch from its stages (docs/timing-model.md, section 7), predicts it faster than the three launches or as fast
    /// (README, "Performance"); no GPU has measured it yet. Off when <see cref="PersistentAttentionEnvironmentVariable"/>
    /// is "0" or "false".
    /// </summary>
    public bool PersistentAttentionBlock { get; init; } = PersistentAttentionFromEnvironment();
    public const string PersistentAttentionEnvironmentVariable = "QWEN3CUDA_PERSISTENT_ATTN";

    /// <summary>QWEN3CUDA_PERSISTENT_ATTN is not "0" or "false" (any case): on unless turned off.</summary>
    public static bool PersistentAttentionFromEnvironment() =>
        !EnvironmentSaysOff(PersistentAttentionEnvironmentVariable);

    /// <summary>
    /// With <see cref="PersistentAttentionBlock"/>, on a MoE layer the router (its post-attention RMSNorm, logits and top-k:
    /// moe_router_norm_topk's work) runs as the block's fourth stage, one tile per router row, when the hidden size is at
    /// most <c>PersistentDecodeLaunchers.MaxRouterHidden</c>: one launch less per layer, and the router's weights and its
    /// share of the fetch-ahead stream while the block's earlier stages run (docs/kernels.md, "Persistent launches").
    /// Results are the same bits either way. On by default: with its 12 MiB fetch-ahead (<see cref="FetchAheadBytesFor"/>)
    /// the timing model predicts it 2 points of the roofline faster on H100 and H200 at 1k (docs/timing-model.md, section
    /// 7, "Stop 34"); no GPU has measured it yet. Off when <see cref="PersistentRouterEnvironmentVariable"/> is "0" or "false".
    /// </summary>
    public bool PersistentRouter { get; init; } = PersistentRouterFromEnvironment();
    public const string PersistentRouterEnvironmentVariable = "QWEN3CUDA_PERSISTENT_ROUTER";

    /// <summary>QWEN3CUDA_PERSISTENT_ROUTER is not "0" or "false" (any case): on unless turned off.</summary>
    public static bool PersistentRouterFromEnvironment() =>
        !EnvironmentSaysOff(PersistentRouterEnvironmentVariable);

    /// <summary>
    /// Early routing (docs/kernels.md, "Early routing"): with the router in the attention block
    /// (<see cref="PersistentRouter"/>), tiles beside the qkv tiles and o_proj take each MoE layer's unscaled router
    /// logits from its input and the attention's output through a folded router made at load (1 MiB per layer for
    /// Qwen3-30B-A3B, in the weight arena), and the router tiles take their top-k and prefetch the first
    /// <see cref="EarlyRoutingPrefetchBytes"/> of each chosen expert's gate_up weight into L2 for the experts' launch. A
    /// hint: the results are the same bits either way. Off by default (docs/timing-model.md, section 7, "Stop 43" and
    /// "Stop 44" have what the timing model predicts of it); on when <see cref="EarlyRoutingEnvironmentVariable"/> is "1" or "true".
    /// </summary>
    public bool EarlyRouting { get; init; } = EnvironmentSaysOn(EarlyRoutingEnvironmentVariable);
    public const string EarlyRoutingEnvironmentVariable = "QWEN3CUDA_EARLY_ROUTING";

    /// <summary>
    /// With <see cref="EarlyRouting"/>, the bytes of each chosen expert's gate_up weight (from its start) the router tiles
    /// prefetch; null: <see cref="EarlyRoutingPrefetchBytesOrDefault"/>; 0: none, and no tile takes the early top-k (what
    /// `profile --what-if persistent` wants of a step with early routing). QWEN3CUDA_EARLY_PREFETCH sets it (a whole
    /// number of bytes).
    /// </summary>
    public long? EarlyRoutingPrefetchBytes { get; init; } = ParseEarlyPrefetch(Environment.GetEnvironmentVariable(EarlyPrefetchEnvironmentVariable));
    public const string EarlyPrefetchEnvironmentVariable = "QWEN3CUDA_EARLY_PREFETCH";
    /// <summary>The default: 768 KiB per chosen expert, 6 MiB for a token's 8 (the router tiles' share of the fetch-ahead today).</summary>
    public long EarlyRoutingPrefetchBytesOrDefault => EarlyRoutingPrefetchBytes ?? 768L << 10;

    /// <summary>QWEN3CUDA_EARLY_PREFETCH's value: unset or empty, null (the default); else a whole number of bytes, not negative.</summary>
    public static long? ParseEarlyPrefetch(string? text)
    {
        if (string.IsNullOrWhiteSpace(text)) return null;
        if (long.TryParse(text.Trim(), System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out long bytes)) return bytes;
        throw new ArgumentException($"{EarlyPrefetchEnvironmentVariable}={text}: not a byte count (a whole number, 0 or more)");
    }

    /// <summary>
    /// A greedy step (no sampling, no penalties) takes each output row's argmax in the lm_head's own launch
    /// (<c>gemv_bf16_mma_argmax</c>: bf16 lm_head, at most 8 rows) instead of a sampling launch after it: one graph node less
    /// per greedy decode step (docs/kernels.md, "Fusions"). The same token either way: the largest logit, ties to the lowest
    /// index. On by default; off when <see cref="FusedArgmaxEnvironmentVariable"/> is "0" or "false" (the GPU check
    /// measures both).
    /// </summary>
    public bool FusedArgmax { get; init; } = FusedArgmaxFromEnvironment();
    public const string FusedArgmaxEnvironmentVariable = "QWEN3CUDA_FUSED_ARGMAX";

    /// <summary>QWEN3CUDA_FUSED_ARGMAX is not "0" or "false" (any case): on unless turned off.</summary>
    public static bool FusedArgmaxFromEnvironment() =>
        !EnvironmentSaysOff(FusedArgmaxEnvironmentVariable);

    /// <summary>
    /// A sampled decode step of one output row without penalties runs <c>sample_reduce_bf16</c>'s work (the argmax, the
    /// histogram, the thresholds) in the lm_head's own launch (<c>gemv_bf16_mma_sample</c>: bf16 lm_head), then
    /// <c>sample_draw_bf16</c>: one graph node less per sampled step (docs/kernels.md, "Fusions"). The same row state but for
    /// fp32 rounding in the masses (a top-p threshold could move only where the mass reaches top_p within it). One row only:
    /// the last CTA merges each row in turn, where <c>sample_reduce_bf16</c> runs the rows side by side. On by default; off
    /// when <see cref="FusedSampleEnvironmentVariable"/> is "0" or "false" (the GPU check measures both).
    /// </summary>
    public bool FusedSample { get; init; } = FusedSampleFromEnvironment();
    public const string FusedSampleEnvironmentVariable = "QWEN3CUDA_FUSED_SAMPLE";

    /// <summary>QWEN3CUDA_FUSED_SAMPLE is not "0" or "false" (any case): on unless turned off.</summary>
    public static bool FusedSampleFromEnvironment() =>
        !EnvironmentSaysOff(FusedSampleEnvironmentVariable);

    /// <summary>
    /// For the timing model (`profile` on the emulator): with <see cref="PersistentAttentionBlock"/>, each block's stages
    /// (three, or four with <see cref="PersistentRouter"/>) run as launches of the same kernel, one per stage (<c>LaunchConfig.Stage</c>), so the emulator counts
    /// each stage alone; the predictor composes them back into one launch (docs/timing-model.md, section 7). The same
    /// results either way.
    /// </summary>
    public bool PersistentStagesApart { get; init; }
    /// <summary>Prefill chunks of more than 8 tokens use the tensor-core flash attention (attention_prefill.cu, on by
    /// default). It keeps the fp32 softmax weights to ~2^-17 by splitting P into two bf16 mma operands (hi + lo);
    /// off: the decode kernel with one query row per attention row (context lengths p0+1..p0+T make it causal),
    /// which reads the keys once per query row.</summary>
    public bool FlashPrefillAttention { get; init; } = true;
    /// <summary>
    /// Debug: after the embedding and after every layer, check the residual stream for NaN / inf (check_finite.cu, one
    /// extra read of the activations per layer, inside the captured graphs too); the next result read throws naming the
    /// first layer, token row, position and column that went non-finite. Default: on when the environment variable
    /// QWEN3CUDA_DEBUG_FINITE is 1 or true.
    /// </summary>
    public bool CheckFinite { get; init; } = CheckFiniteFromEnvironment();
    public const string CheckFiniteEnvironmentVariable = "QWEN3CUDA_DEBUG_FINITE";

    /// <summary>QWEN3CUDA_DEBUG_FINITE is "1" or "true" (any case).</summary>
    public static bool CheckFiniteFromEnvironment() =>
        EnvironmentSaysOn(CheckFiniteEnvironmentVariable);
    /// <summary>Progress of the weight upload (bytes done, total, tensor).</summary>
    public Action<Runtime.Memory.UploadProgress>? LoadProgress { get; init; }

    /// <summary>Largest <see cref="MaxBatch"/> (graph bucket).</summary>
    public const int MaxBatchLimit = 256;

    /// <summary>The decode batch buckets a graph is captured for (1, 2, 4, 8, 16, ... up to <see cref="MaxBatch"/>).</summary>
    public IReadOnlyList<int> BatchBuckets()
    {
        var list = new List<int>();
        for (int b = 1; b < MaxBatch; b *= 2) list.Add(b);
        list.Add(MaxBatch);
        return list;
    }

    /// <summary>The environment variable <paramref name="name"/> is "1" or "true" (any case, trimmed): a switch that is off unless set.</summary>
    private static bool EnvironmentSaysOn(string name) => Environment.GetEnvironmentVariable(name)?.Trim().ToLowerInvariant() is "1" or "true";

    /// <summary>The environment variable <paramref name="name"/> is "0" or "false" (any case, trimmed): a switch that is on unless set so.</summary>
    private static bool EnvironmentSaysOff(string name) => Environment.GetEnvironmentVariable(name)?.Trim().ToLowerInvariant() is "0" or "false";

    public void Validate()
    {
        if (MaxSequences < 1 || MaxSequences > 4096) throw new ArgumentOutOfRangeException(nameof(MaxSequences), $"max sequences {MaxSequences} must be in [1, 4096]");
        if (MaxBatch < 1 || MaxBatch > MaxBatchLimit) throw new ArgumentOutOfRangeException(nameof(MaxBatch), $"max batch {MaxBatch} must be in [1, {MaxBatchLimit}]");
        if (FetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(FetchAheadBytes), $"bytes fetched ahead {FetchAheadBytes} must not be negative (0 turns it off)");
        if (OProjFetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(OProjFetchAheadBytes), $"o_proj's share of the bytes fetched ahead {OProjFetchAheadBytes} must not be negative (0: the router fetches them all)");
        if (ExpertsFetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(ExpertsFetchAheadBytes), $"the experts' share of the bytes fetched ahead {ExpertsFetchAheadBytes} must not be negative (0: none)");
        if (EarlyRoutingPrefetchBytes < 0) throw new ArgumentOutOfRangeException(nameof(EarlyRoutingPrefetchBytes), $"early routing's bytes prefetched per chosen expert {EarlyRoutingPrefetchBytes} must not be negative (0: none)");
        if (OProjEarlyFetchBytes < 0) throw new ArgumentOutOfRangeException(nameof(OProjEarlyFetchBytes), $"o_proj's bytes the qkv tiles prefetch {OProjEarlyFetchBytes} must not be negative (0 turns it off)");
        if (PrefillChunkTokens < 1 || PrefillChunkTokens > PrefillChunkSizing.MaxChunkTokens)
            throw new ArgumentOutOfRangeException(nameof(PrefillChunkTokens), $"prefill chunk (--max-num-batched-tokens) {PrefillChunkTokens} must be in [1, {PrefillChunkSizing.MaxChunkTokens}]");
        if (MaxOutputRows < MaxBatch || MaxOutputRows > Math.Max(PrefillChunkTokens, MaxBatch))
            throw new ArgumentOutOfRangeException(nameof(MaxOutputRows), $"max output rows {MaxOutputRows} must be in [{MaxBatch}, {Math.Max(PrefillChunkTokens, MaxBatch)}] (the decode batch .. the rows of a step)");
        if (PageSize < 1 || PageSize > 4096) throw new ArgumentOutOfRangeException(nameof(PageSize), $"KV page size {PageSize} must be in [1, 4096]");
        if (ContextLength is < 1) throw new ArgumentOutOfRangeException(nameof(ContextLength), $"--ctx-size {ContextLength} must be positive");
        if (GpuMemoryBytes is <= 0) throw new ArgumentOutOfRangeException(nameof(GpuMemoryBytes), $"--gpu-memory {GpuMemoryBytes} must be positive");
        if (GpuMemoryUtilization is double u && !(u > 0 && u <= 1))
            throw new ArgumentOutOfRangeException(nameof(GpuMemoryUtilization), $"--gpu-memory-utilization {u.ToString(System.Globalization.CultureInfo.InvariantCulture)} must be in (0, 1]");
        if (GpuMemoryBytes is not null && GpuMemoryUtilization is not null)
            throw new ArgumentException("give --gpu-memory (the pools' budget) or --gpu-memory-utilization (a fraction of the device's memory), not both");
    }
}
