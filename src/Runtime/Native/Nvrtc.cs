using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Native;

/// <summary>Raw NVRTC entry points, names exactly as in nvrtc.h. Use <see cref="NvrtcProgram"/> instead.</summary>
internal static unsafe partial class Nvrtc
{
    static Nvrtc() => NativeLibraries.Register();

    public enum Result
    {
        Success = 0, OutOfMemory = 1, ProgramCreationFailure = 2, InvalidInput = 3, InvalidProgram = 4,
        InvalidOption = 5, Compilation = 6, BuiltinOperationFailure = 7, NoNameExpressionsAfterCompilation = 8,
        NoLoweredNamesBeforeCompilation = 9, NameExpressionNotValid = 10, InternalError = 11,
    }

    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcVersion(out int major, out int minor);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetNumSupportedArchs(out int numArchs);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetSupportedArchs(int* supportedArchs);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial nint nvrtcGetErrorString(Result result);

    [LibraryImport(NativeLibraries.NvrtcName, StringMarshalling = StringMarshalling.Utf8)]
    public static partial Result nvrtcCreateProgram(out nint prog, string src, string name, int numHeaders, byte** headers, byte** includeNames);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcDestroyProgram(ref nint prog);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcCompileProgram(nint prog, int numOptions, byte** options);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetProgramLogSize(nint prog, out nuint logSize);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetProgramLog(nint prog, byte* log);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetPTXSize(nint prog, out nuint ptxSize);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetPTX(nint prog, byte* ptx);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetCUBINSize(nint prog, out nuint cubinSize);
    [LibraryImport(NativeLibraries.NvrtcName)] public static partial Result nvrtcGetCUBIN(nint prog, byte* cubin);
    [LibraryImport(NativeLibraries.NvrtcName, StringMarshalling = StringMarshalling.Utf8)]
    public static partial Result nvrtcAddNameExpression(nint prog, string nameExpression);
    [LibraryImport(NativeLibraries.NvrtcName, StringMarshalling = StringMarshalling.Utf8)]
    public static partial Result nvrtcGetLoweredName(nint prog, string nameExpression, out nint loweredName);

    public static string ErrorString(Result r) => Marshal.PtrToStringUTF8(nvrtcGetErrorString(r)) ?? r.ToString();
}
