using System.Globalization;
using System.Text;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Performance;

/// <summary>
/// One stage of a persistent launch in <see cref="PersistentWhatIf"/>: the tiles of one of today's kernels. Its DRAM bytes,
/// the share of them it may fetch before its inputs are ready (weights, the KV cache of earlier steps), and the terms of
/// the work it does once they are (docs/timing-model.md, section 7).
/// </summary>
public sealed record PersistentStage
{
    public required string Kernel { get; init; }
    /// <summary>Today's grid of the kernel (it tells the launches of one kernel apart, e.g. the qkv GEMV from the o_proj).</summary>
    public string Grid { get; init; } = "";
    /// <summary>DRAM bytes the stage moves.</summary>
    public required long DramBytes { get; init; }
    /// <summary>Of <see cref="DramBytes"/>, those that may be fetched before the stage's inputs are ready.</summary>
    public required long AheadBytes { get; init; }
    /// <summary>The stage that must be done before <see cref="AheadBytes"/> may be fetched (its index), or -1: from the step's start.</summary>
    public int AheadAfter { get; init; } = -1;
    /// <summary>
    /// Of <see cref="DramBytes"/>, besides <see cref="AheadBytes"/>, those an earlier stage of the launch prefetched for this
    /// one (<c>prefetch.global.L2::evict_last</c> before its wait, found L2-resident here): they may stream once
    /// <see cref="EarlyAheadAfter"/> is done (the issuing stage's own rule), and the issuing stage does not wait for them.
    /// </summary>
    public long EarlyAheadBytes { get; init; }
    /// <summary>The stage that must be done before <see cref="EarlyAheadBytes"/> may be fetched, or -1: from the launch's start.</summary>
    public int EarlyAheadAfter { get; init; } = -1;
    /// <summary>The critical warp's chain after its inputs are ready, less its DRAM round trips: L2 round trips and its own instructions.</summary>
    public required double ChainFixedUs { get; init; }
    /// <summary>That chain's DRAM round trips: at the DRAM latency for the share of the bytes not fetched ahead, at the L2's for the rest.</summary>
    public required long ChainDramTrips { get; init; }
    /// <summary>
    /// The stage's head: its chain after ready before it can issue the first of its bytes not fetched ahead (a stream
    /// whose addresses depend on its inputs: the experts' ids; <c>LaunchRecord.MaxWarpHead*</c>, docs/timing-model.md
    /// section 2); 0 for a stage whose weights do not depend on its inputs.
    /// </summary>
    public double HeadUs { get; init; }
    /// <summary>Its DRAM bytes at the Little's-law bandwidth of its own loads (none fetched ahead).</summary>
    public required double LittleUs { get; init; }
    /// <summary>Its issue term: the warp instructions at the SMs' issue rate.</summary>
    public double IssueUs { get; init; }
    /// <summary>The larger of its SM fill and L2 terms: <see cref="TransferBytes"/> from the L2 into the SMs.</summary>
    public double TransferUs { get; init; }
    /// <summary>The bytes its loads move from the L2 into the SMs (DRAM and L2 bytes).</summary>
    public long TransferBytes { get; init; }
    /// <summary>
    /// Of <see cref="AheadBytes"/>, those its tiles load into the SMs (registers, or shared memory by cp.async) before their
    /// inputs are ready (the emulator's <c>PreWaitLoadBytes</c>): once fetched ahead they are on the SMs at ready, and
    /// their share of <see cref="TransferBytes"/> takes no time after it (<see cref="WorkUs"/>'s staged share).
    /// </summary>
    public long LoadedAheadBytes { get; init; }
    /// <summary>Bytes of the stage fetched in the shadow of the kernel before the launch (a programmatic launch's first stage), not in <see cref="DramBytes"/>.</summary>
    public long ShadowBytes { get; init; }
    /// <summary>The largest of its issue, SM fill and L2 terms (every byte through the L2).</summary>
    public double ThroughputUs => Math.Max(IssueUs, TransferUs);
    /// <summary>Warps today's kernel runs at once (the CTAs of its first wave × warps per CTA); 0: unknown, never rescaled.</summary>
    public long WarpsAtOnce { get; init; }
    /// <summary>Today's kernel's registers per thread and shared memory (static + dynamic) per CTA.</summary>
    public int RegistersPerThread { get; init; }
    public int SharedBytesPerCta { get; init; }

    /// <summary>
    /// The stage run by a persistent launch that holds <paramref name="residentWarps"/> warps on the whole GPU: when today's
    /// kernel runs more warps at once, the launch runs its tiles in ceil(warps / resident) rounds, each taking today's
    /// critical chain, and its own loads keep the fewer warps' bytes in flight (the Little's-law term scaled by the
    /// ratio); the issue, SM fill and L2 terms are totals and do not change (docs/timing-model.md, section 7).
    /// </summary>
    public PersistentStage AtResidentWarps(long residentWarps)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(residentWarps, 1);
        if (WarpsAtOnce <= residentWarps) return this;
        long rounds = (WarpsAtOnce + residentWarps - 1) / residentWarps;
        return this with
        {
            ChainFixedUs = ChainFixedUs * rounds, ChainDramTrips = ChainDramTrips * rounds,
            LittleUs = LittleUs * WarpsAtOnce / residentWarps,
        };
    }

    /// <summary>
    /// The work after the inputs are ready when <paramref name="keptShare"/> of the DRAM bytes were not fetched ahead, and
    /// <paramref name="stagedShare"/> of <see cref="TransferBytes"/> were moved into the SMs' shared memory before (their
    /// transfer then takes no time after ready).
    /// </summary>
    public double WorkUs(GpuSpec g, double keptShare, double stagedShare = 0) => Math.Max(
        Math.Max(ChainFixedUs + ChainDramTrips * (keptShare * g.DramLatencyNs + (1 - keptShare) * g.L2LatencyNs) / 1000.0, LittleUs * keptShare),
        Math.Max(IssueUs, TransferUs * (1 - Math.Clamp(stagedShare, 0, 1))));
}

/// <summary>
/// A what-if's change to the stages of one stage-ordered launch before they are composed (<see cref="PersistentWhatIf.ComposeStages"/>):
/// given each stage's kernel predicted alone and the stages as built, the stages to compose.
/// </summary>
public delegate IReadOnlyList<PersistentStage> StageRule(IReadOnlyList<KernelPrediction> alone, IReadOnlyList<PersistentStage> stages);

/// <summary>One stage as composed: when its inputs were ready, when it was done, what it fetched ahead, and the DRAM time left idle while the step waited for it.</summary>
public sealed record PersistentStageTiming(PersistentStage Stage, double ReadyUs, double DoneUs, long FetchedAheadBytes, double IdleUs, double IdleBudgetFullUs);

/// <summary>A step composed as one persistent launch (<see cref="PersistentWhatIf.Compose"/>).</summary>
public sealed record PersistentComposition
{
    public required GpuSpec Gpu { get; init; }
    public required long LookaheadBytes { get; init; }
    public required double ReleaseUs { get; init; }
    public required IReadOnlyList<PersistentStageTiming> Stages { get; init; }
    /// <summary>
    /// The DRAM time from the last stage's last byte issued to that stage done (its last latency and the chain after
    /// it), in no stage's <see cref="PersistentStageTiming.IdleUs"/>: what the kernel after the launch may prefetch in.
    /// </summary>
    public double EndIdleUs { get; init; }
    /// <summary>From the launch's start to the last stage done.</summary>
    public double LaunchUs => Stages.Count == 0 ? 0 : Stages[^1].DoneUs;
    public long DramBytes => Stages.Sum(s => s.Stage.DramBytes);
    /// <summary>DRAM time with nothing to issue (the same bytes at the achievable bandwidth leave the rest busy).</summary>
    public double IdleUs => Stages.Sum(s => s.IdleUs);
    public double IdleBudgetFullUs => Stages.Sum(s => s.IdleBudgetFullUs);
}

/// <summary>
/// What if today's decode step ran as one persistent launch (docs/timing-model.md, section 7; NOT BUILT): each kernel
/// becomes a stage of tiles, stages run in order, each starting a counter release after the one before is done, and one
/// DRAM stream serves them all. The stream issues bytes at the achievable bandwidth, each arriving one DRAM latency
/// later: first the running stage's, then, in stage order, bytes later stages may fetch ahead: the next stage to run up
/// to the L2's share for data kept between kernels (as a programmatic launch's prefetch), the stages beyond it while the
/// bytes fetched ahead for them fit in a lookahead budget (the persisting L2). A stage is done when its last byte has
/// arrived and its work after its inputs were ready (<see cref="PersistentStage.WorkUs"/>) has run. The composition
/// advances in steps of one nanosecond.
/// </summary>
public static class PersistentWhatIf
{
    /// <summary>The step's kernels as stages: see docs/timing-model.md, section 7, for the rules and their assumptions.</summary>
    public static IReadOnlyList<PersistentStage> StagesOf(StepPrediction p)
    {
        var g = p.Gpu;
        var alone = p.Launches.Select(l => KernelTimingModel.Predict(l.Launch, l.Resources, g)).ToList();
        var dram = alone.Select(a => a.DramBytes).ToArray();
        // bytes a kernel fetched ahead for a later one (prefetch.global.L2::evict_last) belong to the kernel that used them:
        // the lookahead fetches them for it; the first later kernel that found that many bytes resident in L2 used them
        var moved = new long[dram.Length];
        for (int i = 0; i < alone.Count; i++)
        {
            long persisting = Math.Min(p.Launches[i].Launch.PersistingSectors * 32, dram[i]);
            if (persisting == 0 || UserOf(alone, i, persisting) is not int j) continue;
            dram[i] -= persisting;
            moved[j] += persisting;
        }
        var stages = new List<PersistentStage>(alone.Count);
        int router = -1;
        for (int i = 0; i < alone.Count; i++)
        {
            var a = alone[i];
            var r = a.Launch;
            long bytes = dram[i] + moved[i];
            // expert weights are known once the layer's router is done; other kernels' pre-wait bytes (weights, the KV of
            // earlier steps) from the step's start. The experts' own pre-wait bytes are never their weights (those depend on
            // the router), only a later kernel's fetched ahead, which moved to it above: with no router launch before them
            // (the router is the attention block's stage) only what was fetched for them may come ahead
            bool experts = IsExperts(r.Kernel);
            if (r.Kernel.StartsWith("moe_router", StringComparison.Ordinal)) router = i;
            long ahead = experts ? (router >= 0 ? bytes : moved[i]) : Math.Min(r.PreWaitSectors * 32, dram[i]) + moved[i];
            stages.Add(Stage(g, a, bytes, Math.Min(ahead, bytes), experts ? router : -1));
        }
        return stages;
    }

    /// <summary>
    /// One launch <paramref name="a"/> (predicted alone) as a stage: <paramref name="dramBytes"/> of DRAM, of which
    /// <paramref name="aheadBytes"/> may be fetched before its inputs are ready, from the launch's start or once stage
    /// <paramref name="aheadAfter"/> is done (<paramref name="shadowBytes"/> more were fetched in the shadow of the kernel
    /// before); its work after ready from the critical warp's chain after its wait and the kernel's Little's-law, issue, SM
    /// fill and L2 terms; of the bytes fetched ahead, those its loads took into the SMs before the wait
    /// (<see cref="PersistentStage.LoadedAheadBytes"/>) need no transfer after ready (docs/timing-model.md, section 7).
    /// </summary>
    public static PersistentStage Stage(GpuSpec g, KernelPrediction a, long dramBytes, long aheadBytes, int aheadAfter, long shadowBytes = 0)
    {
        var r = a.Launch;
        long warps = Math.Max(1, r.Warps);
        long waves = a.FullWaves + (a.TailCtas > 0 ? 1 : 0);
        var (chainDram, chainL2, chainInstructions) = ChainAfterWait(g, r);
        return new PersistentStage
        {
            Kernel = r.Kernel, Grid = r.Grid.ToString(), DramBytes = dramBytes, AheadBytes = Math.Min(aheadBytes, dramBytes), AheadAfter = aheadAfter,
            ChainFixedUs = KernelTimingModel.ChainUs(g, 0, chainL2, chainInstructions),
            ChainDramTrips = chainDram,
            HeadUs = KernelTimingModel.ChainUs(g, r.MaxWarpHeadDramRoundTrips, r.MaxWarpHeadL2RoundTrips, r.MaxWarpHeadInstructions),
            LittleUs = (double)r.DramRoundTrips / warps * g.DramLatencyNs / 1000.0 * waves,
            IssueUs = a.IssueUs, TransferUs = Math.Max(a.SmFillUs, a.LoadedBytes / (g.L2BytesPerClock * g.ClockHz) * 1e6),
            TransferBytes = a.LoadedBytes,
            LoadedAheadBytes = Math.Min(r.PreWaitLoadBytes, Math.Min(aheadBytes, dramBytes) + shadowBytes), ShadowBytes = shadowBytes,
            WarpsAtOnce = Math.Min(a.Ctas, (long)a.Occupancy.BlocksPerSm * g.Sms) * a.Occupancy.WarpsPerBlock,
            RegistersPerThread = a.Resources.RegistersPerThread, SharedBytesPerCta = a.Resources.StaticSharedBytes + r.DynamicSharedBytes,
        };
    }

    /// <summary>
    /// The critical chain of launch <paramref name="r"/> after its wait: DRAM and L2 round trips and instructions. Without a
    /// tail mark, the largest of the warps' parts after their wait. With one (a ticket whose last CTA merges), the tail
    /// starts only once every warp has done its part before its mark, so the chain is the largest such part plus the
    /// longest tail (its own warp's chain, <see cref="LaunchRecord.TailChains"/>, or the maxima in a record built by hand):
    /// not the one warp that happened to take the last ticket in the emulator's schedule, which depends on the order the
    /// CTAs ran in (docs/timing-model.md, section 7).
    /// </summary>
    public static (long DramTrips, long L2Trips, long Instructions) ChainAfterWait(GpuSpec g, LaunchRecord r)
    {
        if (r.MaxWarpTailInstructions <= 0) return (r.MaxWarpPostWaitDramRoundTrips, r.MaxWarpPostWaitL2RoundTrips, r.MaxWarpPostWaitInstructions);
        var tail = KernelTimingModel.LongestTail(g, r);
        return (r.MaxWarpPostWaitPreTailDramRoundTrips + tail.DramRoundTrips, r.MaxWarpPostWaitPreTailL2RoundTrips + tail.L2RoundTrips,
            r.MaxWarpPostWaitPreTailInstructions + tail.Instructions);
    }

    /// <summary>
    /// The launches of one stage-ordered launch measured apart (<c>LaunchConfig.Stage</c>: one launch per stage, each
    /// predicted alone in <paramref name="alone"/>), composed back into the one launch they stand for: its stages in
    /// order, a counter release (two L2 round trips) between them, one DRAM stream (<see cref="Compose"/>, the persisting
    /// L2 as the lookahead). A stage's pre-wait bytes (its weights, the KV of earlier steps) may stream ahead once its
    /// CTAs can be resident: from the launch's start when it and every stage before it fit in one wave of the kernel's
    /// CTAs, otherwise once the last earlier stage whose tiles would not leave it room is done (one CTA per tile: a
    /// stage's CTAs start as earlier ones exit). <paramref name="overlapBytes"/>: of the first stage's pre-wait bytes,
    /// those fetched in the shadow of the kernel before the launch (programmatic launch), not streamed again.
    /// <paramref name="stageRule"/> (a what-if's, e.g. <see cref="AsLayerLaunches"/>): changes the stages before they are composed.
    /// </summary>
    public static PersistentComposition ComposeStages(GpuSpec g, IReadOnlyList<KernelPrediction> alone, long overlapBytes = 0,
        StageRule? stageRule = null)
    {
        long capacity = alone.Count == 0 ? 0 : (long)alone[0].Occupancy.BlocksPerSm * g.Sms;
        var stages = new List<PersistentStage>(alone.Count);
        for (int k = 0; k < alone.Count; k++)
        {
            var a = alone[k];
            long overlapped = k == 0 ? Math.Min(overlapBytes, a.DramBytes) : 0;
            long bytes = a.DramBytes - overlapped;
            long ahead = Math.Min(a.Launch.PreWaitSectors * 32, a.DramBytes) - overlapped;
            int after = -1;
            long tiles = 0;
            for (int j = k; j >= 0; j--)
            {
                tiles += alone[j].Ctas;
                if (tiles > capacity) { after = j < k ? j : k - 1; break; }
            }
            stages.Add(Stage(g, a, bytes, Math.Max(0, ahead), after, overlapped));
        }
        // bytes a stage prefetched with evict_last before its wait for a later stage of the launch (found L2-resident there)
        // are that stage's, fetched from when the issuing stage may fetch ahead: the issuing tiles do not wait for them
        for (int k = 0; k < stages.Count; k++)
        {
            long persisting = Math.Min(alone[k].Launch.PersistingSectors * 32, stages[k].AheadBytes);
            if (persisting == 0 || UserOf(alone, k, persisting) is not int j) continue;
            stages[k] = stages[k] with { DramBytes = stages[k].DramBytes - persisting, AheadBytes = stages[k].AheadBytes - persisting };
            stages[j] = stages[j] with { DramBytes = stages[j].DramBytes + persisting, EarlyAheadBytes = stages[j].EarlyAheadBytes + persisting,
                                         EarlyAheadAfter = stages[k].AheadAfter };
        }
        return Compose(g, stageRule is null ? stages : stageRule(alone, stages), g.L2PersistingBytes, ReleaseUs(g));
    }

    /// <summary>
    /// The launch that used the <paramref name="persistingBytes"/> launch <paramref name="issuer"/> fetched ahead with
    /// evict_last: the first later one that found at least 90% of that many bytes L2-resident; null: none did.
    /// </summary>
    static int? UserOf(IReadOnlyList<KernelPrediction> launches, int issuer, long persistingBytes)
    {
        for (int j = issuer + 1; j < launches.Count; j++)
            if (launches[j].Launch.L2ResidentSectors * 32 >= persistingBytes * 9 / 10) return j;
        return null;
    }

    /// <summary>A counter release between stages: two L2 round trips (the producer's release, the consumer's poll).</summary>
    public static double ReleaseUs(GpuSpec g) => 2 * g.L2LatencyNs / 1000;

    /// <summary>
    /// The occupancy of one persistent kernel that runs every stage: CTAs of <paramref name="threadsPerCta"/> threads with
    /// <paramref name="registersPerThread"/> registers and the largest shared memory per CTA of today's kernels (a CTA
    /// must hold any stage's tiles), by the occupancy rules of section 2.
    /// </summary>
    public static Occupancy KernelOccupancy(GpuSpec g, IReadOnlyList<PersistentStage> stages, int registersPerThread, int threadsPerCta = 128) =>
        KernelTimingModel.Occupancy(g, threadsPerCta, registersPerThread, LargestSharedBytes(stages));

    /// <summary>The most shared memory per CTA any stage's kernel uses today: what one kernel's CTA must hold.</summary>
    public static int LargestSharedBytes(IReadOnlyList<PersistentStage> stages) => stages.Count == 0 ? 0 : stages.Max(s => s.SharedBytesPerCta);

    /// <summary>
    /// The shared memory a kernel of <paramref name="occupancy"/> leaves free on the whole GPU: per SM, what its CTAs of the
    /// largest shared memory per CTA of the stages (allocation unit and reserved kilobyte included) do not take.
    /// </summary>
    public static long FreeSharedBytes(GpuSpec g, IReadOnlyList<PersistentStage> stages, Occupancy occupancy) =>
        Math.Max(0, g.SharedPerSmBytes - (long)occupancy.BlocksPerSm * KernelTimingModel.SharedFootprintBytes(g, LargestSharedBytes(stages))) * g.Sms;

    /// <summary>The shared memory <c>--what-if persistent</c> takes for staging a stage's bytes fetched ahead: half of every SM's.</summary>
    public static long StagingBytes(GpuSpec g) => (long)g.SharedPerSmBytes / 2 * g.Sms;

    static string LimitName(OccupancyLimit l) => l switch
    {
        OccupancyLimit.Warps => "warps",
        OccupancyLimit.Blocks => "blocks",
        OccupancyLimit.Registers => "registers",
        _ => "shared memory",
    };

    /// <summary>The stages as one kernel of that occupancy runs them (<see cref="PersistentStage.AtResidentWarps"/>).</summary>
    public static IReadOnlyList<PersistentStage> AtOccupancy(GpuSpec g, IReadOnlyList<PersistentStage> stages, Occupancy occupancy) =>
        stages.Select(s => s.AtResidentWarps((long)occupancy.WarpsPerSm * g.Sms)).ToList();

    /// <summary>Composes <paramref name="stages"/> as one persistent launch on <paramref name="g"/> (see the class).</summary>
    /// <remarks>
    /// <paramref name="sharedStagingBytes"/>: of the bytes fetched ahead for a stage, up to that many are taken to be
    /// staged in the SMs' shared memory before the stage is ready (cp.async into the CTAs that will run its tiles), so
    /// that share of its L2-to-SM transfer is off its work after ready (<see cref="PersistentStage.WorkUs"/>); 0: none. The
    /// bytes a stage's own loads took into the SMs before its wait (<see cref="PersistentStage.LoadedAheadBytes"/>) count
    /// so whatever the budget.
    /// </remarks>
    public static PersistentComposition Compose(GpuSpec g, IReadOnlyList<PersistentStage> stages, long lookaheadBytes, double releaseUs,
        long sharedStagingBytes = 0)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(lookaheadBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(sharedStagingBytes);
        ArgumentOutOfRangeException.ThrowIfNegative(releaseUs);
        for (int s = 0; s < stages.Count; s++)
        {
            if (stages[s].AheadAfter >= s || stages[s].EarlyAheadAfter >= s)
                throw new ArgumentException($"stage {s} ({stages[s].Kernel}) may fetch ahead only after an earlier stage, not stage {Math.Max(stages[s].AheadAfter, stages[s].EarlyAheadAfter)}");
            if (stages[s].EarlyAheadBytes < 0 || stages[s].EarlyAheadBytes + Math.Min(stages[s].AheadBytes, stages[s].DramBytes) > stages[s].DramBytes)
                throw new ArgumentException($"stage {s} ({stages[s].Kernel}): the bytes prefetched for it by an earlier stage ({stages[s].EarlyAheadBytes}) and its own fetched ahead must be within its {stages[s].DramBytes} DRAM bytes");
        }
        int n = stages.Count;
        double perNs = g.DramAchievableGBps;   // GB/s = bytes per ns
        var left = stages.Select(s => (double)s.DramBytes).ToArray();                            // not yet issued
        var aheadLeft = stages.Select(s => (double)Math.Min(s.AheadBytes, s.DramBytes)).ToArray();
        var earlyLeft = stages.Select(s => (double)s.EarlyAheadBytes).ToArray();           // prefetched for it by an earlier stage
        var held = new double[n];                     // issued before the stage's inputs were ready, held in L2 until it is done
        var fetchedAhead = new double[n];
        var lastIssueNs = Enumerable.Repeat(double.NaN, n).ToArray();
        var ready = new double[n];
        var done = Enumerable.Repeat(double.PositiveInfinity, n).ToArray();
        var idle = new double[n];
        var idleFull = new double[n];
        var readySeen = new bool[n];
        double heldTotal = 0, releaseNs = releaseUs * 1000, nextCap = g.L2Bytes * g.L2ResidencyFraction;
        int cur = 0, released = 0, firstAhead = 1;
        long t = 0;
        for (; cur < n; t++)
        {
            while (released < cur && done[released] <= t) heldTotal -= held[released++];
            bool running = t >= ready[cur];
            if (running && !readySeen[cur]) { readySeen[cur] = true; fetchedAhead[cur] = stages[cur].DramBytes - left[cur]; }
            double budget = perNs;
            if (running && left[cur] > 0 && t >= ready[cur] + stages[cur].HeadUs * 1000)   // its own bytes after its head
            {
                double x = Math.Min(budget, left[cur]);
                left[cur] -= x; aheadLeft[cur] = Math.Min(aheadLeft[cur], left[cur]); earlyLeft[cur] = Math.Min(earlyLeft[cur], left[cur]);
                budget -= x; lastIssueNs[cur] = t + 1;
            }
            // the next stage to run may hold up to the L2's share for data kept between kernels (as a programmatic launch's
            // prefetch may: normal lines, used within microseconds); the stages beyond it share the lookahead (evict_last lines)
            int next = running ? cur + 1 : cur;
            double farHeld = heldTotal;
            for (int s = released; s <= next && s < n; s++) farHeld -= held[s];
            bool full = false;
            while (firstAhead < n && aheadLeft[firstAhead] <= 0 && earlyLeft[firstAhead] <= 0) firstAhead++;
            for (int s = Math.Max(next, running ? firstAhead : cur); s < n && budget > 0; s++)
            {
                int after = stages[s].AheadAfter, earlyAfter = stages[s].EarlyAheadAfter;
                double early = earlyLeft[s] > 0 && (earlyAfter < 0 || done[earlyAfter] <= t) ? earlyLeft[s] : 0;
                double own = aheadLeft[s] > 0 && (after < 0 || done[after] <= t) ? aheadLeft[s] : 0;
                if (early + own <= 0) continue;
                double room = s == next ? nextCap - held[s] : lookaheadBytes - farHeld;
                if (room <= 0) { full = true; if (s == next) continue; break; }
                double x = Math.Min(Math.Min(budget, early + own), room);
                double fromEarly = Math.Min(x, early);
                earlyLeft[s] -= fromEarly; aheadLeft[s] -= x - fromEarly;
                left[s] -= x; held[s] += x; heldTotal += x; budget -= x; lastIssueNs[s] = t + 1;
                if (s != next) farHeld += x;
            }
            if (budget > 0)
            {
                // the DRAM waits on the stage that runs, or on the one before it while that finishes and releases
                int on = running || cur == 0 ? cur : cur - 1;
                idle[on] += budget / perNs;
                if (full) idleFull[on] += budget / perNs;
            }
            while (cur < n && t + 1 >= ready[cur] && left[cur] <= 0)
            {
                if (!readySeen[cur]) { readySeen[cur] = true; fetchedAhead[cur] = stages[cur].DramBytes - left[cur]; }
                var st = stages[cur];
                double kept = st.DramBytes > 0 ? 1 - fetchedAhead[cur] / st.DramBytes : 1;
                double arrived = double.IsNaN(lastIssueNs[cur]) ? 0 : lastIssueNs[cur] + g.DramLatencyNs;
                // on the SMs at ready: of the bytes fetched ahead (here or in the kernel before's shadow), those the tiles loaded
                // before their wait, and up to the staging budget more
                double staged = st.TransferBytes > 0
                    ? Math.Min(fetchedAhead[cur] + st.ShadowBytes, (double)st.LoadedAheadBytes + sharedStagingBytes) / st.TransferBytes : 0;
                done[cur] = Math.Max(ready[cur] + st.WorkUs(g, kept, staged) * 1000, arrived);
                if (cur + 1 < n) ready[cur + 1] = done[cur] + releaseNs;
                cur++;
            }
        }
        return new PersistentComposition
        {
            Gpu = g, LookaheadBytes = lookaheadBytes, ReleaseUs = releaseUs,
            // the last stage's bytes are all issued at t: the DRAM has nothing left to issue until it is done
            EndIdleUs = n > 0 ? Math.Max(0, done[n - 1] - t) / 1000 : 0,
            Stages = Enumerable.Range(0, n).Select(s => new PersistentStageTiming(stages[s], ready[s] / 1000, done[s] / 1000,
                (long)Math.Round(fetchedAhead[s]), idle[s] / 1000, idleFull[s] / 1000)).ToList(),
        };
    }

    /// <summary>A launch of expert weights (gate_up, down, or both in one launch): their addresses come from the router.</summary>
    static bool IsExperts(string kernel) => kernel.StartsWith("moe_gate_up", StringComparison.Ordinal) || kernel.StartsWith("moe_down", StringComparison.Ordinal)
        || kernel.StartsWith("moe_experts", StringComparison.Ordinal);

    /// <summary>
    /// A what-if on <paramref name="stages"/> (<see cref="StagesOf"/> of <paramref name="p"/>, one stage per launch): early
    /// routing, not built. The router's logits are linear in the attention's output up to one positive factor per token:
    /// <c>W_r (g * h) / rms(h)</c> with <c>h = x + W_o a</c> is <c>(W_r (g * x) + (W_r diag(g) W_o) a) / rms(h)</c>, and the
    /// top-k does not depend on that factor. So a tile set beside o_proj could take the experts' ids from the attention's
    /// output <c>a</c> through the folded matrix <c>W_r diag(g) W_o</c> (<paramref name="foldedRouterBytes"/> more per MoE layer,
    /// fetched ahead like any weight) and prefetch the experts' weights into L2 before the router is done: a prefetch hint only,
    /// whose ids may differ from the router's at a near tie (then those bytes are wasted, the results unchanged). Taken here
    /// as: every experts stage's bytes may be fetched ahead once the o_proj stage after the layer's attention is done
    /// (the folded GEMV and its top-k as long as o_proj), and that o_proj stage moves the folded matrix too. The attention
    /// is the layer's last <c>attn_decode*</c> launch or stage 1 of <c>persistent_attn_block</c>, the experts its
    /// <c>moe_gate_up*</c>, <c>moe_down*</c> or <c>moe_experts*</c> launches after the stage after it; a layer without both is
    /// left as it is.
    /// </summary>
    public static IReadOnlyList<PersistentStage> WithEarlyRouting(StepPrediction p, IReadOnlyList<PersistentStage> stages, long foldedRouterBytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(foldedRouterBytes);
        if (stages.Count != p.Launches.Count) throw new ArgumentException($"{stages.Count} stages for {p.Launches.Count} launches: give StagesOf(p)");
        var list = stages.ToList();
        int attention = -1, folded = -1;
        bool afterExperts = false;
        for (int i = 0; i < list.Count; i++)
        {
            var r = p.Launches[i].Launch;
            bool experts = IsExperts(r.Kernel);
            // the layer's attention ends with its experts: what follows them belongs to the next layer
            if (afterExperts && !experts) attention = -1;
            afterExperts = experts;
            if (r.Kernel.StartsWith("attn_decode", StringComparison.Ordinal) || (r.Kernel == "persistent_attn_block" && r.Stage is { Index: 1 }))
                attention = i;
            else if (experts && attention >= 0 && attention + 1 < i)
            {
                int oProj = attention + 1;
                list[i] = AheadFrom(list[i], oProj);
                if (folded == oProj) continue;   // the layer's second experts kernel (gate_up, then down): one folded router
                folded = oProj;
                list[oProj] = WithFoldedRouter(list[oProj], foldedRouterBytes);
            }
        }
        return list;
    }

    /// <summary>Early routing's experts stage: all its bytes may be fetched ahead once stage <paramref name="after"/> is done.</summary>
    static PersistentStage AheadFrom(PersistentStage experts, int after) =>
        experts with { AheadBytes = experts.DramBytes - experts.EarlyAheadBytes, AheadAfter = after };

    /// <summary>Early routing's o_proj stage: it also moves the folded router (fetched ahead like its weights, through the L2 into the SMs).</summary>
    static PersistentStage WithFoldedRouter(PersistentStage oProj, long foldedRouterBytes)
    {
        double transferUs = oProj.TransferBytes > 0 ? oProj.TransferUs * (oProj.TransferBytes + foldedRouterBytes) / oProj.TransferBytes : oProj.TransferUs;
        return oProj with
        {
            DramBytes = oProj.DramBytes + foldedRouterBytes, AheadBytes = oProj.AheadBytes + foldedRouterBytes,
            TransferBytes = oProj.TransferBytes + foldedRouterBytes, TransferUs = transferUs,
        };
    }

    /// <summary>The attention block's stages (qkv, attention, o_proj, router) and the experts after them as one launch.</summary>
    const string BlockKernel = "persistent_attn_block";

    /// <summary>
    /// A what-if on the decode step <paramref name="p"/>, not built: one launch per MoE layer. Each attention block launch
    /// with the router as its fourth stage (<c>persistent_attn_block</c>, stages measured apart) and the experts launch right
    /// after it (<c>moe_experts*</c>) become one stage-ordered launch of five stages, predicted as the block is today
    /// (<see cref="ComposeStages"/>: a counter release between stages, the persisting L2 as the lookahead, each stage at its
    /// own kernel's occupancy), with programmatic launches between the layers as today. With
    /// <paramref name="foldedRouterBytes"/> &gt; 0, early routing too (<see cref="WithEarlyRouting"/>): the experts stage's
    /// bytes may be fetched ahead once the o_proj stage is done, which moves the folded router. Other launches are kept.
    /// </summary>
    public static StepPrediction AsLayerLaunches(StepPrediction p, long foldedRouterBytes = 0) => MergeLayers(p, foldedRouterBytes, acrossLayers: false);

    /// <summary>
    /// A what-if on the decode step <paramref name="p"/>, not built: the MoE layers as ONE stage-ordered launch, the
    /// layers of <see cref="AsLayerLaunches"/> run back to back in it (5 stages per layer: the block's 4 and the experts),
    /// one CTA per tile taking tiles in ticket order as the built block does, so no resident CTA loops over tiles (the
    /// register cost of such a loop, docs/kernels.md "Persistent launches", does not arise). Predicted as the block is
    /// (<see cref="ComposeStages"/>): a counter release between stages, a stage's tiles resident (and fetching ahead) once
    /// the earlier tiles that fill the GPU are done, the persisting L2 as the lookahead. The launches before and after the
    /// layers (embedding, final norm, lm_head, sampling) and any layer kept apart by an operation between its launches
    /// stay as they are. With <paramref name="foldedRouterBytes"/> &gt; 0, early routing in every layer. With
    /// <paramref name="earlyRoutingMeasured"/>, the step was measured with early routing built (its x and early tiles and the
    /// folded router already in the block's stages, the router tiles prefetching nothing): early routing in every layer at
    /// that measured cost, no bytes added.
    /// </summary>
    public static StepPrediction AsStepLaunch(StepPrediction p, long foldedRouterBytes = 0, bool earlyRoutingMeasured = false) =>
        MergeLayers(p, foldedRouterBytes, acrossLayers: true, earlyRoutingMeasured);

    static StepPrediction MergeLayers(StepPrediction p, long foldedRouterBytes, bool acrossLayers, bool earlyRoutingMeasured = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(foldedRouterBytes);
        if (earlyRoutingMeasured && foldedRouterBytes > 0)
            throw new ArgumentException("early routing measured in the step already moves the folded router: give no foldedRouterBytes too", nameof(foldedRouterBytes));
        var launches = p.Launches.Select(l => (l.Launch, l.Resources)).ToList();
        var between = p.Operations.Select(o => o.LaunchesBefore).ToHashSet();
        // the layers that may merge: the block's 4 stages with the experts launch right after them, no operation between
        var layerStarts = new List<int>();
        for (int i = 0; i + 4 < launches.Count; i++)
        {
            bool block = Enumerable.Range(0, 4).All(k => launches[i + k].Launch.Kernel == BlockKernel && launches[i + k].Launch.Stage == new LaunchStage(k, 4));
            if (!block || !launches[i + 4].Launch.Kernel.StartsWith("moe_experts", StringComparison.Ordinal) || between.Contains(i + 4)) continue;
            layerStarts.Add(i);
            i += 4;
        }
        // runs of layers that become one launch: each layer alone, or (across layers) layers back to back with no operation
        // between the experts of one and the block of the next
        var runs = new List<List<int>>();
        foreach (int start in layerStarts)
        {
            if (acrossLayers && runs.Count > 0 && runs[^1][^1] + 5 == start && !between.Contains(start)) runs[^1].Add(start);
            else runs.Add([start]);
        }
        foreach (var run in runs)
        {
            int count = 5 * run.Count;
            for (int l = 0; l < run.Count; l++)
                for (int k = 0; k < 5; k++)
                {
                    var (r, res) = launches[run[l] + k];
                    // the stage records of one launch share its kernel's name (StepPredictor checks it); the model does not use names
                    launches[run[l] + k] = (r with { Kernel = BlockKernel, Stage = new LaunchStage(5 * l + k, count) }, res);
                }
        }
        StageRule? rule = null;
        if (foldedRouterBytes > 0 || earlyRoutingMeasured)
            rule = (alone, stages) =>
            {
                if (stages.Count % 5 != 0 || alone[0].Kernel != BlockKernel) return stages;
                var list = stages.ToList();
                for (int l = 0; l < list.Count; l += 5)
                {
                    list[l + 4] = AheadFrom(list[l + 4], l + 2);
                    list[l + 2] = WithFoldedRouter(list[l + 2], foldedRouterBytes);
                }
                return list;
            };
        return p with { Launches = StepPredictor.PredictLaunches(p.Gpu, launches, p.Operations, rule) };
    }

    /// <summary>
    /// `profile --what-if persistent`: the decode step <paramref name="p"/> composed as one persistent launch with the
    /// GPU's persisting L2 as the lookahead and two L2 round trips per counter release; per kernel the stages' time from
    /// ready to done, the share of their bytes fetched ahead and the DRAM time left idle, then the step against the
    /// multi-kernel prediction and the roofline. Labelled what-if: no such kernel is built.
    /// </summary>
    /// With <paramref name="earlyRoutingMeasured"/> (the step measured with early routing built, its router tiles prefetching
    /// nothing), the early-routing lines take the stages as measured and add no folded router bytes.
    public static string Report(StepPrediction p, long minimumBytes, long foldedRouterBytes = 0, bool earlyRoutingMeasured = false)
    {
        bool earlyLines = foldedRouterBytes > 0 || earlyRoutingMeasured;
        long addedBytes = earlyRoutingMeasured ? 0 : foldedRouterBytes;
        var inv = CultureInfo.InvariantCulture;
        var g = p.Gpu;
        double release = ReleaseUs(g);
        var stages = StagesOf(p);
        var c = Compose(g, stages, g.L2PersistingBytes, release);
        // the step around the launch: one graph node, the host copies and the wake-up, as for the multi-kernel step
        double stepUs = c.LaunchUs + g.GraphNodeGapUs + p.CopyUs + p.SyncUs;
        double tokS = p.Tokens / stepUs * 1e6;
        double roofTokS = p.Tokens / (minimumBytes / g.DramPeakGBps / 1000.0) * 1e6;
        // a composition's step (the launch, one graph node, the host copies, the wake-up) as a share of the roofline
        double Percent(IReadOnlyList<PersistentStage> st, long lookahead, long staging = 0) =>
            100 * p.Tokens / (Compose(g, st, lookahead, release, staging).LaunchUs + g.GraphNodeGapUs + p.CopyUs + p.SyncUs) * 1e6 / roofTokS;
        var sb = new StringBuilder();
        sb.Append(inv, $"WHAT-IF, NOT BUILT, PREDICTED by the timing model: the {p.Name} step's {p.Launches.Count} kernels as the stages of one persistent launch on {g.Name} (docs/timing-model.md, section 7): ");
        sb.Append(inv, $"lookahead {ByteSize.Format(c.LookaheadBytes)} (l2PersistingBytes), counter release {release:F2} us (two L2 round trips){StepPredictor.AssumedText(g)}\n");
        sb.Append(inv, $"  {"kernel",-26}{"grid",8}{"stages",8}{"ready->done us",16}{"DRAM",11}{"ahead",8}{"DRAM idle us",14}{"budget full",13}\n");
        foreach (var grp in c.Stages.GroupBy(s => (s.Stage.Kernel, s.Stage.Grid)))
        {
            int count = grp.Count();
            long bytes = grp.Sum(s => s.Stage.DramBytes);
            double aheadShare = bytes > 0 ? (double)grp.Sum(s => s.FetchedAheadBytes) / bytes : 0;
            sb.Append(inv, $"  {grp.Key.Kernel,-26}{grp.Key.Grid,8}{count,8}{grp.Sum(s => s.DoneUs - s.ReadyUs),16:F1}{ByteSize.Format(bytes),11}{100 * aheadShare,7:F0}%{grp.Sum(s => s.IdleUs),14:F1}{grp.Sum(s => s.IdleBudgetFullUs),13:F1}\n");
        }
        double streamUs = c.DramBytes / g.DramAchievableGBps / 1000;
        sb.Append(inv, $"  launch {c.LaunchUs:F1} us: its {ByteSize.Format(c.DramBytes)} at the achievable {g.DramAchievableGBps:F0} GB/s take {streamUs:F1} us, the DRAM idles {c.IdleUs:F1} us ");
        sb.Append(inv, $"({c.IdleBudgetFullUs:F1} us of it with the lookahead full: the last line says whether a larger one helps); {c.Stages.Count - 1} releases x {release:F2} us on the stages' chain\n");
        sb.Append(inv, $"  what-if step: launch {c.LaunchUs:F1} us + 1 graph node {g.GraphNodeGapUs} us + host copies {p.CopyUs:F1} us + sync {p.SyncUs} us = {stepUs:F1} us: {tokS:F0} tok/s, ");
        sb.Append(inv, $"{100 * tokS / roofTokS:F1}% of the roofline (the multi-kernel step as predicted: {p.TokensPerSecond:F0} tok/s, {100 * p.TokensPerSecond / roofTokS:F1}%)\n");
        // how much the lookahead matters: the same stages with none (only the next stage fetches ahead, as a programmatic
        // launch may: close to the multi-kernel step), half, twice and four times the budget
        sb.Append(inv, $"  what-if by lookahead:");
        foreach (long bytes in new[] { 0, g.L2PersistingBytes / 2, g.L2PersistingBytes, g.L2PersistingBytes * 2, g.L2PersistingBytes * 4 })
            sb.Append(inv, $" {ByteSize.Format(bytes)} {Percent(stages, bytes):F1}%");
        sb.Append(" of the roofline\n");
        // the weights fetched ahead for a stage staged in shared memory (half of every SM's, the other half for the tiles
        // that run), so their L2-to-SM transfer happens before the stage is ready
        long staging = StagingBytes(g);
        sb.Append(inv, $"  what-if with each stage's bytes fetched ahead staged in shared memory (up to {ByteSize.Format(staging)}: half of every SM's) before it is ready: ");
        sb.Append(inv, $"{Percent(stages, g.L2PersistingBytes, staging):F1}% of the roofline\n");
        // early routing (WithEarlyRouting): the experts' weights fetched ahead from o_proj's done, by the ids a folded router
        // takes from the attention's output
        if (earlyLines)
        {
            var early = WithEarlyRouting(p, stages, addedBytes);
            if (earlyRoutingMeasured) sb.Append("  what-if with early routing as built and measured in the block's stages (its tiles and the folded router's bytes there; ");
            else sb.Append(inv, $"  what-if with early routing (the experts' ids from the attention's output through the router folded with the norm weight and o_proj, {ByteSize.Format(foldedRouterBytes)} more per MoE layer; ");
            sb.Append(inv, $"their weights fetched ahead from o_proj's done), by lookahead:");
            foreach (long bytes in new[] { 0, g.L2PersistingBytes / 2, g.L2PersistingBytes, g.L2PersistingBytes * 2 })
                sb.Append(inv, $" {ByteSize.Format(bytes)} {Percent(early, bytes):F1}%");
            sb.Append(" of the roofline\n");
        }
        // a merged step's line when it has fewer graph nodes than `than`: its nodes, time and share of the roofline, and the
        // same with early routing
        StepPrediction MergedLine(string what, Func<bool, StepPrediction> merge, int than)
        {
            var merged = merge(false);
            if (merged.GraphNodes >= than) return merged;
            double Roof(StepPrediction q) => 100 * q.TokensPerSecond / roofTokS;
            sb.Append(inv, $"  what-if with {what}: {merged.GraphNodes} graph nodes, step {merged.TotalUs:F1} us, {Roof(merged):F1}% of the roofline");
            if (earlyLines)
            {
                var early = merge(true);
                sb.Append(inv, $"; with early routing too: {early.TotalUs:F1} us, {Roof(early):F1}%");
            }
            sb.Append('\n');
            return merged;
        }
        // the merged step with early routing in every merged layer or not (the folded router's bytes added unless measured)
        StepPrediction Merge(bool early, bool acrossLayers) =>
            MergeLayers(p, early ? addedBytes : 0, acrossLayers, early && earlyRoutingMeasured);
        // one launch per MoE layer (AsLayerLaunches): the block and the experts as one stage-ordered launch, the step's other
        // boundaries as today; then the MoE layers as one stage-ordered launch (AsStepLaunch): one CTA per tile, as the
        // built block, for the whole step
        var layer = MergedLine("one launch per MoE layer (the experts as the attention block's fifth stage, at today's tiles and occupancy; programmatic launches between the layers)",
            early => Merge(early, acrossLayers: false), p.GraphNodes);
        MergedLine("the MoE layers as one stage-ordered launch (one CTA per tile in ticket order, as the built block; 5 stages per layer)",
            early => Merge(early, acrossLayers: true), layer.GraphNodes);
        // the lines above give every stage today's kernel's occupancy; one kernel has one block size, one register count and
        // one shared memory size for all of them: the same composition with the stages rescaled to what such a kernel holds
        if (stages.Count > 0 && stages.All(s => s.WarpsAtOnce > 0))
        {
            var widest = stages.MaxBy(s => s.RegistersPerThread)!;
            sb.Append(inv, $"  what-if as one kernel: every stage at one block size and register count, with {ByteSize.Format(LargestSharedBytes(stages))} of shared memory per CTA (the most any kernel uses); ");
            sb.Append(inv, $"a stage that runs more warps today than the kernel holds takes its tiles in rounds, each at today's chain (lookahead {ByteSize.Format(g.L2PersistingBytes)})\n");
            sb.Append(inv, $"  (staged: with each stage's bytes fetched ahead staged in the shared memory its CTAs leave free, up to the size given)\n");
            sb.Append(inv, $"  {"threads",9}{"regs",6}{"CTAs/SM",9}{"warps/SM",10}  {"limit",-14}{"% of roofline",14}{"staged",18}  stages that use more registers today\n");
            var budgets = new[] { 64, 96, 128, widest.RegistersPerThread }.Where(r => r <= g.MaxRegistersPerThread).Distinct().Order();
            foreach (int threads in new[] { 128, 256 })
                foreach (int regs in budgets)
                {
                    Occupancy occ;
                    try { occ = KernelOccupancy(g, stages, regs, threads); }
                    catch (ArgumentException) { sb.Append(inv, $"  {threads,9}{regs,6}  does not fit on an SM\n"); continue; }
                    var at = AtOccupancy(g, stages, occ);
                    long free = FreeSharedBytes(g, stages, occ);
                    var over = stages.Where(s => s.RegistersPerThread > regs).Select(s => s.Kernel).Distinct();
                    string staged = string.Create(inv, $"{Percent(at, g.L2PersistingBytes, free):F1}% ({ByteSize.Format(free)})");
                    sb.Append(inv, $"  {threads,9}{regs,6}{occ.BlocksPerSm,9}{occ.WarpsPerSm,10}  {LimitName(occ.Limit),-14}{Percent(at, g.L2PersistingBytes),13:F1}%{staged,18}  {string.Join(", ", over)}\n");
                }
        }
        return sb.ToString();
    }
}
