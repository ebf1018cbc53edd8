using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>moe_router_topk against ReferenceOps.Matmul + RouterTopK on exact-sum data (logits exact in any order).</summary>
[TestFixture]
public class MoeRouterTests
{
    static (int[] Ids, float[] Weights, float[] RefLogits) Run(MoeShape s, int tokens, int seed, bool tied)
    {
        var c = MoeCase.Create(s, tokens, seed, tiedRouter: tied, withExperts: false);
        using var dev = new MoeDevice(s); // no experts needed
        var hidden = dev.Upload(c.Hidden);
        var router = dev.Upload(c.Router);
        var logits = dev.Device.Allocate(tokens * s.Experts * 4L);
        var counters = dev.Device.Allocate(4 * ((tokens + 7) / 8));
        var ids = dev.Device.Allocate(tokens * s.TopK * 4L);
        var wts = dev.Device.Allocate(tokens * s.TopK * 4L);
        dev.Moe.Router(dev.Device.DefaultStream, s, tokens, hidden, router, logits, counters, ids, wts);
        var refLogits = new float[tokens * s.Experts];
        ReferenceOps.Matmul(MoeCase.ToFloat(c.Hidden), c.Router, refLogits, tokens, s.Hidden, s.Experts);
        // Exact: with exact-sum data fp32 accumulation is order-independent, then one bf16 rounding.
        Assert.That(dev.Read<float>(logits, tokens * s.Experts), Is.EqualTo(refLogits), "router logits");
        Assert.That(dev.Read<int>(counters, (tokens + 7) / 8), Is.All.Zero, "tickets are reset for the next launch");
        var gotIds = dev.Read<int>(ids, tokens * s.TopK);
        var gotW = dev.Read<float>(wts, tokens * s.TopK);
        Assert.That(gotIds, Is.EqualTo(c.RefIds), "top-k expert ids (ties to the lower index)");
        // Softmax in fp32 with a different exp implementation and summation order: a few fp32 ulps of values <= 1.
        Assert.That(gotW, Is.EqualTo(c.RefWeights).Within(2e-6f), "top-k weights");
        return (gotIds, gotW, refLogits);
    }

    [Test]
    public void RealRouter_TwentyTokens_ThreeTokenBlocks() => Run(new MoeShape(128, 8, 2048, 768, true), 20, seed: 11, tied: false);

    /// <summary>Router rows 2m and 2m+1 are identical: every logit is tied with its pair, so the top-8 is 4 pairs, each (2m, 2m+1).</summary>
    [Test]
    public void ExactTies_GoToTheLowerExpertIndex()
    {
        var (ids, w, _) = Run(new MoeShape(128, 8, 256, 64, true), 5, seed: 12, tied: true);
        for (int t = 0; t < 5; t++)
            for (int q = 0; q < 4; q++)
            {
                int a = ids[t * 8 + 2 * q], b = ids[t * 8 + 2 * q + 1];
                Assert.That(a % 2, Is.Zero, $"token {t}: rank {2 * q} takes the lower index of a tied pair");
                Assert.That(b, Is.EqualTo(a + 1), $"token {t}: rank {2 * q + 1} is the tied partner");
                Assert.That(w[t * 8 + 2 * q + 1], Is.EqualTo(w[t * 8 + 2 * q]), "tied experts get bitwise equal weights");
            }
    }

    [Test]
    public void MaxExperts256_TopK16() => Run(new MoeShape(256, 16, 512, 64, true), 9, seed: 13, tied: false);

    [Test]
    public void OddExpertCount60_TopK4_NoNorm() => Run(new MoeShape(60, 4, 264, 64, false), 3, seed: 14, tied: false);

    [Test]
    public void TopKEqualsExpertCount()
    {
        var (ids, w, _) = Run(new MoeShape(8, 8, 128, 64, true), 2, seed: 15, tied: false);
        for (int t = 0; t < 2; t++)
        {
            Assert.That(ids.Skip(t * 8).Take(8).Order(), Is.EqualTo(Enumerable.Range(0, 8)), "every expert is chosen once");
            // Renormalised weights sum to 1 up to fp32 rounding of 8 terms.
            Assert.That(w.Skip(t * 8).Take(8).Sum(), Is.EqualTo(1f).Within(1e-6f));
        }
    }

    /// <summary>
    /// Non-finite router logits (issue 12, fault 3): expert 5's router row holds a NaN (its logit is NaN for every token),
    /// token 2's hidden row is all NaN (all its logits NaN) and token 3's holds +inf (logits +inf, -inf or NaN, as
    /// inf * 0 is NaN). A NaN logit counts as -inf, so tokens 0, 1, 4.. route exactly as the reference with expert 5
    /// excluded; tokens 2 and 3 get k distinct ids in [0, E). Before the fix every id of every token was 0x7fffffff
    /// (the NaN sum made every probability NaN, and no comparison with NaN is true), which the decode GEMVs and
    /// moe_align then used as an index.
    /// </summary>
    [Test]
    public void NonFiniteLogits_NeverGiveAnInvalidExpertId()
    {
        var s = new MoeShape(128, 8, 256, 64, true);
        const int tokens = 11;
        var c = MoeCase.Create(s, tokens, seed: 16, withExperts: false);
        var router = (ushort[])c.Router.Clone();
        var hidden = (ushort[])c.Hidden.Clone();
        router[5 * s.Hidden + 17] = 0x7fc0;                                           // NaN in expert 5's row
        for (int h = 0; h < s.Hidden; h++) hidden[2 * s.Hidden + h] = 0x7fc0;        // token 2: all NaN
        hidden[3 * s.Hidden + 9] = 0x7f80;                                           // token 3: +inf in one column
        using var dev = new MoeDevice(s);
        var logits = dev.Device.Allocate(tokens * s.Experts * 4L);
        var counters = dev.Device.Allocate(4 * ((tokens + 7) / 8));
        var ids = dev.Device.Allocate(tokens * s.TopK * 4L);
        var wts = dev.Device.Allocate(tokens * s.TopK * 4L);
        dev.Moe.Router(dev.Device.DefaultStream, s, tokens, dev.Upload(hidden), dev.Upload(router), logits, counters, ids, wts);
        var gotIds = dev.Read<int>(ids, tokens * s.TopK);
        var gotW = dev.Read<float>(wts, tokens * s.TopK);
        var gotLogits = dev.Read<float>(logits, tokens * s.Experts);
        Assert.That(float.IsNaN(gotLogits[5]) && float.IsNaN(gotLogits[2 * s.Experts]), Is.True, "the case really has NaN logits");
        for (int t = 0; t < tokens; t++)
        {
            var row = gotIds.AsSpan(t * s.TopK, s.TopK).ToArray();
            Assert.That(row, Is.All.InRange(0, s.Experts - 1), $"token {t}: expert ids");
            Assert.That(row, Is.Unique, $"token {t}: expert ids");
            if (t is 2 or 3) continue;
            var refIds = new int[s.TopK];
            var refW = new float[s.TopK];
            ReferenceOps.RouterTopK(gotLogits.AsSpan(t * s.Experts, s.Experts), s.TopK, s.NormTopkProb, refIds, refW);
            Assert.That(row, Is.EqualTo(refIds).And.Not.Contains(5), $"token {t}: ids as the reference with the NaN expert 5 excluded");
            // As RealRouter_TwentyTokens_ThreeTokenBlocks: fp32 softmax in another order, a few ulps of values <= 1.
            Assert.That(gotW.AsSpan(t * s.TopK, s.TopK).ToArray(), Is.EqualTo(refW).Within(2e-6f), $"token {t}: weights");
        }
        Assert.That(dev.Read<int>(counters, (tokens + 7) / 8), Is.All.Zero, "tickets are reset for the next launch");
    }

    [Test]
    public void UnsupportedShapes_AreRejectedWithAClearMessage()
    {
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(300, 8, 2048, 768, true), true), Throws.ArgumentException.With.Message.Contains("300 experts"));
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 17, 2048, 768, true), true), Throws.ArgumentException.With.Message.Contains("top-k 17"));
        // The grouped GEMMs step K by 32: I 80 decodes (GEMVs) but has no grouped GEMM; I 96 takes the guarded variant.
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 8, 2048, 80, true), false), Throws.ArgumentException.With.Message.Contains("must be multiples of 32"));
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 8, 2048, 80, true), true), Throws.Nothing);
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 8, 2048, 96, true), false), Throws.Nothing);
    }
}
