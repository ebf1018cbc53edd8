using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>
/// kernels/moe_decode.cu's moe_experts_gemv: the decode experts' gate_up and down GEMVs (the combine included) in one
/// launch whose CTAs take tiles in order and whose down tiles wait on a per-slot counter (docs/kernels.md, "Persistent
/// launches"). Every row is computed by the code of moe_gate_up_gemv and moe_down_gemv, so the launch must equal that pair
/// bit for bit (exact: no tolerance) in inter, in each slot's expert output y and in the combined output, however the
/// emulator schedules the CTAs: one after another (the default for such a launch), in parallel, or co-resident and
/// interleaved; and it must leave its counters and the combine's tickets zero, so a second launch gives the same bits.
/// The pair itself is held to the CPU reference (MoeCase.Compare's stated tolerance) so equality is not between two
/// wrong answers; MoeKernelTests hold the whole block, which now runs this launch, to the reference at every shape.
/// </summary>
[TestFixture]
public class MoeExpertsGemvTests
{
    private static readonly object[] Modes =
    [
        new object[] { "sequential (the default for a launch of ordered tiles)", new EmulatorOptions(), false },
        new object[] { "parallel", new EmulatorOptions { ConcurrentTilesInOrder = true }, false },
        new object[] { "co-resident, interleaved", new EmulatorOptions { Sequential = true, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 5 } }, true },
    ];

    private static readonly WeightFormat[] Quantized = [WeightFormat.Fp8Block, WeightFormat.Int8Channel, WeightFormat.Int4Gptq];

    [TestCaseSource(nameof(Modes))]
    public void Bf16_EqualsTheTwoKernels_Bitwise_AndLeavesItsCountersZero(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        foreach (int tokens in new[] { 1, 3 })
            foreach (bool residual in new[] { false, true })
                EqualsThePair(ctx, WeightFormat.Bf16, MoeCase.Small, tokens, residual, cooperative, $"{mode}, {tokens} token(s), residual {residual}");
    }

    [TestCaseSource(nameof(Modes))]
    public void Quantized_EqualsTheTwoKernels_Bitwise(string mode, EmulatorOptions options, bool cooperative)
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(options));
        foreach (var f in Quantized)
            EqualsThePair(ctx, f, MoeCase.Small, tokens: 2, residual: true, cooperative, $"{mode}, {f.Name()}");
    }

    /// <summary>On a GPU (skipped without one): the same equality there, as an ordinary and as a cooperative launch.</summary>
    [Test, Category(Kernels.KernelBackends.GpuCategory)]
    public void OnCuda_EqualsTheTwoKernels_Bitwise()
    {
        using var ctx = Kernels.KernelBackends.Open(Kernels.KernelBackends.Cuda);
        foreach (bool cooperative in new[] { false, true })
        {
            EqualsThePair(ctx, WeightFormat.Bf16, MoeCase.Real, tokens: 1, residual: true, cooperative, $"cuda, real shape, cooperative {cooperative}");
            foreach (var f in Quantized)
                EqualsThePair(ctx, f, MoeCase.Small, tokens: 4, residual: true, cooperative, $"cuda, {f.Name()}, cooperative {cooperative}");
        }
    }

    static void EqualsThePair(KernelCheckContext ctx, WeightFormat format, MoeShape s, int tokens, bool residual, bool cooperative, string what)
    {
        var mc = MoeCase.Create(s, tokens, seed: 31 + tokens);
        int H = s.Hidden, I = s.Inter, k = s.TopK, slots = tokens * k;
        WeightOperand gateUp, down;
        if (format == WeightFormat.Bf16)
        {
            var w = MoeWeightsOnDevice.For(ctx, s, mc);
            (gateUp, down) = (WeightOperand.Bf16(w.GateUp), WeightOperand.Bf16(w.Down));
        }
        else
        {
            gateUp = QuantizedCases.StackLossless(format, mc.GateUp, 2 * I, H, s.Experts, sourceRows: I).Upload(ctx);
            down = QuantizedCases.StackLossless(format, mc.Down, H, I, s.Experts, sourceRows: H).Upload(ctx);
        }
        var moe = new MoeLaunchers(ctx.Loader, [s], [format]);
        var hidden = ctx.Upload(mc.Hidden);
        var ids = ctx.Upload(mc.RefIds);
        var weights = ctx.Upload(mc.RefWeights);
        ushort[]? resHost = null;
        if (residual)
        {
            resHost = new ushort[tokens * H];
            MoeCase.Fill(resHost, 77);
        }
        var res = resHost is null ? DevicePtr.Null : ctx.Upload(resHost);
        int ticketInts = tokens * MoeWorkspace.DownTicketsPerToken(H);

        // the pair: moe_gate_up_gemv, then moe_down_gemv
        var (inter1, y1, out1) = (ctx.Alloc<ushort>((long)slots * I), ctx.Alloc<ushort>((long)slots * H), ctx.Alloc<ushort>((long)tokens * H));
        var tickets1 = ctx.Upload(new int[ticketInts]);
        moe.GateUpGemv(ctx.Stream, s, tokens, hidden, gateUp, ids, inter1);
        moe.DownGemv(ctx.Stream, s, tokens, inter1, down, ids, y1, weights, res, out1, tickets1);
        ctx.Synchronize();
        var expected = (Inter: ctx.Download<ushort>(inter1, slots * I), Y: ctx.Download<ushort>(y1, slots * H), Out: ctx.Download<ushort>(out1, tokens * H));
        var c = new Checker();
        MoeCase.Compare(c, mc.Reference(resHost), expected.Out, "the pair against the CPU reference");
        Assert.That(c.Result().Passed, Is.True, $"{what}: {c.Result()}");

        // one launch, twice: the counters it leaves must serve the next launch
        var (inter2, y2, out2) = (ctx.Alloc<ushort>((long)slots * I), ctx.Alloc<ushort>((long)slots * H), ctx.Alloc<ushort>((long)tokens * H));
        var tickets2 = ctx.Upload(new int[ticketInts]);
        var sync = ctx.Upload(new int[MoeWorkspace.ExpertsSyncInts]);
        for (int run = 0; run < 2; run++)
        {
            moe.ExpertsGemv(ctx.Stream, s, tokens, hidden, gateUp, down, ids, inter2, y2, weights, res, out2, tickets2, sync, cooperative);
            ctx.Synchronize();
            string which = $"{what}, launch {run + 1}";
            Assert.That(ctx.Download<ushort>(inter2, slots * I), Is.EqualTo(expected.Inter), $"{which}: inter (the SwiGLU activations)");
            Assert.That(ctx.Download<ushort>(y2, slots * H), Is.EqualTo(expected.Y), $"{which}: y (each slot's expert output)");
            Assert.That(ctx.Download<ushort>(out2, tokens * H), Is.EqualTo(expected.Out), $"{which}: the combined output");
            Assert.That(ctx.Download<int>(sync, MoeWorkspace.ExpertsSyncInts), Is.All.Zero, $"{which}: the last CTA out resets the tile counters");
            Assert.That(ctx.Download<int>(tickets2, ticketInts), Is.All.Zero, $"{which}: the combine's tickets are left zero");
        }
    }

    /// <summary>
    /// On the emulator a launch of ordered tiles runs its CTAs one after another unless told otherwise, so its counters never
    /// hold a CTA polling for another (the schedule the timing model takes): the default device counts exactly what one
    /// set to run every launch sequentially counts. The launch is one node of k x (I / 8 + H / 16) tiles.
    /// </summary>
    [Test]
    public void ByDefault_TheEmulatorRunsItInOrder_OneLaunchOfAllTiles()
    {
        var s = MoeCase.Small;
        var mc = MoeCase.Create(s, 1, seed: 3);
        LaunchRecord Run(EmulatorOptions options)
        {
            using var ctx = new KernelCheckContext(new EmulatedDevice(options));
            var w = MoeWeightsOnDevice.For(ctx, s, mc);
            var moe = new MoeLaunchers(ctx.Loader, [s]);
            var (hidden, ids, weights) = (ctx.Upload(mc.Hidden), ctx.Upload(mc.RefIds), ctx.Upload(mc.RefWeights));
            var (inter, y, output) = (ctx.Alloc<ushort>(s.TopK * s.Inter), ctx.Alloc<ushort>(s.TopK * s.Hidden), ctx.Alloc<ushort>(s.Hidden));
            var (tickets, sync) = (ctx.Upload(new int[MoeWorkspace.DownTicketsPerToken(s.Hidden)]), ctx.Upload(new int[MoeWorkspace.ExpertsSyncInts]));
            var launches = ctx.RecordLaunches(() => moe.ExpertsGemv(ctx.Stream, s, 1, hidden, WeightOperand.Bf16(w.GateUp), WeightOperand.Bf16(w.Down),
                ids, inter, y, weights, DevicePtr.Null, output, tickets, sync));
            Assert.That(launches.Select(l => l.Kernel), Is.EqualTo(new[] { "moe_experts_gemv" }));
            return launches[0];
        }
        var byDefault = Run(new EmulatorOptions());
        var sequential = Run(new EmulatorOptions { Sequential = true });
        Assert.That(byDefault.GridBlocks, Is.EqualTo(MoeLaunchers.ExpertsGemvTiles(s, 1)));
        Assert.That(MoeLaunchers.ExpertsGemvTiles(s, 1), Is.EqualTo(8 * (128 / 8 + 256 / 16)), "k x (I / 8 gate_up tiles + H / 16 down tiles)");
        Assert.That(byDefault.WarpInstructions, Is.EqualTo(sequential.WarpInstructions), "instructions: no poll beyond the first read of a complete counter");
        Assert.That(byDefault.MaxWarpInstructions, Is.EqualTo(sequential.MaxWarpInstructions), "the critical warp");
    }

    [Test]
    public void BadArguments_AreRejectedWithTheirName()
    {
        using var ctx = new KernelCheckContext(new EmulatedDevice(new EmulatorOptions()));
        var s = MoeCase.Small;
        var moe = new MoeLaunchers(ctx.Loader, [s]);
        var p = ctx.Alloc<byte>(1 << 20);
        var bf16 = WeightOperand.Bf16(p);
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 9, p, bf16, bf16, p, p, p, p, DevicePtr.Null, p, p, p),
            Throws.TypeOf<ArgumentOutOfRangeException>().With.Message.Contains("moe_experts_gemv: 9 tokens"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16, p, p, p, p, DevicePtr.Null, p, p, DevicePtr.Null),
            Throws.ArgumentException.With.Message.Contains("counters (sync)"));
        Assert.That(() => moe.ExpertsGemv(ctx.Stream, s, 1, p, bf16, bf16 with { Format = WeightFormat.Int8Channel }, p, p, p, p, DevicePtr.Null, p, p, p),
            Throws.ArgumentException.With.Message.Contains("one launch takes one format"));
    }
}
