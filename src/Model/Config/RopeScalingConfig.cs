namespace Qwen3Cuda.Model.Config;

/// <summary>
/// config.json "rope_scaling" of type yarn or dynamic ("default" means none; docs/model-formats.md, "RoPE scaling").
/// YaRN: optional fields keep transformers' defaults: beta_fast 32, beta_slow 1, truncate true,
/// original_max_position_embeddings = max_position_embeddings, attention_factor from mscale.
/// Dynamic NTK: only <see cref="Factor"/> is read; the RoPE base grows with the sequence length once it passes
/// max_position_embeddings (see Reference.ReferenceOps.DynamicNtkInvFreq).
/// </summary>
public sealed record RopeScalingConfig
{
    public string RopeType { get; init; } = "yarn";
    public double Factor { get; init; }
    /// <summary>null: use the model's max_position_embeddings.</summary>
    public int? OriginalMaxPositionEmbeddings { get; init; }
    public double BetaFast { get; init; } = 32.0;
    public double BetaSlow { get; init; } = 1.0;
    /// <summary>Explicit attention scaling; null: computed from mscale/mscale_all_dim or 0.1*ln(factor)+1.</summary>
    public double? AttentionFactor { get; init; }
    public double? Mscale { get; init; }
    public double? MscaleAllDim { get; init; }
    public bool Truncate { get; init; } = true;
    /// <summary>rope_type "dynamic": inv_freq depends on the sequence length (per sequence, per step).</summary>
    public bool IsDynamic => RopeType == "dynamic";
}
