using static Qwen3Cuda.Runtime.Emulation.FloatMath;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Floating-point arithmetic (f32, f64, f16/bf16 and the packed x2 forms).</summary>
internal sealed partial class Warp
{
    private void FloatAlu(Instr ins, PtxType t)
    {
        switch (t)
        {
            case PtxType.F32: F32Alu(ins); break;
            case PtxType.F64: F64Alu(ins); break;
            case PtxType.F16: case PtxType.BF16: Half16Alu(ins, t, 1); break;
            case PtxType.F16x2: case PtxType.BF16x2: Half16Alu(ins, t, 2); break;
            default: throw Fault($"float type {t} is not supported for {ins.Op}", ins, 0);
        }
    }

    private void F32Alu(Instr ins)
    {
        var a = A; var b = B; var c = C; var d = D;
        bool ftz = ins.Ftz;
        Rnd r = ins.Rnd;
        bool hw = Cta.Launch.HardwareMath && Environment.GetEnvironmentVariable("XX_NOAPPROX") == null;   // .approx results anywhere within the ISA's error bound (ApproxMath)
        int seed = Cta.Launch.MathSeed;
        for (int l = 0; l < 32; l++)
        {
            float x = AsF32(a[l]), y = AsF32(b[l]), z = AsF32(c[l]);
            if (ftz) { x = Ftz(x); y = Ftz(y); z = Ftz(z); }
            float v;
            switch (ins.Op)
            {
                case Op.Add: v = Add(x, y, r); break;
                case Op.Sub: v = Add(x, -y, r); break;
                case Op.Mul: v = Mul(x, y, r); break;
                case Op.Fma: case Op.Mad: v = FloatMath.Fma(x, y, z, r); break;
                case Op.Div:
                    if (ins.Approx)
                    {
                        float ay = MathF.Abs(y);
                        v = ay > 8.507059e37f && !float.IsInfinity(ay) ? (float.IsInfinity(x) ? float.NaN : 0f * x * MathF.Sign(y))
                            : hw ? ApproxMath.Div(x / y, x, y, seed) : x * (1f / y);
                    }
                    else if (ins.Full && hw) v = ApproxMath.Div(x / y, x, y, seed);
                    else v = r is Rnd.None or Rnd.Rn ? x / y : RoundDirected((double)x / y, 0, r);
                    break;
                case Op.Abs: v = MathF.Abs(x); break;
                case Op.Neg: v = -x; break;
                case Op.Min: v = FloatMath.Min(x, y, ins.NanMode); break;
                case Op.Max: v = FloatMath.Max(x, y, ins.NanMode); break;
                case Op.Rcp: v = ins.Approx && hw ? ApproxMath.Rcp(x, seed) : r is Rnd.None or Rnd.Rn || ins.Approx ? 1f / x : RoundDirected(1.0 / x, 0, r); break;
                case Op.Sqrt: v = ins.Approx && hw ? ApproxMath.Sqrt(x, seed) : MathF.Sqrt(x); break;
                case Op.Rsqrt: v = hw ? ApproxMath.Rsqrt(x, seed) : (float)(1.0 / Math.Sqrt(x)); break;
                case Op.Ex2: v = hw ? ApproxMath.Ex2(x, seed) : MathF.Pow(2f, x); break;
                case Op.Lg2: v = hw ? ApproxMath.Lg2(x, seed) : MathF.Log2(x); break;
                case Op.Sin: v = hw ? ApproxMath.Sin(x, seed) : MathF.Sin(x); break;
                case Op.Cos: v = hw ? ApproxMath.Cos(x, seed) : MathF.Cos(x); break;
                case Op.Tanh: v = hw ? ApproxMath.Tanh(x, seed) : MathF.Tanh(x); break;
                case Op.Copysign: v = MathF.CopySign(y, x); break;
                case Op.Testp:
                    d[l] = (ins.Mode switch
                    {
                        "finite" => float.IsFinite(x), "infinite" => float.IsInfinity(x), "number" => !float.IsNaN(x),
                        "notanumber" => float.IsNaN(x), "normal" => float.IsNormal(x), "subnormal" => float.IsSubnormal(x), _ => false,
                    }) ? 1UL : 0;
                    continue;
                default: throw Fault($"{ins.Op}.f32 is not implemented", ins, 0);
            }
            if (ins.Sat) v = float.IsNaN(v) ? 0f : Math.Clamp(v, 0f, 1f);
            if (ftz) v = Ftz(v);
            d[l] = Bits(v);
        }
    }

    private void F64Alu(Instr ins)
    {
        var a = A; var b = B; var c = C; var d = D;
        for (int l = 0; l < 32; l++)
        {
            double x = AsF64(a[l]), y = AsF64(b[l]), z = AsF64(c[l]);
            double v = ins.Op switch
            {
                Op.Add => x + y, Op.Sub => x - y, Op.Mul => x * y, Op.Fma or Op.Mad => Math.FusedMultiplyAdd(x, y, z),
                Op.Div => x / y, Op.Abs => Math.Abs(x), Op.Neg => -x, Op.Min => FloatMath.Min(x, y), Op.Max => FloatMath.Max(x, y),
                Op.Rcp => 1.0 / x, Op.Sqrt => Math.Sqrt(x), Op.Rsqrt => 1.0 / Math.Sqrt(x), Op.Copysign => Math.CopySign(y, x),
                Op.Ex2 => Math.Pow(2, x), Op.Lg2 => Math.Log2(x), Op.Sin => Math.Sin(x), Op.Cos => Math.Cos(x),
                _ => throw Fault($"{ins.Op}.f64 is not implemented", ins, 0),
            };
            if (ins.Sat) v = double.IsNaN(v) ? 0 : Math.Clamp(v, 0, 1);
            d[l] = Bits(v);
        }
    }

    /// <summary>f16/bf16 (and packed pairs): computed in f32/f64, rounded once to the 16-bit type.</summary>
    private void Half16Alu(Instr ins, PtxType t, int pairs)
    {
        bool bf = t is PtxType.BF16 or PtxType.BF16x2;
        var a = A; var b = B; var c = C; var d = D;
        for (int l = 0; l < 32; l++)
        {
            ulong res = 0;
            for (int h = 0; h < pairs; h++)
            {
                int sh = 16 * h;
                float x = Unpack(a[l] >> sh, bf), y = Unpack(b[l] >> sh, bf), z = Unpack(c[l] >> sh, bf);
                double v = ins.Op switch
                {
                    Op.Add => (double)x + y, Op.Sub => (double)x - y, Op.Mul => (double)x * y,
                    Op.Fma or Op.Mad => (double)x * y + z, Op.Neg => -x, Op.Abs => Math.Abs(x),
                    Op.Min => FloatMath.Min(x, y, ins.NanMode), Op.Max => FloatMath.Max(x, y, ins.NanMode),
                    Op.Ex2 => Math.Pow(2, x), Op.Tanh => Math.Tanh(x), Op.Rcp => 1.0 / x, Op.Sqrt => Math.Sqrt(x),
                    Op.Rsqrt => 1.0 / Math.Sqrt(x), Op.Lg2 => Math.Log2(x), Op.Sin => Math.Sin(x), Op.Cos => Math.Cos(x),
                    _ => throw Fault($"{ins.Op}.{t} is not implemented", ins, 0),
                };
                if (ins.Relu && v < 0) v = 0;
                if (ins.Sat) v = double.IsNaN(v) ? 0 : Math.Clamp(v, 0, 1);
                ulong bits;
                if (ins.Op is Op.Neg or Op.Abs)
                    bits = ins.Op == Op.Neg ? ((a[l] >> sh) ^ 0x8000) & 0xFFFF : (a[l] >> sh) & 0x7FFF;
                else bits = bf ? ToBf16Exact(v) : ToF16(v);
                res |= bits << sh;
            }
            d[l] = res;
        }
    }

    private static float Unpack(ulong h, bool bf) => bf ? FromBf16(h) : FromF16(h & 0xFFFF);

    /// <summary>Rounds a double to bf16 (RN-even) without first rounding to f32 where that would double-round.</summary>
    private static ushort ToBf16Exact(double v)
    {
        float f = (float)v;
        if ((double)f != v && !float.IsInfinity(f) && !double.IsNaN(v))
        {
            // make the f32 sticky: if rounding to f32 landed exactly on a bf16 tie, nudge towards v
            uint u = BitConverter.SingleToUInt32Bits(f);
            if ((u & 0xFFFF) == 0x8000) f = (double)f < v ? NextUp(f) : NextDown(f);
        }
        return ToBf16(f);
    }
}
