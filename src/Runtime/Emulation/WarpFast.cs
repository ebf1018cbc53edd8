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

    /// <summary>
    /// Resolves a classified instruction's operands into register rows (slot·32) or immediates, so that
    /// <see cref="ExecFast"/> touches no <see cref="Operand"/> objects. Runs after immediates got their final width.
    /// </summary>
    public static void PrepareFast(Instr ins)
    {
        ins.FastGo = false;
        if (ins.Fast == FastKind.None) return;
        var o = ins.Ops;
        int end = 0;
        int Row(int i, out ulong imm)
        {
            imm = 0;
            if (i >= o.Length) return -1;
            if (o[i].Kind == OpKind.Reg) { end = Math.Max(end, o[i].Reg * 32 + 32); return o[i].Reg * 32; }
            imm = o[i].Imm;
            return -1;
        }
        bool setp = ins.Fast is FastKind.SetpS32 or FastKind.SetpU32;
        ins.FD = setp ? -1 : Row(0, out _);
        ins.FA = Row(1, out ins.FImmA);
        ins.FB = Row(2, out ins.FImmB);
        ins.FC = ins.Fast == FastKind.Selp32 ? -1 : Row(3, out ins.FImmC);
        if (ins.Fast == FastKind.Mov) ins.FImmC = FloatMath.Mask(o[0].RegBits);
        ins.FRowsEnd = end;
        ins.FastGo = ins.GuardPred < 0;
    }

    /// <summary>Lanes i..i+3 of a row, or a broadcast immediate when the row is -1.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<ulong> V(ref ulong r, int row, ulong imm, int i) =>
        row >= 0 ? Vector256.LoadUnsafe(ref r, (nuint)(row + i)) : Vector256.Create(imm);

    /// <summary>Lanes i..i+7 of a row (or an immediate) as 32-bit values: the low half of each slot.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static Vector256<uint> V32(ref ulong r, int row, ulong imm, int i) =>
        row >= 0 ? Vector256.Narrow(Vector256.LoadUnsafe(ref r, (nuint)(row + i)), Vector256.LoadUnsafe(ref r, (nuint)(row + i + 4)))
                 : Vector256.Create((uint)imm);

    /// <summary>Writes 8 32-bit results zero-extended into lanes i..i+7 of a row.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Store32(ref ulong r, int row, int i, Vector256<uint> v)
    {
        Vector256.WidenLower(v).StoreUnsafe(ref r, (nuint)(row + i));
        Vector256.WidenUpper(v).StoreUnsafe(ref r, (nuint)(row + i + 4));
    }

    /// <summary>Runs a classified instruction over all 32 lanes (operand rows resolved by <see cref="PrepareFast"/>).</summary>
    private void ExecFast(Instr ins)
    {
        if (ins.FRowsEnd > R.Length) throw new InvalidOperationException("register slot outside the register file");
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(R);
        int d = ins.FD, a = ins.FA, b = ins.FB, c = ins.FC;
        ulong ia = ins.FImmA, ib = ins.FImmB, ic = ins.FImmC;
        var m32 = Vector256.Create(0xFFFFFFFFUL);
        switch (ins.Fast)
        {
            case FastKind.Mov:
                {
                    var m = Vector256.Create(ic);
                    for (int i = 0; i < 32; i += 4) (V(ref r, a, ia, i) & m).StoreUnsafe(ref r, (nuint)(d + i));
                    return;
                }
            case FastKind.Add32: for (int i = 0; i < 32; i += 4) ((V(ref r, a, ia, i) + V(ref r, b, ib, i)) & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.Sub32: for (int i = 0; i < 32; i += 4) ((V(ref r, a, ia, i) - V(ref r, b, ib, i)) & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.And32: for (int i = 0; i < 32; i += 4) (V(ref r, a, ia, i) & V(ref r, b, ib, i) & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.Or32: for (int i = 0; i < 32; i += 4) ((V(ref r, a, ia, i) | V(ref r, b, ib, i)) & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.Xor32: for (int i = 0; i < 32; i += 4) ((V(ref r, a, ia, i) ^ V(ref r, b, ib, i)) & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.Add64: for (int i = 0; i < 32; i += 4) (V(ref r, a, ia, i) + V(ref r, b, ib, i)).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.Shl32Imm: for (int i = 0; i < 32; i += 4) (Vector256.ShiftLeft(V(ref r, a, ia, i), (int)ib) & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.ShrU32Imm: for (int i = 0; i < 32; i += 4) Vector256.ShiftRightLogical(V(ref r, a, ia, i) & m32, (int)ib).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.ShrS32Imm:
                for (int i = 0; i < 32; i += 4)
                    (Vector256.ShiftRightArithmetic(Vector256.ShiftLeft(V(ref r, a, ia, i), 32).AsInt64(), 32 + (int)ib).AsUInt64() & m32).StoreUnsafe(ref r, (nuint)(d + i));
                return;
            case FastKind.Shl64Imm: for (int i = 0; i < 32; i += 4) Vector256.ShiftLeft(V(ref r, a, ia, i), (int)ib).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.ShrU64Imm: for (int i = 0; i < 32; i += 4) Vector256.ShiftRightLogical(V(ref r, a, ia, i), (int)ib).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.CvtS64S32:
                for (int i = 0; i < 32; i += 4)
                    Vector256.ShiftRightArithmetic(Vector256.ShiftLeft(V(ref r, a, ia, i), 32).AsInt64(), 32).AsUInt64().StoreUnsafe(ref r, (nuint)(d + i));
                return;
            case FastKind.CvtU64U32: for (int i = 0; i < 32; i += 4) (V(ref r, a, ia, i) & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.CvtRnF32S32:
                // int32 -> f32 round-to-nearest-even (vcvtdq2ps under the default MXCSR mode; the generic path goes through an exact double)
                for (int i = 0; i < 32; i += 8) Store32(ref r, d, i, Vector256.ConvertToSingle(V32(ref r, a, ia, i).AsInt32()).AsUInt32());
                return;
            case FastKind.MulWideS32 when Avx2.IsSupported:
                // vpmuldq: the sign-extended low 32 bits of each 64-bit slot into a 64-bit product
                for (int i = 0; i < 32; i += 4) Avx2.Multiply(V(ref r, a, ia, i).AsInt32(), V(ref r, b, ib, i).AsInt32()).AsUInt64().StoreUnsafe(ref r, (nuint)(d + i));
                return;
            case FastKind.MulWideU32 when Avx2.IsSupported:
                for (int i = 0; i < 32; i += 4) Avx2.Multiply(V(ref r, a, ia, i).AsUInt32(), V(ref r, b, ib, i).AsUInt32()).StoreUnsafe(ref r, (nuint)(d + i));
                return;
            case FastKind.MulLo32 when Avx2.IsSupported:
                for (int i = 0; i < 32; i += 4) (Avx2.Multiply(V(ref r, a, ia, i).AsUInt32(), V(ref r, b, ib, i).AsUInt32()) & m32).StoreUnsafe(ref r, (nuint)(d + i));
                return;
            case FastKind.MadLo32 when Avx2.IsSupported:
                for (int i = 0; i < 32; i += 4)
                    ((Avx2.Multiply(V(ref r, a, ia, i).AsUInt32(), V(ref r, b, ib, i).AsUInt32()) + V(ref r, c, ic, i)) & m32).StoreUnsafe(ref r, (nuint)(d + i));
                return;
            case FastKind.MulWideS32: for (int l = 0; l < 32; l++) Lane(ref r, d, l) = (ulong)((long)(int)Get(ref r, a, ia, l) * (int)Get(ref r, b, ib, l)); return;
            case FastKind.MulWideU32: for (int l = 0; l < 32; l++) Lane(ref r, d, l) = (Get(ref r, a, ia, l) & 0xFFFFFFFF) * (Get(ref r, b, ib, l) & 0xFFFFFFFF); return;
            case FastKind.MulLo32: for (int l = 0; l < 32; l++) Lane(ref r, d, l) = (uint)(Get(ref r, a, ia, l) * Get(ref r, b, ib, l)); return;
            case FastKind.MadLo32: for (int l = 0; l < 32; l++) Lane(ref r, d, l) = (uint)(Get(ref r, a, ia, l) * Get(ref r, b, ib, l) + Get(ref r, c, ic, l)); return;
            // f32 in the low half of each 64-bit slot: operate on all 8 floats of a vector and clear the high halves
            // after (no narrowing shuffles); the high halves of 32-bit registers are zero, and whatever they compute is discarded
            case FastKind.FmaF32:
                for (int i = 0; i < 32; i += 4)
                    (Vector256.FusedMultiplyAdd(V(ref r, a, ia, i).AsSingle(), V(ref r, b, ib, i).AsSingle(), V(ref r, c, ic, i).AsSingle()).AsUInt64() & m32)
                        .StoreUnsafe(ref r, (nuint)(d + i));
                return;
            case FastKind.AddF32: for (int i = 0; i < 32; i += 4) ((V(ref r, a, ia, i).AsSingle() + V(ref r, b, ib, i).AsSingle()).AsUInt64() & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.SubF32: for (int i = 0; i < 32; i += 4) ((V(ref r, a, ia, i).AsSingle() - V(ref r, b, ib, i).AsSingle()).AsUInt64() & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.MulF32: for (int i = 0; i < 32; i += 4) ((V(ref r, a, ia, i).AsSingle() * V(ref r, b, ib, i).AsSingle()).AsUInt64() & m32).StoreUnsafe(ref r, (nuint)(d + i)); return;
            case FastKind.Selp32:
                {
                    uint p = PredValue(ins.Ops[3]);
                    for (int l = 0; l < 32; l++) Lane(ref r, d, l) = (((p >> l) & 1) != 0 ? Get(ref r, a, ia, l) : Get(ref r, b, ib, l)) & 0xFFFFFFFF;
                    return;
                }
            case FastKind.SetpS32: case FastKind.SetpU32: SetpFast(ins, ref r); return;
        }
        throw new InvalidOperationException($"fast kind {ins.Fast} has no handler");
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ref ulong Lane(ref ulong r, int row, int lane) => ref Unsafe.Add(ref r, row + lane);

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong Get(ref ulong r, int row, ulong imm, int lane) => row >= 0 ? Unsafe.Add(ref r, row + lane) : imm;

    /// <summary>setp on 32-bit integers over all 32 lanes, 8 lanes per compare: one lane mask, written to the predicate (and ~mask to its pair).</summary>
    private void SetpFast(Instr ins, ref ulong r)
    {
        int a = ins.FA, b = ins.FB;
        ulong ia = ins.FImmA, ib = ins.FImmB;
        bool signed = ins.Fast == FastKind.SetpS32;
        var flip = Vector256.Create(0x80000000u);
        uint mask = 0;
        for (int i = 0; i < 32; i += 8)
        {
            var x = V32(ref r, a, ia, i);
            var y = V32(ref r, b, ib, i);
            // unsigned order = signed order after flipping the sign bits
            if (!signed) { x ^= flip; y ^= flip; }
            var xs = x.AsInt32();
            var ys = y.AsInt32();
            var t = ins.FastCmp switch
            {
                IntCmp.Eq => Vector256.Equals(xs, ys),
                IntCmp.Ne => ~Vector256.Equals(xs, ys),
                IntCmp.Lt => Vector256.LessThan(xs, ys),
                IntCmp.Le => Vector256.LessThanOrEqual(xs, ys),
                IntCmp.Gt => Vector256.GreaterThan(xs, ys),
                _ => Vector256.GreaterThanOrEqual(xs, ys),
            };
            mask |= t.ExtractMostSignificantBits() << i;
        }
        var o = ins.Ops;
        P[o[0].Reg] = mask;
        if (o[0].PairPred >= 0) P[o[0].PairPred] = ~mask;
    }
}
