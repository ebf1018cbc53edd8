using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Model.Device;

/// <summary>Mirror of <c>EmbeddingParams</c> in kernels/token_io.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct EmbeddingParams
{
    public DevicePtr Out;     // [tokens, width] bf16
    public DevicePtr Table;   // [rows, width] bf16
    public DevicePtr Ids;     // [tokens] int32
    public int Tokens;
    public int Rows;
    public int Width;
}

/// <summary>Mirror of <c>ArgmaxParams</c> in kernels/token_io.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ArgmaxParams
{
    public DevicePtr Logits;  // [rows, ld] bf16
    public DevicePtr Ids;     // [rows] int32
    public int Rows;
    public int Cols;
    public int Ld;
}

/// <summary>Launchers for kernels/token_io.cu (embedding gather, greedy argmax). Nothing here allocates or synchronises.</summary>
public sealed class TokenIoLaunchers(KernelLoader loader)
{
    public const string File = "token_io.cu";
    private readonly DeviceKernel _gather = loader.Get(File, "token_embedding_bf16");
    private readonly DeviceKernel _argmax = loader.Get(File, "token_argmax_bf16");
    private readonly IDevice _device = loader.Device;

    /// <summary><c>out[t] = table[ids[t]]</c> for <paramref name="tokens"/> rows of <paramref name="width"/> bf16 (ids read on the device).</summary>
    public void Embedding(DeviceStream stream, DevicePtr output, DevicePtr table, DevicePtr ids, int tokens, int rows, int width)
    {
        if (width <= 0 || width % 8 != 0) throw new ArgumentException($"token_embedding_bf16: width {width} must be a positive multiple of 8", nameof(width));
        if (tokens <= 0) return;
        var p = new EmbeddingParams { Out = output, Table = table, Ids = ids, Tokens = tokens, Rows = rows, Width = width };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_gather, new LaunchConfig(tokens, 128), stream, args);
    }

    /// <summary><c>ids[r] = argmax logits[r, 0..cols)</c>, ties to the lower index.</summary>
    public void Argmax(DeviceStream stream, DevicePtr logits, int ld, DevicePtr ids, int rows, int cols)
    {
        if (cols <= 0 || ld < cols) throw new ArgumentException($"token_argmax_bf16: cols {cols} must be positive and at most ld {ld}", nameof(cols));
        if (rows <= 0) return;
        var p = new ArgmaxParams { Logits = logits, Ids = ids, Rows = rows, Cols = cols, Ld = ld };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_argmax, new LaunchConfig(rows, 256), stream, args);
    }
}
