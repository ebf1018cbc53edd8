using System.Numerics;
using System.Runtime.CompilerServices;

namespace Qwen3Cuda.Runtime.Emulation;

internal enum WarpStatus : byte { Running, Done, AtBarrier, Yield }

/// <summary>
/// One warp in lockstep: a structure-of-arrays register file (<c>R[slot*32 + lane]</c>, every register
/// held as 64 bits), predicates as 32-bit lane masks, and min-PC reconvergence (docs/emulator.md):
/// the group with the lowest PC runs; lanes that branch elsewhere are parked with their PC and merge
/// back when the running group reaches it.
/// </summary>
internal sealed partial class Warp
{
    public const int Lanes = 32;
    public readonly Cta Cta;
    public readonly int Index;
    public ulong[] R = [];
    public uint[] P = [];
    internal readonly ulong[] A = new ulong[32], B = new ulong[32], C = new ulong[32], D = new ulong[32], E = new ulong[32];

    // control state
    private Instr[] _code = [];
    /// <summary>With <see cref="LaunchState.CriticalWarpLines"/>: the instructions this warp executed at each PC of the entry code.</summary>
    public int[]? PcCounts;
    private PtxFunction _fn = null!;
    public int Pc;
    public uint Active;      // the running group
    public uint Exited;      // lanes that executed exit/ret from the entry (or never existed)
    public uint Parked;      // runnable lanes waiting at LanePc
    public uint Blocked;     // lanes waiting at a collective (LanePc = that instruction)
    public uint Existing;    // lanes whose threads exist
    private readonly int[] _lanePc = new int[32];
    private int _nextMin = int.MaxValue;
    public int BarrierId = -1, BarrierCount;
    private uint _barRedValue;
    private int _frameBase;
    private readonly Stack<Frame> _frames = new();
    private uint _returned;
    // dependent global-memory round trips of this warp (RoundTripAnalysis): the open trip, and whether it fetched a
    // sector first touched in this launch (then it went to DRAM, else it hit in L2)
    public long DramTrips, L2Trips, Instructions;
    private bool _tripOpen, _tripFresh;
    // the same figures before the warp's first griddepcontrol.wait (its part that may run while the previous kernel does),
    // and the warp's instruction count when its current Run began (Instructions is added to per Run)
    public long PreWaitDramTrips, PreWaitL2Trips, PreWaitInstructions;
    private bool _waited;
    // the same figures at the warp's first tail mark (pmevent TailEvent: kernels/common.cuh, tail_begin()) and at its first
    // stream mark (pmevent StreamEvent: stream_begin()), null without one
    private (long Instructions, long DramTrips, long L2Trips)? _tailStart, _streamStart;
    /// <summary>The warp's chain from its first tail mark on (its round trips and instructions), all zero without one.</summary>
    public (long Instructions, long DramTrips, long L2Trips) Tail =>
        _tailStart is { } m ? (Instructions - m.Instructions, DramTrips - m.DramTrips, L2Trips - m.L2Trips) : (0, 0, 0);
    /// <summary>The pmevent number our kernels use to mark where a launch's tail begins (tail_begin() in kernels/common.cuh).</summary>
    public const int TailEvent = 7;
    /// <summary>
    /// The warp's chain from its first griddepcontrol.wait (or its start, without one) to its first stream mark: the
    /// round trips and instructions before its first weight request when the weights' addresses depend on what it read
    /// after the wait; all zero without a mark, or with one before the wait (the wait's figures are then past the mark's).
    /// </summary>
    public (long Instructions, long DramTrips, long L2Trips) Head =>
        _streamStart is { } m
            ? (Math.Max(0, m.Instructions - PreWaitInstructions), Math.Max(0, m.DramTrips - PreWaitDramTrips), Math.Max(0, m.L2Trips - PreWaitL2Trips))
            : (0, 0, 0);
    /// <summary>The pmevent number our kernels use to mark where a CTA's weight stream begins (stream_begin() in kernels/common.cuh).</summary>
    public const int StreamEvent = 6;
    /// <summary>The warp executed griddepcontrol.wait (its CTA counts in <see cref="Counters.WaitingCtas"/>).</summary>
    public bool Waited => _waited;
    private long _runStart;
    // programmatic dependent launch: lanes that have not yet executed griddepcontrol.wait (0 in a kernel without one)
    private uint _preWait;

    // interleaved scheduling (EmulatorModes.Scheduling): lane groups of a diverged warp take turns at random
    private bool _its;
    private int _itsLeft;

    /// <summary>Lane-level racecheck clock: ticks once per shared-memory instruction and per warp synchronisation.</summary>
    public long RaceTime;
    /// <summary><see cref="RaceTime"/> of the last synchronisation of all live lanes (bar.warp.sync, a .sync collective, a CTA barrier).</summary>
    public long LastFullSync;
    private long[]? _pairSync;   // [a*32+b]: time of the last partial synchronisation that lanes a and b both took part in

    private sealed record Frame(Instr[] Code, PtxFunction Fn, int ReturnPc, uint Parked, uint Blocked, int[] LanePc, int FrameBase, uint Returned, Instr Call);

    public Warp(Cta cta, int index)
    {
        Cta = cta;
        Index = index;
    }

    public uint Live => Existing & ~Exited;

    public void Reset(PtxFunction fn, int threadsInWarp)
    {
        _fn = fn;
        _code = fn.Code;
        var mod = Cta.Launch.Module;
        int need = Math.Max(mod.TotalRegs, fn.NumRegs) * 32;
        if (R.Length < need) R = new ulong[need];
        // registers start at zero. Without .func bodies a full warp only needs the rows its threads may read before
        // writing (liveness at the entry): every other row is written before any thread reads it. Partial warps and
        // modules with calls clear everything (a shuffle may read a missing lane; a callee's rows are not analysed).
        if (P.Length < Math.Max(mod.TotalPreds, fn.NumPreds)) P = new uint[Math.Max(Math.Max(mod.TotalPreds, fn.NumPreds), 1)];
        if (!mod.HasFunctions && threadsInWarp >= 32 && fn.IsEntry)
            foreach (int row in fn.LiveInRows) Array.Clear(R, row * 32, 32);
        else Array.Clear(R, 0, mod.HasFunctions ? need : fn.NumRegs * 32);
        Array.Clear(P);
        Existing = threadsInWarp >= 32 ? 0xFFFFFFFFu : (1u << threadsInWarp) - 1;
        Exited = ~Existing;
        Active = Existing;
        Parked = Blocked = 0;
        _returned = 0;
        Pc = 0;
        _nextMin = int.MaxValue;
        BarrierId = -1;
        _frameBase = 0;
        _frames.Clear();
        ResetAsync();
        _its = Cta.Launch.Interleaved;
        _itsLeft = 0;
        if (Cta.Launch.CriticalWarpLines && fn.IsEntry)
        {
            if (PcCounts is null || PcCounts.Length != fn.Code.Length) PcCounts = new int[fn.Code.Length];
            else Array.Clear(PcCounts);
        }
        else PcCounts = null;
        RaceTime = LastFullSync = 0;
        if (_pairSync != null) Array.Clear(_pairSync);
        DramTrips = L2Trips = Instructions = 0;
        _tripOpen = _tripFresh = false;
        PreWaitDramTrips = PreWaitL2Trips = PreWaitInstructions = 0;
        _waited = false;
        _tailStart = _streamStart = null;
        _preWait = fn.HasGridDepWait ? Existing : 0;
    }

    /// <summary>Lane-level racecheck: true when an access by lane <paramref name="a"/> at <paramref name="time"/> is ordered
    /// before the current accesses of lane <paramref name="b"/> (same lane, or a synchronisation of both since).</summary>
    public bool Ordered(int a, int b, long time) => a == b || LastFullSync > time || (_pairSync != null && _pairSync[a * 32 + b] > time);

    /// <summary>Records a warp synchronisation of <paramref name="lanes"/> for the lane-level racecheck.</summary>
    private void SyncLanes(uint lanes)
    {
        if (lanes == 0 || Cta.Race is not { LaneLevel: true }) return;
        RaceTime++;
        if ((lanes & Live) == Live) { LastFullSync = RaceTime; return; }
        _pairSync ??= new long[32 * 32];
        for (uint a = lanes; a != 0; a &= a - 1)
            for (uint b = lanes; b != 0; b &= b - 1)
                _pairSync[BitOperations.TrailingZeroCount(a) * 32 + BitOperations.TrailingZeroCount(b)] = RaceTime;
    }

    /// <summary>A global read by <paramref name="ins"/>; <paramref name="fresh"/>: it touched a sector first in this launch.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private void NoteGlobalRead(Instr ins, bool fresh)
    {
        if (ins.RoundTripStart || !_tripOpen)
        {
            CloseTrip();
            _tripOpen = true;
        }
        _tripFresh |= fresh;
    }

    /// <summary>Counts the open round trip (at the next trip's start and when the warp is done).</summary>
    public void CloseTrip()
    {
        if (!_tripOpen) return;
        if (_tripFresh) DramTrips++; else L2Trips++;
        _tripOpen = _tripFresh = false;
    }

    public bool IsDone => Live == 0;

    /// <summary>Runs until the warp finishes, arrives at a CTA barrier, or uses up <paramref name="quantum"/> instructions.</summary>
    public WarpStatus Run(int quantum)
    {
        var cnt = Cta.Counters;
        _runStart = cnt.WarpInstructions;
        bool wide = Cta.Launch.Wide512;
        long fastCount = 0; // unguarded full-warp fast-path instructions not yet added to the counters (flushed before anything else runs)
        try
        {
            while (quantum-- > 0)
            {
                if (Active == 0 || Pc >= _nextMin || (_its && Parked != 0 && --_itsLeft < 0))
                {
                    if (!Reschedule())
                    {
                        if (IsDone) return WarpStatus.Done;
                        ReleaseBlockedOrThrow();
                    }
                }
                var code = _code;
                var ins = code[Pc];
                uint exec = Active;
                // the line profile counts the entry code only (not a .func's)
                int[]? pcc = PcCounts is { } pcCounts && pcCounts.Length == code.Length && ReferenceEquals(code, Cta.Launch.Function.Code) ? pcCounts : null;
                if (ins.FastGo && exec == 0xFFFFFFFF)
                {
                    // converged, unguarded, classified: the common case runs straight through its handlers until an
                    // instruction needs the general path (a full warp has no parked lanes, so no merge point lies ahead)
                    int pc = Pc, limit = Math.Min(_nextMin, code.Length);
                    if (wide) ExecFast512(ins); else ExecFast(ins);
                    if (pcc != null) pcc[pc]++;
                    pc++;
                    fastCount++;
                    while (pc < limit && quantum > 0 && (ins = code[pc]).FastGo)
                    {
                        if (wide) ExecFast512(ins); else ExecFast(ins);
                        if (pcc != null) pcc[pc]++;
                        pc++;
                        fastCount++;
                        quantum--;
                    }
                    Pc = pc;
                    continue;
                }
                if (ins.GuardPred >= 0) exec &= ins.GuardNeg ? ~P[ins.GuardPred] : P[ins.GuardPred];
                if (fastCount != 0) { cnt.WarpInstructions += fastCount; cnt.ThreadInstructions += 32 * fastCount; fastCount = 0; }
                cnt.WarpInstructions++;
                if (pcc != null) pcc[Pc]++;
                cnt.ThreadInstructions += BitOperations.PopCount(exec);
                if (exec == 0 && !ins.IsCollective && ins.Op is not (Op.Bra or Op.BarArrive)) { Pc++; continue; }
                if (ins.Fast != FastKind.None && exec == 0xFFFFFFFF) { if (wide) ExecFast512(ins); else ExecFast(ins); Pc++; continue; }
                switch (ins.Op)
                {
                    case Op.Bra: Branch(ins, exec); continue;
                    case Op.Ret: case Op.Exit: Return(ins, exec); continue;
                    case Op.Call: Call(ins, exec); continue;
                    case Op.Bar: case Op.BarRed: case Op.BarArrive:
                        {
                            var st = Barrier(ins, exec);
                            if (st != WarpStatus.Running) return st;
                            continue;
                        }
                    case Op.Shfl: case Op.Vote: case Op.Match: case Op.Redux: case Op.BarWarp: case Op.Mma: case Op.Ldmatrix:
                        if (!Collective(ins, ref exec)) continue;
                        if (exec == 0) break; // every arrived lane is guarded off: nothing to do, but the group stayed together
                        if (ins.Op is not (Op.Mma or Op.Ldmatrix)) SyncLanes(exec);   // the lanes of a .sync collective are ordered
                        switch (ins.Op)
                        {
                            case Op.Shfl: Shfl(ins, exec); cnt.Shuffles++; break;
                            case Op.Vote: Vote(ins, exec); break;
                            case Op.Match: Match(ins, exec); break;
                            case Op.Redux: Redux(ins, exec); break;
                            case Op.Mma: Mma(ins); break;
                            case Op.Ldmatrix: Ldmatrix(ins); break;
                        }
                        break;
                    case Op.Mov: Mov(ins, exec); break;
                    case Op.Ld: Ld(ins, exec); break;
                    case Op.St: St(ins, exec); break;
                    case Op.Cvt: Cvt(ins, exec); break;
                    case Op.Cvta: Cvta(ins, exec); break;
                    case Op.Setp: Setp(ins, exec); break;
                    case Op.Selp: Selp(ins, exec); break;
                    case Op.Slct: Slct(ins, exec); break;
                    case Op.Atom: case Op.Red: Atom(ins, exec); break;
                    case Op.CpAsync: CpAsync(ins, exec); break;
                    case Op.CpAsyncCommit: CommitGroup(exec); break;
                    case Op.CpAsyncWait: WaitGroup(ins, exec, (int)ins.Ops[0].Imm); break;
                    case Op.CpAsyncWaitAll: CommitGroup(exec); WaitGroup(ins, exec, 0); break;
                    case Op.Activemask: Fill(D, Active); Store(ins.Ops[0], D, exec, PtxType.B32); break;
                    case Op.Prefetch: Prefetch(ins, exec); break;
                    case Op.GridDepWait: GridDepWait(ins, exec); break;
                    case Op.GridDepLaunch: GridDepLaunch(ins, exec); break;
                    case Op.PmEvent: PmEvent(ins); break;
                    case Op.Membar: case Op.Nanosleep: case Op.Nop: case Op.Brkpt:
                        if (ins.Op == Op.Membar && !Cta.Launch.Sequential) Interlocked.MemoryBarrier();
                        break;
                    case Op.Trap: throw Fault("trap instruction executed", ins, BitOperations.TrailingZeroCount(exec));
                    case Op.Isspacep: Isspacep(ins, exec); break;
                    default:
                        if (ins.IsSpecialFunction) cnt.SpecialFunctionInstructions++;
                        ExecAlu(ins, exec);
                        break;
                }
                Pc++;
            }
        }
        finally
        {
            cnt.WarpInstructions += fastCount;
            cnt.ThreadInstructions += 32 * fastCount;
        }
        return WarpStatus.Yield;
    }

    private static void Fill(ulong[] a, ulong v) => a.AsSpan().Fill(v);

    // ---------------- reconvergence ----------------

    private void Park(uint lanes, int pc)
    {
        if (lanes == 0) return;
        for (uint m = lanes; m != 0; m &= m - 1) _lanePc[BitOperations.TrailingZeroCount(m)] = pc;
        Parked |= lanes;
        if (pc < _nextMin) _nextMin = pc;
    }

    /// <summary>Picks the lowest-PC runnable group (merging parked lanes at the current PC). False when none is runnable.</summary>
    private bool Reschedule()
    {
        Park(Active, Pc);
        Active = 0;
        if (Parked == 0)
        {
            if (_frames.Count > 0 && Blocked == 0) { PopFrame(); return Active != 0 || Reschedule(); }
            _nextMin = int.MaxValue;
            return false;
        }
        int min = int.MaxValue;
        if (_its)
        {
            // interleaved: a random parked lane's group runs next, for a random number of instructions; it merges with
            // parked lanes when it reaches their PC (next: the nearest parked PC ahead of it)
            uint m = Parked;
            for (int k = Cta.Random(BitOperations.PopCount(Parked)); k > 0; k--) m &= m - 1;
            min = _lanePc[BitOperations.TrailingZeroCount(m)];
            _itsLeft = Cta.Random(24);
        }
        else for (uint m = Parked; m != 0; m &= m - 1) min = Math.Min(min, _lanePc[BitOperations.TrailingZeroCount(m)]);
        uint group = 0;
        int next = int.MaxValue;
        for (uint m = Parked; m != 0; m &= m - 1)
        {
            int l = BitOperations.TrailingZeroCount(m);
            if (_lanePc[l] == min) group |= 1u << l;
            else if (_lanePc[l] < next && _lanePc[l] > min) next = _lanePc[l];
        }
        Parked &= ~group;
        Active = group;
        Pc = min;
        _nextMin = next;
        return true;
    }

    /// <summary>Every runnable lane is gone but some are blocked at a collective: release a group whose requirement
    /// is now met (lanes that exited no longer count), else report the divergent collective.</summary>
    private void ReleaseBlockedOrThrow()
    {
        for (uint m = Blocked; m != 0; m &= m - 1)
        {
            int pc = _lanePc[BitOperations.TrailingZeroCount(m)];
            uint g = BlockedAt(pc);
            uint required = Required(_code[pc], g);
            if ((g & required) == required && g != 0)
            {
                Blocked &= ~g;
                Active = g;
                Pc = pc;
                return;
            }
        }
        var sb = new System.Text.StringBuilder();
        for (uint m = Blocked; m != 0;)
        {
            int pc = _lanePc[BitOperations.TrailingZeroCount(m)];
            uint g = BlockedAt(pc);
            m &= ~g;
            sb.Append($"\n  lanes 0x{g:x8} wait at {Where(_code[pc])}: {_code[pc].Text}");
        }
        throw new EmulatorFaultException($"synccheck: divergent warp collective in kernel {Cta.Launch.KernelName}, block {Cta.BlockText}, warp {Index}: " +
            $"not all required lanes reach the same instruction (live lanes 0x{Live:x8}){sb}");
    }

    private uint BlockedAt(int pc)
    {
        uint g = 0;
        for (uint m = Blocked; m != 0; m &= m - 1)
        {
            int l = BitOperations.TrailingZeroCount(m);
            if (_lanePc[l] == pc) g |= 1u << l;
        }
        return g;
    }

    private uint Required(Instr ins, uint group)
    {
        if (ins.Aligned || ins.Op == Op.BarRed) return Live;
        // .sync ops: membermask & live; the mask is the last operand
        var mo = ins.Ops[ins.Op == Op.BarWarp ? 0 : ^1];
        uint mask = mo.Kind == OpKind.Imm ? (uint)mo.Imm : mo.Kind == OpKind.Reg ? (uint)R[mo.Reg * 32 + BitOperations.TrailingZeroCount(group)] : 0xFFFFFFFF;
        return mask & Live;
    }

    /// <summary>For a collective: true when all required lanes are here (exec widened to them); else blocks this group.</summary>
    private bool Collective(Instr ins, ref uint exec)
    {
        uint arrived = Active | BlockedAt(Pc);
        uint required = Required(ins, Active);
        if ((arrived & required) == required)
        {
            Blocked &= ~arrived;
            Active = arrived;
            exec = Active;
            if (ins.GuardPred >= 0) exec &= ins.GuardNeg ? ~P[ins.GuardPred] : P[ins.GuardPred];
            if (ins.Aligned && exec != 0 && exec != Live)
                throw Fault($"synccheck: {ins.Op} is .aligned but only lanes 0x{exec:x8} of the live lanes 0x{Live:x8} execute it", ins, BitOperations.TrailingZeroCount(exec | 1));
            return true;
        }
        for (uint m = Active; m != 0; m &= m - 1) _lanePc[BitOperations.TrailingZeroCount(m)] = Pc;
        Blocked |= Active;
        Active = 0;
        return false;
    }

    private void Branch(Instr ins, uint exec)
    {
        uint fall = Active & ~exec;
        if (fall == 0) { Pc = ins.Target; return; }
        if (exec == 0) { Pc++; return; }
        if (ins.Uni) throw Fault($"bra.uni with a divergent predicate (taken 0x{exec:x8}, not taken 0x{fall:x8})", ins, BitOperations.TrailingZeroCount(exec));
        Cta.Counters.DivergentBranches++;
        Park(exec, ins.Target);
        Park(fall, Pc + 1);
        Active = 0;
    }

    private void Return(Instr ins, uint exec)
    {
        if (ins.Op == Op.Ret && _frames.Count > 0) _returned |= exec;
        else Exited |= exec;
        Active &= ~exec;
        if (Active != 0) Pc++;
    }

    private void Call(Instr ins, uint exec)
    {
        var f = ins.Callee!;
        if (f.Name == "vprintf") { Vprintf(ins, exec); Pc++; return; }
        if (exec != Active) throw Fault("call under a divergent predicate is not supported by the emulator", ins, BitOperations.TrailingZeroCount(exec));
        if (_frames.Count > 64) throw Fault("call depth exceeds 64 (recursion?)", ins, 0);
        var caller = _fn;
        int newBase = (_frameBase + caller.FrameBytes + 15) & ~15;
        if (newBase + f.FrameBytes > Cta.Launch.LocalPerThread)
            throw Fault($"call stack overflow: frames need more than the {Cta.Launch.LocalPerThread}-byte local window", ins, 0);
        // copy arguments from the caller's call-sequence .param vars into the callee's params
        var lists = ins.Ops.Where(o => o.Kind == OpKind.List).ToArray();
        Operand? rets = ins.Ops.Length > 1 && ins.Ops[0].Kind == OpKind.List ? ins.Ops[0] : null;
        Operand? args = lists.Length == 2 ? lists[1] : (lists.Length == 1 && rets == null ? lists[0] : null);
        if (args != null)
        {
            if (args.Elems.Length != f.Params.Count) throw Fault($"call passes {args.Elems.Length} arguments, {f.Name} takes {f.Params.Count}", ins, 0);
            for (int i = 0; i < args.Elems.Length; i++)
                CopyFrame(exec, _frameBase + (int)args.Elems[i].Sym!.Offset, newBase + (int)f.Params[i].Offset, (int)f.Params[i].Size);
        }
        _frames.Push(new Frame(_code, _fn, Pc + 1, Parked, Blocked, (int[])_lanePc.Clone(), _frameBase, _returned, ins));
        Parked = Blocked = 0;
        _returned = 0;
        _nextMin = int.MaxValue;
        _frameBase = newBase;
        _fn = f;
        _code = f.Code;
        Pc = 0;
    }

    private void PopFrame()
    {
        var fr = _frames.Pop();
        var callee = _fn;
        uint back = _returned;
        int calleeBase = _frameBase;
        _code = fr.Code;
        _fn = fr.Fn;
        _frameBase = fr.FrameBase;
        Array.Copy(fr.LanePc, _lanePc, 32);
        Parked = fr.Parked;
        Blocked = fr.Blocked;
        _returned = fr.Returned;
        var ins = fr.Call;
        Operand? rets = ins.Ops.Length > 1 && ins.Ops[0].Kind == OpKind.List ? ins.Ops[0] : null;
        if (rets != null)
            for (int i = 0; i < rets.Elems.Length && i < callee.RetParams.Count; i++)
                CopyFrame(back, calleeBase + (int)callee.RetParams[i].Offset, _frameBase + (int)rets.Elems[i].Sym!.Offset, (int)callee.RetParams[i].Size);
        _nextMin = int.MaxValue;
        for (uint m = Parked; m != 0; m &= m - 1) _nextMin = Math.Min(_nextMin, _lanePc[BitOperations.TrailingZeroCount(m)]);
        Active = back & ~Exited;
        Pc = fr.ReturnPc;
    }

    /// <summary>Copies <paramref name="bytes"/> between two local-window offsets for each lane in <paramref name="lanes"/>.</summary>
    private unsafe void CopyFrame(uint lanes, int fromOff, int toOff, int bytes)
    {
        var L = Cta.Launch;
        for (uint m = lanes; m != 0; m &= m - 1)
        {
            int l = BitOperations.TrailingZeroCount(m);
            byte* b = Cta.LocalPtr + (long)(Index * 32 + l) * L.LocalPerThread;
            if (fromOff + bytes > L.LocalPerThread || toOff + bytes > L.LocalPerThread) throw new EmulatorFaultException("call frame outside the local window");
            Buffer.MemoryCopy(b + fromOff, b + toOff, bytes, bytes);
        }
    }

    [MethodImpl(MethodImplOptions.NoInlining)]
    public EmulatorFaultException Fault(string what, Instr ins, int lane)
    {
        int tid = Index * 32 + lane;
        var L = Cta.Launch;
        uint bx = L.Block.X, by = L.Block.Y;
        string thread = $"({tid % bx},{tid / bx % by},{tid / (bx * by)})";
        return new EmulatorFaultException($"{what}\n  kernel {L.KernelName}, {Where(ins)}: {ins.Text}\n  block {Cta.BlockText}, thread {thread} (warp {Index}, lane {lane})");
    }

    public string Where(Instr ins)
    {
        string s = $"PTX line {ins.PtxLine}";
        if (ins.SrcLine > 0)
        {
            Cta.Launch.Module.Files.TryGetValue(ins.SrcFile, out var file);
            s += $" (CUDA {Path.GetFileName(file ?? "?")}:{ins.SrcLine})";
        }
        return s;
    }
}
