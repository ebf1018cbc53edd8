using System.Runtime.InteropServices;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>Where one tensor lives: file, dtype, shape, and byte range relative to the file's data section.</summary>
public sealed record TensorInfo(string Name, string FilePath, SafetensorsDType DType, long[] Shape, long DataBegin, long DataEnd)
{
    public long ByteLength => DataEnd - DataBegin;
    public long ElementCount => ByteLength / DType.SizeInBytes();
    public string ShapeText => FormatShape(Shape);
    public static string FormatShape(IEnumerable<long> shape) => "[" + string.Join(", ", shape) + "]";
}

/// <summary>
/// A tensor's bytes inside a memory-mapped safetensors file. Valid while the owning
/// <see cref="SafetensorsFile"/> (or checkpoint) is open; never copy the pointer past that.
/// </summary>
public readonly unsafe struct TensorView
{
    readonly byte* _data;
    public TensorInfo Info { get; }

    internal TensorView(TensorInfo info, byte* data) { Info = info; _data = data; }

    public nint Pointer => (nint)_data;
    public long ByteLength => Info.ByteLength;
    public IReadOnlyList<long> Shape => Info.Shape;
    public SafetensorsDType DType => Info.DType;

    /// <summary>The raw bytes (little-endian). Tensors over 2 GiB must be read through <see cref="Pointer"/>.</summary>
    public ReadOnlySpan<byte> Bytes => new(_data, checked((int)Info.ByteLength));

    public ReadOnlySpan<ushort> AsBf16() => As<ushort>(SafetensorsDType.BF16);
    public ReadOnlySpan<Half> AsF16() => MemoryMarshal.Cast<byte, Half>(Require(SafetensorsDType.F16));
    public ReadOnlySpan<float> AsF32() => As<float>(SafetensorsDType.F32);
    /// <summary>FP8 E4M3 bytes (no arithmetic is done on them here).</summary>
    public ReadOnlySpan<byte> AsF8E4M3() => Require(SafetensorsDType.F8_E4M3);

    ReadOnlySpan<T> As<T>(SafetensorsDType expected) where T : unmanaged => MemoryMarshal.Cast<byte, T>(Require(expected));

    ReadOnlySpan<byte> Require(SafetensorsDType expected)
    {
        if (Info.DType != expected)
            throw new CheckpointException($"{Info.FilePath}: tensor '{Info.Name}' has dtype {Info.DType.Name()}, read as {expected.Name()}");
        return Bytes;
    }
}
