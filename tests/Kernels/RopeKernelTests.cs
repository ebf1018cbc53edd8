using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

[TestFixture]
public sealed class RopeKernelTests
{
    private EmulatorContext _emu = null!;

    [OneTimeSetUp]
    public void SetUp() => _emu = new EmulatorContext();

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    // Normed values are at most ~3 in magnitude (bf16 ulp there: 2^-6). A rounding flip in the norm (2 ulps: rsqrt.approx vs
    // fp64) or in bf16(cos/sin) (sincosf is within 2 fp32 ulps of the true value) moves a product by about one ulp of the
    // inputs, not of the (possibly cancelled) output: hence an absolute term of 2.5 ulps at magnitude 2-4, plus 2^-6 relative.
    private const double Atol = 0.04, Rtol = 1.0 / 64;

    [TestCase(128, 32, 4, new[] { 0, 17, 40000 }, 1.0f, false)]     // real shape, position 0 (identity rope), large position
    [TestCase(128, 32, 4, new[] { 5 }, 1.25f, true)]                // one token, q in place, attention_scaling (YaRN-like)
    [TestCase(64, 6, 2, new[] { 3, 4, 5, 6, 7 }, 1.0f, false)]      // odd: 10 heads (partial warp group), D 64
    [TestCase(256, 2, 1, new[] { 100, 1 }, 1.0f, true)]             // D 256
    [TestCase(32, 4, 2, new[] { 0, 9, 3000 }, 1.0f, false)]        // D 32 (one element per lane; the small preset)
    [TestCase(32, 8, 2, new[] { 7, 2 }, 1.25f, true)]              // D 32, q in place, 12 heads (partial warp group)
    [TestCase(16, 4, 2, new[] { 0, 5, 900 }, 1.0f, false)]         // D 16 (lanes 0..15; 16..31 idle; the tiny preset)
    public void MatchesReference(int d, int nH, int nKV, int[] positions, float scaling, bool inPlace)
    {
        var launchers = new RopeLaunchers(_emu.Loader, d);
        int tokens = positions.Length, heads = nH + 2 * nKV, stride = heads * d;
        const int pageSize = 16, pages = 3;
        var rng = new Random(d + nH * 13 + tokens);
        ushort[] qkv = Bf16.Random(rng, tokens * stride, 3f);
        ushort[] qw = Bf16.Random(rng, d, 1.5f), kw = Bf16.Random(rng, d, 1.5f);
        float[] invFreq = CpuReference.InvFreq(d, 1e6);
        // slots spread over pages in a scrambled order; the last token of a multi-token case is padding (-1)
        var slots = new int[tokens];
        for (int t = 0; t < tokens; t++) slots[t] = (t * 37 + 5) % (pages * pageSize);
        if (tokens > 2) slots[^1] = -1;

        DevicePtr dQkv = _emu.Upload(qkv);
        DevicePtr dQ = inPlace ? dQkv : _emu.AllocFilled<ushort>(tokens * nH * d);
        long cacheElems = (long)pages * pageSize * nKV * d;
        DevicePtr dK = _emu.AllocFilled<ushort>(cacheElems, 0x7f), dV = _emu.AllocFilled<ushort>(cacheElems, 0x7f);
        var p = new QkNormRopeParams
        {
            Qkv = dQkv, QOut = dQ, KCache = dK, VCache = dV, QNormWeight = _emu.Upload(qw), KNormWeight = _emu.Upload(kw),
            InvFreq = _emu.Upload(invFreq), Positions = _emu.Upload(positions), SlotMapping = _emu.Upload(slots),
            Tokens = tokens, NumQHeads = nH, NumKvHeads = nKV, QkvStride = stride, QOutStride = inPlace ? stride : nH * d,
            Eps = 1e-6f, AttentionScaling = scaling,
        };
        launchers.QkNormRopeKvWrite(_emu.Stream, p);

        int qStride = p.QOutStride;
        ushort[] gotQ = _emu.Download<ushort>(dQ, tokens * qStride);
        ushort[] gotK = _emu.Download<ushort>(dK, cacheElems), gotV = _emu.Download<ushort>(dV, cacheElems);
        var wq = Bf16.ToFloats(qw);
        var wk = Bf16.ToFloats(kw);
        var expQ = new List<float>();
        var actQ = new List<float>();
        var expK = new List<float>();
        var actK = new List<float>();
        var written = new bool[cacheElems];
        for (int t = 0; t < tokens; t++)
        {
            for (int h = 0; h < nH + nKV; h++)
            {
                bool isQ = h < nH;
                if (!isQ && slots[t] < 0) continue;
                var row = Bf16.ToFloats(qkv.AsSpan(t * stride + h * d, d));
                CpuReference.RmsNorm(row.ToArray(), isQ ? wq : wk, 1e-6f, row);
                CpuReference.Rope(row, positions[t], invFreq, scaling);
                long at = isQ ? (long)t * qStride + h * d : ((long)slots[t] * nKV + (h - nH)) * d;
                for (int i = 0; i < d; i++)
                {
                    if (isQ) { expQ.Add(row[i]); actQ.Add(Bf16.ToFloat(gotQ[at + i])); }
                    else { expK.Add(row[i]); actK.Add(Bf16.ToFloat(gotK[at + i])); written[at + i] = true; }
                }
            }
            if (slots[t] < 0) continue;
            for (int h = 0; h < nKV; h++)
                for (int i = 0; i < d; i++)
                {
                    long at = ((long)slots[t] * nKV + h) * d + i;
                    // V is copied, bit for bit
                    Assert.That(gotV[at], Is.EqualTo(qkv[t * stride + (nH + nKV + h) * d + i]), $"v token {t} head {h} dim {i}");
                }
        }
        Compare.AssertClose(actQ.ToArray(), expQ.ToArray(), Atol, Rtol, "q after norm + rope");
        Compare.AssertClose(actK.ToArray(), expK.ToArray(), Atol, Rtol, "k cache after norm + rope");
        for (long i = 0; i < cacheElems; i++)
            if (!written[i]) Assert.That(gotK[i], Is.EqualTo((ushort)0x7f7f), $"K cache element {i} was written but no token maps there");
    }

    [Test]
    public void PositionZeroIsNormOnly()
    {
        // Analytic case: at position 0, cos = 1 and sin = 0, so rope is the identity and q equals the per-head norm.
        var launchers = new RopeLaunchers(_emu.Loader);
        var norms = new RmsNormLaunchers(_emu.Loader);
        const int d = 128, nH = 4, nKV = 1, stride = (nH + 2 * nKV) * d;
        var rng = new Random(5);
        ushort[] qkv = Bf16.Random(rng, stride, 2f), w = Bf16.Random(rng, d, 1f);
        DevicePtr dQkv = _emu.Upload(qkv), dW = _emu.Upload(w), dQ = _emu.AllocFilled<ushort>(nH * d), dNormed = _emu.AllocFilled<ushort>(nH * d);
        DevicePtr cache = _emu.AllocFilled<ushort>(16 * nKV * d);
        launchers.QkNormRopeKvWrite(_emu.Stream, new QkNormRopeParams
        {
            Qkv = dQkv, QOut = dQ, KCache = cache, VCache = cache, QNormWeight = dW, KNormWeight = dW,
            InvFreq = _emu.Upload(CpuReference.InvFreq(d, 1e6)), Positions = _emu.Upload(new[] { 0 }), SlotMapping = _emu.Upload(new[] { -1 }),
            Tokens = 1, NumQHeads = nH, NumKvHeads = nKV, QkvStride = stride, QOutStride = nH * d, Eps = 1e-6f, AttentionScaling = 1f,
        });
        norms.RmsNormHeads(_emu.Stream, dNormed, nH * d, dQkv, stride, dW, 1, nH, d, 1e-6f);
        Assert.That(_emu.Download<ushort>(dQ, nH * d), Is.EqualTo(_emu.Download<ushort>(dNormed, nH * d)), "rope at position 0 is the identity: bitwise equal");
    }

    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(QkNormRopeParams), "rope.cu", "QkNormRopeParams");

    [Test]
    public void RejectsUnsupportedHeadDim() => Assert.Throws<ArgumentException>(() => _ = new RopeLaunchers(_emu.Loader, 96));
}
