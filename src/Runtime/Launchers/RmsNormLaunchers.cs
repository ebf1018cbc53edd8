using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>AddRmsNormParams</c> in kernels/rmsnorm.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct AddRmsNormParams
{
    public DevicePtr Out;       // [rows, width] bf16
    public DevicePtr Hidden;    // [rows, width] bf16, residual stream (updated when Delta is set)
    public DevicePtr Delta;     // [rows, width] bf16 or null
    public DevicePtr Weight;    // [width] bf16
    public int Rows;
    public int Width;
    public float Eps;
}

/// <summary>Launchers for kernels/rmsnorm.cu. Nothing here allocates or synchronises.</summary>
public sealed class RmsNormLaunchers(KernelLoader loader)
{
    public const string File = "rmsnorm.cu";
    private readonly DeviceKernel _addRmsNorm = loader.Get(File, "add_rmsnorm_bf16");
    private readonly IDevice _device = loader.Device;

    /// <summary>
    /// <c>hidden += delta</c> (bf16, when <paramref name="delta"/> is not null), then
    /// <c>out = RMSNorm(hidden) * weight</c>, for <paramref name="rows"/> rows of <paramref name="width"/> bf16.
    /// </summary>
    public void AddRmsNorm(DeviceStream stream, DevicePtr output, DevicePtr hidden, DevicePtr delta, DevicePtr weight,
        int rows, int width, float eps)
    {
        if (width <= 0 || width % 8 != 0) throw new ArgumentException($"add_rmsnorm_bf16: width {width} must be a positive multiple of 8", nameof(width));
        if (rows < 0) throw new ArgumentOutOfRangeException(nameof(rows), $"add_rmsnorm_bf16: rows {rows} is negative");
        if (rows == 0) return;
        int chunks = width / 8;
        int threads = Math.Clamp((chunks + 31) / 32 * 32, 32, 1024);
        var p = new AddRmsNormParams { Out = output, Hidden = hidden, Delta = delta, Weight = weight, Rows = rows, Width = width, Eps = eps };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_addRmsNorm, new LaunchConfig(rows, threads, width * sizeof(ushort)), stream, args);
    }
}
