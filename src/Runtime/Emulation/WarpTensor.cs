using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>mma.sync (m16n8k16 / m16n8k8, bf16/f16 → f32), ldmatrix, cp.async (docs/emulator.md).</summary>
internal sealed unsafe partial class Warp
{
    private readonly double[] _ma = new double[16 * 16], _mb = new double[8 * 16], _mc = new double[16 * 8];
    private readonly ulong[][] _frag = [new ulong[32], new ulong[32], new ulong[32], new ulong[32]];

    // Fragment maps of mma.m16n8k16 (ISA 9.7.14.5.8), per (register r, lane): the element index of the low half.
    // A: 16x16 row-major [m][k]; B stored transposed [n][k]; C/D: 16x8 row-major [m][n].
    private static readonly int[] MmaAIndex = BuildMap(4, (r, g, t) => (g + ((r & 1) != 0 ? 8 : 0)) * 16 + 2 * t + (r >= 2 ? 8 : 0));
    // B is kept as [k][n] (16x8) so that D rows accumulate as 8-wide vectors: the high half of a pair is at +8 (next k)
    private static readonly int[] MmaBIndex = BuildMap(2, (r, g, t) => (2 * t + (r == 1 ? 8 : 0)) * 8 + g);
    private static readonly int[] MmaCIndex = BuildMap(4, (r, g, t) => (g + (r >= 2 ? 8 : 0)) * 8 + 2 * t + (r & 1));

    private static int[] BuildMap(int regs, Func<int, int, int, int> at)
    {
        var m = new int[regs * 32];
        for (int r = 0; r < regs; r++)
            for (int lane = 0; lane < 32; lane++) m[r * 32 + lane] = at(r, lane >> 2, lane & 3);
        return m;
    }

    /// <summary>Register slot of fragment element <paramref name="i"/> of vector operand <paramref name="v"/> (checked: a 32-bit register).</summary>
    private int FragSlot(Operand v, int count, int i, Instr ins)
    {
        if (v.Kind != OpKind.Vec || v.Elems.Length != count) throw Fault($"expected a vector of {count} registers, found {v.Name}", ins, 0);
        var e = v.Elems[i];
        if (e.Kind != OpKind.Reg || e.RegBits != 32) return -1;
        return e.Reg * 32;
    }

    /// <summary>Lane values of fragment register <paramref name="i"/>: straight from the register file, or through Load for other operand kinds.</summary>
    private ReadOnlySpan<ulong> Frag(Operand v, int count, int i, Instr ins)
    {
        int slot = FragSlot(v, count, i, ins);
        if (slot >= 0) return new ReadOnlySpan<ulong>(R, slot, 32);
        Load(v.Elems[i], _frag[i], PtxType.B32);
        return _frag[i];
    }

    private void Mma(Instr ins)
    {
        int k = ins.Shape;
        bool bf = ins.T2 == PtxType.BF16;
        var o = ins.Ops;
        int na = k == 16 ? 4 : 2, nb = k == 16 ? 2 : 1;
        var ma = _ma;
        var mb = _mb;
        var mc = _mc;
        // k = 8 uses the first two A registers with the k = 16 map restricted to columns 0..7 (same rows and columns)
        for (int r = 0; r < na; r++) UnpackPairs(Frag(o[1], na, r, ins), MmaAIndex, r, ma, highOffset: 1, bf);
        for (int r = 0; r < nb; r++) UnpackPairs(Frag(o[2], nb, r, ins), MmaBIndex, r, mb, highOffset: 8, bf);
        for (int r = 0; r < 4; r++)
        {
            var v = Frag(o[3], 4, r, ins);
            for (int lane = 0; lane < 32; lane++) mc[MmaCIndex[r * 32 + lane]] = FloatMath.AsF32(v[lane]);
        }
        if (Cta.Launch.HardwareMath && Environment.GetEnvironmentVariable("XX_NOMMA") == null) TensorCoreAccumulate(k);
        else ExactAccumulate(k);
        var d = o[0];
        if (d.Kind != OpKind.Vec || d.Elems.Length != 4) throw Fault("mma destination must be 4 registers", ins, 0);
        for (int r = 0; r < 4; r++)
        {
            for (int lane = 0; lane < 32; lane++) D[lane] = FloatMath.Bits((float)mc[MmaCIndex[r * 32 + lane]]);
            Store(d.Elems[r], D, 0xFFFFFFFF & Live, PtxType.F32);
        }
        Cta.Counters.MmaCount++;
    }

    /// <summary>D = A·B + C in f64 (the fast default), rounded once to f32 by the caller.</summary>
    private void ExactAccumulate(int k)
    {
        var ma = _ma;
        var mb = _mb;
        var mc = _mc;
        // D = A·B + C: products of bf16/f16 values are exact in f64 and their sum with C is exact in nearly all cases
        // (53-bit significand); one rounding to f32 at the end. Four rows of D at a time, each as two 4-wide vectors
        // accumulating over k: eight independent add chains keep the FMA units busy.
        ref double pa = ref MemoryMarshal.GetArrayDataReference(ma);
        ref double pb = ref MemoryMarshal.GetArrayDataReference(mb);
        ref double pc = ref MemoryMarshal.GetArrayDataReference(mc);
        for (int i = 0; i < 16; i += 4)
        {
            nuint cr = (nuint)(i * 8);
            var c00 = Vector256.LoadUnsafe(ref pc, cr); var c01 = Vector256.LoadUnsafe(ref pc, cr + 4);
            var c10 = Vector256.LoadUnsafe(ref pc, cr + 8); var c11 = Vector256.LoadUnsafe(ref pc, cr + 12);
            var c20 = Vector256.LoadUnsafe(ref pc, cr + 16); var c21 = Vector256.LoadUnsafe(ref pc, cr + 20);
            var c30 = Vector256.LoadUnsafe(ref pc, cr + 24); var c31 = Vector256.LoadUnsafe(ref pc, cr + 28);
            for (int kk = 0; kk < k; kk++)
            {
                var b0 = Vector256.LoadUnsafe(ref pb, (nuint)(kk * 8));
                var b1 = Vector256.LoadUnsafe(ref pb, (nuint)(kk * 8 + 4));
                var a0 = Vector256.Create(Unsafe.Add(ref pa, i * 16 + kk));
                var a1 = Vector256.Create(Unsafe.Add(ref pa, i * 16 + 16 + kk));
                var a2 = Vector256.Create(Unsafe.Add(ref pa, i * 16 + 32 + kk));
                var a3 = Vector256.Create(Unsafe.Add(ref pa, i * 16 + 48 + kk));
                c00 += a0 * b0; c01 += a0 * b1;
                c10 += a1 * b0; c11 += a1 * b1;
                c20 += a2 * b0; c21 += a2 * b1;
                c30 += a3 * b0; c31 += a3 * b1;
            }
            c00.StoreUnsafe(ref pc, cr); c01.StoreUnsafe(ref pc, cr + 4);
            c10.StoreUnsafe(ref pc, cr + 8); c11.StoreUnsafe(ref pc, cr + 12);
            c20.StoreUnsafe(ref pc, cr + 16); c21.StoreUnsafe(ref pc, cr + 20);
            c30.StoreUnsafe(ref pc, cr + 24); c31.StoreUnsafe(ref pc, cr + 28);
        }
    }

    /// <summary>
    /// Hardware-like mma accumulation (docs/emulator.md, after Khattak and Mikaitis' tensor-core models): each element of
    /// D is C plus the products in blocks of 8 (sm_80) or 16 (sm_90); within a block the exact products and the running
    /// sum are aligned to the largest exponent, each cut (towards zero) to 24 + extra bits (1 on sm_80, 2 on sm_90) below
    /// it, added exactly, and the block's sum is truncated to f32 (round towards zero), which feeds the next block.
    /// </summary>
    private void TensorCoreAccumulate(int k)
    {
        bool hopper = Cta.Launch.Device.ComputeMajor >= 9;
        int block = Math.Min(k, hopper ? 16 : 8), extraBits = hopper ? 2 : 1;
        Span<double> terms = stackalloc double[17];
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 8; j++)
            {
                float acc = (float)_mc[i * 8 + j];
                for (int k0 = 0; k0 < k; k0 += block)
                {
                    for (int kk = 0; kk < block; kk++) terms[kk] = _ma[i * 16 + k0 + kk] * _mb[(k0 + kk) * 8 + j];
                    terms[block] = acc;
                    acc = TensorCoreBlock(terms[..(block + 1)], extraBits);
                }
                _mc[i * 8 + j] = acc;
            }
    }

    /// <summary>One block of exact products plus the accumulator: aligned, truncated, summed, truncated to f32.</summary>
    internal static float TensorCoreBlock(ReadOnlySpan<double> terms, int extraBits)
    {
        double exact = 0;
        int emax = int.MinValue;
        foreach (double t in terms)
        {
            exact += t;
            if (t != 0 && double.IsFinite(t)) emax = Math.Max(emax, Math.ILogB(t));
        }
        if (!double.IsFinite(exact) || emax == int.MinValue) return (float)exact;   // Inf/NaN as IEEE; all zero keeps the IEEE zero sign
        double quantum = Math.ScaleB(1.0, emax - 23 - extraBits);
        double sum = 0;
        foreach (double t in terms) sum += Math.Truncate(t / quantum) * quantum;   // scaling by a power of two: exact
        return sum == 0 ? 0f : FloatMath.RoundDirected(sum, 0, Rnd.Rz);
    }

    /// <summary>Fragment register <paramref name="r"/> (two bf16/f16 per lane) into the f64 matrix: the low half at
    /// <c>map[r·32 + lane]</c>, the high half <paramref name="highOffset"/> elements further (next k).</summary>
    private static void UnpackPairs(ReadOnlySpan<ulong> v, int[] map, int r, double[] dst, int highOffset, bool bf)
    {
        for (int lane = 0; lane < 32; lane++)
        {
            int at = map[r * 32 + lane];
            uint w = (uint)v[lane];
            dst[at] = Half(w, bf);
            dst[at + highOffset] = Half(w >> 16, bf);
        }
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private static double Half(uint v, bool bf) => bf ? FloatMath.FromBf16(v) : FloatMath.FromF16(v & 0xFFFF);

    private void Ldmatrix(Instr ins)
    {
        int num = ins.Shape;
        var d = ins.Ops[0];
        if (d.Kind != OpKind.Vec || d.Elems.Length != num) throw Fault($"ldmatrix .x{num} needs {num} destination registers", ins, 0);
        var addrOp = ins.Ops[1];
        Span<ulong> rowPtr = stackalloc ulong[32];
        Span<uint> rowOff = stackalloc uint[32];
        RaceTime++;
        for (int i = 0; i < num * 8; i++)
        {
            ulong a = LaneAddress(addrOp, i);
            Space sp = Route(ins.Space, ref a);
            if (sp != Space.Shared) throw Fault($"memcheck: ldmatrix row address 0x{a:x} (lane {i}) is not in shared memory", ins, i);
            rowPtr[i] = (ulong)Translate(Space.Shared, a, 16, false, ins, i);
            rowOff[i] = (uint)a;
            Cta.Race?.Access((uint)a, 16, false, Index, this, ins, i);
        }
        for (int m = 0; m < num; m++)
        {
            for (int lane = 0; lane < 32; lane++)
            {
                int r = lane >> 2, c = 2 * (lane & 3);
                ushort lo, hi;
                if (!ins.Trans)
                {
                    ushort* row = (ushort*)rowPtr[8 * m + r];
                    lo = row[c]; hi = row[c + 1];
                }
                else
                {
                    lo = ((ushort*)rowPtr[8 * m + c])[r];
                    hi = ((ushort*)rowPtr[8 * m + c + 1])[r];
                }
                D[lane] = (uint)(lo | (hi << 16));
            }
            Store(d.Elems[m], D, Live, PtxType.B32);
            // bank wavefronts: 8 rows of 16 B per matrix
            for (int i = 0; i < 8; i++) _bankWords[i] = rowOff[8 * m + i];
            CountBanks(8, 16);
        }
        Cta.Counters.SharedLoadRequests++;
    }

    // ---------------- cp.async ----------------

    private readonly record struct PendingCopy(int Lane, uint Dst, nint Src, int SrcBytes, int Bytes, int Group, Instr Ins);
    private readonly List<PendingCopy> _pending = [];
    private readonly int[] _committed = new int[32];

    private void ResetAsync()
    {
        _pending.Clear();
        Array.Clear(_committed);
    }

    private void CpAsync(Instr ins, uint exec)
    {
        var o = ins.Ops;
        int cpSize = (int)o[2].Imm;
        if (o[2].Kind != OpKind.Imm || cpSize is not (4 or 8 or 16)) throw Fault("cp.async cp-size must be 4, 8 or 16", ins, 0);
        bool hasSrcSize = o.Length == 4 && o[3].Kind != OpKind.Pred;
        long dram0 = Cta.Counters.DramSectors;
        bool preWait = (exec & _preWait) != 0;
        if (preWait) PreWaitAccess(ins, exec, o[1], Space.Global, cpSize, "cp.async from", count: true);
        if (hasSrcSize) Load(o[3], C, PtxType.U32);
        uint ignore = o.Length == 4 && o[3].Kind == OpKind.Pred ? PredValue(o[3]) : 0;
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong dst = LaneAddress(o[0], l);
            Space dsp = Route(Space.Shared, ref dst);
            Translate(dsp, dst, cpSize, true, ins, l);
            int srcBytes = ((ignore >> l) & 1) != 0 ? 0 : hasSrcSize ? (int)Math.Min(C[l], (ulong)cpSize) : cpSize;
            nint src = 0;
            if (srcBytes > 0)
            {
                ulong s = LaneAddress(o[1], l);
                Space ssp = Route(Space.Global, ref s);
                if ((s & (ulong)(cpSize - 1)) != 0) throw Fault($"memcheck: misaligned cp.async source 0x{s:x} (cp-size {cpSize})", ins, l);
                src = (nint)Translate(ssp, s, srcBytes, false, ins, l, align: 1);
                Cta.Launch.TouchSector(_lastAlloc!, s, srcBytes, Cta.Counters);
            }
            _pending.Add(new PendingCopy(l, (uint)dst, src, srcBytes, cpSize, -1, ins));
            Cta.Race?.MarkPending((uint)dst, cpSize, Index, true);
            Cta.Counters.CpAsyncBytes += cpSize;
        }
        if (exec != 0) NoteGlobalRead(ins, Cta.Counters.DramSectors != dram0);
    }

    private void CommitGroup(uint exec)
    {
        for (int i = 0; i < _pending.Count; i++)
        {
            var p = _pending[i];
            if (p.Group < 0 && ((exec >> p.Lane) & 1) != 0) _pending[i] = p with { Group = _committed[p.Lane] };
        }
        for (uint e = exec; e != 0; e &= e - 1) _committed[BitOperations.TrailingZeroCount(e)]++;
    }

    /// <summary>Completes (copies) every committed group of the exec lanes except the newest <paramref name="n"/>.</summary>
    private void WaitGroup(Instr ins, uint exec, int n)
    {
        RaceTime++;   // the completed copies write now
        for (int i = 0; i < _pending.Count; i++)
        {
            var p = _pending[i];
            if (p.Group < 0 || ((exec >> p.Lane) & 1) == 0 || p.Group >= _committed[p.Lane] - n) continue;
            byte* dst = Cta.SharedPtr + p.Dst;
            if (p.SrcBytes > 0) Buffer.MemoryCopy((void*)p.Src, dst, p.Bytes, p.SrcBytes);
            new Span<byte>(dst + p.SrcBytes, p.Bytes - p.SrcBytes).Clear();
            Cta.Race?.MarkPending(p.Dst, p.Bytes, Index, false);
            Cta.Race?.Access(p.Dst, p.Bytes, true, Index, this, p.Ins, p.Lane);
            _pending.RemoveAt(i--);
        }
        _ = ins;
    }
}
