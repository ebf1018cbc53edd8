using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Reference;

/// <summary>
/// A bf16 weight, row-major [Rows, Cols] (vectors: Rows = 1): a view into the memory-mapped checkpoint, an in-memory
/// array (for kernel tests that build weights directly), or the dequantized bf16 values of a quantized checkpoint tensor
/// (computed on first use and kept: docs/formats.md).
/// </summary>
public readonly struct Bf16Weight
{
    readonly TensorView _view;
    readonly ushort[]? _array;
    readonly Lazy<ushort[]>? _dequantized;
    readonly string? _name;
    public int Rows { get; }
    public int Cols { get; }

    public Bf16Weight(TensorView view, int rows, int cols) { _view = view; _array = null; _name = null; Rows = rows; Cols = cols; }

    /// <summary>An in-memory weight of rows * cols bf16 values.</summary>
    public Bf16Weight(ushort[] bf16, int rows, int cols, string name = "in-memory")
    {
        if (bf16.Length != (long)rows * cols) throw new ArgumentException($"{name}: {bf16.Length} values, expected {rows} x {cols}", nameof(bf16));
        _view = default; _array = bf16; _dequantized = null; _name = name; Rows = rows; Cols = cols;
    }

    /// <summary>The bf16 weights of quantized checkpoint tensor <paramref name="name"/>, computed by <paramref name="dequantize"/> on first use.</summary>
    public Bf16Weight(string name, int rows, int cols, Func<ushort[]> dequantize)
    {
        _view = default; _array = null; _dequantized = new Lazy<ushort[]>(dequantize); _name = name; Rows = rows; Cols = cols;
    }

    public bool IsMapped => _array is null && _dequantized is null;
    /// <summary>True for the dequantized values of a quantized tensor.</summary>
    public bool IsDequantized => _dequantized is not null;
    public string Name => IsMapped ? _view.Info.Name : _name!;
    /// <summary>The checkpoint view (mapped weights only).</summary>
    public TensorView View => IsMapped ? _view : throw new InvalidOperationException($"{_name} is an in-memory weight, not a checkpoint view");
    /// <summary>bf16 bits, Rows * Cols elements.</summary>
    public ReadOnlySpan<ushort> Span => _array ?? _dequantized?.Value ?? _view.AsBf16();
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
    /// <summary>The checkpoint's weight format (from config.json, checked against the tensors).</summary>
    public CheckpointFormat Format { get; }
    public Bf16Weight EmbedTokens { get; }             // [V, H]
    public IReadOnlyList<LayerWeights> Layers { get; }
    public Bf16Weight FinalNorm { get; }               // [H]
    public Bf16Weight LmHead { get; }                  // [V, H] (the embedding when tie_word_embeddings)

    ModelWeights(ModelConfig config, SafetensorsCheckpoint ckpt, CheckpointFormat format, Bf16Weight embed, IReadOnlyList<LayerWeights> layers, Bf16Weight norm, Bf16Weight lmHead)
    {
        Config = config; Checkpoint = ckpt; Format = format; EmbedTokens = embed; Layers = layers; FinalNorm = norm; LmHead = lmHead;
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

    /// <summary>
    /// Looks up every tensor the config implies (names and shapes from <see cref="ModelTensors"/>), after checking that the
    /// checkpoint is stored in the format config.json declares (<see cref="CheckpointFormat"/>).
    /// </summary>
    public static ModelWeights Bind(ModelConfig c, SafetensorsCheckpoint ckpt)
    {
        var format = CheckpointFormat.FromConfig(c);
        var names = new ModelTensors(c, hasLmHead: !c.TieWordEmbeddings || ckpt.Contains("lm_head.weight"));
        format.CheckTensors(names, ckpt);
        Bf16Weight W(ModelTensor t) => format.FormatOf(t) switch
        {
            WeightFormat.Bf16 when ckpt.Info(t.Name).DType == SafetensorsDType.F16 =>   // GPTQ's fp16 tensors (CheckpointFormat.AcceptsF16)
                new(t.Name, (int)t.Rows, (int)t.Cols, () => F16ToBf16(ckpt.Get(t.Name, SafetensorsDType.F16, t.Shape).AsF16())),
            WeightFormat.Bf16 => new(ckpt.Get(t.Name, SafetensorsDType.BF16, t.Shape), (int)t.Rows, (int)t.Cols),
            var f => new(t.Name, (int)t.Rows, (int)t.Cols, () => Dequantize(ckpt, t, f)),
        };
        MlpWeights Mlp(MlpTensors m) => new(W(m.Gate), W(m.Up), W(m.Down));
        var embed = W(names.Embedding);
        var layers = new LayerWeights[c.NumHiddenLayers];
        for (int l = 0; l < layers.Length; l++)
        {
            var t = names.Layers[l];
            var attn = new AttentionWeights(W(t.QProj), W(t.KProj), W(t.VProj), W(t.OProj), W(t.QNorm), W(t.KNorm));
            MoeWeights? moe = t.IsMoe ? new MoeWeights(W(t.Router!), t.Experts!.Select(Mlp).ToArray()) : null;
            MlpWeights? mlp = t.IsMoe ? null : Mlp(t.Mlp!);
            layers[l] = new LayerWeights(l, W(t.InputNorm), attn, W(t.PostNorm), moe, mlp);
        }
        var norm = W(names.FinalNorm);
        var lmHead = names.LmHead is { } head ? W(head) : embed;
        return new ModelWeights(c, ckpt, format, embed, layers, norm, lmHead);
    }

    /// <summary>fp16 values rounded to bf16 (nearest even), as the device upload converts them.</summary>
    public static ushort[] F16ToBf16(ReadOnlySpan<Half> src)
    {
        var dst = new ushort[src.Length];
        for (int i = 0; i < src.Length; i++) dst[i] = Bf16.FromFloat((float)src[i]);
        return dst;
    }

    /// <summary>The bf16 weights of a quantized Linear, exactly as the kernels dequantize them (docs/formats.md).</summary>
    public static ushort[] Dequantize(SafetensorsCheckpoint ckpt, ModelTensor t, WeightFormat format)
    {
        var scales = WeightQuantization.ScalesToFloat(ckpt.Get(CheckpointFormat.ScaleName(t, format)));
        if (format == WeightFormat.Int4Gptq)
        {
            var qw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(ckpt.Get(CheckpointFormat.GptqName(t, "qweight")).Bytes);
            var qz = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(ckpt.Get(CheckpointFormat.GptqName(t, "qzeros")).Bytes);
            return WeightQuantization.DequantizeGptq(qw, qz, scales, (int)t.Rows, (int)t.Cols, (int)(t.Cols / (scales.Length / t.Rows)));
        }
        var q = ckpt.Get(t.Name);
        return format switch
        {
            WeightFormat.Fp8Block => WeightQuantization.DequantizeFp8(q.AsF8E4M3(), scales, (int)t.Rows, (int)t.Cols),
            WeightFormat.Int8Channel => WeightQuantization.DequantizeInt8(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(q.Bytes), scales, (int)t.Rows, (int)t.Cols),
            _ => throw new NotSupportedException($"{t.Name}: no dequantization for weight format {format.Name()}"),
        };
    }

    public void Dispose() => Checkpoint.Dispose();
}
