using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

[TestFixture]
public sealed class EmbeddingSamplingKernelTests
{
    private EmulatorContext _emu = null!;

    [OneTimeSetUp]
    public void SetUp() => _emu = new EmulatorContext();

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    [Test]
    public void EmbeddingGathersRowsAndFlagsBadIds()
    {
        var launcher = new EmbeddingLaunchers(_emu.Loader);
        const int vocab = 50, width = 2048;
        var rng = new Random(1);
        ushort[] table = Bf16.Random(rng, vocab * width);
        int[] ids = [3, 49, 0, 50, -1, 3];
        DevicePtr dOut = _emu.AllocFilled<ushort>(ids.Length * width), flag = _emu.Upload(new[] { 0 });
        launcher.Gather(_emu.Stream, dOut, _emu.Upload(table), _emu.Upload(ids), flag, ids.Length, vocab, width);
        ushort[] got = _emu.Download<ushort>(dOut, ids.Length * width);
        for (int t = 0; t < ids.Length; t++)
            for (int i = 0; i < width; i++)
            {
                ushort expected = ids[t] is >= 0 and < vocab ? table[ids[t] * width + i] : (ushort)0;
                if (got[t * width + i] != expected) Assert.Fail($"token {t} (id {ids[t]}) element {i}: got {got[t * width + i]:x4}, expected {expected:x4} (out-of-range ids give zeros)");
            }
        Assert.That(_emu.Download<int>(flag, 1)[0], Is.EqualTo(1), "error flag set by ids 50 and -1");

        _emu.Device.CopyToDevice(flag, new byte[4]);
        launcher.Gather(_emu.Stream, dOut, _emu.Upload(table), _emu.Upload(new[] { 1, 2 }), flag, 2, vocab, width);
        Assert.That(_emu.Download<int>(flag, 1)[0], Is.Zero, "no flag for valid ids");
    }

    [TestCase(151936)]   // real vocabulary
    [TestCase(37)]       // odd vocabulary (no 16-byte path)
    public void ArgmaxTakesTheLargestLowerIndexOnTies(int vocab)
    {
        var launcher = new SamplingLaunchers(_emu.Loader);
        var rng = new Random(vocab);
        const int rows = 2;
        ushort[] logits = Bf16.Random(rng, rows * vocab, 10f);
        // row 0: a unique maximum in the middle; row 1: the same maximum at two places
        logits[vocab / 2] = Bf16.FromFloat(20f);
        logits[vocab + vocab / 3] = Bf16.FromFloat(20f);
        logits[vocab + vocab - 1] = Bf16.FromFloat(20f);
        DevicePtr ids = _emu.AllocFilled<int>(rows);
        launcher.Argmax(_emu.Stream, _emu.Upload(logits), vocab, rows, vocab, ids);
        Assert.That(_emu.Download<int>(ids, rows), Is.EqualTo(new[] { vocab / 2, vocab / 3 }));
    }

    /// <summary>The distribution transformers' warpers define (temperature, top-k, top-p, min-p), computed on the CPU.</summary>
    internal static double[] ExpectedDistribution(float[] logits, SamplingSettings s)
    {
        int n = logits.Length;
        var x = logits.Select(v => (double)(v * (1f / s.Temperature))).ToArray();
        var order = Enumerable.Range(0, n).OrderByDescending(i => x[i]).ToArray();
        var keep = new bool[n];
        int k = s.TopK > 0 ? Math.Min(s.TopK, n) : n;
        double kth = x[order[k - 1]];
        for (int i = 0; i < n; i++) keep[i] = x[i] >= kth;
        double max = x[order[0]];
        double kept = Enumerable.Range(0, n).Where(i => keep[i]).Sum(i => Math.Exp(x[i] - max));
        if (s.TopP < 1f)
        {
            double cum = 0, threshold = double.NegativeInfinity;
            foreach (int i in order.Where(i => keep[i]))
            {
                cum += Math.Exp(x[i] - max);
                threshold = x[i];
                if (cum >= s.TopP * kept) break;
            }
            for (int i = 0; i < n; i++) keep[i] &= x[i] >= threshold;
        }
        if (s.MinP > 0f)
            for (int i = 0; i < n; i++) keep[i] &= x[i] >= max + Math.Log(s.MinP);
        double z = Enumerable.Range(0, n).Where(i => keep[i]).Sum(i => Math.Exp(x[i] - max));
        return Enumerable.Range(0, n).Select(i => keep[i] ? Math.Exp(x[i] - max) / z : 0).ToArray();
    }

    /// <summary>Philox4x32-10, counter (step lo, step hi, row, 0), key (seed lo, seed hi): the kernel's generator.</summary>
    internal static uint Philox(ulong seed, ulong step, uint row)
    {
        uint c0 = (uint)step, c1 = (uint)(step >> 32), c2 = row, c3 = 0, k0 = (uint)seed, k1 = (uint)(seed >> 32);
        for (int r = 0; r < 10; r++)
        {
            ulong p0 = 0xD2511F53ul * c0, p1 = 0xCD9E8D57ul * c2;
            (c0, c1, c2, c3) = ((uint)(p1 >> 32) ^ c1 ^ k0, (uint)p1, (uint)(p0 >> 32) ^ c3 ^ k1, (uint)p0);
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        return c0;
    }

    [TestCase(0.7f, 5, 1f, 0f)]       // temperature + top-k
    [TestCase(1.3f, 0, 0.8f, 0f)]     // top-p
    [TestCase(1f, 6, 0.95f, 0.08f)]   // all three
    public void SampleDrawsTheTokenOfItsRandomNumber(float temperature, int topK, float topP, float minP)
    {
        // Each row draws u from Philox(seed, step, row); the token is the first (in index order) whose cumulative
        // filtered probability exceeds u. The CPU computes the same from the warpers' distribution; the kernel's fp32
        // cumulative sums may move a boundary by ~1e-6, so a different token is accepted only when u lies within 1e-4 of
        // the boundary between the two.
        var launcher = new SamplingLaunchers(_emu.Loader);
        const int vocab = 12, rows = 8;
        float[] logits = [1.0f, 3.0f, 0.5f, 2.5f, -1f, 2.75f, 0f, 1.5f, 2.0f, -3f, 2.25f, 1.75f];
        ushort[] row = Bf16.FromFloats(logits);
        var all = new ushort[rows * vocab];
        for (int r = 0; r < rows; r++) row.CopyTo(all, r * vocab);
        var s = new SamplingSettings(temperature, topK, topP, minP, Seed: 1234);
        DevicePtr ids = _emu.AllocFilled<int>(rows);
        DevicePtr dLogits = _emu.Upload(all);
        launcher.Sample(_emu.Stream, dLogits, vocab, rows, vocab, ids, s, step: 7);
        int[] got = _emu.Download<int>(ids, rows);

        double[] p = ExpectedDistribution(Bf16.ToFloats(row), s);
        for (int r = 0; r < rows; r++)
        {
            double u = (Philox(s.Seed, 7, (uint)r) >> 8) / 16777216.0;
            int want = -1;
            double cum = 0;
            var before = new double[vocab];
            for (int i = 0; i < vocab; i++)
            {
                before[i] = cum;
                cum += p[i];
                if (want < 0 && p[i] > 0 && cum > u) want = i;
            }
            int g = got[r];
            Assert.That(g, Is.InRange(0, vocab - 1), $"row {r}");
            Assert.That(p[g], Is.GreaterThan(0), $"row {r}: token {g} is filtered out by the warpers");
            if (g != want)
                Assert.That(Math.Min(Math.Abs(before[g] - u), Math.Abs(before[g] + p[g] - u)), Is.LessThan(1e-4),
                    $"row {r}: u {u:F6} selects token {want}, kernel drew {g}");
        }

        // counter-based: the same (seed, step) repeats exactly; another step draws differently
        DevicePtr ids2 = _emu.AllocFilled<int>(rows);
        launcher.Sample(_emu.Stream, dLogits, vocab, rows, vocab, ids2, s, step: 7);
        Assert.That(_emu.Download<int>(ids2, rows), Is.EqualTo(got), "same seed and step: same tokens");
    }

    [Test]
    public void TopKOfOneIsGreedy()
    {
        var launcher = new SamplingLaunchers(_emu.Loader);
        ushort[] logits = Bf16.FromFloats([0.5f, 4f, 4f, -2f, 3.9f]);
        DevicePtr ids = _emu.AllocFilled<int>(1);
        launcher.Sample(_emu.Stream, _emu.Upload(logits), 5, 1, 5, ids, new SamplingSettings(1f, 1, 1f, 0f, 5), step: 3);
        Assert.That(_emu.Download<int>(ids, 1)[0], Is.EqualTo(1), "top_k 1 is argmax, lower index on ties");
    }

    [Test]
    public void SampleAtRealVocabularyStaysInTheTopK()
    {
        var launcher = new SamplingLaunchers(_emu.Loader);
        const int vocab = 151936;
        var rng = new Random(3);
        ushort[] logits = Bf16.Random(rng, vocab, 8f);
        DevicePtr ids = _emu.AllocFilled<int>(1);
        launcher.Sample(_emu.Stream, _emu.Upload(logits), vocab, 1, vocab, ids, new SamplingSettings(1f, 20, 1f, 0f, Seed: 99), step: 1);
        int id = _emu.Download<int>(ids, 1)[0];
        float[] f = Bf16.ToFloats(logits);
        float kth = f.OrderDescending().ElementAt(19);
        Assert.That(f[id], Is.GreaterThanOrEqualTo(kth), $"token {id} (logit {f[id]}) is not among the top 20 (threshold {kth})");
    }

    [Test]
    public void ParamsMirrorsMatchCuda()
    {
        StructLayoutCheck.AssertMatches(typeof(EmbeddingParams), "embedding.cu", "EmbeddingParams");
        StructLayoutCheck.AssertMatches(typeof(ArgmaxParams), "sampling.cu", "ArgmaxParams");
        StructLayoutCheck.AssertMatches(typeof(SampleParams), "sampling.cu", "SampleParams");
        StructLayoutCheck.AssertMatches(typeof(SampleRowSettings), "sampling.cu", "SampleRowSettings");
        StructLayoutCheck.AssertMatches(typeof(SampleRowsParams), "sampling.cu", "SampleRowsParams");
    }
}
