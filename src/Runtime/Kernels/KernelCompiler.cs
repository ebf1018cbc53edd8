using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Runtime;

/// <summary>What to build: PTX only (the emulator, or driver JIT), or PTX + CUBIN for a real architecture.</summary>
public enum CompileTarget { Ptx, Cubin }

/// <summary>One compilation request. <see cref="Arch"/> is "sm_80", "sm_90", ...</summary>
public sealed record KernelBuild(string FileName, string Arch, CompileTarget Target)
{
    /// <summary>Compile-time constants (-DNAME=VALUE), e.g. HEAD_DIM=128.</summary>
    public IReadOnlyDictionary<string, string> Defines { get; init; } = new Dictionary<string, string>();
    /// <summary>Emit .loc line information (the emulator names CUDA source lines in its errors).</summary>
    public bool LineInfo { get; init; } = true;
}

/// <summary>
/// Compiles kernels/*.cu with NVRTC, always with -std=c++17 (NVRTC 11.8 defaults to C++03), and keeps
/// the results in a disk cache keyed by a hash of source, headers, options and NVRTC version. The cache
/// lives under $QWEN3CUDA_CACHE_DIR, else $XDG_CACHE_HOME/qwen3cuda/kernels, else ~/.cache/qwen3cuda/kernels.
/// </summary>
public sealed class KernelCompiler
{
    public const string CacheEnvironmentVariable = "QWEN3CUDA_CACHE_DIR";

    /// <summary>null disables the disk cache.</summary>
    public string? CacheDirectory { get; }

    private readonly Func<IReadOnlyList<int>> _supportedArchs;

    /// <summary>Called with the file name before NVRTC compiles a module the cache does not hold (seconds each on a cold cache).</summary>
    public Action<string>? CompileStarting { get; set; }

    /// <param name="cacheDirectory">Where compiled modules are cached (default: <see cref="DefaultCacheDirectory"/>).</param>
    /// <param name="useCache">False disables the disk cache.</param>
    /// <param name="supportedArchs">The architectures NVRTC can build (default: <see cref="NvrtcLibrary.SupportedArchs"/>);
    /// tests pass an older NVRTC's list.</param>
    public KernelCompiler(string? cacheDirectory = null, bool useCache = true, Func<IReadOnlyList<int>>? supportedArchs = null)
    {
        CacheDirectory = useCache ? cacheDirectory ?? DefaultCacheDirectory() : null;
        _supportedArchs = supportedArchs ?? NvrtcLibrary.SupportedArchs;
    }

    public static string DefaultCacheDirectory()
    {
        string? env = Environment.GetEnvironmentVariable(CacheEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env)) return env;
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string root = !string.IsNullOrWhiteSpace(xdg) ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "qwen3cuda", "kernels");
    }

    /// <summary>Compiles an embedded kernel file.</summary>
    public CompiledModule Compile(KernelBuild build) =>
        CompileSource(build.FileName, KernelSources.Read(build.FileName), build);

    /// <summary>Compiles CUDA source given as text (the `emulate` verb, tests). Embedded headers are available to #include.</summary>
    public CompiledModule CompileSource(string name, string source, KernelBuild build)
    {
        var (archNumber, cubin) = ChooseTarget(ParseArch(build.Arch), build.Target, _supportedArchs());
        var options = new List<string> { "-std=c++17" };
        options.Add(cubin ? $"--gpu-architecture=sm_{archNumber}" : $"--gpu-architecture=compute_{archNumber}");
        if (cubin) options.Add("--ptxas-options=-v");
        if (build.LineInfo) options.Add("-lineinfo");
        foreach (var (define, value) in build.Defines.OrderBy(kv => kv.Key, StringComparer.Ordinal))
            options.Add(string.IsNullOrEmpty(value) ? $"-D{define}" : $"-D{define}={value}");

        var (major, minor) = NvrtcLibrary.Version;
        string key = CacheKey(name, source, options, $"{major}.{minor}");
        if (TryLoad(key, name, options) is { } cached) return cached;

        CompileStarting?.Invoke(name);
        var sw = Stopwatch.StartNew();
        using var program = new NvrtcProgram(source, name, KernelSources.Headers);
        string log = program.Compile(options);
        string ptx = program.Ptx();
        byte[]? bin = cubin ? program.Cubin() : null;
        sw.Stop();

        var module = new CompiledModule
        {
            Name = name,
            PtxArch = $"compute_{archNumber}",
            Ptx = ptx,
            CubinArch = cubin ? $"sm_{archNumber}" : null,
            Cubin = bin,
            Log = log,
            PtxasInfo = PtxasReport.Parse(log),
            Options = options,
            CompileMilliseconds = sw.Elapsed.TotalMilliseconds,
        };
        Store(key, module);
        return module;
    }

    /// <summary>
    /// What NVRTC builds for a device of architecture <paramref name="device"/> (e.g. 100) given the architectures it
    /// supports: the device's own architecture when NVRTC knows it (a CUBIN for <see cref="CompileTarget.Cubin"/>, else
    /// PTX); otherwise PTX for the newest architecture NVRTC knows that is not newer than the device (the driver
    /// JIT-compiles PTX for newer GPUs, never for older ones): NVRTC 11.8 on a Blackwell GPU (sm_100) builds compute_90
    /// PTX instead of failing on an option it does not know. Nothing at or above sm_80 (our kernels' feature set) is an error.
    /// </summary>
    public static (int Arch, bool Cubin) ChooseTarget(int device, CompileTarget target, IReadOnlyCollection<int> supported)
    {
        if (supported.Contains(device)) return (device, target == CompileTarget.Cubin);
        int best = supported.Where(a => a >= 80 && a <= device).DefaultIfEmpty(0).Max();
        if (best == 0)
            throw new NotSupportedException($"NVRTC supports sm_{string.Join(", sm_", supported.Order())}: nothing from sm_80 (our kernels' feature set) " +
                $"up to the device's sm_{device}; install a newer NVRTC (set {NativeLibraries.NvrtcEnvironmentVariable} to choose one)");
        return (best, false);
    }

    /// <summary>"sm_90" or "90" or "compute_90" -> 90, with a clear error otherwise.</summary>
    public static int ParseArch(string arch)
    {
        string digits = arch.StartsWith("sm_", StringComparison.Ordinal) ? arch[3..]
            : arch.StartsWith("compute_", StringComparison.Ordinal) ? arch[8..] : arch;
        if (!int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int n) || n < 80)
            throw new ArgumentException($"--arch '{arch}': expected sm_80 or newer (sm_80, sm_86, sm_89, sm_90, ...); our kernels use the sm_80 feature set", nameof(arch));
        return n;
    }

    private static string CacheKey(string name, string source, IReadOnlyList<string> options, string nvrtcVersion)
    {
        var sb = new StringBuilder();
        sb.Append("v2\0").Append(name).Append('\0').Append(source).Append('\0').Append(nvrtcVersion).Append('\0');
        foreach (string o in options) sb.Append(o).Append('\0');
        sb.Append(HeadersDigest.Value);
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())))[..32];
    }

    // The embedded headers never change in a process: their digest once, instead of every header's text in every key.
    private static readonly Lazy<string> HeadersDigest = new(() =>
    {
        var sb = new StringBuilder();
        foreach (var (h, text) in KernelSources.Headers.OrderBy(kv => kv.Key, StringComparer.Ordinal)) sb.Append(h).Append('\0').Append(text).Append('\0');
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(sb.ToString())));
    });

    // Modules read from the disk cache, by directory and key: a test run or a model load asks for the same modules again
    // and again, and the large ones are megabytes of PTX to read and decode each time (a cache entry's content never
    // changes for its key). Bounded: past 64 Mi characters of PTX it starts over.
    private static readonly Dictionary<string, CompiledModule> Loaded = new(StringComparer.Ordinal);
    private static long _loadedChars;
    private const long LoadedCharsLimit = 64L << 20;

    private sealed record CacheMeta(string Name, string PtxArch, string? CubinArch, string Log);

    private CompiledModule? TryLoad(string key, string name, IReadOnlyList<string> options)
    {
        if (CacheDirectory == null) return null;
        string memo = CacheDirectory + "\0" + key;
        lock (Loaded)
            if (Loaded.TryGetValue(memo, out var known)) return known;
        try
        {
            string meta = Path.Combine(CacheDirectory, key + ".json");
            if (!File.Exists(meta)) return null;
            var m = JsonSerializer.Deserialize<CacheMeta>(File.ReadAllText(meta));
            if (m == null || m.Name != name) return null;
            string ptx = File.ReadAllText(Path.Combine(CacheDirectory, key + ".ptx"));
            byte[]? bin = m.CubinArch != null ? File.ReadAllBytes(Path.Combine(CacheDirectory, key + ".cubin")) : null;
            var module = new CompiledModule
            {
                Name = name, PtxArch = m.PtxArch, Ptx = ptx, CubinArch = m.CubinArch, Cubin = bin, Log = m.Log,
                PtxasInfo = PtxasReport.Parse(m.Log), Options = options, FromCache = true,
            };
            lock (Loaded)
            {
                if (_loadedChars + ptx.Length > LoadedCharsLimit) { Loaded.Clear(); _loadedChars = 0; }
                if (Loaded.TryAdd(memo, module)) _loadedChars += ptx.Length;
            }
            return module;
        }
        catch (Exception e) when (e is IOException or JsonException or UnauthorizedAccessException)
        {
            return null; // a damaged cache entry is rebuilt
        }
    }

    private void Store(string key, CompiledModule module)
    {
        if (CacheDirectory == null) return;
        try
        {
            Directory.CreateDirectory(CacheDirectory);
            WriteAtomic(Path.Combine(CacheDirectory, key + ".ptx"), Encoding.UTF8.GetBytes(module.Ptx));
            if (module.Cubin != null) WriteAtomic(Path.Combine(CacheDirectory, key + ".cubin"), module.Cubin);
            var meta = new CacheMeta(module.Name, module.PtxArch, module.CubinArch, module.Log);
            // the metadata goes last: an entry is valid only once it exists
            WriteAtomic(Path.Combine(CacheDirectory, key + ".json"), JsonSerializer.SerializeToUtf8Bytes(meta));
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // the cache is an optimisation; a read-only or full disk must not fail a compile
        }
    }

    private static void WriteAtomic(string path, byte[] bytes)
    {
        string tmp = $"{path}.{Environment.ProcessId}.{Guid.NewGuid():N}.tmp";
        File.WriteAllBytes(tmp, bytes);
        File.Move(tmp, path, overwrite: true);
    }
}
