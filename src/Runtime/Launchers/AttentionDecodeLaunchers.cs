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
    public int Splits;
    public int QStride;
    public int OutStride;
    public float ScaleLog2;
}

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
    public const int TileKeys = 32;
    public const int MaxGroup = 8;
    private readonly DeviceKernel _split, _combine;
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
    }

    public int HeadDim { get; }

    /// <summary>Bytes of (partial output, partial lse) workspace for <paramref name="splits"/> splits.</summary>
    public long WorkspaceBytes(int seqs, int numQHeads, int splits, out long lseBytes)
    {
        lseBytes = (long)seqs * numQHeads * splits * sizeof(float);
        return lseBytes * HeadDim;
    }

    /// <summary>Longest split in 32-key tiles before the context is cut into more splits (see <see cref="PlanSplits"/>).</summary>
    public const int MaxTilesPerSplit = 8;

    /// <summary>
    /// The split count for a GPU of <paramref name="multiprocessors"/> SMs, unbounded by any workspace: at least one CTA
    /// per multiprocessor, and at most <see cref="MaxTilesPerSplit"/> tiles per split so that a long context runs
    /// several CTAs per SM, each with few dependent tile loads (bytes in flight grow with the context; docs/kernels.md
    /// "attention_decode"); at most one split per tile.
    /// </summary>
    public static int PlanSplits(int multiprocessors, int seqs, int numKvHeads, int maxContextLen)
    {
        int ctas = Math.Max(1, seqs * numKvHeads);
        int target = (Math.Max(1, multiprocessors) + ctas - 1) / ctas;
        int tiles = Math.Max(1, (maxContextLen + TileKeys - 1) / TileKeys);
        int forLength = (tiles + MaxTilesPerSplit - 1) / MaxTilesPerSplit;
        return Math.Max(1, Math.Min(tiles, Math.Max(target, forLength)));
    }

    /// <summary>The split count the launcher will use: <see cref="PlanSplits"/> for this device's SM count, at most <paramref name="workspaceSplits"/>.</summary>
    public int ChooseSplits(int seqs, int numKvHeads, int maxContextLen, int workspaceSplits) =>
        Math.Max(1, Math.Min(PlanSplits(_device.Info.MultiprocessorCount, seqs, numKvHeads, maxContextLen), Math.Max(1, workspaceSplits)));

    /// <summary>Runs attention for one query token per sequence; returns the split count used.</summary>
    public int Decode(DeviceStream stream, in DecodeAttentionArgs a)
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
        var p = new AttnDecodeParams
        {
            Q = a.Q, KCache = a.KCache, VCache = a.VCache, BlockTable = a.BlockTable, ContextLens = a.ContextLens,
            PartialOut = a.PartialOut, PartialLse = a.PartialLse, Out = a.Out, Seqs = a.Seqs, NumQHeads = a.NumQHeads,
            NumKvHeads = a.NumKvHeads, PageSize = a.PageSize, MaxPagesPerSeq = a.MaxPagesPerSeq, Splits = splits,
            QStride = a.QStride, OutStride = a.OutStride, ScaleLog2 = (float)(1.0 / Math.Sqrt(HeadDim) * 1.4426950408889634),
        };
        var args = new KernelArgs(stackalloc byte[160], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_split, new LaunchConfig(new Dim3((uint)splits, (uint)a.NumKvHeads, (uint)a.Seqs), 128), stream, args);
        if (splits > 1)
            _device.Launch(_combine, new LaunchConfig(new Dim3((uint)a.Seqs, (uint)a.NumQHeads), 256), stream, args);
        return splits;
    }
}
