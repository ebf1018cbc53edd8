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

    /// <summary>
    /// The bf16 weights [N, K] of a GPTQ 4-bit tensor (checkpoint_format gptq, v1): qweight I32 [K/8, N] (weight k is nibble
    /// k % 8 of row k / 8, low nibble first), qzeros I32 [K/G, N/8] (zero of (g, n) is nibble n % 8, stored minus one),
    /// scales [K/G, N]: w = bf16((q - (z + 1)) x scale).
    /// </summary>
    public static ushort[] DequantizeGptq(ReadOnlySpan<int> qweight, ReadOnlySpan<int> qzeros, ReadOnlySpan<float> scales, int n, int k, int group)
    {
        var w = new ushort[(long)n * k];
        for (int kk = 0; kk < k; kk++)
        {
            int g = kk / group;
            for (int c = 0; c < n; c++)
            {
                int q = (qweight[kk / 8 * n + c] >> (4 * (kk % 8))) & 0xF;
                int z = ((qzeros[g * (n / 8) + c / 8] >> (4 * (c % 8))) & 0xF) + 1;
                w[(long)c * k + kk] = Bf16.FromFloat((q - z) * scales[g * n + c]);
            }
        }
        return w;
    }

    /// <summary>
    /// Quantizes bf16 [N, K] to GPTQ 4-bit, symmetric, round to nearest (no GPTQ error compensation): per output column n
    /// and group of <paramref name="group"/> inputs, scale = fp16(2 max|w| / 15) (1 for a zero group), zero 8,
    /// q = clamp(round(w / scale) + 8, 0, 15). Returns the checkpoint tensors qweight, qzeros (8 - 1 = 7 everywhere), scales
    /// (fp16 bits) and g_idx (k / group).
    /// </summary>
    public static (int[] QWeight, int[] QZeros, ushort[] Scales, int[] GIdx) QuantizeGptq(ReadOnlySpan<ushort> w, int n, int k, int group)
    {
        int groups = k / group;
        var scales = new ushort[groups * n];
        var qweight = new int[k / 8 * n];
        var src = w.ToArray();
        Parallel.For(0, n, c =>     // columns are independent: each writes its own qweight words and scales
        {
            for (int g = 0; g < groups; g++)
            {
                float amax = 0;
                for (int kk = g * group; kk < (g + 1) * group; kk++) amax = MathF.Max(amax, MathF.Abs(Bf16.ToFloat(src[c * k + kk])));
                Half sh = amax > 0 && float.IsFinite(amax) ? (Half)(2 * amax / 15) : (Half)1;
                if (sh == Half.Zero || !Half.IsFinite(sh)) sh = (Half)1;
                float sc = (float)sh;
                scales[g * n + c] = BitConverter.HalfToUInt16Bits(sh);
                for (int kk = g * group; kk < (g + 1) * group; kk++)
                {
                    int q = Math.Clamp((int)MathF.Round(Bf16.ToFloat(src[c * k + kk]) / sc, MidpointRounding.ToEven) + 8, 0, 15);
                    qweight[kk / 8 * n + c] |= q << (4 * (kk % 8));
                }
            }
        });
        var qzeros = new int[groups * (n / 8)];
        Array.Fill(qzeros, 0x77777777);
        var gidx = new int[k];
        for (int kk = 0; kk < k; kk++) gidx[kk] = kk / group;
        return (qweight, qzeros, scales, gidx);
    }

    /// <summary>GPTQ qweight I32 [K/8, N] repacked for the device: row-major [N, K/2] bytes, weight k of row n in byte k/2 (low nibble: even k).</summary>
    public static void RepackGptq(ReadOnlySpan<int> qweight, int n, int k, Span<byte> dst)
    {
        for (int c = 0; c < n; c++)
            for (int kk = 0; kk < k; kk += 2)
            {
                int word = qweight[kk / 8 * n + c];
                int lo = (word >> (4 * (kk % 8))) & 0xF, hi = (word >> (4 * (kk % 8 + 1))) & 0xF;
                dst[c * (k / 2) + kk / 2] = (byte)(lo | hi << 4);
            }
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
