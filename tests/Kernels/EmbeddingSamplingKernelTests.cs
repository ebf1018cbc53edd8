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

    /// <summary>
    /// Issue 12, fault 5: the draw at a warp boundary of the block scan. 1024 tokens (one per thread); logit -k_i at inverse
    /// temperature ln 2 (fp32 0x3f317218, for which (-k * it) * log2(e) is exactly -k in fp32 for every k used here), so every
    /// kept mass is exactly 2^-k_i and the CPU can redo the kernel's fp32 scan bit for bit. The exponents (a counter hash,
    /// 1..25, 1..3 at warp edges, 0 for the maximum at token 1023) and the Philox step are chosen so that u falls where the
    /// old per-thread claim (excl &lt;= u &lt; incl, lane 31's incl from the warp scan + the previous warps' prefix, lane 0's excl
    /// from the warp-level scan) left a gap (no claimant: the kernel fell back to the argmax, token 1023) or an overlap
    /// (two claimants writing the result: scheduling decides). <see cref="OldClaimants"/> shows that it does. The draw must be
    /// the token whose exact (double) cumulative interval holds u, or its neighbour across a boundary within the fp32 scan's
    /// rounding of u: at most 11 roundings of 2^-24 of the total per prefix, plus ex2.approx's 2^-22 relative on each mass,
    /// so 2^-19 of the total; the two tokens at the boundary carry 2^-3 or more, so only they qualify.
    /// </summary>
    [TestCase(1, 1160271ul, 0)]   // gap at the warp 24 / 25 boundary: nobody claimed u
    [TestCase(0, 1995517ul, 2)]   // overlap at the warp 26 / 27 boundary: two threads claimed u
    public void SampleClaimsExactlyOneTokenAtAWarpBoundary(int pattern, ulong step, int oldClaimants)
    {
        const int vocab = 1024;
        const ulong seed = 1234;
        float it = BitConverter.Int32BitsToSingle(0x3f317218);
        int[] k = Enumerable.Range(0, vocab).Select(i => ScanBoundaryExponent(pattern, i)).ToArray();
        foreach (int e in k.Distinct()) Assert.That((-(float)e * it - 0f) * 1.44269502f, Is.EqualTo(-(float)e), $"mass 2^-{e} is exact");
        float[] mass = k.Select(e => MathF.Pow(2f, -e)).ToArray();
        var (u, claimants) = OldClaimants(mass, seed, step);
        Assert.That(claimants, Has.Count.EqualTo(oldClaimants), $"the case hits the old claim's {(oldClaimants == 0 ? "gap" : "overlap")} (u {u:R})");

        double total = mass.Sum(m => (double)m), tol = total / (1 << 19), cum = 0;
        var accepted = new List<int>();
        for (int i = 0; i < vocab; i++)
        {
            if (cum - tol <= u && u < cum + mass[i] + tol) accepted.Add(i);   // exact: sums of powers of two in double
            cum += mass[i];
        }
        Assert.That(accepted, Has.Count.EqualTo(2).And.Not.Contains(vocab - 1), "u sits at a boundary between two heavy tokens");

        var launcher = new SamplingLaunchers(_emu.Loader);
        DevicePtr logits = _emu.Upload(Bf16.FromFloats(k.Select(e => -(float)e).ToArray()));
        var settings = new SampleRowSettings { Seed = seed, Step = step, InvTemperature = it, TopK = 0, TopP = 1f, MinP = 0f };
        DevicePtr ids = _emu.AllocFilled<int>(1);
        launcher.SampleRows(_emu.Stream, logits, vocab, 1, vocab, _emu.Upload(new[] { settings }), ids);
        int rows = _emu.Download<int>(ids, 1)[0];
        Assert.That(accepted, Does.Contain(rows), $"sample_rows_bf16 drew {rows} for u {u:R}; the tokens at the boundary are {string.Join(", ", accepted)}");
        float temperature = 1f / it;
        Assert.That(1f / temperature, Is.EqualTo(it), "sample_bf16 gets the same inverse temperature");
        launcher.Sample(_emu.Stream, logits, vocab, 1, vocab, ids, new SamplingSettings(temperature, 0, 1f, 0f, seed), step);
        Assert.That(_emu.Download<int>(ids, 1)[0], Is.EqualTo(rows), "sample_bf16 (row 0: the same Philox counter) draws the same token");
    }

    /// <summary>Exponent k_i of token i's mass 2^-k_i in <see cref="SampleClaimsExactlyOneTokenAtAWarpBoundary"/>.</summary>
    private static int ScanBoundaryExponent(int pattern, int i)
    {
        if (i == 1023) return 0;   // the maximum (argmax), far from the boundaries that matter
        ulong x = (ulong)(uint)pattern * 0x9E3779B97F4A7C15UL ^ (ulong)i * 0xD1B54A32D192ED03UL;
        x ^= x >> 31; x *= 0xBF58476D1CE4E5B9UL; x ^= x >> 29;
        if (i % 32 is 0 or 31) return 1 + (int)(x % 3);
        int[] exact = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25];
        return exact[x % (ulong)exact.Length];
    }

    /// <summary>
    /// The pre-fix kernel's claim on one row of 1024 segments of one token each, in the kernel's fp32 order: Hillis-Steele
    /// inclusive scan within each warp (shfl_up by 1, 2, 4, 8, 16), the same over the 32 warp totals, lane incl += the
    /// previous warps' prefix; excl = the previous lane's incl, or for lane 0 the previous warps' prefix. Returns u and
    /// the threads for which excl &lt;= u &lt; incl held.
    /// </summary>
    private static (float U, List<int> Claimants) OldClaimants(float[] mass, ulong seed, ulong step)
    {
        static void Scan(Span<float> v)
        {
            for (int o = 1; o < 32; o <<= 1)
            {
                var old = v.ToArray();
                for (int l = o; l < 32; l++) v[l] = old[l] + old[l - o];
            }
        }
        var incl = (float[])mass.Clone();
        for (int w = 0; w < 32; w++) Scan(incl.AsSpan(w * 32, 32));
        var warps = new float[32];
        for (int w = 0; w < 32; w++) warps[w] = incl[w * 32 + 31];
        Scan(warps);
        for (int t = 32; t < 1024; t++) incl[t] += warps[t / 32 - 1];
        float u = (float)(Philox(seed, step, 0) >> 8) * (1f / 16777216f) * warps[31];
        var claimants = new List<int>();
        for (int t = 0; t < 1024; t++)
        {
            float excl = t % 32 != 0 ? incl[t - 1] : t == 0 ? 0f : warps[t / 32 - 1];
            if (mass[t] > 0 && u >= excl && u < incl[t]) claimants.Add(t);
        }
        return (u, claimants);
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
