using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>Which part of a checkpoint tensor an entry of a <see cref="QuantizedWriter"/> plan is.</summary>
public enum QuantizedPart { Bf16, Weight, Scale, Zeros, GIdx }

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
    private Dictionary<QuantizedPart, byte[]> _parts = [];

    /// <summary>
    /// The GPTQ group size for a model: 128, or the largest power of two (at least 32) dividing every quantized K when 128
    /// does not (small synthetic models: H 64 / I 32 give 32).
    /// </summary>
    public static int DefaultGroupSize(ModelConfig c)
    {
        long[] ks = [c.HiddenSize, c.QueryDim, c.MoeIntermediateSize, c.IntermediateSize];
        for (int g = 128; g >= 32; g /= 2) if (ks.All(k => k == 0 || k % g == 0)) return g;
        throw new NotSupportedException($"int4: no group size of 32..128 divides the model's K dimensions ({string.Join(", ", ks)})");
    }

    /// <summary>The quantization_config a checkpoint of <paramref name="format"/> declares (null for bf16); <paramref name="groupSize"/> for GPTQ.</summary>
    public static QuantizationConfig? ConfigFor(WeightFormat format, int groupSize = 128) => format switch
    {
        WeightFormat.Int4Gptq => new QuantizationConfig
        {
            QuantMethod = "gptq", Bits = 4, GroupSize = groupSize, DescAct = false, Sym = true, CheckpointFormat = "gptq",
        },
        WeightFormat.Bf16 => null,
        WeightFormat.Fp8Block => new QuantizationConfig
        {
            QuantMethod = "fp8", Fmt = "e4m3", ActivationScheme = "dynamic", WeightBlockSize = [WeightQuantization.Fp8Block, WeightQuantization.Fp8Block],
        },
        WeightFormat.Int8Channel => new QuantizationConfig { QuantMethod = CheckpointFormat.Int8QuantMethod, Bits = 8, GroupSize = -1, Sym = true },
        _ => throw new NotSupportedException($"writing weight format {format.Name()} is not supported yet (supported: bf16, fp8, int8, int4)"),
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
            if (f == WeightFormat.Int4Gptq)
            {
                long n = t.Rows, k = t.Cols, g = format.GroupSize;
                list.Add(new(new TensorSpec(CheckpointFormat.GptqName(t, "qweight"), SafetensorsDType.I32, [k / 8, n]), t, QuantizedPart.Weight, f));
                list.Add(new(new TensorSpec(CheckpointFormat.GptqName(t, "qzeros"), SafetensorsDType.I32, [k / g, n / 8]), t, QuantizedPart.Zeros, f));
                list.Add(new(new TensorSpec(CheckpointFormat.GptqName(t, "scales"), SafetensorsDType.F16, [k / g, n]), t, QuantizedPart.Scale, f));
                list.Add(new(new TensorSpec(CheckpointFormat.GptqName(t, "g_idx"), SafetensorsDType.I32, [k]), t, QuantizedPart.GIdx, f));
                continue;
            }
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
            _parts = QuantizeParts(bf16Values(index), p.Source, p.Format, p.Format == WeightFormat.Int4Gptq ? (int)(p.Source.Cols / GroupsOf(index)) : 0);
            _module = p.Source.Module;
        }
        _parts[p.Part].AsSpan((int)byteOffset, chunk.Length).CopyTo(chunk);
    }

    private long GroupsOf(int index)
    {
        var src = plan[index].Source;
        return plan.First(e => e.Source == src && e.Part == QuantizedPart.Scale).Spec.Shape[0];
    }

    /// <summary>Every stored part of a quantized Linear (weight and scale; GPTQ also zeros and g_idx).</summary>
    public static Dictionary<QuantizedPart, byte[]> QuantizeParts(ushort[] values, ModelTensor t, WeightFormat format, int groupSize)
    {
        static byte[] B<T>(T[] a) where T : unmanaged => System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()).ToArray();
        if (format == WeightFormat.Int4Gptq)
        {
            var (qw, qz, sc, gi) = WeightQuantization.QuantizeGptq(values, (int)t.Rows, (int)t.Cols, groupSize);
            return new() { [QuantizedPart.Weight] = B(qw), [QuantizedPart.Zeros] = B(qz), [QuantizedPart.Scale] = B(sc), [QuantizedPart.GIdx] = B(gi) };
        }
        var (w, s) = Quantize(values, t, format);
        return new() { [QuantizedPart.Weight] = w, [QuantizedPart.Scale] = s };
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
