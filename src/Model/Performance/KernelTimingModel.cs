using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Model.Performance;

/// <summary>Registers per thread and static shared memory of a kernel, from the ptxas report of its CUBIN for the GPU.</summary>
public sealed record KernelResources(int RegistersPerThread, int StaticSharedBytes);

/// <summary>What bounds the CTAs resident on one SM.</summary>
public enum OccupancyLimit { Warps, Blocks, Registers, SharedMemory }

/// <summary>CTAs of a kernel resident on one SM at once, and which resource bounds them.</summary>
public readonly record struct Occupancy(int BlocksPerSm, int WarpsPerBlock, OccupancyLimit Limit)
{
    public int WarpsPerSm => BlocksPerSm * WarpsPerBlock;
}

/// <summary>The term that set a kernel's predicted time (the largest in its longest wave).</summary>
public enum TimeBound { Dram, L2, SmFill, Issue, Latency }

/// <summary>
/// One kernel launch's predicted time and the terms behind it. Times are summed over the launch's waves; each wave
/// takes the largest of its terms (<see cref="KernelTimingModel"/>, docs/timing-model.md).
/// </summary>
public sealed record KernelPrediction
{
    public required LaunchRecord Launch { get; init; }
    public required KernelResources Resources { get; init; }
    public required Occupancy Occupancy { get; init; }
    public string Kernel => Launch.Kernel;
    public long Ctas => (long)Launch.Grid.Count;
    /// <summary>Waves of <see cref="Occupancy"/>.BlocksPerSm × SMs CTAs; the last may be a partial tail of <see cref="TailCtas"/>.</summary>
    public required long FullWaves { get; init; }
    public required long TailCtas { get; init; }
    /// <summary>Bytes from DRAM (distinct sectors; plus re-reads that miss a too-small L2) and from L2 (the rest of the re-reads).</summary>
    public required long DramBytes { get; init; }
    public required long L2Bytes { get; init; }
    /// <summary>
    /// Of <see cref="DramBytes"/> + <see cref="L2Bytes"/>, those the launch only prefetched into L2 for a later kernel
    /// (<c>prefetch.global.L2::evict_last</c>, <see cref="LaunchRecord.PersistingSectors"/>): no load of this launch moves
    /// them into its SMs, so they count in the DRAM terms and not in the SM fill or the L2-to-SM transfer (stop 41).
    /// </summary>
    public long PrefetchOnlyBytes { get; init; }
    /// <summary>The bytes its loads move from the L2 into its SMs: <see cref="DramBytes"/> + <see cref="L2Bytes"/> less <see cref="PrefetchOnlyBytes"/>.</summary>
    public long LoadedBytes => DramBytes + L2Bytes - PrefetchOnlyBytes;
    /// <summary>DRAM bytes in flight per active SM in the first wave: resident warps × bytes per warp per round trip.</summary>
    public required double InFlightBytesPerSm { get; init; }
    /// <summary>Bandwidth those bytes in flight sustain over the DRAM latency (Little's law), GB/s, over the first wave's SMs.</summary>
    public required double LittleGBps { get; init; }
    public required double DramUs { get; init; }
    public required double L2Us { get; init; }
    public required double SmFillUs { get; init; }
    public required double IssueUs { get; init; }
    public required double LatencyUs { get; init; }
    /// <summary>
    /// The launch's tail (0 without one): the longest chain of a warp from its tail mark on (<c>tail_begin()</c> in
    /// kernels/common.cuh: the ticket and the last CTA's merge), which starts when the waves are done. Part of
    /// <see cref="Microseconds"/> and <see cref="LastWaveUs"/>.
    /// </summary>
    public double TailUs { get; init; }
    public required double Microseconds { get; init; }
    public required TimeBound Bound { get; init; }
    /// <summary>CTAs of the launch's last wave (the tail, or a full wave) and that wave's time: the window in which the next kernel, if it is launched programmatically, can prefetch.</summary>
    public required long LastWaveCtas { get; init; }
    public required double LastWaveUs { get; init; }
    /// <summary>
    /// Set when the launch is a programmatic graph node chained to the kernel before it (<see cref="StepPredictor"/>): the
    /// pre-wait bytes it fetched while that kernel ran. <see cref="DramBytes"/> and the times are then those left after the overlap.
    /// </summary>
    public PrefetchOverlap? Overlap { get; init; }
    /// <summary>
    /// A stage after the first of a stage-ordered launch measured apart (<see cref="LaunchRecord.Stage"/>): part of the
    /// launch before it, no graph node or launch gap of its own; its <see cref="Microseconds"/> are its share of the composed
    /// launch (<see cref="StepPredictor"/>).
    /// </summary>
    public bool ContinuesLaunch { get; init; }
    /// <summary>
    /// The last stage of a stage-ordered launch measured apart: the DRAM time its window in the composed launch leaves idle
    /// (<see cref="PersistentStageTiming.IdleUs"/> and <see cref="PersistentComposition.EndIdleUs"/>), which bounds what
    /// the next kernel prefetches in its shadow instead of <see cref="LastWaveUs"/> (the stage's time alone, not its time
    /// in the launch); null otherwise.
    /// </summary>
    public double? ComposedDramIdleUs { get; init; }
    /// <summary>The launch's time on its own, without the overlap (what a kernel-by-kernel measurement sees).</summary>
    public double IsolatedMicroseconds => Overlap?.IsolatedMicroseconds ?? Microseconds;
}

/// <summary>What bounded the bytes a programmatic launch fetched while its predecessor ran (docs/timing-model.md, section 3).</summary>
public enum OverlapLimit
{
    /// <summary>All its pre-wait bytes were fetched in the predecessor's shadow (or it had none).</summary>
    PreWaitBytes,
    /// <summary>Only some of its CTAs fit on the SMs beside the predecessor's last wave.</summary>
    Residency,
    /// <summary>The predecessor left too little DRAM bandwidth unused.</summary>
    PredecessorDram,
    /// <summary>The L2 share data may occupy before it is evicted.</summary>
    L2Capacity,
    /// <summary>
    /// The predecessor was not launched programmatically, so it is taken not to call griddepcontrol.launch_dependents: the
    /// kernel is launched only as the predecessor's CTAs exit, so nothing overlaps and the node keeps the full graph-node gap.
    /// </summary>
    NoEarlyTrigger,
}

/// <summary>
/// The prefetch overlap of a programmatic launch with the kernel before it: of its <see cref="PreWaitBytes"/>, the share
/// of its CTAs resident beside the predecessor's last wave, limited by the predecessor's spare DRAM bytes and the L2
/// share (docs/timing-model.md, "Programmatic dependent launch").
/// </summary>
public sealed record PrefetchOverlap
{
    /// <summary>Its sectors first touched before griddepcontrol.wait, × 32, at most its DRAM bytes.</summary>
    public required long PreWaitBytes { get; init; }
    /// <summary>Its CTAs that fit on the SMs beside the predecessor's last-wave CTAs.</summary>
    public required long ResidentCtas { get; init; }
    public required double ResidentFraction { get; init; }
    /// <summary>DRAM bytes the predecessor's last wave leaves unused: (its time − one DRAM latency) × achievable bandwidth − its own DRAM bytes.</summary>
    public required long SpareDramBytes { get; init; }
    public required long L2CapBytes { get; init; }
    /// <summary>The bytes fetched in the predecessor's shadow: min(pre-wait × resident fraction, spare, L2 cap).</summary>
    public required long Bytes { get; init; }
    public required OverlapLimit Limit { get; init; }
    public required double IsolatedMicroseconds { get; init; }
}

/// <summary>
/// The per-kernel timing model (docs/timing-model.md has the derivation and every assumption). A launch runs in waves
/// of R = blocks-per-SM × SMs CTAs (blocks per SM from threads, registers, shared memory and the block limit), the last
/// wave holding the remainder (the tail). A wave of c CTAs takes the largest of:
/// <list type="bullet">
/// <item>DRAM: one DRAM latency plus its DRAM bytes at the achievable bandwidth, or, if longer, the bytes at Little's-law
/// bandwidth: DRAM bytes in flight (resident warps × DRAM bytes per warp per round trip) over the DRAM latency, which
/// comes to the average warp's DRAM round trips × the latency;</item>
/// <item>L2: its re-read bytes at the L2 bandwidth;</item>
/// <item>SM fill: the bytes of the busiest SM's CTAs at one SM's fill bandwidth;</item>
/// <item>issue: the busiest SM's warp instructions at min(issue rate, resident warps × one warp's rate), or its SFU,
/// load/store or tensor pipe if that is slower;</item>
/// <item>latency: the critical warp's dependent chain: its DRAM and L2 round trips at their latencies plus its own
/// instructions at one warp's issue rate.</item>
/// </list>
/// A launch whose warps mark a tail (the work a CTA does after its share of the stream: the ticket, and the last CTA's
/// merge) takes the longest warp's chain from the mark on after its last wave; the latency term is then the chain before
/// the mark.
/// Inputs are the emulator's counters of the launch (<see cref="LaunchRecord"/>), averaged per CTA and per warp.
/// </summary>
public static class KernelTimingModel
{
    /// <summary>FLOP of one mma.sync m16n8k16 (the shape our kernels use): 2 × 16 × 8 × 16.</summary>
    public const double FlopsPerMma = 4096;

    /// <summary>CTAs of <paramref name="threadsPerBlock"/> threads resident per SM (the CUDA occupancy calculator's rules).</summary>
    public static Occupancy Occupancy(GpuSpec g, int threadsPerBlock, int registersPerThread, int sharedBytesPerBlock)
    {
        if (threadsPerBlock < 1) throw new ArgumentOutOfRangeException(nameof(threadsPerBlock), threadsPerBlock, "a block has at least one thread");
        if (registersPerThread > g.MaxRegistersPerThread)
            throw new ArgumentOutOfRangeException(nameof(registersPerThread), registersPerThread, $"more than {g.MaxRegistersPerThread} registers per thread on {g.Name}");
        int warps = (threadsPerBlock + 31) / 32;
        int byWarps = g.MaxWarpsPerSm / warps;
        int regsPerWarp = RoundUp(Math.Max(registersPerThread, 1) * 32, g.RegisterAllocationUnit);
        int byRegisters = g.RegistersPerSm / regsPerWarp / warps;
        int sharedPerBlock = SharedFootprintBytes(g, sharedBytesPerBlock);
        int byShared = sharedBytesPerBlock > g.SharedPerBlockOptinBytes ? 0 : g.SharedPerSmBytes / sharedPerBlock;
        (int blocks, OccupancyLimit limit) = (g.MaxBlocksPerSm, OccupancyLimit.Blocks);
        if (byWarps < blocks) (blocks, limit) = (byWarps, OccupancyLimit.Warps);
        if (byRegisters < blocks) (blocks, limit) = (byRegisters, OccupancyLimit.Registers);
        if (byShared < blocks) (blocks, limit) = (byShared, OccupancyLimit.SharedMemory);
        if (blocks < 1)
            throw new ArgumentException($"a block of {threadsPerBlock} threads with {registersPerThread} registers per thread and {sharedBytesPerBlock} bytes of shared memory does not fit on an SM of {g.Name} (limited by {limit})");
        return new Occupancy(blocks, warps, limit);
    }

    /// <summary>
    /// CTAs of kernel <paramref name="k"/> that fit on one SM beside <paramref name="residentCtas"/> CTAs of kernel
    /// <paramref name="resident"/> (the occupancy rules on what those leave of the warps, registers, shared memory and block
    /// slots; with none resident it is <see cref="Occupancy"/>'s blocks per SM).
    /// </summary>
    public static int BlocksBeside(GpuSpec g, KernelPrediction k, KernelPrediction resident, int residentCtas)
    {
        var (w1, r1, s1) = Footprint(g, k);
        var (w0, r0, s0) = Footprint(g, resident);
        long n = residentCtas;
        long blocks = g.MaxBlocksPerSm - n;
        long byWarps = (g.MaxWarpsPerSm - n * w0) / w1;
        long byRegisters = (g.RegistersPerSm - n * w0 * r0) / r1 / w1;
        long byShared = (g.SharedPerSmBytes - n * s0) / s1;
        return (int)Math.Max(0, Math.Min(Math.Min(blocks, byWarps), Math.Min(byRegisters, byShared)));
    }

    /// <summary>The shared memory a block of <paramref name="sharedBytesPerBlock"/> takes on an SM: rounded up to the allocation unit, plus the reserved kilobyte.</summary>
    public static int SharedFootprintBytes(GpuSpec g, int sharedBytesPerBlock) =>
        RoundUp(sharedBytesPerBlock, g.SharedAllocationUnit) + g.SharedReservedPerBlockBytes;

    /// <summary>Warps per block, registers per warp (allocation units) and shared bytes per block (with the reserved kilobyte).</summary>
    private static (int Warps, int RegistersPerWarp, int SharedPerBlock) Footprint(GpuSpec g, KernelPrediction k) =>
        (((int)k.Launch.Block.Count + 31) / 32, RoundUp(Math.Max(k.Resources.RegistersPerThread, 1) * 32, g.RegisterAllocationUnit),
         SharedFootprintBytes(g, k.Resources.StaticSharedBytes + k.Launch.DynamicSharedBytes));

    /// <summary>
    /// The overlap of programmatic launch <paramref name="k"/> (predicted on its own) with the kernel before it,
    /// <paramref name="predecessor"/> (as predicted in the step, its own overlap included): the pre-wait bytes of the share
    /// of its CTAs that fit beside the predecessor's last wave, at most the DRAM bytes that wave leaves unused and the L2
    /// share. A predecessor not launched programmatically is taken not to trigger its dependents early: no overlap.
    /// </summary>
    public static PrefetchOverlap PrefetchOverlap(GpuSpec g, KernelPrediction k, KernelPrediction predecessor)
    {
        long preWait = Math.Min(k.Launch.PreWaitSectors * 32, k.DramBytes);
        long l2Cap = (long)(g.L2Bytes * g.L2ResidencyFraction);
        // the predecessor's last wave: c CTAs over the SMs, q or q + 1 per SM
        long c = predecessor.LastWaveCtas, q = c / g.Sms, more = c % g.Sms;
        long resident = more * BlocksBeside(g, k, predecessor, (int)q + 1) + (g.Sms - more) * BlocksBeside(g, k, predecessor, (int)q);
        // over the CTAs that wait: those that exit before their wait (numbered after the others, as our kernels do) hold a
        // slot only for their first round trip and have no part to run in the shadow
        long waiting = k.Launch.WaitingCtas > 0 ? Math.Min(k.Launch.WaitingCtas, k.Ctas) : k.Ctas;
        double fraction = Math.Min(1.0, (double)resident / waiting);
        // the DRAM bytes that wave moves for itself, and what it leaves unused after the first latency (bytes = ns × GB/s)
        // (a stage of a composed launch: the DRAM time its window there leaves idle, less the first latency)
        double ownBytes = (double)predecessor.DramBytes * c / predecessor.Ctas;
        long spare = predecessor.ComposedDramIdleUs is double idleUs
            ? (long)Math.Max(0, (idleUs * 1000 - g.DramLatencyNs) * g.DramAchievableGBps)
            : (long)Math.Max(0, (predecessor.LastWaveUs * 1000 - g.DramLatencyNs) * g.DramAchievableGBps - ownBytes);
        long byResidency = (long)(preWait * fraction);
        bool triggers = predecessor.Launch.ProgrammaticLaunch;
        long bytes = triggers ? Math.Min(Math.Min(byResidency, spare), l2Cap) : 0;
        var limit = !triggers ? OverlapLimit.NoEarlyTrigger
            : bytes == preWait ? OverlapLimit.PreWaitBytes
            : bytes == byResidency ? OverlapLimit.Residency
            : bytes == spare ? OverlapLimit.PredecessorDram : OverlapLimit.L2Capacity;
        return new PrefetchOverlap
        {
            PreWaitBytes = preWait, ResidentCtas = Math.Min(resident, waiting), ResidentFraction = fraction, SpareDramBytes = spare,
            L2CapBytes = l2Cap, Bytes = bytes, Limit = limit, IsolatedMicroseconds = k.Microseconds,
        };
    }

    /// <summary>
    /// The launch's traffic between two touches of one re-read sector, taking the re-reads (<see
    /// cref="LaunchRecord.CacheReuseBytes"/>, U) spread evenly over the launch's distinct bytes D and its re-read set (<see
    /// cref="LaunchRecord.RereadSectors"/>, R sectors): each comes back every 32 R D / U bytes. An LRU L2 keeps a line
    /// that comes back within its size, so the re-reads miss only when this exceeds the L2 (and the footprint does): a small
    /// hot set (an activation row every CTA reads) hits, a large one (weight tiles read once per row tile) misses as the
    /// footprint rule says. Infinite (that rule alone) for a record without the re-read set (hand-built ones).
    /// </summary>
    public static double RereadSpacingBytes(LaunchRecord r)
    {
        long reuse = r.CacheReuseBytes;
        if (reuse <= 0) return 0;
        return r.RereadSectors > 0 ? 32.0 * r.RereadSectors * r.DistinctSectors * 32 / reuse : double.PositiveInfinity;
    }

    /// <summary>
    /// Predicts one launch on <paramref name="g"/>. <paramref name="overlappedBytes"/> of its DRAM bytes were fetched into
    /// L2 while the kernel before it ran (programmatic dependent launch): they count as L2 bytes instead of DRAM bytes, and
    /// the same share of its DRAM round trips becomes L2 round trips (each trip is taken to carry the same bytes).
    /// <paramref name="preWaitShadowUs"/>: how long every CTA of the launch runs beside the kernel before it before that one
    /// ends (0: they do not all fit, or it does not trigger early); the critical warp's chain before its wait (round trips and
    /// instructions) runs in that shadow and only what exceeds it stays on the latency term (docs/timing-model.md,
    /// "Programmatic dependent launch").
    /// </summary>
    public static KernelPrediction Predict(LaunchRecord r, KernelResources res, GpuSpec g, long overlappedBytes = 0, double preWaitShadowUs = 0)
    {
        long ctas = (long)r.Grid.Count;
        var occ = Occupancy(g, (int)r.Block.Count, res.RegistersPerThread, res.StaticSharedBytes + r.DynamicSharedBytes);
        long perWave = (long)occ.BlocksPerSm * g.Sms;
        long fullWaves = ctas / perWave, tail = ctas % perWave;

        // bytes: distinct sectors come from DRAM unless an earlier kernel left them in L2; re-reads within the launch hit L2
        // while its footprint fits in it, or while the set they re-read comes back often enough to stay (RereadSpacingBytes)
        long distinct = r.DistinctSectors * 32, resident = r.L2ResidentSectors * 32, reuse = r.CacheReuseBytes;
        double missFraction = distinct > g.L2Bytes && RereadSpacingBytes(r) > g.L2Bytes ? 1.0 - (double)g.L2Bytes / distinct : 0;
        long dram = distinct - resident + (long)(reuse * missFraction), l2 = resident + reuse - (long)(reuse * missFraction);
        // bytes per DRAM trip as measured; the overlapped bytes (already in L2) take their share of the trips with them
        double bytesPerWarpTrip = r.DramRoundTrips > 0 ? (double)dram / r.DramRoundTrips : 0;
        long overlapped = Math.Clamp(overlappedBytes, 0, dram);
        double kept = dram > 0 ? (double)(dram - overlapped) / dram : 1;
        // pre-wait bytes not fetched in the kernel before's shadow: requested before the wait, so in flight during the head
        long preWaitLeft = Math.Max(0, Math.Min(r.PreWaitSectors * 32, dram) - overlapped);
        dram -= overlapped;
        l2 += overlapped;   // in L2 when the kernel loads them after the wait (a prefetch is no load request: no re-read counted)

        // evict_last prefetches are for later kernels (the kernels' convention, docs/timing-model.md section 3): this launch
        // loads none of those bytes into its SMs
        long prefetchOnly = Math.Min(r.PersistingSectors * 32, dram + l2);
        long warps = Math.Max(1, r.Warps > 0 ? r.Warps : ctas * occ.WarpsPerBlock);
        double dramPerCta = (double)dram / ctas, l2PerCta = (double)l2 / ctas, loadedPerCta = (double)(dram + l2 - prefetchOnly) / ctas;
        double tripsPerWarp = (double)(r.DramRoundTrips - r.TailDramRoundTrips) / warps * kept;   // the tails' trips come after the waves
        double instrPerCta = (double)r.WarpInstructions / ctas;
        double sfuCyclesPerCta = r.SpecialFunctionInstructions * (32.0 / g.SfuLanesPerSm) / ctas;
        double lsuCyclesPerCta = (r.GlobalLoadRequests + r.GlobalStoreRequests + r.SharedWavefronts + r.Shuffles) / g.LsuRequestsPerSmPerClock / ctas;
        double mmaCyclesPerCta = r.MmaCount * FlopsPerMma / g.MmaFlopsPerClockPerSm / ctas;
        // a dependent chain of DRAM and L2 round trips (the overlapped share of the DRAM ones found in L2) and instructions
        double Chain(long dramTrips, long l2Trips, long instructions, double keptShare) =>
            (dramTrips * keptShare * g.DramLatencyNs + (l2Trips + dramTrips * (1 - keptShare)) * g.L2LatencyNs) / 1000.0
            + instructions / g.SingleWarpIpc / g.ClockHz * 1e6;
        // the tail: the longest chain from a warp's tail mark on, after the waves (its trips as measured): the longest of the
        // warps' own tails (a record built by hand has only the maxima, which may come from different warps); the latency
        // term is then the chain before the mark
        bool tailed = r.MaxWarpTailInstructions > 0;
        double tailUs = tailed ? ChainUs(g, LongestTail(g, r)) : 0;
        double latencyUs = tailed ? Chain(r.MaxWarpPreTailDramRoundTrips, r.MaxWarpPreTailL2RoundTrips, r.MaxWarpPreTailInstructions, kept)
            : Chain(r.MaxWarpDramRoundTrips, r.MaxWarpL2RoundTrips, r.MaxWarpInstructions, kept);
        if (preWaitShadowUs > 0 && r.MaxWarpPreWaitInstructions > 0)
        {
            // the part before the wait ran beside the kernel before; the part after it (less the tail), as the loads left it
            double before = Chain(r.MaxWarpPreWaitDramRoundTrips, r.MaxWarpPreWaitL2RoundTrips, r.MaxWarpPreWaitInstructions, 1);
            double after = Math.Max(0, Chain(r.MaxWarpPostWaitDramRoundTrips, r.MaxWarpPostWaitL2RoundTrips, r.MaxWarpPostWaitInstructions, kept) - tailUs);
            latencyUs = Math.Min(latencyUs, after + Math.Max(0, before - preWaitShadowUs));
        }

        // the head: a CTA whose weights' addresses depend on what it reads after its wait (the experts' ids) issues its
        // first weight request only after that chain (its stream mark): the longest warp's, its trips as measured. Its
        // pre-wait bytes (a later kernel's weights fetched ahead) were requested before it and stream during it.
        double headUs = ChainUs(g, r.MaxWarpHeadDramRoundTrips, r.MaxWarpHeadL2RoundTrips, r.MaxWarpHeadInstructions);
        double preWaitLeftPerCta = (double)preWaitLeft / ctas;

        Wave Run(long c)
        {
            long k = (c + g.Sms - 1) / g.Sms;                       // CTAs on the busiest SM
            double bytes = c * dramPerCta;
            // the first bytes arrive one latency after the wave's head (less what its pre-wait bytes kept the DRAM busy
            // with meanwhile), then they stream at the achievable bandwidth
            double idleHeadNs = Math.Max(0, headUs * 1000 - c * preWaitLeftPerCta / g.DramAchievableGBps);
            double atPeak = bytes > 0 ? (idleHeadNs + g.DramLatencyNs + bytes / g.DramAchievableGBps) / 1000.0 : 0;   // bytes / (GB/s) = ns
            double little = tripsPerWarp * g.DramLatencyNs / 1000.0; // = bytes / (bytes in flight / latency)
            double l2Us = c * l2PerCta / (g.L2BytesPerClock * g.ClockHz) * 1e6;
            double fill = k * loadedPerCta / (g.SmFillBytesPerClock * g.ClockHz) * 1e6;
            double ipc = Math.Min(g.IssuePerSmPerClock, k * occ.WarpsPerBlock * g.SingleWarpIpc);
            double cycles = k * Math.Max(Math.Max(instrPerCta / ipc, sfuCyclesPerCta), Math.Max(lsuCyclesPerCta, mmaCyclesPerCta));
            double issue = cycles / g.ClockHz * 1e6;
            return new Wave(Math.Max(atPeak, little), l2Us, fill, issue, latencyUs);
        }

        var waves = new List<(Wave W, long Count)>();
        if (fullWaves > 0) waves.Add((Run(perWave), fullWaves));
        if (tail > 0) waves.Add((Run(tail), 1));
        double total = waves.Sum(w => w.W.Max * w.Count) + tailUs;
        var longest = waves.MaxBy(w => w.W.Max * w.Count).W;
        long lastWaveCtas = tail > 0 ? tail : perWave;

        long firstWave = fullWaves > 0 ? perWave : tail;
        long activeSms = Math.Min(firstWave, g.Sms);
        double inFlightPerSm = (double)firstWave * occ.WarpsPerBlock * bytesPerWarpTrip / activeSms;
        return new KernelPrediction
        {
            Launch = r, Resources = res, Occupancy = occ, FullWaves = fullWaves, TailCtas = tail,
            DramBytes = dram, L2Bytes = l2, PrefetchOnlyBytes = prefetchOnly, InFlightBytesPerSm = inFlightPerSm,
            LittleGBps = inFlightPerSm * activeSms / g.DramLatencyNs,   // bytes per ns = GB/s
            DramUs = waves.Sum(w => w.W.Dram * w.Count), L2Us = waves.Sum(w => w.W.L2 * w.Count),
            SmFillUs = waves.Sum(w => w.W.Fill * w.Count), IssueUs = waves.Sum(w => w.W.Issue * w.Count),
            LatencyUs = waves.Sum(w => w.W.Latency * w.Count), TailUs = tailUs, Microseconds = total, Bound = longest.Bound,
            LastWaveCtas = lastWaveCtas, LastWaveUs = waves[^1].W.Max + tailUs,
        };
    }

    private readonly record struct Wave(double Dram, double L2, double Fill, double Issue, double Latency)
    {
        public double Max => Math.Max(Math.Max(Dram, L2), Math.Max(Math.Max(Fill, Issue), Latency));
        public TimeBound Bound =>
            Max == Latency ? TimeBound.Latency : Max == Dram ? TimeBound.Dram : Max == Issue ? TimeBound.Issue : Max == Fill ? TimeBound.SmFill : TimeBound.L2;
    }

    /// <summary>
    /// One warp's dependent chain on <paramref name="g"/>: its DRAM and L2 round trips at their latencies, its instructions
    /// at one warp's issue rate (docs/timing-model.md, section 2).
    /// </summary>
    public static double ChainUs(GpuSpec g, long dramTrips, long l2Trips, long instructions) =>
        (dramTrips * g.DramLatencyNs + l2Trips * g.L2LatencyNs) / 1000.0 + instructions / g.SingleWarpIpc / g.ClockHz * 1e6;

    /// <summary><see cref="ChainUs(GpuSpec, long, long, long)"/> of one warp's tail.</summary>
    public static double ChainUs(GpuSpec g, TailChain c) => ChainUs(g, c.DramRoundTrips, c.L2RoundTrips, c.Instructions);

    /// <summary>
    /// The longest tail of launch <paramref name="r"/> on <paramref name="g"/>: the longest of the warps' own tails
    /// (<see cref="LaunchRecord.TailChains"/>), or in a record built by hand without them the chain of the tail maxima.
    /// </summary>
    public static TailChain LongestTail(GpuSpec g, LaunchRecord r) =>
        r.TailChains.Count > 0 ? r.TailChains.MaxBy(c => ChainUs(g, c))
        : new TailChain(r.MaxWarpTailDramRoundTrips, r.MaxWarpTailL2RoundTrips, r.MaxWarpTailInstructions);

    private static int RoundUp(int v, int unit) => (v + unit - 1) / unit * unit;
}
