using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

[TestFixture]
public sealed class RmsNormKernelTests
{
    private EmulatorContext _emu = null!;
    private RmsNormLaunchers _launchers = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _emu = new EmulatorContext();
        _launchers = new RmsNormLaunchers(_emu.Loader);
    }

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    // Two bf16 roundings, each of which may land on the other side of a rounding boundary because the kernel's
    // rsqrt.approx and fp32 sum order differ from the fp64 reference: at most 2 bf16 ulps = 2 * 2^-7 relative.
    private const double RmsRtol = 1.0 / 64, RmsAtol = 1e-6;

    [TestCase(3, 2048, true)]     // real hidden rows (decode, a few tokens)
    [TestCase(2, 2048, false)]    // final norm / no residual
    [TestCase(1, 8, true)]        // one chunk
    [TestCase(5, 136, true)]      // 17 chunks: not a multiple of a warp
    [TestCase(2, 4104, true)]     // 513 chunks: 544 threads, ragged last warp
    public void AddRmsNormMatchesReference(int rows, int width, bool withDelta)
    {
        var rng = new Random(rows * 7919 + width);
        ushort[] hidden = Bf16.Random(rng, rows * width, 4f), delta = Bf16.Random(rng, rows * width, 2f);
        ushort[] weight = Bf16.Random(rng, width, 1.5f);
        DevicePtr dHidden = _emu.Upload(hidden), dDelta = withDelta ? _emu.Upload(delta) : DevicePtr.Null;
        DevicePtr dWeight = _emu.Upload(weight), dOut = _emu.AllocFilled<ushort>(rows * width);

        _launchers.AddRmsNorm(_emu.Stream, dOut, dHidden, dDelta, dWeight, rows, width, 1e-6f);

        var expectedHidden = new float[rows * width];
        var expectedOut = new float[rows * width];
        float[] w = Bf16.ToFloats(weight);
        for (int r = 0; r < rows; r++)
        {
            for (int i = 0; i < width; i++)
            {
                float h = Bf16.ToFloat(hidden[r * width + i]);
                expectedHidden[r * width + i] = withDelta ? Bf16.Round(h + Bf16.ToFloat(delta[r * width + i])) : h;
            }
            CpuReference.RmsNorm(expectedHidden.AsSpan(r * width, width), w, 1e-6f, expectedOut.AsSpan(r * width, width));
        }
        // The residual add is one fp32 add of two bf16 values rounded once, the same on both sides: exact.
        Compare.AssertCloseBf16(_emu.Download<ushort>(dHidden, rows * width), expectedHidden, 0, 0, "hidden after add");
        Compare.AssertCloseBf16(_emu.Download<ushort>(dOut, rows * width), expectedOut, RmsAtol, RmsRtol, "normalised output");
    }

    [TestCase(2, 32, 128, 40 * 128)]   // q heads inside fused qkv rows (32 q + 4 k + 4 v heads of 128), in place
    [TestCase(3, 4, 128, 4 * 128)]     // k heads, packed
    [TestCase(1, 3, 24, 100)]          // odd: width 24 (3 chunks), padded token stride
    public void RmsNormHeadsMatchesReference(int tokens, int heads, int width, int stride)
    {
        var rng = new Random(tokens * 31 + heads * 7 + width);
        ushort[] data = Bf16.Random(rng, tokens * stride, 3f);
        ushort[] weight = Bf16.Random(rng, width, 1.5f);
        DevicePtr dData = _emu.Upload(data), dWeight = _emu.Upload(weight);

        _launchers.RmsNormHeads(_emu.Stream, dData, stride, dData, stride, weight: dWeight, tokens, heads, width, 1e-6f);

        float[] expected = Bf16.ToFloats(data);   // columns outside the heads must stay untouched
        float[] w = Bf16.ToFloats(weight);
        for (int t = 0; t < tokens; t++)
            for (int h = 0; h < heads; h++)
            {
                var row = expected.AsSpan(t * stride + h * width, width);
                CpuReference.RmsNorm(row.ToArray(), w, 1e-6f, row);
            }
        Compare.AssertCloseBf16(_emu.Download<ushort>(dData, tokens * stride), expected, RmsAtol, RmsRtol, "per-head norm");
    }

    [Test]
    public void ParamsMirrorsMatchCuda()
    {
        StructLayoutCheck.AssertMatches(typeof(AddRmsNormParams), "rmsnorm.cu", "AddRmsNormParams");
        StructLayoutCheck.AssertMatches(typeof(RmsNormHeadsParams), "rmsnorm.cu", "RmsNormHeadsParams");
    }

    [Test]
    public void RejectsWidthNotMultipleOf8() =>
        Assert.Throws<ArgumentException>(() => _launchers.AddRmsNorm(_emu.Stream, default, default, default, default, 1, 12, 1e-6f));
}
