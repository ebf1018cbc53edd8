using System.Runtime.CompilerServices;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>
/// FP8 E4M3 ("fn": no infinities, S.1111.111 is NaN, largest finite 448) as stored in F8_E4M3 safetensors.
/// Decoding matches kernels/quant.cuh bit for bit; encoding rounds to nearest, ties to even, and saturates at +-448.
/// </summary>
public static class Fp8E4M3
{
    public const float MaxFinite = 448f;
    private static readonly float[] Table = BuildTable();

    private static float[] BuildTable()
    {
        var t = new float[256];
        for (int b = 0; b < 256; b++)
        {
            int mag = b & 0x7F, exp = mag >> 3, man = mag & 7;
            float v = mag == 0x7F ? float.NaN : exp == 0 ? man * MathF.Pow(2, -9) : (1 + man / 8f) * MathF.Pow(2, exp - 7);
            t[b] = (b & 0x80) != 0 ? -v : v;
        }
        return t;
    }

    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static float ToFloat(byte b) => Table[b];

    /// <summary>The nearest E4M3 value (ties to even), saturated to +-448; NaN stays NaN.</summary>
    public static byte FromFloat(float x)
    {
        if (float.IsNaN(x)) return 0x7F;
        byte sign = (byte)(BitConverter.SingleToUInt32Bits(x) >> 24 & 0x80);
        double a = Math.Abs((double)x);
        if (a >= MaxFinite) return (byte)(sign | 0x7E);
        int code;
        if (a < 1.0 / 64)   // subnormal range (and the step to the smallest normal): multiples of 2^-9
            code = (int)Math.Round(a * 512, MidpointRounding.ToEven);
        else
        {
            int e = Math.ILogB(a);                                          // -6 .. 8
            int q = (int)Math.Round(a / Math.ScaleB(1, e - 3), MidpointRounding.ToEven);   // 8 .. 16
            code = ((e + 7) << 3) + (q - 8);                                // q = 16 carries into the next exponent
        }
        return (byte)(sign | Math.Min(code, 0x7E));
    }
}

/// <summary>
/// The dequantization every format shares with the kernels (kernels/quant.cuh, docs/formats.md): a weight is
/// <c>bf16(decode(q) x scale)</c>, the fp32 product rounded to nearest even; and the quantizers `qwen3cuda-convert
/// quantize` and the synthetic writer use (round to nearest).
/// </summary>
public static class WeightQuantization
{
    public const int Fp8Block = 128;

    /// <summary>Blocks of <see cref="Fp8Block"/> covering <paramref name="n"/> (the last may be partial).</summary>
    public static int Blocks(long n) => (int)((n + Fp8Block - 1) / Fp8Block);

    /// <summary>The bf16 weights of an FP8 block-128 matrix [rows, cols] with scales [ceil(rows/128), ceil(cols/128)].</summary>
    public static ushort[] DequantizeFp8(ReadOnlySpan<byte> q, ReadOnlySpan<float> scales, int rows, int cols)
    {
        int kb = Blocks(cols);
        var w = new ushort[(long)rows * cols];
        for (int r = 0; r < rows; r++)
        {
            var srow = scales.Slice(r / Fp8Block * kb, kb);
            var qrow = q.Slice(r * cols, cols);
            for (int k = 0; k < cols; k++) w[(long)r * cols + k] = Bf16.FromFloat(Fp8E4M3.ToFloat(qrow[k]) * srow[k / Fp8Block]);
        }
        return w;
    }

    /// <summary>
    /// Quantizes bf16 [rows, cols] to FP8 E4M3 with one scale per 128 x 128 block: scale = amax / 448 (1 for an all-zero
    /// block), q = nearest E4M3 of w / scale. Returns the bytes and the scales [ceil(rows/128), ceil(cols/128)].
    /// </summary>
    public static (byte[] Q, float[] Scales) QuantizeFp8(ReadOnlySpan<ushort> w, int rows, int cols)
    {
        int rb = Blocks(rows), kb = Blocks(cols);
        var scales = new float[rb * kb];
        var q = new byte[(long)rows * cols];
        unsafe
        {
            fixed (ushort* pw = w)
            {
                nint wAddr = (nint)pw;
                Parallel.For(0, rb, i =>
                {
                    var src = new ReadOnlySpan<ushort>((void*)wAddr, rows * cols);
                    for (int j = 0; j < kb; j++)
                    {
                        float amax = 0;
                        for (int r = i * Fp8Block; r < Math.Min(rows, (i + 1) * Fp8Block); r++)
                            for (int k = j * Fp8Block; k < Math.Min(cols, (j + 1) * Fp8Block); k++)
                                amax = MathF.Max(amax, MathF.Abs(Bf16.ToFloat(src[r * cols + k])));
                        float s = amax > 0 && float.IsFinite(amax) ? amax / Fp8E4M3.MaxFinite : 1f;
                        scales[i * kb + j] = s;
                        for (int r = i * Fp8Block; r < Math.Min(rows, (i + 1) * Fp8Block); r++)
                            for (int k = j * Fp8Block; k < Math.Min(cols, (j + 1) * Fp8Block); k++)
                                q[(long)r * cols + k] = Fp8E4M3.FromFloat(Bf16.ToFloat(src[r * cols + k]) / s);
                    }
                });
            }
        }
        return (q, scales);
    }

    /// <summary>The bf16 weights of an INT8 per-output-channel matrix [rows, cols] with scales [rows].</summary>
    public static ushort[] DequantizeInt8(ReadOnlySpan<sbyte> q, ReadOnlySpan<float> scales, int rows, int cols)
    {
        var w = new ushort[(long)rows * cols];
        for (int r = 0; r < rows; r++)
        {
            float s = scales[r];
            for (int k = 0; k < cols; k++) w[(long)r * cols + k] = Bf16.FromFloat(q[r * cols + k] * s);
        }
        return w;
    }

    /// <summary>Quantizes bf16 [rows, cols] to INT8 with one scale per row: scale = amax / 127 (1 for a zero row), q = round(w / scale).</summary>
    public static (sbyte[] Q, float[] Scales) QuantizeInt8(ReadOnlySpan<ushort> w, int rows, int cols)
    {
        var q = new sbyte[(long)rows * cols];
        var scales = new float[rows];
        for (int r = 0; r < rows; r++)
        {
            float amax = 0;
            for (int k = 0; k < cols; k++) amax = MathF.Max(amax, MathF.Abs(Bf16.ToFloat(w[r * cols + k])));
            float s = amax > 0 && float.IsFinite(amax) ? amax / 127f : 1f;
            scales[r] = s;
            for (int k = 0; k < cols; k++)
                q[(long)r * cols + k] = (sbyte)Math.Clamp(MathF.Round(Bf16.ToFloat(w[r * cols + k]) / s, MidpointRounding.ToEven), -127, 127);
        }
        return (q, scales);
    }

    /// <summary>A scale tensor as fp32 (F32 verbatim, BF16 / F16 widened exactly).</summary>
    public static float[] ScalesToFloat(TensorView v) => v.DType switch
    {
        SafetensorsDType.F32 => v.AsF32().ToArray(),
        SafetensorsDType.BF16 => v.AsBf16().ToArray().Select(Bf16.ToFloat).ToArray(),
        SafetensorsDType.F16 => v.AsF16().ToArray().Select(h => (float)h).ToArray(),
        _ => throw new CheckpointException($"{v.Info.FilePath}: tensor '{v.Info.Name}' has dtype {v.DType.Name()}; a scale is F32, BF16 or F16"),
    };

    /// <summary>The first zero or non-finite scale, as an error naming the tensor and its file; null when all are usable.</summary>
    public static string? CheckScales(ReadOnlySpan<float> scales, TensorInfo info)
    {
        for (int i = 0; i < scales.Length; i++)
            if (scales[i] == 0 || !float.IsFinite(scales[i]))
                return $"{info.FilePath}: tensor '{info.Name}' has scale {scales[i]} at element {i} (scales must be non-zero and finite)";
        return null;
    }
}
