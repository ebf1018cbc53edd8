using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Performance;

/// <summary>
/// The timing model's arithmetic on hand-computed cases (docs/timing-model.md), on a toy GPU with round numbers:
/// 10 SMs at 1 GHz, 800 GB/s achievable DRAM (1000 peak), DRAM latency 500 ns, L2 latency 200 ns, L2 1000 B/clk,
/// SM fill 100 B/clk, 64 warps / 32 blocks / 64K registers / 100 KiB shared memory per SM. Tolerances: 1e-9 relative
/// (the model is plain double arithmetic; the expected values are exact decimal sums).
/// </summary>
public class TimingModelTests
{
    internal static GpuSpec Toy => new()
    {
        Key = "toy", Name = "toy GPU", Arch = "sm_80", MemoryBytes = 1L << 30, Sms = 10, ClockGHz = 1.0,
        DramPeakGBps = 1000, DramAchievableGBps = 800, L2Bytes = 1 << 20, L2BytesPerClock = 1000, L2ResidencyFraction = 0.5,
        SmFillBytesPerClock = 100, DramLatencyNs = 500, L2LatencyNs = 200, MaxWarpsPerSm = 64, MaxBlocksPerSm = 32,
        RegistersPerSm = 65536, RegisterAllocationUnit = 256, MaxRegistersPerThread = 255, SharedPerSmBytes = 102400,
        SharedPerBlockOptinBytes = 101376, SharedAllocationUnit = 128, SharedReservedPerBlockBytes = 1024,
        IssuePerSmPerClock = 4, SingleWarpIpc = 0.5, SfuLanesPerSm = 16, LsuRequestsPerSmPerClock = 1, MmaFlopsPerClockPerSm = 1024,
        GraphNodeGapUs = 1, PdlNodeGapUs = 0.5, StreamLaunchGapUs = 2, SmallCopyUs = 2, HostCopyGBps = 10, SyncWakeUs = 1,
    };

    static LaunchRecord Launch(uint grid, uint block, long dramBytes, long warpDramTrips, long maxWarpInstructions = 0, long l2ReuseBytes = 0,
        long warpL2Trips = 0, string kernel = "k") => new()
    {
        Kernel = kernel, Grid = new Dim3(grid), Block = new Dim3(block), DistinctSectors = dramBytes / 32,
        GlobalLoadSectors = (dramBytes + l2ReuseBytes) / 32, Warps = grid * ((block + 31) / 32),
        DramRoundTrips = warpDramTrips * grid * ((block + 31) / 32), MaxWarpDramRoundTrips = warpDramTrips,
        L2RoundTrips = warpL2Trips * grid * ((block + 31) / 32), MaxWarpL2RoundTrips = warpL2Trips,
        MaxWarpInstructions = maxWarpInstructions, WarpInstructions = maxWarpInstructions * grid * ((block + 31) / 32),
    };

    static void Near(double actual, double expected, string what) => Assert.That(actual, Is.EqualTo(expected).Within(1e-9 * Math.Max(1, Math.Abs(expected))), what);

    [Test]
    public void Occupancy_LimitedByRegisters_WithTheAllocationGranularity()
    {
        // 128 registers: 4096 per warp, 16 warps per SM, 2 blocks of 8 warps
        Assert.That(KernelTimingModel.Occupancy(Toy, 256, 128, 0), Is.EqualTo(new Occupancy(2, 8, OccupancyLimit.Registers)));
        // 65 registers: 65 x 32 = 2080 rounds up to 2304 per warp; 65536 / 2304 = 28 warps; 3 blocks of 8 warps
        Assert.That(KernelTimingModel.Occupancy(Toy, 256, 65, 0), Is.EqualTo(new Occupancy(3, 8, OccupancyLimit.Registers)));
        // 32 registers: registers allow 64 warps, the warp limit 64 / 8 = 8 blocks binds first
        Assert.That(KernelTimingModel.Occupancy(Toy, 256, 32, 0), Is.EqualTo(new Occupancy(8, 8, OccupancyLimit.Warps)));
        // tiny blocks: the 32-block limit
        Assert.That(KernelTimingModel.Occupancy(Toy, 32, 16, 0), Is.EqualTo(new Occupancy(32, 1, OccupancyLimit.Blocks)));
    }

    [Test]
    public void Occupancy_LimitedBySharedMemory_WithTheReservedKilobyte()
    {
        // 30000 bytes round up to 30080, + 1024 reserved = 31104 per block; 102400 / 31104 = 3 blocks
        Assert.That(KernelTimingModel.Occupancy(Toy, 128, 32, 30000), Is.EqualTo(new Occupancy(3, 4, OccupancyLimit.SharedMemory)));
        // 33000 bytes -> 33024 + 1024 = 34048: 3 blocks (102144 bytes) still fit
        Assert.That(KernelTimingModel.Occupancy(Toy, 128, 32, 33000).BlocksPerSm, Is.EqualTo(3));
        // 33200 -> 33280 + 1024 = 34304: only 2
        Assert.That(KernelTimingModel.Occupancy(Toy, 128, 32, 33200).BlocksPerSm, Is.EqualTo(2));
        Assert.That(() => KernelTimingModel.Occupancy(Toy, 128, 32, 101377), Throws.ArgumentException.With.Message.Contains("does not fit"));
    }

    /// <summary>
    /// 100 CTAs of 8 warps, 32 registers: 8 per SM, so a wave of 80 and a tail of 20. 800 KB of DRAM per CTA, 4 trips per
    /// warp. Full wave: 500 ns + 64 MB / 800 GB/s = 80.5 us (SM fill 6.4 MB / 100 B/ns = 64 us, issue 1.6 us, latency
    /// 4 x 0.5 + 100 / 0.5 ns = 2.2 us). Tail: 500 ns + 16 MB / 800 GB/s = 20.5 us. Total 101 us, DRAM-bound.
    /// </summary>
    [Test]
    public void PureBandwidthKernel_TwoWaves()
    {
        var r = Launch(100, 256, dramBytes: 100 * 800_000L, warpDramTrips: 4, maxWarpInstructions: 100);
        var p = KernelTimingModel.Predict(r, new KernelResources(32, 0), Toy);
        Assert.That((p.FullWaves, p.TailCtas), Is.EqualTo((1L, 20L)));
        Assert.That(p.DramBytes, Is.EqualTo(80_000_000L));
        Near(p.DramUs, 80.5 + 20.5, "DRAM term over both waves");
        Near(p.SmFillUs, 64 + 16, "SM fill: 8 then 2 CTAs of 800 KB at 100 B/ns");
        Near(p.LatencyUs, 2 * 2.2, "critical warp in each wave");
        Near(p.Microseconds, 101.0, "time");
        Assert.That(p.Bound, Is.EqualTo(TimeBound.Dram));
        // Little's law: 8 CTAs x 8 warps x (80 MB / 3200 trips = 25000 bytes per warp trip) in flight per SM
        Near(p.InFlightBytesPerSm, 64 * 25_000.0, "bytes in flight per SM");
        Near(p.LittleGBps, 10 * 64 * 25_000.0 / 500, "Little's-law bandwidth (bytes per ns)");
    }

    /// <summary>
    /// One warp chasing 10 dependent pointers (320 bytes, 50 instructions): latency 10 x 500 ns + 50 / 0.5 ns = 5.1 us;
    /// the DRAM term is 5 us (Little: 10 trips x 500 ns), bandwidth negligible. Latency-bound.
    /// </summary>
    [Test]
    public void LatencyBoundOneCtaKernel()
    {
        var r = Launch(1, 32, dramBytes: 320, warpDramTrips: 10, maxWarpInstructions: 50);
        var p = KernelTimingModel.Predict(r, new KernelResources(16, 0), Toy);
        Assert.That((p.FullWaves, p.TailCtas), Is.EqualTo((0L, 1L)));
        Near(p.DramUs, 5.0, "Little: 10 trips at 500 ns");
        Near(p.Microseconds, 5.1, "time");
        Assert.That(p.Bound, Is.EqualTo(TimeBound.Latency));
    }

    /// <summary>
    /// One CTA of 32 warps making 66 passes over 300 KiB (the first from DRAM, 65 re-reads from L2): the SM's fill path
    /// bounds it: (307200 + 65 x 307200) bytes / 100 B/ns = 202.752 us (issue: 32 x 20000 instr / 4 per clock = 160 us;
    /// L2 bandwidth 19.968 us; latency 0.5 + 65 x 0.2 + 20000 / 0.5 ns = 53.5 us).
    /// </summary>
    [Test]
    public void OneCtaManyPassesOverL2_IsBoundByTheSmFillPath()
    {
        var r = Launch(1, 1024, dramBytes: 307200, warpDramTrips: 1, maxWarpInstructions: 20000, l2ReuseBytes: 65 * 307200L, warpL2Trips: 65);
        var p = KernelTimingModel.Predict(r, new KernelResources(32, 0), Toy);
        Assert.That(p.L2Bytes, Is.EqualTo(65 * 307200L));
        Near(p.SmFillUs, 202.752, "SM fill");
        Near(p.IssueUs, 160.0, "issue");
        Near(p.L2Us, 19.968, "L2 bandwidth");
        Near(p.LatencyUs, 53.5, "critical warp");
        Near(p.Microseconds, 202.752, "time");
        Assert.That(p.Bound, Is.EqualTo(TimeBound.SmFill));
    }

    /// <summary>
    /// Wave quantisation: 80 CTAs (one full wave of 8 per SM) take 10.5 us (500 ns + 8 MB / 800 GB/s); one more CTA adds a
    /// whole tail wave of 1 us (its 100 KB at one SM's 100 B/ns); 160 CTAs are exactly two waves.
    /// </summary>
    /// <summary>
    /// Re-reads within a launch whose 4 MiB footprint exceeds the toy's 1 MiB L2 (section 2): 1 MiB of re-reads of a 4 KiB
    /// set come back every 32 x 128 x 4 MiB / 1 MiB = 16 KiB of traffic and hit; the same re-reads of a 1 MiB set come back
    /// every 4 MiB, more than the L2, and miss in proportion 1 - 1 MiB / 4 MiB = 0.75; without the set (a hand-built
    /// record) the footprint rule alone applies, as before the set was counted.
    /// </summary>
    [Test]
    public void RereadsInALaunchLargerThanL2_MissOnlyWhenTheirSetComesBackTooRarely()
    {
        const long MiB = 1 << 20;
        var r = Launch(64, 128, 4 * MiB, 1, l2ReuseBytes: MiB);
        var res = new KernelResources(32, 0);
        var hot = r with { RereadSectors = 4096 / 32 };
        var cold = r with { RereadSectors = MiB / 32 };
        Near(KernelTimingModel.RereadSpacingBytes(hot), 16 * 1024, "hot set: spacing");
        Near(KernelTimingModel.RereadSpacingBytes(cold), 4 * MiB, "large set: spacing");
        Assert.That(KernelTimingModel.Predict(hot, res, Toy).DramBytes, Is.EqualTo(4 * MiB), "hot set: the re-reads hit L2");
        Assert.That(KernelTimingModel.Predict(cold, res, Toy).DramBytes, Is.EqualTo(4 * MiB + 3 * MiB / 4), "large set: 3/4 of the re-reads miss");
        Assert.That(KernelTimingModel.Predict(r, res, Toy).DramBytes, Is.EqualTo(4 * MiB + 3 * MiB / 4), "no set counted: the footprint rule");
        Assert.That(KernelTimingModel.Predict(hot with { DistinctSectors = MiB / 2 / 32, GlobalLoadSectors = (MiB / 2 + MiB) / 32 }, res, Toy).DramBytes,
            Is.EqualTo(MiB / 2), "a footprint within the L2: every re-read hits, whatever the set");
    }

    /// <summary>
    /// A launch's tail (the chain from a warp's tail mark on: the ticket and the last CTA's merge) comes after its waves.
    /// PureBandwidthKernel_TwoWaves with a tail of 3 L2 round trips and 50 instructions: 3 x 200 ns + 50 / 0.5 ns = 0.7 us,
    /// so 101.7 us, and the last wave (20.5 us) ends 0.7 us later, which the next kernel's prefetch may use. The one-warp
    /// pointer chase of LatencyBoundOneCtaKernel with its last 4 trips and 20 instructions marked as its tail: the latency
    /// term is the chain before the mark (6 x 500 ns + 30 / 0.5 ns = 3.06 us) and the tail the rest (4 x 500 ns + 20 / 0.5 ns
    /// = 2.04 us): 5.1 us as without the mark, not counted twice (the DRAM term's Little's law leaves the tail's 4 trips to
    /// it: 6 x 500 ns = 3 us).
    /// </summary>
    [Test]
    public void Tail_ComesAfterTheWaves_AndTheLatencyTermIsTheChainBeforeIt()
    {
        var stream = Launch(100, 256, dramBytes: 100 * 800_000L, warpDramTrips: 4, maxWarpInstructions: 100) with
        {
            MaxWarpTailL2RoundTrips = 3, MaxWarpTailInstructions = 50, MaxWarpPreTailDramRoundTrips = 4, MaxWarpPreTailInstructions = 100,
        };
        var p = KernelTimingModel.Predict(stream, new KernelResources(32, 0), Toy);
        Near(p.TailUs, 0.7, "tail: 3 L2 trips and 50 instructions");
        Near(p.Microseconds, 101.7, "the two waves, then the tail");
        Near(p.LastWaveUs, 21.2, "the last wave's window includes the tail");
        Assert.That(p.Bound, Is.EqualTo(TimeBound.Dram));

        var chase = Launch(1, 32, dramBytes: 320, warpDramTrips: 10, maxWarpInstructions: 50) with
        {
            MaxWarpTailDramRoundTrips = 4, TailDramRoundTrips = 4, MaxWarpTailInstructions = 20, MaxWarpPreTailDramRoundTrips = 6, MaxWarpPreTailInstructions = 30,
        };
        var q = KernelTimingModel.Predict(chase, new KernelResources(16, 0), Toy);
        Near(q.LatencyUs, 3.06, "latency: the chain before the mark");
        Near(q.TailUs, 2.04, "tail: the chain from it on");
        Near(q.Microseconds, 5.1, "the whole chain once");
        var unmarked = KernelTimingModel.Predict(Launch(1, 32, dramBytes: 320, warpDramTrips: 10, maxWarpInstructions: 50), new KernelResources(16, 0), Toy);
        Assert.That(unmarked.TailUs, Is.Zero, "no mark: no tail");
    }

    /// <summary>
    /// A head (the chain before a CTA's stream mark, stream_begin(): the experts' ids and tile ticket) delays each wave's
    /// DRAM stream: the stream of the tail test above (two waves, 80.5 and 20.5 us) with a head of 2 L2 trips and 100
    /// instructions (0.4 + 0.2 us) takes 81.1 + 21.1 = 102.2 us, all of it DRAM term. A kernel that moves no DRAM bytes
    /// keeps its prediction: the head is in its chain already.
    /// </summary>
    [Test]
    public void Head_DelaysEachWavesDramStream()
    {
        var stream = Launch(100, 256, dramBytes: 100 * 800_000L, warpDramTrips: 4, maxWarpInstructions: 100);
        var headed = stream with { MaxWarpHeadL2RoundTrips = 2, MaxWarpHeadInstructions = 100 };
        var p = KernelTimingModel.Predict(stream, new KernelResources(32, 0), Toy);
        var q = KernelTimingModel.Predict(headed, new KernelResources(32, 0), Toy);
        Near(p.Microseconds, 101.0, "without a head: 80.5 + 20.5 us");
        Near(q.Microseconds, 102.2, "each wave's stream after its 0.6 us head");
        Near(q.DramUs, 102.2, "in the DRAM term");
        Assert.That(q.Bound, Is.EqualTo(TimeBound.Dram));
        var l2Only = Launch(10, 32, dramBytes: 0, warpDramTrips: 0, maxWarpInstructions: 50, warpL2Trips: 3);
        Near(KernelTimingModel.Predict(l2Only with { MaxWarpHeadL2RoundTrips = 2, MaxWarpHeadInstructions = 20 }, new KernelResources(16, 0), Toy).Microseconds,
            KernelTimingModel.Predict(l2Only, new KernelResources(16, 0), Toy).Microseconds, "no DRAM bytes: no stream to delay");
    }

    /// <summary>
    /// Bytes a headed kernel requests before its wait (a later kernel's weights fetched ahead: moe_experts_gemv) stream during
    /// its head. The headed stream above (two waves, 0.6 us heads) with 4,000 pre-wait bytes per CTA: the first wave's 80
    /// CTAs request 320 KB, 0.4 us at 800 GB/s, so 0.2 us of its head leaves the DRAM idle; the tail wave's 20 CTAs 80 KB,
    /// 0.1 us, so 0.5 us: 80.5 + 0.2 + 20.5 + 0.5 = 101.7 us. At 40,000 bytes per CTA both heads are full: 101.0 us, the
    /// stream with no head. A kernel without a head gains nothing from its pre-wait bytes (they are its DRAM bytes).
    /// </summary>
    [Test]
    public void PreWaitBytes_FillTheHead()
    {
        var stream = Launch(100, 256, dramBytes: 100 * 800_000L, warpDramTrips: 4, maxWarpInstructions: 100);
        var headed = stream with { MaxWarpHeadL2RoundTrips = 2, MaxWarpHeadInstructions = 100 };
        var res = new KernelResources(32, 0);
        Near(KernelTimingModel.Predict(headed with { PreWaitSectors = 100 * 4_000 / 32 }, res, Toy).Microseconds, 101.7, "heads partly filled");
        Near(KernelTimingModel.Predict(headed with { PreWaitSectors = 100 * 40_000 / 32 }, res, Toy).Microseconds, 101.0, "heads full: no idle DRAM");
        Near(KernelTimingModel.Predict(stream with { PreWaitSectors = 100 * 40_000 / 32 }, res, Toy).Microseconds, 101.0, "no head: as before");
        // pre-wait bytes fetched in the kernel before's shadow are in L2 already: they fill nothing (all 400 KB of them
        // overlapped: 79.6 + 0.5 + 0.6 and 19.9 + 0.5 + 0.6)
        Near(KernelTimingModel.Predict(headed with { PreWaitSectors = 100 * 4_000 / 32 }, res, Toy, overlappedBytes: 400_000).Microseconds, 101.7,
            "overlapped: the full heads, on fewer bytes");
        Near(KernelTimingModel.Predict(headed with { PreWaitSectors = 100 * 40_000 / 32 }, res, Toy, overlappedBytes: 2_000_000).Microseconds, 101.0 - 2.5 + 0.1,
            "2 MB of 4 MB overlapped: 2 MB fewer bytes (2.5 us); the first wave's 1.6 MB (2 us) fills its head, the tail's 0.4 MB (0.5 us) its 0.6 us but 0.1");
    }

    /// <summary>
    /// Bytes a launch prefetched with evict_last for a later kernel (PersistingSectors) are DRAM bytes of the launch but no
    /// load of it moves them into its SMs: 10 CTAs (one per SM) of 100 KB each, 40 KB of it such a prefetch, fill their
    /// SMs with 60 KB at 100 B/ns (0.6 us, not 1.0) and take 0.6 MB through the L2 at 1000 B/ns as a stage; the DRAM term
    /// still carries all 1 MB (0.5 + 1.25 us).
    /// </summary>
    [Test]
    public void PrefetchOnlyBytes_CountInTheDram_NotInTheSmFillOrTheTransfer()
    {
        var r = Launch(10, 32, dramBytes: 1_000_000, warpDramTrips: 1) with { PersistingSectors = 400_000 / 32 };
        var res = new KernelResources(32, 0);
        var p = KernelTimingModel.Predict(r, res, Toy);
        Assert.That(p.PrefetchOnlyBytes, Is.EqualTo(400_000));
        Assert.That(p.LoadedBytes, Is.EqualTo(600_000));
        Near(p.SmFillUs, 0.6, "SM fill: the 60 KB each CTA loads");
        Near(p.DramUs, 1.75, "DRAM: every byte, prefetched or loaded");
        Near(KernelTimingModel.Predict(r with { PersistingSectors = 0 }, res, Toy).SmFillUs, 1.0, "without the prefetch: all 100 KB loaded");
        var stage = PersistentWhatIf.Stage(Toy, p, p.DramBytes, 0, -1);
        Assert.That(stage.TransferBytes, Is.EqualTo(600_000));
        Near(stage.TransferUs, 0.6, "the stage's L2-to-SM transfer: 0.6 MB at 1000 B/ns (and the fill, 0.6)");
    }

    /// <summary>
    /// With the warps' own tails recorded (LaunchRecord.TailChains), the tail is the longest of them, not a chain of the
    /// maxima: one warp's 3 L2 trips and 10 instructions (0.6 + 0.02 us) and another's 1 trip and 200 instructions
    /// (0.2 + 0.4 us) give 0.62 us, where the maxima (3 trips, 200 instructions) would give 1.0.
    /// </summary>
    [Test]
    public void Tail_IsTheLongestWarpsOwnChain_NotTheMaximaOfDifferentWarps()
    {
        var stream = Launch(100, 256, dramBytes: 100 * 800_000L, warpDramTrips: 4, maxWarpInstructions: 250) with
        {
            MaxWarpTailL2RoundTrips = 3, MaxWarpTailInstructions = 200, MaxWarpPreTailDramRoundTrips = 4, MaxWarpPreTailInstructions = 100,
        };
        Near(KernelTimingModel.Predict(stream, new KernelResources(32, 0), Toy).TailUs, 1.0, "maxima alone (a record built by hand)");
        var chains = stream with { TailChains = [new TailChain(0, 3, 10), new TailChain(0, 1, 200)] };
        Near(KernelTimingModel.Predict(chains, new KernelResources(32, 0), Toy).TailUs, 0.62, "the longer of the two warps' tails");
    }

    /// <summary>The frontier keeps the chains no other covers, and past its cap one chain of the maxima, which covers all.</summary>
    [Test]
    public void TailChainFrontier_KeepsTheUncoveredChains()
    {
        var f = new TailChainFrontier();
        f.Add(new TailChain(1, 0, 20));
        f.Add(new TailChain(0, 0, 250));
        f.Add(new TailChain(0, 0, 100));   // covered by (0, 0, 250)
        f.Add(new TailChain(1, 0, 30));    // covers (1, 0, 20)
        Assert.That(f.ToArray(), Is.EquivalentTo(new[] { new TailChain(0, 0, 250), new TailChain(1, 0, 30) }));
        var other = new TailChainFrontier();
        other.Add(new TailChain(0, 2, 5));
        f.Add(other);
        Assert.That(f.Count, Is.EqualTo(3), "merged: nothing covers (0, 2, 5)");
        var many = new TailChainFrontier();
        for (int i = 0; i <= TailChainFrontier.MaxChains; i++) many.Add(new TailChain(i, 0, 100 - i));   // none covers another
        Assert.That(many.ToArray(), Is.EqualTo(new[] { new TailChain(TailChainFrontier.MaxChains, 0, 100) }), "past the cap: the maxima");
    }

    [Test]
    public void TailEffect_OneCtaMoreAddsAWave()
    {
        KernelPrediction P(uint grid) => KernelTimingModel.Predict(Launch(grid, 256, dramBytes: grid * 100_000L, warpDramTrips: 1), new KernelResources(32, 0), Toy);
        Near(P(80).Microseconds, 10.5, "one full wave");
        Near(P(81).Microseconds, 11.5, "a full wave and a one-CTA tail");
        Assert.That(P(81).TailCtas, Is.EqualTo(1));
        Near(P(160).Microseconds, 21.0, "two full waves");
    }

    [Test]
    public void Step_SumsKernelsGapsCopiesAndSync()
    {
        var k = Launch(1, 32, dramBytes: 320, warpDramTrips: 10, maxWarpInstructions: 50) with { InGraph = true };   // 5.1 us each
        var ops = new List<DeviceOperation>
        {
            new(DeviceOperationKind.CopyToDevice, 40_000, false, 0),          // 2 us + 40000 B / 10 GB/s = 6 us
            new(DeviceOperationKind.Memset, 64, true, 1),                      // a graph node
            new(DeviceOperationKind.CopyToHost, 10_000, false, 2),             // 2 + 1 = 3 us
        };
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, [k, k], ops, _ => new KernelResources(16, 0));
        Assert.That((p.GraphNodes, p.StreamNodes, p.HostCopies), Is.EqualTo((3, 0, 2)));
        Near(p.KernelUs, 10.2, "kernels");
        Near(p.GapUs, 3.0, "three graph nodes at 1 us");
        Near(p.CopyUs, 9.0, "copies");
        Near(p.TotalUs, 10.2 + 3 + 9 + 1, "total with the 1 us wake-up");
        Near(p.TokensPerSecond, 1e6 / 23.2, "tok/s");
        string table = StepPredictor.Table(p, "context 9", minimumBytes: 1_000_000);
        Assert.That(table, Does.Contain("PREDICTED").And.Contain("tok/s predicted").And.Contain("roofline"));
        // roofline: 1 MB / 1000 GB/s = 1 us -> 1,000,000 tok/s
        Assert.That(table, Does.Contain("1.0 us: 1000000 tok/s"));
    }

    /// <summary>
    /// A pipelined step (docs/architecture.md, "Pipelined decode"): its host copies ran on streams other than its kernels'
    /// (stream 3), so they and the host's wake-up are off its timeline; the synchronous figure still counts them.
    /// </summary>
    [Test]
    public void Step_CopiesOnOtherStreams_AreOffTheTimeline()
    {
        var k = Launch(1, 32, dramBytes: 320, warpDramTrips: 10, maxWarpInstructions: 50) with { InGraph = true, Stream = 3 };   // 5.1 us each
        var ops = new List<DeviceOperation>
        {
            new(DeviceOperationKind.CopyToDevice, 40_000, false, 0, Stream: 1),   // the input stream: 6 us beside the kernels
            new(DeviceOperationKind.CopyToHost, 10_000, false, 2, Stream: 2),     // the result stream: 3 us beside them
        };
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, [k, k], ops, _ => new KernelResources(16, 0));
        Assert.That((p.KernelStream, p.HostCopies, p.OverlappedHostCopies), Is.EqualTo((3, 0, 2)));
        Near(p.CopyUs, 0, "no copy on the step's stream");
        Near(p.SyncUs, 0, "the host wakes while the next step runs");
        Near(p.TotalUs, 10.2 + 2, "the kernels and their two graph nodes");
        Near(p.SynchronousUs, 10.2 + 2 + 9 + 1, "as one synchronous step: the copies and the wake-up");
        string table = StepPredictor.Table(p, "context 9", minimumBytes: 1_000_000);
        Assert.That(table, Does.Contain("0 host copies 0.0 us (2 more on the input and result streams, beside the kernels)").And.Contain("as one synchronous step"));
        // the same copies on the kernels' stream: on the timeline, as Step_SumsKernelsGapsCopiesAndSync
        var onStream = StepPredictor.Predict(Toy, "decode", 1, 1, [k, k], [.. ops.Select(o => o with { Stream = 3 })], _ => new KernelResources(16, 0));
        Near(onStream.TotalUs, p.SynchronousUs, "on the kernels' stream");
        Assert.That(StepPredictor.Table(onStream, "context 9", minimumBytes: 1_000_000), Does.Not.Contain("as one synchronous step"));
    }

    [Test]
    public void TermsTable_ShowsEachTermAndTheCriticalWarp()
    {
        // one warp: 10 DRAM trips x 500 ns + 3 L2 trips x 200 ns + 50 instructions / 0.5 IPC / 1 GHz = 5.6 + 0.1 = 5.7 us of
        // latency; DRAM: Little's law 10 trips x 500 ns = 5.0 us (above 500 ns + 320 B / 800 GB/s); issue: 50 / min(4, 0.5)
        // clocks = 0.1 us; L2 and fill ~0
        var k = Launch(1, 32, dramBytes: 320, warpDramTrips: 10, maxWarpInstructions: 50, warpL2Trips: 3, kernel: "chain") with { InGraph = true };
        var p = StepPredictor.Predict(Toy, "decode", 1, 1, [k, k], [], _ => new KernelResources(16, 0));
        string table = StepPredictor.TermsTable(p);
        Assert.That(table, Does.Contain("PREDICTED"));
        string row = table.Split('\n').Single(l => l.TrimStart().StartsWith("chain", StringComparison.Ordinal));
        Assert.That(row.Split(' ', StringSplitOptions.RemoveEmptyEntries),
            Is.EqualTo(new[] { "chain", "2", "1", "5.0", "0.0", "0.0", "0.1", "5.7", "0.0", "10", "3", "50", "0.1" }), row);
    }

    [Test]
    public void ScaleLayers_RepeatsTheLayerLaunchesAndTheirOperations()
    {
        LaunchRecord L(string k, uint grid = 1, long dram = 320) => Launch(grid, 32, dram, 1, kernel: k) with { InGraph = true };
        // the second layer's "a" moves less (as when the first layer's kernel had nothing fetched ahead for it)
        var launches = new[] { L("embed"), L("a"), L("b", 2), L("c"), L("a", dram: 64), L("b", 2), L("c"), L("norm"), L("head", 4) };
        Assert.That(StepPredictor.FindLayers(launches, 2), Is.EqualTo(((int, int)?)(1, 3)));
        Assert.That(StepPredictor.FindLayers(launches.Select((l, i) => i == 5 ? l with { Grid = new Dim3(3) } : l).ToList(), 2), Is.Null, "layers of different shapes");
        var ops = new List<DeviceOperation> { new(DeviceOperationKind.CopyToDevice, 4, false, 0), new(DeviceOperationKind.Memset, 8, true, 2), new(DeviceOperationKind.Memset, 8, true, 5) };
        var p = StepPredictor.Predict(Toy, "decode", 1, 2, launches, ops, _ => new KernelResources(16, 0));
        var s = StepPredictor.ScaleLayers(p, 5);
        Assert.That(s.Layers, Is.EqualTo(5));
        Assert.That(s.Launches.Select(l => l.Kernel), Is.EqualTo(new[] { "embed" }.Concat(Enumerable.Repeat(new[] { "a", "b", "c" }, 5).SelectMany(x => x)).Concat(["norm", "head"])));
        Assert.That(s.Operations.Count(o => o.Kind == DeviceOperationKind.Memset), Is.EqualTo(5), "one memset per layer");
        Assert.That(s.GraphNodes, Is.EqualTo(18 + 5));
        Assert.That(s.Launches.Where(l => l.Kernel == "a").Select(l => l.DramBytes), Is.EqualTo(new long[] { 320, 64, 64, 64, 64 }),
            "the first layer as it ran, then the slice's last layer repeated");
        double Us(int from, int count) => p.Launches.Skip(from).Take(count).Sum(l => l.Microseconds);
        Near(s.KernelUs, Us(0, 4) + 4 * Us(4, 3) + Us(7, 2), "embed, layer 0, 4 x layer 1, the suffix (no programmatic overlap here)");
        Assert.That(() => StepPredictor.ScaleLayers(p with { Launches = p.Launches.Take(6).ToList() }, 4), Throws.ArgumentException.With.Message.Contains("--scale-layers"));
    }

    /// <summary>
    /// The stages of a stage-ordered launch measured apart are one launch: a layer never starts or ends between them. A
    /// 2-layer step whose second layer runs other kernels (the experts' follow-on qkv beside the attention block, which
    /// then runs unfused in the next layer) has no layers to scale; before, stage 0 and stage 1 of the block (the same
    /// kernel and block) passed for two one-launch layers, and the scaled step repeated stage 0 47 times.
    /// </summary>
    [Test]
    public void FindLayers_NeverSplitsAStageOrderedLaunch()
    {
        LaunchRecord L(string k, uint grid = 1) => Launch(grid, 32, 320, 1, kernel: k) with { InGraph = true };
        LaunchRecord S(int index) => L("blk", 4) with { Stage = new LaunchStage(index, 3) };
        var alike = new[] { L("embed"), S(0), S(1), S(2), L("e", 8), S(0), S(1), S(2), L("e", 8), L("head", 4) };
        Assert.That(StepPredictor.FindLayers(alike, 2), Is.EqualTo(((int, int)?)(1, 4)));
        var unlike = new[] { L("embed"), S(0), S(1), S(2), L("e", 6), L("attn", 2), L("gemv", 2), L("router", 2), L("e", 8), L("head", 4) };
        Assert.That(StepPredictor.FindLayers(unlike, 2), Is.Null, "stage 0 and stage 1 are not two layers");
        Assert.That(StepPredictor.FindLayers(unlike, 2, lastLayerApart: true), Is.Null, "nor with the last layer apart");
        var p = StepPredictor.Predict(Toy, "decode", 1, 2, unlike, [], _ => new KernelResources(16, 0));
        Assert.That(() => StepPredictor.ScaleLayers(p, 48), Throws.ArgumentException.With.Message.Contains("--scale-layers"));
    }

    /// <summary>
    /// A step whose last layer alone has other launch shapes (the experts launch "c" of every other layer also runs the next
    /// layer's qkv projection: a larger grid; the first layer's qkv "q" is a launch of its own, in the prefix): the strict
    /// split fails, the split with the last layer apart finds it, and scaling repeats the layer before the last and keeps
    /// the last one last.
    /// </summary>
    [Test]
    public void ScaleLayers_WithTheLastLayerApart_RepeatsTheLayerBeforeIt()
    {
        LaunchRecord L(string k, uint grid = 1, long dram = 320) => Launch(grid, 32, dram, 1, kernel: k) with { InGraph = true };
        var launches = new[] { L("embed"), L("q", 2), L("a"), L("b", 2), L("c", 6, dram: 640), L("a"), L("b", 2), L("c", 4), L("head", 4) };
        Assert.That(StepPredictor.FindLayers(launches, 2), Is.Null, "the layers' shapes differ");
        Assert.That(StepPredictor.FindLayers(launches, 2, lastLayerApart: true), Is.EqualTo(((int, int)?)(2, 3)));
        Assert.That(StepPredictor.FindLayers(launches.Select((l, i) => i == 6 ? l with { Kernel = "x" } : l).ToList(), 2, lastLayerApart: true), Is.Null,
            "the last layer must still run the same kernels");
        Assert.That(StepPredictor.FindLayers(launches, 1, lastLayerApart: true), Is.Null, "one layer has nothing apart");
        var p = StepPredictor.Predict(Toy, "decode", 1, 2, launches, [], _ => new KernelResources(16, 0));
        var s = StepPredictor.ScaleLayers(p, 4);
        Assert.That(s.Launches.Select(l => l.Kernel), Is.EqualTo(new[] { "embed", "q" }.Concat(Enumerable.Repeat(new[] { "a", "b", "c" }, 4).SelectMany(x => x)).Concat(["head"])));
        Assert.That(s.Launches.Where(l => l.Kernel == "c").Select(l => l.Launch.Grid.X), Is.EqualTo(new uint[] { 6, 6, 6, 4 }),
            "the first layer repeated for all but the last, the last layer as it ran");
        double Us(int from, int count) => p.Launches.Skip(from).Take(count).Sum(l => l.Microseconds);
        Near(s.KernelUs, Us(0, 2) + 3 * Us(2, 3) + Us(5, 4), "embed and q, 3 x layer 0, layer 1 and the head");
    }

    /// <summary>The shipped descriptions parse, have the five GPUs, and every number of each has a stated source.</summary>
    [Test]
    public void Catalog_EveryNumberHasASource()
    {
        Assert.That(GpuCatalog.All.Select(g => g.Key), Is.EquivalentTo(new[] { "a100", "h100", "h200", "rtx4090", "l40s" }));
        foreach (var g in GpuCatalog.All)
            foreach (string field in GpuCatalog.NumericFields())
                Assert.That(g.Sources.TryGetValue(field, out var src) && !string.IsNullOrWhiteSpace(src), $"{g.Key}.{field} has no source");
        var h100 = GpuCatalog.Get("H100");
        Assert.That((h100.Sms, h100.Arch, h100.DramPeakGBps), Is.EqualTo((132, "sm_90", 3350.0)));
        // the derived clock: 989.4 TFLOPS dense BF16 / (132 x 4096 FLOP/clock)
        Assert.That(h100.ClockGHz, Is.EqualTo(989.4e12 / (132 * 4096.0) / 1e9).Within(0.01));
        Assert.That(GpuCatalog.ForDeviceName("NVIDIA H100 80GB HBM3")?.Key, Is.EqualTo("h100"));
        Assert.That(GpuCatalog.ForDeviceName("NVIDIA GeForce RTX 3090"), Is.Null);
        Assert.That(() => GpuCatalog.Get("v100"), Throws.ArgumentException.With.Message.Contains("known: a100, h100, h200, rtx4090, l40s"));
    }

    /// <summary>
    /// `profile --assume NAME=VALUE`: the named numbers change (and only they), the prediction follows the changed gap, the
    /// table names each change with its shipped value, and bad names or values get a clear error.
    /// </summary>
    [Test]
    public void Assumptions_ReplaceTheNamedNumbers_AndThePredictionSaysSo()
    {
        var h100 = GpuCatalog.Get("h100");
        var a = GpuCatalog.WithAssumptions(h100, [("pdlNodeGapUs", "0.3"), ("dramLatencyNs", "450"), ("sms", "100"), ("pdlNodeGapUs", "0.25")]);
        Assert.That((a.PdlNodeGapUs, a.DramLatencyNs, a.Sms), Is.EqualTo((0.25, 450.0, 100)), "the last of a repeated name wins");
        Assert.That(a.Assumed, Is.EqualTo(new[] { "dramLatencyNs 450 (gpus.json: 600)", "sms 100 (gpus.json: 132)", "pdlNodeGapUs 0.25 (gpus.json: 0.5)" }));
        Assert.That(a with { PdlNodeGapUs = h100.PdlNodeGapUs, DramLatencyNs = h100.DramLatencyNs, Sms = h100.Sms, Assumed = [] }, Is.EqualTo(h100).Using<GpuSpec>(SameNumbers),
            "every other number as shipped");
        Assert.That(GpuCatalog.WithAssumptions(h100, []), Is.SameAs(h100));
        Assert.That(GpuCatalog.WithAssumptions(h100, [("graphNodeGapUs", "0")]).GraphNodeGapUs, Is.EqualTo(0.0), "a gap may be 0");

        // two chained graph nodes: the second's gap follows the assumption (1 us on Toy, assumed 0.25)
        var k = Launch(1, 32, dramBytes: 320, warpDramTrips: 10, maxWarpInstructions: 50) with { InGraph = true };
        var toy = GpuCatalog.WithAssumptions(Toy, [("graphNodeGapUs", "0.25")]);
        var p = StepPredictor.Predict(toy, "decode", 1, 1, [k, k], [], _ => new KernelResources(16, 0));
        Near(p.GapUs, 0.5, "two graph nodes at the assumed 0.25 us");
        Assert.That(StepPredictor.Table(p, "context 9", null), Does.Contain("not measured; assumed: graphNodeGapUs 0.25 (gpus.json: 1)"));

        Assert.That(() => GpuCatalog.WithAssumptions(h100, [("pdlGap", "1")]), Throws.ArgumentException.With.Message.Contains("--assume pdlGap: not a number of the GPU description; known: clockGHz, "));
        Assert.That(() => GpuCatalog.WithAssumptions(h100, [("pdlNodeGapUs", "fast")]), Throws.ArgumentException.With.Message.Contains("--assume pdlNodeGapUs=fast: not a finite number"));
        Assert.That(() => GpuCatalog.WithAssumptions(h100, [("pdlNodeGapUs", "NaN")]), Throws.ArgumentException.With.Message.Contains("not a finite number"));
        Assert.That(() => GpuCatalog.WithAssumptions(h100, [("pdlNodeGapUs", "-1")]), Throws.ArgumentException.With.Message.Contains("must be at least 0"));
        Assert.That(() => GpuCatalog.WithAssumptions(h100, [("dramAchievableGBps", "0")]), Throws.ArgumentException.With.Message.Contains("must be positive"));
        Assert.That(() => GpuCatalog.WithAssumptions(h100, [("sms", "13.5")]), Throws.ArgumentException.With.Message.Contains("a whole number is needed"));
        Assert.That(() => GpuCatalog.WithAssumptions(h100, [("sms", "1e12")]), Throws.ArgumentException.With.Message.Contains("too large"));
    }

    /// <summary>Two descriptions with the same numbers (a record's own equality compares the collections by reference).</summary>
    static bool SameNumbers(GpuSpec x, GpuSpec y) =>
        GpuCatalog.NumericFields().All(f =>
        {
            var prop = typeof(GpuSpec).GetProperty(char.ToUpperInvariant(f[0]) + f[1..])!;
            return Equals(prop.GetValue(x), prop.GetValue(y));
        }) && x.Key == y.Key && x.Name == y.Name && x.Arch == y.Arch;

    /// <summary>docs/timing-model.md lists every number of gpus.json as the file has it (regenerate section 5 when it changes).</summary>
    [Test]
    public void Docs_ListEveryNumberOfTheCatalog()
    {
        string doc = File.ReadAllText(Path.Combine(Support.RepoPaths.Root, "docs", "timing-model.md"));
        var root = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(Support.RepoPaths.Root, "src", "Model", "Performance", "gpus.json")))!;
        foreach (var (k, v) in root["common"]!.AsObject().Where(kv => kv.Key != "sources"))
            Assert.That(doc, Does.Contain($"| {k} | {v!.ToJsonString()} |"), $"common {k}");
        foreach (var gpu in root["gpus"]!.AsArray())
            foreach (var (k, v) in gpu!.AsObject().Where(kv => kv.Value is System.Text.Json.Nodes.JsonValue jv && jv.GetValueKind() == System.Text.Json.JsonValueKind.Number))
                Assert.That(doc, Does.Contain($"- {k} = {v!.ToJsonString()}: {gpu["sources"]![k]!.GetValue<string>()}"), $"{gpu["key"]} {k}");
    }
}
