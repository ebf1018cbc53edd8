using System.Diagnostics;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>
/// Qwen3-30B-A3B shapes (E 128, k 8, H 2048, I 768) on the emulator, sharing one device whose stacked expert arrays
/// have the full [128, 1536, 2048] / [128, 2048, 768] size (only the experts the cases route to are filled; the
/// rest stay NaN poison). Random-routing prefill at 64/300 tokens would touch ~all 128 experts with ~128 mostly
/// padded tiles, so random routing at those counts runs at the reduced shape (MoeBlockTests); at the real shape
/// the prefill checks route 64 tokens to 8 hot experts (one full 64-row tile each) and 300 tokens among 24 hot
/// experts (uneven tiles with padding; 104 experts get none).
/// </summary>
[TestFixture]
public class MoeRealShapeTests
{
    MoeDevice _dev = null!;
    MoeCase _decode = null!, _hot = null!, _hot300 = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        var sw = Stopwatch.StartNew();
        _decode = MoeCase.Create(MoeBlockTests.Real, 3, seed: 1);
        _hot = MoeCase.Create(MoeBlockTests.Real, 64, seed: 2, hotExperts: 8);
        _hot300 = MoeCase.Create(MoeBlockTests.Real, 300, seed: 3, hotExperts: 24);
        _dev = new MoeDevice(MoeBlockTests.Real, _decode, _hot, _hot300);
        TestContext.Out.WriteLine($"real-shape setup (data, 1.2 GB of stacked expert arrays, kernels): {sw.ElapsedMilliseconds} ms");
    }

    [OneTimeTearDown]
    public void TearDown() => _dev?.Dispose();

    /// <summary>
    /// One token, decode path: output vs reference, then the emulator counters of each launch: distinct DRAM sectors
    /// within 5% of the bytes the kernel must move (the 8 selected experts' weights, the router weight, activations),
    /// coalescing >= 0.95, and >= 132 CTAs for the expert GEMVs (the router and the combine move < 1% of the bytes).
    /// </summary>
    [Test]
    public void Decode_OneToken_MatchesReference_AndCounters()
    {
        _dev.Device.ClearLaunches();
        var run = MoeBlockTests.RunAndCompare(_dev, _decode, "real shape, 1 token (decode)", tokens: 1, repeat: false);
        var s = MoeBlockTests.Real;
        int T = 1, k = s.TopK, E = s.Experts, H = s.Hidden, I = s.Inter;
        static long Sec(long bytes) => (bytes + 31) / 32 * 32;
        long hidden = Sec(T * H * 2L), ids = Sec(T * k * 4L), wts = Sec(T * k * 4L), inter = Sec(T * k * I * 2L), y = Sec(T * k * H * 2L);
        long experts = run.ReadIds().Distinct().Count();
        var minBytes = new Dictionary<string, long>
        {
            ["moe_router_topk"] = Sec((long)E * H * 2) + hidden + Sec(T * E * 4L) + 32 /* ticket */ + ids + wts,
            ["moe_gate_up_gemv"] = experts * 2 * I * H * 2 + hidden + ids + inter,
            ["moe_down_gemv"] = experts * H * I * 2 + inter + ids + y,
            ["moe_combine"] = y + wts + Sec(T * H * 2L),
        };
        var launches = _dev.Device.Launches.ToList();
        Assert.That(launches.Select(l => l.Kernel), Is.EqualTo(new[] { "moe_router_topk", "moe_gate_up_gemv", "moe_down_gemv", "moe_combine" }));
        var o = TestContext.Out;
        o.WriteLine("| kernel | grid | CTAs | distinct DRAM bytes | minimum bytes | ratio | coalescing | warp instr |");
        o.WriteLine("|---|---|---|---|---|---|---|---|");
        long totalSeen = 0, totalMin = 0;
        foreach (LaunchRecord l in launches)
        {
            long seen = l.DistinctSectors * 32, min = minBytes[l.Kernel];
            totalSeen += seen; totalMin += min;
            o.WriteLine($"| {l.Kernel} | {l.Grid} | {l.GridBlocks} | {seen} | {min} | {(double)seen / min:F4} | {l.CoalescingEfficiency:F4} | {l.WarpInstructions} |");
        }
        o.WriteLine($"| total | | | {totalSeen} | {totalMin} | {(double)totalSeen / totalMin:F4} | | |");
        foreach (LaunchRecord l in launches)
        {
            long seen = l.DistinctSectors * 32, min = minBytes[l.Kernel];
            Assert.That(seen, Is.InRange(min, (long)(min * 1.05)), $"{l.Kernel}: distinct DRAM bytes vs the minimum it must move");
            Assert.That(l.CoalescingEfficiency, Is.GreaterThanOrEqualTo(0.95), $"{l.Kernel}: coalescing");
            if (l.Kernel is "moe_gate_up_gemv" or "moe_down_gemv") Assert.That(l.GridBlocks, Is.GreaterThanOrEqualTo(132), $"{l.Kernel}: grid");
        }
    }

    [Test]
    public void Decode_ThreeTokens_MatchesReference() =>
        MoeBlockTests.RunAndCompare(_dev, _decode, "real shape, 3 tokens (decode)", residual: true, repeat: false);

    /// <summary>64 tokens all routed to the same 8 experts (64 slots each = one full tile), 120 experts get none.</summary>
    [Test]
    public void Prefill_64Tokens_HotExperts_MatchesReference() =>
        MoeBlockTests.RunAndCompare(_dev, _hot, "real shape, 64 tokens, 8 hot experts (grouped GEMMs)", repeat: false);

    /// <summary>300 tokens choosing 8 of 24 hot experts (uneven counts, padded tiles), 104 experts get none; run twice
    /// to check the result is bitwise repeatable.</summary>
    [Test]
    public void Prefill_300Tokens_HotExperts_MatchesReference() =>
        MoeBlockTests.RunAndCompare(_dev, _hot300, "real shape, 300 tokens, 24 hot experts (grouped GEMMs)", repeat: true);
}
