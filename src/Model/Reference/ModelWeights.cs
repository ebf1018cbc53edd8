using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Model.Reference;

/// <summary>
/// A bf16 weight, row-major [Rows, Cols] (vectors: Rows = 1): either a view into the memory-mapped
/// checkpoint, or an in-memory array (for kernel tests that build weights directly).
/// </summary>
public readonly struct Bf16Weight
{
    readonly TensorView _view;
    readonly ushort[]? _array;
    readonly string? _name;
    public int Rows { get; }
    public int Cols { get; }

    public Bf16Weight(TensorView view, int rows, int cols) { _view = view; _array = null; _name = null; Rows = rows; Cols = cols; }

    /// <summary>An in-memory weight of rows * cols bf16 values.</summary>
    public Bf16Weight(ushort[] bf16, int rows, int cols, string name = "in-memory")
    {
        if (bf16.Length != (long)rows * cols) throw new ArgumentException($"{name}: {bf16.Length} values, expected {rows} x {cols}", nameof(bf16));
        _view = default; _array = bf16; _name = name; Rows = rows; Cols = cols;
    }

    public bool IsMapped => _array is null;
    public string Name => _array is null ? _view.Info.Name : _name!;
    /// <summary>The checkpoint view (mapped weights only).</summary>
    public TensorView View => _array is null ? _view : throw new InvalidOperationException($"{_name} is an in-memory weight, not a checkpoint view");
    /// <summary>bf16 bits, Rows * Cols elements.</summary>
    public ReadOnlySpan<ushort> Span => _array ?? _view.AsBf16();
    /// <summary>The raw little-endian bytes (2 per element).</summary>
    public ReadOnlySpan<byte> Bytes => System.Runtime.InteropServices.MemoryMarshal.AsBytes(Span);
    public long ByteLength => 2L * Rows * Cols;
}

public sealed record AttentionWeights(
    Bf16Weight QProj,      // [nH*D, H]
    Bf16Weight KProj,      // [nKV*D, H]
    Bf16Weight VProj,      // [nKV*D, H]
    Bf16Weight OProj,      // [H, nH*D]
    Bf16Weight QNorm,      // [D] shared by all query heads
    Bf16Weight KNorm);     // [D] shared by all KV heads

/// <summary>A SwiGLU MLP: one routed expert (width I) or a dense layer's MLP (width intermediate_size).</summary>
public sealed record MlpWeights(
    Bf16Weight GateProj,   // [I, H]
    Bf16Weight UpProj,     // [I, H]
    Bf16Weight DownProj);  // [H, I]

public sealed record MoeWeights(
    Bf16Weight Router,                 // [E, H]  (mlp.gate.weight)
    IReadOnlyList<MlpWeights> Experts); // E entries, each [I, H], [I, H], [H, I]

public sealed record LayerWeights(
    int Index,
    Bf16Weight InputNorm,          // [H]
    AttentionWeights Attention,
    Bf16Weight PostAttentionNorm,  // [H]
    MoeWeights? Moe,               // set iff config.IsMoeLayer(Index)
    MlpWeights? Mlp);              // set iff the layer is dense

/// <summary>
/// Every weight of a Qwen3 / Qwen3-MoE checkpoint, typed and shape-checked against config.json,
/// viewing the memory-mapped safetensors files (nothing is copied). Dispose closes the files.
/// </summary>
public sealed class ModelWeights : IDisposable
{
    public ModelConfig Config { get; }
    public SafetensorsCheckpoint Checkpoint { get; }
    public Bf16Weight EmbedTokens { get; }             // [V, H]
    public IReadOnlyList<LayerWeights> Layers { get; }
    public Bf16Weight FinalNorm { get; }               // [H]
    public Bf16Weight LmHead { get; }                  // [V, H] (the embedding when tie_word_embeddings)

    ModelWeights(ModelConfig config, SafetensorsCheckpoint ckpt, Bf16Weight embed, IReadOnlyList<LayerWeights> layers, Bf16Weight norm, Bf16Weight lmHead)
    {
        Config = config; Checkpoint = ckpt; EmbedTokens = embed; Layers = layers; FinalNorm = norm; LmHead = lmHead;
    }

    /// <summary>Reads config.json and the safetensors checkpoint in <paramref name="modelDir"/>.</summary>
    public static ModelWeights Load(string modelDir)
    {
        var config = ModelConfig.Load(modelDir);
        var ckpt = SafetensorsCheckpoint.Open(modelDir);
        try { return Bind(config, ckpt); }
        catch { ckpt.Dispose(); throw; }
    }

    /// <summary>
    /// Like <see cref="Load(string)"/>, keeping only the first <paramref name="layers"/> decoder layers (the embedding, those
    /// layers, the final norm and lm_head: a truncated model whose config says <paramref name="layers"/> layers). `selftest
    /// --model` compares the first layers of a large model with the CPU reference this way.
    /// </summary>
    public static ModelWeights Load(string modelDir, int layers)
    {
        var config = ModelConfig.Load(modelDir);
        if (layers < 1) throw new ArgumentOutOfRangeException(nameof(layers), $"--layers {layers} must be at least 1");
        config = config with { NumHiddenLayers = Math.Min(layers, config.NumHiddenLayers), MlpOnlyLayers = [.. config.MlpOnlyLayers.Where(l => l < layers)] };
        var ckpt = SafetensorsCheckpoint.Open(modelDir);
        try { return Bind(config, ckpt); }
        catch { ckpt.Dispose(); throw; }
    }

    /// <summary>Looks up every tensor the config implies (names as in transformers), checking dtype BF16 and shape.</summary>
    public static ModelWeights Bind(ModelConfig c, SafetensorsCheckpoint ckpt)
    {
        Bf16Weight M(string name, int rows, int cols) => new(ckpt.Get(name, SafetensorsDType.BF16, rows, cols), rows, cols);
        Bf16Weight V(string name, int n) => new(ckpt.Get(name, SafetensorsDType.BF16, n), 1, n);
        int h = c.HiddenSize, d = c.HeadDim;
        var embed = M("model.embed_tokens.weight", c.VocabSize, h);
        var layers = new LayerWeights[c.NumHiddenLayers];
        for (int l = 0; l < layers.Length; l++)
        {
            string p = $"model.layers.{l}.";
            var attn = new AttentionWeights(
                M(p + "self_attn.q_proj.weight", c.QueryDim, h),
                M(p + "self_attn.k_proj.weight", c.KeyValueDim, h),
                M(p + "self_attn.v_proj.weight", c.KeyValueDim, h),
                M(p + "self_attn.o_proj.weight", h, c.QueryDim),
                V(p + "self_attn.q_norm.weight", d),
                V(p + "self_attn.k_norm.weight", d));
            MoeWeights? moe = null;
            MlpWeights? mlp = null;
            if (c.IsMoeLayer(l))
            {
                var experts = new MlpWeights[c.NumExperts];
                for (int e = 0; e < experts.Length; e++)
                {
                    string q = $"{p}mlp.experts.{e}.";
                    experts[e] = new MlpWeights(M(q + "gate_proj.weight", c.MoeIntermediateSize, h),
                        M(q + "up_proj.weight", c.MoeIntermediateSize, h), M(q + "down_proj.weight", h, c.MoeIntermediateSize));
                }
                moe = new MoeWeights(M(p + "mlp.gate.weight", c.NumExperts, h), experts);
            }
            else
            {
                mlp = new MlpWeights(M(p + "mlp.gate_proj.weight", c.IntermediateSize, h),
                    M(p + "mlp.up_proj.weight", c.IntermediateSize, h), M(p + "mlp.down_proj.weight", h, c.IntermediateSize));
            }
            layers[l] = new LayerWeights(l, V(p + "input_layernorm.weight", h), attn, V(p + "post_attention_layernorm.weight", h), moe, mlp);
        }
        var norm = V("model.norm.weight", h);
        var lmHead = c.TieWordEmbeddings && !ckpt.Contains("lm_head.weight") ? embed : M("lm_head.weight", c.VocabSize, h);
        return new ModelWeights(c, ckpt, embed, layers, norm, lmHead);
    }

    public void Dispose() => Checkpoint.Dispose();
}
