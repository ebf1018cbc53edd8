using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>PersistentGemvParams</c> in kernels/persistent_gemv.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PersistentGemvParams
{
    public DevicePtr W;          // [Stages] device pointers to [Dim, Dim] bf16 weights
    public DevicePtr Act;        // [Stages + 1, Dim] bf16: the input, then each stage's output
    public DevicePtr Counters;   // [2 + Stages] int, zero on entry, left zero
    public int Stages;
    public int Dim;
    public int RowsPerWarp;
}

/// <summary>
/// Launcher for kernels/persistent_gemv.cu: a chain of bf16 GEMVs, act[s + 1] = W[s] act[s], in one launch whose CTAs
/// pull tiles in order and wait on per-stage counters in global memory (docs/kernels.md, "Persistent launches"): the
/// first brick of the persistent decode kernel, bitwise the same as <see cref="GemvLaunchers"/> launched once per stage.
/// Nothing here allocates or synchronises.
/// </summary>
public sealed class PersistentGemvLaunchers(KernelLoader loader)
{
    public const string File = "persistent_gemv.cu";
    public const int Threads = 256, MaxRowsPerWarp = 8, MaxDim = 11264;   // the staged row as fp32: 44 KiB of shared memory
    private readonly DeviceKernel _kernel = loader.Get(File, "persistent_gemv_chain");
    private readonly IDevice _device = loader.Device;

    /// <summary>Bytes of the counters a chain of <paramref name="stages"/> needs: zeroed once, the launch leaves them zero.</summary>
    public static long CounterBytes(int stages) => (2L + stages) * sizeof(int);

    /// <summary>
    /// Runs the chain: <paramref name="weights"/> holds <paramref name="stages"/> device pointers (8 bytes each) to [dim,
    /// dim] bf16 matrices; <paramref name="act"/> is [stages + 1, dim] bf16 with the input in row 0; <paramref name="counters"/>
    /// has <see cref="CounterBytes"/> bytes, zero. <paramref name="ctas"/> CTAs pull the tiles (any number: a tile waits
    /// only on tiles taken before it); <paramref name="cooperative"/> asks for a co-resident launch.
    /// </summary>
    public void Chain(DeviceStream stream, DevicePtr weights, DevicePtr act, DevicePtr counters, int stages, int dim,
        int rowsPerWarp, int ctas, bool cooperative = false)
    {
        if (stages < 1) throw new ArgumentOutOfRangeException(nameof(stages), stages, "persistent_gemv_chain: at least one stage");
        if (dim < 8 || dim % 8 != 0 || dim > MaxDim)
            throw new ArgumentOutOfRangeException(nameof(dim), dim, $"persistent_gemv_chain: dim must be a multiple of 8 from 8 to {MaxDim}");
        if (rowsPerWarp < 1 || rowsPerWarp > MaxRowsPerWarp)
            throw new ArgumentOutOfRangeException(nameof(rowsPerWarp), rowsPerWarp, $"persistent_gemv_chain: rows per warp must be 1..{MaxRowsPerWarp}");
        if (ctas < 1) throw new ArgumentOutOfRangeException(nameof(ctas), ctas, "persistent_gemv_chain: at least one CTA");
        if (weights.IsNull || act.IsNull || counters.IsNull) throw new ArgumentException("persistent_gemv_chain: weights, act and counters must be device buffers");
        var p = new PersistentGemvParams { W = weights, Act = act, Counters = counters, Stages = stages, Dim = dim, RowsPerWarp = rowsPerWarp };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_kernel, new LaunchConfig(new Dim3((uint)ctas), Threads, dim * sizeof(float), Cooperative: cooperative) { TilesInOrder = true }, stream, args);
    }
}
