using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;
using static Qwen3Cuda.Tests.Support.ChiSquareTest;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// The device sampler (sampling.cu: many CTAs per row, thresholds from the histogram of bf16 values) draws from the
/// warpers' distribution (<see cref="CounterSampler.Probabilities"/>): a row of 4,608 logits (two CTAs per row) with
/// 14 candidates spread over both slices, two of them tied, the rest at -40 (mass e^-40 each: one cell); many rows per
/// launch (Philox row word = the row) over a few steps, a fixed number of draws, chi-square against the exact
/// distribution at the 0.1% point (a token outside the kept set fails at once; a kept token never drawn, e.g. one of the
/// tie at top-k 5, makes the statistic explode).
/// </summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class SamplingDistributionTests(string backend) : KernelBackendFixture(backend)
{
    const int Vocab = 4096 + 512, Rows = 500, Steps = 4;
    static readonly (int Token, float Logit)[] Candidates =
    [
        (3, 2.0f), (100, 1.25f), (777, 2.5f), (2048, 0.5f), (4095, 1.75f), (4096, 1.0f), (4100, 2.5f),
        (4200, -0.5f), (4300, 0.75f), (4400, 1.5f), (4500, 0.25f), (4600, 1.5f), (4607, -1.0f), (1, 0f),
    ];

    static float[] Logits()
    {
        var x = Enumerable.Repeat(-40f, Vocab).ToArray();
        foreach (var (t, l) in Candidates) x[t] = l;
        return x;
    }

    [TestCase(0.8f, 0, 1f, 0f)]          // temperature only
    [TestCase(1f, 5, 1f, 0f)]            // top-k: the 5th and 6th largest (1.5 at 4400 and 4600) tie: 6 kept
    [TestCase(1.2f, 0, 0.7f, 0f)]        // top-p
    [TestCase(0.9f, 8, 0.9f, 0.1f)]      // all three
    [TestCase(1.5f, 0, 1f, 0.2f)]        // min-p only
    public void DrawsFollowTheWarpedDistribution(float temperature, int topK, float topP, float minP)
    {
        var ctx = Ctx;
        var launcher = ctx.Cached("sampling", () => new SamplingLaunchers(ctx.Loader));
        float[] logits = Logits();
        ushort[] bf = KernelData.FromFloats(logits);
        float[] exact = KernelData.ToFloats(bf);
        Assert.That(exact, Is.EqualTo(logits), "the logits are exact in bf16");
        var all = new ushort[Rows * Vocab];
        for (int r = 0; r < Rows; r++) bf.CopyTo(all, r * Vocab);
        var s = new SamplingSettings(temperature, topK, topP, minP, Seed: 4242);
        var scratch = SamplingCases.Scratch(ctx, Rows, Vocab);
        var dLogits = ctx.Upload(all);
        var ids = ctx.AllocFilled<int>(Rows);
        var p = new double[Vocab];
        new CounterSampler().Probabilities(logits, s, p);

        // Cells: the candidates, then every other token together.
        int[] cellOf = Enumerable.Repeat(Candidates.Length, Vocab).ToArray();
        for (int c = 0; c < Candidates.Length; c++) cellOf[Candidates[c].Token] = c;
        var expected = new double[Candidates.Length + 1];
        for (int i = 0; i < Vocab; i++) expected[cellOf[i]] += p[i];
        var counts = new long[expected.Length];
        for (int step = 0; step < Steps; step++)
        {
            launcher.Sample(ctx.Stream, dLogits, Vocab, Rows, Vocab, ids, s, (ulong)(1000 + step), scratch);
            foreach (int t in ctx.Download<int>(ids, Rows))
            {
                Assert.That(t, Is.InRange(0, Vocab - 1), "token id");
                counts[cellOf[t]]++;
            }
        }
        long n = (long)Rows * Steps;
        var (chi, df) = ChiSquare(counts, expected, n);
        TestContext.Out.WriteLine($"{s}: counts {string.Join(" ", counts)}; chi2 {chi:F1} with {df} degrees of freedom; 0.1% point {Critical(df):F1}");
        Assert.That(df, Is.GreaterThanOrEqualTo(topK > 0 && topK < 8 ? 5 : 2), "the setting keeps several tokens");
        Assert.That(chi, Is.LessThan(Critical(df)), "device draws against the warpers' exact distribution");
    }

    /// <summary>The histogram and tickets are left zero: a second, different row after many launches still draws right.</summary>
    [Test]
    public void ScratchIsLeftZero()
    {
        var ctx = Ctx;
        var launcher = ctx.Cached("sampling", () => new SamplingLaunchers(ctx.Loader));
        var scratch = SamplingCases.Scratch(ctx, 2, Vocab);
        var ids = ctx.AllocFilled<int>(2);
        var dLogits = ctx.Upload(KernelData.FromFloats([.. Logits(), .. Logits()]));
        launcher.Sample(ctx.Stream, dLogits, Vocab, 2, Vocab, ids, new SamplingSettings(1f, 3, 0.9f, 0f, Seed: 1), 5, scratch);
        launcher.Argmax(ctx.Stream, dLogits, Vocab, 2, Vocab, ids, scratch);
        var bytes = ctx.Download<byte>(scratch.Base, SamplingScratch.Bytes(2, Vocab));
        long histAndTickets = 2L * SamplingScratch.Buckets * 4 + 16;
        Assert.That(bytes.Take((int)histAndTickets).All(b => b == 0), "histograms and tickets are zero after the launches");
        Assert.That(ctx.Download<int>(ids, 2), Is.EqualTo(new[] { 777, 777 }), "argmax: the first of the two 2.5s");
    }
}
