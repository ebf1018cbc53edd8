using System.Reflection;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Native;

/// <summary>Thrown when NVRTC or the CUDA driver cannot be loaded; the message lists every name tried.</summary>
public sealed class NativeLibraryMissingException(string message) : Qwen3CudaException(message)
{
    public override ErrorKind Kind => ErrorKind.Unavailable;
}

/// <summary>
/// Resolves the logical library names used by the [LibraryImport] declarations ("nvrtc", "cuda") to a
/// probed native library. NVRTC: the file named by QWEN3CUDA_NVRTC if set (and nothing else), otherwise
/// libnvrtc.so.13, .so.12, .so.11.2 (and the Windows names), newest first. Driver: QWEN3CUDA_LIBCUDA if
/// set, otherwise libcuda.so.1 / nvcuda.dll.
/// Callers check <see cref="EnsureNvrtc"/> / <see cref="EnsureCuda"/> first, so a missing library is one
/// clear sentence and never a DllNotFoundException from deep inside a call.
/// </summary>
public static class NativeLibraries
{
    public const string NvrtcName = "nvrtc";
    public const string CudaName = "cuda";
    public const string NvrtcEnvironmentVariable = "QWEN3CUDA_NVRTC";
    public const string CudaEnvironmentVariable = "QWEN3CUDA_LIBCUDA";

    private static readonly Lock Gate = new();
    private static nint _nvrtc, _cuda;
    private static string? _nvrtcError, _cudaError;

    public static string? NvrtcPath { get; private set; }
    public static string? CudaPath { get; private set; }

    private static int _registered;

    /// <summary>Installs the resolver for this assembly's [LibraryImport]s; called by the static constructors
    /// of the raw binding classes, so it runs before their first native call.</summary>
    internal static void Register()
    {
        if (Interlocked.Exchange(ref _registered, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraries).Assembly, Resolve);
    }

    private static nint Resolve(string name, Assembly assembly, DllImportSearchPath? path) => name switch
    {
        NvrtcName => TryNvrtc(out nint h) ? h : 0,
        CudaName => TryCuda(out nint h) ? h : 0,
        _ => 0,
    };

    public static IReadOnlyList<string> NvrtcCandidates()
    {
        var list = new List<string>();
        string? env = Environment.GetEnvironmentVariable(NvrtcEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env)) return [env]; // an explicit choice is the only candidate
        if (OperatingSystem.IsWindows())
            list.AddRange(["nvrtc64_130_0.dll", "nvrtc64_120_0.dll", "nvrtc64_112_0.dll"]);
        else
            list.AddRange(["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"]);
        return list;
    }

    public static IReadOnlyList<string> CudaCandidates()
    {
        string? env = Environment.GetEnvironmentVariable(CudaEnvironmentVariable);
        if (!string.IsNullOrWhiteSpace(env)) return [env]; // an explicit choice is the only candidate
        return [OperatingSystem.IsWindows() ? "nvcuda.dll" : "libcuda.so.1"];
    }

    public static bool TryNvrtc(out nint handle)
    {
        lock (Gate)
        {
            if (_nvrtc == 0 && _nvrtcError == null)
                (_nvrtc, NvrtcPath, _nvrtcError) = Probe("NVRTC", NvrtcCandidates(),
                    "install NVRTC 11.8 or newer (Debian: apt install libnvrtc11.2 libnvrtc-builtins11.8 from non-free) or set " + NvrtcEnvironmentVariable);
            handle = _nvrtc;
            return handle != 0;
        }
    }

    public static bool TryCuda(out nint handle)
    {
        lock (Gate)
        {
            if (_cuda == 0 && _cudaError == null)
                (_cuda, CudaPath, _cudaError) = Probe("CUDA driver", CudaCandidates(),
                    "install the NVIDIA driver or set " + CudaEnvironmentVariable);
            handle = _cuda;
            return handle != 0;
        }
    }

    public static void EnsureNvrtc()
    {
        if (!TryNvrtc(out _)) throw new NativeLibraryMissingException(_nvrtcError!);
    }

    public static void EnsureCuda()
    {
        if (!TryCuda(out _)) throw new NativeLibraryMissingException(_cudaError!);
    }

    private static (nint Handle, string? Path, string? Error) Probe(string what, IReadOnlyList<string> names, string advice)
    {
        foreach (string name in names)
            if (NativeLibrary.TryLoad(name, out nint h))
                return (h, name, null);
        return (0, null, $"No {what} library found (tried {string.Join(", ", names)}): {advice}.");
    }
}
