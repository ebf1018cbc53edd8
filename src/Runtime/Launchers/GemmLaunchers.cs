using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>GemmParams</c> in kernels/gemm.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct GemmParams
{
    public DevicePtr C;          // [M, Ldc] bf16
    public DevicePtr A;          // [M, Lda] bf16
    public DevicePtr W;          // [N, Ldw] bf16
    public DevicePtr Residual;   // [M, Ldc] bf16 or null
    public int M;
    public int N;
    public int K;
    public int Lda;
    public int Ldw;
    public int Ldc;
    public WeightScales Ws;      // quantized variants only
}

/// <summary>The GEMM tile variants of kernels/gemm.cu.</summary>
public enum GemmTile { Tile64x64, Tile128x128 }

/// <summary>
/// Launchers for kernels/gemm.cu: C = A W^T (+ residual) on tensor cores, for prefill. The launcher picks the tile:
/// 128x128 when that still gives a full wave of CTAs, else 64x64; the variant's kernels come from <see cref="Variants"/>,
/// keyed by the weight format. Nothing here allocates or synchronises.
/// </summary>
public sealed class GemmLaunchers
{
    public const string File = "gemm.cu";

    /// <summary>The supported weight formats and their kernels (64x64 tile, 128x128 tile).</summary>
    public static readonly IReadOnlyDictionary<WeightFormat, (string Tile64, string Tile128)> Variants = new Dictionary<WeightFormat, (string, string)>
    {
        [WeightFormat.Bf16] = ("gemm_bf16_64x64", "gemm_bf16_128x128"),
        [WeightFormat.Fp8Block] = ("gemm_fp8_64x64", "gemm_fp8_128x128"),
        [WeightFormat.Int8Channel] = ("gemm_int8_64x64", "gemm_int8_128x128"),
        [WeightFormat.Int4Gptq] = ("gemm_int4_64x64", "gemm_int4_128x128"),
    };

    private readonly Dictionary<WeightFormat, (DeviceKernel Tile64, DeviceKernel Tile128)> _kernels = [];
    private readonly IDevice _device;

    /// <summary>Loads the kernels of <paramref name="formats"/> (default: bf16 only).</summary>
    public GemmLaunchers(KernelLoader loader, IEnumerable<WeightFormat>? formats = null)
    {
        _device = loader.Device;
        foreach (var f in (formats ?? [WeightFormat.Bf16]).Distinct())
        {
            var (k64, k128) = WeightFormats.Select(Variants, f, "gemm");
            _kernels[f] = (loader.Get(File, k64), loader.Get(File, k128));
        }
    }

    public GemmTile ChooseTile(int m, int n)
    {
        long big = (long)((m + 127) / 128) * ((n + 127) / 128);
        return m >= 128 && big >= _device.Info.MultiprocessorCount ? GemmTile.Tile128x128 : GemmTile.Tile64x64;
    }

    /// <summary>C[M, N] = A[M, K] W[N, K]^T (+ residual), bf16 in and out, fp32 accumulation. Returns the tile used.</summary>
    public GemmTile Gemm(DeviceStream stream, DevicePtr c, int ldc, DevicePtr a, int lda, DevicePtr w, int ldw, DevicePtr residual,
        int m, int n, int k, GemmTile? tile = null) =>
        Gemm(stream, c, ldc, a, lda, WeightOperand.Bf16(w), ldw, residual, m, n, k, tile);

    /// <summary>C[M, N] = A[M, K] W[N, K]^T (+ residual) with W in any loaded format. Returns the tile used.</summary>
    public GemmTile Gemm(DeviceStream stream, DevicePtr c, int ldc, DevicePtr a, int lda, in WeightOperand w, int ldw, DevicePtr residual,
        int m, int n, int k, GemmTile? tile = null)
    {
        var kernels = _kernels.TryGetValue(w.Format, out var ks) ? ks
            : throw new InvalidOperationException($"gemm: {w.Format.Name()} kernels were not loaded by these launchers (loaded: {string.Join(", ", _kernels.Keys.Select(WeightFormats.Name))})");
        if (m < 0 || n <= 0 || k <= 0 || k % 8 != 0) throw new ArgumentException($"gemm: M {m} N {n} K {k}: N positive, K a positive multiple of 8");
        if (lda < k || ldw < k || lda % 8 != 0 || ldw % 8 != 0)
            throw new ArgumentException($"gemm: lda {lda} / ldw {ldw} must be >= K {k} and multiples of 8 (16-byte rows for cp.async)");
        if (ldc < n || ldc % 2 != 0) throw new ArgumentException($"gemm: ldc {ldc} must be >= N {n} and even", nameof(ldc));
        WeightFormats.CheckQuantized(w, k, "gemm");
        if (m == 0) return tile ?? GemmTile.Tile64x64;
        GemmTile t = tile ?? ChooseTile(m, n);
        int bm = t == GemmTile.Tile128x128 ? 128 : 64;
        var p = new GemmParams { C = c, A = a, W = w.Data, Residual = residual, M = m, N = n, K = k, Lda = lda, Ldw = ldw, Ldc = ldc, Ws = w.KernelScales };
        var args = new KernelArgs(stackalloc byte[96], stackalloc nint[1]);
        args.Add(p);
        var grid = new Dim3((uint)((n + bm - 1) / bm), (uint)((m + bm - 1) / bm));
        _device.Launch(t == GemmTile.Tile128x128 ? kernels.Tile128 : kernels.Tile64, new LaunchConfig(grid, bm == 128 ? 256 : 128), stream, args);
        return t;
    }
}
