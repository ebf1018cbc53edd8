namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Marks the global loads of a function that start a new dependent memory round trip (<see cref="Instr.RoundTripStart"/>),
/// per region (a loop body, or the code between loops: straight-line code and forward branches), as a scheduler that
/// issues loads early would see them (ptxas hoists loads and their address arithmetic, and if-converts the small
/// if-then blocks around guarded loads; NVRTC's PTX keeps source order and branches).
/// <para>
/// Each instruction of a region gets an epoch: the number of memory round trips the warp must have waited for before it
/// can issue. A register written by a global load (ld.global or generic ld, an atom with a result, cp.async) is
/// available one epoch after the load; any other result in the epoch of its instruction; every value from before the
/// region in epoch 0; code in a forward-branch's shadow is taken as executed. An instruction's epoch is the latest availability of what it reads (registers, guard predicate).
/// Loads may move up past anything but memory-ordering points: a load's epoch is at least that of the last store to
/// global or generic memory, atomic or volatile load before it, and at least that of the last fence (bar, membar,
/// call, cp.async wait), which nothing crosses. The first load of each distinct epoch in a region starts a round trip;
/// the others share it. Four independent loads then their sum: one trip; a pointer chase: one per hop; a loop body:
/// one per iteration plus one per dependent level inside it.
/// </para>
/// <para>
/// Values entering a region count as ready, so loads in different regions never share a trip (one loop iteration's
/// loads never overlap the next's unless the compiler unrolled the loop in the PTX), and a software-pipelined loop
/// counts one trip per iteration.
/// cp.async results are a pseudo-register read by cp.async.wait_group / wait_all. At run time a warp counts a trip at
/// each executed load that starts one (<see cref="Warp"/>). See docs/timing-model.md.
/// </para>
/// </summary>
internal static class RoundTripAnalysis
{
    /// <summary>Sets <see cref="Instr.RoundTripStart"/> on the loads of <paramref name="fn"/>; <paramref name="registers"/>: register slots in use (the module's total for rebased .func bodies).</summary>
    public static void Mark(PtxFunction fn, int registers)
    {
        var code = fn.Code;
        int n = code.Length;
        if (n == 0) return;
        int asyncSlot = Math.Max(registers, fn.NumRegs);
        int preds = 1 + code.Max(i => Math.Max(i.GuardPred, i.Ops.Length == 0 ? -1 : Math.Max(i.Ops[0].Kind == OpKind.Pred ? i.Ops[0].Reg : -1, i.Ops[0].PairPred)));
        // regions: straight-line code and forward branches (if-then blocks around guarded loads, which ptxas if-converts);
        // a loop header (a backward branch's target), the instruction after a backward branch and code after an
        // unconditional exit start a new region
        var leader = new bool[n + 1];
        leader[0] = true;
        for (int i = 0; i < n; i++)
        {
            var ins = code[i];
            if (ins.Op == Op.Bra && ins.Target >= 0 && ins.Target <= i) { leader[ins.Target] = true; leader[i + 1] = true; }
            if (ins.GuardPred < 0 && ins.Op is Op.Ret or Op.Exit or Op.Trap) leader[i + 1] = true;
        }
        // availability epochs, valid when the stamp is the current region's (so nothing is cleared per region)
        var regEpoch = new int[asyncSlot + 1];
        var regStamp = new int[asyncSlot + 1];
        var predEpoch = new int[Math.Max(preds, 1)];
        var predStamp = new int[Math.Max(preds, 1)];
        var epochsWithTrip = new List<int>();
        int region = 0, fenceEpoch = 0, orderEpoch = 0, maxEpoch = 0, maxLoadEpoch = 0;
        var reads = new List<int>(8);
        var writes = new List<int>(4);
        // an atom whose result no instruction reads is a red to ptxas: it returns nothing to wait for
        var read = new bool[asyncSlot + 1];
        foreach (var ins in code)
        {
            Registers(ins, asyncSlot, reads, writes);
            foreach (int r in reads) read[r] = true;
        }
        foreach (var ins in code)
        {
            if (ins.Op != Op.Atom) continue;
            Registers(ins, asyncSlot, reads, writes);
            ins.ResultUnused = writes.TrueForAll(w => !read[w]);
        }
        for (int i = 0; i < n; i++)
        {
            if (leader[i])
            {
                region++;
                fenceEpoch = orderEpoch = maxEpoch = maxLoadEpoch = 0;
                epochsWithTrip.Clear();
            }
            var ins = code[i];
            Registers(ins, asyncSlot, reads, writes);
            int ready = 0;
            foreach (int r in reads) if (regStamp[r] == region) ready = Math.Max(ready, regEpoch[r]);
            if (ins.GuardPred >= 0 && predStamp[ins.GuardPred] == region) ready = Math.Max(ready, predEpoch[ins.GuardPred]);
            bool load = IsGlobalLoad(ins);
            int epoch;
            if (IsFence(ins)) epoch = fenceEpoch = Math.Max(ready, maxEpoch);
            else if (OrdersMemory(ins)) epoch = orderEpoch = Math.Max(ready, Math.Max(fenceEpoch, Math.Max(orderEpoch, maxLoadEpoch)));
            else if (load) epoch = Math.Max(ready, Math.Max(fenceEpoch, orderEpoch));
            else epoch = Math.Max(ready, fenceEpoch);
            maxEpoch = Math.Max(maxEpoch, epoch);
            if (load)
            {
                maxLoadEpoch = Math.Max(maxLoadEpoch, epoch);
                ins.RoundTripStart = !epochsWithTrip.Contains(epoch);
                if (ins.RoundTripStart) epochsWithTrip.Add(epoch);
            }
            int available = load ? epoch + 1 : epoch;
            foreach (int w in writes) { regEpoch[w] = available; regStamp[w] = region; }
            if (ins.Ops.Length > 0)
            {
                var d = ins.Ops[0];
                if (d.Kind == OpKind.Pred && d.Reg >= 0 && d.Reg < preds) { predEpoch[d.Reg] = available; predStamp[d.Reg] = region; }
                if (d.PairPred >= 0 && d.PairPred < preds) { predEpoch[d.PairPred] = available; predStamp[d.PairPred] = region; }
            }
        }
    }

    /// <summary>Loads whose data comes from global memory (or may: a generic address), atomics that return a value, cp.async.</summary>
    internal static bool IsGlobalLoad(Instr ins) => ins.Op switch
    {
        Op.Ld => ins.Space is Space.Global or Space.Generic,
        Op.Atom => ins.Space is Space.Global or Space.Generic && !ins.ResultUnused,
        Op.CpAsync => true,
        _ => false,
    };

    /// <summary>Nothing moves across these (ptxas keeps barriers, fences and calls in place).</summary>
    private static bool IsFence(Instr ins) => ins.Op is Op.Bar or Op.BarArrive or Op.BarRed or Op.BarWarp or Op.Membar or Op.Call
        or Op.CpAsyncWait or Op.CpAsyncWaitAll;

    /// <summary>Global memory accesses no load may be hoisted above (the addresses may alias), nor these above earlier loads.</summary>
    private static bool OrdersMemory(Instr ins) => ins.Op switch
    {
        Op.St => ins.Space is Space.Global or Space.Generic,
        Op.Ld => ins.Volatile && ins.Space is Space.Global or Space.Generic,
        Op.Atom or Op.Red => true,
        _ => false,
    };

    /// <summary>The register slots an instruction reads and writes (an address's base register is read; cp.async writes and its waits read the pseudo-register).</summary>
    private static void Registers(Instr ins, int asyncSlot, List<int> reads, List<int> writes)
    {
        reads.Clear();
        writes.Clear();
        bool firstIsDef = RegisterLiveness.WritesFirstOperand(ins.Op);
        for (int k = 0; k < ins.Ops.Length; k++) RegisterLiveness.Collect(ins.Ops[k], k == 0 && firstIsDef ? writes : reads, reads, asyncSlot);
        if (ins.Op == Op.CpAsync) writes.Add(asyncSlot);
        if (ins.Op is Op.CpAsyncWait or Op.CpAsyncWaitAll) reads.Add(asyncSlot);
    }
}
