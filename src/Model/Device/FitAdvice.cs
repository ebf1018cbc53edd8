using System.Text;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>
/// What to do when a model does not fit (docs/architecture.md, memory plan): the largest context that fits the same
/// budget, and the weight bytes a quantized checkpoint of the same model would need, estimated from config.json.
/// The estimates count only the Linear layers as quantized (attention projections, expert and dense MLP matrices);
/// embeddings, lm_head, norms and the router stay bf16, as in Qwen's published FP8 and GPTQ-Int4 checkpoints:
/// <list type="bullet">
/// <item>FP8 block-128: 1 byte per weight + one fp32 scale per 128 x 128 block;</item>
/// <item>GPTQ-Int4 group-128: 4 bits per weight + per 128 input rows and output column an fp16 scale and a 4-bit
/// zero point, + an int32 group index per input row.</item>
/// </list>
/// The KV cache and workspace are taken as the bf16 plan's (a quantized path may differ a little).
/// </summary>
public static class FitAdvice
{
    public sealed record QuantizedEstimate(string Format, long WeightBytes, int? LargestContext);

    /// <summary>The shapes [out, in] of every Linear weight a quantized checkpoint stores in low precision.</summary>
    public static IEnumerable<(long Out, long In)> QuantizableMatrices(ModelConfig c)
    {
        long H = c.HiddenSize;
        for (int l = 0; l < c.NumHiddenLayers; l++)
        {
            yield return (c.QueryDim, H);
            yield return (c.KeyValueDim, H);
            yield return (c.KeyValueDim, H);
            yield return (H, c.QueryDim);
            int experts = c.IsMoeLayer(l) ? c.NumExperts : 1;
            long I = c.IsMoeLayer(l) ? c.MoeIntermediateSize : c.IntermediateSize;
            for (int e = 0; e < experts; e++)
            {
                yield return (I, H);
                yield return (I, H);
                yield return (H, I);
            }
        }
    }

    static long Ceil(long a, long b) => (a + b - 1) / b;

    public static long Fp8Block128Bytes(long rows, long cols) => rows * cols + Ceil(rows, 128) * Ceil(cols, 128) * sizeof(float);

    /// <summary>qweight (4 bits each) + scales (fp16 per group and output) + qzeros (4 bits per group and output) + g_idx (int32 per input).</summary>
    public static long GptqInt4Group128Bytes(long rows, long cols) =>
        Ceil(rows * cols, 2) + Ceil(cols, 128) * rows * 2 + Ceil(Ceil(cols, 128) * rows, 2) + cols * sizeof(int);

    /// <summary>Weight bytes of the bf16 plan with its Linear weights replaced by each quantized format.</summary>
    public static IReadOnlyList<(string Format, long WeightBytes)> QuantizedWeightBytes(ModelConfig c, long bf16WeightBytes)
    {
        long linearBf16 = 0, fp8 = 0, int4 = 0;
        foreach (var (rows, cols) in QuantizableMatrices(c))
        {
            linearBf16 += rows * cols * sizeof(ushort);
            fp8 += Fp8Block128Bytes(rows, cols);
            int4 += GptqInt4Group128Bytes(rows, cols);
        }
        long rest = bf16WeightBytes - linearBf16;
        return [("FP8", rest + fp8), ("GPTQ-Int4", rest + int4)];
    }

    /// <summary>The longest context (tokens per sequence) whose plan fits <paramref name="budgetBytes"/> (a pool that holds one
    /// sequence of it), or null when not even one token fits.</summary>
    public static int? LargestContext(MemoryPlan plan, long budgetBytes)
    {
        if (budgetBytes <= 0) return null;   // the reserve alone exceeds the device's free memory
        var o = plan.Options with { GpuMemoryBytes = budgetBytes, GpuMemoryUtilization = null };
        bool Fits(int ctx) => MemoryPlan.Compute(plan.Config, o with { ContextLength = ctx }, budgetBytes, plan.Multiprocessors, plan.CheckpointHasLmHead).Fits;
        int hi = Math.Max(plan.Config.MaxPositionEmbeddings, plan.ContextLength);
        if (!Fits(1)) return null;
        if (Fits(hi)) return hi;
        int lo = 1;                                    // Fits(lo) && !Fits(hi)
        while (hi - lo > 1)
        {
            int mid = lo + (hi - lo) / 2;
            if (Fits(mid)) lo = mid; else hi = mid;
        }
        return lo;
    }

    /// <summary>The advice appended to a does-not-fit message (one sentence per point).</summary>
    public static string Describe(MemoryPlan plan)
    {
        var sb = new StringBuilder();
        int? ctx = LargestContext(plan, plan.BudgetBytes);
        sb.Append(ctx is int n
            ? $"The largest context that fits is {n} tokens (--ctx-size {n})"
            : $"No context fits: the {(plan.Weights.Format.IsQuantized ? plan.Weights.Format.Name : "bf16")} weights alone are {ByteSize.Format(plan.Weights.TotalBytes)}");
        if (plan.Weights.Format.IsQuantized) return sb.Append('.').ToString();   // already quantized: the estimates below are for bf16 checkpoints
        sb.Append(". A quantized checkpoint of this model would need about (estimated from config.json): ");
        var parts = new List<string>();
        foreach (var (format, bytes) in QuantizedWeightBytes(plan.Config, plan.Weights.TotalBytes))
        {
            int? q = LargestContext(plan, plan.BudgetBytes + plan.Weights.TotalBytes - bytes);
            string fit = q is int m ? $"fits with up to {m} tokens of context" : "does not fit either";
            parts.Add($"{format} {ByteSize.Format(bytes)} of weights ({fit})");
        }
        sb.Append(string.Join(", ", parts)).Append('.');
        return sb.ToString();
    }
}
