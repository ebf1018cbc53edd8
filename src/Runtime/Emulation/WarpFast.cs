using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Qwen3Cuda.Runtime.Emulation;

internal enum FastKind : byte { None, Mov, Add32, Add64, Sub32, And32, Or32, Shl32Imm, ShrU32Imm, MulWideS32, MulWideU32, MulLo32, MadLo32, FmaF32, AddF32, MulF32, SubF32,
    Xor32, Shl64Imm, ShrS32Imm, ShrU64Imm, CvtS64S32, CvtU64U32, SetpS32, SetpU32, Selp32, CvtRnF32S32 }

/// <summary>Integer comparison of a classified setp.</summary>
internal enum IntCmp : byte { Eq, Ne, Lt, Le, Gt, Ge }

/// <summary>
/// Specialised handlers for the most frequent instructions when all 32 lanes execute: they work directly on
/// the register file (no gather/scatter through scratch arrays), with Vector256 for the plain integer ops.
/// The generic handlers stay the reference; <see cref="Classify"/> only picks forms with identical results.
/// </summary>
internal sealed partial class Warp
{
    public static void Classify(Instr ins)
    {
        var o = ins.Ops;
        bool RegOrImm(int i) => i < o.Length && (o[i].Kind == OpKind.Reg || o[i].Kind == OpKind.Imm);
        bool DstReg() => o.Length > 0 && o[0].Kind == OpKind.Reg;
        if (ins.GuardPred >= 0 && ins.Op is Op.Bra) return;
        PtxType t = ins.T;
        bool is32 = t is PtxType.U32 or PtxType.S32 or PtxType.B32;
        bool is64 = t is PtxType.U64 or PtxType.S64 or PtxType.B64;
        bool plainF = t == PtxType.F32 && !ins.Ftz && !ins.Sat && ins.Rnd is Rnd.None or Rnd.Rn;
        if (ins.Op == Op.Setp && o.Length == 3 && o[0].Kind == OpKind.Pred && RegOrImm(1) && RegOrImm(2) && ins.Mode2 == "" && t is PtxType.S32 or PtxType.U32 or PtxType.B32)
        {
            IntCmp? c = ins.Mode switch
            {
                "eq" => IntCmp.Eq, "ne" => IntCmp.Ne, "lt" or "lo" => IntCmp.Lt, "le" or "ls" => IntCmp.Le, "gt" or "hi" => IntCmp.Gt, "ge" or "hs" => IntCmp.Ge, _ => null,
            };
            bool signed = t == PtxType.S32;
            if (c == null || (signed && ins.Mode is "lo" or "ls" or "hi" or "hs")) return; // the generic handler reports these
            ins.FastCmp = c.Value;
            ins.Fast = signed ? FastKind.SetpS32 : FastKind.SetpU32;
            return;
        }
        if (!DstReg()) return;
        bool reg64To64 = o.Length > 1 && o[1].Kind == OpKind.Reg && o[1].RegBits == 64 && o[0].RegBits == 64;
        ins.Fast = ins.Op switch
        {
            Op.Mov when o[1].Kind == OpKind.Reg && o[1].RegBits == o[0].RegBits && PtxTypes.Size(t) * 8 >= o[0].RegBits => FastKind.Mov,
            Op.Mov when o[1].Kind == OpKind.Reg && o[1].RegBits == o[0].RegBits && (is32 || t == PtxType.F32) => FastKind.Mov,
            Op.Add when is32 && !ins.Sat && RegOrImm(1) && RegOrImm(2) && o[0].RegBits == 32 => FastKind.Add32,
            Op.Add when is64 && RegOrImm(1) && RegOrImm(2) => FastKind.Add64,
            Op.Sub when is32 && !ins.Sat && RegOrImm(1) && RegOrImm(2) && o[0].RegBits == 32 => FastKind.Sub32,
            Op.And when is32 && RegOrImm(1) && RegOrImm(2) && o[0].RegBits == 32 => FastKind.And32,
            Op.Or when is32 && RegOrImm(1) && RegOrImm(2) && o[0].RegBits == 32 => FastKind.Or32,
            Op.Selp when (is32 || t == PtxType.F32) && o.Length == 4 && RegOrImm(1) && RegOrImm(2) && o[3].Kind == OpKind.Pred && o[0].RegBits == 32 => FastKind.Selp32,
            Op.Xor when is32 && RegOrImm(1) && RegOrImm(2) && o[0].RegBits == 32 => FastKind.Xor32,
            Op.Shl when is64 && o[1].Kind == OpKind.Reg && o[1].RegBits == 64 && o[2].Kind == OpKind.Imm && o[2].Imm < 64 && o[0].RegBits == 64 => FastKind.Shl64Imm,
            Op.Shr when t is PtxType.U64 or PtxType.B64 && o[1].Kind == OpKind.Reg && o[1].RegBits == 64 && o[2].Kind == OpKind.Imm && o[2].Imm < 64 && o[0].RegBits == 64 => FastKind.ShrU64Imm,
            Op.Shr when t == PtxType.S32 && o[1].Kind == OpKind.Reg && o[1].RegBits == 32 && o[2].Kind == OpKind.Imm && o[2].Imm < 32 && o[0].RegBits == 32 => FastKind.ShrS32Imm,
            Op.Cvta when reg64To64 && t == PtxType.U64 && ins.Space == Space.Global => FastKind.Mov,
            Op.Cvt when !ins.Sat && ins.Rnd == Rnd.None && o.Length == 2 && t == PtxType.S64 && ins.T2 == PtxType.S32 && o[1].Kind == OpKind.Reg && o[0].RegBits == 64 => FastKind.CvtS64S32,
            Op.Cvt when !ins.Sat && ins.Rnd == Rnd.None && o.Length == 2 && t == PtxType.U64 && ins.T2 == PtxType.U32 && o[1].Kind == OpKind.Reg && o[0].RegBits == 64 => FastKind.CvtU64U32,
            Op.Cvt when !ins.Sat && !ins.Ftz && ins.Rnd == Rnd.Rn && o.Length == 2 && t == PtxType.F32 && ins.T2 == PtxType.S32 && o[1].Kind == OpKind.Reg && o[0].RegBits == 32 => FastKind.CvtRnF32S32,
            Op.Shl when is32 && RegOrImm(1) && o[2].Kind == OpKind.Imm && o[2].Imm < 32 && o[0].RegBits == 32 => FastKind.Shl32Imm,
            Op.Shr when t is PtxType.U32 or PtxType.B32 && RegOrImm(1) && o[2].Kind == OpKind.Imm && o[2].Imm < 32 && o[0].RegBits == 32 => FastKind.ShrU32Imm,
            Op.Mul when ins.Wide && t == PtxType.S32 && RegOrImm(1) && RegOrImm(2) => FastKind.MulWideS32,
            Op.Mul when ins.Wide && t == PtxType.U32 && RegOrImm(1) && RegOrImm(2) => FastKind.MulWideU32,
            Op.Mul when !ins.Wide && !ins.Hi && is32 && RegOrImm(1) && RegOrImm(2) && o[0].RegBits == 32 => FastKind.MulLo32,
            Op.Mad when !ins.Wide && !ins.Hi && is32 && RegOrImm(1) && RegOrImm(2) && RegOrImm(3) && o[0].RegBits == 32 => FastKind.MadLo32,
            Op.Fma or Op.Mad when plainF && RegOrImm(1) && RegOrImm(2) && RegOrImm(3) => FastKind.FmaF32,
            Op.Add when plainF && RegOrImm(1) && RegOrImm(2) => FastKind.AddF32,
            Op.Sub when plainF && RegOrImm(1) && RegOrImm(2) => FastKind.SubF32,
            Op.Mul when plainF && RegOrImm(1) && RegOrImm(2) => FastKind.MulF32,
            _ => FastKind.None,
        };
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private ReadOnlySpan<ulong> Src(Operand o, ulong[] scratch)
    {
        if (o.Kind == OpKind.Reg) return new ReadOnlySpan<ulong>(R, o.Reg * 32, 32);
        scratch.AsSpan().Fill(o.Imm);
        return scratch;
    }

    /// <summary>Runs a classified instruction over all 32 lanes.</summary>
    private void ExecFast(Instr ins)
    {
        var o = ins.Ops;
        if (ins.Fast is FastKind.SetpS32 or FastKind.SetpU32) { SetpFast(ins); return; }
        var d = new Span<ulong>(R, o[0].Reg * 32, 32);
        switch (ins.Fast)
        {
            case FastKind.Xor32: Vec2(Src(o[1], A), Src(o[2], B), d, 5); return;
            case FastKind.Selp32:
                {
                    var a = Src(o[1], A); var b = Src(o[2], B);
                    uint p = PredValue(o[3]);
                    for (int l = 0; l < 32; l++) d[l] = (((p >> l) & 1) != 0 ? a[l] : b[l]) & 0xFFFFFFFF;
                    return;
                }
            case FastKind.Shl64Imm:
                {
                    var a = Src(o[1], A);
                    int k = (int)o[2].Imm;
                    for (int l = 0; l < 32; l++) d[l] = a[l] << k;
                    return;
                }
            case FastKind.ShrU64Imm:
                {
                    var a = Src(o[1], A);
                    int k = (int)o[2].Imm;
                    for (int l = 0; l < 32; l++) d[l] = a[l] >> k;
                    return;
                }
            case FastKind.ShrS32Imm:
                {
                    var a = Src(o[1], A);
                    int k = (int)o[2].Imm;
                    for (int l = 0; l < 32; l++) d[l] = (uint)((int)(uint)a[l] >> k);
                    return;
                }
            case FastKind.CvtS64S32:
                {
                    var a = Src(o[1], A);
                    for (int l = 0; l < 32; l++) d[l] = (ulong)(long)(int)(uint)a[l];
                    return;
                }
            case FastKind.CvtRnF32S32:
                {
                    // int32 -> f32 round-to-nearest-even: the C# conversion (the generic path goes through an exact double)
                    var a = Src(o[1], A);
                    for (int l = 0; l < 32; l++) d[l] = BitConverter.SingleToUInt32Bits((float)(int)(uint)a[l]);
                    return;
                }
            case FastKind.CvtU64U32:
                {
                    var a = Src(o[1], A);
                    for (int l = 0; l < 32; l++) d[l] = a[l] & 0xFFFFFFFF;
                    return;
                }
            case FastKind.Mov: VecMov(o[1].Reg, o[0].Reg, o[0].RegBits); return;
            case FastKind.Add32: Vec2(Src(o[1], A), Src(o[2], B), d, 0); return;
            case FastKind.Sub32: Vec2(Src(o[1], A), Src(o[2], B), d, 1); return;
            case FastKind.And32: Vec2(Src(o[1], A), Src(o[2], B), d, 2); return;
            case FastKind.Or32: Vec2(Src(o[1], A), Src(o[2], B), d, 3); return;
            case FastKind.Add64: Vec2(Src(o[1], A), Src(o[2], B), d, 4); return;
            case FastKind.Shl32Imm: VecShift(o[1], o[0].Reg, (int)o[2].Imm, left: true); return;
            case FastKind.ShrU32Imm: VecShift(o[1], o[0].Reg, (int)o[2].Imm, left: false); return;
            case FastKind.MulWideS32 when Avx2.IsSupported: VecMulWideS32(o[1], o[2], o[0].Reg); return;
            case FastKind.MulWideS32:
                {
                    var a = Src(o[1], A); var b = Src(o[2], B);
                    for (int l = 0; l < 32; l++) d[l] = (ulong)((long)(int)a[l] * (int)b[l]);
                    return;
                }
            case FastKind.MulWideU32:
                {
                    var a = Src(o[1], A); var b = Src(o[2], B);
                    for (int l = 0; l < 32; l++) d[l] = (a[l] & 0xFFFFFFFF) * (b[l] & 0xFFFFFFFF);
                    return;
                }
            case FastKind.MulLo32:
                {
                    var a = Src(o[1], A); var b = Src(o[2], B);
                    for (int l = 0; l < 32; l++) d[l] = (uint)(a[l] * b[l]);
                    return;
                }
            case FastKind.MadLo32:
                {
                    var a = Src(o[1], A); var b = Src(o[2], B); var c = Src(o[3], C);
                    for (int l = 0; l < 32; l++) d[l] = (uint)(a[l] * b[l] + c[l]);
                    return;
                }
            case FastKind.FmaF32: VecF32(o[1], o[2], o[3], o[0].Reg, 3); return;
            case FastKind.AddF32: VecF32(o[1], o[2], o[2], o[0].Reg, 0); return;
            case FastKind.SubF32: VecF32(o[1], o[2], o[2], o[0].Reg, 1); return;
            case FastKind.MulF32: VecF32(o[1], o[2], o[2], o[0].Reg, 2); return;
        }
    }

    /// <summary>Vector256 add/sub/and/or over 32 lanes; kind 0-3 are 32-bit (masked), 4 is a 64-bit add.</summary>
    private static void Vec2(ReadOnlySpan<ulong> a, ReadOnlySpan<ulong> b, Span<ulong> d, int kind)
    {
        var m = Vector256.Create(kind == 4 ? ulong.MaxValue : 0xFFFFFFFFUL);
        for (int i = 0; i < 32; i += 4)
        {
            var x = Vector256.Create(a.Slice(i, 4));
            var y = Vector256.Create(b.Slice(i, 4));
            var r = kind switch { 1 => x - y, 2 => x & y, 3 => x | y, 5 => x ^ y, _ => x + y };
            (r & m).CopyTo(d.Slice(i, 4));
        }
    }

    /// <summary>setp on 32-bit integers over all 32 lanes: one lane mask, written to the predicate (and ~mask to its pair).</summary>
    private void SetpFast(Instr ins)
    {
        var o = ins.Ops;
        var a = Src(o[1], A); var b = Src(o[2], B);
        uint r = 0;
        if (ins.Fast == FastKind.SetpS32)
        {
            switch (ins.FastCmp)
            {
                case IntCmp.Eq: for (int l = 0; l < 32; l++) r |= ((uint)a[l] == (uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Ne: for (int l = 0; l < 32; l++) r |= ((uint)a[l] != (uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Lt: for (int l = 0; l < 32; l++) r |= ((int)(uint)a[l] < (int)(uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Le: for (int l = 0; l < 32; l++) r |= ((int)(uint)a[l] <= (int)(uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Gt: for (int l = 0; l < 32; l++) r |= ((int)(uint)a[l] > (int)(uint)b[l] ? 1u : 0u) << l; break;
                default: for (int l = 0; l < 32; l++) r |= ((int)(uint)a[l] >= (int)(uint)b[l] ? 1u : 0u) << l; break;
            }
        }
        else
        {
            switch (ins.FastCmp)
            {
                case IntCmp.Eq: for (int l = 0; l < 32; l++) r |= ((uint)a[l] == (uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Ne: for (int l = 0; l < 32; l++) r |= ((uint)a[l] != (uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Lt: for (int l = 0; l < 32; l++) r |= ((uint)a[l] < (uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Le: for (int l = 0; l < 32; l++) r |= ((uint)a[l] <= (uint)b[l] ? 1u : 0u) << l; break;
                case IntCmp.Gt: for (int l = 0; l < 32; l++) r |= ((uint)a[l] > (uint)b[l] ? 1u : 0u) << l; break;
                default: for (int l = 0; l < 32; l++) r |= ((uint)a[l] >= (uint)b[l] ? 1u : 0u) << l; break;
            }
        }
        P[o[0].Reg] = r;
        if (o[0].PairPred >= 0) P[o[0].PairPred] = ~r;
    }

    /// <summary>Lanes i..i+3 of a register (or a broadcast immediate) as 64-bit values.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<ulong> V64(Operand o, int i) =>
        o.Kind == OpKind.Reg ? Vector256.LoadUnsafe(ref MemoryMarshal.GetArrayDataReference(R), (nuint)(o.Reg * 32 + i)) : Vector256.Create(o.Imm);

    /// <summary>Lanes i..i+7 of a register (or an immediate) as f32: the low 32 bits of each slot.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private Vector256<float> F8(Operand o, int i) =>
        o.Kind == OpKind.Reg ? Vector256.Narrow(V64(o, i), V64(o, i + 4)).AsSingle() : Vector256.Create((uint)o.Imm).AsSingle();

    /// <summary>Writes 8 f32 results zero-extended into lanes i..i+7 of register slot <paramref name="dReg"/>.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void StoreF8(int dReg, int i, Vector256<float> v)
    {
        ref ulong d = ref MemoryMarshal.GetArrayDataReference(R);
        var u = v.AsUInt32();
        Vector256.WidenLower(u).StoreUnsafe(ref d, (nuint)(dReg * 32 + i));
        Vector256.WidenUpper(u).StoreUnsafe(ref d, (nuint)(dReg * 32 + i + 4));
    }

    /// <summary>f32 add (0), sub (1), mul (2) or fma (3), round to nearest, 8 lanes at a time (same IEEE results as the scalar forms).</summary>
    private void VecF32(Operand a, Operand b, Operand c, int dReg, int kind)
    {
        if (dReg * 32 + 32 > R.Length) throw new InvalidOperationException("register slot outside the register file");
        for (int i = 0; i < 32; i += 8)
        {
            var x = F8(a, i);
            var y = F8(b, i);
            var r = kind switch
            {
                0 => x + y,
                1 => x - y,
                2 => x * y,
                _ => Vector256.FusedMultiplyAdd(x, y, F8(c, i)),
            };
            StoreF8(dReg, i, r);
        }
    }

    private void VecMov(int sReg, int dReg, int bits)
    {
        if (dReg * 32 + 32 > R.Length || sReg * 32 + 32 > R.Length) throw new InvalidOperationException("register slot outside the register file");
        var m = Vector256.Create(FloatMath.Mask(bits));
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(R);
        for (int i = 0; i < 32; i += 4)
            (Vector256.LoadUnsafe(ref r, (nuint)(sReg * 32 + i)) & m).StoreUnsafe(ref r, (nuint)(dReg * 32 + i));
    }

    /// <summary>32-bit shl / shr.u by an immediate k &lt; 32 (result masked to 32 bits, source chopped to 32 bits).</summary>
    private void VecShift(Operand a, int dReg, int k, bool left)
    {
        if (dReg * 32 + 32 > R.Length) throw new InvalidOperationException("register slot outside the register file");
        var m = Vector256.Create(0xFFFFFFFFUL);
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(R);
        for (int i = 0; i < 32; i += 4)
        {
            var x = V64(a, i);
            var y = left ? Vector256.ShiftLeft(x, k) & m : Vector256.ShiftRightLogical(x & m, k);
            y.StoreUnsafe(ref r, (nuint)(dReg * 32 + i));
        }
    }

    /// <summary>mul.wide.s32: vpmuldq multiplies the sign-extended low 32 bits of each 64-bit slot into a 64-bit product.</summary>
    private void VecMulWideS32(Operand a, Operand b, int dReg)
    {
        if (dReg * 32 + 32 > R.Length) throw new InvalidOperationException("register slot outside the register file");
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(R);
        for (int i = 0; i < 32; i += 4)
            Avx2.Multiply(V64(a, i).AsInt32(), V64(b, i).AsInt32()).AsUInt64().StoreUnsafe(ref r, (nuint)(dReg * 32 + i));
    }
}
