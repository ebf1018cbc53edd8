using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;

namespace Qwen3Cuda.Model;

/// <summary>
/// bfloat16 helpers: the upper 16 bits of an IEEE float32. Rounding is round-to-nearest-even (what
/// PyTorch's float -> bf16 conversion does); NaN stays a quiet NaN.
/// </summary>
public static class Bf16
{
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(ushort bits) => BitConverter.UInt32BitsToSingle((uint)bits << 16);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ushort FromFloat(float value)
    {
        uint u = BitConverter.SingleToUInt32Bits(value);
        if ((u & 0x7FFF_FFFFu) > 0x7F80_0000u) return (ushort)((u >> 16) | 0x0040); // quiet NaN
        u += 0x7FFFu + ((u >> 16) & 1u);
        return (ushort)(u >> 16);
    }

    /// <summary>Rounds to the nearest bf16 value (ties to even) and returns it as float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Round(float value) => ToFloat(FromFloat(value));

    /// <summary>Rounds every element to bf16 in place (vectorised).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RoundInPlace(Span<float> values)
    {
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var span = System.Runtime.InteropServices.MemoryMarshal.Cast<float, uint>(values);
            var bias = Vector256.Create(0x7FFFu);
            var one = Vector256.Create(1u);
            var mask = Vector256.Create(0xFFFF_0000u);
            var absMask = Vector256.Create(0x7FFF_FFFFu);
            var inf = Vector256.Create(0x7F80_0000u);
            for (; i + 8 <= span.Length; i += 8)
            {
                var u = Vector256.Create<uint>(span.Slice(i, 8));
                var rounded = (u + bias + ((u >> 16) & one)) & mask;
                var nan = Vector256.GreaterThan(u & absMask, inf);
                var r = Vector256.ConditionalSelect(nan, (u | Vector256.Create(0x0040_0000u)) & mask, rounded);
                r.CopyTo(span.Slice(i, 8));
            }
        }
        for (; i < values.Length; i++) values[i] = Round(values[i]);
    }

    /// <summary>Widens bf16 bits to float32.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void ToFloat(ReadOnlySpan<ushort> source, Span<float> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        int i = 0;
        if (Vector256.IsHardwareAccelerated)
        {
            var dst = System.Runtime.InteropServices.MemoryMarshal.Cast<float, uint>(destination);
            for (; i + 16 <= source.Length; i += 16)
            {
                var v = Vector256.Create<ushort>(source.Slice(i, 16));
                var (lo, hi) = Vector256.Widen(v);
                (lo << 16).CopyTo(dst.Slice(i, 8));
                (hi << 16).CopyTo(dst.Slice(i + 8, 8));
            }
        }
        for (; i < source.Length; i++) destination[i] = ToFloat(source[i]);
    }

    /// <summary>Rounds float32 values to bf16 bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void FromFloat(ReadOnlySpan<float> source, Span<ushort> destination)
    {
        if (destination.Length < source.Length) throw new ArgumentException("destination too short", nameof(destination));
        for (int i = 0; i < source.Length; i++) destination[i] = FromFloat(source[i]);
    }
}
