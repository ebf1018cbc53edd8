using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Performance;

/// <summary>
/// The persistent-launch what-if (docs/timing-model.md, section 7) on hand-computed cases, on
/// <see cref="TimingModelTests.Toy"/>: 800 GB/s achievable (800 bytes issued per nanosecond), DRAM latency 500 ns, L2
/// latency 200 ns. Byte counts are multiples of 800, so the one-nanosecond steps of the composition land exactly on
/// every event: times are compared within 1e-9 us (double arithmetic on whole nanoseconds).
/// </summary>
public class PersistentWhatIfTests
{
    static GpuSpec Toy => TimingModelTests.Toy;
    const double Tol = 1e-9;

    static PersistentStage Stage(long dramBytes, long aheadBytes = 0, int aheadAfter = -1, double workUs = 0, string kernel = "k") => new()
    {
        Kernel = kernel, DramBytes = dramBytes, AheadBytes = aheadBytes, AheadAfter = aheadAfter,
        ChainFixedUs = workUs, ChainDramTrips = 0, LittleUs = 0,
    };

    /// <summary>
    /// Nothing fetched ahead, release 0.2 us: stage 0 issues 80,000 bytes in 100 ns, its last arrives at 600 ns; stage 1
    /// is ready at 800 ns, issues 160,000 bytes in 200 ns, done at 1,000 + 500 = 1,500 ns. The DRAM has nothing to
    /// issue from 100 to 800 ns: 0.7 us idle, on stage 0 (its last bytes in flight, then the release). After stage 1's
    /// last byte is issued (1,000 ns) the DRAM has nothing to issue until it is done: 0.5 us at the launch's end (0.7 when its work,
    /// 0.9 us from ready, ends at 1,700 ns), in which a kernel after the launch may prefetch.
    /// </summary>
    [Test]
    public void NothingAhead_StagesRunOneAfterAnother_EachPayingTheLatencyAndTheRelease()
    {
        var c = PersistentWhatIf.Compose(Toy, [Stage(80_000), Stage(160_000)], lookaheadBytes: 1 << 20, releaseUs: 0.2);
        Assert.That(c.Stages[0].DoneUs, Is.EqualTo(0.6).Within(Tol));
        Assert.That(c.Stages[1].ReadyUs, Is.EqualTo(0.8).Within(Tol));
        Assert.That(c.LaunchUs, Is.EqualTo(1.5).Within(Tol));
        Assert.That((c.Stages[0].IdleUs, c.Stages[1].IdleUs, c.IdleBudgetFullUs), Is.EqualTo((0.7, 0.0, 0.0)).Within(Tol));
        Assert.That(c.Stages[1].FetchedAheadBytes, Is.Zero);
        Assert.That(c.EndIdleUs, Is.EqualTo(0.5).Within(Tol), "the last bytes' latency");
        var work = PersistentWhatIf.Compose(Toy, [Stage(80_000), Stage(160_000, workUs: 0.9)], lookaheadBytes: 1 << 20, releaseUs: 0.2);
        Assert.That((work.LaunchUs, work.EndIdleUs), Is.EqualTo((1.7, 0.7)).Within(Tol), "ready at 0.8, 0.9 us of work: done at 1.7 us, 0.7 after the last issue");
    }

    /// <summary>
    /// A head (the experts' ids, read after ready) delays a stage's own stream: the test above with a 0.3 us head on stage
    /// 1 issues its 160,000 bytes from 1,100 ns, done at 1,300 + 500 = 1,800 ns; the DRAM idles 0.3 us more, on stage 1.
    /// Bytes fetched ahead need no head.
    /// </summary>
    [Test]
    public void AHead_DelaysTheStagesOwnStream()
    {
        var c = PersistentWhatIf.Compose(Toy, [Stage(80_000), Stage(160_000) with { HeadUs = 0.3 }], lookaheadBytes: 1 << 20, releaseUs: 0.2);
        Assert.That(c.Stages[1].ReadyUs, Is.EqualTo(0.8).Within(Tol));
        Assert.That(c.LaunchUs, Is.EqualTo(1.8).Within(Tol));
        Assert.That((c.Stages[0].IdleUs, c.Stages[1].IdleUs), Is.EqualTo((0.7, 0.3)).Within(Tol));
        var ahead = PersistentWhatIf.Compose(Toy, [Stage(80_000), Stage(160_000, aheadBytes: 160_000) with { HeadUs = 0.3 }], lookaheadBytes: 1 << 20, releaseUs: 0.2);
        Assert.That(ahead.LaunchUs, Is.EqualTo(0.8).Within(Tol), "all of it fetched ahead: the head delays nothing");
    }

    /// <summary>
    /// Stage 1's bytes may all come ahead: they stream right after stage 0's (100 to 300 ns) and have arrived by 800 ns,
    /// when it is ready; with no work of its own it is done then: 0.8 us instead of 1.5.
    /// </summary>
    [Test]
    public void BytesAhead_StreamBehindTheStageBefore()
    {
        var c = PersistentWhatIf.Compose(Toy, [Stage(80_000), Stage(160_000, aheadBytes: 160_000)], lookaheadBytes: 1 << 20, releaseUs: 0.2);
        Assert.That(c.Stages[1].FetchedAheadBytes, Is.EqualTo(160_000));
        Assert.That(c.LaunchUs, Is.EqualTo(0.8).Within(Tol));
        Assert.That(c.IdleUs, Is.EqualTo(0.5).Within(Tol), "300 to 800 ns: everything issued, stage 1 not ready");
    }

    /// <summary>
    /// The lookahead caps the bytes held for stages beyond the next one. Stage 0 issues 80,000 bytes (done at 600 ns);
    /// stage 1 has no bytes and 0.1 us of work (ready at 600, done at 700 ns); stage 2's 160,000 bytes may all come
    /// ahead. With a 40,000-byte lookahead, 50 ns of them go while stage 2 is two stages on (100 to 150 ns), then the
    /// budget is full until stage 1 runs at 600 ns (450 ns idle, on stage 0); stage 2 is then the next stage, held
    /// to the L2's share (524,288 bytes) instead: its other 120,000 bytes take 600 to 750 ns (80,000 of them before it is
    /// ready at 700 ns) and arrive at 1,250 ns. With a lookahead of 1 MiB they stream at once (100 to 300 ns): done at
    /// 800 ns.
    /// </summary>
    [Test]
    public void TheLookahead_CapsTheBytesHeldForStagesBeyondTheNext()
    {
        PersistentComposition Run(long lookahead) => PersistentWhatIf.Compose(Toy,
            [Stage(80_000), Stage(0, workUs: 0.1), Stage(160_000, aheadBytes: 160_000)], lookahead, releaseUs: 0);
        var small = Run(40_000);
        Assert.That(small.Stages[2].ReadyUs, Is.EqualTo(0.7).Within(Tol));
        Assert.That(small.Stages[2].FetchedAheadBytes, Is.EqualTo(120_000));
        Assert.That(small.LaunchUs, Is.EqualTo(1.25).Within(Tol));
        Assert.That((small.Stages[0].IdleUs, small.IdleUs, small.IdleBudgetFullUs), Is.EqualTo((0.45, 0.45, 0.45)).Within(Tol));
        var large = Run(1 << 20);
        Assert.That(large.Stages[2].FetchedAheadBytes, Is.EqualTo(160_000));
        Assert.That(large.LaunchUs, Is.EqualTo(0.8).Within(Tol));
    }

    /// <summary>
    /// The next stage's bytes ahead are held to the L2's share for data kept between kernels, whatever the lookahead: on
    /// a toy GPU with 1,280,000 bytes of L2 that is 640,000 bytes. Stage 0 is done at 600 ns; stage 1 (800,000 bytes, all
    /// ahead) is ready after a 1 us release, at 1,600 ns. With no lookahead at all it still fetches 640,000 bytes ahead
    /// (100 to 900 ns), waits with the share full (900 to 1,600 ns), then issues the other 160,000 (1,600 to 1,800 ns):
    /// done at 2,300 ns.
    /// </summary>
    [Test]
    public void TheNextStage_FetchesAheadUpToTheL2Share()
    {
        var g = Toy with { L2Bytes = 1_280_000 };
        var c = PersistentWhatIf.Compose(g, [Stage(80_000), Stage(800_000, aheadBytes: 800_000)], lookaheadBytes: 0, releaseUs: 1.0);
        Assert.That(c.Stages[1].FetchedAheadBytes, Is.EqualTo(640_000));
        Assert.That(c.LaunchUs, Is.EqualTo(2.3).Within(Tol));
        Assert.That((c.IdleUs, c.IdleBudgetFullUs), Is.EqualTo((0.7, 0.7)).Within(Tol));
    }

    /// <summary>
    /// Bytes known only once an earlier stage is done (expert weights after the router): stage 0 done at 600 ns, stage 1
    /// has no bytes and 1 us of work (ready at 600 ns with no release, done at 1,600 ns), stage 2's 80,000 bytes may come
    /// ahead after stage 0 (600 to 700 ns, done at 1,600 ns, when it is ready) or only after stage 1 (at 1,600 ns, when
    /// it runs anyway: done at 1,700 + 500 = 2,200 ns).
    /// </summary>
    [Test]
    public void BytesAheadAfterAStage_WaitForThatStage()
    {
        PersistentComposition Run(int after) => PersistentWhatIf.Compose(Toy,
            [Stage(80_000), Stage(0, workUs: 1.0), Stage(80_000, aheadBytes: 80_000, aheadAfter: after)], lookaheadBytes: 1 << 20, releaseUs: 0);
        var afterFirst = Run(0);
        Assert.That(afterFirst.Stages[1].DoneUs, Is.EqualTo(1.6).Within(Tol));
        Assert.That(afterFirst.Stages[2].FetchedAheadBytes, Is.EqualTo(80_000));
        Assert.That(afterFirst.LaunchUs, Is.EqualTo(1.6).Within(Tol));
        var afterSecond = Run(1);
        Assert.That(afterSecond.Stages[2].FetchedAheadBytes, Is.Zero);
        Assert.That(afterSecond.LaunchUs, Is.EqualTo(2.2).Within(Tol));
        var fromStart = Run(-1);
        Assert.That(fromStart.Stages[2].FetchedAheadBytes, Is.EqualTo(80_000), "from the start: 100 to 200 ns");
        Assert.That(fromStart.LaunchUs, Is.EqualTo(1.6).Within(Tol));
    }

    /// <summary>
    /// Bytes an earlier stage prefetched for a later one (<see cref="PersistentStage.EarlyAheadBytes"/>) stream from the
    /// issuing stage's start, behind its own, and only the stage they are for waits for them: the same three stages as
    /// above, stage 2's 80,000 bytes prefetched for it from the start (100 to 200 ns: done when ready at 1,600 ns), or only
    /// once stage 1 is done (at 1,600 ns: done at 1,700 + 500 = 2,200 ns). Stage 0 is done at 600 ns either way.
    /// </summary>
    [Test]
    public void BytesAnEarlierStagePrefetched_StreamFromItsStart_AndOnlyTheirStageWaitsForThem()
    {
        PersistentComposition Run(int after) => PersistentWhatIf.Compose(Toy,
            [Stage(80_000), Stage(0, workUs: 1.0), Stage(80_000) with { EarlyAheadBytes = 80_000, EarlyAheadAfter = after }], lookaheadBytes: 1 << 20, releaseUs: 0);
        var fromStart = Run(-1);
        Assert.That(fromStart.Stages[0].DoneUs, Is.EqualTo(0.6).Within(Tol));
        Assert.That(fromStart.Stages[2].FetchedAheadBytes, Is.EqualTo(80_000));
        Assert.That(fromStart.LaunchUs, Is.EqualTo(1.6).Within(Tol));
        var afterSecond = Run(1);
        Assert.That(afterSecond.Stages[0].DoneUs, Is.EqualTo(0.6).Within(Tol));
        Assert.That(afterSecond.Stages[2].FetchedAheadBytes, Is.Zero);
        Assert.That(afterSecond.LaunchUs, Is.EqualTo(2.2).Within(Tol));
        Assert.That(() => PersistentWhatIf.Compose(Toy, [Stage(800) with { EarlyAheadBytes = 1_600 }], 1000, 0), Throws.ArgumentException,
            "more prefetched for a stage than its DRAM bytes");
        Assert.That(() => PersistentWhatIf.Compose(Toy, [Stage(800) with { EarlyAheadBytes = 800, EarlyAheadAfter = 0 }], 1000, 0), Throws.ArgumentException,
            "after itself");
    }

    /// <summary>
    /// A stage's work: its chain (0.1 us + 2 DRAM trips at 0.5 us for the bytes not fetched ahead, at the L2's 0.2 us for the
    /// rest), its Little's-law time (3 us, scaled by the share not fetched ahead) and its throughput terms (0.5 us).
    /// </summary>
    [Test]
    public void WorkAfterReady_TakesTheLargestTerm_AtTheShareNotFetchedAhead()
    {
        var s = Stage(1000) with { ChainFixedUs = 0.1, ChainDramTrips = 2, LittleUs = 3.0, TransferUs = 0.5 };
        Assert.That(s.WorkUs(Toy, 1), Is.EqualTo(3.0).Within(Tol), "nothing ahead: Little's law");
        Assert.That(s.WorkUs(Toy, 0.5), Is.EqualTo(1.5).Within(Tol), "half ahead: 1.5 against a chain of 0.1 + 2 x 0.35 = 0.8");
        Assert.That(s.WorkUs(Toy, 0), Is.EqualTo(0.5).Within(Tol), "all ahead: the chain 0.1 + 2 x 0.2 = 0.5, as the throughput");
    }

    /// <summary>
    /// A stage whose kernel runs 1,000 warps at once today, in a launch that holds 400: its tiles take ceil(1000 / 400) = 3
    /// rounds, so its chain (0.3 us fixed, 2 DRAM round trips) counts three times; its own loads keep 400 warps' bytes in
    /// flight instead of 1,000, so the Little's-law term grows by 2.5; the issue, SM fill and L2 terms are totals and
    /// stay. A launch that holds all its warps (or a stage whose warps are unknown) leaves it as it is.
    /// </summary>
    [Test]
    public void AtResidentWarps_RunsTheTilesInRounds_WhenTheLaunchHoldsFewerWarps()
    {
        var s = Stage(1000) with { ChainFixedUs = 0.3, ChainDramTrips = 2, LittleUs = 1.0, TransferUs = 0.5, WarpsAtOnce = 1000 };
        var r = s.AtResidentWarps(400);
        Assert.That((r.ChainFixedUs, r.ChainDramTrips, r.LittleUs, r.ThroughputUs), Is.EqualTo((0.9, 6L, 2.5, 0.5)).Within(Tol));
        Assert.That(r.WorkUs(Toy, 1), Is.EqualTo(0.9 + 6 * 0.5).Within(Tol), "nothing ahead: the chain, 0.9 + 6 DRAM latencies, over Little's 2.5");
        Assert.That(s.AtResidentWarps(1000), Is.SameAs(s));
        Assert.That((s with { WarpsAtOnce = 0 }).AtResidentWarps(1), Is.EqualTo(s with { WarpsAtOnce = 0 }));
        Assert.That(() => s.AtResidentWarps(0), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    /// <summary>
    /// One kernel for every stage: 128-thread CTAs with the largest shared memory of the stages (40 KiB) fit 2 per SM on
    /// the toy GPU (100 KiB: 102,400 / (40,960 + 1,024)), whatever the registers; with 4 KiB the registers decide: 128
    /// per thread leave 4 CTAs (65,536 / 4,096 per warp / 4 warps), 64 leave 8. A stage of 400 warps with 1 us of chain
    /// then runs in 400 / (8 x 10) = 5 rounds at 2 CTAs per SM: the launch takes 5 us.
    /// </summary>
    [Test]
    public void KernelOccupancy_TakesTheLargestSharedMemory_AndTheStagesRunAtIt()
    {
        var small = Stage(0, workUs: 1.0) with { WarpsAtOnce = 400, SharedBytesPerCta = 4096, RegistersPerThread = 40 };
        var large = Stage(0) with { WarpsAtOnce = 8, SharedBytesPerCta = 40960, RegistersPerThread = 168 };
        var two = PersistentWhatIf.KernelOccupancy(Toy, [small, large], 64);
        Assert.That((two.BlocksPerSm, two.WarpsPerSm, two.Limit), Is.EqualTo((2, 8, OccupancyLimit.SharedMemory)));
        Assert.That(PersistentWhatIf.KernelOccupancy(Toy, [small], 128).BlocksPerSm, Is.EqualTo(4));
        Assert.That(PersistentWhatIf.KernelOccupancy(Toy, [small], 64).BlocksPerSm, Is.EqualTo(8));
        Assert.That(PersistentWhatIf.FreeSharedBytes(Toy, [small, large], two), Is.EqualTo(10L * (102_400 - 2 * (40_960 + 1_024))),
            "what 2 CTAs of 40 KiB (and the reserved KiB each) leave of every SM's 100 KiB");
        Assert.That(PersistentWhatIf.FreeSharedBytes(Toy, [small], PersistentWhatIf.KernelOccupancy(Toy, [small], 32)), Is.EqualTo(10L * (102_400 - 16 * (4_096 + 1_024))),
            "16 CTAs of 4 KiB at 32 registers (the warps' limit: 64 / 4)");
        var c = PersistentWhatIf.Compose(Toy, PersistentWhatIf.AtOccupancy(Toy, [small, large], two), lookaheadBytes: 0, releaseUs: 0);
        Assert.That(c.Stages[0].DoneUs, Is.EqualTo(5.0).Within(Tol));
        Assert.That(PersistentWhatIf.Compose(Toy, [small], 0, 0).LaunchUs, Is.EqualTo(1.0).Within(Tol), "at today's occupancy: one round");
    }

    /// <summary>
    /// Bytes fetched ahead staged in shared memory: their share of the stage's L2-to-SM transfer is done before it is
    /// ready. Stage 1 (160,000 bytes, all ahead, 1 us of transfer, 0.2 us of issue) is ready at 0.8 us with its bytes
    /// arrived: done at 1.8 us with nothing staged, 1.3 with half of its bytes staged (0.5 us of transfer left), 1.0 with
    /// all of them (the issue term, 0.2 us, is left).
    /// </summary>
    [Test]
    public void BytesStagedInShared_TakeTheirTransferOffTheWorkAfterReady()
    {
        var s = Stage(160_000, aheadBytes: 160_000) with { IssueUs = 0.2, TransferUs = 1.0, TransferBytes = 160_000 };
        Assert.That((s.WorkUs(Toy, 0), s.WorkUs(Toy, 0, 0.5), s.WorkUs(Toy, 0, 1)), Is.EqualTo((1.0, 0.5, 0.2)).Within(Tol));
        double Done(long staging) => PersistentWhatIf.Compose(Toy, [Stage(80_000), s], lookaheadBytes: 1 << 20, releaseUs: 0.2, staging).LaunchUs;
        Assert.That((Done(0), Done(80_000), Done(160_000), Done(1 << 20)), Is.EqualTo((1.8, 1.3, 1.0, 1.0)).Within(Tol));
        Assert.That(PersistentWhatIf.StagingBytes(Toy), Is.EqualTo(10 * 51_200), "half of each of the toy's 10 SMs' 100 KiB");
    }

    /// <summary>
    /// Bytes a stage's tiles load into the SMs before their wait (registers, or shared memory by cp.async) count as staged
    /// once they were fetched ahead, without any staging budget. The stage of the test above with 80,000 of its bytes
    /// loaded: done at 1.3 us, as with 80,000 bytes of budget; with the budget as well, 1.0. With none of its bytes
    /// allowed ahead, the loads come after ready like any other (ready 0.8 us, the transfer 1.0: done at 1.8). As a first
    /// stage with 80,000 of its bytes fetched in the shadow of the kernel before and loaded: it issues its other 80,000
    /// in 100 ns (arrived at 0.6 us) and half its transfer is left (0.5 us): done at 0.6, at 1.0 without the loads.
    /// </summary>
    [Test]
    public void BytesLoadedBeforeTheWait_TakeTheirTransferOffTheWorkAfterReady()
    {
        var s = Stage(160_000, aheadBytes: 160_000) with { IssueUs = 0.2, TransferUs = 1.0, TransferBytes = 160_000, LoadedAheadBytes = 80_000 };
        double Done(PersistentStage st, long staging = 0) => PersistentWhatIf.Compose(Toy, [Stage(80_000), st], lookaheadBytes: 1 << 20, releaseUs: 0.2, staging).LaunchUs;
        Assert.That((Done(s), Done(s, 80_000), Done(s with { AheadBytes = 0 })), Is.EqualTo((1.3, 1.0, 1.8)).Within(Tol));
        var first = Stage(80_000) with { IssueUs = 0.2, TransferUs = 1.0, TransferBytes = 160_000, ShadowBytes = 80_000 };
        double First(PersistentStage st) => PersistentWhatIf.Compose(Toy, [st], lookaheadBytes: 1 << 20, releaseUs: 0.2).LaunchUs;
        Assert.That((First(first with { LoadedAheadBytes = 80_000 }), First(first)), Is.EqualTo((0.6, 1.0)).Within(Tol));
    }

    [Test]
    public void BadArguments_Throw()
    {
        Assert.That(() => PersistentWhatIf.Compose(Toy, [Stage(800, aheadBytes: 800, aheadAfter: 0)], 1000, 0),
            Throws.ArgumentException.With.Message.Contains("may fetch ahead only after an earlier stage"));
        Assert.That(() => PersistentWhatIf.Compose(Toy, [Stage(800)], -1, 0), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => PersistentWhatIf.Compose(Toy, [Stage(800)], 0, -0.1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        Assert.That(() => PersistentWhatIf.Compose(Toy, [Stage(800)], 0, 0, sharedStagingBytes: -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    /// <summary>
    /// A programmatic graph launch of 4 CTAs of 4 warps, one DRAM round trip per warp, for <see cref="PersistentWhatIf.StagesOf"/>:
    /// its distinct, pre-wait, evict_last-prefetched and L2-resident bytes.
    /// </summary>
    static LaunchRecord Rec(string kernel, long distinct, long preWait = 0, long persisting = 0, long resident = 0) => new()
    {
        Kernel = kernel, Grid = new Dim3(4), Block = new Dim3(128), DistinctSectors = distinct / 32, GlobalLoadSectors = distinct / 32,
        Warps = 16, DramRoundTrips = 16, MaxWarpDramRoundTrips = 1, PreWaitSectors = preWait / 32, PersistingSectors = persisting / 32,
        L2ResidentSectors = resident / 32, InGraph = true, ProgrammaticLaunch = true,
    };

    /// <summary>
    /// The stages of a predicted step: a router that fetched 64 KiB ahead for a later GEMV (which found them in
    /// L2), the expert GEMVs after it (as two kernels and as one launch), and that GEMV. The fetched-ahead bytes move from the router to the GEMV that used
    /// them, where the lookahead may fetch them; the expert weights may come ahead once the router is done; the GEMV's
    /// pre-wait bytes from the start.
    /// </summary>
    [Test]
    public void StagesOf_MovesFetchedAheadBytesToTheirUser_AndWaitsForTheRouterForExpertWeights()
    {
        var records = new[]
        {
            Rec("moe_router_norm_topk", 4096 + 65536, preWait: 4096, persisting: 65536),
            Rec("moe_gate_up_gemv", 32768),
            Rec("moe_down_gemv", 16384),
            Rec("moe_experts_gemv", 8192),
            Rec("gemv_bf16_t1", 65536 + 8192, preWait: 65536 + 8192, resident: 65536),
        };
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, records, [], _ => new KernelResources(32, 0));
        var stages = PersistentWhatIf.StagesOf(p);
        Assert.That(stages.Select(s => (s.Kernel, s.DramBytes, s.AheadBytes, s.AheadAfter)), Is.EqualTo(new[]
        {
            ("moe_router_norm_topk", 4096L, 4096L, -1),
            ("moe_gate_up_gemv", 32768L, 32768L, 0),
            ("moe_down_gemv", 16384L, 16384L, 0),
            ("moe_experts_gemv", 8192L, 8192L, 0),   // the experts in one launch: the same rule
            ("gemv_bf16_t1", 73728L, 73728L, -1),
        }));
        Assert.That(stages.Sum(s => s.DramBytes), Is.EqualTo(p.Launches.Sum(l => KernelTimingModel.Predict(l.Launch, l.Resources, Toy).DramBytes)),
            "the step's DRAM bytes are kept, only moved");
        Assert.That(stages.Select(s => (s.WarpsAtOnce, s.RegistersPerThread, s.SharedBytesPerCta)).Distinct(), Is.EqualTo(new[] { (16L, 32, 0) }),
            "today's kernels' occupancy: 4 CTAs of 4 warps, all in one wave");
    }

    /// <summary>
    /// Early routing (<see cref="PersistentWhatIf.WithEarlyRouting"/>), on two layers of the attention block (its 4 stages
    /// measured apart, the router its last) and the experts' launch, and a third experts launch after a router launch with no
    /// attention before it, and a layer of separate kernels (attention, o_proj, router, gate_up, down): each experts stage
    /// after an attention may fetch all its bytes ahead once its layer's o_proj stage (the block's stage 2, the launch after
    /// the attention) is done, and that stage moves the folded router's bytes once per layer (fetched ahead like its
    /// weights); every other stage is as <see cref="PersistentWhatIf.StagesOf"/> gives it (the separate experts kernels
    /// there wait for the router launch, stage 15).
    /// </summary>
    [Test]
    public void WithEarlyRouting_FetchesTheExpertsAheadFromOProjsDone_AndOProjMovesTheFoldedRouter()
    {
        LaunchRecord S(int index, long distinct, long preWait) => Rec("persistent_attn_block", distinct, preWait) with { Stage = new LaunchStage(index, 4) };
        var layer = new[] { S(0, 8192, 8192), S(1, 2048, 2048), S(2, 4096, 4096), S(3, 1024, 1024), Rec("moe_experts_gemv", 16384) };
        var records = layer.Concat(layer).Concat([Rec("moe_router_norm_topk", 1024, 1024), Rec("moe_experts_gemv", 16384),
            Rec("attn_decode_fused", 2048, 2048), Rec("gemv_bf16_t1", 4096, 4096), Rec("moe_router_norm_topk", 1024, 1024), Rec("moe_gate_up_gemv", 8192), Rec("moe_down_gemv", 4096)]).ToArray();
        var p = StepPredictor.Predict(Toy, "decode", 1, 2, records, [], _ => new KernelResources(32, 0));
        var stages = PersistentWhatIf.StagesOf(p);
        var early = PersistentWhatIf.WithEarlyRouting(p, stages, 512);
        Assert.That(early.Select(s => (s.DramBytes, s.AheadBytes, s.AheadAfter)), Is.EqualTo(new[]
        {
            (8192L, 8192L, -1), (2048L, 2048L, -1), (4096L + 512, 4096L + 512, -1), (1024L, 1024L, -1), (16384L, 16384L, 2),
            (8192L, 8192L, -1), (2048L, 2048L, -1), (4096L + 512, 4096L + 512, -1), (1024L, 1024L, -1), (16384L, 16384L, 7),
            (1024L, 1024L, -1), (16384L, 16384L, 10),
            (2048L, 2048L, -1), (4096L + 512, 4096L + 512, -1), (1024L, 1024L, -1), (8192L, 8192L, 13), (4096L, 4096L, 13),
        }));
        Assert.That(stages[4].AheadBytes, Is.EqualTo(0), "without early routing the block's experts fetch nothing ahead");
        Assert.That(early[11], Is.EqualTo(stages[11]), "the experts after a router launch with no attention before them: unchanged");
        Assert.That(early[2].TransferBytes, Is.EqualTo(stages[2].TransferBytes + 512));
        Assert.That(early[2].TransferUs, Is.EqualTo(stages[2].TransferUs * (stages[2].TransferBytes + 512) / stages[2].TransferBytes).Within(1e-12));
        Assert.That(() => PersistentWhatIf.WithEarlyRouting(p, stages.Take(3).ToList(), 512), Throws.ArgumentException.With.Message.Contains("StagesOf"));
        Assert.That(() => PersistentWhatIf.WithEarlyRouting(p, stages, -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    /// <summary>
    /// One launch per MoE layer (<see cref="PersistentWhatIf.AsLayerLaunches"/>): each attention block (its 4 stages measured
    /// apart) and the experts launch right after it become one launch of 5 stages, so the step has one graph node less per
    /// layer; an experts launch with a memset node before it stays a launch of its own. With the folded router, each merged
    /// layer moves its bytes once more (in its o_proj stage), and nothing else changes in the step's bytes.
    /// </summary>
    [Test]
    public void AsLayerLaunches_MakesTheBlockAndTheExpertsOneLaunch_PerLayer()
    {
        LaunchRecord S(int index) => Rec("persistent_attn_block", 4096, 4096) with { Stage = new LaunchStage(index, 4) };
        var layer = new[] { S(0), S(1), S(2), S(3), Rec("moe_experts_gemv", 16384, 1024) };
        var records = new[] { Rec("embedding_gather_bf16", 1024) }.Concat(layer).Concat(layer).Concat(layer).Concat([Rec("gemv_bf16_t1", 8192, 8192)]).ToArray();
        // a memset node before the third layer's experts: that layer keeps two launches
        var ops = new List<DeviceOperation> { new(DeviceOperationKind.Memset, 8, true, 15) };
        var p = StepPredictor.Predict(Toy, "decode", 1, 3, records, ops, _ => new KernelResources(32, 0));
        var layers = PersistentWhatIf.AsLayerLaunches(p);
        Assert.That(layers.Launches, Has.Count.EqualTo(p.Launches.Count));
        Assert.That(layers.GraphNodes, Is.EqualTo(p.GraphNodes - 2), "two layers merged, the third kept apart by the memset");
        Assert.That(layers.Launches.Select(l => l.ContinuesLaunch).ToArray()[5], Is.True, "the first layer's experts continue its block's launch");
        Assert.That(layers.Launches.Select(l => l.Launch.Stage?.Count).Take(11), Is.EqualTo(new int?[] { null, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5 }));
        Assert.That(layers.Launches[15].Launch.Stage, Is.Null, "the third layer's experts: a launch of their own");
        Assert.That(layers.DramBytes, Is.EqualTo(p.DramBytes).Within(1024 * 4), "the same bytes, as one launch (within the programmatic shadow's accounting)");
        var early = PersistentWhatIf.AsLayerLaunches(p, 512);
        Assert.That(early.DramBytes - layers.DramBytes, Is.EqualTo(2 * 512), "the folded router once per merged layer");
        Assert.That(() => PersistentWhatIf.AsLayerLaunches(p, -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    /// <summary>
    /// The MoE layers as one launch (<see cref="PersistentWhatIf.AsStepLaunch"/>): the layers that
    /// <see cref="PersistentWhatIf.AsLayerLaunches"/> merges, back to back, become one launch of 5 stages per layer, the
    /// stage indices running on across the layers; a layer kept apart by a memset node (before its experts) stays as it is,
    /// its block one launch of 4 stages, its experts one of their own. With the folded router, each merged layer moves
    /// its bytes once more.
    /// </summary>
    [Test]
    public void AsStepLaunch_MakesTheLayersBackToBackOneLaunch()
    {
        LaunchRecord S(int index) => Rec("persistent_attn_block", 4096, 4096) with { Stage = new LaunchStage(index, 4) };
        var layer = new[] { S(0), S(1), S(2), S(3), Rec("moe_experts_gemv", 16384, 1024) };
        var records = new[] { Rec("embedding_gather_bf16", 1024) }.Concat(layer).Concat(layer).Concat(layer).Concat([Rec("gemv_bf16_t1", 8192, 8192)]).ToArray();
        var ops = new List<DeviceOperation> { new(DeviceOperationKind.Memset, 8, true, 15) };
        var p = StepPredictor.Predict(Toy, "decode", 1, 3, records, ops, _ => new KernelResources(32, 0));
        var whole = PersistentWhatIf.AsStepLaunch(p);
        Assert.That(whole.Launches, Has.Count.EqualTo(p.Launches.Count));
        Assert.That((p.GraphNodes, whole.GraphNodes), Is.EqualTo((9, 6)), "embedding, the two layers as one launch, the third layer's block, the memset and its experts, the GEMV");
        Assert.That(whole.Launches.Select(l => l.Launch.Stage?.Index).Take(11), Is.EqualTo(new int?[] { null, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 }));
        Assert.That(whole.Launches.Skip(1).Take(10).Select(l => l.Launch.Stage?.Count).Distinct(), Is.EqualTo(new int?[] { 10 }));
        Assert.That(whole.Launches.Skip(11).Take(4).Select(l => l.Launch.Stage), Is.EqualTo(Enumerable.Range(0, 4).Select(k => (LaunchStage?)new LaunchStage(k, 4))),
            "the third layer's block as it ran");
        Assert.That(whole.Launches[15].Launch.Stage, Is.Null, "the third layer's experts: a launch of their own");
        Assert.That(whole.DramBytes, Is.EqualTo(p.DramBytes).Within(1024 * 4), "the same bytes, as one launch (within the programmatic shadow's accounting)");
        var early = PersistentWhatIf.AsStepLaunch(p, 512);
        Assert.That(early.DramBytes - whole.DramBytes, Is.EqualTo(2 * 512), "the folded router once per merged layer");
        Assert.That(() => PersistentWhatIf.AsStepLaunch(p, -1), Throws.InstanceOf<ArgumentOutOfRangeException>());
        // early routing measured in the step (its tiles and folded router already in the block's stages): no bytes added,
        // the experts' bytes fetched ahead from o_proj's done all the same, and no folded bytes on top of the measured ones
        var measured = PersistentWhatIf.AsStepLaunch(p, 0, earlyRoutingMeasured: true);
        Assert.That(measured.DramBytes, Is.EqualTo(whole.DramBytes), "nothing added to what was measured");
        Assert.That(measured.TotalUs, Is.LessThan(whole.TotalUs), "the experts' weights fetched ahead from o_proj's done");
        Assert.That(() => PersistentWhatIf.AsStepLaunch(p, 512, earlyRoutingMeasured: true), Throws.ArgumentException.With.Message.Contains("already moves the folded router"));
        // the report's lines on such a step: early routing as measured, and the one-launch line's step with it
        string report = PersistentWhatIf.Report(p, p.DramBytes, 0, earlyRoutingMeasured: true);
        Assert.That(report, Does.Contain("what-if with early routing as built and measured in the block's stages"));
        Assert.That(report, Does.Contain(FormattableString.Invariant($"with early routing too: {measured.TotalUs:F1} us")));
        Assert.That(PersistentWhatIf.Report(p, p.DramBytes), Does.Not.Contain("early routing"), "no folded router and nothing measured: no early-routing lines");
    }

    /// <summary>
    /// The experts' launch after a router that is no launch of its own (the attention block's stage): its pre-wait bytes
    /// are the next GEMV's weights fetched ahead (4 KiB, which that GEMV found in L2), so they move to the GEMV, and none of
    /// the experts' own 8 KiB may come ahead (their addresses come from the router).
    /// </summary>
    [Test]
    public void StagesOf_TheExpertsPreWaitBytesAreALaterKernels_NotTheirOwn()
    {
        var records = new[]
        {
            Rec("moe_experts_gemv", 8192 + 4096, preWait: 4096, persisting: 4096),
            Rec("gemv_bf16_t1", 4096 + 8192, preWait: 4096 + 8192, resident: 4096),
        };
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, records, [], _ => new KernelResources(32, 0));
        Assert.That(PersistentWhatIf.StagesOf(p).Select(s => (s.Kernel, s.DramBytes, s.AheadBytes, s.AheadAfter)), Is.EqualTo(new[]
        {
            ("moe_experts_gemv", 8192L, 0L, -1),
            ("gemv_bf16_t1", 12288L, 12288L, -1),
        }));
    }

    /// <summary>
    /// A stage-ordered launch measured apart (LaunchConfig.Stage: one launch per stage, docs/timing-model.md section 7):
    /// three stage launches of 4-warp CTAs at 32 registers, 16 CTAs per SM on the toy's 10 SMs (160 at once), of 100, 40
    /// and 50 CTAs. Stage 1 and every stage before it fit at once (140 CTAs): it fetches ahead from the start; stage 2
    /// does not (190) but fits beside stage 1 (90): it fetches ahead once stage 0 is done. The step predicts them as one
    /// launch: their times add up to the composition's, one graph node (the same records without stages: three).
    /// </summary>
    [Test]
    public void StagesMeasuredApart_AreComposedBackIntoOneLaunch()
    {
        static LaunchRecord Rec(uint grid, long distinct, long preWait, LaunchStage? stage) => new()
        {
            Kernel = "block", Grid = new Dim3(grid), Block = new Dim3(128), DistinctSectors = distinct / 32, GlobalLoadSectors = distinct / 32,
            Warps = grid * 4, DramRoundTrips = grid * 4, MaxWarpDramRoundTrips = 1, MaxWarpPostWaitDramRoundTrips = 1,
            MaxWarpPostWaitL2RoundTrips = 2, MaxWarpPostWaitInstructions = 100, PreWaitSectors = preWait / 32,
            InGraph = true, ProgrammaticLaunch = true, Stage = stage,
        };
        LaunchRecord[] Records(bool staged) =>
        [
            Rec(100, 80_000, 80_000, staged ? new(0, 3) : null),
            Rec(40, 8_000, 800, staged ? new(1, 3) : null),
            Rec(50, 40_000, 40_000, staged ? new(2, 3) : null),
        ];
        var res = new KernelResources(32, 0);
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, Records(true), [], _ => res);
        var apart = StepPredictor.Predict(Toy, "decode", 1, 1, Records(false), [], _ => res);
        var alone = Records(true).Select(r => KernelTimingModel.Predict(r, res, Toy)).ToList();
        Assert.That(alone[0].Occupancy.BlocksPerSm, Is.EqualTo(16), "the toy holds 16 CTAs of 4 warps per SM");
        var c = PersistentWhatIf.ComposeStages(Toy, alone);
        Assert.That(c.Stages.Select(s => s.Stage.AheadAfter), Is.EqualTo(new[] { -1, -1, 0 }));
        Assert.That(c.Stages.Select(s => s.Stage.AheadBytes), Is.EqualTo(new[] { 80_000L, 800L, 40_000L }), "the pre-wait bytes");
        Assert.That(p.Launches.Sum(l => l.Microseconds), Is.EqualTo(c.LaunchUs).Within(1e-9), "the stages' times add up to the composed launch");
        Assert.That(p.Launches.Select(l => l.ContinuesLaunch), Is.EqualTo(new[] { false, true, true }));
        Assert.That((p.GraphNodes, apart.GraphNodes), Is.EqualTo((1, 3)), "one graph node for the launch");
        Assert.That(p.DramBytes, Is.EqualTo(apart.DramBytes), "the same bytes");
        // the composition by its rules: stage 0 issues its 80,000 bytes in 100 ns; its work after ready is its chain:
        // 0.2 x 2 + 100 instructions at 0.5 IPC and 1 GHz (0.2 us) + 1 DRAM trip at the latency (0.5): 1.1 us, so done at
        // 1.1 us; stage 1 ready 0.4 us later (two L2 round trips)
        Assert.That(c.Stages[0].DoneUs, Is.EqualTo(1.1).Within(Tol));
        Assert.That(c.Stages[1].ReadyUs, Is.EqualTo(1.5).Within(Tol));
    }
    /// <summary>
    /// A stage whose last CTA merges after a ticket (a tail mark): its chain after the wait is the largest part of a warp
    /// between its wait and its mark plus the longest tail, whichever warp took the last ticket in the emulator's schedule.
    /// Here that warp had a short part before its mark (post-wait maxima: 1 DRAM, 2 L2 trips, 300 instructions, all of one
    /// short warp), another warp the longest such part (1 DRAM, 1 L2, 400 instructions), and the tails are the merge (0
    /// DRAM, 2 L2, 150 instructions: 0.4 + 0.3 us on the toy) and a CTA's ticket with a DRAM trip (1, 0, 10: 0.5 + 0.02
    /// us). The chain: 1 DRAM trip and 3 L2 trips, 550 instructions: fixed part 3 x 0.2 + 550 / 0.5 / 1 GHz = 1.7 us.
    /// Without a mark the post-wait maxima stay.
    /// </summary>
    [Test]
    public void AStagesChainAfterItsWait_IsTheLongestPartBeforeTheMarkPlusTheLongestTail()
    {
        static LaunchRecord Rec(bool tailed) => new()
        {
            Kernel = "block", Grid = new Dim3(10), Block = new Dim3(128), DistinctSectors = 100, GlobalLoadSectors = 100,
            Warps = 40, DramRoundTrips = 40, MaxWarpDramRoundTrips = 1,
            MaxWarpPostWaitDramRoundTrips = 1, MaxWarpPostWaitL2RoundTrips = 2, MaxWarpPostWaitInstructions = 300,
            MaxWarpPostWaitPreTailDramRoundTrips = 1, MaxWarpPostWaitPreTailL2RoundTrips = 1, MaxWarpPostWaitPreTailInstructions = 400,
            MaxWarpTailInstructions = tailed ? 150 : 0, MaxWarpTailDramRoundTrips = tailed ? 1 : 0, MaxWarpTailL2RoundTrips = tailed ? 2 : 0,
            TailChains = tailed ? [new TailChain(0, 2, 150), new TailChain(1, 0, 10)] : [],
        };
        Assert.That(PersistentWhatIf.ChainAfterWait(Toy, Rec(true)), Is.EqualTo((1L, 3L, 550L)));
        Assert.That(PersistentWhatIf.ChainAfterWait(Toy, Rec(false)), Is.EqualTo((1L, 2L, 300L)), "no mark: the post-wait maxima");
        var a = KernelTimingModel.Predict(Rec(true), new KernelResources(32, 0), Toy);
        var stage = PersistentWhatIf.Stage(Toy, a, a.DramBytes, 0, -1);
        Assert.That(stage.ChainFixedUs, Is.EqualTo(1.7).Within(Tol));
        Assert.That(stage.ChainDramTrips, Is.EqualTo(1));
        var byMaxima = Rec(true) with { TailChains = [] };
        Assert.That(PersistentWhatIf.ChainAfterWait(Toy, byMaxima), Is.EqualTo((2L, 3L, 550L)), "a record built without chains: the tail maxima");
    }

    /// <summary>
    /// A stage that prefetches with evict_last before its wait for a later stage of the launch (stage 0: 80,000 bytes of its
    /// own and 40,000 prefetched, all before the wait) hands those bytes to the first later stage that found them
    /// L2-resident (stage 2: 40,000 bytes of its own, 40,000 resident), as bytes prefetched for it from the issuing stage's
    /// start: stage 0 keeps 80,000 DRAM bytes and does not wait for the others, stage 2 streams 80,000 of which 40,000 early.
    /// Stage 1 found nothing resident and keeps its bytes.
    /// </summary>
    [Test]
    public void StagesMeasuredApart_HandBytesPrefetchedForALaterStageToIt()
    {
        static LaunchRecord Rec(uint grid, long distinct, long preWait, long persisting, long resident, int stage) => new()
        {
            Kernel = "block", Grid = new Dim3(grid), Block = new Dim3(128), DistinctSectors = distinct / 32, GlobalLoadSectors = distinct / 32,
            Warps = grid * 4, DramRoundTrips = grid * 4, MaxWarpDramRoundTrips = 1, MaxWarpPostWaitDramRoundTrips = 1,
            MaxWarpPostWaitL2RoundTrips = 2, MaxWarpPostWaitInstructions = 100, PreWaitSectors = preWait / 32,
            PersistingSectors = persisting / 32, L2ResidentSectors = resident / 32,
            InGraph = true, ProgrammaticLaunch = true, Stage = new LaunchStage(stage, 3),
        };
        var res = new KernelResources(32, 0);
        var alone = new[] { Rec(10, 120_000, 120_000, 40_000, 0, 0), Rec(10, 8_000, 800, 0, 0, 1), Rec(10, 80_000, 0, 0, 40_000, 2) }
            .Select(r => KernelTimingModel.Predict(r, res, Toy)).ToList();
        Assert.That(alone.Select(a => a.DramBytes), Is.EqualTo(new[] { 120_000L, 8_000L, 40_000L }), "measured apart: stage 2's prefetched bytes are L2 bytes");
        var c = PersistentWhatIf.ComposeStages(Toy, alone);
        Assert.That(c.Stages.Select(s => s.Stage.DramBytes), Is.EqualTo(new[] { 80_000L, 8_000L, 80_000L }));
        Assert.That(c.Stages.Select(s => s.Stage.AheadBytes), Is.EqualTo(new[] { 80_000L, 800L, 0L }));
        Assert.That(c.Stages.Select(s => s.Stage.EarlyAheadBytes), Is.EqualTo(new[] { 0L, 0L, 40_000L }));
        Assert.That(c.Stages[2].Stage.EarlyAheadAfter, Is.EqualTo(-1), "from the launch's start, as stage 0's own bytes");
        Assert.That(c.Stages[2].FetchedAheadBytes, Is.EqualTo(40_000), "streamed behind stage 0's own before stage 2 was ready");
        Assert.That(c.DramBytes, Is.EqualTo(alone.Sum(a => a.DramBytes)), "the same bytes, moved");
    }
}
