using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>
/// The weight format of a checkpoint: detected from config.json's <c>quantization_config</c> (absent: bf16), checked
/// against the dtypes of the tensors, and refused by name when it is not in <see cref="Supported"/>. It says which
/// Linear weights are quantized (<see cref="FormatOf"/>): embeddings, norms and the MoE router always stay bf16.
/// docs/quantization.md lists the formats.
/// </summary>
public sealed class CheckpointFormat
{
    /// <summary>A plain bf16 checkpoint (no quantization_config).</summary>
    public static readonly CheckpointFormat Bf16 = new("bf16", WeightFormat.Bf16, null);

    /// <summary>
    /// The supported quantization_config.quant_method values, each with what it reads. A quant_method not here is refused
    /// with this list; the list grows with the formats.
    /// </summary>
    public static readonly IReadOnlyList<(string QuantMethod, string Description, Func<QuantizationConfig, string, CheckpointFormat> Build)> Supported = [];

    /// <summary>"bf16", "fp8 e4m3 block 128x128", ...</summary>
    public string Name { get; }
    /// <summary>The format of the quantized Linears (<see cref="WeightFormat.Bf16"/> for a bf16 checkpoint).</summary>
    public WeightFormat LinearFormat { get; }
    public QuantizationConfig? Quantization { get; }
    public bool IsQuantized => Quantization is not null;

    private CheckpointFormat(string name, WeightFormat linearFormat, QuantizationConfig? quantization)
    {
        Name = name; LinearFormat = linearFormat; Quantization = quantization;
    }

    /// <summary>The format config.json declares; unsupported quantization is refused naming the file and field.</summary>
    public static CheckpointFormat FromConfig(ModelConfig c, string fileName = ModelConfig.FileName)
    {
        if (c.Quantization is not { } q) return Bf16;
        foreach (var (method, _, build) in Supported)
            if (string.Equals(method, q.QuantMethod, StringComparison.Ordinal)) return build(q, fileName);
        string supported = Supported.Count == 0 ? "none yet: only bf16 checkpoints, without quantization_config, load"
            : string.Join(", ", Supported.Select(s => $"{s.QuantMethod} ({s.Description})"));
        throw new ConfigException($"{fileName}: quantization_config.quant_method '{q.QuantMethod}' is not supported (supported: {supported})");
    }

    /// <summary>
    /// How a checkpoint tensor is stored in this format: the quantized format for the attention projections and the MLP /
    /// expert projections (unless quantization_config.modules_to_not_convert names them), bf16 for everything else.
    /// </summary>
    public WeightFormat FormatOf(ModelTensor t)
    {
        if (!IsQuantized || !t.IsLinear || t.Role is TensorRole.Router or TensorRole.LmHead) return WeightFormat.Bf16;
        if (Quantization!.ModulesToNotConvert is { } skip && skip.Any(m => m.Length > 0 && t.Module.Contains(m, StringComparison.Ordinal)))
            return WeightFormat.Bf16;
        return LinearFormat;
    }

    /// <summary>
    /// Checks that every tensor of <paramref name="tensors"/> is in <paramref name="ckpt"/> stored as this format says:
    /// a tensor in another format (an FP8 weight, GPTQ-packed tensors, FP8 scales in a bf16 checkpoint) is an error naming
    /// the tensor, its file and what config.json declares.
    /// </summary>
    public void CheckTensors(ModelTensors tensors, SafetensorsCheckpoint ckpt)
    {
        foreach (var t in tensors.All)
        {
            var format = FormatOf(t);
            if (format != WeightFormat.Bf16)
                throw new NotSupportedException($"{t.Module}: weight format {format.Name()} has no loader yet");
            if (ckpt.Contains(t.Name))
            {
                var info = ckpt.Info(t.Name);
                if (info.DType != SafetensorsDType.BF16)
                    throw new CheckpointException($"{info.FilePath}: tensor '{t.Name}' has dtype {info.DType.Name()}, but config.json declares " +
                        $"{Describe()}, which stores it as BF16{Hint(info.DType)}");
                foreach (string companion in new[] { t.Module + ".weight_scale_inv", t.Module + ".weight_scale" })
                    if (ckpt.Contains(companion))
                        throw new CheckpointException($"{ckpt.Info(companion).FilePath}: tensor '{companion}' is a quantization scale, but config.json declares " +
                            $"{Describe()} (mixed formats: '{t.Name}' would be read without it)");
                continue;
            }
            if (ckpt.Contains(t.Module + ".qweight"))
                throw new CheckpointException($"{ckpt.Info(t.Module + ".qweight").FilePath}: tensor '{t.Module}.qweight' is GPTQ-packed, but config.json declares " +
                    $"{Describe()}, which stores '{t.Name}' as BF16 (a GPTQ checkpoint needs its quantization_config)");
            ckpt.Info(t.Name);   // throws: not found, naming the index or file
        }
    }

    private string Describe() => IsQuantized ? $"quantization_config.quant_method '{Quantization!.QuantMethod}' ({Name})" : "a bf16 checkpoint (no quantization_config)";

    private static string Hint(SafetensorsDType d) => d is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2
        ? " (an FP8 checkpoint needs its quantization_config)" : "";

    public override string ToString() => Name;
}
