using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>CheckFiniteParams</c> in kernels/check_finite.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CheckFiniteParams
{
    public DevicePtr X;           // [Rows, Ld] bf16
    public DevicePtr Positions;   // [Rows] int32, or null
    public DevicePtr Record;      // uint64 key of the first non-finite element; ~0: none
    public int Rows;
    public int Width;
    public int Ld;
    public int Stage;
}

/// <summary>The first non-finite element a <see cref="CheckFiniteLaunchers.CheckFinite"/> launch saw, decoded from its key.</summary>
/// <param name="Stage">0: the embedding output; l + 1: the residual stream after layer l.</param>
/// <param name="Row">The token row of the step.</param>
/// <param name="Column">The element within the row.</param>
/// <param name="Position">The row's position in its sequence.</param>
public readonly record struct NonFiniteRecord(int Stage, int Row, int Column, int Position)
{
    /// <summary>The record's value when nothing was found (set it before the first check and after reading one).</summary>
    public const ulong None = ulong.MaxValue;

    public static NonFiniteRecord? Decode(ulong key) => key == None ? null
        : new NonFiniteRecord((int)(key >> 52), (int)((key >> 36) & 0xffff), (int)((key >> 20) & 0xffff), (int)(key & 0xfffff));

    /// <summary>"after layer 3" or "in the embedding output".</summary>
    public string Where => Stage == 0 ? "in the embedding output" : $"after layer {Stage - 1}";
}

/// <summary>
/// Launcher for kernels/check_finite.cu, the device model's debug check for NaN / inf activations: folds the first
/// non-finite element of x [rows, width] into a sticky 64-bit record (earliest stage, then row, then column). Nothing
/// here allocates or synchronises; the launch is graph-capturable.
/// </summary>
public sealed class CheckFiniteLaunchers(KernelLoader loader)
{
    public const string File = "check_finite.cu";
    private readonly DeviceKernel _check = loader.Get(File, "check_finite_bf16");
    private readonly IDevice _device = loader.Device;

    public void CheckFinite(DeviceStream stream, DevicePtr x, int ld, DevicePtr positions, int rows, int width, int stage, DevicePtr record)
    {
        if (width <= 0 || width % 8 != 0 || width >= 1 << 16) throw new ArgumentException($"check_finite_bf16: width {width} must be a positive multiple of 8 below 65536", nameof(width));
        if (ld < width || ld % 8 != 0) throw new ArgumentException($"check_finite_bf16: row stride {ld} must be a multiple of 8 and at least the width {width}", nameof(ld));
        if (rows < 0 || rows >= 1 << 16) throw new ArgumentOutOfRangeException(nameof(rows), $"check_finite_bf16: {rows} rows; supported 0..65535");
        if (stage < 0 || stage >= 1 << 12) throw new ArgumentOutOfRangeException(nameof(stage), $"check_finite_bf16: stage {stage}; supported 0..4095");
        if (rows == 0) return;
        var p = new CheckFiniteParams { X = x, Positions = positions, Record = record, Rows = rows, Width = width, Ld = ld, Stage = stage };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_check, new LaunchConfig(rows, 256), stream, args);
    }
}
