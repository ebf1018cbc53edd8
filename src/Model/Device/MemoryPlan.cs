using System.Globalization;
using System.Text;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>Thrown when weights + KV cache + workspace do not fit the memory budget; the message says how much is missing.</summary>
public sealed class ModelDoesNotFitException(string message) : Runtime.Qwen3CudaException(message)
{
    public override Runtime.ErrorKind Kind => Runtime.ErrorKind.OutOfMemory;
}

/// <summary>
/// What the device model will allocate, computed from config.json ALONE (no weight is read): the weight
/// arena (<see cref="WeightLayout"/>), the workspace (<see cref="WorkspaceLayout"/>) and the paged KV cache.
/// The KV cache is ONE pool of pages shared by all sequences (docs/memory.md): it takes the memory the budget has left
/// after the weights and the workspace, at most what MaxSequences sequences at full context could ever use (+ one
/// scratch page). Every sequence may grow to <see cref="ContextLength"/> tokens (--ctx-size / --max-model-len, by
/// default max_position_embeddings), whatever MaxSequences is, as long as pages are free; the engine admits and
/// preempts by free pages. The plan does not fit when the pool cannot hold even one sequence at full context.
/// The budget is the device's free memory measured after the fixed allocations (context, kernel modules, stream)
/// less a reserve that stays free for what comes later (graph instantiation, launch-time driver allocations, other
/// processes): (1 - --gpu-memory-utilization) x total, by default max(1 GiB, 3% of total) (docs/memory.md).
/// </summary>
public sealed class MemoryPlan
{
    public ModelConfig Config { get; }
    public DeviceModelOptions Options { get; }
    public WeightLayout Weights { get; }
    public WorkspaceLayout Workspace { get; }
    /// <summary>Bytes the pools may use: free memory less <see cref="ReserveBytes"/>, or --gpu-memory.</summary>
    public long BudgetBytes { get; }
    /// <summary>The device memory the budget came from (null: --gpu-memory or an explicit budget).</summary>
    public (long FreeBytes, long TotalBytes)? DeviceMemory { get; private init; }
    /// <summary>Memory kept free beyond the pools (0 with --gpu-memory or an explicit budget).</summary>
    public long ReserveBytes { get; private init; }
    /// <summary>Tokens one sequence may hold (the model's max length: --ctx-size, or max_position_embeddings).</summary>
    public int ContextLength { get; }
    /// <summary>Pages in the shared pool, the scratch page included (when the plan does not fit: one sequence at full context + scratch).</summary>
    public int KvPages { get; }
    /// <summary>Pages one sequence at full context takes (the block table's length).</summary>
    public int PagesPerSequence => Workspace.MaxPagesPerSeq;
    /// <summary>Tokens the pool holds (its pages less the scratch page).</summary>
    public long PoolTokens => (long)(KvPages - 1) * Options.PageSize;
    /// <summary>Sequences the pool can hold at once at full context (vLLM's "maximum concurrency"); more run while they are shorter.</summary>
    public double MaxConcurrencyAtFullContext => (double)PoolTokens / ContextLength;
    /// <summary>The pool is as large as MaxSequences sequences at full context could ever use (the budget had room to spare).</summary>
    public bool PoolIsCapped => KvPages == MaxUsefulPages(Options, PagesPerSequence);
    public long KvBytesPerToken { get; }
    /// <summary>Bytes of one page: K and V of every layer for PageSize tokens.</summary>
    public long KvBytesPerPage { get; }
    public long KvBytes { get; }
    public long TotalBytes => Weights.TotalBytes + KvBytes + Workspace.TotalBytes;
    public long FreeBytes => BudgetBytes - TotalBytes;
    public bool Fits => FreeBytes >= 0;
    /// <summary>The SM count the workspace was sized for, and whether the checkpoint has its own lm_head (the inputs of Compute).</summary>
    public int Multiprocessors { get; }
    public bool CheckpointHasLmHead { get; }

    private MemoryPlan(ModelConfig c, DeviceModelOptions o, WeightLayout w, WorkspaceLayout ws, long budget, int ctx, int pages, int multiprocessors, bool hasLmHead)
    {
        Config = c; Options = o; Weights = w; Workspace = ws; BudgetBytes = budget; ContextLength = ctx; KvPages = pages;
        Multiprocessors = multiprocessors; CheckpointHasLmHead = hasLmHead;
        KvBytesPerToken = KvBytesPerTokenOf(c, o.KvCacheDtype);
        KvBytesPerPage = PageBytesOf(c, o);
        KvBytes = pages * KvBytesPerPage;
    }

    /// <summary>K and V of every layer for one page of <see cref="DeviceModelOptions.PageSize"/> tokens.</summary>
    public static long PageBytesOf(ModelConfig c, DeviceModelOptions o) =>
        2L * c.NumHiddenLayers * PagedKvCache.PageBytes(c.NumKeyValueHeads, c.HeadDim, o.PageSize, o.KvCacheDtype);

    /// <summary>The most pages the pool takes: every sequence at full context, + the scratch page (at most int.MaxValue).</summary>
    static int MaxUsefulPages(DeviceModelOptions o, int pagesPerSequence) => (int)Math.Min((long)o.MaxSequences * pagesPerSequence + 1, int.MaxValue);

    /// <summary>K and V of every layer: L x 2 x nKV x D x 2 bytes (96 KiB for Qwen3-30B-A3B).</summary>
    public static long KvBytesPerTokenOf(ModelConfig c, KvCacheDtype dtype = KvCacheDtype.Bf16) => 2L * c.NumHiddenLayers * c.NumKeyValueHeads * c.HeadDim * dtype.ElementBytes();

    /// <summary>The default reserve: max(1 GiB, 3% of the device's total memory).</summary>
    public static long DefaultReserveBytes(long totalBytes) => Math.Max(1L << 30, (long)Math.Ceiling(totalBytes * 0.03));

    /// <summary>The reserve for <paramref name="o"/>: (1 - GpuMemoryUtilization) x total, or <see cref="DefaultReserveBytes"/>.</summary>
    public static long ReserveFor(DeviceModelOptions o, long totalBytes) =>
        o.GpuMemoryUtilization is double u ? (long)Math.Ceiling((1 - u) * totalBytes) : DefaultReserveBytes(totalBytes);

    /// <summary>
    /// The plan for a device with <paramref name="memory"/> free and total bytes, measured after the fixed allocations:
    /// budget = free - reserve (<see cref="ReserveFor"/>); options.GpuMemoryBytes, when set, is the budget instead.
    /// Never throws for lack of memory: check <see cref="Fits"/> or call <see cref="ThrowIfDoesNotFit"/>.
    /// </summary>
    public static MemoryPlan Compute(ModelConfig c, DeviceModelOptions o, (long FreeBytes, long TotalBytes) memory, int multiprocessors = 132, bool checkpointHasLmHead = false)
    {
        o.Validate();
        if (o.GpuMemoryBytes is not null) return Compute(c, o, o.GpuMemoryBytes.Value, multiprocessors, checkpointHasLmHead);
        long reserve = ReserveFor(o, memory.TotalBytes);
        var plan = Compute(c, o, memory.FreeBytes - reserve, multiprocessors, checkpointHasLmHead);
        return new MemoryPlan(plan.Config, o, plan.Weights, plan.Workspace, plan.BudgetBytes, plan.ContextLength, plan.KvPages, multiprocessors, checkpointHasLmHead)
        {
            DeviceMemory = memory, ReserveBytes = reserve,
        };
    }

    /// <summary>
    /// The plan for an explicit budget of <paramref name="budgetBytes"/> for the pools, no reserve (options.GpuMemoryBytes wins
    /// when set). Never throws for lack of memory: check <see cref="Fits"/> or call <see cref="ThrowIfDoesNotFit"/>.
    /// </summary>
    public static MemoryPlan Compute(ModelConfig c, DeviceModelOptions o, long budgetBytes, int multiprocessors = 132, bool checkpointHasLmHead = false)
    {
        o.Validate();
        long budget = o.GpuMemoryBytes ?? budgetBytes;
        var weights = new WeightLayout(c, checkpointHasLmHead, foldedRouters: o.EarlyRouting);
        int rows = Math.Max(o.PrefillChunkTokens, o.MaxBatch);
        int ctx = o.ContextLength ?? c.MaxPositionEmbeddings;
        var ws = WorkspaceLayout.Compute(c, rows, o.MaxBatch, o.OutputRows, ctx, o.PageSize, multiprocessors);
        // The pool: what the budget leaves after the weights and the workspace, at most every sequence at full context (+ scratch),
        // at least one sequence at full context (+ scratch): less than that does not fit, and the plan reports it at that size.
        long pageBytes = PageBytesOf(c, o);
        long left = budget - weights.TotalBytes - ws.TotalBytes;
        long fromBudget = left > 0 ? left / pageBytes : 0;
        long least = ws.MaxPagesPerSeq + 1L, most = MaxUsefulPages(o, ws.MaxPagesPerSeq);
        int pages = (int)Math.Clamp(fromBudget, least, Math.Max(least, most));
        return new MemoryPlan(c, o, weights, ws, budget, ctx, pages, multiprocessors, checkpointHasLmHead);
    }

    /// <summary>"model needs 61.2 GiB (weights 56.9 GiB + KV 3.0 GiB for one sequence of 32768 tokens + workspace 1.3 GiB) but
    /// --gpu-memory is 40.0 GiB: 21.2 GiB missing", what to change, then what would fit (<see cref="FitAdvice.Describe"/>).</summary>
    public void ThrowIfDoesNotFit()
    {
        if (Fits) return;
        string budget = Options.GpuMemoryBytes is not null ? $"--gpu-memory is {ByteSize.Format(BudgetBytes)}"
            : DeviceMemory is var (free, total)
                ? $"the device has {ByteSize.Format(free)} free of {ByteSize.Format(total)} and keeps {ByteSize.Format(ReserveBytes)} free ({ReserveText()})"
                : $"the budget is {ByteSize.Format(BudgetBytes)}";
        string ctxSource = Options.ContextLength is null ? $"max_position_embeddings {ContextLength}" : $"--ctx-size {ContextLength}";
        string more = Options.GpuMemoryBytes is not null ? "a larger --gpu-memory"
            : Options.GpuMemoryUtilization is double u ? string.Create(CultureInfo.InvariantCulture, $"a higher --gpu-memory-utilization (now {u:0.###})")
            : "--gpu-memory-utilization closer to 1";
        throw new ModelDoesNotFitException(
            $"model needs {ByteSize.Format(TotalBytes)} (weights {ByteSize.Format(Weights.TotalBytes)} + KV {ByteSize.Format(KvBytes)} " +
            $"for one sequence of {ContextLength} tokens + workspace {ByteSize.Format(Workspace.TotalBytes)}) " +
            $"but {budget}: {ByteSize.Format(-FreeBytes)} missing. The KV cache must hold at least one sequence of the full context " +
            $"({ctxSource}): lower it with --ctx-size (--max-model-len), or give the pool more memory with {more}. {FitAdvice.Describe(this)}");
    }

    private string ReserveText() => Options.GpuMemoryUtilization is double u
        ? string.Create(CultureInfo.InvariantCulture, $"--gpu-memory-utilization {u:0.###}: {1 - u:0.###} of total")
        : "max(1 GiB, 3% of total); --gpu-memory-utilization U keeps (1 - U) of total";

    /// <summary>The plan as the lines `info --model` prints.</summary>
    public string Describe()
    {
        var c = Config;
        var sb = new StringBuilder();
        void Line(string name, string value) => sb.Append(CultureInfo.InvariantCulture, $"  {name,-22}{value}\n");
        string experts = c.IsMoeModel ? $"{c.NumExperts} experts top-{c.NumExpertsPerTok} (I {c.MoeIntermediateSize}), " : "";
        sb.Append(CultureInfo.InvariantCulture,
            $"Model: {c.ModelType}, {c.NumHiddenLayers} layers, hidden {c.HiddenSize}, heads {c.NumAttentionHeads}/{c.NumKeyValueHeads} x {c.HeadDim}, {experts}vocab {c.VocabSize}, {Weights.ParameterCount / 1e9:F2} B parameters\n");
        sb.Append("Memory plan (from config.json; no weights read):\n");
        Line("weights", $"{ByteSize.Format(Weights.TotalBytes),12}  ({Weights.Tensors.Count} device tensors, {Weights.Format.Name}, one arena)");
        Line("KV per token", $"{ByteSize.Format(KvBytesPerToken),12}  ({c.NumHiddenLayers} layers x K,V x {c.NumKeyValueHeads} heads x {c.HeadDim} x {Options.KvCacheDtype.Name()})");
        string capped = PoolIsCapped ? $"; all {Options.MaxSequences} sequence(s) at full context" : "";
        Line("KV cache", $"{ByteSize.Format(KvBytes),12}  (one pool of {KvPages - 1} pages of {Options.PageSize} = {PoolTokens} tokens + a scratch page{capped})");
        Line("context", $"{ContextLength,12}  tokens per sequence ({(Options.ContextLength is null ? "max_position_embeddings" : "--ctx-size")}), up to {Options.MaxSequences} sequence(s)");
        Line("max concurrency", string.Create(CultureInfo.InvariantCulture,
            $"{MaxConcurrencyAtFullContext,11:0.00}x  (at {ContextLength} tokens per sequence; shorter sequences share the pool, the engine admits by free pages)"));
        Line("workspace", $"{ByteSize.Format(Workspace.TotalBytes),12}  (prefill chunk {Options.PrefillChunkTokens} tokens, decode batch {Options.MaxBatch}, " +
            $"block tables {ByteSize.Format(Workspace.BlockTableBytes)})");
        Line("total", $"{ByteSize.Format(TotalBytes),12}");
        if (DeviceMemory is var (free, total))
        {
            Line("device memory", $"{ByteSize.Format(free),12}  free of {ByteSize.Format(total)}");
            Line("reserve", $"{ByteSize.Format(ReserveBytes),12}  ({ReserveText()})");
        }
        Line(Options.GpuMemoryBytes is null ? "budget" : "--gpu-memory", $"{ByteSize.Format(BudgetBytes),12}");
        Line(Fits ? "free" : "MISSING", $"{ByteSize.Format(Math.Abs(FreeBytes)),12}");
        return sb.ToString();
    }
}
