using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Near-tie guards for end-to-end comparisons with the CPU reference. Two decisions are discrete: the router's top-k
/// (bf16 logits, so exact ties are common) and the greedy argmax. When the reference's margin is within what rounding
/// differences can close, a GPU (or the emulator's hardware-like math) may legitimately choose the other side, and the
/// logits of that step then differ by far more than any rounding tolerance (a different expert: ~10% of the largest
/// logit on the small preset). Such steps are not compared; every other step is, at the suite's tolerance.
/// </summary>
public static class NearTies
{
    /// <summary>
    /// Router margins of at most this many bf16 ulps (of the k-th logit) count as ties: the device's router logits are
    /// bf16 roundings of dot products over hidden states that already differ from the reference's by a bf16 ulp here and
    /// there, so each can land one ulp away, and two such ulps can swap the k-th and (k+1)-th expert.
    /// </summary>
    public const double RouterTieUlps = 2;

    /// <summary>The smallest gap, in bf16 ulps of the k-th logit, between the k-th and (k+1)-th router logits of the last
    /// row of <paramref name="trace"/> over all MoE layers (infinity without MoE layers).</summary>
    public static double RouterMarginUlps(ReferenceTrace trace, int topK, int experts)
    {
        double min = double.PositiveInfinity;
        foreach (var (name, values) in trace.Tensors)
        {
            if (!name.EndsWith(".router_logits", StringComparison.Ordinal) || topK >= experts) continue;
            var row = values.AsSpan(values.Length - experts, experts).ToArray();
            Array.Sort(row, (x, y) => y.CompareTo(x));
            double kth = row[topK - 1], next = row[topK];
            double ulp = Math.ScaleB(1.0, Math.ILogB(Math.Max(Math.Abs(kth), 1e-30)) - 7);
            min = Math.Min(min, (kth - next) / ulp);
        }
        return min;
    }

    /// <summary>
    /// Greedy margins of at most this many bf16 ulps (of the top logit) count as ties: the device returns bf16 logits and
    /// they differ from the reference's by up to ~1% of the largest logit in these tests (measured worst 0.0099 exact,
    /// 0.013 with hardware-like math), about 2.5-3.3 ulps, and both of the two contenders can move.
    /// </summary>
    public const double TokenTieUlps = 4;

    /// <summary>The gap between the largest and the second largest logit, in bf16 ulps of the largest.</summary>
    public static double Top2MarginUlps(ReadOnlySpan<float> logits)
    {
        float a = float.NegativeInfinity, b = float.NegativeInfinity;
        foreach (float v in logits)
        {
            if (v > a) { b = a; a = v; }
            else if (v > b) b = v;
        }
        return (a - b) / Math.ScaleB(1.0, Math.ILogB(Math.Max(Math.Abs(a), 1e-30f)) - 7);
    }
}
