using Qwen3Cuda.Model.Sampling;

namespace Qwen3Cuda.Tests.Text;

public class SamplerTests
{
    static float[] RandomLogits(int n, int seed)
    {
        var r = new Random(seed);
        return Enumerable.Range(0, n).Select(_ => (float)(r.NextDouble() * 10 - 5)).ToArray();
    }

    static int[] Counts(SamplingOptions o, float[] logits, int draws)
    {
        var s = new Sampler(o);
        var counts = new int[logits.Length];
        for (int i = 0; i < draws; i++) counts[s.Sample((float[])logits.Clone())]++;
        return counts;
    }

    /// <summary>Logits whose softmax (T = 1) is exactly the given probabilities.</summary>
    static float[] FromProbs(params double[] p) => p.Select(x => (float)Math.Log(x)).ToArray();

    [Test]
    public void GreedyIsArgMaxWithLowestIndexOnTies()
    {
        for (int seed = 0; seed < 20; seed++)
        {
            var logits = RandomLogits(1000, seed);
            int expected = Array.IndexOf(logits, logits.Max());
            Assert.That(new Sampler(SamplingOptions.Greedy).Sample(logits), Is.EqualTo(expected));
        }
        Assert.That(Sampler.ArgMax([1f, 3f, 3f, 2f]), Is.EqualTo(1));
        Assert.That(Sampler.ArgMax([float.NaN, 1f, float.NaN]), Is.EqualTo(1));
    }

    [Test]
    public void TopKOneIsArgMaxAtAnyTemperature()
    {
        var logits = RandomLogits(500, 7);
        int argmax = Array.IndexOf(logits, logits.Max());
        var counts = Counts(new SamplingOptions { Temperature = 5f, TopK = 1, TopP = 1, Seed = 3 }, logits, 200);
        Assert.That(counts[argmax], Is.EqualTo(200));
    }

    [Test]
    public void TopKKeepsOnlyTheKBest()
    {
        var logits = RandomLogits(300, 11);
        var best3 = logits.Select((v, i) => (v, i)).OrderByDescending(x => x.v).Take(3).Select(x => x.i).ToHashSet();
        var counts = Counts(new SamplingOptions { Temperature = 50f, TopK = 3, TopP = 1, Seed = 5 }, logits, 3000);
        for (int i = 0; i < counts.Length; i++)
            if (!best3.Contains(i)) Assert.That(counts[i], Is.Zero, $"token {i} is outside the top 3");
        // At T = 50 the three are nearly uniform, so each appears.
        Assert.That(best3.All(i => counts[i] > 0));
    }

    [Test]
    public void TopPKeepsTheSmallestPrefixReachingP()
    {
        var logits = FromProbs(0.5, 0.3, 0.15, 0.05);
        // Cumulative 0.5, 0.8, 0.95: top_p 0.75 keeps tokens 0 and 1; 0.81 also needs token 2. (Not exactly 0.8:
        // the float logits make the cumulative sum 0.8 +- 1e-7, so the boundary itself is not a stable test point.)
        var c = Counts(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 0.75f, Seed = 1 }, logits, 4000);
        Assert.That(c[2] + c[3], Is.Zero);
        Assert.That(c[0] > 0 && c[1] > 0);
        var c2 = Counts(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 0.81f, Seed = 1 }, logits, 4000);
        Assert.That(c2[2], Is.GreaterThan(0));
        Assert.That(c2[3], Is.Zero);
    }

    [Test]
    public void MinPDropsTokensBelowFractionOfTheBest()
    {
        var logits = FromProbs(0.5, 0.3, 0.15, 0.05);
        // threshold 0.5 * 0.5 = 0.25: tokens 0 (0.5) and 1 (0.3) stay.
        var c = Counts(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, MinP = 0.5f, Seed = 9 }, logits, 4000);
        Assert.That(c[2] + c[3], Is.Zero);
        Assert.That(c[1], Is.GreaterThan(0));
    }

    [Test]
    public void SampledFrequenciesFollowTheSoftmax()
    {
        var p = new[] { 0.4, 0.3, 0.2, 0.1 };
        const int draws = 20000;
        var c = Counts(new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, Seed = 42 }, FromProbs(p), draws);
        for (int i = 0; i < p.Length; i++)
        {
            // Binomial standard deviation sqrt(n p (1-p)) <= 70 here; 5 sigma makes a false failure ~1e-6.
            double sigma = Math.Sqrt(draws * p[i] * (1 - p[i]));
            Assert.That(c[i], Is.EqualTo(draws * p[i]).Within(5 * sigma), $"token {i}");
        }
    }

    [Test]
    public void TemperatureSharpensTheDistribution()
    {
        var logits = FromProbs(0.4, 0.3, 0.2, 0.1);
        var cold = Counts(new SamplingOptions { Temperature = 0.2f, TopK = 0, TopP = 1, Seed = 2 }, logits, 4000);
        // At T = 0.2, p0/p1 = (4/3)^5 = 4.2: token 0 takes well over half (expected ~0.73).
        Assert.That(cold[0], Is.GreaterThan(2600));
    }

    [Test]
    public void RepetitionPenaltyDividesPositiveAndMultipliesNegativeLogits()
    {
        var s = new Sampler(SamplingOptions.Greedy with { RepetitionPenalty = 2f });
        float[] logits = [4f, 3f, -1f, -1.5f];
        // Token 0 seen: 4 / 2 = 2 < 3, so token 1 wins.
        Assert.That(s.Sample(logits, repetitionContext: [0, 0]), Is.EqualTo(1));
        Assert.That(logits, Is.EqualTo(new[] { 2f, 3f, -1f, -1.5f }));
        float[] neg = [-1f, -1.5f];
        // Token 0 seen: -1 * 2 = -2 < -1.5.
        Assert.That(s.Sample(neg, repetitionContext: [0]), Is.EqualTo(1));
    }

    [Test]
    public void PresencePenaltySubtractsOncePerDistinctToken()
    {
        var s = new Sampler(SamplingOptions.Greedy with { PresencePenalty = 1.5f });
        float[] logits = [3f, 2f, 0f];
        Assert.That(s.Sample(logits, presenceContext: [0, 0, 0]), Is.EqualTo(1));
        Assert.That(logits[0], Is.EqualTo(1.5f)); // 3 - 1.5 once, not three times
    }

    [Test]
    public void SameSeedSameSequenceDifferentSeedDifferent()
    {
        var logits = RandomLogits(64, 3);
        int[] Run(ulong seed)
        {
            var s = new Sampler(new SamplingOptions { Temperature = 3f, TopK = 0, TopP = 1, Seed = seed });
            return Enumerable.Range(0, 100).Select(_ => s.Sample((float[])logits.Clone())).ToArray();
        }
        var first = Run(123);
        Assert.That(Run(123), Is.EqualTo(first));
        // 100 draws over a nearly flat 64-way distribution: two seeds agreeing everywhere is ~impossible.
        Assert.That(Run(124), Is.Not.EqualTo(first));
    }

    [TestCase("Temperature", -0.1f, "--temperature must be >= 0")]
    [TestCase("TopP", 1.5f, "--top-p must be in (0, 1], got 1.5")]
    [TestCase("TopP", 0f, "--top-p must be in (0, 1], got 0")]
    [TestCase("MinP", -0.5f, "--min-p must be in [0, 1]")]
    [TestCase("PresencePenalty", 3f, "--presence-penalty must be in [-2, 2]")]
    [TestCase("RepetitionPenalty", 0f, "--repetition-penalty must be > 0")]
    [TestCase("Temperature", float.NaN, "--temperature must be >= 0")]
    public void InvalidOptionsAreRejectedNamingTheOption(string field, float value, string message)
    {
        var o = field switch
        {
            "Temperature" => new SamplingOptions { Temperature = value },
            "TopP" => new SamplingOptions { TopP = value },
            "MinP" => new SamplingOptions { MinP = value },
            "PresencePenalty" => new SamplingOptions { PresencePenalty = value },
            _ => new SamplingOptions { RepetitionPenalty = value },
        };
        var e = Assert.Throws<ArgumentException>(() => new Sampler(o))!;
        Assert.That(e.Message, Does.StartWith(message));
        Assert.Throws<ArgumentException>(() => new Sampler(new SamplingOptions { TopK = -1 }));
    }

    [Test]
    public void DefaultsComeFromGenerationConfigElseModelCard()
    {
        var dir = Directory.CreateTempSubdirectory("q3gen").FullName;
        try
        {
            Assert.That(SamplingOptions.DefaultsFor(dir, thinking: false), Is.EqualTo(new SamplingOptions { Temperature = 0.7f, TopP = 0.8f, TopK = 20, MinP = 0 }));
            Assert.That(SamplingOptions.DefaultsFor(dir, thinking: true), Is.EqualTo(new SamplingOptions { Temperature = 0.6f, TopP = 0.95f, TopK = 20, MinP = 0 }));
            File.WriteAllText(Path.Combine(dir, "generation_config.json"), "{\"temperature\": 0.3, \"top_p\": 0.5, \"top_k\": 7}");
            var o = SamplingOptions.DefaultsFor(dir, thinking: false);
            Assert.That((o.Temperature, o.TopP, o.TopK), Is.EqualTo((0.3f, 0.5f, 7)));
            File.WriteAllText(Path.Combine(dir, "generation_config.json"), "{\"do_sample\": false}");
            Assert.That(SamplingOptions.DefaultsFor(dir, thinking: true).IsGreedy);
        }
        finally { Directory.Delete(dir, true); }
    }
}
