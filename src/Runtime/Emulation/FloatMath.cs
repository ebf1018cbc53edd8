using System.Runtime.CompilerServices;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>PTX floating-point semantics that C# does not give directly (docs/emulator.md).</summary>
internal static class FloatMath
{
    public const uint CanonicalNaN32 = 0x7FFFFFFF;

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float AsF32(ulong bits) => BitConverter.UInt32BitsToSingle((uint)bits);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Bits(float f) => BitConverter.SingleToUInt32Bits(f);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double AsF64(ulong bits) => BitConverter.UInt64BitsToDouble(bits);
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong Bits(double d) => BitConverter.DoubleToUInt64Bits(d);

    /// <summary>Flushes an f32 subnormal to sign-preserving zero.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float Ftz(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        return (u & 0x7f800000) == 0 ? BitConverter.UInt32BitsToSingle(u & 0x80000000) : f;
    }

    public static float NextUp(float f) => MathF.BitIncrement(f);
    public static float NextDown(float f) => MathF.BitDecrement(f);

    /// <summary>Rounds the exact value <paramref name="hi"/> + <paramref name="lo"/> (a double-double) to f32 in a directed mode.</summary>
    public static float RoundDirected(double hi, double lo, Rnd mode)
    {
        float f = (float)hi; // RN
        if (double.IsNaN(hi)) return float.NaN;
        if (mode is Rnd.Rn or Rnd.None) return float.IsInfinity(f) || lo == 0 ? f : RoundNearestDd(hi, lo);
        double df = f;
        // compare (df) with exact (hi + lo)
        int cmp = df > hi ? 1 : df < hi ? -1 : Math.Sign(-lo);
        if (float.IsInfinity(f))
        {
            bool pos = f > 0;
            return mode switch
            {
                Rnd.Rz => pos ? float.MaxValue : -float.MaxValue,
                Rnd.Rm => pos ? float.MaxValue : float.NegativeInfinity,
                Rnd.Rp => pos ? float.PositiveInfinity : -float.MaxValue,
                _ => f,
            };
        }
        switch (mode)
        {
            case Rnd.Rm: if (cmp > 0) f = NextDown(f); break;
            case Rnd.Rp: if (cmp < 0) f = NextUp(f); break;
            case Rnd.Rz:
                if (hi > 0 && cmp > 0) f = NextDown(f);
                else if (hi < 0 && cmp < 0) f = NextUp(f);
                break;
        }
        return f;
    }

    private static float RoundNearestDd(double hi, double lo)
    {
        // hi rounded to float may be a tie broken wrongly because lo carries the sticky bits
        float f = (float)hi;
        double err = (hi - f) + lo;
        if (err == 0) return f;
        float up = NextUp(f), down = NextDown(f);
        double mid = err > 0 ? ((double)up - f) / 2 : ((double)down - f) / 2;
        if (Math.Abs(err) > Math.Abs(mid)) return err > 0 ? up : down;
        if (Math.Abs(err) < Math.Abs(mid)) return f;
        return f;
    }

    /// <summary>fma.f32 with a rounding mode.</summary>
    public static float Fma(float a, float b, float c, Rnd mode)
    {
        if (mode is Rnd.Rn or Rnd.None) return MathF.FusedMultiplyAdd(a, b, c);
        double p = (double)a * b; // exact
        double s = p + c;
        double bb = s - p;
        double e = (p - (s - bb)) + (c - bb); // TwoSum
        if (double.IsInfinity(s) || double.IsNaN(s)) return (float)s;
        return RoundDirected(s, e, mode);
    }

    public static float Add(float a, float b, Rnd mode)
    {
        if (mode is Rnd.Rn or Rnd.None) return a + b;
        double s = (double)a + b; // exact for f32 inputs except huge exponent gaps; use TwoSum anyway
        double bb = s - a;
        double e = (a - (s - bb)) + (b - bb);
        return RoundDirected(s, e, mode);
    }

    public static float Mul(float a, float b, Rnd mode)
    {
        if (mode is Rnd.Rn or Rnd.None) return a * b;
        return RoundDirected((double)a * b, 0, mode);
    }

    /// <summary>f64 to f32 with a rounding mode.</summary>
    public static float ToF32(double d, Rnd mode) => mode is Rnd.Rn or Rnd.None ? (float)d : RoundDirected(d, 0, mode);

    /// <summary>f32 → bf16, round to nearest even; NaN → canonical 0x7FFF.</summary>
    public static ushort ToBf16(float f, Rnd mode = Rnd.Rn)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        if (float.IsNaN(f)) return 0x7FFF;
        if (mode == Rnd.Rz) return (ushort)(u >> 16);
        if (mode is Rnd.Rm or Rnd.Rp)
        {
            ushort t = (ushort)(u >> 16);
            bool inexact = (u & 0xFFFF) != 0;
            bool neg = (u >> 31) != 0;
            if (inexact && ((mode == Rnd.Rp && !neg) || (mode == Rnd.Rm && neg))) t++;
            return t;
        }
        u += 0x7FFF + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }

    public static float FromBf16(ulong h) => BitConverter.UInt32BitsToSingle((uint)(h & 0xFFFF) << 16);
    public static ushort ToF16(float f) => BitConverter.HalfToUInt16Bits((Half)f);
    public static ushort ToF16(double d) => BitConverter.HalfToUInt16Bits((Half)d);
    public static float FromF16(ulong h) => (float)BitConverter.UInt16BitsToHalf((ushort)h);

    /// <summary>PTX min/max.f32: NaN-ignoring, +0 &gt; -0; <paramref name="nanMode"/> propagates NaN.</summary>
    public static float Min(float a, float b, bool nanMode)
    {
        if (float.IsNaN(a) || float.IsNaN(b))
        {
            if (nanMode || (float.IsNaN(a) && float.IsNaN(b))) return BitConverter.UInt32BitsToSingle(CanonicalNaN32);
            return float.IsNaN(a) ? b : a;
        }
        if (a == b) return BitConverter.SingleToUInt32Bits(a) > BitConverter.SingleToUInt32Bits(b) ? a : b; // -0 < +0
        return a < b ? a : b;
    }

    public static float Max(float a, float b, bool nanMode)
    {
        if (float.IsNaN(a) || float.IsNaN(b))
        {
            if (nanMode || (float.IsNaN(a) && float.IsNaN(b))) return BitConverter.UInt32BitsToSingle(CanonicalNaN32);
            return float.IsNaN(a) ? b : a;
        }
        if (a == b) return BitConverter.SingleToUInt32Bits(a) < BitConverter.SingleToUInt32Bits(b) ? a : b;
        return a > b ? a : b;
    }

    public static double Min(double a, double b)
    {
        if (double.IsNaN(a)) return double.IsNaN(b) ? double.NaN : b;
        if (double.IsNaN(b)) return a;
        if (a == b) return BitConverter.DoubleToInt64Bits(a) < 0 ? a : b;
        return a < b ? a : b;
    }

    public static double Max(double a, double b)
    {
        if (double.IsNaN(a)) return double.IsNaN(b) ? double.NaN : b;
        if (double.IsNaN(b)) return a;
        if (a == b) return BitConverter.DoubleToInt64Bits(a) < 0 ? b : a;
        return a > b ? a : b;
    }

    /// <summary>setp comparison with PTX NaN rules (ordered: false on NaN; unordered 'u' forms: true).</summary>
    public static bool Compare(double a, double b, string cmp)
    {
        bool nan = double.IsNaN(a) || double.IsNaN(b);
        return cmp switch
        {
            "eq" => !nan && a == b, "ne" => !nan && a != b, "lt" => !nan && a < b, "le" => !nan && a <= b,
            "gt" => !nan && a > b, "ge" => !nan && a >= b,
            "equ" => nan || a == b, "neu" => nan || a != b, "ltu" => nan || a < b, "leu" => nan || a <= b,
            "gtu" => nan || a > b, "geu" => nan || a >= b,
            "num" => !nan, "nan" => nan,
            _ => throw new InvalidOperationException("compare " + cmp),
        };
    }

    /// <summary>Float to integer with the cvt rounding modes; clamps to the destination; NaN → 0 (or 1&lt;&lt;63 for 64-bit).</summary>
    public static ulong FloatToInt(double v, Rnd mode, PtxType dst, bool srcIsF64)
    {
        int bits = PtxTypes.Size(dst) * 8;
        bool signed = PtxTypes.IsSigned(dst);
        if (double.IsNaN(v)) return (srcIsF64 || bits == 64) && bits == 64 ? 1UL << 63 : 0;
        double r = mode switch
        {
            Rnd.Rni or Rnd.Rn or Rnd.None => Math.Round(v, MidpointRounding.ToEven),
            Rnd.Rmi or Rnd.Rm => Math.Floor(v),
            Rnd.Rpi or Rnd.Rp => Math.Ceiling(v),
            _ => Math.Truncate(v),
        };
        if (signed)
        {
            double lo = -Math.Pow(2, bits - 1), hi = Math.Pow(2, bits - 1) - 1;
            long x = r <= lo ? (long)lo : r >= hi ? (bits == 64 ? long.MaxValue : (long)hi) : (long)r;
            return (ulong)x & Mask(bits);
        }
        else
        {
            double hi = Math.Pow(2, bits) - 1;
            ulong x = r <= 0 ? 0 : r >= hi ? (bits == 64 ? ulong.MaxValue : (ulong)hi) : (ulong)r;
            return x;
        }
    }

    public static ulong Mask(int bits) => bits >= 64 ? ulong.MaxValue : (1UL << bits) - 1;

    public static double RoundToIntegral(double v, Rnd mode) => mode switch
    {
        Rnd.Rni => Math.Round(v, MidpointRounding.ToEven),
        Rnd.Rmi => Math.Floor(v),
        Rnd.Rpi => Math.Ceiling(v),
        Rnd.Rzi => Math.Truncate(v),
        _ => v,
    };
}
