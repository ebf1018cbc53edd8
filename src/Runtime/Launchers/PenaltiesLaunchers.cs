using System.Globalization;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>
/// One output row's penalties (OpenAI/vLLM semantics): <see cref="Presence"/> is subtracted once from the logit of every
/// token in the answer, <see cref="Frequency"/> once per occurrence, and <see cref="Repetition"/> (transformers/HF)
/// divides the positive logits and multiplies the negative ones of every token in the prompt or the answer.
/// </summary>
public readonly record struct PenaltySettings(float Presence = 0f, float Frequency = 0f, float Repetition = 1f)
{
    public bool IsNone => Presence == 0f && Frequency == 0f && Repetition == 1f;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first invalid value.</summary>
    public void Validate()
    {
        static string G(float v) => v.ToString(CultureInfo.InvariantCulture);
        if (!(Presence >= -2 && Presence <= 2)) throw new ArgumentException($"presence penalty must be in [-2, 2], got {G(Presence)}");
        if (!(Frequency >= -2 && Frequency <= 2)) throw new ArgumentException($"frequency penalty must be in [-2, 2], got {G(Frequency)}");
        if (!(Repetition > 0) || !float.IsFinite(Repetition)) throw new ArgumentException($"repetition penalty must be > 0 (1 = off), got {G(Repetition)}");
    }
}

/// <summary>Mirror of <c>PenaltyRow</c> in kernels/penalties.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PenaltyRow
{
    public int Start;
    public int Count;
    public float Presence;
    public float Frequency;
    public float Repetition;
}

/// <summary>Mirror of <c>PenaltiesParams</c> in kernels/penalties.cu.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PenaltiesParams
{
    public DevicePtr Logits;        // [Rows, Ld] bf16
    public DevicePtr RowSettings;   // [Rows] PenaltyRow
    public DevicePtr Entries;       // [total, 2] int32: token id, occurrences in the answer
    public int Rows;
    public int Vocab;
    public int Ld;
}

/// <summary>Launcher for kernels/penalties.cu: one block per output row over its (token, count) entries. Nothing here allocates or synchronises.</summary>
public sealed class PenaltiesLaunchers(KernelLoader loader)
{
    public const string File = "penalties.cu";
    private readonly DeviceKernel _apply = loader.Get(File, "apply_penalties_bf16");
    private readonly IDevice _device = loader.Device;

    /// <summary>Applies row r's penalties (<c>rowSettings[r]</c>, its entries) to logits row r in place.</summary>
    public void ApplyPenalties(DeviceStream stream, DevicePtr logits, int ld, int rows, int vocab, DevicePtr rowSettings, DevicePtr entries)
    {
        if (vocab < 1 || ld < vocab) throw new ArgumentException($"penalties: vocab {vocab} must be positive and at most the row stride {ld}");
        ArgumentOutOfRangeException.ThrowIfNegative(rows);
        if (rows == 0) return;
        var p = new PenaltiesParams { Logits = logits, RowSettings = rowSettings, Entries = entries, Rows = rows, Vocab = vocab, Ld = ld };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_apply, new LaunchConfig(rows, 256), stream, args);
    }
}
