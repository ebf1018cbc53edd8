namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Mutable per-worker counters, merged into a <see cref="LaunchRecord"/> at the end of a launch.</summary>
internal sealed class Counters
{
    public long WarpInstructions, ThreadInstructions;
    public long GlobalLoadRequests, GlobalStoreRequests, GlobalLoadBytes, GlobalStoreBytes, GlobalLoadSectors, GlobalStoreSectors;
    public long GlobalAtomics, DistinctSectors, L2ResidentSectors, PreWaitSectors, PreWaitLoadBytes, PersistingSectors, RereadSectors;
    public long WaitingCtas;   // CTAs of which a warp executed griddepcontrol.wait
    /// <summary>Distinct sectors that were not left in L2 by an earlier launch.</summary>
    public long DramSectors => DistinctSectors - L2ResidentSectors;
    public long SharedLoadRequests, SharedStoreRequests, SharedWavefronts, SharedBankConflicts;
    public long LocalBytes, Barriers, MmaCount, CpAsyncBytes, DivergentBranches;
    public long SpecialFunctionInstructions, Shuffles, Warps, DramRoundTrips, L2RoundTrips;
    // maxima over warps, not sums: of the whole warp, its parts before and from its first griddepcontrol.wait, from its tail
    // mark on and before it (a warp without a mark: all of it), from its wait to its mark, and from its wait (or its start)
    // to its stream mark (Warp.Head)
    public ChainMaxima Whole, PreWait, PostWait, Tail, PreTail, PostWaitPreTail, Head;
    public long TailDramRoundTrips;   // summed over the warps, as DramRoundTrips
    public readonly TailChainFrontier TailChains = new();   // the warps' tails themselves, the ones no other warp's covers

    /// <summary>
    /// Adds one finished warp's own figures: its round trips (summed and maxed) and instructions (maxed), in all and split at
    /// its first griddepcontrol.wait (the <c>preWait*</c> part before it; all zero without one), at its tail mark (the
    /// <c>tail*</c> part from it on; all zero without one), and its head (<c>head*</c>: from its wait to its stream mark).
    /// </summary>
    public void AddWarp(long instructions, long dramTrips, long l2Trips, long preWaitInstructions = 0, long preWaitDramTrips = 0, long preWaitL2Trips = 0,
        long tailInstructions = 0, long tailDramTrips = 0, long tailL2Trips = 0, long headInstructions = 0, long headDramTrips = 0, long headL2Trips = 0)
    {
        TailDramRoundTrips += tailDramTrips;
        if (tailInstructions > 0) TailChains.Add(new TailChain(tailDramTrips, tailL2Trips, tailInstructions));
        Warps++;
        DramRoundTrips += dramTrips; L2RoundTrips += l2Trips;
        Whole.Max(instructions, dramTrips, l2Trips);
        PreWait.Max(preWaitInstructions, preWaitDramTrips, preWaitL2Trips);
        PostWait.Max(instructions - preWaitInstructions, dramTrips - preWaitDramTrips, l2Trips - preWaitL2Trips);
        Tail.Max(tailInstructions, tailDramTrips, tailL2Trips);
        PreTail.Max(instructions - tailInstructions, dramTrips - tailDramTrips, l2Trips - tailL2Trips);
        // our kernels mark their tail after their wait; a mark before it leaves nothing between the two
        PostWaitPreTail.Max(Math.Max(0, instructions - preWaitInstructions - tailInstructions), Math.Max(0, dramTrips - preWaitDramTrips - tailDramTrips),
            Math.Max(0, l2Trips - preWaitL2Trips - tailL2Trips));
        Head.Max(headInstructions, headDramTrips, headL2Trips);
    }

    public void Add(Counters o)
    {
        WarpInstructions += o.WarpInstructions; ThreadInstructions += o.ThreadInstructions;
        GlobalLoadRequests += o.GlobalLoadRequests; GlobalStoreRequests += o.GlobalStoreRequests;
        GlobalLoadBytes += o.GlobalLoadBytes; GlobalStoreBytes += o.GlobalStoreBytes;
        GlobalLoadSectors += o.GlobalLoadSectors; GlobalStoreSectors += o.GlobalStoreSectors;
        GlobalAtomics += o.GlobalAtomics; DistinctSectors += o.DistinctSectors; L2ResidentSectors += o.L2ResidentSectors; RereadSectors += o.RereadSectors; PreWaitSectors += o.PreWaitSectors; PreWaitLoadBytes += o.PreWaitLoadBytes; PersistingSectors += o.PersistingSectors; WaitingCtas += o.WaitingCtas;
        SharedLoadRequests += o.SharedLoadRequests; SharedStoreRequests += o.SharedStoreRequests;
        SharedWavefronts += o.SharedWavefronts; SharedBankConflicts += o.SharedBankConflicts;
        LocalBytes += o.LocalBytes; Barriers += o.Barriers; MmaCount += o.MmaCount; CpAsyncBytes += o.CpAsyncBytes;
        DivergentBranches += o.DivergentBranches;
        SpecialFunctionInstructions += o.SpecialFunctionInstructions; Shuffles += o.Shuffles; Warps += o.Warps;
        DramRoundTrips += o.DramRoundTrips; L2RoundTrips += o.L2RoundTrips;
        Whole.Max(o.Whole); PreWait.Max(o.PreWait); PostWait.Max(o.PostWait); Tail.Max(o.Tail); PreTail.Max(o.PreTail);
        PostWaitPreTail.Max(o.PostWaitPreTail); Head.Max(o.Head);
        TailDramRoundTrips += o.TailDramRoundTrips;
        TailChains.Add(o.TailChains);
    }
}

/// <summary>The largest instructions, DRAM and L2 round trips over warps (possibly of different warps) of one part of them.</summary>
internal struct ChainMaxima
{
    public long Instructions, DramRoundTrips, L2RoundTrips;

    public void Max(long instructions, long dramTrips, long l2Trips)
    {
        Instructions = Math.Max(Instructions, instructions);
        DramRoundTrips = Math.Max(DramRoundTrips, dramTrips);
        L2RoundTrips = Math.Max(L2RoundTrips, l2Trips);
    }

    public void Max(in ChainMaxima o) => Max(o.Instructions, o.DramRoundTrips, o.L2RoundTrips);
}

/// <summary>
/// Counters of one kernel launch on the emulator (performance proxies, not timings). Sectors are 32-byte
/// units; <see cref="CoalescingEfficiency"/> = bytes requested / (sectors × 32) over global loads and stores.
/// </summary>
public sealed record LaunchRecord
{
    public required string Kernel { get; init; }
    public required Dim3 Grid { get; init; }
    public required Dim3 Block { get; init; }
    public int DynamicSharedBytes { get; init; }
    public long WarpInstructions { get; init; }
    public long ThreadInstructions { get; init; }
    public long GlobalLoadRequests { get; init; }
    public long GlobalStoreRequests { get; init; }
    public long GlobalLoadBytes { get; init; }
    public long GlobalStoreBytes { get; init; }
    /// <summary>32-byte sectors summed over requests (each request counts its distinct sectors).</summary>
    public long GlobalLoadSectors { get; init; }
    public long GlobalStoreSectors { get; init; }
    /// <summary>Distinct 32-byte sectors touched over the whole launch: a DRAM-traffic proxy.</summary>
    public long DistinctSectors { get; init; }
    /// <summary>
    /// Of <see cref="DistinctSectors"/>, those an earlier launch touched (in memory a kernel has written) within the last
    /// <see cref="EmulatorOptions.L2ResidentBytes"/> of DRAM traffic (the writes of a launch counted at its end): taken to be
    /// still in L2.
    /// </summary>
    public long L2ResidentSectors { get; init; }
    public long GlobalAtomics { get; init; }
    public long SharedLoadRequests { get; init; }
    public long SharedStoreRequests { get; init; }
    public long SharedWavefronts { get; init; }
    public long SharedBankConflicts { get; init; }
    public long LocalBytes { get; init; }
    public long Barriers { get; init; }
    public long MmaCount { get; init; }
    public long CpAsyncBytes { get; init; }
    public long DivergentBranches { get; init; }
    /// <summary>Warp instructions on the special-function unit (rcp, sqrt, rsqrt, ex2, lg2, sin, cos, tanh).</summary>
    public long SpecialFunctionInstructions { get; init; }
    /// <summary>Warp shuffles (shfl.sync).</summary>
    public long Shuffles { get; init; }
    /// <summary>Warps that ran (grid × warps per block).</summary>
    public long Warps { get; init; }
    /// <summary>
    /// Dependent global-memory round trips, summed over warps: a trip is a group of global loads issued before the warp
    /// reads any of their results (see RoundTripAnalysis); a DRAM trip fetched at least one 32-byte sector first touched
    /// in this launch and not left in L2 by an earlier one (<see cref="L2ResidentSectors"/>), an L2 trip only others.
    /// </summary>
    public long DramRoundTrips { get; init; }
    public long L2RoundTrips { get; init; }
    /// <summary>The largest per-warp figures of the launch (possibly of different warps): instructions, DRAM and L2 round trips.</summary>
    public long MaxWarpInstructions { get; init; }
    public long MaxWarpDramRoundTrips { get; init; }
    public long MaxWarpL2RoundTrips { get; init; }
    /// <summary>
    /// The same maxima over the warps' parts before their first griddepcontrol.wait (the part a programmatic launch may run
    /// while the kernel before it still runs; 0 in a kernel without a wait) and from the wait on. The round trip in flight
    /// at the wait belongs to the part before it.
    /// </summary>
    public long MaxWarpPreWaitInstructions { get; init; }
    public long MaxWarpPreWaitDramRoundTrips { get; init; }
    public long MaxWarpPreWaitL2RoundTrips { get; init; }
    public long MaxWarpPostWaitInstructions { get; init; }
    public long MaxWarpPostWaitDramRoundTrips { get; init; }
    public long MaxWarpPostWaitL2RoundTrips { get; init; }
    /// <summary>
    /// The same maxima over the warps' parts from their tail mark on (<c>tail_begin()</c>, kernels/common.cuh: a CTA's work
    /// after its share of the launch's stream, e.g. the ticket and the last CTA's merge; 0 in a kernel without one) and
    /// before it (a warp without a mark: all of it). The timing model adds the longest tail after the launch's waves
    /// (docs/timing-model.md, section 2).
    /// </summary>
    public long MaxWarpTailInstructions { get; init; }
    public long MaxWarpTailDramRoundTrips { get; init; }
    public long MaxWarpTailL2RoundTrips { get; init; }
    /// <summary>
    /// The warps' tails as chains of their own (round trips and instructions of one warp), those that no other warp's tail
    /// covers in all three (<see cref="TailChainFrontier"/>): the longest tail on any GPU is one of them, whereas the maxima
    /// above may come from different warps (a warp with the tail's round trip, another with its instructions). Empty
    /// without a mark, and in records built by hand (the timing model then takes the maxima).
    /// </summary>
    public IReadOnlyList<TailChain> TailChains { get; init; } = [];
    public long MaxWarpPreTailInstructions { get; init; }
    public long MaxWarpPreTailDramRoundTrips { get; init; }
    public long MaxWarpPreTailL2RoundTrips { get; init; }
    /// <summary>
    /// The same maxima over the warps' parts from their first griddepcontrol.wait to their tail mark (a warp without a mark:
    /// from the wait on): in a launch whose last CTA runs a tail (a ticket's merge), the tail starts only after every
    /// warp's part before its mark, so a stage's chain after its wait is this part plus the longest tail
    /// (docs/timing-model.md, section 7).
    /// </summary>
    public long MaxWarpPostWaitPreTailInstructions { get; init; }
    public long MaxWarpPostWaitPreTailDramRoundTrips { get; init; }
    public long MaxWarpPostWaitPreTailL2RoundTrips { get; init; }
    /// <summary>
    /// The same maxima over the warps' heads: from their first griddepcontrol.wait (or their start) to their stream mark
    /// (<c>stream_begin()</c>, kernels/common.cuh: where a CTA whose weights' addresses depend on what it read after its
    /// wait, the experts' ids, issues its first weight request); 0 in a kernel without one. The timing model starts the
    /// DRAM term's stream after the head (docs/timing-model.md, section 2).
    /// </summary>
    public long MaxWarpHeadInstructions { get; init; }
    public long MaxWarpHeadDramRoundTrips { get; init; }
    public long MaxWarpHeadL2RoundTrips { get; init; }
    /// <summary>Of <see cref="DramRoundTrips"/>, those of the warps' tails (the Little's-law term leaves them to the tail).</summary>
    public long TailDramRoundTrips { get; init; }
    /// <summary>The module the kernel came from: its file name (e.g. "gemv.cu") and NVRTC options (-D defines), so it can be rebuilt for another architecture.</summary>
    public string ModuleName { get; init; } = "";
    public IReadOnlyList<string> ModuleOptions { get; init; } = [];
    /// <summary>The launch ran as a node of a graph launch (else it was launched on a stream by itself).</summary>
    public bool InGraph { get; init; }
    /// <summary>The emulated stream it ran on (0: the default stream; streams are numbered as created).</summary>
    public int Stream { get; init; }
    /// <summary>The launch's <see cref="LaunchConfig.Stage"/>: a stage of one stage-ordered launch run apart, or null.</summary>
    public LaunchStage? Stage { get; init; }
    /// <summary>
    /// Launched with programmatic stream serialization (LaunchConfig.ProgrammaticDependentLaunch on a device of compute
    /// capability 9.0 or newer): it may start while the previous kernel runs, and waits in griddepcontrol.wait.
    /// </summary>
    public bool ProgrammaticLaunch { get; init; }
    /// <summary>
    /// Of <see cref="DistinctSectors"/>, those touched (by a load, a prefetch or a cp.async source) by a lane before its
    /// griddepcontrol.wait, each once and whatever the CTAs' order: memory the launch may fetch while the previous
    /// kernel still runs (its weights).
    /// </summary>
    public long PreWaitSectors { get; init; }
    /// <summary>
    /// Bytes the lanes loaded into the SM (a load into registers or a cp.async into shared memory) before their
    /// griddepcontrol.wait, each lane's access counted: data already on the SMs when the launch's inputs are ready, which
    /// needs no transfer from the L2 after that (docs/timing-model.md, section 7). Prefetches are not loads: they are in
    /// <see cref="PreWaitSectors"/> only.
    /// </summary>
    public long PreWaitLoadBytes { get; init; }
    /// <summary>
    /// CTAs of which a warp executed griddepcontrol.wait; the others exited before it (e.g. a decode attention CTA past
    /// its row's split plan). The timing model counts residency beside the predecessor over these.
    /// </summary>
    public long WaitingCtas { get; init; }
    /// <summary>
    /// Sectors this launch prefetched with <c>prefetch.global.L2::evict_last</c> (each once): data fetched into L2 for a later
    /// kernel, which finds them L2-resident while less than <see cref="EmulatorOptions.L2PersistingBytes"/> of other such
    /// prefetches followed (docs/timing-model.md, "Weights fetched ahead").
    /// </summary>
    public long PersistingSectors { get; init; }
    /// <summary>
    /// With <see cref="EmulatorOptions.CriticalWarpLines"/>: the instructions of the warp that executed the most, summed per
    /// CUDA source line, most first (empty otherwise). Instructions inside .func calls are not attributed.
    /// </summary>
    public IReadOnlyList<InstructionLine> CriticalWarpLines { get; init; } = [];
    public double ElapsedMilliseconds { get; init; }

    /// <summary>
    /// Bytes served by the cache hierarchy rather than DRAM: sectors requested (loads, stores, cp.async) beyond the
    /// distinct ones, × 32.
    /// </summary>
    /// <summary>
    /// Of <see cref="DistinctSectors"/>, those a load, store or cp.async touched again after an earlier one in the launch
    /// (a prefetch does not count as the earlier one): the set <see cref="CacheReuseBytes"/> re-reads, each sector once. The
    /// timing model takes the re-reads of a small set, spread over the launch, to stay in L2 (docs/timing-model.md).
    /// </summary>
    public long RereadSectors { get; init; }
    public long CacheReuseBytes => Math.Max(0, (GlobalLoadSectors + GlobalStoreSectors) * 32 + CpAsyncBytes - DistinctSectors * 32);

    public long GridBlocks => (long)Grid.Count;
    public double SectorsPerRequest => GlobalLoadRequests + GlobalStoreRequests == 0 ? 0
        : (double)(GlobalLoadSectors + GlobalStoreSectors) / (GlobalLoadRequests + GlobalStoreRequests);
    public double CoalescingEfficiency => GlobalLoadSectors + GlobalStoreSectors == 0 ? 1
        : (double)(GlobalLoadBytes + GlobalStoreBytes) / ((GlobalLoadSectors + GlobalStoreSectors) * 32.0);

    internal static LaunchRecord From(string kernel, in LaunchConfig cfg, Counters c, double ms, string moduleName = "", IReadOnlyList<string>? moduleOptions = null) => new()
    {
        Kernel = kernel, ModuleName = moduleName, ModuleOptions = moduleOptions ?? [], Grid = cfg.Grid, Block = cfg.Block, DynamicSharedBytes = cfg.DynamicSharedBytes, Stage = cfg.Stage,
        WarpInstructions = c.WarpInstructions, ThreadInstructions = c.ThreadInstructions,
        GlobalLoadRequests = c.GlobalLoadRequests, GlobalStoreRequests = c.GlobalStoreRequests,
        GlobalLoadBytes = c.GlobalLoadBytes, GlobalStoreBytes = c.GlobalStoreBytes,
        GlobalLoadSectors = c.GlobalLoadSectors, GlobalStoreSectors = c.GlobalStoreSectors,
        DistinctSectors = c.DistinctSectors, L2ResidentSectors = c.L2ResidentSectors, RereadSectors = c.RereadSectors, PreWaitSectors = c.PreWaitSectors, PreWaitLoadBytes = c.PreWaitLoadBytes, PersistingSectors = c.PersistingSectors, WaitingCtas = c.WaitingCtas, GlobalAtomics = c.GlobalAtomics,
        SharedLoadRequests = c.SharedLoadRequests, SharedStoreRequests = c.SharedStoreRequests,
        SharedWavefronts = c.SharedWavefronts, SharedBankConflicts = c.SharedBankConflicts,
        LocalBytes = c.LocalBytes, Barriers = c.Barriers, MmaCount = c.MmaCount, CpAsyncBytes = c.CpAsyncBytes,
        DivergentBranches = c.DivergentBranches, ElapsedMilliseconds = ms,
        SpecialFunctionInstructions = c.SpecialFunctionInstructions, Shuffles = c.Shuffles, Warps = c.Warps,
        DramRoundTrips = c.DramRoundTrips, L2RoundTrips = c.L2RoundTrips,
        MaxWarpInstructions = c.Whole.Instructions, MaxWarpDramRoundTrips = c.Whole.DramRoundTrips, MaxWarpL2RoundTrips = c.Whole.L2RoundTrips,
        MaxWarpPreWaitInstructions = c.PreWait.Instructions, MaxWarpPreWaitDramRoundTrips = c.PreWait.DramRoundTrips, MaxWarpPreWaitL2RoundTrips = c.PreWait.L2RoundTrips,
        MaxWarpPostWaitInstructions = c.PostWait.Instructions, MaxWarpPostWaitDramRoundTrips = c.PostWait.DramRoundTrips, MaxWarpPostWaitL2RoundTrips = c.PostWait.L2RoundTrips,
        TailDramRoundTrips = c.TailDramRoundTrips,
        MaxWarpTailInstructions = c.Tail.Instructions, MaxWarpTailDramRoundTrips = c.Tail.DramRoundTrips, MaxWarpTailL2RoundTrips = c.Tail.L2RoundTrips,
        MaxWarpPreTailInstructions = c.PreTail.Instructions, MaxWarpPreTailDramRoundTrips = c.PreTail.DramRoundTrips, MaxWarpPreTailL2RoundTrips = c.PreTail.L2RoundTrips,
        MaxWarpPostWaitPreTailInstructions = c.PostWaitPreTail.Instructions, MaxWarpPostWaitPreTailDramRoundTrips = c.PostWaitPreTail.DramRoundTrips,
        MaxWarpPostWaitPreTailL2RoundTrips = c.PostWaitPreTail.L2RoundTrips,
        MaxWarpHeadInstructions = c.Head.Instructions, MaxWarpHeadDramRoundTrips = c.Head.DramRoundTrips, MaxWarpHeadL2RoundTrips = c.Head.L2RoundTrips,
        TailChains = c.TailChains.ToArray(),
    };
}

/// <summary>A CUDA source line ("gemv.cuh:42", or "PTX line N" without line info), its first PTX line and the instructions a warp executed there.</summary>
public readonly record struct InstructionLine(string Where, int FirstPtxLine, long Instructions);

/// <summary>What a non-kernel stream operation did.</summary>
public enum DeviceOperationKind { CopyToDevice, CopyToHost, CopyDeviceToDevice, Memset }

/// <summary>
/// One asynchronous copy or memset on the emulator: its size, whether it ran as a node of a graph launch, and how many
/// kernel launches came before it (its place among <see cref="EmulatedDevice.Launches"/>).
/// </summary>
/// <param name="Stream">the emulated stream it ran on (0: the default stream; <see cref="LaunchRecord.Stream"/>)</param>
public readonly record struct DeviceOperation(DeviceOperationKind Kind, long Bytes, bool InGraph, int LaunchesBefore, int Stream = 0);

/// <summary>A memory-check, race-check or sync-check violation found while running a kernel.</summary>
public sealed class EmulatorFaultException(string message) : DeviceException(message);
