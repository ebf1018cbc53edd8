namespace Qwen3Cuda.Model.Reference;

/// <summary>
/// Early routing, the host reference of kernels/early_route.cu (docs/kernels.md, "Early routing"; the timing model's
/// what-ifs of it: docs/timing-model.md, section 7, "Two more lines" and "Stop 43"). A MoE layer's router logits are <c>W_r h</c> with <c>h = RMSNorm(x') * g</c> and <c>x' = x + W_o a</c> (x: the
/// layer's input, a: the attention's output before o_proj, g: the post-attention norm weight). Up to the positive factor
/// <c>1 / rms(x')</c> of each token, that is <c>W_r (g * x) + M a</c> with the folded router <c>M = W_r diag(g) W_o</c>
/// ([E, qDim]), and the top-k does not depend on that factor. So the experts' ids are known from <c>a</c>, before o_proj and
/// the norm have run: a prefetch hint for the experts' weights. It is not the router: the model rounds <c>x'</c> and
/// <c>h</c> to bf16, which the fold does not see, so at a near tie its ids may differ (a wasted prefetch, never a different
/// result).
/// </summary>
public static class EarlyRouting
{
    /// <summary>The folded router <c>M = W_r diag(g) W_o</c>, [E, qDim] row-major, summed in fp64 and rounded to fp32.</summary>
    public static float[] FoldRouter(MoeWeights moe, Bf16Weight postAttentionNorm, Bf16Weight oProj)
    {
        int experts = moe.Router.Rows, hidden = moe.Router.Cols, qDim = oProj.Cols;
        if (postAttentionNorm.Rows * postAttentionNorm.Cols != hidden || oProj.Rows != hidden)
            throw new ArgumentException($"the router is [{experts}, {hidden}], the norm weight has {postAttentionNorm.Rows * postAttentionNorm.Cols} values and o_proj is [{oProj.Rows}, {qDim}]: they do not chain");
        var wo = new float[(long)hidden * qDim];
        Bf16.ToFloat(oProj.Span, wo);
        var router = moe.Router.Span;
        var g = postAttentionNorm.Span;
        var folded = new float[(long)experts * qDim];
        var row = new double[qDim];
        for (int e = 0; e < experts; e++)
        {
            Array.Clear(row);
            for (int i = 0; i < hidden; i++)
            {
                double c = (double)Bf16.ToFloat(router[e * hidden + i]) * Bf16.ToFloat(g[i]);
                if (c == 0) continue;
                var woRow = wo.AsSpan(i * qDim, qDim);
                for (int j = 0; j < qDim; j++) row[j] += c * woRow[j];
            }
            for (int j = 0; j < qDim; j++) folded[(long)e * qDim + j] = (float)row[j];
        }
        return folded;
    }

    /// <summary>
    /// The unscaled logits <c>u[t, e] = W_r (g * x[t]) + M a[t]</c> (fp64 sums) for <paramref name="tokens"/> rows of the layer
    /// input <paramref name="x"/> [T, H] and the attention output <paramref name="attention"/> [T, qDim]; <c>u / rms(x')</c>
    /// is the router's logit up to the model's bf16 rounding.
    /// </summary>
    public static void UnscaledLogits(ReadOnlySpan<float> x, ReadOnlySpan<float> attention, MoeWeights moe, Bf16Weight postAttentionNorm,
        ReadOnlySpan<float> folded, int tokens, Span<float> logits)
    {
        int experts = moe.Router.Rows, hidden = moe.Router.Cols, qDim = folded.Length / experts;
        if (x.Length < tokens * hidden || attention.Length < tokens * qDim || logits.Length < tokens * experts || folded.Length != experts * qDim)
            throw new ArgumentException($"early routing of {tokens} rows needs x [{tokens}, {hidden}], the attention [{tokens}, {qDim}] and the logits [{tokens}, {experts}]");
        var router = moe.Router.Span;
        var g = postAttentionNorm.Span;
        for (int t = 0; t < tokens; t++)
            for (int e = 0; e < experts; e++)
            {
                double u = 0;
                for (int i = 0; i < hidden; i++) u += (double)Bf16.ToFloat(router[e * hidden + i]) * Bf16.ToFloat(g[i]) * x[t * hidden + i];
                var m = folded.Slice(e * qDim, qDim);
                for (int j = 0; j < qDim; j++) u += (double)m[j] * attention[t * qDim + j];
                logits[t * experts + e] = (float)u;
            }
    }
}
