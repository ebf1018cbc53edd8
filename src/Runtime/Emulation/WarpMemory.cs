using System.Numerics;
using System.Runtime.CompilerServices;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>ld/st/atom/red with memcheck, racecheck and counters.</summary>
internal sealed unsafe partial class Warp
{
    private Allocation? _lastAlloc;
    private readonly ulong[] _sectors = new ulong[128];
    private readonly uint[] _bankWords = new uint[32 * 4];

    private ulong LaneAddress(Operand a, int lane)
    {
        ulong b = a.Reg >= 0 ? R[a.Reg * 32 + lane] : a.Sym != null ? SymbolValue(a.Sym) : 0;
        return b + (ulong)a.Offset;
    }

    /// <summary>Resolves the effective space of an access (generic addresses route by window) and returns the offset/address in it.</summary>
    private static Space Route(Space space, ref ulong addr)
    {
        if (space != Space.Generic) return space;
        if (addr - SharedWindow < WindowSize) { addr -= SharedWindow; return Space.Shared; }
        if (addr - LocalWindow < WindowSize) { addr -= LocalWindow; return Space.Local; }
        return Space.Global;
    }

    private Space SpaceOf(Instr ins, Operand addr)
    {
        if (ins.Space == Space.Param && addr.Sym is { InFrame: true }) return Space.Local;
        return ins.Space;
    }

    /// <summary>Checked host pointer for <paramref name="size"/> bytes at <paramref name="addr"/> in <paramref name="space"/>.</summary>
    private byte* Translate(Space space, ulong addr, int size, bool write, Instr ins, int lane, int align = 0)
    {
        if (align == 0) align = size;
        string kind = write ? "write" : "read";
        switch (space)
        {
            case Space.Global:
            case Space.Const:
                {
                    if ((addr & (ulong)(align - 1)) != 0) throw Fault($"memcheck: misaligned global {kind} of {size} bytes at 0x{addr:x} (needs {align}-byte alignment){Cta.Launch.Memory.Describe(addr)}", ins, lane);
                    var a = _lastAlloc;
                    if (a == null || addr < a.Start || addr + (ulong)size > a.End || a.Freed)
                    {
                        a = Cta.Launch.Memory.Find(addr);
                        if (a == null || addr + (ulong)size > a.End)
                            throw Fault($"memcheck: out-of-bounds global {kind} of {size} bytes at 0x{addr:x}{Cta.Launch.Memory.Describe(addr)}", ins, lane);
                        if (a.Freed) throw Fault($"memcheck: use after free: global {kind} of {size} bytes at 0x{addr:x}, inside {a} (offset {(long)(addr - a.Start)})", ins, lane);
                        _lastAlloc = a;
                    }
                    if (a.Written != null)
                    {
                        if (write) Cta.Launch.Memory.MarkWritten(a, addr, size);
                        else
                        {
                            long u = DeviceMemory.FirstUnwritten(a, addr, size);
                            if (u >= 0) throw Fault($"initcheck: read of never-written global memory at 0x{addr:x} ({a}, offset {u})", ins, lane);
                        }
                    }
                    return a.Host + (addr - a.Start);
                }
            case Space.Shared:
                {
                    if ((addr & (ulong)(align - 1)) != 0) throw Fault($"memcheck: misaligned shared {kind} of {size} bytes at shared offset 0x{addr:x}", ins, lane);
                    if (addr + (ulong)size > (ulong)Cta.Launch.SharedBytes)
                        throw Fault($"memcheck: out-of-bounds shared {kind} of {size} bytes at shared offset {(long)addr} (the block has {Cta.Launch.SharedBytes} bytes of shared memory: {Cta.Launch.StaticShared} static + {Cta.Launch.DynamicShared} dynamic)", ins, lane);
                    return Cta.SharedPtr + addr;
                }
            case Space.Local:
                {
                    if ((addr & (ulong)(align - 1)) != 0) throw Fault($"memcheck: misaligned local {kind} of {size} bytes at local offset 0x{addr:x}", ins, lane);
                    if (addr + (ulong)size > (ulong)Cta.Launch.LocalPerThread)
                        throw Fault($"memcheck: out-of-bounds local {kind} of {size} bytes at local offset {(long)addr} (local window {Cta.Launch.LocalPerThread} bytes per thread)", ins, lane);
                    return Cta.LocalPtr + (long)(Index * 32 + lane) * Cta.Launch.LocalPerThread + (long)addr;
                }
            case Space.Param:
                {
                    if (write) throw Fault("st.param to a kernel parameter", ins, lane);
                    if (addr + (ulong)size > (ulong)Cta.Launch.ParamBytes.Length)
                        throw Fault($"memcheck: kernel parameter read of {size} bytes at offset {(long)addr} is beyond the {Cta.Launch.ParamBytes.Length}-byte parameter block", ins, lane);
                    return Cta.Launch.ParamPtr + addr;
                }
        }
        throw Fault($"unsupported state space {space}", ins, lane);
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static ulong ReadN(byte* p, int n) => n switch
    {
        1 => *p, 2 => *(ushort*)p, 4 => *(uint*)p, _ => *(ulong*)p,
    };

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static void WriteN(byte* p, int n, ulong v)
    {
        switch (n)
        {
            case 1: *p = (byte)v; break;
            case 2: *(ushort*)p = (ushort)v; break;
            case 4: *(uint*)p = (uint)v; break;
            default: *(ulong*)p = v; break;
        }
    }

    private void Ld(Instr ins, uint exec) => Access(ins, exec, write: false);
    private void St(Instr ins, uint exec) => Access(ins, exec, write: true);

    private readonly ulong[] _addr = new ulong[32];

    [MethodImpl(MethodImplOptions.NoInlining)] // keeps the run loop's frame small
    private void Access(Instr ins, uint exec, bool write)
    {
        if ((exec & _preWait) == 0) { AccessCore(ins, exec, write); return; }
        PreWaitAccess(ins, exec, ins.Ops[write ? 0 : 1], SpaceOf(ins, ins.Ops[write ? 0 : 1]), PtxTypes.Size(ins.T) * ins.Vec, write ? "store to" : "load from", count: true);
        AccessCore(ins, exec, write);
    }

    private void AccessCore(Instr ins, uint exec, bool write)
    {
        var addrOp = ins.Ops[write ? 0 : 1];
        var dataOp = ins.Ops[write ? 1 : 0];
        int size = PtxTypes.Size(ins.T);
        int vec = ins.Vec;
        int total = size * vec;
        Space sp0 = SpaceOf(ins, addrOp);
        if (vec == 1)
        {
            if (dataOp.Kind == OpKind.Vec) throw Fault("vector operand for a scalar access", ins, 0);
        }
        else if (dataOp.Kind != OpKind.Vec || dataOp.Elems.Length != vec) throw Fault($"vector width {vec} does not match the operand {dataOp.Name}", ins, 0);
        long dram0 = Cta.Counters.DramSectors;
        if (sp0 == Space.Global && TryGlobalFast(ins, exec, addrOp, dataOp, size, vec, total, write))
        {
            if (!write) NoteGlobalRead(ins, Cta.Counters.DramSectors != dram0);
            return;
        }
        if (write)
        {
            if (vec == 1) Load(dataOp, A, ins.T);
            else for (int i = 0; i < vec; i++) Load(dataOp.Elems[i], Buf(i), ins.T);
        }
        if (sp0 == Space.Param && addrOp.Reg < 0 && !write)
        {
            // a kernel parameter: one address for every lane, checked once
            byte* pp = Translate(Space.Param, LaneAddress(addrOp, 0), total, false, ins, BitOperations.TrailingZeroCount(exec));
            for (int i = 0; i < vec; i++) Buf(i).AsSpan().Fill(ReadN(pp + i * size, size));
            FinishLoad(ins, exec, dataOp, vec, write);
            return;
        }
        int nsec = 0;
        Space spSeen = Space.Generic;
        int lanes = 0;
        RaceTime++;   // one racecheck tick per memory instruction: its lanes access "at the same time"
        var race = Cta.Race;
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong addr = LaneAddress(addrOp, l);
            Space sp = Route(sp0, ref addr);
            byte* p = Translate(sp, addr, total, write, ins, l);
            if (sp == Space.Shared && race != null)
                race.Access((uint)addr, total, write, Index, this, ins, l, race.LaneLevel && write && Unchanged(p, vec, size, l));
            for (int i = 0; i < vec; i++)
            {
                var buf = Buf(i);
                if (write) WriteN(p + i * size, size, buf[l]);
                else buf[l] = ReadN(p + i * size, size);
            }
            spSeen = sp;
            lanes++;
            if (sp == Space.Global)
            {
                for (ulong s = addr >> 5; s <= (addr + (ulong)total - 1) >> 5; s++) if (nsec < _sectors.Length) _sectors[nsec++] = s;
                if (write) { LaunchState.Track(_lastAlloc!); Cta.Launch.NoteWrite(_lastAlloc!, addr, total); }
                Cta.Launch.TouchSector(_lastAlloc!, addr, total, Cta.Counters);
            }
            else if (sp == Space.Shared) _bankWords[lanes - 1] = (uint)addr;
            else if (sp == Space.Local) Cta.Counters.LocalBytes += total;
        }
        FinishLoad(ins, exec, dataOp, vec, write);
        var c = Cta.Counters;
        if (spSeen == Space.Global)
        {
            CountGlobal(write, lanes, total, Distinct(_sectors, nsec));
            if (!write) NoteGlobalRead(ins, c.DramSectors != dram0);
        }
        else if (spSeen == Space.Shared)
        {
            if (write) c.SharedStoreRequests++; else c.SharedLoadRequests++;
            CountBanks(lanes, total);
        }
    }

    private ulong[] Buf(int i) => i == 0 ? A : i == 1 ? B : i == 2 ? C : E;

    /// <summary>True when lane <paramref name="l"/>'s store would leave the bytes at <paramref name="p"/> as they are.</summary>
    private bool Unchanged(byte* p, int vec, int size, int l)
    {
        for (int i = 0; i < vec; i++)
            if (ReadN(p + i * size, size) != (Buf(i)[l] & FloatMath.Mask(size * 8))) return false;
        return true;
    }

    private void FinishLoad(Instr ins, uint exec, Operand dataOp, int vec, bool write)
    {
        if (write) return;
        if (vec == 1) Store(dataOp, A, exec, ins.T);
        else for (int i = 0; i < vec; i++) Store(dataOp.Elems[i], Buf(i), exec, ins.T);
    }

    private void CountGlobal(bool write, int lanes, int total, int sectors)
    {
        var c = Cta.Counters;
        if (write) { c.GlobalStoreRequests++; c.GlobalStoreBytes += (long)lanes * total; c.GlobalStoreSectors += sectors; }
        else { c.GlobalLoadRequests++; c.GlobalLoadBytes += (long)lanes * total; c.GlobalLoadSectors += sectors; }
    }

    private static int Distinct(ulong[] a, int n)
    {
        if (n <= 1) return n;
        Array.Sort(a, 0, n);
        int d = 1;
        for (int i = 1; i < n; i++) if (a[i] != a[i - 1]) d++;
        return d;
    }

    /// <summary>Shared wavefronts: per phase (32 lanes for ≤4 B, 16 for 8 B, 8 for 16 B), the max over banks of distinct words.</summary>
    private void CountBanks(int lanes, int bytes)
    {
        int perPhase = bytes <= 4 ? 32 : bytes == 8 ? 16 : 8;
        int wavefronts = 0, phases = 0;
        Span<int> counts = stackalloc int[32];
        Span<uint> seen = stackalloc uint[128];
        for (int start = 0; start < lanes; start += perPhase)
        {
            counts.Clear();
            int ns = 0;
            for (int i = start; i < Math.Min(lanes, start + perPhase); i++)
            {
                for (int w = 0; w < Math.Max(bytes / 4, 1); w++)
                {
                    uint word = (_bankWords[i] >> 2) + (uint)w;
                    bool dup = false;
                    for (int k = 0; k < ns; k++) if (seen[k] == word) { dup = true; break; }
                    if (dup) continue;
                    seen[ns++] = word;
                    counts[(int)(word & 31)]++;
                }
            }
            int mx = 0;
            for (int b = 0; b < 32; b++) mx = Math.Max(mx, counts[b]);
            wavefronts += Math.Max(mx, 1);
            phases++;
        }
        Cta.Counters.SharedWavefronts += wavefronts;
        Cta.Counters.SharedBankConflicts += wavefronts - phases;
    }

    private void Atom(Instr ins, uint exec)
    {
        bool isRed = ins.Op == Op.Red;
        var o = ins.Ops;
        var addrOp = o[isRed ? 0 : 1];
        int size = PtxTypes.Size(ins.T);
        if (size != 4 && size != 8) throw Fault($"{ins.Op}.{ins.T}: only 32- and 64-bit atomics are supported", ins, 0);
        Load(o[isRed ? 1 : 2], B, ins.T);
        if (!isRed && o.Length > 3) Load(o[3], C, ins.T);
        bool parallel = !Cta.Launch.Sequential;
        if ((exec & _preWait) != 0) PreWaitAccess(ins, exec, addrOp, ins.Space, size, "atomic on", count: false);
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong addr = LaneAddress(addrOp, l);
            Space sp = Route(ins.Space, ref addr);
            if (sp is not (Space.Global or Space.Shared)) throw Fault($"atomic on {sp} memory", ins, l);
            byte* p = Translate(sp, addr, size, true, ins, l);
            if (sp == Space.Global) Cta.Launch.NoteWrite(_lastAlloc!, addr, size);
            bool ftzAdd = sp == Space.Global && ins.T == PtxType.F32;
            ulong old;
            if (size == 4)
            {
                ref int cell = ref *(int*)p;
                while (true)
                {
                    uint cur = (uint)Volatile.Read(ref cell);
                    uint nv = (uint)AtomCompute(ins, cur, B[l], C[l], ftzAdd);
                    if (!parallel || sp == Space.Shared) { cell = (int)nv; old = cur; break; }
                    if ((uint)Interlocked.CompareExchange(ref cell, (int)nv, (int)cur) == cur) { old = cur; break; }
                }
            }
            else
            {
                ref long cell = ref *(long*)p;
                while (true)
                {
                    ulong cur = (ulong)Volatile.Read(ref cell);
                    ulong nv = AtomCompute(ins, cur, B[l], C[l], false);
                    if (!parallel || sp == Space.Shared) { cell = (long)nv; old = cur; break; }
                    if ((ulong)Interlocked.CompareExchange(ref cell, (long)nv, (long)cur) == cur) { old = cur; break; }
                }
            }
            D[l] = old;
            if (sp == Space.Global) Cta.Counters.GlobalAtomics++;
        }
        if (!isRed) Store(o[0], D, exec, ins.T);
        if (!isRed && !ins.ResultUnused && exec != 0) NoteGlobalRead(ins, fresh: false);   // a returning atomic waits for the L2 (shared-memory ones: noted too, rare); one whose result is never read is a red
    }

    private static ulong AtomCompute(Instr ins, ulong cur, ulong b, ulong c, bool ftz)
    {
        PtxType t = ins.T;
        int bits = PtxTypes.Size(t) * 8;
        ulong m = FloatMath.Mask(bits);
        switch (ins.Mode)
        {
            case "add":
                if (t == PtxType.F32)
                {
                    float x = FloatMath.AsF32(cur), y = FloatMath.AsF32(b);
                    if (ftz) { x = FloatMath.Ftz(x); y = FloatMath.Ftz(y); }
                    float r = x + y;
                    return FloatMath.Bits(ftz ? FloatMath.Ftz(r) : r);
                }
                if (t == PtxType.F64) return FloatMath.Bits(FloatMath.AsF64(cur) + FloatMath.AsF64(b));
                if (t == PtxType.BF16x2 || t == PtxType.F16x2)
                {
                    bool bf = t == PtxType.BF16x2;
                    ulong r = 0;
                    for (int h = 0; h < 2; h++)
                    {
                        float x = bf ? FloatMath.FromBf16(cur >> (16 * h)) : FloatMath.FromF16((cur >> (16 * h)) & 0xFFFF);
                        float y = bf ? FloatMath.FromBf16(b >> (16 * h)) : FloatMath.FromF16((b >> (16 * h)) & 0xFFFF);
                        r |= (ulong)(bf ? FloatMath.ToBf16(x + y) : FloatMath.ToF16(x + y)) << (16 * h);
                    }
                    return r;
                }
                return (cur + b) & m;
            case "min":
                if (t == PtxType.F32) return FloatMath.Bits(FloatMath.Min(FloatMath.AsF32(cur), FloatMath.AsF32(b), false));
                return PtxTypes.IsSigned(t) ? (SExt(cur, bits) < SExt(b, bits) ? cur : b) : Math.Min(cur, b);
            case "max":
                if (t == PtxType.F32) return FloatMath.Bits(FloatMath.Max(FloatMath.AsF32(cur), FloatMath.AsF32(b), false));
                return PtxTypes.IsSigned(t) ? (SExt(cur, bits) > SExt(b, bits) ? cur : b) : Math.Max(cur, b);
            case "inc": return cur >= b ? 0 : (cur + 1) & m;
            case "dec": return cur == 0 || cur > b ? b : cur - 1;
            case "cas": return cur == b ? c : cur;
            case "exch": return b;
            case "and": return cur & b;
            case "or": return cur | b;
            case "xor": return cur ^ b;
        }
        throw new InvalidOperationException("atomic " + ins.Mode);
    }
}
