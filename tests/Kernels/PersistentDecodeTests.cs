using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// kernels/persistent_decode.cu: a layer's attention block (qkv projection with its input norm, the fused decode
/// attention, o_proj with the residual) as one launch whose tiles wait on counters (docs/kernels.md, "Persistent
/// launches"). Its tiles are the three kernels' own code, so it must equal gemv_bf16_mma -> attn_decode_fused ->
/// gemv_bf16_mma bit for bit (exact: no tolerance): the qkv rows, the K / V caches it writes, the attention output and
/// x. Those three kernels are each held to fp64 references elsewhere (ProjectionCases, AttentionCases). Every emulator
/// schedule: CTAs one after another (no tile ever waits), in parallel on the host's threads, and co-resident with
/// interleaved warps (a tile's wait is then exercised). Two SM counts give the GEMV plans every K-split per row group
/// the tiles must reproduce: 8 SMs (qkv 1 slice, o_proj 4), 16 SMs (qkv 2, o_proj 8: each warp runs two slices).
/// </summary>
[TestFixture]
public class PersistentDecodeTests
{
    const int Hidden = 256, QHeads = 4, KvHeads = 2;
    /// <summary>
    /// The co-resident cases' shared memory per SM: a cooperative launch must fit every CTA at once, and the grid is one
    /// CTA per tile (about 80 of 46 KiB here), more than 8 SMs of 228 KiB hold; the interleaved schedule needs them all.
    /// </summary>
    const int CoResidentSharedBytes = 1 << 20;

    private static readonly object[] Modes =
    [
        new object[] { "8 SMs, sequential", new EmulatorOptions { MultiprocessorCount = 8, Sequential = true }, false },
        new object[] { "8 SMs, parallel", new EmulatorOptions { MultiprocessorCount = 8, ConcurrentTilesInOrder = true }, false },
        new object[] { "8 SMs, co-resident, interleaved", new EmulatorOptions { MultiprocessorCount = 8, SharedMemoryPerMultiprocessor = CoResidentSharedBytes, Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 5 + EmulatorModes.Ambient.ScheduleSeed } }, true },
        new object[] { "16 SMs, parallel", new EmulatorOptions { MultiprocessorCount = 16, ConcurrentTilesInOrder = true }, false },
        new object[] { "16 SMs, co-resident, interleaved", new EmulatorOptions { MultiprocessorCount = 16, SharedMemoryPerMultiprocessor = CoResidentSharedBytes, Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 9 + EmulatorModes.Ambient.ScheduleSeed } }, true },
    ];

    /// <summary>
    /// Three of <see cref="Modes"/>, one per kind of schedule (one after another, in parallel, co-resident and
    /// interleaved), for the early-routing cases, which run the block seven times each: that keeps .ci/run's time down.
    /// </summary>
    private static readonly object[] ScheduleKinds = [Modes[0], Modes[3], Modes[4]];

    [TestCaseSource(nameof(Modes))]
    public void AttentionBlock_EqualsTheThreeLaunches_Bitwise_AndLeavesItsCountersZero(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        EqualsTheThreeLaunches(ctx, $"{mode}, 1 row", [150], Hidden, QHeads, KvHeads, cooperative, seed: 3);
        EqualsTheThreeLaunches(ctx, $"{mode}, 3 rows", [150, 17, 300], Hidden, QHeads, KvHeads, cooperative, seed: 4);
    }

    /// <summary>
    /// The GEMV tiles' weight steps held in registers before their wait (persistent_decode.cu: 16 per lane, as two slices'
    /// first 8 steps or one slice's first 16, the rest streamed) in every shape the kernel picks, against the three
    /// launches bit for bit. Hidden 128 with 16 / 2 heads: o_proj holds 8 of 8 steps in both of each warp's slices; 32 / 4
    /// heads: o_proj holds the first of each warp's two 16-step slices, Qwen3-30B-A3B's o_proj tile on 132 SMs; hidden 1024
    /// with 4 / 2 heads on 8 SMs: qkv holds 16 of 32 steps, o_proj all 16; on 16 SMs: qkv all 16 of one slice, o_proj 8 of
    /// 8. (The cases above hold 8 of 8 in one slice for qkv on 8 SMs, and nothing elsewhere: slices under 8 steps.)
    /// </summary>
    [TestCase(8, 128, 16, 2, false)]
    [TestCase(8, 128, 32, 4, false)]
    [TestCase(16, 128, 32, 4, true)]
    [TestCase(8, 1024, 4, 2, false)]
    [TestCase(16, 1024, 4, 2, false)]
    [TestCase(16, 1024, 4, 2, true)]
    public void AttentionBlock_WithWeightStepsHeld_EqualsTheThreeLaunches_Bitwise(int sms, int hidden, int nH, int nKV, bool interleaved)
    {
        var options = interleaved
            ? new EmulatorOptions { MultiprocessorCount = sms, SharedMemoryPerMultiprocessor = CoResidentSharedBytes, Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 7 + EmulatorModes.Ambient.ScheduleSeed } }
            : new EmulatorOptions { MultiprocessorCount = sms, ConcurrentTilesInOrder = true };
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        EqualsTheThreeLaunches(ctx, $"{sms} SMs, hidden {hidden}, {nH} / {nKV} heads, 1 row", [90], hidden, nH, nKV, interleaved, seed: 11);
        EqualsTheThreeLaunches(ctx, $"{sms} SMs, hidden {hidden}, {nH} / {nKV} heads, 2 rows", [90, 40], hidden, nH, nKV, interleaved, seed: 12);
    }

    /// <summary>
    /// A MoE layer's router as the block's fourth stage (one tile per router row, moe_router.cuh's tile on 128 threads)
    /// against the three launches and moe_router_norm_topk bit for bit, in every scheduling mode: 40 experts, top-4, not
    /// renormalised (4 keys per lane in the top-k, a ragged last lane) at 1 row, and top-16 of 256 experts (8 keys per
    /// lane; in the co-resident modes, where every tile's CTA must fit at once, 136 on 16 SMs and on 8 SMs 48, which takes
    /// 4 keys per lane) renormalised at 3 rows.
    /// </summary>
    [TestCaseSource(nameof(Modes))]
    public void AttentionBlock_WithTheRouterStage_EqualsTheLaunchesAndTheRouter_Bitwise(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        int experts = !cooperative ? 256 : options.MultiprocessorCount >= 16 ? 136 : 48;
        EqualsTheThreeLaunches(ctx, $"{mode}, 1 row, 40 experts top-4", [150], Hidden, QHeads, KvHeads, cooperative, seed: 13, new MoeShape(40, 4, Hidden, 64, false));
        EqualsTheThreeLaunches(ctx, $"{mode}, 3 rows, {experts} experts top-16", [150, 17, 300], Hidden, QHeads, KvHeads, cooperative, seed: 14, new MoeShape(experts, 16, Hidden, 64, true));
    }

    /// <summary>
    /// The router stage at hidden 1280 (160 chunks: a router tile's 128 threads take virtual threads 128 .. 159 as their
    /// second chunk, which hidden 256 never reaches) with Qwen3-30B-A3B's 128 experts, top-8, renormalised, 8 / 2 heads of
    /// 128 (the selftest's small block, whose GEMVs take the tensor-core plan on an H100's 132 SMs), against the three
    /// launches and moe_router_norm_topk bit for bit.
    /// </summary>
    [TestCase(132, false)]
    [TestCase(132, true)]
    public void AttentionBlock_WithTheRouterStage_TwoChunksPerThread_EqualsTheLaunchesAndTheRouter_Bitwise(int sms, bool interleaved)
    {
        var options = interleaved
            ? new EmulatorOptions { MultiprocessorCount = sms, SharedMemoryPerMultiprocessor = CoResidentSharedBytes, Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 3 + EmulatorModes.Ambient.ScheduleSeed } }
            : new EmulatorOptions { MultiprocessorCount = sms, ConcurrentTilesInOrder = true };
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        EqualsTheThreeLaunches(ctx, $"{sms} SMs, hidden 1280, 8 / 2 heads, 1 row, 128 experts top-8", [90], 1280, 8, 2, interleaved, seed: 15, new MoeShape(128, 8, 1280, 64, true));
    }

    /// <summary>
    /// Early routing in the block (kernels/early_route.cuh's tiles first in the o_proj stage, the router tiles prefetching
    /// the chosen experts' first bytes), in each kind of schedule: o_proj's output, h, the router's logits, ids and weights
    /// the same bits as without it (a hint changes no result), x unchanged, the early logits and ids those of
    /// moe_early_route on the same inputs, the prefetch made: 40 experts top-4 at 1 row, 64 experts top-8 at 3 rows (40 co-resident
    /// on 8 SMs, where every tile's CTA must fit at once).
    /// </summary>
    [TestCaseSource(nameof(ScheduleKinds))]
    public void AttentionBlock_WithEarlyRouting_ChangesNoResult_AndPrefetchesTheChosenExperts(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        EqualsTheThreeLaunches(ctx, $"{mode}, 1 row, 40 experts top-4, early routing", [150], Hidden, QHeads, KvHeads, cooperative, seed: 16, new MoeShape(40, 4, Hidden, 64, false), early: true);
        int experts = cooperative && options.MultiprocessorCount < 16 ? 40 : 64;   // co-resident on 8 SMs: every tile's CTA at once
        EqualsTheThreeLaunches(ctx, $"{mode}, 3 rows, {experts} experts top-8, early routing", [150, 17, 300], Hidden, QHeads, KvHeads, cooperative, seed: 17, new MoeShape(experts, 8, Hidden, 64, true), early: true);
    }

    [Test]
    public void GemvTile_TakesThePlansSlicesPerRowGroup_OnFourWarps()
    {
        // gemv_bf16_mma's plan: `groups` row groups of 8 rows on 8 warps, 8 / groups K-slices each
        Assert.That(PersistentDecodeLaunchers.GemvTile(1), Is.EqualTo((1, 8)), "8 slices: two per warp");
        Assert.That(PersistentDecodeLaunchers.GemvTile(2), Is.EqualTo((1, 4)));
        Assert.That(PersistentDecodeLaunchers.GemvTile(4), Is.EqualTo((2, 2)));
        Assert.That(PersistentDecodeLaunchers.GemvTile(8), Is.EqualTo((4, 1)));
        // the qkv tile: two slices per warp, so twice the rows where GemvTile gives each warp one
        Assert.That(PersistentDecodeLaunchers.QkvTile(1), Is.EqualTo((1, 8)));
        Assert.That(PersistentDecodeLaunchers.QkvTile(2), Is.EqualTo((2, 4)));
        Assert.That(PersistentDecodeLaunchers.QkvTile(4), Is.EqualTo((4, 2)));
        Assert.That(PersistentDecodeLaunchers.QkvTile(8), Is.EqualTo((8, 1)));
    }

    [Test]
    public void CanRun_TheRealShape_OnAnH100_ButNotPastItsLimits()
    {
        // Qwen3-30B-A3B: hidden 2048, 32 query heads, 4 KV heads of 128; 132 SMs
        Assert.That(PersistentDecodeLaunchers.CanRun(132, 128, 1, 2048, 5120, 4096, splits: 33), Is.True, "one row");
        Assert.That(PersistentDecodeLaunchers.CanRun(132, 128, 4, 2048, 5120, 4096, splits: 9), Is.True, "four rows: (4096 + 32) x 4 x 2 bytes staged fit the 34816 of the K / V tiles");
        Assert.That(PersistentDecodeLaunchers.CanRun(132, 128, 5, 2048, 5120, 4096, splits: 7), Is.False, "five rows: one per warp for the norm");
        Assert.That(PersistentDecodeLaunchers.CanRun(132, 128, 1, 2048, 5120, 4096, splits: 65), Is.False, "more splits than the last CTA combines");
        Assert.That(PersistentDecodeLaunchers.CanRun(132, 256, 1, 2048, 10240, 8192, splits: 33), Is.False, "head_dim 256: the scalar attention");
    }

    /// <summary>Bad arguments are refused before any launch, with a message that names the kernel file and what is wrong.</summary>
    [Test]
    public void AttentionBlock_RefusesBadArguments_BeforeAnyLaunch()
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions { MultiprocessorCount = 8 }));
        var attn = new AttentionDecodeLaunchers(ctx.Loader, 128);
        var block = new PersistentDecodeLaunchers(ctx.Loader, 128);
        DevicePtr buf = ctx.Alloc<byte>(4096);
        var w = new AttentionBlockWeights(buf, Hidden, Hidden, buf, 1e-6f, buf, buf, buf, FetchAheadBytes: -1);
        DecodeAttentionArgs a = default;
        DecodeRopeArgs rope = default;
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, w, a, rope, buf),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("persistent_decode.cu").And.Message.Contains("fetch ahead must not be negative"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, w with { FetchAheadBytes = 0, OProjAheadBytes = -1 }, a, rope, buf),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("persistent_decode.cu").And.Message.Contains("qkv tiles prefetch must not be negative"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, w with { FetchAheadBytes = 0 }, a, rope, DevicePtr.Null),
            Throws.ArgumentException.With.Message.Contains("counters"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, w with { FetchAheadBytes = 0, Wo = DevicePtr.Null }, a, rope, buf),
            Throws.ArgumentException.With.Message.Contains("both weights"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, new AttentionDecodeLaunchers(ctx.Loader, 64), w with { FetchAheadBytes = 0 }, a, rope, buf),
            Throws.ArgumentException.With.Message.Contains("head_dim 64"));
        var router = new AttentionBlockRouter(new MoeShape(64, 4, Hidden, 64, true), buf, 1e-6f, buf, buf, buf, buf, buf);
        var ok = w with { FetchAheadBytes = 0 };
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, ok, a, rope, buf, router: router with { Shape = new MoeShape(64, 4, 128, 64, true) }),
            Throws.ArgumentException.With.Message.Contains("router stage reads x at its hidden size 128"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, ok with { Ldx = 2 * Hidden }, a, rope, buf, router: router),
            Throws.ArgumentException.With.Message.Contains("row stride 512"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, ok, a, rope, buf, router: router with { TopkIds = DevicePtr.Null }),
            Throws.ArgumentException.With.Message.Contains("top-k ids"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, ok, a, rope, buf, router: router with { FetchAheadBytes = -1 }),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("router stage's bytes to fetch ahead"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, ok, a, rope, buf, router: router with { Shape = new MoeShape(64, 65, Hidden, 64, true) }),
            Throws.ArgumentException.With.Message.Contains("top-k 65"));
        Assert.That(() => block.AttentionBlock(ctx.Stream, attn, ok with { Hidden = 4096, Ldx = 4096 }, a, rope, buf, router: router with { Shape = new MoeShape(64, 4, 4096, 64, true) }),
            Throws.InstanceOf<NotSupportedException>().With.Message.Contains("at most 2048"));
    }

    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(PersistentAttnParams), "persistent_decode.cu", "PersistentAttnParams");

    /// <summary>
    /// On a GPU (skipped without one): the selftest's cases, Qwen3-30B-A3B's shape (hidden 2048, 32 / 4 heads of 128) at 1
    /// and 4 rows against the three launches there, on the device's own SM count.
    /// </summary>
    [Test, Category(KernelBackends.GpuCategory)]
    public void OnCuda_AttentionBlock_EqualsTheThreeLaunches_Bitwise()
    {
        using var ctx = KernelBackends.Open(KernelBackends.Cuda);
        foreach (var c in PersistentDecodeCases.All())
        {
            var r = c.Check(ctx);
            TestContext.Out.WriteLine($"{c.Name}:\n{r}");
            Assert.That(r.Passed, Is.True, $"{c.Name}:\n{r}");
        }
    }

    /// <summary>The comparison (src/Model/Selftest/PersistentDecodeCases, also `qwen3cuda selftest`'s on a GPU) must pass.</summary>
    static void EqualsTheThreeLaunches(KernelCheckContext ctx, string what, int[] lens, int hidden, int nH, int nKV, bool cooperative, int seed, MoeShape? router = null,
        bool early = false)
    {
        var r = PersistentDecodeCases.Compare(ctx, lens, hidden, nH, nKV, cooperative, seed, router, early);
        TestContext.Out.WriteLine($"{what}:\n{r}");
        Assert.That(r.Passed, Is.True, $"{what}:\n{r}");
    }
}
