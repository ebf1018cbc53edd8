using System.Globalization;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>AttnPrefillParams</c> in kernels/attention_prefill.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AttnPrefillParams
{
    public DevicePtr Q;              // [totalQ, QStride] bf16
    public DevicePtr KCache;         // [pages, PageSize, NumKvHeads, D] bf16
    public DevicePtr VCache;         // [pages, PageSize, NumKvHeads, D] bf16
    public DevicePtr BlockTable;     // [Seqs, MaxPagesPerSeq] int32
    public DevicePtr ContextLens;    // [Seqs] int32 (this chunk included)
    public DevicePtr QStart;         // [Seqs + 1] int32
    public DevicePtr Out;            // [totalQ, OutStride] bf16
    public int Seqs;
    public int NumQHeads;
    public int NumKvHeads;
    public int PageSize;
    public int MaxPagesPerSeq;
    public int QStride;
    public int OutStride;
    public float ScaleLog2;
}

/// <summary>
/// Launchers for kernels/attention_prefill.cu: causal flash attention (tensor cores) over the paged KV cache, for
/// packed prefill chunks of several sequences. Needs <see cref="DynamicSharedBytes"/> of opt-in shared memory, set
/// once at construction. Nothing in <see cref="Prefill"/> allocates or synchronises.
/// </summary>
public sealed class AttentionPrefillLaunchers
{
    public const string File = "attention_prefill.cu";
    public const int QueryTile = 64;
    private readonly DeviceKernel _kernel;
    private readonly IDevice _device;

    /// <summary><paramref name="kvFp8"/>: the KV cache holds FP8 E4M3 codes (attention_prefill.cu's KV_FP8 variant).</summary>
    public AttentionPrefillLaunchers(KernelLoader loader, int headDim = 128, bool kvFp8 = false)
    {
        if (headDim % 16 != 0 || headDim <= 0 || headDim > 256)
            throw new ArgumentException($"attention_prefill.cu: head_dim {headDim} must be a multiple of 16, at most 256", nameof(headDim));
        HeadDim = headDim;
        _device = loader.Device;
        _kernel = loader.Get(File, "attn_prefill", new Dictionary<string, string> { ["HEAD_DIM"] = headDim.ToString(CultureInfo.InvariantCulture), ["KV_FP8"] = kvFp8 ? "1" : "0" });
        DynamicSharedBytes = (QueryTile + 4 * 64) * (headDim + 8) * 2;
        if (DynamicSharedBytes > _device.Info.SharedMemoryPerBlockOptin)
            throw new ArgumentException($"attention_prefill.cu: head_dim {headDim} needs {DynamicSharedBytes} bytes of shared memory; the device allows {_device.Info.SharedMemoryPerBlockOptin}");
        if (DynamicSharedBytes > _device.Info.SharedMemoryPerBlock) _device.SetMaxDynamicSharedMemory(_kernel, DynamicSharedBytes);
    }

    public int HeadDim { get; }
    public int DynamicSharedBytes { get; }

    /// <summary>
    /// Attention for packed query rows: sequence s owns rows qStart[s] .. qStart[s+1]-1 of <paramref name="p"/>.Q and
    /// has contextLens[s] keys in the cache. <paramref name="maxQueryLen"/> is the longest chunk (host-known).
    /// ScaleLog2 is filled in here.
    /// </summary>
    public void Prefill(DeviceStream stream, AttnPrefillParams p, int maxQueryLen)
    {
        if (p.Seqs < 0 || maxQueryLen < 0) throw new ArgumentOutOfRangeException(nameof(p), $"attn_prefill: seqs {p.Seqs} / max query length {maxQueryLen} negative");
        if (p.NumKvHeads <= 0 || p.NumQHeads % p.NumKvHeads != 0)
            throw new ArgumentException($"attn_prefill: {p.NumQHeads} query heads are not a whole multiple of {p.NumKvHeads} KV heads", nameof(p));
        if (p.PageSize <= 0 || p.MaxPagesPerSeq <= 0) throw new ArgumentException($"attn_prefill: page size {p.PageSize} / pages per sequence {p.MaxPagesPerSeq} must be positive", nameof(p));
        if (p.QStride < p.NumQHeads * HeadDim || p.QStride % 8 != 0 || p.OutStride < p.NumQHeads * HeadDim || p.OutStride % 2 != 0)
            throw new ArgumentException($"attn_prefill: strides q {p.QStride} (multiple of 8) / out {p.OutStride} (even) too short for {p.NumQHeads} heads of {HeadDim}", nameof(p));
        if (p.Seqs == 0 || maxQueryLen == 0) return;
        p.ScaleLog2 = (float)(1.0 / Math.Sqrt(HeadDim) * 1.4426950408889634);
        var args = new KernelArgs(stackalloc byte[160], stackalloc nint[1]);
        args.Add(p);
        var grid = new Dim3((uint)((maxQueryLen + QueryTile - 1) / QueryTile), (uint)p.NumQHeads, (uint)p.Seqs);
        _device.Launch(_kernel, new LaunchConfig(grid, 128, DynamicSharedBytes), stream, args);
    }
}
