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
}

/// <summary>A weight matrix as a launcher receives it: its format and the device buffers that format needs.</summary>
/// <param name="Data">The weight itself (bf16 [N, K] for <see cref="WeightFormat.Bf16"/>).</param>
/// <param name="Format">Which kernel variant reads it.</param>
/// <param name="Scales">Scale tensor of a quantized format (null for bf16).</param>
public readonly record struct WeightOperand(DevicePtr Data, WeightFormat Format, DevicePtr Scales = default)
{
    /// <summary>A plain bf16 [N, K] weight.</summary>
    public static WeightOperand Bf16(DevicePtr data) => new(data, WeightFormat.Bf16);
}

public static class WeightFormats
{
    /// <summary>The name used in messages, docs and `info`: "bf16".</summary>
    public static string Name(this WeightFormat f) => f switch
    {
        WeightFormat.Bf16 => "bf16",
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
}
