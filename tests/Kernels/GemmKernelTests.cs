using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

[TestFixture]
public sealed class GemmKernelTests
{
    private EmulatorContext _emu = null!;
    private GemmLaunchers _gemm = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _emu = new EmulatorContext();
        _gemm = new GemmLaunchers(_emu.Loader);
    }

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    // Reference: fp64 product rounded as the kernel rounds (bf16(acc), then bf16(residual + that)). Tolerance per element:
    // the fp32 mma accumulation may flip the rounding of acc (one ulp, 2^-7 |acc|) and of the residual add (2^-7 |y|),
    // plus the fp32 sum error bound K * 2^-24 * sum |a w|.
    [TestCase(64, 64, 32, false, GemmTile.Tile64x64)]       // exactly one tile
    [TestCase(77, 93, 136, true, GemmTile.Tile64x64)]      // odd M, N; K = 4 tiles + 8 (zero-filled tail); residual
    [TestCase(1, 10, 8, false, GemmTile.Tile64x64)]        // one row, tiny K
    [TestCase(130, 200, 96, true, GemmTile.Tile128x128)]   // big tile with ragged edges
    [TestCase(40, 512, 2048, false, null)]                 // k_proj of a 40-token prefill chunk (launcher's choice)
    public void MatchesReference(int m, int n, int k, bool withResidual, GemmTile? tile)
    {
        var rng = new Random(m * 31 + n * 7 + k);
        int ldc = n + (n & 1);   // odd N: C and residual rows padded to an even stride (bf16x2 stores)
        ushort[] a = Bf16.Random(rng, m * k), w = Bf16.Random(rng, n * k), r = Bf16.Random(rng, m * ldc, 4f);
        DevicePtr dC = _emu.AllocFilled<ushort>(m * ldc);
        _gemm.Gemm(_emu.Stream, dC, ldc, _emu.Upload(a), k, _emu.Upload(w), k, withResidual ? _emu.Upload(r) : DevicePtr.Null, m, n, k, tile);
        _emu.Device.Synchronize(_emu.Stream);   // launch records exist once the kernel ran
        var launch = _emu.Device.LastLaunch!;
        Assert.That(launch.MmaCount, Is.GreaterThan(0), "runs on the tensor-core path");
        TestContext.Out.WriteLine($"| {launch.Kernel} M {m} N {n} K {k} | grid {launch.Grid} | mma {launch.MmaCount} | coalescing {launch.CoalescingEfficiency:F3} | distinct sectors x32 / (A+W+C bytes) {launch.DistinctSectors * 32.0 / (2.0 * ((long)m * k + (long)n * k + (long)m * n * (withResidual ? 2 : 1))):F3} |");

        float[] af = Bf16.ToFloats(a), wf = Bf16.ToFloats(w);
        var exp = new float[m * n];
        var tol = new float[m * n];
        for (int i = 0; i < m; i++)
            for (int j = 0; j < n; j++)
            {
                double acc = 0, abs = 0;
                for (int q = 0; q < k; q++) { double v = (double)af[i * k + q] * wf[j * k + q]; acc += v; abs += Math.Abs(v); }
                float y = Bf16.Round((float)acc);
                if (withResidual) y = Bf16.Round(Bf16.ToFloat(r[i * ldc + j]) + y);
                exp[i * n + j] = y;
                tol[i * n + j] = (float)(Math.Abs(acc) / 128 + (withResidual ? Math.Abs(y) / 128 : 0) + k * abs / (1 << 24));
            }
        ushort[] got = _emu.Download<ushort>(dC, m * ldc);
        var gotPacked = new float[m * n];
        for (int i = 0; i < m; i++)
        {
            for (int j = 0; j < n; j++) gotPacked[i * n + j] = Bf16.ToFloat(got[i * ldc + j]);
            if (ldc > n) Assert.That(got[i * ldc + n], Is.EqualTo((ushort)0xffff), $"padding column of row {i} was written");
        }
        Compare.AssertWithin(gotPacked, exp, tol, $"gemm M {m} N {n} K {k}");
    }

    [Test]
    public void ChoosesBigTilesOnlyWhenTheyFillTheMachine()
    {
        Assert.That(_gemm.ChooseTile(2048, 5120), Is.EqualTo(GemmTile.Tile128x128));
        Assert.That(_gemm.ChooseTile(64, 5120), Is.EqualTo(GemmTile.Tile64x64));
    }

    [Test]
    public void ParamsMirrorMatchesCuda() => StructLayoutCheck.AssertMatches(typeof(GemmParams), "gemm.cu", "GemmParams");

    [Test]
    public void RejectsKNotMultipleOf8() =>
        Assert.Throws<ArgumentException>(() => _gemm.Gemm(_emu.Stream, default, 8, default, 12, default, 12, default, 4, 8, 12));
}
