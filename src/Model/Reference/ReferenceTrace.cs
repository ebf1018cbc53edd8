namespace Qwen3Cuda.Model.Reference;

/// <summary>
/// Named intermediates of one <see cref="ReferenceModel"/> forward (set <see cref="ReferenceModel.Trace"/>
/// before the call). Names: "embed" [T,H]; per layer l: "layers.l.attn_norm" [T,H], "layers.l.q" and
/// "layers.l.k" (after q/k norm and RoPE) [T,nH*D] / [T,nKV*D], "layers.l.v" [T,nKV*D], "layers.l.attn"
/// (before o_proj) [T,nH*D], "layers.l.after_attn" (residual added) [T,H], "layers.l.ffn_norm" [T,H],
/// "layers.l.router_logits" [T,E] (MoE layers), "layers.l.ffn_out" [T,H], "layers.l.out" [T,H];
/// "final_norm" [rows,H], "logits" [rows,V] (rows = 1 or T). Routing goes to <see cref="Experts"/>
/// and <see cref="ExpertWeights"/> keyed "layers.l" ([T,K] each).
/// </summary>
public sealed class ReferenceTrace
{
    public Dictionary<string, float[]> Tensors { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, int[]> Experts { get; } = new(StringComparer.Ordinal);
    public Dictionary<string, float[]> ExpertWeights { get; } = new(StringComparer.Ordinal);

    internal void Add(string name, ReadOnlySpan<float> values) => Tensors[name] = values.ToArray();

    public float[] this[string name] => Tensors.TryGetValue(name, out var v) ? v : throw new KeyNotFoundException($"trace has no tensor '{name}'");
}
