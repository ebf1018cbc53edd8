namespace Qwen3Cuda.Model.Config;

/// <summary>
/// config.json "rope_scaling" of type yarn (the only scaling type supported; "default" means none).
/// Optional fields keep transformers' defaults: beta_fast 32, beta_slow 1, truncate true,
/// original_max_position_embeddings = max_position_embeddings, attention_factor from mscale.
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
}
