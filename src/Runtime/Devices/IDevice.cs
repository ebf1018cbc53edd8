namespace Qwen3Cuda.Runtime;

/// <summary>
/// One GPU as the model code sees it. Implemented by <c>CudaDevice</c> (the driver API) and
/// <c>EmulatedDevice</c> (the PTX interpreter); everything above this interface is written once.
/// Rules every implementation keeps:
/// <list type="bullet">
/// <item>Allocations are 256-byte aligned and not zeroed. Out of memory throws <see cref="DeviceOutOfMemoryException"/>.</item>
/// <item>Work on a stream runs in issue order; <c>Launch</c> and the *Async copies never synchronise the host.</item>
/// <item>Synchronous copies (no stream argument) wait for all prior work on the device first, like cuMemcpy.</item>
/// <item>Between <see cref="BeginCapture"/> and <see cref="EndCapture"/> work on that stream is recorded, not run.</item>
/// </list>
/// </summary>
public interface IDevice : IDisposable
{
    DeviceInfo Info { get; }

    /// <summary>The stream that work goes to when none is given (the legacy default stream on CUDA).</summary>
    DeviceStream DefaultStream { get; }

    // ---- memory ----
    DevicePtr Allocate(long bytes);
    void Free(DevicePtr ptr);
    /// <summary>Free and total device memory in bytes.</summary>
    (long FreeBytes, long TotalBytes) GetMemoryInfo();

    void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src);
    void CopyToHost(Span<byte> dst, DevicePtr src);
    /// <summary>Asynchronous host-to-device copy from pinned memory; <paramref name="src"/> must stay valid until the stream reaches it.</summary>
    void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream);
    /// <summary>Asynchronous device-to-host copy into pinned memory.</summary>
    void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream);
    void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream);
    void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream);
    /// <summary>Page-locked host memory for asynchronous copies.</summary>
    PinnedBuffer AllocatePinned(long bytes);

    // ---- kernels ----
    /// <summary>Loads a compiled module: the CUBIN when it matches this device, else the PTX.</summary>
    DeviceModule LoadModule(CompiledModule module);
    DeviceKernel GetKernel(DeviceModule module, string name);
    KernelAttributes GetAttributes(DeviceKernel kernel);
    /// <summary>Opts a kernel in to more than 48 KiB of dynamic shared memory.</summary>
    void SetMaxDynamicSharedMemory(DeviceKernel kernel, int bytes);
    /// <summary>Blocks of <paramref name="blockThreads"/> threads that fit on one multiprocessor at once.</summary>
    int MaxActiveBlocksPerMultiprocessor(DeviceKernel kernel, int blockThreads, int dynamicSharedBytes);
    void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args);

    // ---- streams, events, graphs ----
    DeviceStream CreateStream();
    void Synchronize(DeviceStream stream);
    /// <summary>Waits for all work on every stream.</summary>
    void Synchronize();
    DeviceEvent CreateEvent(bool timing = true);
    void Record(DeviceEvent evt, DeviceStream stream);
    /// <summary>Makes future work on <paramref name="stream"/> wait for <paramref name="evt"/>.</summary>
    void Wait(DeviceStream stream, DeviceEvent evt);
    void Synchronize(DeviceEvent evt);
    /// <summary>Milliseconds between two recorded, completed events.</summary>
    float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end);

    void BeginCapture(DeviceStream stream);
    DeviceGraph EndCapture(DeviceStream stream);
    DeviceGraphExec Instantiate(DeviceGraph graph);
    /// <summary>Updates an instantiated graph in place from a graph of the same topology; false if the driver refuses.</summary>
    bool TryUpdate(DeviceGraphExec exec, DeviceGraph graph);
    void Launch(DeviceGraphExec exec, DeviceStream stream);
}
