using System.Globalization;

namespace Qwen3Cuda.Runtime.Memory;

/// <summary>Byte counts for people: parse "80GiB", "40 GB", "512MiB", "1073741824"; format as "56.9 GiB".</summary>
public static class ByteSize
{
    public const long KiB = 1L << 10, MiB = 1L << 20, GiB = 1L << 30;

    /// <summary>Binary units (KiB, MiB, GiB, TiB) and, as GPU vendors use them loosely, K/M/G/T/KB/MB/GB/TB mean the same powers of 1024.</summary>
    public static long Parse(string text, string what = "size")
    {
        string s = text.Trim().Replace(" ", "", StringComparison.Ordinal);
        int i = 0;
        while (i < s.Length && (char.IsDigit(s[i]) || s[i] == '.')) i++;
        if (i == 0 || !double.TryParse(s[..i], NumberStyles.Float, CultureInfo.InvariantCulture, out double value) || value < 0)
            throw new FormatException($"{what} '{text}': expected a number with an optional unit, e.g. 80GiB");
        long unit = s[i..].ToUpperInvariant() switch
        {
            "" or "B" => 1,
            "K" or "KB" or "KIB" => KiB,
            "M" or "MB" or "MIB" => MiB,
            "G" or "GB" or "GIB" => GiB,
            "T" or "TB" or "TIB" => GiB * 1024,
            _ => throw new FormatException($"{what} '{text}': unknown unit '{s[i..]}' (use B, KiB, MiB, GiB, TiB)"),
        };
        return checked((long)Math.Round(value * unit));
    }

    public static string Format(long bytes)
    {
        double b = bytes;
        return Math.Abs(b) switch
        {
            >= GiB => string.Create(CultureInfo.InvariantCulture, $"{b / GiB:F1} GiB"),
            >= MiB => string.Create(CultureInfo.InvariantCulture, $"{b / MiB:F1} MiB"),
            >= KiB => string.Create(CultureInfo.InvariantCulture, $"{b / KiB:F1} KiB"),
            _ => string.Create(CultureInfo.InvariantCulture, $"{bytes} B"),
        };
    }

    public static long AlignUp(long bytes, long alignment = 256) => (bytes + alignment - 1) / alignment * alignment;
}
