using System.Runtime.InteropServices;
using System.Text;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Runtime.Cuda;

/// <summary>
/// <see cref="IDevice"/> over the CUDA driver API: the device's primary context, made current on
/// whichever thread calls. Every driver result is checked and failures name the call.
/// </summary>
public sealed unsafe partial class CudaDevice : IDevice
{
    private readonly int _device;
    private readonly nint _context;
    private readonly HashSet<ulong> _allocations = [];
    private readonly Lock _gate = new();
    [ThreadStatic] private static nint _currentContext;
    private bool _disposed;

    private CudaDevice(int ordinal)
    {
        NativeLibraries.EnsureCuda();
        CudaCheck.Check(CudaApi.cuInit(0), "cuInit(0)");
        CudaCheck.Check(CudaApi.cuDeviceGetCount(out int count), "cuDeviceGetCount");
        if (ordinal < 0 || ordinal >= count)
            throw new ArgumentOutOfRangeException(nameof(ordinal), $"CUDA device {ordinal} does not exist ({count} device(s) present)");
        CudaCheck.Check(CudaApi.cuDeviceGet(out _device, ordinal), $"cuDeviceGet({ordinal})");
        CudaCheck.Check(CudaApi.cuDevicePrimaryCtxRetain(out _context, _device), $"cuDevicePrimaryCtxRetain({ordinal})");
        MakeCurrent();
        Info = QueryInfo(_device);
        DefaultStream = new CudaStream(this, 0, owned: false);
        (ProgrammaticLaunchEnabled, ProgrammaticLaunchStatus) = ProbeProgrammaticLaunch();
        PersistingL2Status = SetAsidePersistingL2();
    }

    /// <summary>The environment variable that keeps the L2 set-aside for persisting lines at the driver's default (<c>QWEN3CUDA_L2_PERSIST=0</c>).</summary>
    public const string PersistingL2EnvironmentVariable = "QWEN3CUDA_L2_PERSIST";

    /// <summary>L2 bytes the device sets aside for persisting lines at open (at most the device's maximum).</summary>
    public const long PersistingL2Request = 16L << 20;

    /// <summary>"16 MiB set aside", or "off (why)": for `selftest`.</summary>
    public string PersistingL2Status { get; }

    /// <summary>
    /// Sets <see cref="PersistingL2Request"/> bytes of L2 aside for persisting lines (cuCtxSetLimit
    /// CU_LIMIT_PERSISTING_L2_CACHE_SIZE, at most the device's maximum), so that the weights the decode step's router
    /// prefetches with evict_last for the next layer survive the expert streams in between (docs/timing-model.md, "Weights
    /// fetched ahead"). A hint: when it cannot be set the prefetches are ordinary ones and results are the same.
    /// </summary>
    private string SetAsidePersistingL2()
    {
        if (Environment.GetEnvironmentVariable(PersistingL2EnvironmentVariable) == "0") return $"off ({PersistingL2EnvironmentVariable}=0)";
        if (Info.ComputeMajor < 8) return "off (needs sm_80 or newer)";
        if (CudaApi.cuDeviceGetAttribute(out int max, CuDeviceAttribute.MaxPersistingL2CacheSize, _device) != CuResult.Success || max <= 0)
            return "off (the device reports no persisting L2)";
        long bytes = Math.Min(PersistingL2Request, max);
        var r = CudaApi.cuCtxSetLimit(CuLimit.PersistingL2CacheSize, (nuint)bytes);
        return r == CuResult.Success ? $"{bytes >> 20} MiB set aside" : $"off (cuCtxSetLimit: {r})";
    }

    /// <summary>Opens CUDA device <paramref name="ordinal"/> (0 = the first).</summary>
    public static CudaDevice Open(int ordinal = 0) => new(ordinal);

    public DeviceInfo Info { get; }
    public DeviceStream DefaultStream { get; }

    private void MakeCurrent()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (_currentContext == _context) return;
        CudaCheck.Check(CudaApi.cuCtxSetCurrent(_context), "cuCtxSetCurrent");
        _currentContext = _context;
    }

    private static DeviceInfo QueryInfo(int device)
    {
        byte* name = stackalloc byte[256];
        CudaCheck.Check(CudaApi.cuDeviceGetName(name, 256, device), "cuDeviceGetName");
        CudaCheck.Check(CudaApi.cuDeviceTotalMem_v2(out nuint total, device), "cuDeviceTotalMem_v2");
        int Attr(CuDeviceAttribute a)
        {
            CudaCheck.Check(CudaApi.cuDeviceGetAttribute(out int v, a, device), $"cuDeviceGetAttribute({a})");
            return v;
        }
        return new DeviceInfo
        {
            Name = Marshal.PtrToStringUTF8((nint)name) ?? "CUDA device",
            Backend = BackendKind.Cuda,
            ComputeMajor = Attr(CuDeviceAttribute.ComputeCapabilityMajor),
            ComputeMinor = Attr(CuDeviceAttribute.ComputeCapabilityMinor),
            MultiprocessorCount = Attr(CuDeviceAttribute.MultiprocessorCount),
            SharedMemoryPerBlock = Attr(CuDeviceAttribute.MaxSharedMemoryPerBlock),
            SharedMemoryPerBlockOptin = Attr(CuDeviceAttribute.MaxSharedMemoryPerBlockOptin),
            SharedMemoryPerMultiprocessor = Attr(CuDeviceAttribute.MaxSharedMemoryPerMultiprocessor),
            MaxThreadsPerBlock = Attr(CuDeviceAttribute.MaxThreadsPerBlock),
            WarpSize = Attr(CuDeviceAttribute.WarpSize),
            TotalMemoryBytes = (long)total,
            PeakMemoryBandwidthBytesPerSecond = PeakBandwidth(device),
        };
    }

    /// <summary>2 x memory clock x bus width (DDR), or null when the driver does not report them.</summary>
    private static double? PeakBandwidth(int device)
    {
        if (CudaApi.cuDeviceGetAttribute(out int clockKHz, CuDeviceAttribute.MemoryClockRate, device) != CuResult.Success
            || CudaApi.cuDeviceGetAttribute(out int busBits, CuDeviceAttribute.GlobalMemoryBusWidth, device) != CuResult.Success
            || clockKHz <= 0 || busBits <= 0) return null;
        return 2.0 * clockKHz * 1000 * busBits / 8;
    }

    // ---- memory ----

    public DevicePtr Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        MakeCurrent();
        CuResult r = CudaApi.cuMemAlloc_v2(out ulong p, (nuint)Math.Max(bytes, 1));
        if (r == CuResult.OutOfMemory)
        {
            var (free, total) = GetMemoryInfo();
            throw new DeviceOutOfMemoryException(bytes,
                $"out of device memory: cuMemAlloc_v2 of {bytes:N0} bytes failed with {free:N0} of {total:N0} bytes free on {Info.Name}");
        }
        CudaCheck.Check(r, $"cuMemAlloc_v2({bytes})");
        lock (_gate) _allocations.Add(p);
        return new DevicePtr(p);
    }

    public void Free(DevicePtr ptr)
    {
        if (ptr.IsNull) return;
        lock (_gate)
            if (!_allocations.Remove(ptr.Address))
                throw new ArgumentException($"Free({ptr}): not an allocation of this device, or already freed", nameof(ptr));
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuMemFree_v2(ptr.Address), $"cuMemFree_v2({ptr})");
    }

    public (long FreeBytes, long TotalBytes) GetMemoryInfo()
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuMemGetInfo_v2(out nuint free, out nuint total), "cuMemGetInfo_v2");
        return ((long)free, (long)total);
    }

    // The IDevice contract: a synchronous copy waits for all prior work. cuMemcpy runs on the legacy default stream,
    // which does not wait for our streams (created CU_STREAM_NON_BLOCKING), so synchronise the context first.
    public void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuCtxSynchronize(), "cuCtxSynchronize (before a synchronous copy)");
        fixed (byte* p = src) CudaCheck.Check(CudaApi.cuMemcpyHtoD_v2(dst.Address, p, (nuint)src.Length), $"cuMemcpyHtoD_v2({dst}, {src.Length})");
    }

    public void CopyToHost(Span<byte> dst, DevicePtr src)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuCtxSynchronize(), "cuCtxSynchronize (before a synchronous copy)");
        fixed (byte* p = dst) CudaCheck.Check(CudaApi.cuMemcpyDtoH_v2(p, src.Address, (nuint)dst.Length), $"cuMemcpyDtoH_v2({src}, {dst.Length})");
    }

    public void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream)
    {
        src.CheckRange(srcOffset, bytes, nameof(src));
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuMemcpyHtoDAsync_v2(dst.Address, (byte*)src.Pointer + srcOffset, (nuint)bytes, S(stream)), $"cuMemcpyHtoDAsync_v2({dst}, {bytes})");
    }

    public void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream)
    {
        dst.CheckRange(dstOffset, bytes, nameof(dst));
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuMemcpyDtoHAsync_v2((byte*)dst.Pointer + dstOffset, src.Address, (nuint)bytes, S(stream)), $"cuMemcpyDtoHAsync_v2({src}, {bytes})");
    }

    public void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuMemcpyDtoDAsync_v2(dst.Address, src.Address, (nuint)bytes, S(stream)), $"cuMemcpyDtoDAsync_v2({dst}, {src}, {bytes})");
    }

    public void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuMemsetD8Async(dst.Address, value, (nuint)bytes, S(stream)), $"cuMemsetD8Async({dst}, {value}, {bytes})");
    }

    public PinnedBuffer AllocatePinned(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuMemAllocHost_v2(out nint p, (nuint)Math.Max(bytes, 1)), $"cuMemAllocHost_v2({bytes})");
        return new CudaPinnedBuffer(this, p, bytes);
    }

    private sealed class CudaPinnedBuffer(CudaDevice device, nint p, long bytes) : PinnedBuffer(p, bytes)
    {
        protected override void Release(nint pointer)
        {
            device.MakeCurrent();
            CudaCheck.Check(CudaApi.cuMemFreeHost(pointer), "cuMemFreeHost");
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        Synchronize();
        lock (_gate)
        {
            foreach (ulong p in _allocations) CudaApi.cuMemFree_v2(p);
            _allocations.Clear();
        }
        CudaApi.cuDevicePrimaryCtxRelease_v2(_device);
        _currentContext = 0;
        _disposed = true;
    }

    private static string Utf8Z(ReadOnlySpan<byte> buffer)
    {
        int n = buffer.IndexOf((byte)0);
        return Encoding.UTF8.GetString(n < 0 ? buffer : buffer[..n]).Trim();
    }
}
