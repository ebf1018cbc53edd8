using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Tests.Model;

/// <summary>
/// The premise of the early-routing what-if (docs/timing-model.md, section 7, "Two more lines"): the router's logits are
/// the folded router's <c>W_r (g * x) + (W_r diag(g) W_o) a</c> over <c>rms(x')</c>, up to the model's bf16 rounding, so
/// its top-k is the router's wherever the router's k-th and (k+1)-th logits are further apart than that rounding.
/// </summary>
public class EarlyRoutingTests
{
    [TestCase(SyntheticPreset.Tiny)]
    [TestCase(SyntheticPreset.Small)]
    public void UnscaledLogits_OverRms_AreTheRoutersLogits_AndTheirTopKIsTheRoutersAwayFromTies(SyntheticPreset preset)
    {
        using var m = ReferenceModel.Load(TestCheckpoints.Get(new SyntheticOptions { Preset = preset, Seed = 7 }));
        var c = m.Config;
        var trace = new ReferenceTrace();
        m.Trace = trace;
        var tokens = Enumerable.Range(0, 48).Select(i => (i * 37 + 11) % c.VocabSize).ToArray();
        m.ForwardAllLogits(0, tokens);
        int T = tokens.Length, H = c.HiddenSize, E = c.NumExperts, K = c.NumExpertsPerTok;
        int checkedTokens = 0, nearTies = 0, mismatches = 0;
        double worst = 0;
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            var layer = m.Weights.Layers[l];
            if (layer.Moe is not { } moe) continue;
            float[] x = trace[l == 0 ? "embed" : $"layers.{l - 1}.out"], a = trace[$"layers.{l}.attn"], x1 = trace[$"layers.{l}.after_attn"];
            float[] h = trace[$"layers.{l}.ffn_norm"], logits = trace[$"layers.{l}.router_logits"];
            var folded = EarlyRouting.FoldRouter(moe, layer.PostAttentionNorm, layer.Attention.OProj);
            var u = new float[T * E];
            EarlyRouting.UnscaledLogits(x, a, moe, layer.PostAttentionNorm, folded, T, u);
            var router = moe.Router.Span;
            var g = layer.PostAttentionNorm.Span;
            for (int t = 0; t < T; t++)
            {
                // the reference's inverse rms of x' (its RmsNorm's expression, in double)
                double ms = 0;
                for (int i = 0; i < H; i++) ms += (double)x1[t * H + i] * x1[t * H + i];
                double inv = 1 / Math.Sqrt(ms / H + c.RmsNormEps);
                // Tolerance: the reference rounds to bf16 (relative error <= 2^-9 each) o_proj's output y, x' = x + y, x' * inv,
                // h = g * that, and the logit; the fold sees none of it. So |u * inv - logit| <= 2^-9 |logit| + sum_i |W_r[e, i]|
                // (2^-8 |h_i| + 2^-9 |g_i| inv (|y_i| + |x'_i|)) to first order, bounded here by 2^-7 sum_i |W_r[e, i]| (|h_i| +
                // |g_i| inv |y_i|) (|g_i x'_i| inv is |h_i| to first order), plus 1e-6 of the sum for the fp32 dot products.
                var bound = new double[E];
                for (int e = 0; e < E; e++)
                {
                    double s = 0;
                    for (int i = 0; i < H; i++)
                    {
                        double y = Math.Abs(x1[t * H + i] - x[t * H + i]);
                        s += Math.Abs(Bf16.ToFloat(router[e * H + i])) * (Math.Abs(h[t * H + i]) + Math.Abs(Bf16.ToFloat(g[i])) * inv * y);
                    }
                    double logit = logits[t * E + e], early = u[t * E + e] * inv;
                    bound[e] = Math.Pow(2, -7) * s + Math.Pow(2, -9) * Math.Abs(logit) + 1e-6 * s;
                    Assert.That(early, Is.EqualTo(logit).Within(bound[e]), $"{preset} layer {l} token {t} expert {e}");
                    worst = Math.Max(worst, Math.Abs(early - logit) / bound[e]);
                }
                // the top-k: the router's, unless its k-th and (k+1)-th logits are within twice the largest bound
                var order = Enumerable.Range(0, E).OrderByDescending(e => logits[t * E + e]).ToArray();
                var earlyTop = Enumerable.Range(0, E).OrderByDescending(e => u[t * E + e]).Take(K).Order().ToArray();
                var routerTop = trace.Experts[$"layers.{l}"].Skip(t * K).Take(K).Order().ToArray();
                if (!earlyTop.SequenceEqual(routerTop)) mismatches++;
                if (logits[t * E + order[K - 1]] - logits[t * E + order[K]] <= 2 * bound.Max()) { nearTies++; continue; }
                Assert.That(earlyTop, Is.EqualTo(routerTop), $"{preset} layer {l} token {t}: the top-{K}");
                checkedTokens++;
            }
        }
        // the bound is a worst case (the errors reach a fifth of it here), so many token-layers count as near ties; the hint's
        // real miss rate is the mismatches, over all of them
        TestContext.Out.WriteLine($"{preset}: {checkedTokens} token-layers away from a tie, all with the router's top-{K}; {nearTies} near ties; " +
            $"{mismatches} of {checkedTokens + nearTies} with another top-{K}; the largest error {worst:P0} of its bound");
        Assert.That(checkedTokens, Is.GreaterThanOrEqualTo((checkedTokens + nearTies) / 10), "at least a tenth of the token-layers are away from a tie: the top-k check is not vacuous");
    }
}
