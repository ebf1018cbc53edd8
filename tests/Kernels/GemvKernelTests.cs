using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

[TestFixture]
public sealed class GemvKernelTests
{
    private EmulatorContext _emu = null!;
    private GemvLaunchers _gemv = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _emu = new EmulatorContext();
        _gemv = new GemvLaunchers(_emu.Loader);
    }

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    /// <summary>
    /// Runs y = x W^T (+ residual) and checks it against the fp64 product rounded exactly as the kernel rounds:
    /// bf16(acc) (then bf16(residual + that)). Per element tolerance: the fp32 accumulation may flip the bf16 rounding of
    /// acc (one ulp: 2^-7 |acc|) and then the residual add's rounding (one ulp of y: 2^-7 |y|), plus the fp32 sum error
    /// bound K * 2^-24 * sum |x w|.
    /// </summary>
    private (GemvPlan Plan, LaunchRecord Launch) RunAndCheck(int tokens, int n, int k, bool withResidual, int seed)
    {
        var rng = new Random(seed);
        ushort[] x = Bf16.Random(rng, tokens * k), w = Bf16.Random(rng, n * k), r = Bf16.Random(rng, tokens * n, 4f);
        DevicePtr dY = _emu.AllocFilled<ushort>(tokens * n);
        GemvPlan plan = _gemv.Plan(tokens, n, k);
        long ws = plan.PartialBytes(tokens, n);
        DevicePtr dPartial = ws > 0 ? _emu.Alloc<byte>(ws) : DevicePtr.Null;
        DevicePtr dX = _emu.Upload(x), dW = _emu.Upload(w), dR = withResidual ? _emu.Upload(r) : DevicePtr.Null;
        _emu.Device.ClearLaunches();
        _gemv.Gemv(_emu.Stream, dY, n, dX, k, dW, dR, tokens, n, k, dPartial, ws);
        _emu.Device.Synchronize(_emu.Stream);   // launch records exist once the kernels ran
        LaunchRecord launch = _emu.Device.Launches[0];

        float[] xf = Bf16.ToFloats(x), wf = Bf16.ToFloats(w);
        var exp = new float[tokens * n];
        var tol = new float[tokens * n];
        for (int t = 0; t < tokens; t++)
            for (int c = 0; c < n; c++)
            {
                double acc = 0, abs = 0;
                for (int i = 0; i < k; i++) { double v = (double)xf[t * k + i] * wf[c * k + i]; acc += v; abs += Math.Abs(v); }
                float y = Bf16.Round((float)acc);
                if (withResidual) y = Bf16.Round(Bf16.ToFloat(r[t * n + c]) + y);
                exp[t * n + c] = y;
                tol[t * n + c] = (float)(Math.Abs(acc) / 128 + (withResidual ? Math.Abs(y) / 128 : 0) + k * abs / (1 << 24));
            }
        Compare.AssertWithin(Bf16.ToFloats(_emu.Download<ushort>(dY, tokens * n)), exp, tol, $"gemv T {tokens} N {n} K {k}");
        return (plan, launch);
    }

    // qkv (1, 5120, 2048) and o_proj (1, 2048, 4096) at real shapes run in DecodeShapeCounters.
    [TestCase(8, 512, 4096, true)]     // o_proj K + residual, 8 tokens: x slice too big, split-K 2
    [TestCase(2, 128, 2048, false)]    // router: split-K to fill the SMs
    [TestCase(5, 37, 24, false)]       // odd: N not a multiple of the CTA rows, K of 3 chunks
    [TestCase(3, 1000, 136, true)]     // odd: ragged chunk count, residual epilogue
    [TestCase(1, 20000, 64, false)]    // many rows per warp (the lm_head plan with a small K)
    public void MatchesReference(int tokens, int n, int k, bool residual) => RunAndCheck(tokens, n, k, residual, tokens * 1000 + n + k);

    [Test]
    public void PlanCoversTheMultiprocessorsAtDecodeShapes()
    {
        // lm_head (151936 x 2048) runs at the real shape in LmHeadDecodeCounters; here its 8-token plan is checked too.
        foreach (var (t, n, k) in new[] { (1, 5120, 2048), (1, 2048, 4096), (1, 151936, 2048), (8, 151936, 2048), (1, 128, 2048), (8, 2048, 4096) })
        {
            GemvPlan plan = _gemv.Plan(t, n, k);
            Assert.That(plan.Ctas, Is.GreaterThanOrEqualTo(n >= 2048 ? 132 : 128), $"CTAs for T {t} N {n} K {k}: {plan}");
            Assert.That(t * plan.KSplit * 2, Is.LessThanOrEqualTo(32 * 1024), $"x slice fits in 32 KiB: {plan}");
            Assert.That(plan.SplitK * plan.KSplit, Is.GreaterThanOrEqualTo(k), $"the splits cover K: {plan}");
        }
        Assert.That(_gemv.Plan(1, 151936, 2048).RowsPerWarp, Is.EqualTo(8), "lm_head: 8 rows per warp");
    }

    [Test]
    public void DecodeShapeCounters()
    {
        TestContext.Out.WriteLine("| GEMV (T, N, K) | grid | split-K | distinct sectors x32 / minimum bytes | coalescing |");
        foreach (var (t, n, k, name) in new[] { (1, 5120, 2048, "qkv"), (1, 2048, 4096, "o_proj") })
        {
            var (plan, launch) = RunAndCheck(t, n, k, false, n + k);
            long minBytes = (long)n * k * 2 + (long)t * k * 2 + (long)t * n * 2;
            double ratio = launch.DistinctSectors * 32.0 / minBytes;
            TestContext.Out.WriteLine($"| {name} ({t}, {n}, {k}) | {launch.GridBlocks} | {plan.SplitK} | {ratio:F3} | {launch.CoalescingEfficiency:F3} |");
            Assert.That(launch.GridBlocks, Is.GreaterThanOrEqualTo(132), $"{name}: grid");
            Assert.That(ratio, Is.LessThanOrEqualTo(1.05), $"{name}: weights read once");
            Assert.That(launch.CoalescingEfficiency, Is.GreaterThanOrEqualTo(0.95), $"{name}: coalescing");
        }
    }

    /// <summary>lm_head at the real shape (151936 x 2048, 311 MB of weights): the same checks as DecodeShapeCounters.
    /// The slowest kernel test (about 40 s on the emulator on a loaded 2-core machine).</summary>
    [Test]
    public void LmHeadDecodeCounters()
    {
        const int t = 1, n = 151936, k = 2048;
        var (plan, launch) = RunAndCheck(t, n, k, false, 7);
        long minBytes = (long)n * k * 2 + (long)t * k * 2 + (long)t * n * 2;
        double ratio = launch.DistinctSectors * 32.0 / minBytes;
        TestContext.Out.WriteLine($"| lm_head ({t}, {n}, {k}) | {launch.GridBlocks} | {plan.SplitK} | {ratio:F3} | {launch.CoalescingEfficiency:F3} |");
        Assert.That(launch.GridBlocks, Is.GreaterThanOrEqualTo(132), "lm_head: grid");
        Assert.That(ratio, Is.LessThanOrEqualTo(1.05), "lm_head: weights read once");
        Assert.That(launch.CoalescingEfficiency, Is.GreaterThanOrEqualTo(0.95), "lm_head: coalescing");
    }

    [Test]
    public void ParamsMirrorMatchesCuda() => StructLayoutCheck.AssertMatches(typeof(GemvParams), "gemv.cu", "GemvParams");

    [Test]
    public void RejectsTooManyTokens() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => _gemv.Gemv(_emu.Stream, default, 8, default, 8, default, default, 9, 8, 8, default, 0));
}
