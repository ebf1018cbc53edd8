using System.Numerics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// The fast path for explicit <c>.global</c> ld/st: when every lane's range lies in one live allocation (checked
/// once on [min, max]) and is aligned, data moves without per-lane lookups. False sends the access to the per-lane
/// path in WarpMemory, which reports the exact fault. The common full-warp case is a uniform stride (lane l at
/// a0 + l·stride: coalesced rows, strided columns, broadcasts); it is detected with Vector256 compares and then needs
/// no per-lane address array for the copy, the bounds, or the sector counting.
/// </summary>
internal sealed unsafe partial class Warp
{
    [MethodImpl(MethodImplOptions.NoInlining)] // keeps the run loop's frame small
    private bool TryGlobalFast(Instr ins, uint exec, Operand addrOp, Operand dataOp, int size, int vec, int total, bool write)
    {
        if (addrOp.Reg < 0 || total > 32) return false;
        int baseSlot = addrOp.Reg * 32;
        if (baseSlot + 32 > R.Length) return false;
        ulong off = (ulong)addrOp.Offset;
        ulong lo, hi, misalign;
        long stride = 0;
        bool uniform = false;
        if (exec == 0xFFFFFFFF) uniform = FullWarpAddresses(baseSlot, off, out lo, out hi, out misalign, out stride);
        else PartialAddresses(exec, baseSlot, off, out lo, out hi, out misalign);
        if ((misalign & (ulong)(total - 1)) != 0) return false;
        var al = _lastAlloc;
        if (al == null || al.Freed || lo < al.Start || hi + (ulong)total > al.End)
        {
            al = Cta.Launch.Memory.Find(lo);
            if (al == null || al.Freed || hi + (ulong)total > al.End) return false;
            _lastAlloc = al;
        }
        if (al.Written != null) return false;
        byte* host = al.Host - (long)al.Start;
        bool sext = PtxTypes.IsSigned(ins.T);
        ulong a0 = _addr[0];
        if (uniform && size == 4 && vec == 4 && Avx2.IsSupported && TryTransposeV4(host + a0, stride, dataOp, write, sext))
            vec = 0; // moved: 16 bytes per lane transposed to/from four register rows
        for (int i = 0; i < vec; i++)
        {
            var el = vec == 1 ? dataOp : dataOp.Elems[i];
            // registers move directly when no masking or sign extension is involved (a store truncates to size bytes anyway)
            bool direct = el.Kind == OpKind.Reg && (write || (el.RegBits >= size * 8 && !(sext && el.RegBits > size * 8)));
            ulong[] regs = direct ? R : Buf(i);
            int row = direct ? el.Reg * 32 : 0;
            if (!direct && write) Load(el, regs, ins.T);
            if (uniform) CopyStrided(host + a0 + i * size, stride, size, regs, row, write);
            else CopyLanes(host + i * size, _addr, exec, size, regs, row, write);
            if (!direct && !write) Store(el, regs, exec, ins.T);
        }
        if (write)
        {
            LaunchState.Track(al);
            if (uniform && stride >= 0 && stride <= 32) Cta.Launch.NoteWrite(al, a0, (int)(31 * stride) + total);
            else for (uint e = exec; e != 0; e &= e - 1) Cta.Launch.NoteWrite(al, _addr[BitOperations.TrailingZeroCount(e)], total);
        }
        if (uniform && stride >= 0 && stride <= 32) CountSectorRange(al, a0 >> 5, (a0 + 31 * (ulong)stride) >> 5, write, total);
        else CountSectorsPerLane(al, exec, write, total);
        return true;
    }

    /// <summary>
    /// Lane addresses (register + offset) of a full warp into <see cref="_addr"/>, their min, max and OR (for the
    /// alignment check); true when they form a uniform stride <c>a0 + l·stride</c> (then min and max are the ends).
    /// </summary>
    private bool FullWarpAddresses(int baseSlot, ulong off, out ulong lo, out ulong hi, out ulong misalign, out long stride)
    {
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(R);
        ref ulong ad = ref MemoryMarshal.GetArrayDataReference(_addr);
        ulong a0 = Unsafe.Add(ref r, baseSlot) + off;
        ulong s = Unsafe.Add(ref r, baseSlot + 1) + off - a0;
        var voff = Vector256.Create(off);
        var expect = Vector256.Create(a0, a0 + s, a0 + 2 * s, a0 + 3 * s);
        var step = Vector256.Create(4 * s);
        Vector256<ulong> diff = Vector256<ulong>.Zero, any = Vector256<ulong>.Zero;
        for (int i = 0; i < 32; i += 4)
        {
            var v = Vector256.LoadUnsafe(ref r, (nuint)(baseSlot + i)) + voff;
            v.StoreUnsafe(ref ad, (nuint)i);
            diff |= v ^ expect;
            any |= v;
            expect += step;
        }
        misalign = any[0] | any[1] | any[2] | any[3];
        stride = (long)s;
        if (diff == Vector256<ulong>.Zero)
        {
            ulong a31 = a0 + 31 * s;
            (lo, hi) = stride >= 0 ? (a0, a31) : (a31, a0);
            return true;
        }
        var mn = Vector256.LoadUnsafe(ref ad);
        var mx = mn;
        for (int i = 4; i < 32; i += 4)
        {
            var v = Vector256.LoadUnsafe(ref ad, (nuint)i);
            mn = Vector256.Min(mn, v);
            mx = Vector256.Max(mx, v);
        }
        lo = Math.Min(Math.Min(mn[0], mn[1]), Math.Min(mn[2], mn[3]));
        hi = Math.Max(Math.Max(mx[0], mx[1]), Math.Max(mx[2], mx[3]));
        return false;
    }

    private void PartialAddresses(uint exec, int baseSlot, ulong off, out ulong lo, out ulong hi, out ulong misalign)
    {
        var r = R;
        var ad = _addr;
        lo = ulong.MaxValue;
        hi = 0;
        misalign = 0;
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong a = r[baseSlot + l] + off;
            ad[l] = a;
            if (a < lo) lo = a;
            if (a > hi) hi = a;
            misalign |= a;
        }
    }

    /// <summary>Moves one <paramref name="size"/>-byte element per lane of a full warp between register row
    /// <paramref name="row"/> of <paramref name="regs"/> and <c>p + l·stride</c> (bounds already checked).</summary>
    [MethodImpl(MethodImplOptions.NoInlining)] // its own small frame: inlined into the run loop, the lane loop spilled its stride
    private static void CopyStrided(byte* p, long stride, int size, ulong[] regs, int row, bool write)
    {
        if (row + 32 > regs.Length) throw new InvalidOperationException("register slot outside the register file");
        ref ulong d = ref Unsafe.Add(ref MemoryMarshal.GetArrayDataReference(regs), row);
        nint s = (nint)stride;
        switch (size, write)
        {
            case (4, false):
                for (int l = 0; l < 32; l += 4, p += 4 * s)
                {
                    Unsafe.Add(ref d, l) = *(uint*)p;
                    Unsafe.Add(ref d, l + 1) = *(uint*)(p + s);
                    Unsafe.Add(ref d, l + 2) = *(uint*)(p + 2 * s);
                    Unsafe.Add(ref d, l + 3) = *(uint*)(p + 3 * s);
                }
                return;
            case (4, true):
                for (int l = 0; l < 32; l += 4, p += 4 * s)
                {
                    *(uint*)p = (uint)Unsafe.Add(ref d, l);
                    *(uint*)(p + s) = (uint)Unsafe.Add(ref d, l + 1);
                    *(uint*)(p + 2 * s) = (uint)Unsafe.Add(ref d, l + 2);
                    *(uint*)(p + 3 * s) = (uint)Unsafe.Add(ref d, l + 3);
                }
                return;
            case (8, false): for (int l = 0; l < 32; l++, p += s) Unsafe.Add(ref d, l) = *(ulong*)p; return;
            case (8, true): for (int l = 0; l < 32; l++, p += s) *(ulong*)p = Unsafe.Add(ref d, l); return;
            case (2, false): for (int l = 0; l < 32; l++, p += s) Unsafe.Add(ref d, l) = *(ushort*)p; return;
            case (2, true): for (int l = 0; l < 32; l++, p += s) *(ushort*)p = (ushort)Unsafe.Add(ref d, l); return;
            case (_, false): for (int l = 0; l < 32; l++, p += s) Unsafe.Add(ref d, l) = *p; return;
            default: for (int l = 0; l < 32; l++, p += s) *p = (byte)Unsafe.Add(ref d, l); return;
        }
    }

    /// <summary>
    /// A full-warp <c>.v4</c> of 32-bit elements at a uniform stride (lane l's 16 bytes at <c>p + l·stride</c>) into or
    /// out of four register rows, 8 lanes at a time with a 4x4 transpose of 32-bit words (unpack lo/hi 32, then 64),
    /// instead of 128 scalar moves. False when an element is not a plain 32- or 64-bit register (the caller then
    /// moves element by element).
    /// </summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private bool TryTransposeV4(byte* p, long stride, Operand dataOp, bool write, bool sext)
    {
        var el = dataOp.Elems;
        for (int i = 0; i < 4; i++)
            if (el[i].Kind != OpKind.Reg || el[i].RegBits < 32 || (!write && sext && el[i].RegBits > 32) || el[i].Reg * 32 + 32 > R.Length) return false;
        ref ulong r = ref MemoryMarshal.GetArrayDataReference(R);
        int r0 = el[0].Reg * 32, r1 = el[1].Reg * 32, r2 = el[2].Reg * 32, r3 = el[3].Reg * 32;
        nint s = (nint)stride;
        // lane order after the transpose network is 0,2,4,6,1,3,5,7 within 8 lanes; these permutations undo / apply it
        var toLaneOrder = Vector256.Create(0, 4, 1, 5, 2, 6, 3, 7);
        var toNetworkOrder = Vector256.Create(0, 2, 4, 6, 1, 3, 5, 7);
        for (int l = 0; l < 32; l += 8, p += 8 * s)
        {
            if (!write)
            {
                var v0 = Vector256.Create(Vector128.Load((uint*)p), Vector128.Load((uint*)(p + s)));
                var v1 = Vector256.Create(Vector128.Load((uint*)(p + 2 * s)), Vector128.Load((uint*)(p + 3 * s)));
                var v2 = Vector256.Create(Vector128.Load((uint*)(p + 4 * s)), Vector128.Load((uint*)(p + 5 * s)));
                var v3 = Vector256.Create(Vector128.Load((uint*)(p + 6 * s)), Vector128.Load((uint*)(p + 7 * s)));
                // v0 = [L0 e0..e3 | L1 e0..e3], v1 = [L2 | L3], v2 = [L4 | L5], v3 = [L6 | L7]
                var t0 = Avx2.UnpackLow(v0, v1); var t1 = Avx2.UnpackHigh(v0, v1);
                var t2 = Avx2.UnpackLow(v2, v3); var t3 = Avx2.UnpackHigh(v2, v3);
                var e0 = Avx2.UnpackLow(t0.AsUInt64(), t2.AsUInt64()).AsUInt32();
                var e1 = Avx2.UnpackHigh(t0.AsUInt64(), t2.AsUInt64()).AsUInt32();
                var e2 = Avx2.UnpackLow(t1.AsUInt64(), t3.AsUInt64()).AsUInt32();
                var e3 = Avx2.UnpackHigh(t1.AsUInt64(), t3.AsUInt64()).AsUInt32();
                Store32(ref r, r0, l, Avx2.PermuteVar8x32(e0, toLaneOrder.AsUInt32()));
                Store32(ref r, r1, l, Avx2.PermuteVar8x32(e1, toLaneOrder.AsUInt32()));
                Store32(ref r, r2, l, Avx2.PermuteVar8x32(e2, toLaneOrder.AsUInt32()));
                Store32(ref r, r3, l, Avx2.PermuteVar8x32(e3, toLaneOrder.AsUInt32()));
            }
            else
            {
                var a0 = Avx2.PermuteVar8x32(V32(ref r, r0, 0, l), toNetworkOrder.AsUInt32());
                var a1 = Avx2.PermuteVar8x32(V32(ref r, r1, 0, l), toNetworkOrder.AsUInt32());
                var a2 = Avx2.PermuteVar8x32(V32(ref r, r2, 0, l), toNetworkOrder.AsUInt32());
                var a3 = Avx2.PermuteVar8x32(V32(ref r, r3, 0, l), toNetworkOrder.AsUInt32());
                var t0 = Avx2.UnpackLow(a0, a1); var t1 = Avx2.UnpackHigh(a0, a1);
                var t2 = Avx2.UnpackLow(a2, a3); var t3 = Avx2.UnpackHigh(a2, a3);
                var m01 = Avx2.UnpackLow(t0.AsUInt64(), t2.AsUInt64()).AsUInt32();  // [L0 | L1]
                var m23 = Avx2.UnpackHigh(t0.AsUInt64(), t2.AsUInt64()).AsUInt32(); // [L2 | L3]
                var m45 = Avx2.UnpackLow(t1.AsUInt64(), t3.AsUInt64()).AsUInt32();  // [L4 | L5]
                var m67 = Avx2.UnpackHigh(t1.AsUInt64(), t3.AsUInt64()).AsUInt32(); // [L6 | L7]
                m01.GetLower().Store((uint*)p); m01.GetUpper().Store((uint*)(p + s));
                m23.GetLower().Store((uint*)(p + 2 * s)); m23.GetUpper().Store((uint*)(p + 3 * s));
                m45.GetLower().Store((uint*)(p + 4 * s)); m45.GetUpper().Store((uint*)(p + 5 * s));
                m67.GetLower().Store((uint*)(p + 6 * s)); m67.GetUpper().Store((uint*)(p + 7 * s));
            }
        }
        return true;
    }

    /// <summary>Moves one <paramref name="size"/>-byte element per exec lane between <paramref name="regs"/> and host + address.</summary>
    private static void CopyLanes(byte* host, ulong[] ad, uint exec, int size, ulong[] regs, int off, bool write)
    {
        if (off + 32 > regs.Length) throw new InvalidOperationException("register slot outside the register file");
        var buf = new Span<ulong>(regs, off, 32);
        if (exec == 0xFFFFFFFF && size == 4)
        {
            // a full warp at no uniform stride (e.g. an mma fragment's rows): every lane, no mask walk
            ref ulong b = ref MemoryMarshal.GetReference(buf);
            ref ulong a = ref MemoryMarshal.GetArrayDataReference(ad);
            if (write) for (int l = 0; l < 32; l++) *(uint*)(host + Unsafe.Add(ref a, l)) = (uint)Unsafe.Add(ref b, l);
            else for (int l = 0; l < 32; l++) Unsafe.Add(ref b, l) = *(uint*)(host + Unsafe.Add(ref a, l));
            return;
        }
        switch (size, write)
        {
            case (4, false):
                for (uint e = exec; e != 0; e &= e - 1) { int l = BitOperations.TrailingZeroCount(e); buf[l] = *(uint*)(host + ad[l]); }
                return;
            case (4, true):
                for (uint e = exec; e != 0; e &= e - 1) { int l = BitOperations.TrailingZeroCount(e); *(uint*)(host + ad[l]) = (uint)buf[l]; }
                return;
            case (8, false):
                for (uint e = exec; e != 0; e &= e - 1) { int l = BitOperations.TrailingZeroCount(e); buf[l] = *(ulong*)(host + ad[l]); }
                return;
            case (8, true):
                for (uint e = exec; e != 0; e &= e - 1) { int l = BitOperations.TrailingZeroCount(e); *(ulong*)(host + ad[l]) = buf[l]; }
                return;
            default:
                for (uint e = exec; e != 0; e &= e - 1)
                {
                    int l = BitOperations.TrailingZeroCount(e);
                    if (write) WriteN(host + ad[l], size, buf[l]); else buf[l] = ReadN(host + ad[l], size);
                }
                return;
        }
    }

    /// <summary>
    /// Counters for a full-warp request whose lanes touch every 32-byte sector from <paramref name="firstSector"/> to
    /// <paramref name="lastSector"/> (absolute sector numbers) and no other: a stride of 0..32 bytes with aligned
    /// accesses of at most 32 bytes. The per-launch bitmap is updated a word at a time.
    /// </summary>
    private void CountSectorRange(Allocation al, ulong firstSector, ulong lastSector, bool write, int total)
    {
        var cnt = Cta.Counters;
        var bits = Cta.Launch.SectorBits(al);
        bool atomic = !Cta.Launch.Sequential;
        ulong baseSec = al.Start >> 5;
        ulong first = firstSector - baseSec, last = lastSector - baseSec;
        Cta.Launch.CountRereads(al, first, last, cnt);
        int fresh = 0;
        for (ulong w = first >> 6; w <= last >> 6; w++)
        {
            ulong m = LaunchState.WordMask(w, first, last);
            ref ulong cell = ref bits[w];
            ulong old = Volatile.Read(ref cell);
            if ((old & m) == m) continue;
            if (atomic) old = Interlocked.Or(ref cell, m);
            else cell = old | m;
            fresh += BitOperations.PopCount(m & ~old);
            if (al.LastTouch != null || al.PersistTouch != null)
                for (ulong f = m & ~old; f != 0; f &= f - 1)
                    if (Cta.Launch.FirstTouchIsResident(al, (w << 6) + (ulong)BitOperations.TrailingZeroCount(f))) cnt.L2ResidentSectors++;
        }
        cnt.DistinctSectors += fresh;
        CountGlobal(write, 32, total, (int)(last - first + 1));
    }

    /// <summary>Counters for any other request: sectors lane by lane (each aligned access of at most 32 bytes lies in one sector).</summary>
    private void CountSectorsPerLane(Allocation al, uint exec, bool write, int total)
    {
        var cnt = Cta.Counters;
        var bits = Cta.Launch.SectorBits(al);
        bool atomic = !Cta.Launch.Sequential;
        ulong baseSec = al.Start >> 5;
        int distinct = 0, nsec = 0;
        ulong lastSec = ulong.MaxValue;
        bool monotonic = true;
        var secs = _sectors;
        var ad = _addr;
        for (uint e = exec; e != 0; e &= e - 1)
        {
            ulong s = ad[BitOperations.TrailingZeroCount(e)] >> 5;
            secs[nsec++] = s;
            if (s == lastSec) continue;
            if (lastSec != ulong.MaxValue && s < lastSec) monotonic = false;
            distinct++;
            lastSec = s;
            ulong idx = s - baseSec;
            Cta.Launch.CountRereads(al, idx, idx, cnt);
            ulong m = 1UL << (int)(idx & 63);
            ref ulong w = ref bits[idx >> 6];
            if ((Volatile.Read(ref w) & m) != 0) continue;
            if (!atomic) w |= m;
            else if ((Interlocked.Or(ref w, m) & m) != 0) continue;
            cnt.DistinctSectors++;
            if (Cta.Launch.FirstTouchIsResident(al, idx)) cnt.L2ResidentSectors++;
        }
        CountGlobal(write, nsec, total, monotonic ? distinct : Distinct(secs, nsec));
    }
}
