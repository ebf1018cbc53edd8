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
    public static readonly IReadOnlyList<(string QuantMethod, string Description, Func<QuantizationConfig, string, CheckpointFormat> Build)> Supported =
    [
        ("fp8", "fmt e4m3, weight_block_size [128, 128]", BuildFp8),
        ("int8", "bits 8, group_size -1 (per output channel), sym: qwen3cuda-convert quantize --to int8", BuildInt8),
        ("gptq", "bits 4, sym, desc_act false, group_size a power of two >= 32, checkpoint_format gptq", BuildGptq),
    ];

    /// <summary>
    /// GPTQ checkpoints keep their unquantized tensors (embedding, norms, router, lm_head) in fp16 (torch_dtype float16):
    /// those are read as F16 and rounded to bf16 (nearest even) when loaded. Every other format stores them as BF16.
    /// </summary>
    public bool AcceptsF16 => LinearFormat == WeightFormat.Int4Gptq;

    /// <summary>GPTQ: weights per group of inputs sharing a scale (quantization_config.group_size).</summary>
    public int GroupSize { get; private init; }

    private static CheckpointFormat BuildGptq(QuantizationConfig q, string fileName)
    {
        ConfigException No(string what) => new($"{fileName}: quantization_config.{what} is not supported (quant_method gptq loads bits 4, sym true, desc_act false, " +
            "group_size a power of two >= 32, checkpoint_format gptq)");
        if (q.Bits != 4) throw No($"bits {q.Bits?.ToString() ?? "(absent)"}");
        if (q.DescAct is true) throw No("desc_act true (act-order: g_idx not monotone)");
        if (q.Sym is false) throw No("sym false (zero points other than 8)");
        if (q.CheckpointFormat is not (null or "gptq")) throw No($"checkpoint_format '{q.CheckpointFormat}'");
        if (q.GroupSize is not int g || g < 32 || (g & (g - 1)) != 0) throw No($"group_size {q.GroupSize?.ToString() ?? "(absent)"}");
        return new CheckpointFormat($"gptq int4 group {g}", WeightFormat.Int4Gptq, q) { GroupSize = g };
    }

    /// <summary>quant_method "int8": our W8A16 layout (docs/formats.md), int8 weights with one fp32 scale per output row.</summary>
    public const string Int8QuantMethod = "int8";

    private static CheckpointFormat BuildInt8(QuantizationConfig q, string fileName)
    {
        if (q.Bits is not (null or 8)) throw new ConfigException($"{fileName}: quantization_config.bits {q.Bits} is not supported (quant_method int8 loads bits 8)");
        if (q.GroupSize is not (null or -1))
            throw new ConfigException($"{fileName}: quantization_config.group_size {q.GroupSize} is not supported (quant_method int8 loads group_size -1: one scale per output channel)");
        if (q.Sym is false) throw new ConfigException($"{fileName}: quantization_config.sym false is not supported (quant_method int8 is symmetric: no zero points)");
        return new CheckpointFormat("int8 per-channel (W8A16)", WeightFormat.Int8Channel, q);
    }

    private static CheckpointFormat BuildFp8(QuantizationConfig q, string fileName)
    {
        if (q.Fmt is not (null or "e4m3"))
            throw new ConfigException($"{fileName}: quantization_config.fmt '{q.Fmt}' is not supported (quant_method fp8 loads fmt e4m3)");
        if (q.WeightBlockSize is not [WeightQuantization.Fp8Block, WeightQuantization.Fp8Block])
            throw new ConfigException($"{fileName}: quantization_config.weight_block_size " +
                (q.WeightBlockSize is null ? "is absent (per-tensor FP8 scales)" : $"[{string.Join(", ", q.WeightBlockSize)}]") +
                " is not supported (quant_method fp8 loads weight_block_size [128, 128])");
        return new CheckpointFormat("fp8 e4m3 block 128x128", WeightFormat.Fp8Block, q);
    }

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
            {
                CheckQuantized(t, format, ckpt);
                continue;
            }
            if (ckpt.Contains(t.Name))
            {
                var info = ckpt.Info(t.Name);
                if (info.DType != SafetensorsDType.BF16 && !(AcceptsF16 && info.DType == SafetensorsDType.F16))
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

    /// <summary>The names a quantized Linear is stored as, besides <c>Module.weight</c>: its scale tensor.</summary>
    public static string ScaleName(ModelTensor t, WeightFormat format) => format switch
    {
        WeightFormat.Fp8Block => t.Module + ".weight_scale_inv",
        WeightFormat.Int8Channel => t.Module + ".weight_scale",
        WeightFormat.Int4Gptq => t.Module + ".scales",
        _ => throw new ArgumentOutOfRangeException(nameof(format), $"{format.Name()} has no scale tensor"),
    };

    /// <summary>The stored dtype of the weight of a Linear in <paramref name="format"/>.</summary>
    public static SafetensorsDType StoredDType(WeightFormat format) => format switch
    {
        WeightFormat.Bf16 => SafetensorsDType.BF16,
        WeightFormat.Fp8Block => SafetensorsDType.F8_E4M3,
        WeightFormat.Int8Channel => SafetensorsDType.I8,
        WeightFormat.Int4Gptq => SafetensorsDType.I32,
        _ => throw new ArgumentOutOfRangeException(nameof(format)),
    };

    /// <summary>The scale tensor's shape for a Linear [N, K] in <paramref name="format"/>.</summary>
    public static long[] ScaleShape(ModelTensor t, WeightFormat format) => format switch
    {
        WeightFormat.Fp8Block => [WeightQuantization.Blocks(t.Rows), WeightQuantization.Blocks(t.Cols)],
        WeightFormat.Int8Channel => [t.Rows, 1],
        _ => throw new ArgumentOutOfRangeException(nameof(format)),
    };

    /// <summary>GPTQ's tensors of a Linear: qweight, qzeros, scales, g_idx.</summary>
    public static string GptqName(ModelTensor t, string part) => $"{t.Module}.{part}";

    /// <summary>
    /// A GPTQ Linear [N, K]: qweight I32 [K/8, N], qzeros I32 [K/G, N/8] all 8 - 1 (symmetric), scales F16 [K/G, N]
    /// non-zero and finite, g_idx I32 [K] equal to k / G (act-order refused); no .weight.
    /// </summary>
    private void CheckGptq(ModelTensor t, SafetensorsCheckpoint ckpt)
    {
        long n = t.Rows, k = t.Cols, g = GroupSize;
        if (ckpt.Contains(t.Name))
            throw new CheckpointException($"{ckpt.Info(t.Name).FilePath}: tensor '{t.Name}' is stored unquantized ({ckpt.Info(t.Name).DType.Name()}), but config.json declares {Describe()} " +
                $"(mixed formats: expected '{t.Module}.qweight')");
        if (k % g != 0) throw new CheckpointException($"{t.Module}: quantization_config.group_size {g} does not divide its K {k} (shape {t.ShapeText})");
        if (n % 8 != 0) throw new CheckpointException($"{t.Module}: N {n} is not a multiple of 8 (GPTQ packs 8 zero points per int32)");
        TensorInfo Need(string part, SafetensorsDType dtype, long[] shape)
        {
            string name = GptqName(t, part);
            if (!ckpt.Contains(name)) throw new CheckpointException($"{(ckpt.Contains(t.Module + ".qweight") ? ckpt.Info(t.Module + ".qweight").FilePath : t.Module)}: tensor '{name}' is missing (GPTQ stores qweight, qzeros, scales, g_idx)");
            var info = ckpt.Info(name);
            if (info.DType != dtype) throw new CheckpointException($"{info.FilePath}: tensor '{name}' has dtype {info.DType.Name()}, GPTQ stores it as {dtype.Name()}");
            if (!info.Shape.SequenceEqual(shape))
                throw new CheckpointException($"{info.FilePath}: tensor '{name}' has shape {info.ShapeText}, expected {TensorInfo.FormatShape(shape)} for {t.Module} [N {n}, K {k}] with group size {g}");
            return info;
        }
        Need("qweight", SafetensorsDType.I32, [k / 8, n]);
        var zi = Need("qzeros", SafetensorsDType.I32, [k / g, n / 8]);
        var si = Need("scales", SafetensorsDType.F16, [k / g, n]);
        if (WeightQuantization.CheckScales(WeightQuantization.ScalesToFloat(ckpt.Get(si.Name)), si) is { } bad) throw new CheckpointException(bad);
        var zeros = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(ckpt.Get(zi.Name).Bytes);
        for (int i = 0; i < zeros.Length; i++)
            if (zeros[i] != 0x77777777)
                throw new CheckpointException($"{zi.FilePath}: tensor '{zi.Name}' holds zero points other than 8 (int32 {i} is 0x{zeros[i]:x8}; stored minus one, symmetric GPTQ has 0x77777777): asymmetric GPTQ is not supported");
        string gName = GptqName(t, "g_idx");
        if (ckpt.Contains(gName))
        {
            var gi = Need("g_idx", SafetensorsDType.I32, [k]);
            var gidx = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(ckpt.Get(gName).Bytes);
            for (int i = 1; i < gidx.Length; i++)
                if (gidx[i] < gidx[i - 1])
                    throw new CheckpointException($"{gi.FilePath}: tensor '{gName}' is not monotone (g_idx[{i - 1}] = {gidx[i - 1]}, g_idx[{i}] = {gidx[i]}): act-order (desc_act) GPTQ is not supported");
            for (int i = 0; i < gidx.Length; i++)
                if (gidx[i] != i / g)
                    throw new CheckpointException($"{gi.FilePath}: tensor '{gName}' has g_idx[{i}] = {gidx[i]}, expected {i / g}: groups must be consecutive runs of group_size {g}");
        }
    }

    /// <summary>A quantized Linear: weight dtype and shape, scale dtype, shape and values (non-zero, finite), no other format's tensors.</summary>
    private void CheckQuantized(ModelTensor t, WeightFormat format, SafetensorsCheckpoint ckpt)
    {
        if (format == WeightFormat.Int4Gptq) { CheckGptq(t, ckpt); return; }
        if (ckpt.Contains(t.Module + ".qweight"))
            throw new CheckpointException($"{ckpt.Info(t.Module + ".qweight").FilePath}: tensor '{t.Module}.qweight' is GPTQ-packed, but config.json declares " +
                $"{Describe()} (mixed formats)");
        var info = ckpt.Info(t.Name);   // throws: not found, naming the index or file
        var dtype = StoredDType(format);
        if (info.DType != dtype)
            throw new CheckpointException($"{info.FilePath}: tensor '{t.Name}' has dtype {info.DType.Name()}, but config.json declares {Describe()}, which stores it as " +
                $"{dtype.Name()}" + (info.DType == SafetensorsDType.BF16 ? " (mixed formats: list the module in quantization_config.modules_to_not_convert if it is meant to stay bf16)" : ""));
        if (!info.Shape.SequenceEqual(t.Shape))
            throw new CheckpointException($"{info.FilePath}: tensor '{t.Name}' has shape {info.ShapeText}, expected {t.ShapeText} from config.json");
        string scaleName = ScaleName(t, format);
        if (!ckpt.Contains(scaleName))
            throw new CheckpointException($"{info.FilePath}: tensor '{t.Name}' is {dtype.Name()} but its scale tensor '{scaleName}' is missing");
        var s = ckpt.Info(scaleName);
        if (s.DType is not (SafetensorsDType.F32 or SafetensorsDType.BF16 or SafetensorsDType.F16))
            throw new CheckpointException($"{s.FilePath}: tensor '{scaleName}' has dtype {s.DType.Name()}; a scale is F32, BF16 or F16");
        long[] shape = ScaleShape(t, format);
        bool shapeOk = s.Shape.SequenceEqual(shape) || (format == WeightFormat.Int8Channel && s.Shape.SequenceEqual(new[] { t.Rows }));
        if (!shapeOk)
            throw new CheckpointException($"{s.FilePath}: tensor '{scaleName}' has shape {s.ShapeText}, expected {TensorInfo.FormatShape(shape)} for '{t.Name}' {t.ShapeText}" +
                (format == WeightFormat.Fp8Block ? " (one scale per 128 x 128 block, partial edge blocks included)" : " (one scale per output row)"));
        if (WeightQuantization.CheckScales(WeightQuantization.ScalesToFloat(ckpt.Get(scaleName)), s) is { } bad)
            throw new CheckpointException(bad);
    }

    private string Describe() => IsQuantized ? $"quantization_config.quant_method '{Quantization!.QuantMethod}' ({Name})" : "a bf16 checkpoint (no quantization_config)";

    private static string Hint(SafetensorsDType d) => d is SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2
        ? " (an FP8 checkpoint needs its quantization_config)" : "";

    public override string ToString() => Name;
}
