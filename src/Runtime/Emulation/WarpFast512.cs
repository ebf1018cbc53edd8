using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// The full-warp fast handlers on AVX-512 machines: one register row (32 lanes × 64 bits) is four Vector512, so
/// each instruction is four load-op-store steps. Each operation is a struct whose static <c>Do</c> the JIT inlines
/// into <see cref="Map{TOp}"/>; kinds not listed here fall back to the Vector256 handlers in WarpFast.
/// Results are the same bits as the Vector256 and per-lane handlers (FastPathTests compares them).
/// </summary>
internal sealed partial class Warp
{
    /// <summary>True where Vector512 runs natively (AVX-512F); launches then use <see cref="ExecFast512"/> unless the options say no.</summary>
    internal static readonly bool Avx512Available = Vector512.IsHardwareAccelerated && Avx512F.IsSupported;

    private interface IFastOp
    {
        static abstract Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k);
    }

    private static Vector512<ulong> Low32 => Vector512.Create(0xFFFFFFFFUL);

    private readonly struct MovOp : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => a & c; }
    private readonly struct Add32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (a + b) & Low32; }
    private readonly struct Sub32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (a - b) & Low32; }
    private readonly struct And32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => a & b & Low32; }
    private readonly struct Or32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (a | b) & Low32; }
    private readonly struct Xor32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (a ^ b) & Low32; }
    private readonly struct Add64Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => a + b; }
    private readonly struct Shl32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => Vector512.ShiftLeft(a, k) & Low32; }
    private readonly struct ShrU32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => Vector512.ShiftRightLogical(a & Low32, k); }
    private readonly struct ShrS32Op : IFastOp
    {
        public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) =>
            Vector512.ShiftRightArithmetic(Vector512.ShiftLeft(a, 32).AsInt64(), 32 + k).AsUInt64() & Low32;
    }
    private readonly struct Shl64Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => Vector512.ShiftLeft(a, k); }
    private readonly struct ShrU64Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => Vector512.ShiftRightLogical(a, k); }
    private readonly struct CvtS64S32Op : IFastOp
    {
        public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) =>
            Vector512.ShiftRightArithmetic(Vector512.ShiftLeft(a, 32).AsInt64(), 32).AsUInt64();
    }
    private readonly struct CvtU64U32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => a & Low32; }
    private readonly struct MulWideS32Op : IFastOp
    {
        public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => Avx512F.Multiply(a.AsInt32(), b.AsInt32()).AsUInt64();
    }
    private readonly struct MulWideU32Op : IFastOp
    {
        public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => Avx512F.Multiply(a.AsUInt32(), b.AsUInt32());
    }
    private readonly struct MulLo32Op : IFastOp
    {
        public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => Avx512F.Multiply(a.AsUInt32(), b.AsUInt32()) & Low32;
    }
    private readonly struct MadLo32Op : IFastOp
    {
        public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (Avx512F.Multiply(a.AsUInt32(), b.AsUInt32()) + c) & Low32;
    }
    // f32 in the low half of each slot; the high halves of 32-bit registers are zero and their results are discarded
    private readonly struct FmaF32Op : IFastOp
    {
        public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) =>
            Vector512.FusedMultiplyAdd(a.AsSingle(), b.AsSingle(), c.AsSingle()).AsUInt64() & Low32;
    }
    private readonly struct AddF32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (a.AsSingle() + b.AsSingle()).AsUInt64() & Low32; }
    private readonly struct SubF32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (a.AsSingle() - b.AsSingle()).AsUInt64() & Low32; }
    private readonly struct MulF32Op : IFastOp { public static Vector512<ulong> Do(Vector512<ulong> a, Vector512<ulong> b, Vector512<ulong> c, int k) => (a.AsSingle() * b.AsSingle()).AsUInt64() & Low32; }

    /// <summary>d = op(a, b, c) over one register row, 8 lanes per step; an operand row of -1 is its broadcast immediate.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void Map<TOp>(ref ulong r, Instr ins) where TOp : struct, IFastOp
    {
        int d = ins.FD, a = ins.FA, b = ins.FB, c = ins.FC, k = (int)ins.FImmB;
        var ia = Vector512.Create(ins.FImmA);
        var ib = Vector512.Create(ins.FImmB);
        var ic = Vector512.Create(ins.FImmC);
        for (int i = 0; i < 32; i += 8)
        {
            var x = a >= 0 ? Vector512.LoadUnsafe(ref r, (nuint)(a + i)) : ia;
            var y = b >= 0 ? Vector512.LoadUnsafe(ref r, (nuint)(b + i)) : ib;
            var z = c >= 0 ? Vector512.LoadUnsafe(ref r, (nuint)(c + i)) : ic;
            TOp.Do(x, y, z, k).StoreUnsafe(ref r, (nuint)(d + i));
        }
    }

    /// <summary>Runs a classified instruction over all 32 lanes with Vector512 (launches with <see cref="LaunchState.Wide512"/>).</summary>
    private void ExecFast512(Instr ins)
    {
        if (ins.FRowsEnd > R.Length) throw new InvalidOperationException("register slot outside the register file");
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(R);
        switch (ins.Fast)
        {
            case FastKind.Mov: Map<MovOp>(ref r, ins); return;
            case FastKind.Add32: Map<Add32Op>(ref r, ins); return;
            case FastKind.Sub32: Map<Sub32Op>(ref r, ins); return;
            case FastKind.And32: Map<And32Op>(ref r, ins); return;
            case FastKind.Or32: Map<Or32Op>(ref r, ins); return;
            case FastKind.Xor32: Map<Xor32Op>(ref r, ins); return;
            case FastKind.Add64: Map<Add64Op>(ref r, ins); return;
            case FastKind.Shl32Imm: Map<Shl32Op>(ref r, ins); return;
            case FastKind.ShrU32Imm: Map<ShrU32Op>(ref r, ins); return;
            case FastKind.ShrS32Imm: Map<ShrS32Op>(ref r, ins); return;
            case FastKind.Shl64Imm: Map<Shl64Op>(ref r, ins); return;
            case FastKind.ShrU64Imm: Map<ShrU64Op>(ref r, ins); return;
            case FastKind.CvtS64S32: Map<CvtS64S32Op>(ref r, ins); return;
            case FastKind.CvtU64U32: Map<CvtU64U32Op>(ref r, ins); return;
            case FastKind.MulWideS32: Map<MulWideS32Op>(ref r, ins); return;
            case FastKind.MulWideU32: Map<MulWideU32Op>(ref r, ins); return;
            case FastKind.MulLo32: Map<MulLo32Op>(ref r, ins); return;
            case FastKind.MadLo32: Map<MadLo32Op>(ref r, ins); return;
            case FastKind.FmaF32: Map<FmaF32Op>(ref r, ins); return;
            case FastKind.AddF32: Map<AddF32Op>(ref r, ins); return;
            case FastKind.SubF32: Map<SubF32Op>(ref r, ins); return;
            case FastKind.MulF32: Map<MulF32Op>(ref r, ins); return;
            default: ExecFast(ins); return;
        }
    }
}
