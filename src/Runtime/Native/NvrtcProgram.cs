using System.Runtime.InteropServices;
using System.Text;

namespace Qwen3Cuda.Runtime.Native;

/// <summary>An NVRTC failure: the call, the NVRTC error, and for compile errors the full compile log.</summary>
public sealed class NvrtcException(string message, string log = "") : Qwen3CudaException(message)
{
    /// <summary>A source that does not compile is an input problem (the `emulate` verb's file, or a kernel edit).</summary>
    public override ErrorKind Kind => ErrorKind.InvalidInput;
    /// <summary>The compile log (empty unless the failure was a compilation).</summary>
    public string Log { get; } = log;
}

/// <summary>The NVRTC library: version and the architectures it can build CUBINs for.</summary>
public static unsafe class NvrtcLibrary
{
    public static (int Major, int Minor) Version
    {
        get
        {
            NativeLibraries.EnsureNvrtc();
            Check(Nvrtc.nvrtcVersion(out int major, out int minor), "nvrtcVersion");
            return (major, minor);
        }
    }

    /// <summary>
    /// Real architectures NVRTC can emit (e.g. 35 .. 90), as numbers like 80, 90: nvrtcGetSupportedArchs, or for an NVRTC
    /// without it (before 11.2) the list its version shipped with (<see cref="ArchsOfVersion"/>).
    /// </summary>
    public static IReadOnlyList<int> SupportedArchs()
    {
        NativeLibraries.EnsureNvrtc();
        try
        {
            Check(Nvrtc.nvrtcGetNumSupportedArchs(out int n), "nvrtcGetNumSupportedArchs");
            var archs = new int[n];
            fixed (int* p = archs) Check(Nvrtc.nvrtcGetSupportedArchs(p), "nvrtcGetSupportedArchs");
            return archs;
        }
        catch (EntryPointNotFoundException)
        {
            var (major, minor) = Version;
            return ArchsOfVersion(major, minor);
        }
    }

    /// <summary>The architectures of an NVRTC without nvrtcGetSupportedArchs (11.0 and 11.1), from the CUDA release notes.</summary>
    public static IReadOnlyList<int> ArchsOfVersion(int major, int minor) =>
        (major, minor) switch
        {
            (11, 0) => [35, 37, 50, 52, 53, 60, 61, 62, 70, 72, 75, 80],
            (11, 1) => [35, 37, 50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86],
            _ => throw new NotSupportedException($"NVRTC {major}.{minor} has no nvrtcGetSupportedArchs and no known architecture list: use NVRTC 11.2 or newer"),
        };

    internal static void Check(Nvrtc.Result r, string call)
    {
        if (r != Nvrtc.Result.Success)
            throw new NvrtcException($"{call} failed: NVRTC_ERROR {r} ({Nvrtc.ErrorString(r)})");
    }
}

/// <summary>One NVRTC program (nvrtcProgram), owned; destroyed on dispose.</summary>
public sealed unsafe class NvrtcProgram : SafeHandle
{
    private readonly string _name;

    public NvrtcProgram(string source, string name, IReadOnlyDictionary<string, string>? headers = null) : base(0, true)
    {
        NativeLibraries.EnsureNvrtc();
        _name = name;
        headers ??= new Dictionary<string, string>();
        var pinned = new List<nint>();
        try
        {
            byte** contents = stackalloc byte*[Math.Max(headers.Count, 1)];
            byte** names = stackalloc byte*[Math.Max(headers.Count, 1)];
            int i = 0;
            foreach (var (headerName, text) in headers)
            {
                contents[i] = (byte*)Utf8(text, pinned);
                names[i] = (byte*)Utf8(headerName, pinned);
                i++;
            }
            NvrtcLibrary.Check(Nvrtc.nvrtcCreateProgram(out nint prog, source, name, headers.Count, contents, names), $"nvrtcCreateProgram({name})");
            SetHandle(prog);
        }
        finally
        {
            foreach (nint p in pinned) NativeMemory.Free((void*)p);
        }
    }

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        nint h = handle;
        return Nvrtc.nvrtcDestroyProgram(ref h) == Nvrtc.Result.Success;
    }

    public void AddNameExpression(string expression) =>
        NvrtcLibrary.Check(Nvrtc.nvrtcAddNameExpression(handle, expression), $"nvrtcAddNameExpression({expression})");

    public string LoweredName(string expression)
    {
        NvrtcLibrary.Check(Nvrtc.nvrtcGetLoweredName(handle, expression, out nint lowered), $"nvrtcGetLoweredName({expression})");
        return Marshal.PtrToStringUTF8(lowered) ?? "";
    }

    /// <summary>Compiles; on failure throws <see cref="NvrtcException"/> whose message holds the log
    /// (NVRTC's log lines name the file and line: "rmsnorm.cu(12): error: ...").</summary>
    public string Compile(IReadOnlyList<string> options)
    {
        var pinned = new List<nint>();
        Nvrtc.Result r;
        try
        {
            byte** opts = stackalloc byte*[Math.Max(options.Count, 1)];
            for (int i = 0; i < options.Count; i++) opts[i] = (byte*)Utf8(options[i], pinned);
            r = Nvrtc.nvrtcCompileProgram(handle, options.Count, opts);
        }
        finally
        {
            foreach (nint p in pinned) NativeMemory.Free((void*)p);
        }
        string log = Log();
        if (r != Nvrtc.Result.Success)
            throw new NvrtcException($"NVRTC could not compile {_name} ({r}):\n{log.TrimEnd()}", log);
        return log;
    }

    public string Log()
    {
        NvrtcLibrary.Check(Nvrtc.nvrtcGetProgramLogSize(handle, out nuint size), "nvrtcGetProgramLogSize");
        var buf = new byte[(int)size + 1];
        fixed (byte* p = buf) NvrtcLibrary.Check(Nvrtc.nvrtcGetProgramLog(handle, p), "nvrtcGetProgramLog");
        return Encoding.UTF8.GetString(buf, 0, Math.Max(0, (int)size - 1));
    }

    public string Ptx()
    {
        NvrtcLibrary.Check(Nvrtc.nvrtcGetPTXSize(handle, out nuint size), "nvrtcGetPTXSize");
        var buf = new byte[(int)size];
        fixed (byte* p = buf) NvrtcLibrary.Check(Nvrtc.nvrtcGetPTX(handle, p), "nvrtcGetPTX");
        return Encoding.UTF8.GetString(buf, 0, Math.Max(0, (int)size - 1));
    }

    public byte[] Cubin()
    {
        NvrtcLibrary.Check(Nvrtc.nvrtcGetCUBINSize(handle, out nuint size), "nvrtcGetCUBINSize");
        var buf = new byte[(int)size];
        fixed (byte* p = buf) NvrtcLibrary.Check(Nvrtc.nvrtcGetCUBIN(handle, p), "nvrtcGetCUBIN");
        return buf;
    }

    private static nint Utf8(string s, List<nint> owned)
    {
        int n = Encoding.UTF8.GetByteCount(s);
        byte* p = (byte*)NativeMemory.Alloc((nuint)n + 1);
        owned.Add((nint)p);
        Encoding.UTF8.GetBytes(s, new Span<byte>(p, n));
        p[n] = 0;
        return (nint)p;
    }
}
