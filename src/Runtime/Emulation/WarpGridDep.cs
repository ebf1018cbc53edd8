using System.Numerics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Programmatic dependent launch (griddepcontrol, PTX ISA 7.8, sm_90) and prefetch. Launches of a stream run one after
/// another here, so griddepcontrol.wait is always satisfied: the warp only records which lanes passed it. Before that,
/// a lane may not store or do an atomic on global memory, nor read (load, prefetch, cp.async) a sector that a kernel of
/// the same step wrote, and may not call launch_dependents (docs/emulator.md, "Programmatic dependent launch").
/// </summary>
internal sealed unsafe partial class Warp
{
    private const string PdlRule = "a kernel launched with programmatic dependent launch may start while the previous kernel runs, so before griddepcontrol.wait it may only read memory no kernel of the step writes (docs/kernels.md, \"Programmatic dependent launch\")";

    private void GridDepWait(Instr ins, uint exec)
    {
        RequireSm90(ins, exec);
        if (!_waited)
        {
            // the warp's part before its first wait: the trip in flight is one of it (the loads after the wait start anew)
            _waited = true;
            (PreWaitInstructions, PreWaitDramTrips, PreWaitL2Trips) = MarkCounts();
        }
        _preWait &= ~exec;
    }

    /// <summary>
    /// pmevent: a performance-monitor event on a GPU, nothing else. Event <see cref="TailEvent"/> marks where the warp's part
    /// of the launch's tail begins, event <see cref="StreamEvent"/> where its weight stream begins (the first mark of each
    /// counts; the trip in flight belongs to the part before it).
    /// </summary>
    private void PmEvent(Instr ins)
    {
        var ev = ins.Ops[0].Imm;
        if (ev == TailEvent && _tailStart is null) _tailStart = MarkCounts();
        else if (ev == StreamEvent && _streamStart is null) _streamStart = MarkCounts();
    }

    // the warp's figures at a mark or its first wait: the trip in flight closed, the instructions of the current Run included
    private (long Instructions, long DramTrips, long L2Trips) MarkCounts()
    {
        CloseTrip();
        return (Instructions + (Cta.Counters.WarpInstructions - _runStart), DramTrips, L2Trips);
    }

    private void GridDepLaunch(Instr ins, uint exec)
    {
        RequireSm90(ins, exec);
        uint early = exec & _preWait;
        if (early != 0 && Cta.Launch.PdlChecks)
            throw Fault("pdl check: griddepcontrol.launch_dependents before griddepcontrol.wait: the next kernel could start while this one's predecessor still runs, so the chain would be more than one kernel deep (our kernels call pdl_launch_dependents() right after pdl_wait(); docs/kernels.md, \"Programmatic dependent launch\")", ins, BitOperations.TrailingZeroCount(early));
    }

    private void RequireSm90(Instr ins, uint exec)
    {
        var d = Cta.Launch.Device;
        if (d.ComputeMajor < 9)
            throw Fault($"{ins.Text.Trim()} needs sm_90 or newer; the emulated device is {d.Arch}", ins, BitOperations.TrailingZeroCount(exec));
    }

    /// <summary>
    /// An access by lanes that have not passed griddepcontrol.wait (<paramref name="what"/>: "load from", "store to",
    /// "atomic on", "prefetch of", "cp.async from"): the contract checks (when on), and with <paramref name="count"/> its
    /// sectors in <see cref="Counters.PreWaitSectors"/>, order-independently (LaunchState.TouchPreWait), and a load's or
    /// cp.async's bytes in <see cref="Counters.PreWaitLoadBytes"/>. Addresses outside
    /// any allocation are left to memcheck.
    /// </summary>
    private void PreWaitAccess(Instr ins, uint exec, Operand addrOp, Space space, int bytes, string what, bool count)
    {
        var L = Cta.Launch;
        bool check = L.PdlChecks;
        if (!(check || count) || space is not (Space.Global or Space.Generic)) return;   // kernel parameters, shared, local: no other kernel's data
        bool writes = what is "store to" or "atomic on";
        for (uint e = exec & _preWait; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong addr = LaneAddress(addrOp, l);
            if (Route(space, ref addr) != Space.Global) continue;
            var a = L.Memory.Find(addr);
            if (a == null || a.Freed || addr >= a.End) continue;
            if (check)
            {
                string where = $"0x{addr:x} ({a}, offset {(long)(addr - a.Start)})";
                if (writes)
                    throw Fault($"pdl check: {what} global memory at {where} before griddepcontrol.wait: {PdlRule}", ins, l);
                long w = L.StepWriter(a, addr, bytes);
                if (w != 0)
                    throw Fault($"pdl check: {what} global memory at {where} before griddepcontrol.wait, but kernel {L.LaunchName?.Invoke(w) ?? "?"} (launch {w}) of this step wrote it: {PdlRule}", ins, l);
            }
            if (count) L.TouchPreWait(a, addr, (int)Math.Min((ulong)bytes, a.End - addr), Cta.Counters);
            if (count && what is "load from" or "cp.async from") Cta.Counters.PreWaitLoadBytes += (long)Math.Min((ulong)bytes, a.End - addr);
        }
    }

    /// <summary>
    /// prefetch / prefetchu: a global (or generic, routed to global) prefetch touches the 32-byte sectors of the 128-byte
    /// line holding the address (clipped to its allocation) as distinct sectors of the launch, so that a later load of
    /// them counts as an L2 hit; it is not a load request and moves no bytes to registers. The address must lie in a live
    /// allocation (hardware ignores a bad prefetch; here it is a bug). Prefetches of local memory do nothing. With
    /// <c>.L2::evict_last</c> the sectors are also stamped as persisting (<see cref="LaunchState.TouchPersisting"/>): a later
    /// launch finds them in L2 whatever the traffic between, within the persisting window.
    /// </summary>
    private void Prefetch(Instr ins, uint exec)
    {
        var L = Cta.Launch;
        var cnt = Cta.Counters;
        var op = ins.Ops[0];
        bool preWait = (exec & _preWait) != 0;
        bool evictLast = ins.Mode == "L2::evict_last";
        if (preWait) PreWaitAccess(ins, exec, op, ins.Space, 1, "prefetch of", count: false);   // counts its clipped line below
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong addr = LaneAddress(op, l);
            if (Route(ins.Space, ref addr) != Space.Global) continue;
            var a = _lastAlloc;
            if (a == null || addr < a.Start || addr >= a.End || a.Freed)
            {
                a = L.Memory.Find(addr);
                if (a == null || addr >= a.End)
                    throw Fault($"memcheck: out-of-bounds prefetch at 0x{addr:x}{L.Memory.Describe(addr)} (a GPU ignores it; here it means the kernel computes a wrong address)", ins, l);
                if (a.Freed) throw Fault($"memcheck: use after free: prefetch at 0x{addr:x}, inside {a} (offset {(long)(addr - a.Start)})", ins, l);
                _lastAlloc = a;
            }
            ulong line = addr & ~127UL;
            ulong from = Math.Max(line, a.Start), to = Math.Min(line + 128, a.End);
            L.TouchSector(a, from, (int)(to - from), cnt, access: false);
            if (((_preWait >> l) & 1) != 0) L.TouchPreWait(a, from, (int)(to - from), cnt);
            if (evictLast) L.TouchPersisting(a, from, (int)(to - from), cnt);
        }
    }
}
