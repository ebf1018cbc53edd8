using System.Reflection;

namespace Qwen3Cuda.Runtime;

/// <summary>The kernels/*.cu and *.cuh files embedded in this assembly.</summary>
public static class KernelSources
{
    private const string Prefix = "kernels/";
    private static readonly Assembly Assembly = typeof(KernelSources).Assembly;

    /// <summary>Every kernel file (*.cu), sorted, e.g. "rmsnorm.cu".</summary>
    public static IReadOnlyList<string> KernelFiles { get; } = Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".cu", StringComparison.Ordinal))
        .Select(n => n[Prefix.Length..]).Order(StringComparer.Ordinal).ToArray();

    /// <summary>Every shared header (*.cuh) by include name, given to NVRTC as in-memory headers.</summary>
    public static IReadOnlyDictionary<string, string> Headers { get; } = Assembly.GetManifestResourceNames()
        .Where(n => n.StartsWith(Prefix, StringComparison.Ordinal) && n.EndsWith(".cuh", StringComparison.Ordinal))
        .Order(StringComparer.Ordinal)
        .ToDictionary(n => n[Prefix.Length..], Read);

    public static string Read(string fileName)
    {
        string resource = fileName.StartsWith(Prefix, StringComparison.Ordinal) ? fileName : Prefix + fileName;
        using Stream? s = Assembly.GetManifestResourceStream(resource)
            ?? throw new FileNotFoundException($"no embedded kernel source '{fileName}' (known: {string.Join(", ", KernelFiles)})");
        using var reader = new StreamReader(s);
        return reader.ReadToEnd();
    }
}
