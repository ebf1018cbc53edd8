using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>Which part of a checkpoint tensor an entry of a <see cref="QuantizedWriter"/> plan is.</summary>
public enum QuantizedPart { Bf16, Weight, Scale }

/// <summary>One tensor to write: its safetensors spec, the logical tensor it stores, and which part of it.</summary>
public sealed record PlannedTensor(TensorSpec Spec, ModelTensor Source, QuantizedPart Part, WeightFormat Format);

/// <summary>
/// Writes a checkpoint's Linear weights in a quantized format from their bf16 values (the synthetic writer's random
/// values, or a bf16 checkpoint's): the tensor list with transformers' names and the formats' companion tensors
/// (docs/formats.md), and the bytes of each, quantized a whole tensor at a time (round to nearest).
/// </summary>
public sealed class QuantizedWriter(IReadOnlyList<PlannedTensor> plan, Func<int, ushort[]> bf16Values)
{
    private string? _module;
    private byte[] _weight = [], _scale = [];

    /// <summary>The quantization_config a checkpoint of <paramref name="format"/> declares (null for bf16).</summary>
    public static QuantizationConfig? ConfigFor(WeightFormat format) => format switch
    {
        WeightFormat.Bf16 => null,
        WeightFormat.Fp8Block => new QuantizationConfig
        {
            QuantMethod = "fp8", Fmt = "e4m3", ActivationScheme = "dynamic", WeightBlockSize = [WeightQuantization.Fp8Block, WeightQuantization.Fp8Block],
        },
        WeightFormat.Int8Channel => new QuantizationConfig { QuantMethod = CheckpointFormat.Int8QuantMethod, Bits = 8, GroupSize = -1, Sym = true },
        _ => throw new NotSupportedException($"writing weight format {format.Name()} is not supported yet (supported: bf16, fp8, int8)"),
    };

    /// <summary>Every tensor of a checkpoint for <paramref name="c"/> in file order: bf16 tensors, and for each quantized Linear its weight then its scale.</summary>
    public static IReadOnlyList<PlannedTensor> Plan(ModelConfig c)
    {
        var format = CheckpointFormat.FromConfig(c);
        var list = new List<PlannedTensor>();
        foreach (var t in new ModelTensors(c).All)
        {
            var f = format.FormatOf(t);
            if (f == WeightFormat.Bf16) { list.Add(new(new TensorSpec(t.Name, SafetensorsDType.BF16, t.Shape), t, QuantizedPart.Bf16, f)); continue; }
            list.Add(new(new TensorSpec(t.Name, CheckpointFormat.StoredDType(f), t.Shape), t, QuantizedPart.Weight, f));
            list.Add(new(new TensorSpec(CheckpointFormat.ScaleName(t, f), SafetensorsDType.F32, CheckpointFormat.ScaleShape(t, f)), t, QuantizedPart.Scale, f));
        }
        return list;
    }

    /// <summary>Fills <paramref name="chunk"/> with bytes of quantized entry <paramref name="index"/> from <paramref name="byteOffset"/>.</summary>
    public void Fill(int index, long byteOffset, Span<byte> chunk)
    {
        var p = plan[index];
        if (p.Part == QuantizedPart.Bf16) throw new ArgumentException($"{p.Spec.Name} is not quantized", nameof(index));
        if (_module != p.Source.Module)
        {
            (_weight, _scale) = Quantize(bf16Values(index), p.Source, p.Format);
            _module = p.Source.Module;
        }
        (p.Part == QuantizedPart.Weight ? _weight : _scale).AsSpan((int)byteOffset, chunk.Length).CopyTo(chunk);
    }

    /// <summary>The stored bytes of a Linear's weight and scale tensors in <paramref name="format"/>.</summary>
    public static (byte[] Weight, byte[] Scale) Quantize(ushort[] values, ModelTensor t, WeightFormat format)
    {
        int rows = (int)t.Rows, cols = (int)t.Cols;
        switch (format)
        {
            case WeightFormat.Fp8Block:
            {
                var (q, s) = WeightQuantization.QuantizeFp8(values, rows, cols);
                return (q, System.Runtime.InteropServices.MemoryMarshal.AsBytes(s.AsSpan()).ToArray());
            }
            case WeightFormat.Int8Channel:
            {
                var (q, s) = WeightQuantization.QuantizeInt8(values, rows, cols);
                return (System.Runtime.InteropServices.MemoryMarshal.AsBytes(q.AsSpan()).ToArray(), System.Runtime.InteropServices.MemoryMarshal.AsBytes(s.AsSpan()).ToArray());
            }
            default: throw new NotSupportedException($"{t.Name}: quantizing to {format.Name()} is not supported");
        }
    }
}
