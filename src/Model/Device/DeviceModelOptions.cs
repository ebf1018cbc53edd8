namespace Qwen3Cuda.Model.Device;

/// <summary>How the device model sizes its pools. Null fields are derived (see <see cref="MemoryPlan"/>).</summary>
public sealed record DeviceModelOptions
{
    /// <summary>Tokens per sequence (--ctx-size). Null: as many as the memory left allows, at most max_position_embeddings.</summary>
    public int? ContextLength { get; init; }
    /// <summary>Sequences held at once (KV cache of each).</summary>
    public int MaxSequences { get; init; } = 1;
    /// <summary>Sequences decoded in one step (the largest graph bucket).</summary>
    public int MaxBatch { get; init; } = 8;
    /// <summary>Rows with an output (logits or a sampled token) one step may have. Null: <see cref="MaxBatch"/>.</summary>
    public int? MaxOutputRows { get; init; }
    /// <summary>Rows with an output one step may have (<see cref="MaxOutputRows"/> or <see cref="MaxBatch"/>).</summary>
    public int OutputRows => MaxOutputRows ?? MaxBatch;
    /// <summary>Tokens per prefill chunk: a step holds at most max(this, MaxBatch) rows.</summary>
    public int PrefillChunkTokens { get; init; } = 512;
    /// <summary>Tokens per KV page.</summary>
    public int PageSize { get; init; } = 16;
    /// <summary>Memory the plan may use (--gpu-memory). Null: the device's free memory.</summary>
    public long? GpuMemoryBytes { get; init; }
    /// <summary>Capture decode steps as CUDA graphs (one per batch bucket) and replay them.</summary>
    public bool UseGraphs { get; init; } = true;
    /// <summary>Prefill chunks of more than 8 tokens use the tensor-core flash attention (attention_prefill.cu, on by
    /// default). It keeps the fp32 softmax weights to ~2^-17 by splitting P into two bf16 mma operands (hi + lo);
    /// off: the decode kernel with one query row per attention row (context lengths p0+1..p0+T make it causal),
    /// which reads the keys once per query row.</summary>
    public bool FlashPrefillAttention { get; init; } = true;
    /// <summary>Progress of the weight upload (bytes done, total, tensor).</summary>
    public Action<Runtime.Memory.UploadProgress>? LoadProgress { get; init; }

    /// <summary>The decode batch buckets a graph is captured for (1, 2, 4, 8 up to <see cref="MaxBatch"/>).</summary>
    public IReadOnlyList<int> BatchBuckets()
    {
        var list = new List<int>();
        for (int b = 1; b < MaxBatch; b *= 2) list.Add(b);
        list.Add(MaxBatch);
        return list;
    }

    public void Validate()
    {
        if (MaxSequences < 1 || MaxSequences > 4096) throw new ArgumentOutOfRangeException(nameof(MaxSequences), $"max sequences {MaxSequences} must be in [1, 4096]");
        if (MaxBatch < 1 || MaxBatch > 8) throw new ArgumentOutOfRangeException(nameof(MaxBatch), $"max batch {MaxBatch} must be in [1, 8] (the decode GEMV takes up to 8 tokens)");
        if (PrefillChunkTokens < 1 || PrefillChunkTokens > 8192) throw new ArgumentOutOfRangeException(nameof(PrefillChunkTokens), $"prefill chunk {PrefillChunkTokens} must be in [1, 8192]");
        if (MaxOutputRows < MaxBatch || MaxOutputRows > Math.Max(PrefillChunkTokens, MaxBatch))
            throw new ArgumentOutOfRangeException(nameof(MaxOutputRows), $"max output rows {MaxOutputRows} must be in [{MaxBatch}, {Math.Max(PrefillChunkTokens, MaxBatch)}] (the decode batch .. the rows of a step)");
        if (PageSize < 1 || PageSize > 4096) throw new ArgumentOutOfRangeException(nameof(PageSize), $"KV page size {PageSize} must be in [1, 4096]");
        if (ContextLength is < 1) throw new ArgumentOutOfRangeException(nameof(ContextLength), $"--ctx-size {ContextLength} must be positive");
        if (GpuMemoryBytes is <= 0) throw new ArgumentOutOfRangeException(nameof(GpuMemoryBytes), $"--gpu-memory {GpuMemoryBytes} must be positive");
    }
}
