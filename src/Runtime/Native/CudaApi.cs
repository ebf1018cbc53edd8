using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Native;

/// <summary>
/// Raw CUDA driver API entry points (libcuda.so.1), names exactly as exported by the driver (the _v2
/// names are what cuda.h's macros resolve to). Handles are <c>nint</c> here; <c>CudaDevice</c> wraps them
/// in owning types. Every result goes through <see cref="CudaCheck"/>.
/// </summary>
internal static unsafe partial class CudaApi
{
    static CudaApi() => NativeLibraries.Register();

    private const string Lib = NativeLibraries.CudaName;

    // init, version, devices
    [LibraryImport(Lib)] public static partial CuResult cuInit(uint flags);
    [LibraryImport(Lib)] public static partial CuResult cuDriverGetVersion(out int version);
    [LibraryImport(Lib)] public static partial CuResult cuDeviceGetCount(out int count);
    [LibraryImport(Lib)] public static partial CuResult cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Lib)] public static partial CuResult cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Lib)] public static partial CuResult cuDeviceGetAttribute(out int value, CuDeviceAttribute attribute, int device);
    [LibraryImport(Lib)] public static partial CuResult cuDeviceTotalMem_v2(out nuint bytes, int device);
    [LibraryImport(Lib)] public static partial CuResult cuGetErrorName(CuResult error, out nint name);
    [LibraryImport(Lib)] public static partial CuResult cuGetErrorString(CuResult error, out nint text);

    // contexts
    [LibraryImport(Lib)] public static partial CuResult cuDevicePrimaryCtxRetain(out nint context, int device);
    [LibraryImport(Lib)] public static partial CuResult cuDevicePrimaryCtxRelease_v2(int device);
    [LibraryImport(Lib)] public static partial CuResult cuCtxSetCurrent(nint context);
    [LibraryImport(Lib)] public static partial CuResult cuCtxSynchronize();
    [LibraryImport(Lib)] public static partial CuResult cuCtxSetLimit(CuLimit limit, nuint value);

    // memory
    [LibraryImport(Lib)] public static partial CuResult cuMemAlloc_v2(out ulong dptr, nuint bytes);
    [LibraryImport(Lib)] public static partial CuResult cuMemFree_v2(ulong dptr);
    [LibraryImport(Lib)] public static partial CuResult cuMemGetInfo_v2(out nuint free, out nuint total);
    [LibraryImport(Lib)] public static partial CuResult cuMemAllocHost_v2(out nint pointer, nuint bytes);
    [LibraryImport(Lib)] public static partial CuResult cuMemFreeHost(nint pointer);
    [LibraryImport(Lib)] public static partial CuResult cuMemcpyHtoD_v2(ulong dst, void* src, nuint bytes);
    [LibraryImport(Lib)] public static partial CuResult cuMemcpyDtoH_v2(void* dst, ulong src, nuint bytes);
    [LibraryImport(Lib)] public static partial CuResult cuMemcpyHtoDAsync_v2(ulong dst, void* src, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial CuResult cuMemcpyDtoHAsync_v2(void* dst, ulong src, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial CuResult cuMemcpyDtoDAsync_v2(ulong dst, ulong src, nuint bytes, nint stream);
    [LibraryImport(Lib)] public static partial CuResult cuMemsetD8Async(ulong dst, byte value, nuint count, nint stream);

    // modules and launch
    [LibraryImport(Lib)] public static partial CuResult cuModuleLoadDataEx(out nint module, void* image, uint numOptions, CuJitOption* options, void** optionValues);
    [LibraryImport(Lib)] public static partial CuResult cuModuleUnload(nint module);
    [LibraryImport(Lib, StringMarshalling = StringMarshalling.Utf8)]
    public static partial CuResult cuModuleGetFunction(out nint function, nint module, string name);
    [LibraryImport(Lib)] public static partial CuResult cuFuncGetAttribute(out int value, CuFunctionAttribute attribute, nint function);
    [LibraryImport(Lib)] public static partial CuResult cuFuncSetAttribute(nint function, CuFunctionAttribute attribute, int value);
    [LibraryImport(Lib)] public static partial CuResult cuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, nint function, int blockSize, nuint dynamicSharedBytes);
    [LibraryImport(Lib)] public static partial CuResult cuLaunchKernel(nint function, uint gridX, uint gridY, uint gridZ,
        uint blockX, uint blockY, uint blockZ, uint sharedBytes, nint stream, void** kernelParams, void** extra);
    /// <summary>A cooperative launch (every block resident at once; CUDA 9.0+): fails with CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE when the grid does not fit.</summary>
    [LibraryImport(Lib)] public static partial CuResult cuLaunchCooperativeKernel(nint function, uint gridX, uint gridY, uint gridZ,
        uint blockX, uint blockY, uint blockZ, uint sharedBytes, nint stream, void** kernelParams);
    /// <summary>CUDA 12.0+ drivers; older ones lack the export (EntryPointNotFoundException at the first call).</summary>
    [LibraryImport(Lib)] public static partial CuResult cuLaunchKernelEx(CuLaunchConfig* config, nint function, void** kernelParams, void** extra);

    // streams and events
    [LibraryImport(Lib)] public static partial CuResult cuStreamCreate(out nint stream, uint flags);
    [LibraryImport(Lib)] public static partial CuResult cuStreamDestroy_v2(nint stream);
    [LibraryImport(Lib)] public static partial CuResult cuStreamSynchronize(nint stream);
    [LibraryImport(Lib)] public static partial CuResult cuStreamWaitEvent(nint stream, nint evt, uint flags);
    [LibraryImport(Lib)] public static partial CuResult cuEventCreate(out nint evt, uint flags);
    [LibraryImport(Lib)] public static partial CuResult cuEventDestroy_v2(nint evt);
    [LibraryImport(Lib)] public static partial CuResult cuEventRecord(nint evt, nint stream);
    [LibraryImport(Lib)] public static partial CuResult cuEventSynchronize(nint evt);
    [LibraryImport(Lib)] public static partial CuResult cuEventElapsedTime(out float milliseconds, nint start, nint end);

    // graphs
    [LibraryImport(Lib)] public static partial CuResult cuStreamBeginCapture_v2(nint stream, CuStreamCaptureMode mode);
    [LibraryImport(Lib)] public static partial CuResult cuStreamEndCapture(nint stream, out nint graph);
    [LibraryImport(Lib)] public static partial CuResult cuGraphGetNodes(nint graph, nint* nodes, ref nuint count);
    [LibraryImport(Lib)] public static partial CuResult cuGraphNodeGetType(nint node, out int type);
    [LibraryImport(Lib)] public static partial CuResult cuGraphInstantiateWithFlags(out nint exec, nint graph, ulong flags);
    [LibraryImport(Lib)] public static partial CuResult cuGraphExecUpdate(nint exec, nint graph, out nint errorNode, out int updateResult);
    [LibraryImport(Lib)] public static partial CuResult cuGraphLaunch(nint exec, nint stream);
    [LibraryImport(Lib)] public static partial CuResult cuGraphExecDestroy(nint exec);
    [LibraryImport(Lib)] public static partial CuResult cuGraphDestroy(nint graph);
}

/// <summary>CUresult values we name; any other value is printed with the driver's own name for it.</summary>
public enum CuResult
{
    Success = 0, InvalidValue = 1, OutOfMemory = 2, NotInitialized = 3, Deinitialized = 4,
    NoDevice = 100, InvalidDevice = 101, InvalidImage = 200, InvalidContext = 201, NotFound = 500,
    NotReady = 600, IllegalAddress = 700, LaunchOutOfResources = 701, LaunchTimeout = 702,
    StreamCaptureUnsupported = 900, StreamCaptureInvalidated = 901, Unknown = 999,
}

internal enum CuDeviceAttribute
{
    MaxThreadsPerBlock = 1, MaxSharedMemoryPerBlock = 8, WarpSize = 10, MultiprocessorCount = 16,
    MemoryClockRate = 36, GlobalMemoryBusWidth = 37,
    ComputeCapabilityMajor = 75, ComputeCapabilityMinor = 76, MaxSharedMemoryPerMultiprocessor = 81,
    MaxSharedMemoryPerBlockOptin = 97, MaxPersistingL2CacheSize = 108,
}

/// <summary>CUlimit values (cuda.h).</summary>
internal enum CuLimit { PersistingL2CacheSize = 0x06 }

internal enum CuFunctionAttribute
{
    MaxThreadsPerBlock = 0, SharedSizeBytes = 1, ConstSizeBytes = 2, LocalSizeBytes = 3, NumRegs = 4,
    MaxDynamicSharedSizeBytes = 8,
}

internal enum CuJitOption { InfoLogBuffer = 3, InfoLogBufferSizeBytes = 4, ErrorLogBuffer = 5, ErrorLogBufferSizeBytes = 6 }

internal enum CuStreamCaptureMode { Global = 0, ThreadLocal = 1, Relaxed = 2 }

// cuLaunchKernelEx's arguments, as cuda.h (CUDA 12.x) declares them:
//   typedef enum CUlaunchAttributeID_enum { ..., CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION = 6, ... };
//   typedef union CUlaunchAttributeValue_union { char pad[64]; ...; int programmaticStreamSerializationAllowed; ... };
//   typedef struct CUlaunchAttribute_st { CUlaunchAttributeID id; char pad[8 - sizeof(CUlaunchAttributeID)];
//                                         CUlaunchAttributeValue value; } CUlaunchAttribute;
//   typedef struct CUlaunchConfig_st { unsigned int gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ,
//                                      sharedMemBytes; CUstream hStream; CUlaunchAttribute* attrs; unsigned int numAttrs; } CUlaunchConfig;
// (checked against cuda.h as vendored by public projects and NVIDIA's CUDA Driver API reference, "enum CUlaunchAttributeID").
// The union holds pointers (CUevent, CUaccessPolicyWindow.base_ptr), so it is 8-byte aligned: an attribute is 72 bytes
// with the value at offset 8; the config is 56 bytes (hStream at 32 after 4 bytes of padding, attrs at 40, numAttrs at 48).

internal enum CuLaunchAttributeId { Ignore = 0, ProgrammaticStreamSerialization = 6 }

[StructLayout(LayoutKind.Explicit, Size = 72)]
internal struct CuLaunchAttribute
{
    [FieldOffset(0)] public CuLaunchAttributeId Id;
    /// <summary>The first int of the value union: programmaticStreamSerializationAllowed for <see cref="CuLaunchAttributeId.ProgrammaticStreamSerialization"/>.</summary>
    [FieldOffset(8)] public int Value;
}

[StructLayout(LayoutKind.Sequential)]
internal unsafe struct CuLaunchConfig
{
    public uint GridDimX, GridDimY, GridDimZ, BlockDimX, BlockDimY, BlockDimZ, SharedMemBytes;
    public nint HStream;
    public CuLaunchAttribute* Attrs;
    public uint NumAttrs;
}

/// <summary>A failed CUDA driver call: the call, the CUDA error name and its text.</summary>
public sealed class CudaException(string call, CuResult result, string name, string text)
    : DeviceException($"{call} failed: {name} ({text})")
{
    public string Call { get; } = call;
    public CuResult Result { get; } = result;
    public string ErrorName { get; } = name;
}

internal static class CudaCheck
{
    /// <summary>Throws <see cref="CudaException"/> (or <see cref="DeviceOutOfMemoryException"/>) naming <paramref name="call"/>.</summary>
    public static void Check(CuResult result, string call)
    {
        if (result == CuResult.Success) return;
        Throw(result, call);
    }

    /// <summary>
    /// Like <see cref="Check(CuResult, string)"/> for an interpolated call text (<c>$"cuMemcpyHtoDAsync_v2({dst}, {bytes})"</c>):
    /// the text is formatted only when the call failed, so the success path (every copy and launch of a decode step)
    /// allocates nothing.
    /// </summary>
    public static void Check(CuResult result, [InterpolatedStringHandlerArgument(nameof(result))] ref CallText call)
    {
        if (result == CuResult.Success) return;
        Throw(result, call.ToStringAndClear());
    }

    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    private static void Throw(CuResult result, string call)
    {
        var (name, text) = Describe(result);
        if (result == CuResult.OutOfMemory)
            throw new DeviceOutOfMemoryException(0, $"{call} failed: {name} ({text})");
        throw new CudaException(call, result, name, text);
    }

    /// <summary>An interpolated call text that is built only for a failed result.</summary>
    [InterpolatedStringHandler]
    public ref struct CallText
    {
        private DefaultInterpolatedStringHandler _text;

        public CallText(int literalLength, int formattedCount, CuResult result, out bool build)
        {
            build = result != CuResult.Success;
            _text = build ? new DefaultInterpolatedStringHandler(literalLength, formattedCount) : default;
        }

        public void AppendLiteral(string s) => _text.AppendLiteral(s);
        public void AppendFormatted<T>(T value) => _text.AppendFormatted(value);
        public void AppendFormatted<T>(T value, string? format) => _text.AppendFormatted(value, format);
        public string ToStringAndClear() => _text.ToStringAndClear();
    }

    public static (string Name, string Text) Describe(CuResult result)
    {
        string name = CudaApi.cuGetErrorName(result, out nint n) == CuResult.Success && n != 0 ? Marshal.PtrToStringUTF8(n)! : $"CUDA_ERROR_{(int)result}";
        string text = CudaApi.cuGetErrorString(result, out nint t) == CuResult.Success && t != 0 ? Marshal.PtrToStringUTF8(t)! : "unknown error";
        return (name, text);
    }
}
