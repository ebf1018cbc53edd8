using System.Globalization;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>AttnDecodeParams</c> in kernels/attention_decode.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AttnDecodeParams
{
    public DevicePtr Q;              // [seqs, QStride] bf16
    public DevicePtr KCache;         // [pages, PageSize, NumKvHeads, D] bf16
    public DevicePtr VCache;         // [pages, PageSize, NumKvHeads, D] bf16
    public DevicePtr BlockTable;     // [seqs, MaxPagesPerSeq] int32
    public DevicePtr ContextLens;    // [seqs] int32
    public DevicePtr PartialOut;     // [seqs, nH, Splits, D] fp32
    public DevicePtr PartialLse;     // [seqs, nH, Splits] fp32
    public DevicePtr Out;            // [seqs, OutStride] bf16
    public int Seqs;
    public int NumQHeads;
    public int NumKvHeads;
    public int PageSize;
    public int MaxPagesPerSeq;
    public int Splits;               // the grid's: the partials' stride (each row uses row_splits of them)
    public int QStride;
    public int OutStride;
    public float ScaleLog2;
    public int MinSplits;            // AttentionDecodeLaunchers.MinSplits: the one-CTA-per-SM share
}

/// <summary>Mirror of <c>AttnDecodeFusedParams</c> in kernels/attention_decode.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AttnDecodeFusedParams
{
    public DevicePtr Qkv;            // [seqs, QkvStride] bf16: q heads | k heads | v heads
    public DevicePtr QOut;           // [seqs, QOutStride] bf16, or null
    public DevicePtr KCache;         // [pages, PageSize, NumKvHeads, D]
    public DevicePtr VCache;         // [pages, PageSize, NumKvHeads, D]
    public DevicePtr QNormWeight;    // [D] bf16
    public DevicePtr KNormWeight;    // [D] bf16
    public DevicePtr InvFreq;        // [D/2] fp32, or [seqs, D/2] when InvFreqPerToken
    public DevicePtr Positions;      // [seqs] int32
    public DevicePtr SlotMapping;    // [seqs] int32, < 0: no cache write
    public DevicePtr BlockTable;     // [seqs, MaxPagesPerSeq] int32
    public DevicePtr ContextLens;    // [seqs] int32
    public DevicePtr PartialOut;     // [seqs, nH, Splits, D] fp32
    public DevicePtr PartialLse;     // [seqs, nH, Splits] fp32
    public DevicePtr Tickets;        // [seqs, NumKvHeads] int32, zero
    public DevicePtr Out;            // [seqs, OutStride] bf16
    public int Seqs;
    public int NumQHeads;
    public int NumKvHeads;
    public int PageSize;
    public int MaxPagesPerSeq;
    public int Splits;
    public int QkvStride;
    public int QOutStride;
    public int OutStride;
    public float ScaleLog2;
    public float Eps;
    public float AttentionScaling;
    public int InvFreqPerToken;
    public int MinSplits;            // AttentionDecodeLaunchers.MinSplits: the one-CTA-per-SM share
}

/// <summary>
/// The attention prologue that <see cref="AttentionDecodeLaunchers.DecodeFused"/> runs itself (what
/// <c>RopeLaunchers.QkNormRopeKvWrite</c> does for the same rows): the qkv projection rows, where q goes (null: nowhere),
/// the norm weights, RoPE tables and the new tokens' positions and cache slots; and the combine's tickets.
/// </summary>
public readonly record struct DecodeRopeArgs(
    DevicePtr Qkv, int QkvStride, DevicePtr QOut, int QOutStride, DevicePtr QNormWeight, DevicePtr KNormWeight, DevicePtr InvFreq,
    bool InvFreqPerRow, DevicePtr Positions, DevicePtr SlotMapping, float Eps, float AttentionScaling, DevicePtr Tickets);

/// <summary>Everything the decode attention needs besides the split choice, which the launcher makes.</summary>
public readonly record struct DecodeAttentionArgs(
    DevicePtr Q, int QStride, DevicePtr KCache, DevicePtr VCache, DevicePtr BlockTable, int MaxPagesPerSeq, int PageSize,
    DevicePtr ContextLens, int Seqs, int MaxContextLen, int NumQHeads, int NumKvHeads, DevicePtr Out, int OutStride,
    DevicePtr PartialOut, DevicePtr PartialLse, int WorkspaceSplits);

/// <summary>
/// Launchers for kernels/attention_decode.cu (flash decoding over the paged KV cache). The launcher chooses how many
/// splits of the context to run so the grid covers the multiprocessors once; the caller provides a workspace
/// for <see cref="DecodeAttentionArgs.WorkspaceSplits"/> splits (<see cref="WorkspaceBytes"/>). Nothing here allocates
/// or synchronises.
/// </summary>
public sealed class AttentionDecodeLaunchers
{
    public const string File = "attention_decode.cu";
    /// <summary>Keys per tile of the tensor-core split (attention_decode.cu's DEC_TILE: 4 warps x 16 keys).</summary>
    public const int TileKeys = 64;
    /// <summary>A split's key range is a multiple of this (DEC_ALIGN: one warp's 16 keys of a tile).</summary>
    public const int SplitAlignKeys = 16;
    public const int MaxGroup = 8;
    /// <summary>Head sizes of <see cref="DecodeFused"/> (rope.cu's).</summary>
    public static readonly int[] FusedHeadDims = [16, 32, 64, 128, 256];
    private readonly DeviceKernel _split, _combine;
    private readonly DeviceKernel? _fused;
    private readonly IDevice _device;

    /// <summary><paramref name="kvFp8"/>: the KV cache holds FP8 E4M3 codes (attention_decode.cu's KV_FP8 variant).</summary>
    public AttentionDecodeLaunchers(KernelLoader loader, int headDim = 128, bool kvFp8 = false)
    {
        if ((headDim % 32 != 0 && headDim != 16) || headDim <= 0 || headDim > 256)
            throw new ArgumentException($"attention_decode.cu: head_dim {headDim} must be 16 or a multiple of 32, at most 256", nameof(headDim));
        HeadDim = headDim;
        _device = loader.Device;
        var defines = new Dictionary<string, string> { ["HEAD_DIM"] = headDim.ToString(CultureInfo.InvariantCulture), ["KV_FP8"] = kvFp8 ? "1" : "0" };
        _split = loader.Get(File, "attn_decode_split", defines);
        _combine = loader.Get(File, "attn_decode_combine", defines);
        if (FusedHeadDims.Contains(headDim)) _fused = loader.Get(File, "attn_decode_fused", defines);
    }

    public int HeadDim { get; }

    /// <summary>Bytes of (partial output, partial lse) workspace for <paramref name="splits"/> splits.</summary>
    public long WorkspaceBytes(int seqs, int numQHeads, int splits, out long lseBytes)
    {
        lseBytes = (long)seqs * numQHeads * splits * sizeof(float);
        return lseBytes * HeadDim;
    }

    /// <summary>Longest split in 64-key tiles before the context is cut into more splits (see <see cref="PlanSplits"/>).</summary>
    public const int MaxTilesPerSplit = 8;

    /// <summary>
    /// The split count for a GPU of <paramref name="multiprocessors"/> SMs, unbounded by any workspace: at least one CTA
    /// per multiprocessor; at most <see cref="MaxTilesPerSplit"/> tiles per split, so that a long context runs several
    /// CTAs per SM, each with few dependent tile loads, until <see cref="FusedMaxCombineSplits"/> splits (the most the
    /// fused kernel's last CTA combines), beyond which the splits grow longer instead: at 4 KV heads those 256 CTAs are
    /// DRAM-bound (a tile costs a CTA about 1.3 us of round trip and issue against 2.9 us of its share of the DRAM time
    /// on an H100), so more splits would only add the separate combine node (docs/kernels.md "Decode attention"); at
    /// most one split per tile (a shorter split saves no round trip and adds a split to the combine).
    /// </summary>
    public static int PlanSplits(int multiprocessors, int seqs, int numKvHeads, int maxContextLen)
    {
        int target = MinSplits(multiprocessors, seqs, numKvHeads);
        int tiles = Math.Max(1, (maxContextLen + TileKeys - 1) / TileKeys);
        int forLength = Math.Min((tiles + MaxTilesPerSplit - 1) / MaxTilesPerSplit, FusedMaxCombineSplits);
        return Math.Max(1, Math.Min(tiles, Math.Max(target, forLength)));
    }

    /// <summary>
    /// Splits that give every multiprocessor a CTA over <paramref name="seqs"/> rows and <paramref name="numKvHeads"/> KV
    /// heads: the floor of <see cref="PlanSplits"/>. The kernels take it as <c>min_splits</c> and plan each row's splits
    /// for its own length the same way (attention_decode.cu's row_splits), within the grid planned for the longest context:
    /// a graph captured for a 40k context then runs a 1k row on the splits a 1k context needs, the other CTAs exiting at
    /// once, and the combine reads only those splits' partials.
    /// </summary>
    public static int MinSplits(int multiprocessors, int seqs, int numKvHeads)
    {
        int ctas = Math.Max(1, seqs * numKvHeads);
        return (Math.Max(1, multiprocessors) + ctas - 1) / ctas;
    }

    private int MinSplitsHere(int seqs, int numKvHeads) => MinSplits(_device.Info.MultiprocessorCount, seqs, numKvHeads);

    /// <summary>The split count the launcher will use: <see cref="PlanSplits"/> for this device's SM count, at most <paramref name="workspaceSplits"/>.</summary>
    public int ChooseSplits(int seqs, int numKvHeads, int maxContextLen, int workspaceSplits) =>
        Math.Max(1, Math.Min(PlanSplits(_device.Info.MultiprocessorCount, seqs, numKvHeads, maxContextLen), Math.Max(1, workspaceSplits)));

    /// <summary>Bytes of the ticket array <see cref="DecodeFused"/> needs for <paramref name="seqs"/> rows (zero it once).</summary>
    public static long TicketBytes(int seqs, int numKvHeads) => (long)seqs * numKvHeads * sizeof(int);

    /// <summary>Runs attention for one query token per sequence; returns the split count used.</summary>
    public int Decode(DeviceStream stream, in DecodeAttentionArgs a)
    {
        int splits = Check(a);
        if (splits == 0) return 0;
        var p = new AttnDecodeParams
        {
            Q = a.Q, KCache = a.KCache, VCache = a.VCache, BlockTable = a.BlockTable, ContextLens = a.ContextLens,
            PartialOut = a.PartialOut, PartialLse = a.PartialLse, Out = a.Out, Seqs = a.Seqs, NumQHeads = a.NumQHeads,
            NumKvHeads = a.NumKvHeads, PageSize = a.PageSize, MaxPagesPerSeq = a.MaxPagesPerSeq, Splits = splits,
            QStride = a.QStride, OutStride = a.OutStride, ScaleLog2 = ScaleLog2, MinSplits = MinSplitsHere(a.Seqs, a.NumKvHeads),
        };
        var args = new KernelArgs(stackalloc byte[160], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_split, new LaunchConfig(new Dim3((uint)splits, (uint)a.NumKvHeads, (uint)a.Seqs), 128), stream, args);
        if (splits > 1)
            _device.Launch(_combine, new LaunchConfig(new Dim3((uint)a.Seqs, (uint)a.NumQHeads), 256, ProgrammaticDependentLaunch: true), stream, args);
        return splits;
    }

    /// <summary>
    /// The checked parameter block of <see cref="DecodeFused"/>'s launch (shared with the persistent attention block,
    /// <see cref="PersistentDecodeLaunchers"/>, whose attention tiles are that kernel's CTAs): its <c>Splits</c> is the grid's
    /// split count. <paramref name="combineInKernel"/>: the last CTA of each (row, KV head) combines (at most
    /// <see cref="FusedMaxCombineSplits"/> splits); otherwise the tickets are null and attn_decode_combine must run after.
    /// </summary>
    public AttnDecodeFusedParams FusedParams(in DecodeAttentionArgs a, in DecodeRopeArgs rope, out bool combineInKernel)
    {
        if (_fused is null)
            throw new NotSupportedException($"attn_decode_fused: head_dim {HeadDim} is not supported (supported: {string.Join(", ", FusedHeadDims)})");
        if (rope.QkvStride < (a.NumQHeads + 2 * a.NumKvHeads) * HeadDim || rope.QkvStride % 8 != 0)
            throw new ArgumentException($"attn_decode_fused: qkv stride {rope.QkvStride} must be a multiple of 8 and at least {a.NumQHeads + 2 * a.NumKvHeads} heads * {HeadDim}", nameof(rope));
        if (!rope.QOut.IsNull && (rope.QOutStride < a.NumQHeads * HeadDim || rope.QOutStride % 8 != 0))
            throw new ArgumentException($"attn_decode_fused: q_out stride {rope.QOutStride} must be a multiple of 8 and at least {a.NumQHeads} heads * {HeadDim}", nameof(rope));
        if (rope.Qkv.IsNull || a.KCache.IsNull || a.VCache.IsNull || rope.QNormWeight.IsNull || rope.KNormWeight.IsNull
            || rope.InvFreq.IsNull || rope.Positions.IsNull || rope.SlotMapping.IsNull)
            throw new ArgumentException("attn_decode_fused: a required pointer is null", nameof(rope));
        int splits = Math.Max(1, Check(a));
        combineInKernel = splits <= FusedMaxCombineSplits;
        if (splits > 1 && combineInKernel && rope.Tickets.IsNull) throw new ArgumentException("attn_decode_fused: split decoding needs the ticket array", nameof(rope));
        var p = new AttnDecodeFusedParams
        {
            Qkv = rope.Qkv, QOut = rope.QOut, KCache = a.KCache, VCache = a.VCache, QNormWeight = rope.QNormWeight,
            KNormWeight = rope.KNormWeight, InvFreq = rope.InvFreq, Positions = rope.Positions, SlotMapping = rope.SlotMapping,
            BlockTable = a.BlockTable, ContextLens = a.ContextLens, PartialOut = a.PartialOut, PartialLse = a.PartialLse,
            Tickets = combineInKernel ? rope.Tickets : DevicePtr.Null, Out = a.Out, Seqs = a.Seqs, NumQHeads = a.NumQHeads, NumKvHeads = a.NumKvHeads,
            PageSize = a.PageSize, MaxPagesPerSeq = a.MaxPagesPerSeq, Splits = splits, QkvStride = rope.QkvStride,
            QOutStride = rope.QOutStride, OutStride = a.OutStride, ScaleLog2 = ScaleLog2, Eps = rope.Eps,
            AttentionScaling = rope.AttentionScaling, InvFreqPerToken = rope.InvFreqPerRow ? 1 : 0, MinSplits = MinSplitsHere(a.Seqs, a.NumKvHeads),
        };
        return p;
    }

    /// <summary>
    /// q/k norm + RoPE + the KV write of each row's new token, the attention and the split combine in one launch
    /// (attn_decode_fused; docs/kernels.md, "Fusions"), with programmatic dependent launch. Every row must be its
    /// sequence's only new token in the step: its keys 0..len-2 are in the cache already and key len-1 (position
    /// positions[row], written at slot_mapping[row]) is its own. <c>a.Q</c> is ignored (q comes from
    /// <c>rope.Qkv</c>); <c>a.KCache</c> / <c>a.VCache</c> are written. One launch, or two with more than
    /// <see cref="FusedMaxCombineSplits"/> splits. Returns the split count used.
    /// </summary>
    public int DecodeFused(DeviceStream stream, in DecodeAttentionArgs a, in DecodeRopeArgs rope)
    {
        var p = FusedParams(a, rope, out bool combineInKernel);
        int splits = p.Splits;
        if (a.Seqs == 0) return 0;
        var args = new KernelArgs(stackalloc byte[192], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_fused!, new LaunchConfig(new Dim3((uint)splits, (uint)a.NumKvHeads, (uint)a.Seqs), 128, ProgrammaticDependentLaunch: true), stream, args);
        if (!combineInKernel)
        {
            var c = new AttnDecodeParams
            {
                ContextLens = a.ContextLens, PartialOut = a.PartialOut, PartialLse = a.PartialLse, Out = a.Out, Seqs = a.Seqs, NumQHeads = a.NumQHeads,
                NumKvHeads = a.NumKvHeads, PageSize = a.PageSize, MaxPagesPerSeq = a.MaxPagesPerSeq, Splits = splits, OutStride = a.OutStride,
                MinSplits = MinSplitsHere(a.Seqs, a.NumKvHeads),
            };
            var cargs = new KernelArgs(stackalloc byte[160], stackalloc nint[1]);
            cargs.Add(c);
            _device.Launch(_combine, new LaunchConfig(new Dim3((uint)a.Seqs, (uint)a.NumQHeads), 256, ProgrammaticDependentLaunch: true), stream, cargs);
        }
        return splits;
    }

    /// <summary>
    /// Most splits <see cref="DecodeFused"/> combines in its last CTA per (row, KV head) (attention_decode.cu's
    /// FUSED_MAX_COMBINE_SPLITS); more splits (<see cref="PlanSplits"/> asks for them only to give every SM a CTA, when
    /// rows x KV heads is below SMs / 64) run attn_decode_combine after it.
    /// </summary>
    public const int FusedMaxCombineSplits = 64;

    private float ScaleLog2 => (float)(1.0 / Math.Sqrt(HeadDim) * 1.4426950408889634);

    /// <summary>Checks the arguments both entry points share; returns the split count (0: no rows).</summary>
    private int Check(in DecodeAttentionArgs a)
    {
        if (a.Seqs < 0) throw new ArgumentOutOfRangeException(nameof(a), $"attn_decode: seqs {a.Seqs} is negative");
        if (a.NumKvHeads <= 0 || a.NumQHeads % a.NumKvHeads != 0 || a.NumQHeads / a.NumKvHeads > MaxGroup)
            throw new ArgumentException($"attn_decode: {a.NumQHeads} query heads over {a.NumKvHeads} KV heads: the group must be whole and at most {MaxGroup}", nameof(a));
        if (a.PageSize <= 0 || a.MaxPagesPerSeq <= 0) throw new ArgumentException($"attn_decode: page size {a.PageSize} / pages per sequence {a.MaxPagesPerSeq} must be positive", nameof(a));
        if ((long)a.MaxPagesPerSeq * a.PageSize < a.MaxContextLen)
            throw new ArgumentException($"attn_decode: max context {a.MaxContextLen} exceeds the block table ({a.MaxPagesPerSeq} pages of {a.PageSize})", nameof(a));
        if (a.QStride < a.NumQHeads * HeadDim || a.OutStride < a.NumQHeads * HeadDim || a.QStride % 8 != 0 || a.OutStride % 2 != 0)
            throw new ArgumentException($"attn_decode: strides q {a.QStride} / out {a.OutStride} too short for {a.NumQHeads} heads of {HeadDim} (q stride a multiple of 8)", nameof(a));
        if (a.Seqs == 0) return 0;
        int splits = ChooseSplits(a.Seqs, a.NumKvHeads, a.MaxContextLen, a.WorkspaceSplits);
        if (splits > 1 && (a.PartialOut.IsNull || a.PartialLse.IsNull))
            throw new ArgumentException("attn_decode: split decoding needs the partial-output workspace", nameof(a));
        return splits;
    }
}
