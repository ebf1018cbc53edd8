using System.Globalization;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>QkNormRopeParams</c> in kernels/rope.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct QkNormRopeParams
{
    public DevicePtr Qkv;            // [tokens, QkvStride] bf16: q heads | k heads | v heads
    public DevicePtr QOut;           // [tokens, QOutStride] bf16 (may alias Qkv)
    public DevicePtr KCache;         // [pages, pageSize, NumKvHeads, D] bf16
    public DevicePtr VCache;         // [pages, pageSize, NumKvHeads, D] bf16
    public DevicePtr QNormWeight;    // [D] bf16
    public DevicePtr KNormWeight;    // [D] bf16
    public DevicePtr InvFreq;        // [D/2] fp32, or [Tokens, D/2] when InvFreqPerToken
    public DevicePtr Positions;      // [tokens] int32
    public DevicePtr SlotMapping;    // [tokens] int32, < 0: no cache write
    public int Tokens;
    public int NumQHeads;
    public int NumKvHeads;
    public int QkvStride;            // elements
    public int QOutStride;           // elements
    public float Eps;
    public float AttentionScaling;
    public int InvFreqPerToken;      // 0: one shared table; 1: row t for token t (dynamic NTK)
}

/// <summary>
/// Launchers for kernels/rope.cu: per-head q/k RMSNorm + rotate-half RoPE + paged KV-cache write, fused.
/// The paged cache is slot-major, <c>[pages, pageSize, numKvHeads, headDim]</c> bf16 per layer for K and V;
/// slot = page * pageSize + offset. Nothing here allocates or synchronises.
/// </summary>
public sealed class RopeLaunchers
{
    public const string File = "rope.cu";
    /// <summary>Head dimensions the kernel is built for (one warp per head row; D 16 uses half the warp).</summary>
    public static readonly int[] SupportedHeadDims = [16, 32, 64, 128, 256];

    private readonly DeviceKernel _kernel;
    private readonly IDevice _device;

    /// <summary><paramref name="kvFp8"/>: write the KV cache as FP8 E4M3 (rope.cu's KV_FP8 variant).</summary>
    public RopeLaunchers(KernelLoader loader, int headDim = 128, bool kvFp8 = false)
    {
        if (!SupportedHeadDims.Contains(headDim))
            throw new ArgumentException($"rope.cu: head_dim {headDim} is not supported (supported: {string.Join(", ", SupportedHeadDims)})", nameof(headDim));
        HeadDim = headDim;
        _device = loader.Device;
        _kernel = loader.Get(File, "qk_norm_rope_kv_write",
            new Dictionary<string, string> { ["HEAD_DIM"] = headDim.ToString(CultureInfo.InvariantCulture), ["KV_FP8"] = kvFp8 ? "1" : "0" });
    }

    public int HeadDim { get; }

    /// <summary>
    /// q/k norm + RoPE for <c>p.Tokens</c> rows of the fused qkv projection; q to <c>p.QOut</c>,
    /// k and v to the paged caches at <c>p.SlotMapping</c>[t] (int32 on device).
    /// </summary>
    public void QkNormRopeKvWrite(DeviceStream stream, in QkNormRopeParams p)
    {
        if (p.Tokens < 0) throw new ArgumentOutOfRangeException(nameof(p), $"qk_norm_rope_kv_write: tokens {p.Tokens} is negative");
        if (p.NumQHeads <= 0 || p.NumKvHeads <= 0)
            throw new ArgumentException($"qk_norm_rope_kv_write: heads ({p.NumQHeads} q, {p.NumKvHeads} kv) must be positive", nameof(p));
        int heads = p.NumQHeads + 2 * p.NumKvHeads;
        if (p.QkvStride < heads * HeadDim || p.QkvStride % 8 != 0)
            throw new ArgumentException($"qk_norm_rope_kv_write: qkv stride {p.QkvStride} must be a multiple of 8 and at least {heads} heads * {HeadDim}", nameof(p));
        if (p.QOutStride < p.NumQHeads * HeadDim || p.QOutStride % 8 != 0)
            throw new ArgumentException($"qk_norm_rope_kv_write: q_out stride {p.QOutStride} must be a multiple of 8 and at least {p.NumQHeads} heads * {HeadDim}", nameof(p));
        if (p.Qkv.IsNull || p.QOut.IsNull || p.KCache.IsNull || p.VCache.IsNull || p.QNormWeight.IsNull || p.KNormWeight.IsNull
            || p.InvFreq.IsNull || p.Positions.IsNull || p.SlotMapping.IsNull)
            throw new ArgumentException("qk_norm_rope_kv_write: a required pointer is null", nameof(p));
        if (p.Tokens == 0) return;
        var args = new KernelArgs(stackalloc byte[128], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_kernel, new LaunchConfig(new Dim3((uint)p.Tokens, (uint)((heads + 7) / 8)), 256), stream, args);
    }
}
