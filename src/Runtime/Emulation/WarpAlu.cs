using System.Numerics;
using static Qwen3Cuda.Runtime.Emulation.FloatMath;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Integer, bit and floating-point arithmetic over the 32 lanes of a warp (all lanes computed; only exec lanes written).</summary>
internal sealed partial class Warp
{
    private void ExecAlu(Instr ins, uint exec)
    {
        var o = ins.Ops;
        PtxType t = ins.T;
        if (t == PtxType.Pred) { ExecPredLogic(ins, exec); return; }
        int n = o.Length;
        if (n > 1) Load(o[1], A, t);
        if (n > 2) Load(o[2], B, ins.Op is Op.Shl or Op.Shr ? PtxType.U32 : t);
        if (n > 3) Load(o[3], C, ins.Wide && ins.Op == Op.Mad ? Widen(t) : ins.Op is Op.Bfe or Op.Shf or Op.Prmt ? PtxType.U32 : t);
        if (n > 4) Load(o[4], E, PtxType.U32);
        if (PtxTypes.IsFloat(t)) FloatAlu(ins, t);
        else IntAlu(ins, t);
        PtxType dt = ins.Wide ? Widen(t) : t;
        if (ins.Op is Op.Popc or Op.Clz or Op.Bfind) dt = PtxType.U32;
        Store(o[0], D, exec, dt);
    }

    private static PtxType Widen(PtxType t) => t switch
    {
        PtxType.S16 => PtxType.S32, PtxType.U16 => PtxType.U32, PtxType.S32 => PtxType.S64, PtxType.U32 => PtxType.U64,
        _ => t,
    };

    private void ExecPredLogic(Instr ins, uint exec)
    {
        var o = ins.Ops;
        uint a = PredValue(o[1]);
        uint b = o.Length > 2 ? PredValue(o[2]) : 0;
        uint r = ins.Op switch
        {
            Op.And => a & b, Op.Or => a | b, Op.Xor => a ^ b, Op.Not => ~a, Op.Mov => a,
            _ => throw Fault($"{ins.Op} is not defined on predicates", ins, 0),
        };
        int d = o[0].Reg;
        P[d] = (P[d] & ~exec) | (r & exec);
    }

    private uint PredValue(Operand o)
    {
        if (o.Kind == OpKind.Pred) return o.Neg ? ~P[o.Reg] : P[o.Reg];
        if (o.Kind == OpKind.Imm) return o.Imm != 0 ? 0xFFFFFFFFu : 0;
        throw new InvalidOperationException("predicate operand expected: " + o.Name);
    }

    private void IntAlu(Instr ins, PtxType t)
    {
        int bits = PtxTypes.Size(t) * 8;
        bool s = PtxTypes.IsSigned(t);
        ulong m = Mask(bits);
        var a = A; var b = B; var c = C; var d = D;
        switch (ins.Op)
        {
            case Op.Add:
                if (ins.Sat && t == PtxType.S32) for (int l = 0; l < 32; l++) d[l] = (uint)(int)Math.Clamp((long)(int)a[l] + (int)b[l], int.MinValue, int.MaxValue);
                else for (int l = 0; l < 32; l++) d[l] = (a[l] + b[l]) & m;
                break;
            case Op.Sub:
                if (ins.Sat && t == PtxType.S32) for (int l = 0; l < 32; l++) d[l] = (uint)(int)Math.Clamp((long)(int)a[l] - (int)b[l], int.MinValue, int.MaxValue);
                else for (int l = 0; l < 32; l++) d[l] = (a[l] - b[l]) & m;
                break;
            case Op.Mul:
            case Op.Mad:
                bool mad = ins.Op == Op.Mad;
                if (ins.Wide)
                {
                    ulong wm = Mask(bits * 2);
                    for (int l = 0; l < 32; l++)
                    {
                        ulong p = s ? (ulong)(SExt(a[l], bits) * SExt(b[l], bits)) : a[l] * b[l];
                        d[l] = (p + (mad ? c[l] : 0)) & wm;
                    }
                }
                else if (ins.Hi)
                {
                    for (int l = 0; l < 32; l++)
                    {
                        ulong p;
                        if (bits == 64) p = s ? (ulong)Math.BigMul((long)a[l], (long)b[l], out _) : Math.BigMul(a[l], b[l], out _);
                        else p = s ? (ulong)((SExt(a[l], bits) * SExt(b[l], bits)) >> bits) : (a[l] * b[l]) >> bits;
                        d[l] = (p + (mad ? c[l] : 0)) & m;
                    }
                }
                else for (int l = 0; l < 32; l++) d[l] = (a[l] * b[l] + (mad ? c[l] : 0)) & m;
                break;
            case Op.Mul24:
            case Op.Mad24:
                for (int l = 0; l < 32; l++)
                {
                    long x = s ? SExt(a[l] & 0xFFFFFF, 24) : (long)(a[l] & 0xFFFFFF), y = s ? SExt(b[l] & 0xFFFFFF, 24) : (long)(b[l] & 0xFFFFFF);
                    long p = x * y;
                    d[l] = ((ulong)(ins.Hi ? p >> 16 : p) + (ins.Op == Op.Mad24 ? c[l] : 0)) & m;
                }
                break;
            case Op.Sad:
                for (int l = 0; l < 32; l++)
                {
                    // unchecked magnitude: Math.Abs would throw on a 64-bit difference of long.MinValue
                    long diff = unchecked(SExt(a[l], bits) - SExt(b[l], bits));
                    d[l] = ((s ? (diff < 0 ? unchecked((ulong)-diff) : (ulong)diff) : (a[l] > b[l] ? a[l] - b[l] : b[l] - a[l])) + c[l]) & m;
                }
                break;
            // Division by zero gives an unspecified value in PTX, never a trap: here all ones (div) and the dividend (rem). The
            // zero test is on the operand at the instruction's width. The ALU computes inactive lanes too, and a register an
            // inactive lane never wrote may hold a pooled context's value from an earlier launch: for a 32-bit divide, a
            // 64-bit address whose low 32 bits are zero (it once threw DivideByZeroException in CI).
            case Op.Div:
                for (int l = 0; l < 32; l++)
                {
                    if (s)
                    {
                        long x = SExt(a[l], bits), y = SExt(b[l], bits);
                        d[l] = y == 0 ? m : (y == -1 ? unchecked((ulong)-x) : (ulong)(x / y)) & m;
                    }
                    else
                    {
                        ulong x = a[l] & m, y = b[l] & m;
                        d[l] = y == 0 ? m : x / y;
                    }
                }
                break;
            case Op.Rem:
                for (int l = 0; l < 32; l++)
                {
                    if (s)
                    {
                        long x = SExt(a[l], bits), y = SExt(b[l], bits);
                        d[l] = (y == 0 ? (ulong)x : y == -1 ? 0 : (ulong)(x % y)) & m;
                    }
                    else
                    {
                        ulong x = a[l] & m, y = b[l] & m;
                        d[l] = y == 0 ? x : x % y;
                    }
                }
                break;
            case Op.Abs: for (int l = 0; l < 32; l++) d[l] = (ulong)Math.Abs(SExtSat(a[l], bits)) & m; break;
            case Op.Neg: for (int l = 0; l < 32; l++) d[l] = (0 - a[l]) & m; break;
            case Op.Min:
                for (int l = 0; l < 32; l++) d[l] = s ? (SExt(a[l], bits) < SExt(b[l], bits) ? a[l] : b[l]) : Math.Min(a[l], b[l]);
                break;
            case Op.Max:
                for (int l = 0; l < 32; l++) d[l] = s ? (SExt(a[l], bits) > SExt(b[l], bits) ? a[l] : b[l]) : Math.Max(a[l], b[l]);
                break;
            case Op.And: for (int l = 0; l < 32; l++) d[l] = a[l] & b[l]; break;
            case Op.Or: for (int l = 0; l < 32; l++) d[l] = a[l] | b[l]; break;
            case Op.Xor: for (int l = 0; l < 32; l++) d[l] = a[l] ^ b[l]; break;
            case Op.Not: for (int l = 0; l < 32; l++) d[l] = ~a[l] & m; break;
            case Op.Cnot: for (int l = 0; l < 32; l++) d[l] = a[l] == 0 ? 1UL : 0; break;
            case Op.Shl:
                for (int l = 0; l < 32; l++) { uint k = (uint)b[l]; d[l] = k >= bits ? 0 : (a[l] << (int)k) & m; }
                break;
            case Op.Shr:
                for (int l = 0; l < 32; l++)
                {
                    uint k = Math.Min((uint)b[l], (uint)bits);
                    if (s) d[l] = (ulong)(SExt(a[l], bits) >> (int)Math.Min(k, 63u)) & m;
                    else d[l] = k >= bits ? 0 : a[l] >> (int)k;
                }
                break;
            case Op.Shf:
                for (int l = 0; l < 32; l++)
                {
                    uint k = (uint)c[l];
                    k = ins.Mode2 == "wrap" ? k & 31 : Math.Min(k, 32u);
                    ulong pair = ((b[l] & 0xFFFFFFFF) << 32) | (a[l] & 0xFFFFFFFF);
                    d[l] = ins.Mode == "l" ? (uint)((pair << (int)k) >> 32) : (uint)(pair >> (int)k);
                }
                break;
            case Op.Popc: for (int l = 0; l < 32; l++) d[l] = (ulong)BitOperations.PopCount(a[l] & m); break;
            case Op.Clz:
                for (int l = 0; l < 32; l++) d[l] = bits == 64 ? (ulong)BitOperations.LeadingZeroCount(a[l]) : (ulong)BitOperations.LeadingZeroCount((uint)a[l]);
                break;
            case Op.Brev:
                for (int l = 0; l < 32; l++) d[l] = bits == 64 ? ReverseBits64(a[l]) : ReverseBits64(a[l]) >> 32;
                break;
            case Op.Bfind:
                for (int l = 0; l < 32; l++)
                {
                    ulong x = a[l] & m;
                    if (s && (x >> (bits - 1)) != 0) x = ~x & m;
                    if (x == 0) { d[l] = 0xFFFFFFFF; continue; }
                    int msb = 63 - BitOperations.LeadingZeroCount(x);
                    d[l] = (ulong)(ins.Mode == "shiftamt" ? bits - 1 - msb : msb);
                }
                break;
            case Op.Bfe:
                for (int l = 0; l < 32; l++)
                {
                    int pos = (int)(b[l] & 0xff), len = (int)(c[l] & 0xff), msb = bits - 1;
                    ulong sbit = (!s || len == 0) ? 0 : (a[l] >> Math.Min(pos + len - 1, msb)) & 1;
                    ulong r = 0;
                    for (int i = 0; i < bits; i++)
                    {
                        ulong bit = (i < len && pos + i <= msb) ? (a[l] >> (pos + i)) & 1 : sbit;
                        r |= bit << i;
                    }
                    d[l] = r;
                }
                break;
            case Op.Bfi:
                for (int l = 0; l < 32; l++)
                {
                    int pos = (int)(c[l] & 0xff), len = (int)(E[l] & 0xff);
                    ulong r = b[l];
                    for (int i = 0; i < len && pos + i < bits; i++)
                        r = (r & ~(1UL << (pos + i))) | (((a[l] >> i) & 1) << (pos + i));
                    d[l] = r & m;
                }
                break;
            case Op.Prmt:
                for (int l = 0; l < 32; l++) d[l] = Prmt((uint)a[l], (uint)b[l], (uint)c[l], ins.Mode);
                break;
            case Op.Lop3:
                {
                    uint lut = (uint)E[0];
                    for (int l = 0; l < 32; l++)
                    {
                        ulong r = 0;
                        if ((lut & 0x01) != 0) r |= ~a[l] & ~b[l] & ~c[l];
                        if ((lut & 0x02) != 0) r |= ~a[l] & ~b[l] & c[l];
                        if ((lut & 0x04) != 0) r |= ~a[l] & b[l] & ~c[l];
                        if ((lut & 0x08) != 0) r |= ~a[l] & b[l] & c[l];
                        if ((lut & 0x10) != 0) r |= a[l] & ~b[l] & ~c[l];
                        if ((lut & 0x20) != 0) r |= a[l] & ~b[l] & c[l];
                        if ((lut & 0x40) != 0) r |= a[l] & b[l] & ~c[l];
                        if ((lut & 0x80) != 0) r |= a[l] & b[l] & c[l];
                        d[l] = r & m;
                    }
                    break;
                }
            case Op.Dp4a:
                for (int l = 0; l < 32; l++)
                {
                    int acc = (int)c[l];
                    bool sa = PtxTypes.IsSigned(ins.T), sb = PtxTypes.IsSigned(ins.T2);
                    for (int i = 0; i < 4; i++)
                    {
                        int x = sa ? (sbyte)(a[l] >> (8 * i)) : (byte)(a[l] >> (8 * i));
                        int y = sb ? (sbyte)(b[l] >> (8 * i)) : (byte)(b[l] >> (8 * i));
                        acc += x * y;
                    }
                    d[l] = (uint)acc;
                }
                break;
            case Op.Dp2a:
                for (int l = 0; l < 32; l++)
                {
                    int acc = (int)c[l];
                    bool sa = PtxTypes.IsSigned(ins.T), sb = PtxTypes.IsSigned(ins.T2);
                    int half = ins.Mode == "hi" ? 2 : 0;
                    for (int i = 0; i < 2; i++)
                    {
                        int x = sa ? (short)(a[l] >> (16 * i)) : (ushort)(a[l] >> (16 * i));
                        int y = sb ? (sbyte)(b[l] >> (8 * (i + half))) : (byte)(b[l] >> (8 * (i + half)));
                        acc += x * y;
                    }
                    d[l] = (uint)acc;
                }
                break;
            default:
                throw Fault($"instruction {ins.Op}.{t} is not implemented", ins, 0);
        }
    }

    private static ulong ReverseBits64(ulong v)
    {
        ulong r = 0;
        for (int i = 0; i < 64; i++) { r = (r << 1) | (v & 1); v >>= 1; }
        return r;
    }

    private static uint Prmt(uint a, uint b, uint c, string mode)
    {
        ulong bytes = ((ulong)b << 32) | a;
        uint r = 0;
        if (mode == "")
        {
            for (int i = 0; i < 4; i++)
            {
                uint sel = (c >> (4 * i)) & 0xF;
                uint v = (uint)(bytes >> (int)(8 * (sel & 7))) & 0xFF;
                if ((sel & 8) != 0) v = (v & 0x80) != 0 ? 0xFFu : 0;
                r |= v << (8 * i);
            }
            return r;
        }
        int s = (int)(c & 3);
        int[] idx = mode switch
        {
            "f4e" => [s, s + 1, s + 2, s + 3],
            "b4e" => [s, (s + 7) & 7, (s + 6) & 7, (s + 5) & 7],
            "rc8" => [s, s, s, s],
            "ecl" => [s, Math.Max(s, 1), Math.Max(s, 2), 3],
            "ecr" => [0, Math.Min(s, 1), Math.Min(s, 2), s],
            "rc16" => [(s & 1) * 2, (s & 1) * 2 + 1, (s & 1) * 2, (s & 1) * 2 + 1],
            _ => [0, 1, 2, 3],
        };
        for (int i = 0; i < 4; i++) r |= ((uint)(bytes >> (8 * (idx[i] & 7))) & 0xFF) << (8 * i);
        return r;
    }

    internal static long SExt(ulong v, int bits) => bits >= 64 ? (long)v : (long)(v << (64 - bits)) >> (64 - bits);
    private static long SExtSat(ulong v, int bits) { long x = SExt(v, bits); return x == long.MinValue ? long.MaxValue : x; }
}
