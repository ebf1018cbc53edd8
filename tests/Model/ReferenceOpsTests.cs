using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Tests.Model;

/// <summary>Op-level checks of ReferenceOps against values worked out by hand (derivations in comments).</summary>
public class ReferenceOpsTests
{
    static ushort[] W(params float[] v) => v.Select(Bf16.FromFloat).ToArray();

    [Test]
    public void MatmulComputesXTimesWTransposed()
    {
        // x = [1, 2]; W rows [1, 0], [0.5, 0.25], [-1, 1] -> [1, 1, 1]; second row x = [3, -1] -> [3, 1.25, -4].
        var y = new float[6];
        ReferenceOps.Matmul(new float[] { 1, 2, 3, -1 }, W(1, 0, 0.5f, 0.25f, -1, 1), y, rows: 2, inDim: 2, outDim: 3);
        Assert.That(y, Is.EqualTo(new float[] { 1, 1, 1, 3, 1.25f, -4 }));
    }

    [Test]
    public void MatmulLargeParallelPathMatchesDoubleDot()
    {
        // 40 x 300 by 300 x 257: goes through the parallel, vectorised path. Each output is a 300-term fp32 dot of
        // bf16 values of magnitude <= 1, rounded to bf16: tolerance one bf16 ulp (2^-8 relative) plus fp32 reduction
        // error (300 * 2^-24 * sum|x w| ~ 1e-4 absolute).
        var rng = new Random(5);
        int rows = 40, inDim = 300, outDim = 257;
        var x = Enumerable.Range(0, rows * inDim).Select(_ => Bf16.Round((float)(rng.NextDouble() * 2 - 1))).ToArray();
        var w = Enumerable.Range(0, outDim * inDim).Select(_ => Bf16.FromFloat((float)(rng.NextDouble() * 2 - 1))).ToArray();
        var y = new float[rows * outDim];
        ReferenceOps.Matmul(x, w, y, rows, inDim, outDim);
        for (int r = 0; r < rows; r += 7)
            for (int o = 0; o < outDim; o += 13)
            {
                double exact = 0;
                for (int i = 0; i < inDim; i++) exact += (double)x[r * inDim + i] * Bf16.ToFloat(w[o * inDim + i]);
                Assert.That(y[r * outDim + o], Is.EqualTo(exact).Within(Math.Abs(exact) / 256 + 1e-4), $"[{r},{o}]");
                Assert.That(Bf16.Round(y[r * outDim + o]), Is.EqualTo(y[r * outDim + o]), "outputs are bf16 values");
            }
    }

    [Test]
    public void RmsNormMatchesHandValues()
    {
        // x = [2, 2, 2, 2]: mean(x^2) = 4, rsqrt(4 + 1e-6) = 0.49999994 -> x*r = 0.99999988 -> bf16 1.0; times w.
        var y = new float[4];
        ReferenceOps.RmsNorm(new float[] { 2, 2, 2, 2 }, W(1, 2, 0.5f, -1), 1e-6f, y, 4);
        Assert.That(y, Is.EqualTo(new float[] { 1, 2, 0.5f, -1 }));
        // x = [3, 4]: rms = sqrt(12.5) = 3.5355339; x/rms = [0.8485281, 1.1313709].
        // bf16: 0.8485281 / 2^-8 = 217.2 -> 217/256 = 0.84765625; 1.1313709 / 2^-7 = 144.8 -> 145/128 = 1.1328125.
        // w = 1.5: 1.5 * 0.84765625 = 1.271484375 -> /2^-7 = 162.75 -> 163/128 = 1.2734375; 1.5 * 1.1328125 = 1.69921875 -> 217.5 -> 218 (even) / 128 = 1.703125.
        var z = new float[2];
        ReferenceOps.RmsNorm(new float[] { 3, 4 }, W(1.5f, 1.5f), 1e-6f, z, 2);
        Assert.That(z, Is.EqualTo(new[] { 1.2734375f, 1.703125f }));
    }

    [Test]
    public void DefaultRopeInvFreqAndPositionZeroIsIdentity()
    {
        // D = 4, theta = 10000: inv_freq[j] = 10000^(-2j/4) = [1, 0.01].
        var (inv, scale) = ReferenceOps.RopeParameters(4, 10000, null, 512);
        Assert.That(inv[0], Is.EqualTo(1f));
        Assert.That(inv[1], Is.EqualTo(0.01f).Within(1e-8f));
        Assert.That(scale, Is.EqualTo(1f));
        var cos = new float[4];
        var sin = new float[4];
        ReferenceOps.RopeCosSin(inv, scale, 0, cos, sin);
        Assert.That(cos, Is.EqualTo(new float[] { 1, 1, 1, 1 }));
        Assert.That(sin, Is.EqualTo(new float[] { 0, 0, 0, 0 }));
        var x = new[] { 0.5f, -1.25f, 3f, 0.0078125f, 1, 2, 3, 4 };
        var rotated = x.ToArray();
        ReferenceOps.ApplyRope(rotated, heads: 2, headDim: 4, cos, sin);
        Assert.That(rotated, Is.EqualTo(x), "position 0 must be the identity");
    }

    [Test]
    public void RopeRotatesHalvesNotAdjacentPairs()
    {
        // D = 4, theta 10000, position 1: angles [1, 0.01]. cos(1) = 0.5403023 -> bf16 138/256 = 0.5390625;
        // sin(1) = 0.8414710 -> 215/256 = 0.83984375. cos(0.01) = 0.99995 -> bf16 1.0; sin(0.01) = 0.0099998 -> bf16 0.010009765625.
        var (inv, scale) = ReferenceOps.RopeParameters(4, 10000, null, 512);
        var cos = new float[4];
        var sin = new float[4];
        ReferenceOps.RopeCosSin(inv, scale, 1, cos, sin);
        Assert.That(cos, Is.EqualTo(new[] { 0.5390625f, 1f, 0.5390625f, 1f }));
        Assert.That(sin, Is.EqualTo(new[] { 0.83984375f, 0.010009765625f, 0.83984375f, 0.010009765625f }));
        // x = e0: element 0 pairs with element 2 (i + D/2): x' = [c0, 0, s0, 0]. Adjacent-pair RoPE would touch element 1 instead.
        var x = new float[] { 1, 0, 0, 0 };
        ReferenceOps.ApplyRope(x, 1, 4, cos, sin);
        Assert.That(x, Is.EqualTo(new[] { 0.5390625f, 0f, 0.83984375f, 0f }));
        // x = e2: x'[0] = -x[2] s0 = -0.83984375, x'[2] = x[2] c0 = 0.5390625.
        x = new float[] { 0, 0, 1, 0 };
        ReferenceOps.ApplyRope(x, 1, 4, cos, sin);
        Assert.That(x, Is.EqualTo(new[] { -0.83984375f, 0f, 0.5390625f, 0f }));
    }

    [Test]
    public void YarnInvFreqAndAttentionScalingMatchTheFormula()
    {
        // D 128, theta 1e6, factor 4, original 32768, beta_fast 32, beta_slow 1:
        // correction dim(r) = 128 ln(32768 / (2 pi r)) / (2 ln 1e6): r=32 -> 23.596 -> floor 23; r=1 -> 39.651 -> ceil 40.
        // j <= 23 keeps the original frequency, j >= 40 is divided by the factor, between: ramp (j - 23) / 17 blends them:
        // inv[j] = orig[j] * (ramp / 4 + (1 - ramp)); at j = 30: ramp 7/17 -> orig * 47/68.
        // attention_scaling = 0.1 ln 4 + 1 = 1.1386294.
        var yarn = new RopeScalingConfig { Factor = 4, OriginalMaxPositionEmbeddings = 32768 };
        var (inv, scale) = ReferenceOps.RopeParameters(128, 1e6, yarn, 40960);
        var (orig, _) = ReferenceOps.RopeParameters(128, 1e6, null, 40960);
        Assert.That(scale, Is.EqualTo(1.1386294f).Within(1e-6f));
        // fp32 blends of fp32 inputs: relative tolerance 1e-6 (a few fp32 ulps).
        for (int j = 0; j <= 23; j++) Assert.That(inv[j], Is.EqualTo(orig[j]).Within(1e-6).Percent, $"j={j}");
        for (int j = 40; j < 64; j++) Assert.That(inv[j], Is.EqualTo(orig[j] / 4).Within(1e-4).Percent, $"j={j}");
        Assert.That(inv[30], Is.EqualTo(orig[30] * 47.0 / 68.0).Within(1e-4).Percent);
        Assert.That(orig[1], Is.EqualTo(Math.Pow(1e6, -2.0 / 128)).Within(1e-4).Percent);
        // cos/sin carry the attention scaling: at position 0 cos = bf16(1.1386294) = 1.140625 (146/128).
        var cos = new float[128];
        var sin = new float[128];
        ReferenceOps.RopeCosSin(inv, scale, 0, cos, sin);
        Assert.That(cos.Distinct(), Is.EqualTo(new[] { 1.140625f }));
    }

    [Test]
    public void TopKBreaksTiesTowardsTheLowerIndex()
    {
        // logits [1, 3, 3, 2], k 2: experts 1 and 2 tie; p = e^(x-3) / (2 + e^-1 + e^-2) = 1 / 2.5032147 = 0.3994862 each.
        var idx = new int[2];
        var w = new float[2];
        ReferenceOps.RouterTopK(new float[] { 1, 3, 3, 2 }, 2, normTopkProb: false, idx, w);
        Assert.That(idx, Is.EqualTo(new[] { 1, 2 }));
        Assert.That(w[0], Is.EqualTo(0.3994862f).Within(1e-6f));
        Assert.That(w[1], Is.EqualTo(w[0]));
        // Three-way tie for two slots: the two lowest indices win.
        ReferenceOps.RouterTopK(new float[] { 3, 1, 3, 3 }, 2, false, idx, w);
        Assert.That(idx, Is.EqualTo(new[] { 0, 2 }));
    }

    [Test]
    public void TopKRenormalisesOnlyWhenAsked()
    {
        // logits [2, 0, 1, -1], k 2 -> experts [0, 2]; p0 = e^2 / (e^2 + 1 + e + e^-1) = 7.389056 / 11.4752 = 0.6439143,
        // p2 = e / 11.4752 = 0.2368828. Renormalised: p0 / (p0 + p2) = 1 / (1 + e^-1) = 0.7310586, 0.2689414.
        var idx = new int[2];
        var w = new float[2];
        ReferenceOps.RouterTopK(new float[] { 2, 0, 1, -1 }, 2, false, idx, w);
        Assert.That(idx, Is.EqualTo(new[] { 0, 2 }));
        Assert.That(w[0], Is.EqualTo(0.6439143f).Within(1e-6f));
        Assert.That(w[1], Is.EqualTo(0.2368828f).Within(1e-6f));
        ReferenceOps.RouterTopK(new float[] { 2, 0, 1, -1 }, 2, true, idx, w);
        Assert.That(w[0], Is.EqualTo(0.7310586f).Within(1e-6f));
        Assert.That(w[1], Is.EqualTo(0.2689414f).Within(1e-6f));
    }

    [Test]
    public void OneHotQueryGivesOneHotAttentionAndIsCausal()
    {
        // D 4, one KV head, two query heads. Keys: position s has key e_s (s = 0..3). Query head 0 of token 1
        // (position 3, sees 0..3) is 60 e_2: score 60 * 0.5 = 30 on position 2, 0 elsewhere; softmax weight of
        // the others e^-30 ~ 1e-13, far below one bf16 ulp of the outputs, so the output is exactly V[2].
        // Query head 1 is zero: uniform weights over the visible positions -> mean of V rows.
        // Token 0 (position 2) cannot see position 3.
        int d = 4;
        var keys = new float[4 * d];
        for (int s = 0; s < 4; s++) keys[s * d + s] = 1;
        var values = new float[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, -1, -2, -3, -4 };
        var q = new float[2 * 2 * d];
        q[1 * 2 * d + 0 * d + 2] = 60;   // token 1, head 0
        q[0 * 2 * d + 0 * d + 3] = 60;   // token 0, head 0 asks for position 3, which is in its future
        var o = new float[2 * 2 * d];
        ReferenceOps.Attention(q, keys, values, o, tokens: 2, firstPosition: 2, numHeads: 2, numKvHeads: 1, headDim: d);
        Assert.That(o.AsSpan(1 * 2 * d, d).ToArray(), Is.EqualTo(new float[] { 9, 10, 11, 12 }), "one-hot");
        // Token 1 head 1: mean of rows 0..3 = [3.5, 4, 4.5, 5].
        Assert.That(o.AsSpan(1 * 2 * d + d, d).ToArray(), Is.EqualTo(new float[] { 3.5f, 4, 4.5f, 5 }));
        // Token 0 head 0: scores all 0 over positions 0..2 (position 3 masked) -> mean of rows 0..2 = [5, 6, 7, 8].
        Assert.That(o.AsSpan(0, d).ToArray(), Is.EqualTo(new float[] { 5, 6, 7, 8 }));
    }

    [Test]
    public void SiluAndSwiGluMatchHandValues()
    {
        // silu(1) = 1 / (1 + e^-1) = 0.7310586; silu(-2) = -2 / (1 + e^2) = -0.2384058.
        Assert.That(ReferenceOps.Silu(1), Is.EqualTo(0.7310586f).Within(1e-6f));
        Assert.That(ReferenceOps.Silu(-2), Is.EqualTo(-0.2384058f).Within(1e-6f));
        // hidden 1, inter 1: h = 2, gate 0.5 -> g = 1, up 2 -> u = 4; silu(1) -> bf16 0.73046875 (187/256);
        // times 4 = 2.921875; down 1 -> y = 2.921875.
        var y = new float[1];
        ReferenceOps.SwiGluMlp(new float[] { 2 }, W(0.5f), W(2), W(1), y, rows: 1, hidden: 1, inter: 1);
        Assert.That(y[0], Is.EqualTo(2.921875f));
    }

    [Test]
    public void MoeBlockWeightsTheChosenExperts()
    {
        // hidden 1, I 1, two experts. h = 2; router rows [1], [0.5] -> logits [2, 1], p = [0.7310586, 0.2689414].
        // Expert 0: gate 0.5, up 2, down 1 -> 2.921875 (see SiluAndSwiGluMatchHandValues). Expert 1: gate 1, up 1, down -1:
        // g = 2, silu(2) = 1.7615942 -> bf16 1.765625; times u = 2 -> 3.53125; down -1 -> -3.53125.
        Bf16Weight M(float v, string name) => new(W(v), 1, 1, name);
        var moe = new MoeWeights(new Bf16Weight(W(1, 0.5f), 2, 1, "router"), new[]
        {
            new MlpWeights(M(0.5f, "g0"), M(2, "u0"), M(1, "d0")),
            new MlpWeights(M(1, "g1"), M(1, "u1"), M(-1, "d1")),
        });
        var y = new float[1];
        var experts = new int[2];
        var weights = new float[2];
        // Top-1 renormalised: weight 1 on expert 0 -> y = 2.921875.
        ReferenceOps.MoeBlock(new float[] { 2 }, moe, 1, true, y, 1, experts: experts.AsSpan(0, 1), weights: weights.AsSpan(0, 1));
        Assert.That((experts[0], weights[0], y[0]), Is.EqualTo((0, 1f, 2.921875f)));
        // Top-1 not renormalised: 0.7310586 * 2.921875 = 2.1360618 -> bf16 (ulp 2^-6 in [2, 4)) 137/64 = 2.140625.
        ReferenceOps.MoeBlock(new float[] { 2 }, moe, 1, false, y, 1);
        Assert.That(y[0], Is.EqualTo(2.140625f));
        // Top-2 not renormalised: 0.7310586 * 2.921875 + 0.2689414 * -3.53125 = 2.1360618 - 0.9497118 = 1.18635 -> bf16 1.1875 (152/128).
        ReferenceOps.MoeBlock(new float[] { 2 }, moe, 2, false, y, 1, experts: experts, weights: weights);
        Assert.That(experts, Is.EqualTo(new[] { 0, 1 }));
        Assert.That(y[0], Is.EqualTo(1.1875f));
    }

    [Test]
    public void GqaUsesContiguousGroupsAtTheRealShape()
    {
        // 30B-A3B attention: nH 32, nKV 4, D 128 -> query head h reads KV head h / 8 (contiguous groups, not h % 4).
        // Every value row of KV head g is the constant g + 1, so whatever the (random) scores, head h outputs (h / 8) + 1.
        int nH = 32, nKV = 4, d = 128, seen = 5;
        var rng = new Random(3);
        var keys = Enumerable.Range(0, seen * nKV * d).Select(_ => Bf16.Round((float)rng.NextDouble() - 0.5f)).ToArray();
        var values = new float[seen * nKV * d];
        for (int s = 0; s < seen; s++) for (int g = 0; g < nKV; g++) for (int j = 0; j < d; j++) values[(s * nKV + g) * d + j] = g + 1;
        var q = Enumerable.Range(0, nH * d).Select(_ => Bf16.Round((float)rng.NextDouble() - 0.5f)).ToArray();
        var o = new float[nH * d];
        ReferenceOps.Attention(q, keys, values, o, tokens: 1, firstPosition: seen - 1, numHeads: nH, numKvHeads: nKV, headDim: d);
        // A convex combination of equal values: exact up to fp32 rounding of sum(p) != 1 (a few ulps), gone after bf16 rounding.
        for (int h = 0; h < nH; h++) Assert.That(o[h * d + 7], Is.EqualTo((float)(h / 8 + 1)), $"head {h}");
    }

    [Test]
    public void RopeTableAtTheRealShapeMatchesDoubleTrigonometry()
    {
        // D 128, theta 1e6, position 40959 (last of the 40960 context). The angle pos * inv_freq is formed in fp32 as
        // transformers does; cos/sin of it are then rounded to bf16. Compared with double cos/sin of the same fp32
        // angle, the only error is the bf16 rounding (plus fp32 cos/sin error, far smaller): at most half a bf16 ulp, <= 2^-9 absolute for |value| <= 1.
        var (inv, scale) = ReferenceOps.RopeParameters(128, 1e6, null, 40960);
        var cos = new float[128];
        var sin = new float[128];
        ReferenceOps.RopeCosSin(inv, scale, 40959, cos, sin);
        for (int j = 0; j < 64; j++)
        {
            // inv_freq itself is fp32 (within a few fp32 ulps of the exact value); at position 40959 one ulp of it moves
            // the angle by ~2e-3 rad, so the angle is formed from the table's own inv_freq, as the kernels must do.
            Assert.That(inv[j], Is.EqualTo(1.0 / Math.Pow(1e6, 2.0 * j / 128)).Within(1e-5).Percent, $"inv_freq j={j}");
            float angle = 40959f * inv[j];
            Assert.That(cos[j], Is.EqualTo(Math.Cos(angle)).Within(1.0 / 512), $"cos j={j}");
            Assert.That(sin[j], Is.EqualTo(Math.Sin(angle)).Within(1.0 / 512), $"sin j={j}");
            Assert.That((cos[j + 64], sin[j + 64]), Is.EqualTo((cos[j], sin[j])), "cat(freqs, freqs)");
        }
    }
}
