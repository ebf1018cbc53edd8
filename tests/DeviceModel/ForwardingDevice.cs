using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>An <see cref="IDevice"/> that forwards every call to <paramref name="inner"/>; tests override what they fake.</summary>
public class ForwardingDevice(IDevice inner) : IDevice
{
    public IDevice Inner => inner;
    public virtual DeviceInfo Info => inner.Info;
    public DeviceStream DefaultStream => inner.DefaultStream;
    public virtual DevicePtr Allocate(long bytes) => inner.Allocate(bytes);
    public virtual void Free(DevicePtr ptr) => inner.Free(ptr);
    public virtual (long FreeBytes, long TotalBytes) GetMemoryInfo() => inner.GetMemoryInfo();
    public void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src) => inner.CopyToDevice(dst, src);
    public void CopyToHost(Span<byte> dst, DevicePtr src) => inner.CopyToHost(dst, src);
    public void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream) => inner.CopyToDeviceAsync(dst, src, srcOffset, bytes, stream);
    public void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream) => inner.CopyToHostAsync(dst, dstOffset, src, bytes, stream);
    public void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream) => inner.CopyDeviceToDeviceAsync(dst, src, bytes, stream);
    public void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream) => inner.MemsetAsync(dst, value, bytes, stream);
    public PinnedBuffer AllocatePinned(long bytes) => inner.AllocatePinned(bytes);
    public virtual DeviceModule LoadModule(Qwen3Cuda.Runtime.CompiledModule module) => inner.LoadModule(module);
    public DeviceKernel GetKernel(DeviceModule module, string name) => inner.GetKernel(module, name);
    public KernelAttributes GetAttributes(DeviceKernel kernel) => inner.GetAttributes(kernel);
    public void SetMaxDynamicSharedMemory(DeviceKernel kernel, int bytes) => inner.SetMaxDynamicSharedMemory(kernel, bytes);
    public int MaxActiveBlocksPerMultiprocessor(DeviceKernel kernel, int blockThreads, int dynamicSharedBytes) => inner.MaxActiveBlocksPerMultiprocessor(kernel, blockThreads, dynamicSharedBytes);
    public virtual void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args) => inner.Launch(kernel, config, stream, args);
    public DeviceStream CreateStream() => inner.CreateStream();
    public void Synchronize(DeviceStream stream) => inner.Synchronize(stream);
    public void Synchronize() => inner.Synchronize();
    public DeviceEvent CreateEvent(bool timing = true) => inner.CreateEvent(timing);
    public void Record(DeviceEvent evt, DeviceStream stream) => inner.Record(evt, stream);
    public void Wait(DeviceStream stream, DeviceEvent evt) => inner.Wait(stream, evt);
    public void Synchronize(DeviceEvent evt) => inner.Synchronize(evt);
    public float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end) => inner.ElapsedMilliseconds(start, end);
    public virtual void BeginCapture(DeviceStream stream) => inner.BeginCapture(stream);
    public virtual DeviceGraph EndCapture(DeviceStream stream) => inner.EndCapture(stream);
    public virtual DeviceGraphExec Instantiate(DeviceGraph graph) => inner.Instantiate(graph);
    public bool TryUpdate(DeviceGraphExec exec, DeviceGraph graph) => inner.TryUpdate(exec, graph);
    public void Launch(DeviceGraphExec exec, DeviceStream stream) => inner.Launch(exec, stream);
    public virtual void Dispose() => inner.Dispose();
}
