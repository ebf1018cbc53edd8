using System.Runtime.CompilerServices;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Hardware-like math (<see cref="EmulatorModes.HardwareMath"/>, docs/emulator.md): the f32 <c>.approx</c> functions
/// return a value that the PTX ISA allows but a correctly rounded library would not. The exact result is perturbed by
/// deterministic pseudo-noise (a hash of the seed, the function and the input bits, so the same input always gives the
/// same output, as on a GPU) that stays within the ISA's documented bound:
/// <list type="table">
/// <item>ex2: 2 ulp from the correctly rounded result (RN result moved by -2..2 ulp)</item>
/// <item>rcp: 1 ulp (either neighbour of the exact value); div.approx / div.full: 2 ulp (RN moved by -1..1 ulp)</item>
/// <item>rsqrt: relative 2^-22.9; sqrt: relative 2^-23</item>
/// <item>lg2: absolute 2^-22 for inputs in (0.5, 2), relative 2^-22 elsewhere</item>
/// <item>sin, cos: absolute 2^-20.5 in [-2pi, 2pi], 2^-14.7 beyond (the ISA guarantees nothing past 100pi; the same bound is used)</item>
/// <item>tanh: relative 2^-11</item>
/// </list>
/// The special inputs of each instruction's table (0, infinities, NaN; ex2(±0) = 1) give their exact results.
/// </summary>
internal static class ApproxMath
{
    private static readonly double RsqrtBound = Math.Pow(2, -22.9), Sin2Pi = Math.Pow(2, -20.5), SinFar = Math.Pow(2, -14.7);

    /// <summary>A deterministic value in [-1, 1) from the seed, the function and the input bits.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static double Noise(int seed, Op op, uint x, uint y = 0)
    {
        ulong h = ((ulong)(uint)seed << 32 | (uint)op) * 0x9E3779B97F4A7C15UL ^ ((ulong)x << 32 | y);
        h ^= h >> 30; h *= 0xBF58476D1CE4E5B9UL;
        h ^= h >> 27; h *= 0x94D049BB133111EBUL;
        h ^= h >> 31;
        return (h >> 11) * (2.0 / (1UL << 53)) - 1.0;
    }

    /// <summary>The f32 value <paramref name="steps"/> ulps from <paramref name="f"/> (finite, non-zero; stops at zero and infinity).</summary>
    private static float StepUlps(float f, int steps)
    {
        if (!float.IsFinite(f) || f == 0) return f;
        for (; steps > 0; steps--) { float n = MathF.BitIncrement(f); if (!float.IsFinite(n) || Math.Sign(n) != Math.Sign(f) || n == 0) break; f = n; }
        for (; steps < 0; steps++) { float n = MathF.BitDecrement(f); if (!float.IsFinite(n) || Math.Sign(n) != Math.Sign(f) || n == 0) break; f = n; }
        return f;
    }

    /// <summary>Rounds <paramref name="exact"/>·(1 + δ), |δ| ≤ bound − 2^-24 (the rounding adds at most 2^-24 relative).</summary>
    private static float Relative(double exact, double bound, double u)
    {
        if (!double.IsFinite(exact) || exact == 0) return (float)exact;
        float r = (float)(exact * (1 + u * (bound - Math.Pow(2, -24))));
        return float.IsFinite(r) ? r : (float)exact;
    }

    /// <summary>Rounds <paramref name="exact"/> + δ, |δ| ≤ bound − half an ulp of the result.</summary>
    private static float Absolute(double exact, double bound, double u)
    {
        if (!double.IsFinite(exact)) return (float)exact;
        double halfUlp = Math.Max(Math.Abs(exact), 1e-38) * Math.Pow(2, -24);
        return (float)(exact + u * Math.Max(0, bound - halfUlp));
    }

    public static float Ex2(float x, int seed)
    {
        if (float.IsNaN(x) || float.IsInfinity(x) || x == 0) return MathF.Pow(2f, x);   // -inf -> +0, ±0 -> 1, +inf, NaN
        float rn = (float)Math.Pow(2, x);
        int steps = (int)Math.Floor((Noise(seed, Op.Ex2, BitConverter.SingleToUInt32Bits(x)) + 1) * 2.5);   // -2..2
        return StepUlps(rn, Math.Clamp(steps, 0, 4) - 2);
    }

    public static float Rcp(float x, int seed)
    {
        if (float.IsNaN(x) || float.IsInfinity(x) || x == 0) return 1f / x;
        double exact = 1.0 / x;
        float rn = (float)exact;
        if ((double)rn == exact || !float.IsFinite(rn)) return rn;
        // either neighbour of the exact value is within one ulp
        float other = (double)rn < exact ? MathF.BitIncrement(rn) : MathF.BitDecrement(rn);
        return Noise(seed, Op.Rcp, BitConverter.SingleToUInt32Bits(x)) < 0 && float.IsFinite(other) ? other : rn;
    }

    /// <summary>div.approx / div.full beyond their special cases (handled by the caller): the RN quotient moved by -1..1 ulp.</summary>
    public static float Div(float rnQuotient, float x, float y, int seed)
    {
        if (!float.IsFinite(rnQuotient) || rnQuotient == 0) return rnQuotient;
        double u = Noise(seed, Op.Div, BitConverter.SingleToUInt32Bits(x), BitConverter.SingleToUInt32Bits(y));
        return StepUlps(rnQuotient, u < -1.0 / 3 ? -1 : u < 1.0 / 3 ? 0 : 1);
    }

    public static float Rsqrt(float x, int seed)
    {
        if (!(x > 0) || float.IsInfinity(x)) return (float)(1.0 / Math.Sqrt(x));   // ±0 -> ±inf, negative -> NaN, +inf -> 0
        return Relative(1.0 / Math.Sqrt(x), RsqrtBound, Noise(seed, Op.Rsqrt, BitConverter.SingleToUInt32Bits(x)));
    }

    public static float Sqrt(float x, int seed)
    {
        if (!(x > 0) || float.IsInfinity(x)) return MathF.Sqrt(x);
        return Relative(Math.Sqrt(x), Math.Pow(2, -23), Noise(seed, Op.Sqrt, BitConverter.SingleToUInt32Bits(x)));
    }

    public static float Lg2(float x, int seed)
    {
        if (!(x > 0) || float.IsInfinity(x)) return MathF.Log2(x);   // ±0 -> -inf, negative -> NaN, +inf
        double exact = Math.Log2(x), u = Noise(seed, Op.Lg2, BitConverter.SingleToUInt32Bits(x));
        return x > 0.5f && x < 2f ? Absolute(exact, Math.Pow(2, -22), u) : Relative(exact, Math.Pow(2, -22), u);
    }

    public static float Sin(float x, int seed) => SinCos(x, seed, Op.Sin);
    public static float Cos(float x, int seed) => SinCos(x, seed, Op.Cos);

    private static float SinCos(float x, int seed, Op op)
    {
        if (float.IsNaN(x) || float.IsInfinity(x)) return float.NaN;
        if (x == 0) return op == Op.Sin ? x : 1f;
        double exact = op == Op.Sin ? Math.Sin(x) : Math.Cos(x);
        double bound = Math.Abs(x) <= 2 * Math.PI ? Sin2Pi : SinFar;
        return Math.Clamp(Absolute(exact, bound, Noise(seed, op, BitConverter.SingleToUInt32Bits(x))), -1f, 1f);
    }

    public static float Tanh(float x, int seed)
    {
        if (float.IsNaN(x) || float.IsInfinity(x) || x == 0 || float.IsSubnormal(x)) return float.IsSubnormal(x) ? x : MathF.Tanh(x);
        return Math.Clamp(Relative(Math.Tanh(x), Math.Pow(2, -11), Noise(seed, Op.Tanh, BitConverter.SingleToUInt32Bits(x))), -1f, 1f);
    }
}
