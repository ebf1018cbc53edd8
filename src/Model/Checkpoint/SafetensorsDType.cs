namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>The safetensors dtypes this reader knows. The model uses BF16 (and may read F16, F32,
/// F8_E4M3 with its F32/BF16 <c>weight_scale_inv</c> block scales); the integer types are only parsed.</summary>
public enum SafetensorsDType
{
    BF16, F16, F32, F64, F8_E4M3, F8_E5M2, I8, U8, I16, I32, I64, BOOL,
}

public static class SafetensorsDTypes
{
    public static int SizeInBytes(this SafetensorsDType t) => t switch
    {
        SafetensorsDType.F8_E4M3 or SafetensorsDType.F8_E5M2 or SafetensorsDType.I8 or SafetensorsDType.U8 or SafetensorsDType.BOOL => 1,
        SafetensorsDType.BF16 or SafetensorsDType.F16 or SafetensorsDType.I16 => 2,
        SafetensorsDType.F32 or SafetensorsDType.I32 => 4,
        SafetensorsDType.F64 or SafetensorsDType.I64 => 8,
        _ => throw new ArgumentOutOfRangeException(nameof(t)),
    };

    /// <summary>The header spelling ("BF16", "F8_E4M3", ...).</summary>
    public static string Name(this SafetensorsDType t) => t.ToString();

    public static bool TryParse(string name, out SafetensorsDType dtype)
    {
        foreach (var t in Enum.GetValues<SafetensorsDType>())
            if (t.ToString() == name) { dtype = t; return true; }
        dtype = default;
        return false;
    }
}
