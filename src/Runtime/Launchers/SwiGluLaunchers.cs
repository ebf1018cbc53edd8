using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>SwiGluParams</c> in kernels/swiglu.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SwiGluParams
{
    public DevicePtr GateUp;   // [Tokens, LdIn] bf16: gate columns 0..I-1, up columns I..2I-1
    public DevicePtr Out;      // [Tokens, LdOut] bf16
    public int Tokens;
    public int Inter;          // I, multiple of 8
    public int LdIn;           // elements, multiple of 8, >= 2 I
    public int LdOut;          // elements, multiple of 8, >= I
}

/// <summary>
/// Launcher for kernels/swiglu.cu: out = bf16(bf16(silu(gate)) * up) between a dense MLP's gate|up projection and its
/// down projection. Nothing here allocates or synchronises.
/// </summary>
public sealed class SwiGluLaunchers(KernelLoader loader)
{
    public const string File = "swiglu.cu";
    private const int Threads = 256;
    private readonly DeviceKernel _kernel = loader.Get(File, "swiglu_bf16");
    private readonly IDevice _device = loader.Device;

    public void SwiGlu(DeviceStream stream, DevicePtr output, int ldOut, DevicePtr gateUp, int ldIn, int tokens, int inter)
    {
        if (inter <= 0 || inter % 8 != 0) throw new ArgumentException($"swiglu_bf16: intermediate size {inter} must be a positive multiple of 8", nameof(inter));
        if (ldIn < 2 * inter || ldIn % 8 != 0) throw new ArgumentException($"swiglu_bf16: input stride {ldIn} must be a multiple of 8 and at least 2 x {inter}", nameof(ldIn));
        if (ldOut < inter || ldOut % 8 != 0) throw new ArgumentException($"swiglu_bf16: output stride {ldOut} must be a multiple of 8 and at least {inter}", nameof(ldOut));
        if (tokens < 0) throw new ArgumentOutOfRangeException(nameof(tokens), tokens, "swiglu_bf16: tokens must not be negative");
        if (gateUp.IsNull || output.IsNull) throw new ArgumentException("swiglu_bf16: a required pointer is null");
        if (tokens == 0) return;
        var p = new SwiGluParams { GateUp = gateUp, Out = output, Tokens = tokens, Inter = inter, LdIn = ldIn, LdOut = ldOut };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        int chunks = inter / 8;
        _device.Launch(_kernel, new LaunchConfig(new Dim3((uint)((chunks + Threads - 1) / Threads), (uint)tokens), Threads), stream, args);
    }
}
