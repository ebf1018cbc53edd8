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
    const int Hidden = 256, QHeads = 4, KvHeads = 2, HeadDim = 128, PageSize = 16;
    const float Eps = 1e-6f;
    /// <summary>
    /// The co-resident cases' shared memory per SM: a cooperative launch must fit every CTA at once, and the grid is one
    /// CTA per tile (about 80 of 46 KiB here), more than 8 SMs of 228 KiB hold; the interleaved schedule needs them all.
    /// </summary>
    const int CoResidentSharedBytes = 1 << 20;

    private static readonly object[] Modes =
    [
        new object[] { "8 SMs, sequential", new EmulatorOptions { MultiprocessorCount = 8, Sequential = true }, false },
        new object[] { "8 SMs, parallel", new EmulatorOptions { MultiprocessorCount = 8, ConcurrentTilesInOrder = true }, false },
        new object[] { "8 SMs, co-resident, interleaved", new EmulatorOptions { MultiprocessorCount = 8, SharedMemoryPerMultiprocessor = CoResidentSharedBytes, Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 5 } }, true },
        new object[] { "16 SMs, parallel", new EmulatorOptions { MultiprocessorCount = 16, ConcurrentTilesInOrder = true }, false },
        new object[] { "16 SMs, co-resident, interleaved", new EmulatorOptions { MultiprocessorCount = 16, SharedMemoryPerMultiprocessor = CoResidentSharedBytes, Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 9 } }, true },
    ];

    [TestCaseSource(nameof(Modes))]
    public void AttentionBlock_EqualsTheThreeLaunches_Bitwise_AndLeavesItsCountersZero(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        EqualsTheThreeLaunches(ctx, $"{mode}, 1 row", [150], Hidden, QHeads, KvHeads, cooperative, seed: 3);
        EqualsTheThreeLaunches(ctx, $"{mode}, 3 rows", [150, 17, 300], Hidden, QHeads, KvHeads, cooperative, seed: 4);
    }

    [Test]
    public void GemvTile_TakesThePlansSlicesPerRowGroup_OnFourWarps()
    {
        // gemv_bf16_mma's plan: `groups` row groups of 8 rows on 8 warps, 8 / groups K-slices each
        Assert.That(PersistentDecodeLaunchers.GemvTile(1), Is.EqualTo((1, 8)), "8 slices: two per warp");
        Assert.That(PersistentDecodeLaunchers.GemvTile(2), Is.EqualTo((1, 4)));
        Assert.That(PersistentDecodeLaunchers.GemvTile(4), Is.EqualTo((2, 2)));
        Assert.That(PersistentDecodeLaunchers.GemvTile(8), Is.EqualTo((4, 1)));
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

    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(PersistentAttnParams), "persistent_decode.cu", "PersistentAttnParams");

    /// <summary>
    /// On a GPU (skipped without one): Qwen3-30B-A3B's shape (hidden 2048, 32 / 4 heads of 128) at 1 and 4 rows against
    /// the three launches there, on the device's own SM count.
    /// </summary>
    [Test, Category(KernelBackends.GpuCategory)]
    public void OnCuda_AttentionBlock_EqualsTheThreeLaunches_Bitwise()
    {
        using var ctx = KernelBackends.Open(KernelBackends.Cuda);
        EqualsTheThreeLaunches(ctx, "cuda, real shape, 1 row", [1000], 2048, 32, 4, cooperative: false, seed: 5);
        EqualsTheThreeLaunches(ctx, "cuda, real shape, 4 rows", [1000, 37, 4000, 300], 2048, 32, 4, cooperative: false, seed: 6);
    }

    static void EqualsTheThreeLaunches(KernelCheckContext ctx, string what, int[] lens, int hidden, int nH, int nKV, bool cooperative, int seed)
    {
        const int d = HeadDim;
        var rng = new Random(seed);
        int rows = lens.Length, qDim = nH * d, qkvDim = (nH + 2 * nKV) * d, workspaceSplits = 64;
        var kv = new PagedKvFixture(rng, lens, nKV, d, PageSize);
        var attn = ctx.Cached("attn128", () => new AttentionDecodeLaunchers(ctx.Loader, d));
        var gemv = ctx.Cached("gemv", () => new GemvLaunchers(ctx.Loader));
        var block = ctx.Cached("block128", () => new PersistentDecodeLaunchers(ctx.Loader, d));
        int sms = ctx.Device.Info.MultiprocessorCount;
        int splits = attn.ChooseSplits(rows, nKV, lens.Max(), workspaceSplits);
        Assert.That(PersistentDecodeLaunchers.CanRun(sms, d, rows, hidden, qkvDim, qDim, splits), Is.True, $"{what}: the shape runs as one launch");

        // x ~ U(-2, 2); weights ~ U(-1, 1) / sqrt(K) (activations of order 1); the norm weights around 1
        ushort[] x0 = KernelData.Random(rng, rows * hidden, 2f);
        ushort[] wqkv = KernelData.Random(rng, qkvDim * hidden, 1f / MathF.Sqrt(hidden)), wo = KernelData.Random(rng, hidden * qDim, 1f / MathF.Sqrt(qDim));
        ushort[] inNorm = Enumerable.Range(0, hidden).Select(_ => Bf16.FromFloat(0.5f + (float)rng.NextDouble())).ToArray();
        ushort[] qw = KernelData.Random(rng, d, 1.5f), kw = KernelData.Random(rng, d, 1.5f);
        int[] positions = lens.Select(l => l - 1).ToArray();
        int[] slots = Enumerable.Range(0, rows).Select(s => kv.BlockTable[s * kv.MaxPagesPerSeq + positions[s] / PageSize] * PageSize + positions[s] % PageSize).ToArray();
        long cacheBytes = (long)kv.Pages * PageSize * nKV * d * 2;
        DevicePtr dWqkv = ctx.Upload(wqkv), dWo = ctx.Upload(wo), dNorm = ctx.Upload(inNorm), dQw = ctx.Upload(qw), dKw = ctx.Upload(kw);
        DevicePtr dInvFreq = ctx.Upload(KernelReference.InvFreq(d, 1e6)), dPos = ctx.Upload(positions), dSlots = ctx.Upload(slots);
        DevicePtr dTable = ctx.Upload(kv.BlockTable), dLens = ctx.Upload(lens);
        long wsBytes = attn.WorkspaceBytes(rows, nH, workspaceSplits, out long lseBytes);

        // One run of either path on fresh x, qkv, caches and attention buffers; returns what it wrote.
        (ushort[] Qkv, byte[] K, byte[] V, ushort[] Attn, ushort[] X, int Launches, LaunchStage?[] Stages) Run(bool persistent, DevicePtr counters, DevicePtr tickets, bool apart = false)
        {
            DevicePtr dx = ctx.Upload(x0), dQkv = ctx.AllocFilled<ushort>(rows * qkvDim), dAttn = ctx.AllocFilled<ushort>(rows * qDim);
            DevicePtr dK = kv.UploadK(ctx), dV = kv.UploadV(ctx);
            DevicePtr dPartial = ctx.Alloc<byte>(wsBytes), dLse = ctx.AllocFilled<float>(lseBytes / sizeof(float));
            var a = new DecodeAttentionArgs(DevicePtr.Null, qDim, dK, dV, dTable, kv.MaxPagesPerSeq, PageSize, dLens, rows, lens.Max(),
                nH, nKV, dAttn, qDim, dPartial, dLse, workspaceSplits);
            var rope = new DecodeRopeArgs(dQkv, qkvDim, DevicePtr.Null, qDim, dQw, dKw, dInvFreq, false, dPos, dSlots, Eps, 1f, tickets);
            var launches = ctx.RecordLaunches(() =>
            {
                if (persistent)
                    block.AttentionBlock(ctx.Stream, attn, new AttentionBlockWeights(dx, hidden, hidden, dNorm, Eps, dWqkv, dWo), a, rope, counters, cooperative && !apart, apart);
                else
                {
                    gemv.Gemv(ctx.Stream, dQkv, qkvDim, dx, hidden, WeightOperand.Bf16(dWqkv), DevicePtr.Null, rows, qkvDim, hidden, DevicePtr.Null, 0, dNorm, Eps);
                    attn.DecodeFused(ctx.Stream, a, rope);
                    gemv.Gemv(ctx.Stream, dx, hidden, dAttn, qDim, WeightOperand.Bf16(dWo), dx, rows, hidden, qDim, DevicePtr.Null, 0);
                }
            });
            ctx.Synchronize();
            return (ctx.Download<ushort>(dQkv, rows * qkvDim), ctx.Download<byte>(dK, cacheBytes), ctx.Download<byte>(dV, cacheBytes),
                ctx.Download<ushort>(dAttn, rows * qDim), ctx.Download<ushort>(dx, rows * hidden), launches.Count,
                launches.Select(l => l.Stage).ToArray());
        }

        Assert.That(gemv.Plan(rows, qkvDim, hidden, WeightFormat.Bf16, normPrologue: true).TensorCores && gemv.Plan(rows, hidden, qDim, WeightFormat.Bf16).TensorCores,
            Is.True, $"{what}: the oracle's GEMVs take the tensor-core plan");
        DevicePtr oracleTickets = ctx.AllocFilled<int>(rows * nKV, 0), tickets = ctx.AllocFilled<int>(rows * nKV, 0);
        DevicePtr counters = ctx.AllocFilled<int>(PersistentDecodeLaunchers.CounterInts, 0);
        var expected = Run(persistent: false, DevicePtr.Null, oracleTickets);
        Assert.That(expected.X, Is.Not.EqualTo(x0), $"{what}: the oracle's o_proj added to x");
        for (int run = 1; run <= 3; run++)   // the second launch checks that the first left its counters and tickets zero
        {
            bool apart = run == 3;            // the stages as three launches (the timing model's measurement)
            var got = Run(persistent: true, counters, tickets, apart);
            string r = $"{what}, launch {run}{(apart ? ", stages apart" : "")}";
            if (ctx.Emulator is not null)   // (the emulator records launches; a GPU does not)
            {
                Assert.That(got.Launches, Is.EqualTo(apart ? 3 : 1), $"{r}: launches");
                Assert.That(got.Stages, Is.EqualTo(apart ? new LaunchStage?[] { new(0, 3), new(1, 3), new(2, 3) } : new LaunchStage?[] { null }), $"{r}: the launches' stages");
            }
            Assert.That(got.Qkv, Is.EqualTo(expected.Qkv), $"{r}: qkv rows = gemv_bf16_mma's with the norm prologue (bitwise)");
            Assert.That(got.K, Is.EqualTo(expected.K), $"{r}: K cache = attn_decode_fused's (bitwise)");
            Assert.That(got.V, Is.EqualTo(expected.V), $"{r}: V cache = attn_decode_fused's (bitwise)");
            Assert.That(got.Attn, Is.EqualTo(expected.Attn), $"{r}: attention output = attn_decode_fused's (bitwise)");
            Assert.That(got.X, Is.EqualTo(expected.X), $"{r}: x = gemv_bf16_mma's with the residual (bitwise)");
            Assert.That(ctx.Download<int>(counters, PersistentDecodeLaunchers.CounterInts), Is.EqualTo(new int[PersistentDecodeLaunchers.CounterInts]), $"{r}: counters zero after the launch");
            Assert.That(ctx.Download<int>(tickets, rows * nKV), Is.EqualTo(new int[rows * nKV]), $"{r}: combine tickets zero after the launch");
        }
    }
}
