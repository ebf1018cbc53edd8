namespace Qwen3Cuda.Runtime;

/// <summary>
/// An <see cref="IDevice"/> decorator that forwards everything to <see cref="Inner"/> except kernel and graph launches
/// outside a capture, which it counts and drops: the host side of a step without the device's work (bench/Host, and
/// the test that a decode step allocates nothing). Results computed by dropped launches are whatever memory held.
/// </summary>
public sealed class HostOnlyDevice(IDevice inner) : IDevice
{
    public IDevice Inner => inner;
    public long KernelLaunches { get; private set; }
    public long GraphLaunches { get; private set; }

    public void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args)
    {
        if (stream.IsCapturing) inner.Launch(kernel, config, stream, args);
        else KernelLaunches++;
    }

    public void Launch(DeviceGraphExec exec, DeviceStream stream)
    {
        if (stream.IsCapturing) inner.Launch(exec, stream);
        else GraphLaunches++;
    }

    public DeviceInfo Info => inner.Info;
    public DeviceStream DefaultStream => inner.DefaultStream;
    public DevicePtr Allocate(long bytes) => inner.Allocate(bytes);
    public void Free(DevicePtr ptr) => inner.Free(ptr);
    public (long FreeBytes, long TotalBytes) GetMemoryInfo() => inner.GetMemoryInfo();
    public void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src) => inner.CopyToDevice(dst, src);
    public void CopyToHost(Span<byte> dst, DevicePtr src) => inner.CopyToHost(dst, src);
    public void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream) => inner.CopyToDeviceAsync(dst, src, srcOffset, bytes, stream);
    public void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream) => inner.CopyToHostAsync(dst, dstOffset, src, bytes, stream);
    public void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream) => inner.CopyDeviceToDeviceAsync(dst, src, bytes, stream);
    public void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream) => inner.MemsetAsync(dst, value, bytes, stream);
    public PinnedBuffer AllocatePinned(long bytes) => inner.AllocatePinned(bytes);
    public DeviceModule LoadModule(CompiledModule module) => inner.LoadModule(module);
    public DeviceKernel GetKernel(DeviceModule module, string name) => inner.GetKernel(module, name);
    public KernelAttributes GetAttributes(DeviceKernel kernel) => inner.GetAttributes(kernel);
    public void SetMaxDynamicSharedMemory(DeviceKernel kernel, int bytes) => inner.SetMaxDynamicSharedMemory(kernel, bytes);
    public int MaxActiveBlocksPerMultiprocessor(DeviceKernel kernel, int blockThreads, int dynamicSharedBytes) => inner.MaxActiveBlocksPerMultiprocessor(kernel, blockThreads, dynamicSharedBytes);
    public DeviceStream CreateStream() => inner.CreateStream();
    public void Synchronize(DeviceStream stream) => inner.Synchronize(stream);
    public void Synchronize() => inner.Synchronize();
    public DeviceEvent CreateEvent(bool timing = true) => inner.CreateEvent(timing);
    public void Record(DeviceEvent evt, DeviceStream stream) => inner.Record(evt, stream);
    public void Wait(DeviceStream stream, DeviceEvent evt) => inner.Wait(stream, evt);
    public void Synchronize(DeviceEvent evt) => inner.Synchronize(evt);
    public float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end) => inner.ElapsedMilliseconds(start, end);
    public void BeginCapture(DeviceStream stream) => inner.BeginCapture(stream);
    public DeviceGraph EndCapture(DeviceStream stream) => inner.EndCapture(stream);
    public DeviceGraphExec Instantiate(DeviceGraph graph) => inner.Instantiate(graph);
    public bool TryUpdate(DeviceGraphExec exec, DeviceGraph graph) => inner.TryUpdate(exec, graph);
    public void Dispose() { }
}
