using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>AddRmsNormParams</c> in kernels/rmsnorm.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AddRmsNormParams
{
    public DevicePtr Out;       // [rows, width] bf16
    public DevicePtr Hidden;    // [rows, width] bf16, residual stream (updated when Delta is set)
    public DevicePtr Delta;     // [rows, width] bf16 or null
    public DevicePtr Weight;    // [width] bf16
    public int Rows;
    public int Width;
    public float Eps;
}

/// <summary>Mirror of <c>RmsNormHeadsParams</c> in kernels/rmsnorm.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct RmsNormHeadsParams
{
    public DevicePtr Out;           // row (t, h) at Out + (t * OutTokenStride + h * Width) bf16
    public DevicePtr In;            // row (t, h) at In + (t * InTokenStride + h * Width) bf16; may equal Out
    public DevicePtr Weight;        // [Width] bf16
    public int Tokens;
    public int Heads;
    public int Width;
    public int InTokenStride;       // elements
    public int OutTokenStride;      // elements
    public float Eps;
}

/// <summary>Launchers for kernels/rmsnorm.cu. Nothing here allocates or synchronises.</summary>
public sealed class RmsNormLaunchers(KernelLoader loader)
{
    public const string File = "rmsnorm.cu";
    private readonly DeviceKernel _addRmsNorm = loader.Get(File, "add_rmsnorm_bf16");
    private readonly DeviceKernel _rmsNormHeads = loader.Get(File, "rmsnorm_heads_bf16");
    private readonly IDevice _device = loader.Device;

    /// <summary>
    /// <c>hidden += delta</c> (bf16, when <paramref name="delta"/> is not null), then
    /// <c>out = RMSNorm(hidden) * weight</c>, for <paramref name="rows"/> rows of <paramref name="width"/> bf16.
    /// </summary>
    public void AddRmsNorm(DeviceStream stream, DevicePtr output, DevicePtr hidden, DevicePtr delta, DevicePtr weight,
        int rows, int width, float eps)
    {
        if (width <= 0 || width % 8 != 0) throw new ArgumentException($"add_rmsnorm_bf16: width {width} must be a positive multiple of 8", nameof(width));
        if (rows < 0) throw new ArgumentOutOfRangeException(nameof(rows), $"add_rmsnorm_bf16: rows {rows} is negative");
        if (rows == 0) return;
        int chunks = width / 8;
        int threads = Math.Clamp((chunks + 31) / 32 * 32, 32, 1024);
        var p = new AddRmsNormParams { Out = output, Hidden = hidden, Delta = delta, Weight = weight, Rows = rows, Width = width, Eps = eps };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_addRmsNorm, new LaunchConfig(rows, threads, width * sizeof(ushort)), stream, args);
    }

    /// <summary>
    /// Per-head RMSNorm (q_norm / k_norm): for each token t and head h, the <paramref name="width"/>-element row at
    /// <c>input + t * inTokenStride + h * width</c> is normalised with the shared <paramref name="weight"/> and written
    /// at <c>output + t * outTokenStride + h * width</c> (in place when the two agree).
    /// </summary>
    public void RmsNormHeads(DeviceStream stream, DevicePtr output, int outTokenStride, DevicePtr input, int inTokenStride,
        DevicePtr weight, int tokens, int heads, int width, float eps)
    {
        if (width <= 0 || width % 8 != 0 || width > 1024)
            throw new ArgumentException($"rmsnorm_heads_bf16: width {width} must be a positive multiple of 8, at most 1024", nameof(width));
        if (tokens < 0 || heads <= 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"rmsnorm_heads_bf16: tokens {tokens} / heads {heads} invalid");
        if (inTokenStride < heads * width || outTokenStride < heads * width)
            throw new ArgumentException($"rmsnorm_heads_bf16: token strides ({inTokenStride}, {outTokenStride}) are shorter than heads * width = {heads * width}");
        if (tokens == 0) return;
        long rows = (long)tokens * heads;
        var p = new RmsNormHeadsParams
        {
            Out = output, In = input, Weight = weight, Tokens = tokens, Heads = heads, Width = width,
            InTokenStride = inTokenStride, OutTokenStride = outTokenStride, Eps = eps,
        };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_rmsNormHeads, new LaunchConfig(checked((int)((rows + 15) / 16)), 256), stream, args);
    }
}
