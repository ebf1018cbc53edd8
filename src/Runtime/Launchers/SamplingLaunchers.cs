using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>ArgmaxParams</c> in kernels/sampling.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ArgmaxParams
{
    public DevicePtr Logits;    // [Rows, Ld] bf16
    public DevicePtr OutIds;    // [Rows] int32
    public int Rows;
    public int Vocab;
    public int Ld;
}

/// <summary>Mirror of <c>SampleParams</c> in kernels/sampling.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SampleParams
{
    public DevicePtr Logits;     // [Rows, Ld] bf16
    public DevicePtr OutIds;     // [Rows] int32
    public ulong Seed;
    public ulong Step;
    public int Rows;
    public int Vocab;
    public int Ld;
    public int TopK;
    public float InvTemperature;
    public float TopP;
    public float MinP;
}

/// <summary>Mirror of <c>SampleRowSettings</c> in kernels/sampling.cu: one row's settings, read by the kernel from device memory.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SampleRowSettings
{
    public ulong Seed;
    public ulong Step;               // Philox counter (Step, 0)
    public float InvTemperature;     // <= 0: greedy
    public int TopK;
    public float TopP;
    public float MinP;

    /// <summary>The row settings of <paramref name="s"/> (validated) at counter <paramref name="step"/>; greedy settings give InvTemperature 0.</summary>
    public static SampleRowSettings From(in SamplingSettings s, ulong step)
    {
        SamplingLaunchers.Validate(s);
        return new SampleRowSettings
        {
            Seed = s.Seed, Step = step, InvTemperature = s.IsGreedy ? 0f : 1f / s.Temperature, TopK = s.TopK, TopP = s.TopP, MinP = s.MinP,
        };
    }
}

/// <summary>Mirror of <c>SampleRowsParams</c> in kernels/sampling.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SampleRowsParams
{
    public DevicePtr Logits;     // [Rows, Ld] bf16
    public DevicePtr OutIds;     // [Rows] int32
    public DevicePtr Settings;   // [Rows] SampleRowSettings
    public int Rows;
    public int Vocab;
    public int Ld;
}

/// <summary>Sampling settings (transformers' names). Temperature 0 means greedy.</summary>
public readonly record struct SamplingSettings(float Temperature = 1f, int TopK = 0, float TopP = 1f, float MinP = 0f, ulong Seed = 0)
{
    public bool IsGreedy => Temperature <= 0f || TopK == 1;
}

/// <summary>
/// Launchers for kernels/sampling.cu: greedy argmax, or temperature / top-k / top-p / min-p sampling with a
/// counter-based Philox generator keyed by (seed, step, row): the same inputs always give the same token. One block
/// per logits row; the token ids stay on the device. Nothing here allocates or synchronises.
/// </summary>
public sealed class SamplingLaunchers(KernelLoader loader)
{
    public const string File = "sampling.cu";
    private readonly DeviceKernel _argmax = loader.Get(File, "argmax_bf16");
    private readonly DeviceKernel _sample = loader.Get(File, "sample_bf16");
    private readonly DeviceKernel _sampleRows = loader.Get(File, "sample_rows_bf16");
    private readonly IDevice _device = loader.Device;

    public void Argmax(DeviceStream stream, DevicePtr logits, int ld, int rows, int vocab, DevicePtr outIds)
    {
        Validate(ld, rows, vocab);
        if (rows == 0) return;
        var p = new ArgmaxParams { Logits = logits, OutIds = outIds, Rows = rows, Vocab = vocab, Ld = ld };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_argmax, new LaunchConfig(rows, 1024), stream, args);
    }

    /// <summary>Samples one token per row; greedy settings run <see cref="Argmax"/>. <paramref name="step"/> must change
    /// every call (e.g. the decode position) or the same random number is drawn again.</summary>
    public void Sample(DeviceStream stream, DevicePtr logits, int ld, int rows, int vocab, DevicePtr outIds, in SamplingSettings s, ulong step)
    {
        Validate(s);
        if (s.IsGreedy) { Argmax(stream, logits, ld, rows, vocab, outIds); return; }
        Validate(ld, rows, vocab);
        if (rows == 0) return;
        var p = new SampleParams
        {
            Logits = logits, OutIds = outIds, Seed = s.Seed, Step = step, Rows = rows, Vocab = vocab, Ld = ld, TopK = s.TopK,
            InvTemperature = 1f / s.Temperature, TopP = s.TopP, MinP = s.MinP,
        };
        var args = new KernelArgs(stackalloc byte[96], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_sample, new LaunchConfig(rows, 1024), stream, args);
    }

    /// <summary>Samples row r with <c>settings[r]</c> (<see cref="SampleRowSettings"/> in device memory, so a captured
    /// graph sees new values); a row with InvTemperature &lt;= 0 or TopK 1 takes the argmax.</summary>
    public void SampleRows(DeviceStream stream, DevicePtr logits, int ld, int rows, int vocab, DevicePtr settings, DevicePtr outIds)
    {
        Validate(ld, rows, vocab);
        if (rows == 0) return;
        var p = new SampleRowsParams { Logits = logits, OutIds = outIds, Settings = settings, Rows = rows, Vocab = vocab, Ld = ld };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_sampleRows, new LaunchConfig(rows, 1024), stream, args);
    }

    public static void Validate(in SamplingSettings s)
    {
        if (float.IsNaN(s.Temperature) || s.Temperature < 0) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: temperature {s.Temperature} must be >= 0");
        if (!(s.TopP > 0f && s.TopP <= 1f)) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: top_p {s.TopP} must be in (0, 1]");
        if (!(s.MinP >= 0f && s.MinP <= 1f)) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: min_p {s.MinP} must be in [0, 1]");
        if (s.TopK < 0) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: top_k {s.TopK} must be >= 0 (0: off)");
    }

    private static void Validate(int ld, int rows, int vocab)
    {
        if (rows < 0 || vocab <= 0 || ld < vocab)
            throw new ArgumentException($"sampling: rows {rows}, vocab {vocab}, ld {ld}: need rows >= 0, vocab > 0, ld >= vocab");
    }
}
