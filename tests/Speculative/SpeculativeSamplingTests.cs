using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Runtime.Launchers;
using static Qwen3Cuda.Tests.Support.ChiSquareTest;

namespace Qwen3Cuda.Tests.Speculative;

/// <summary>
/// Sampled speculative decoding draws from the target's distribution (docs/speculative.md): many seeded runs on host
/// Markov-chain models (<see cref="ToyModel"/>), the joint distribution of the first three emitted tokens compared with
/// the exact one of plain sampling (the product of the target's warped next-token distributions) by a chi-square test.
/// </summary>
public class SpeculativeSamplingTests
{
    const int Vocab = 5, Draws = 20000;

    /// <summary>Exact joint probability of tokens (a, b, c) after token <paramref name="start"/> under the model's warped distribution.</summary>
    static double[] Joint3(ToyModel m, int start, in SamplingSettings s)
    {
        var sampler = new CounterSampler();
        var logits = new float[Vocab];
        var dist = new double[Vocab][];
        for (int t = 0; t < Vocab; t++)
        {
            m.Logits(t, logits);
            dist[t] = new double[Vocab];
            sampler.Probabilities(logits, s, dist[t]);
        }
        var joint = new double[Vocab * Vocab * Vocab];
        for (int a = 0; a < Vocab; a++)
            for (int b = 0; b < Vocab; b++)
                for (int c = 0; c < Vocab; c++)
                    joint[(a * Vocab + b) * Vocab + c] = dist[start][a] * dist[a][b] * dist[b][c];
        return joint;
    }

    /// <summary>A presence penalty of 1 over every token seen (the history and the proposals before the row).</summary>
    static void Presence(Span<float> logits, IReadOnlyList<int> history, ReadOnlySpan<int> proposed)
    {
        var seen = new HashSet<int>(history);
        foreach (int t in proposed) seen.Add(t);
        foreach (int t in seen) logits[t] -= 1f;
    }

    /// <summary>Exact joint of (a, b, c) after token 0 with <see cref="Presence"/> applied to each step's logits.</summary>
    static double[] Joint3WithPresence(ToyModel m, SamplingSettings s)
    {
        var sampler = new CounterSampler();
        var logits = new float[Vocab];
        var p = new double[Vocab];
        double[] Next(List<int> h)
        {
            m.Logits(h[^1], logits);
            Presence(logits, h, default);
            var r = new double[Vocab];
            sampler.Probabilities(logits, s, r);
            return r;
        }
        var joint = new double[Vocab * Vocab * Vocab];
        var pa = Next([0]);
        for (int a = 0; a < Vocab; a++)
        {
            var pb = Next([0, a]);
            for (int b = 0; b < Vocab; b++)
            {
                var pc = Next([0, a, b]);
                for (int c = 0; c < Vocab; c++) joint[(a * Vocab + b) * Vocab + c] = pa[a] * pb[b] * pc[c];
            }
        }
        return joint;
    }

    static long[] SpeculativeCounts(ToyModel target, ToyModel draft, int k, in SamplingSettings settings, LogitsProcessor? processor = null)
    {
        var counts = new long[Vocab * Vocab * Vocab];
        var emitted = new List<int>();
        var history = new List<int>();
        using var drafter = new ModelDrafter(draft);
        for (int d = 0; d < Draws; d++)
        {
            var s = settings with { Seed = 1000 + (ulong)d };
            target.ResetSequence(0);
            history.Clear();
            history.Add(0);                                 // the prompt: token 0 (the cache holds none of it)
            using var decoder = new SpeculativeDecoder(target, 0, drafter, k) { Processor = processor };
            while (history.Count < 4)
            {
                emitted.Clear();
                decoder.Step(history, s, 4 - history.Count, emitted);
                history.AddRange(emitted);
            }
            counts[(history[1] * Vocab + history[2]) * Vocab + history[3]]++;
        }
        return counts;
    }

    [TestCase(1.0f, 0, 1.0f, 0.0f, 3)]      // plain softmax, k 3
    [TestCase(0.7f, 4, 0.9f, 0.0f, 2)]      // temperature, top-k, top-p (tokens outside the kept set: probability 0), k 2
    [TestCase(1.3f, 0, 1.0f, 0.1f, 4)]      // min-p, k 4
    public void SampledTokens_FollowTheTargetDistribution(float temperature, int topK, float topP, float minP, int k)
    {
        var target = new ToyModel(ToyModel.RandomTable(Vocab, 1));
        var draft = new ToyModel(ToyModel.RandomTable(Vocab, 2));   // another chain: q differs from p, many rejections
        var settings = new SamplingSettings(temperature, topK, topP, minP);
        var counts = SpeculativeCounts(target, draft, k, settings);
        var (chi, df) = ChiSquare(counts, Joint3(target, 0, settings), Draws);
        TestContext.Out.WriteLine($"chi2 {chi:F1} with {df} degrees of freedom; 0.1% point {Critical(df):F1}");
        Assert.That(chi, Is.LessThan(Critical(df)), "speculative samples against plain sampling's exact distribution");
        // The test has power: the same counts are far from the draft's own distribution (what a broken acceptance rule would
        // approach), and the draft was rejected often enough to exercise the residual draws.
        var (chiDraft, _) = ChiSquareLenient(counts, Joint3(draft, 0, settings), Draws);
        Assert.That(chiDraft, Is.GreaterThan(10 * Critical(df)), "the draft's distribution is distinguishable");
    }

    /// <summary>
    /// A penalty applied to the target's rows only (the draft draws without it): the output follows the penalised target
    /// distribution, each row with its own context.
    /// </summary>
    [Test]
    public void SampledTokensWithPresencePenalty_FollowThePenalisedDistribution()
    {
        var target = new ToyModel(ToyModel.RandomTable(Vocab, 1));
        var draft = new ToyModel(ToyModel.RandomTable(Vocab, 2));
        var settings = new SamplingSettings(0.9f, 0, 1f, 0f);
        var counts = SpeculativeCounts(target, draft, 3, settings, Presence);
        var (chi, df) = ChiSquare(counts, Joint3WithPresence(target, settings), Draws);
        TestContext.Out.WriteLine($"chi2 {chi:F1} with {df} degrees of freedom; 0.1% point {Critical(df):F1}");
        Assert.That(chi, Is.LessThan(Critical(df)));
        var (chiPlain, _) = ChiSquareLenient(counts, Joint3(target, 0, settings), Draws);
        Assert.That(chiPlain, Is.GreaterThan(3 * Critical(df)), "distinguishable from the unpenalised distribution");
    }

    /// <summary>The acceptance rule alone: with the target itself as the draft (p = q) every proposal is accepted.</summary>
    [Test]
    public void SameDistribution_AcceptsEveryProposal()
    {
        var table = ToyModel.RandomTable(Vocab, 3);
        var target = new ToyModel(table);
        using var drafter = new ModelDrafter(new ToyModel(table));
        using var decoder = new SpeculativeDecoder(target, 0, drafter, 4);
        var history = new List<int> { 1 };
        var emitted = new List<int>();
        for (int r = 0; r < 50; r++)
        {
            emitted.Clear();
            decoder.Step(history, new SamplingSettings(0.8f, Seed: (ulong)r), 5, emitted);
            history.AddRange(emitted);
            target.ResetSequence(0);
            history.RemoveRange(1, history.Count - 1);
        }
        Assert.That(decoder.Stats.AcceptanceRate, Is.EqualTo(1.0));
        Assert.That(decoder.Stats.EmittedTokens, Is.EqualTo(50 * 5));
    }

    /// <summary>Rejected proposals are rolled back: the target's cache ends right after the accepted ones, its pages returned.</summary>
    [Test]
    public void RejectedPositions_AreTruncatedAndTheirPagesFreed()
    {
        var target = new ToyModel(ToyModel.RandomTable(Vocab, 1), contextLength: 64, maxSequences: 1);
        int free = target.Kv.FreePages;
        using var drafter = new ModelDrafter(new ToyModel(ToyModel.RandomTable(Vocab, 2)));
        using var decoder = new SpeculativeDecoder(target, 0, drafter, 12);
        var history = new List<int> { 0 };
        var emitted = new List<int>();
        long rejectedRounds = 0;
        for (int r = 0; r < 20; r++)
        {
            emitted.Clear();
            int before = (int)decoder.Stats.AcceptedTokens;
            decoder.Step(history, new SamplingSettings(1f, Seed: 7), 13, emitted);
            int accepted = (int)decoder.Stats.AcceptedTokens - before;
            if (accepted < 12) rejectedRounds++;
            Assert.That(target.Kv.Length(0), Is.EqualTo(history.Count + accepted), "history + accepted proposals");
            history.AddRange(emitted);
            Assert.That(target.Kv.Length(0), Is.EqualTo(history.Count - 1));
            Assert.That(target.Kv.FreePages, Is.EqualTo(free - (target.Kv.Length(0) + 3) / 4), "pages past the kept length returned (page size 4)");
            if (history.Count > 40) { target.ResetSequence(0); history.RemoveRange(1, history.Count - 1); }
        }
        Assert.That(rejectedRounds, Is.GreaterThan(0));
    }

    [Test]
    public void NgramDrafter_ProposesWhatFollowedTheLastOccurrence()
    {
        var d = new NgramDrafter(maxNgram: 3);
        var draft = new int[4];
        // ... 7 8 9 | 1 2 ... 7 8 9 -> the 3-gram "7 8 9" occurred before, followed by 1 2 3 4
        int n = d.Propose([7, 8, 9, 1, 2, 3, 4, 5, 7, 8, 9], 4, default, draft, default, 0);
        Assert.That(draft.AsSpan(0, n).ToArray(), Is.EqualTo(new[] { 1, 2, 3, 4 }));
        // only a 1-gram match: "5" followed by 6 earlier; the proposal stops at the history's end
        n = d.Propose([5, 6, 1, 5], 4, default, draft, default, 0);
        Assert.That(draft.AsSpan(0, n).ToArray(), Is.EqualTo(new[] { 6, 1, 5 }));
        Assert.That(d.Propose([1, 2, 3], 4, default, draft, default, 0), Is.Zero, "no earlier occurrence: no proposal");
        // with probabilities: one-hot rows
        var probs = new double[4 * 10];
        n = d.Propose([3, 4, 3], 4, default, draft, probs, 0);
        Assert.That(n, Is.EqualTo(2));
        Assert.That(probs.AsSpan(0, 10).ToArray(), Is.EqualTo(new double[] { 0, 0, 0, 0, 1, 0, 0, 0, 0, 0 }));
    }
}
