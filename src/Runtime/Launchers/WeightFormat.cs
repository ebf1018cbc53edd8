namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>
/// How the kernels read a weight matrix W [N, K] (nn.Linear: N outputs, K inputs). Every matrix launcher
/// (GEMV, GEMM, MoE) picks its kernel variant from a table keyed by this; a format without a kernel in that
/// table is refused with a message naming the launcher and the formats it has (docs/quantization.md).
/// </summary>
public enum WeightFormat
{
    /// <summary>bf16 [N, K], row-major: the checkpoint's bytes verbatim.</summary>
    Bf16,
    /// <summary>FP8 E4M3 [N, K] row-major with fp32 scales per 128 x 128 block (quant_method fp8, docs/formats.md).</summary>
    Fp8Block,
    /// <summary>INT8 [N, K] row-major with one fp32 scale per output row (W8A16, docs/formats.md).</summary>
    Int8Channel,
    /// <summary>GPTQ 4-bit, symmetric: [N, K/2] bytes (two codes per byte along K, low nibble first), fp16 scales [N, K/group] (docs/formats.md).</summary>
    Int4Gptq,
}

/// <summary>
/// Mirror of <c>WeightScales</c> in kernels/quant.cuh: the scale of weight (row, k) is
/// <c>Scales[(row &gt;&gt; RowShift) * Cols + (k &gt;&gt; KShift)]</c> (fp32).
/// </summary>
[System.Runtime.InteropServices.StructLayout(System.Runtime.InteropServices.LayoutKind.Sequential)]
public struct WeightScales
{
    public DevicePtr Scales;
    public int RowShift;
    public int KShift;
    public int Cols;
}

/// <summary>A weight matrix as a launcher receives it: its format and the device buffers that format needs.</summary>
/// <param name="Data">The weight itself (bf16 [N, K] for <see cref="WeightFormat.Bf16"/>).</param>
/// <param name="Format">Which kernel variant reads it.</param>
/// <param name="Scales">Scale tensor of a quantized format (null for bf16).</param>
public readonly record struct WeightOperand(DevicePtr Data, WeightFormat Format, DevicePtr Scales = default)
{
    /// <summary>Scale row of weight row r: r &gt;&gt; ScaleRowShift (rows of the whole stacked matrix).</summary>
    public int ScaleRowShift { get; init; }
    /// <summary>Scale column of weight column k: k &gt;&gt; ScaleKShift.</summary>
    public int ScaleKShift { get; init; }
    /// <summary>Scale columns per scale row.</summary>
    public int ScaleCols { get; init; }

    /// <summary>The kernels' view of the scales (all zero for bf16).</summary>
    public WeightScales KernelScales => new() { Scales = Scales, RowShift = ScaleRowShift, KShift = ScaleKShift, Cols = ScaleCols };

    /// <summary>Bytes per weight element of <see cref="Format"/>'s data.</summary>
    public int ElementBytes => Format == WeightFormat.Bf16 ? 2 : 1;

    /// <summary>A GPTQ int4 weight [N, K] repacked row-major (two codes per byte) with fp16 scales [N, K / group]; group a power of two.</summary>
    public static WeightOperand Int4(DevicePtr data, DevicePtr scales, int k, int group) =>
        new(data, WeightFormat.Int4Gptq, scales) { ScaleRowShift = 0, ScaleKShift = System.Numerics.BitOperations.Log2((uint)group), ScaleCols = k / group };

    /// <summary>An FP8 block-128 weight [N, K] with fp32 scales; <paramref name="rowShift"/> 7 (128-row blocks) or 0 (a scale row per weight row).</summary>
    public static WeightOperand Fp8(DevicePtr data, DevicePtr scales, int k, int rowShift = 7) =>
        new(data, WeightFormat.Fp8Block, scales) { ScaleRowShift = rowShift, ScaleKShift = 7, ScaleCols = (k + 127) / 128 };

    /// <summary>An INT8 per-output-channel weight [N, K] with fp32 scales [N].</summary>
    public static WeightOperand Int8(DevicePtr data, DevicePtr scales) =>
        new(data, WeightFormat.Int8Channel, scales) { ScaleRowShift = 0, ScaleKShift = 30, ScaleCols = 1 };

    /// <summary>A plain bf16 [N, K] weight.</summary>
    public static WeightOperand Bf16(DevicePtr data) => new(data, WeightFormat.Bf16);
}

public static class WeightFormats
{
    /// <summary>The name used in messages, docs and `info`: "bf16".</summary>
    public static string Name(this WeightFormat f) => f switch
    {
        WeightFormat.Bf16 => "bf16",
        WeightFormat.Fp8Block => "fp8",
        WeightFormat.Int8Channel => "int8",
        WeightFormat.Int4Gptq => "int4",
        _ => $"#{(int)f}",
    };

    /// <summary>
    /// The kernel variant of <paramref name="format"/> in a launcher's table, or a clear error naming the launcher
    /// and every format the table has.
    /// </summary>
    public static T Select<T>(IReadOnlyDictionary<WeightFormat, T> table, WeightFormat format, string launcher)
    {
        if (table.TryGetValue(format, out var v)) return v;
        throw new NotSupportedException(
            $"{launcher}: no kernel for weight format {format.Name()} (supported: {string.Join(", ", table.Keys.Order().Select(Name))})");
    }

    /// <summary>Checks what every quantized kernel needs of an operand: scales present, and K a multiple of 16 (16-weight loads).</summary>
    public static void CheckQuantized(in WeightOperand w, int k, string launcher)
    {
        if (w.Format == WeightFormat.Bf16) return;
        if (w.Scales.IsNull) throw new ArgumentException($"{launcher}: a {w.Format.Name()} weight needs its scales");
        int step = w.Format == WeightFormat.Int4Gptq ? 32 : 16;
        if (k % step != 0) throw new ArgumentException($"{launcher}: K {k} must be a multiple of {step} for {w.Format.Name()} weights (16-byte loads)");
        if (w.Format == WeightFormat.Int4Gptq && (1 << w.ScaleKShift) % step != 0)
            throw new ArgumentException($"{launcher}: int4 group size {1 << w.ScaleKShift} must be a multiple of {step}");
    }
}
