using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>What a tensor is in the model (independent of how a checkpoint stores it).</summary>
public enum TensorRole
{
    Embedding, InputNorm, QProj, KProj, VProj, OProj, QNorm, KNorm, PostNorm,
    Router, GateProj, UpProj, DownProj, FinalNorm, LmHead,
}

/// <summary>
/// One logical tensor of a Qwen3 / Qwen3-MoE checkpoint: its transformers module path (<c>model.layers.0.self_attn.q_proj</c>),
/// role and logical shape ([out, in] for a Linear, [n] for a norm). A bf16 checkpoint stores it as <see cref="Name"/>
/// (<c>Module + ".weight"</c>); a quantized one stores a Linear as tensors derived from <see cref="Module"/>
/// (docs/quantization.md).
/// </summary>
public sealed record ModelTensor(string Module, TensorRole Role, long[] Shape, int Layer = -1, int Expert = -1)
{
    /// <summary>The bf16 tensor's name: the module path + ".weight".</summary>
    public string Name => Module + ".weight";

    /// <summary>Rows of the matrix (1 for a vector).</summary>
    public long Rows => Shape.Length == 2 ? Shape[0] : 1;
    /// <summary>Columns of the matrix (the length of a vector).</summary>
    public long Cols => Shape[^1];
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);

    /// <summary>An RMSNorm weight (input, post-attention, q, k, final).</summary>
    public bool IsNorm => Role is TensorRole.InputNorm or TensorRole.PostNorm or TensorRole.QNorm or TensorRole.KNorm or TensorRole.FinalNorm;

    /// <summary>An nn.Linear weight [out, in] (projections, router, experts, lm_head): the tensors a weight format may quantize.</summary>
    public bool IsLinear => !IsNorm && Role != TensorRole.Embedding;

    public string ShapeText => TensorInfo.FormatShape(Shape);
}

/// <summary>A SwiGLU MLP's three Linears (a routed expert, or a dense layer's MLP).</summary>
public sealed record MlpTensors(ModelTensor Gate, ModelTensor Up, ModelTensor Down);

/// <summary>One decoder layer's tensors. MoE layers have <see cref="Router"/> and <see cref="Experts"/>; dense layers <see cref="Mlp"/>.</summary>
public sealed record LayerTensors(
    int Index,
    ModelTensor InputNorm,     // [H]
    ModelTensor QProj,         // [nH*D, H]
    ModelTensor KProj,         // [nKV*D, H]
    ModelTensor VProj,         // [nKV*D, H]
    ModelTensor OProj,         // [H, nH*D]
    ModelTensor QNorm,         // [D]
    ModelTensor KNorm,         // [D]
    ModelTensor PostNorm,      // [H]
    ModelTensor? Router,       // [E, H] (mlp.gate)
    IReadOnlyList<MlpTensors>? Experts,   // E x ([I, H], [I, H], [H, I])
    MlpTensors? Mlp)           // [Id, H], [Id, H], [H, Id]
{
    public bool IsMoe => Router is not null;
}

/// <summary>
/// The one table of Hugging Face tensor names and shapes of a Qwen3 / Qwen3-MoE checkpoint, computed from config.json.
/// The CPU reference (ModelWeights), the device layout (WeightLayout) and the synthetic writer (SyntheticCheckpoint)
/// all read it, so a name is spelled in exactly one place.
/// </summary>
public sealed class ModelTensors
{
    public ModelConfig Config { get; }
    public ModelTensor Embedding { get; }                 // [V, H]
    public IReadOnlyList<LayerTensors> Layers { get; }
    public ModelTensor FinalNorm { get; }                 // [H]
    /// <summary>lm_head [V, H]; null when the embedding is tied and the checkpoint has no lm_head.weight.</summary>
    public ModelTensor? LmHead { get; }

    /// <summary>The tensors of <paramref name="c"/>; <paramref name="hasLmHead"/> (default: !tie_word_embeddings) says
    /// whether the checkpoint holds lm_head.weight.</summary>
    public ModelTensors(ModelConfig c, bool? hasLmHead = null)
    {
        Config = c;
        long h = c.HiddenSize;
        ModelTensor T(string module, TensorRole role, long[] shape, int layer = -1, int expert = -1) => new(module, role, shape, layer, expert);
        Embedding = T("model.embed_tokens", TensorRole.Embedding, [c.VocabSize, h]);
        var layers = new LayerTensors[c.NumHiddenLayers];
        for (int l = 0; l < layers.Length; l++)
        {
            string p = $"model.layers.{l}.";
            MlpTensors Mlp(string q, long inter, int expert) => new(
                T(q + "gate_proj", TensorRole.GateProj, [inter, h], l, expert),
                T(q + "up_proj", TensorRole.UpProj, [inter, h], l, expert),
                T(q + "down_proj", TensorRole.DownProj, [h, inter], l, expert));
            bool moe = c.IsMoeLayer(l);
            layers[l] = new LayerTensors(l,
                T(p + "input_layernorm", TensorRole.InputNorm, [h], l),
                T(p + "self_attn.q_proj", TensorRole.QProj, [c.QueryDim, h], l),
                T(p + "self_attn.k_proj", TensorRole.KProj, [c.KeyValueDim, h], l),
                T(p + "self_attn.v_proj", TensorRole.VProj, [c.KeyValueDim, h], l),
                T(p + "self_attn.o_proj", TensorRole.OProj, [h, c.QueryDim], l),
                T(p + "self_attn.q_norm", TensorRole.QNorm, [c.HeadDim], l),
                T(p + "self_attn.k_norm", TensorRole.KNorm, [c.HeadDim], l),
                T(p + "post_attention_layernorm", TensorRole.PostNorm, [h], l),
                moe ? T(p + "mlp.gate", TensorRole.Router, [c.NumExperts, h], l) : null,
                moe ? Enumerable.Range(0, c.NumExperts).Select(e => Mlp($"{p}mlp.experts.{e}.", c.MoeIntermediateSize, e)).ToArray() : null,
                moe ? null : Mlp(p + "mlp.", c.IntermediateSize, -1));
        }
        Layers = layers;
        FinalNorm = T("model.norm", TensorRole.FinalNorm, [h]);
        LmHead = (hasLmHead ?? !c.TieWordEmbeddings) ? T("lm_head", TensorRole.LmHead, [c.VocabSize, h]) : null;
    }

    /// <summary>Every tensor, in the order a checkpoint writes them (embedding, layer by layer, final norm, lm_head).</summary>
    public IEnumerable<ModelTensor> All
    {
        get
        {
            yield return Embedding;
            foreach (var l in Layers)
            {
                yield return l.InputNorm;
                yield return l.QProj; yield return l.KProj; yield return l.VProj; yield return l.OProj;
                yield return l.QNorm; yield return l.KNorm;
                yield return l.PostNorm;
                if (l.Router is not null) yield return l.Router;
                foreach (var mlp in l.Experts ?? (l.Mlp is null ? [] : [l.Mlp]))
                {
                    yield return mlp.Gate; yield return mlp.Up; yield return mlp.Down;
                }
            }
            yield return FinalNorm;
            if (LmHead is not null) yield return LmHead;
        }
    }

    /// <summary>The lm_head the forward uses: lm_head.weight, or the embedding when tied.</summary>
    public ModelTensor OutputHead => LmHead ?? Embedding;
}
