using System.CommandLine;
using System.Globalization;

namespace Qwen3Cuda.Cli;

/// <summary>
/// `--gpu-memory-utilization U` (vLLM's name and meaning) for the verbs that open a device model (info, generate, chat,
/// logits, profile, bench): the fraction of the device's total memory in use once the model is loaded; (1 - U) x total
/// stays free. Default: keep max(1 GiB, 3% of total) free. Parsed here so that a bad value is one clear line before any
/// model loads.
/// </summary>
public static class GpuMemoryCliOption
{
    public const string Name = "--gpu-memory-utilization";

    public static Option<string?> Create() => new(Name)
    {
        Description = "Fraction of the device's total memory the model may fill, in (0, 1] (memory already in use counts against it; " +
                      "default: keep max(1 GiB, 3%) free). Device backends only",
    };

    /// <summary>Null when the option is absent; otherwise the fraction, or an ArgumentException naming the option.</summary>
    public static double? Parse(string? text)
    {
        if (text is null) return null;
        if (!double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double u))
            throw new ArgumentException($"{Name} '{text}': expected a fraction of the device's memory in (0, 1], e.g. 0.9");
        if (!(u > 0 && u <= 1)) throw new ArgumentException($"{Name} {text} must be in (0, 1], e.g. 0.9");
        return u;
    }
}
