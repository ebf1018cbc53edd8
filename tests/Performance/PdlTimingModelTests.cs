using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Performance;

/// <summary>
/// The timing model of programmatic dependent launch (docs/timing-model.md, section 3, "Programmatic dependent launch")
/// on hand-computed cases, on <see cref="TimingModelTests.Toy"/>: 10 SMs at 1 GHz, 800 GB/s achievable, DRAM latency
/// 500 ns, L2 latency 200 ns, L2 1 MiB with half of it for data kept between kernels (the cap: 524288 bytes), graph
/// node gap 1 us, programmatic node gap 0.5 us. The launch records are written by hand (not run on the emulator).
/// Tolerances: 1e-9 relative for times (plain double arithmetic over exact decimal inputs); 1 byte for the spare DRAM
/// bytes, which are truncated to whole bytes after a product of doubles.
/// </summary>
public class PdlTimingModelTests
{
    static GpuSpec Toy => TimingModelTests.Toy;
    static readonly KernelResources Regs16 = new(16, 0), Regs32 = new(32, 0);

    /// <summary>
    /// A graph launch: <paramref name="dramBytes"/> distinct bytes, <paramref name="reuseBytes"/> re-read (loaded sectors
    /// beyond the distinct ones), trips and instructions per warp, the pre-wait bytes (a prefetch touches its sectors as
    /// distinct ones without a load request: the loads after the wait add no re-read bytes).
    /// </summary>
    static LaunchRecord Launch(string kernel, uint grid, uint block, long dramBytes, long warpDramTrips, long maxWarpInstructions = 0,
        long reuseBytes = 0, long warpL2Trips = 0, long preWaitBytes = 0, bool programmatic = true)
    {
        long warps = grid * ((block + 31) / 32);
        return new LaunchRecord
        {
            Kernel = kernel, Grid = new Dim3(grid), Block = new Dim3(block), DistinctSectors = dramBytes / 32,
            GlobalLoadSectors = (dramBytes + reuseBytes) / 32, Warps = warps,
            DramRoundTrips = warpDramTrips * warps, MaxWarpDramRoundTrips = warpDramTrips,
            L2RoundTrips = warpL2Trips * warps, MaxWarpL2RoundTrips = warpL2Trips,
            MaxWarpInstructions = maxWarpInstructions, WarpInstructions = maxWarpInstructions * warps,
            InGraph = true, ProgrammaticLaunch = programmatic, PreWaitSectors = preWaitBytes / 32,
        };
    }

    /// <summary>
    /// A split-attention-like launch: 4 CTAs of 4 warps, 4096 DRAM bytes of which 2048 are loaded before the wait; its
    /// critical warp: 3 DRAM trips, 4 L2 trips and 300 instructions, of which 2 DRAM trips and 100 instructions come before
    /// its griddepcontrol.wait. On its own its latency is 3 x 0.5 + 4 x 0.2 + 300 x 0.002 = 2.9 us (the rest is smaller:
    /// DRAM 0.5 + 4096 / 800 ns, Little 3 x 0.5 = 1.5 us, issue 1200 / 2 ns = 0.6 us).
    /// </summary>
    static LaunchRecord Split(bool programmatic = true)
    {
        var r = Launch("split", 4, 128, 4096, 3, 300, warpL2Trips: 4, preWaitBytes: 2048, programmatic: programmatic);
        return r with
        {
            MaxWarpPreWaitDramRoundTrips = 2, MaxWarpPreWaitL2RoundTrips = 0, MaxWarpPreWaitInstructions = 100,
            MaxWarpPostWaitDramRoundTrips = 1, MaxWarpPostWaitL2RoundTrips = 4, MaxWarpPostWaitInstructions = 200,
        };
    }

    /// <summary>
    /// After the 5.1 us chase every CTA of <see cref="Split"/> is resident and its 2048 pre-wait bytes overlap (kept share
    /// 0.5). The whole chain with that share: 3 x 0.5 x 0.5 + (4 + 1.5) x 0.2 + 0.6 = 2.45 us. Its part before the wait,
    /// 2 x 0.5 + 100 x 0.002 = 1.2 us, runs in the chase's 5.1 us shadow; the part after it: 1 x 0.5 x 0.5 + (4 + 0.5) x
    /// 0.2 + 200 x 0.002 = 1.55 us, the latency (and the time: Little 3 x 0.5 x 0.5 = 0.75 us, issue 0.6 us).
    /// </summary>
    [Test]
    public void ThePartBeforeTheWait_RunsInThePredecessorsShadow()
    {
        Near(KernelTimingModel.Predict(Split(), Regs32, Toy).LatencyUs, 2.9, "on its own");
        var p = Step(Chase(), Split());
        var split = p.Launches[1];
        Assert.That((split.Overlap!.ResidentFraction, split.Overlap.Bytes), Is.EqualTo((1.0, 2048L)));
        Near(split.LatencyUs, 1.55, "only the part after the wait");
        Near(split.Microseconds, 1.55, "latency-bound");
        Near(split.IsolatedMicroseconds, 2.9, "measured alone, nothing overlaps");
    }

    /// <summary>
    /// A shorter predecessor: one warp, 1 DRAM trip and 50 instructions (latency 0.5 + 0.1 = 0.6 us; spare (600 - 500) x
    /// 800 - 320 = 79680 bytes, so the 2048 pre-wait bytes still overlap). Of the 1.2 us before the wait 0.6 us stay
    /// exposed: 1.55 + 0.6 = 2.15 us. After a predecessor that does not trigger early, nothing is hidden: 2.9 us.
    /// </summary>
    [Test]
    public void ThePartBeforeTheWait_BeyondTheShadowOrWithoutATrigger_StaysOnThePath()
    {
        var shortOne = Launch("chase", 1, 32, 320, 1, 50);
        var p = Step(shortOne, Split());
        Near(p.Launches[0].Microseconds, 0.6, "the short predecessor");
        Near(p.Launches[1].LatencyUs, 2.15, "0.6 us of the part before the wait exposed");
        var q = Step(Chase(programmatic: false), Split());
        Assert.That(q.Launches[1].Overlap!.Limit, Is.EqualTo(OverlapLimit.NoEarlyTrigger));
        Near(q.Launches[1].LatencyUs, 2.9, "no early trigger: the whole chain");
    }

    /// <summary>One warp chasing 10 pointers: 5.1 us, latency-bound (TimingModelTests.LatencyBoundOneCtaKernel).</summary>
    static LaunchRecord Chase(bool programmatic = true) => Launch("chase", 1, 32, 320, 10, 50, programmatic: programmatic);

    /// <summary>
    /// A GEMV of 20 CTAs of 4 warps: 480 KiB of weights fetched before griddepcontrol.wait, 8480 bytes of activations; 4
    /// DRAM trips and 1 L2 trip per warp, 100 instructions per warp. On its own: DRAM 0.5 + 500000 / 800 ns = 1.125 us,
    /// Little 4 x 0.5 = 2 us, SM fill 2 CTAs x 25000 / 100 ns = 0.5 us, latency 4 x 0.5 + 1 x 0.2 + 100 / 0.5 ns = 2.4 us:
    /// latency-bound.
    /// </summary>
    static LaunchRecord Gemv(string kernel = "gemv", uint grid = 20, long weights = 491_520, long activations = 8_480) =>
        Launch(kernel, grid, 128, weights + activations, 4, 100, warpL2Trips: 1, preWaitBytes: weights);

    static StepPrediction Step(params LaunchRecord[] launches) => Step([], launches);

    static StepPrediction Step(List<DeviceOperation> ops, params LaunchRecord[] launches) =>
        StepPredictor.Predict(Toy, "decode", 1, 1, launches, ops, r => r.Kernel == "chase" ? Regs16 : Regs32);

    static void Near(double actual, double expected, string what) => Assert.That(actual, Is.EqualTo(expected).Within(1e-9 * Math.Max(1, Math.Abs(expected))), what);

    /// <summary>
    /// After the 5.1 us pointer chase the DRAM is idle: spare (5100 - 500) ns x 800 GB/s - 320 = 3679680 bytes; every CTA
    /// of the GEMV fits beside the chase's one CTA; 491520 bytes under the 524288-byte L2 cap: all of them overlap. The
    /// GEMV keeps 8480 DRAM bytes (kept share 0.01696) and has 491520 L2 bytes: DRAM 0.5 + 8480 / 800 ns = 0.5106 us,
    /// Little 4 x 0.01696 x 0.5 = 0.03392 us, L2 491520 / 1000 B/ns = 0.49152 us, SM fill 2 CTAs x (424 + 24576) / 100 ns
    /// = 0.5 us (unchanged), latency 4 x 0.01696 x 0.5 + (1 + 4 x 0.98304) x 0.2 + 0.2 = 1.220352 us: still latency-bound,
    /// 1.179648 us faster. Step: 5.1 + 1.220352 us + 1 graph node x 1 us + 1
    /// programmatic x 0.5 us.
    /// </summary>
    [Test]
    public void AfterALatencyBoundKernel_ThePrefetchOverlapsFully()
    {
        var p = Step(Chase(), Gemv());
        var gemv = p.Launches[1];
        var o = gemv.Overlap!;
        Assert.That(p.Launches[0].Overlap, Is.Null, "the first kernel of the graph has no predecessor");
        Assert.That(o.PreWaitBytes, Is.EqualTo(491_520));
        Assert.That((o.ResidentCtas, o.ResidentFraction), Is.EqualTo((20L, 1.0)));
        Assert.That(o.SpareDramBytes, Is.EqualTo(3_679_680).Within(1));
        Assert.That(o.L2CapBytes, Is.EqualTo(524_288));
        Assert.That((o.Bytes, o.Limit), Is.EqualTo((491_520L, OverlapLimit.PreWaitBytes)));
        Assert.That(gemv.DramBytes, Is.EqualTo(8_480));
        Assert.That(gemv.L2Bytes, Is.EqualTo(491_520), "the overlapped bytes come from L2");
        Near(gemv.DramUs, 0.5106, "DRAM term of the bytes left");
        Near(gemv.L2Us, 0.49152, "L2 term of the overlapped bytes");
        Near(gemv.SmFillUs, 0.5, "SM fill: the same bytes reach the SM");
        Near(gemv.LatencyUs, 1.220352, "the critical warp: the overlapped share of its DRAM trips became L2 trips");
        Near(gemv.Microseconds, 1.220352, "time");
        Near(gemv.IsolatedMicroseconds, 2.4, "on its own");
        Assert.That(gemv.Bound, Is.EqualTo(TimeBound.Latency));
        Assert.That((p.GraphNodes, p.ProgrammaticNodes), Is.EqualTo((2, 1)));
        Assert.That(p.DramBytes, Is.EqualTo(320 + 500_000), "the step's DRAM traffic is the same, only earlier");
        Near(p.GapUs, 1 + 0.5, "one plain node, one programmatic");
        Near(p.TotalUs, 5.1 + 1.220352 + 1.5, "step");
    }

    /// <summary>
    /// After a DRAM-bound kernel (40 CTAs of 200 KB: 0.5 + 8 MB / 800 GB/s = 10.5 us) nothing is spare:
    /// (10500 - 500) ns x 800 GB/s - 8 MB = 0. Its 4 CTAs of 8 warps per SM leave room for the GEMV, so the DRAM is the limit.
    /// </summary>
    [Test]
    public void AfterADramBoundKernel_NothingOverlaps()
    {
        var stream = Launch("stream", 40, 256, 8_000_000, 1);
        var p = Step(stream, Gemv());
        Near(p.Launches[0].Microseconds, 10.5, "the DRAM-bound predecessor");
        Assert.That(p.Launches[0].Bound, Is.EqualTo(TimeBound.Dram));
        var o = p.Launches[1].Overlap!;
        Assert.That((o.ResidentFraction, o.SpareDramBytes), Is.EqualTo((1.0, 0L)));
        Assert.That((o.Bytes, o.Limit), Is.EqualTo((0L, OverlapLimit.PredecessorDram)));
        Assert.That(p.Launches[1].DramBytes, Is.EqualTo(500_000));
        Near(p.Launches[1].Microseconds, 2.4, "as on its own");
        Near(p.GapUs, 1.5, "the programmatic node still has the shorter gap");
    }

    /// <summary>
    /// A stage of a stage-ordered launch measured apart is predicted alone, but it runs in the composed launch's window:
    /// the spare DRAM after it is the DRAM time the composition left idle in that window, less one latency, not what its
    /// time alone leaves. The DRAM-bound stream above as such a stage with 1.0 us of idle DRAM: (1000 - 500) ns x 800 GB/s
    /// = 400000 bytes of the GEMV's 491520 pre-wait bytes; with 10.5 us idle, all of them (the L2 cap, 524288, is above).
    /// </summary>
    [Test]
    public void AfterAComposedStage_TheSpareIsTheIdleDramOfItsWindow()
    {
        var stream = KernelTimingModel.Predict(Launch("stream", 40, 256, 8_000_000, 1), Regs32, Toy);
        var gemv = KernelTimingModel.Predict(Gemv(), Regs32, Toy);
        Assert.That(KernelTimingModel.PrefetchOverlap(Toy, gemv, stream).SpareDramBytes, Is.Zero, "alone: DRAM-bound, nothing spare");
        var o = KernelTimingModel.PrefetchOverlap(Toy, gemv, stream with { ComposedDramIdleUs = 1.0 });
        Assert.That(o.SpareDramBytes, Is.EqualTo(400_000).Within(1));
        Assert.That((o.Bytes, o.Limit), Is.EqualTo((o.SpareDramBytes, OverlapLimit.PredecessorDram)));
        var idle = KernelTimingModel.PrefetchOverlap(Toy, gemv, stream with { ComposedDramIdleUs = 10.5 });
        Assert.That((idle.Bytes, idle.Limit), Is.EqualTo((491_520L, OverlapLimit.PreWaitBytes)));
    }

    /// <summary>
    /// Residency: the predecessor is 70 latency-bound CTAs of 8 warps (5.1 us, 70 KiB), 7 per SM: 56 of 64 warps and
    /// 57344 of 65536 registers taken, room for 2 GEMV CTAs of 4 warps per SM, 20 of its 40 CTAs: half of its 960 KiB of
    /// pre-wait bytes, 491520, overlap (spare (5100 - 500) x 800 - 71680 = 3608320 bytes; L2 cap 524288).
    /// </summary>
    [Test]
    public void ResidencyBesideAFullerPredecessor_LimitsTheOverlap()
    {
        var wide = Launch("wide", 70, 256, 71_680, 10, 50);
        var gemv = Gemv(grid: 40, weights: 983_040, activations: 16_960);
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, [wide, gemv], [], _ => Regs32);
        Near(p.Launches[0].Microseconds, 5.1, "the predecessor: 10 trips x 0.5 us + 50 / 0.5 ns");
        Assert.That((p.Launches[0].LastWaveCtas, p.Launches[0].Occupancy.BlocksPerSm), Is.EqualTo((70L, 8)));
        Assert.That(KernelTimingModel.BlocksBeside(Toy, p.Launches[1], p.Launches[0], 7), Is.EqualTo(2), "beside 7 CTAs of 8 warps");
        Assert.That(KernelTimingModel.BlocksBeside(Toy, p.Launches[1], p.Launches[0], 8), Is.EqualTo(0), "beside a full SM");
        Assert.That(KernelTimingModel.BlocksBeside(Toy, p.Launches[1], p.Launches[0], 0), Is.EqualTo(p.Launches[1].Occupancy.BlocksPerSm), "an empty SM: the occupancy");
        var o = p.Launches[1].Overlap!;
        Assert.That((o.ResidentCtas, o.ResidentFraction), Is.EqualTo((20L, 0.5)));
        Assert.That(o.SpareDramBytes, Is.EqualTo(3_608_320).Within(1));
        Assert.That((o.Bytes, o.Limit), Is.EqualTo((491_520L, OverlapLimit.Residency)));
        Assert.That(p.Launches[1].DramBytes, Is.EqualTo(1_000_000 - 491_520));
    }

    /// <summary>
    /// The same pair, but 20 of the GEMV's 40 CTAs exit before their wait (LaunchRecord.WaitingCtas): residency counts over
    /// the 20 that wait, which all fit beside the predecessor (2 per SM x 10 SMs), so the overlap is no longer residency-
    /// limited but L2-limited (the cap of 524288 bytes, under the spare 3608320).
    /// </summary>
    [Test]
    public void CtasThatExitBeforeTheirWait_TakeNoResidency()
    {
        var wide = Launch("wide", 70, 256, 71_680, 10, 50);
        var gemv = Gemv(grid: 40, weights: 983_040, activations: 16_960) with { WaitingCtas = 20 };
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, [wide, gemv], [], _ => Regs32);
        var o = p.Launches[1].Overlap!;
        Assert.That((o.ResidentCtas, o.ResidentFraction), Is.EqualTo((20L, 1.0)));
        Assert.That((o.Bytes, o.Limit), Is.EqualTo((524_288L, OverlapLimit.L2Capacity)));
    }

    /// <summary>
    /// A predecessor of two waves: 100 latency-bound CTAs of 8 warps (8 per SM: a full wave of 80, a tail of 20; 10 trips
    /// per warp, 5.1 us a wave, 8000 bytes a CTA). The dependent starts only when the last CTAs have started, so it
    /// shares the SMs with the tail (2 CTAs per SM leave room for 12 GEMV CTAs, not 0 as beside the full wave) and the
    /// tail's time: spare (5100 - 500) ns x 800 GB/s - 20 x 8000 = 3520000 bytes; the GEMV's 480 KiB overlap whole.
    /// </summary>
    [Test]
    public void AMultiWavePredecessor_TheLastWaveIsTheWindow()
    {
        var p = Step(Launch("waves", 100, 256, 800_000, 10, 50), Gemv());
        var pred = p.Launches[0];
        Assert.That((pred.FullWaves, pred.TailCtas, pred.LastWaveCtas), Is.EqualTo((1L, 20L, 20L)));
        Near(pred.LastWaveUs, 5.1, "the tail wave");
        Near(pred.Microseconds, 10.2, "two waves");
        Assert.That(KernelTimingModel.BlocksBeside(Toy, p.Launches[1], pred, 8), Is.EqualTo(0), "beside the full wave");
        Assert.That(KernelTimingModel.BlocksBeside(Toy, p.Launches[1], pred, 2), Is.EqualTo(12), "beside the tail");
        var o = p.Launches[1].Overlap!;
        Assert.That(o.SpareDramBytes, Is.EqualTo(3_520_000).Within(1));
        Assert.That((o.ResidentCtas, o.Bytes, o.Limit), Is.EqualTo((20L, 491_520L, OverlapLimit.PreWaitBytes)));
    }

    /// <summary>960 KiB of pre-wait bytes after the idle pointer chase: only the L2 cap, 524288 bytes, overlaps.</summary>
    [Test]
    public void TheL2Cap_LimitsTheOverlap()
    {
        var p = Step(Chase(), Gemv(weights: 983_040, activations: 16_960));
        var o = p.Launches[1].Overlap!;
        Assert.That((o.Bytes, o.Limit), Is.EqualTo((524_288L, OverlapLimit.L2Capacity)));
        Assert.That(p.Launches[1].DramBytes, Is.EqualTo(1_000_000 - 524_288));
    }

    /// <summary>
    /// In a chain the predecessor is taken as predicted in the step, its own overlap included: the first GEMV (1.220352
    /// us, 8480 DRAM bytes left of 500000) leaves (1220.352 - 500) ns x 800 GB/s - 8480 = 567801.6 bytes spare (on its own
    /// it would have been (2400 - 500) x 800 - 500000 = 1020000); the second GEMV's 960 KiB stop at the L2 cap.
    /// </summary>
    [Test]
    public void AChain_ThePredecessorCountsAsPredictedInTheStep()
    {
        var p = Step(Chase(), Gemv(), Gemv("gemv2", weights: 983_040, activations: 16_960));
        var o = p.Launches[2].Overlap!;
        Assert.That(o.SpareDramBytes, Is.EqualTo(567_801).Within(1));
        Assert.That((o.Bytes, o.Limit), Is.EqualTo((524_288L, OverlapLimit.L2Capacity)));
    }

    /// <summary>
    /// The chain breaks: a memset node between two kernels (plain gaps, no overlap); a predecessor launched without the
    /// attribute (taken not to trigger its dependents early: the full gap, no overlap); launches on a stream.
    /// </summary>
    [Test]
    public void MemsetsNonProgrammaticPredecessorsAndStreams_BreakTheOverlap()
    {
        var memset = new List<DeviceOperation> { new(DeviceOperationKind.Memset, 64, true, 1) };
        var p = Step(memset, Chase(), Gemv());
        Assert.That(p.Launches[1].Overlap, Is.Null);
        Assert.That((p.GraphNodes, p.ProgrammaticNodes), Is.EqualTo((3, 0)));
        Near(p.GapUs, 3, "three plain graph nodes");
        Near(p.Launches[1].Microseconds, 2.4, "on its own");

        var q = Step(Chase(programmatic: false), Gemv());
        Assert.That((q.Launches[1].Overlap!.Bytes, q.Launches[1].Overlap!.Limit), Is.EqualTo((0L, OverlapLimit.NoEarlyTrigger)));
        Assert.That(q.ProgrammaticNodes, Is.EqualTo(0));
        Near(q.GapUs, 2, "launched when the predecessor's CTAs exit: the full gap");
        Near(q.Launches[1].Microseconds, 2.4, "on its own");
        Assert.That(StepPredictor.Table(q, "context 9", null), Does.Contain("+ 2 graph node(s): 2 x 1 us, 0 programmatic x 0.5 us")
            .And.Contain("1 programmatic launch(es) after a kernel that does not trigger early (full gap, no overlap)"));

        var s = Step(Chase() with { InGraph = false }, Gemv() with { InGraph = false });
        Assert.That(s.Launches.All(l => l.Overlap is null) && s.ProgrammaticNodes == 0, "stream launches are not modelled as programmatic");
        Near(s.GapUs, 2 * 2, "two stream launches");
    }

    /// <summary>Without programmatic launches nothing changes: the same predictions launch by launch, the same table.</summary>
    [Test]
    public void AStepWithoutProgrammaticLaunches_IsPredictedAsBefore()
    {
        var launches = new[] { Chase(false), Gemv() with { ProgrammaticLaunch = false }, Chase(false) };
        var p = Step(launches);
        for (int i = 0; i < launches.Length; i++)
        {
            var alone = KernelTimingModel.Predict(launches[i], launches[i].Kernel == "chase" ? Regs16 : Regs32, Toy);
            Assert.That(p.Launches[i], Is.EqualTo(alone), $"launch {i}");
        }
        Assert.That((p.ProgrammaticNodes, p.OverlapBytes), Is.EqualTo((0, 0L)));
        Near(p.TotalUs, 5.1 + 2.4 + 5.1 + 3 * 1, "kernels and three plain graph nodes");
        string table = StepPredictor.Table(p, "context 9", null);
        Assert.That(table, Does.Contain("+ 3 graph node(s) x 1 us + 0 stream launch(es)").And.Not.Contain("programmatic").And.Not.Contain("overlap"));
    }

    /// <summary>The table: the programmatic nodes on the step line, the overlapped bytes per kernel row, the summary line.</summary>
    [Test]
    public void Table_ShowsProgrammaticNodesAndTheOverlap()
    {
        var p = Step(Chase(), Gemv());
        string table = StepPredictor.Table(p, "context 9", null);
        Assert.That(table, Does.Contain("+ 2 graph node(s): 1 x 1 us, 1 programmatic x 0.5 us + 0 stream launch(es)"));
        string header = table.Split('\n')[1];
        Assert.That(header, Does.Contain("overlap"));
        string gemvRow = table.Split('\n').Single(l => l.TrimStart().StartsWith("gemv", StringComparison.Ordinal));
        Assert.That(System.Text.RegularExpressions.Regex.Matches(gemvRow, "480.0 KiB").Count, Is.EqualTo(2), "the GEMV's L2 bytes and its overlapped bytes");
        Assert.That(gemvRow, Does.Contain("8.3 KiB"), "its DRAM bytes left");
        Assert.That(gemvRow, Does.Contain(" prefetch "), "no Little's-law bytes in flight for a kernel with pre-wait bytes");
        Assert.That(table, Does.Contain("programmatic dependent launch: 480.0 KiB of 480.0 KiB pre-wait bytes fetched while the kernel before ran, saving 1.2 us"));
        Assert.That(table, Does.Contain("of the 1 programmatic node(s) with pre-wait bytes, 1 overlapped fully, 0 limited by residency, 0 by the predecessor's DRAM"));
    }

    /// <summary>
    /// Scaling a 2-layer step [embed | a, memset, b | a, memset, b | head] to 3 layers: the launches are predicted again in
    /// their new order. The first layer's `a` follows the embedding (launched without the attribute: no overlap, full gap),
    /// the others follow the previous layer's `b`; each `b` follows a memset (a plain node); `head` follows the last `b`.
    /// </summary>
    [Test]
    public void ScaleLayers_RecomputesTheChainInTheNewOrder()
    {
        var embed = Launch("embed", 1, 32, 320, 10, 50, programmatic: false);
        LaunchRecord A() => Gemv("a");
        LaunchRecord B() => Chase() with { Kernel = "b" };
        var head = Gemv("head", grid: 40);
        var ops = new List<DeviceOperation> { new(DeviceOperationKind.Memset, 8, true, 2), new(DeviceOperationKind.Memset, 8, true, 4) };
        var p = StepPredictor.Predict(Toy, "decode", 1, 2, [embed, A(), B(), A(), B(), head], ops, r => r.Kernel is "a" or "head" ? Regs32 : Regs16);
        Assert.That(p.ProgrammaticNodes, Is.EqualTo(2), "the second a, head");
        var s = StepPredictor.ScaleLayers(p, 3);
        Assert.That(s.Launches.Select(l => l.Kernel), Is.EqualTo(new[] { "embed", "a", "b", "a", "b", "a", "b", "head" }));
        Assert.That(s.Operations.Select(o => o.LaunchesBefore), Is.EqualTo(new[] { 2, 4, 6 }), "each memset stays before its layer's b");
        Assert.That(s.Launches.Select(l => l.Overlap?.Limit), Is.EqualTo(new OverlapLimit?[]
            { null, OverlapLimit.NoEarlyTrigger, null, OverlapLimit.PreWaitBytes, null, OverlapLimit.PreWaitBytes, null, OverlapLimit.PreWaitBytes }));
        Assert.That((s.GraphNodes, s.ProgrammaticNodes), Is.EqualTo((11, 3)));
        Near(s.GapUs, 8 * 1 + 3 * 0.5, "eight plain nodes (embed, the first a, three b, three memsets), three programmatic");
        Assert.That(s.OverlapBytes, Is.EqualTo(3 * 491_520L), "two later a's and the head");
        Near(s.KernelUs, p.Launches[0].Microseconds + 3 * p.Launches[2].Microseconds + p.Launches[1].Microseconds + 2 * p.Launches[3].Microseconds + p.Launches[5].Microseconds,
            "embed, three b, the first a on its own, two overlapped a, the head");
    }
}
