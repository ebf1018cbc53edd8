using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>An <see cref="IDevice"/> decorator that counts the calls the model makes (everything is forwarded).</summary>
public sealed class CountingDevice(IDevice inner) : IDevice
{
    public int Allocations, Frees, PinnedAllocations, SyncCopiesToHost, SyncCopiesToDevice, AsyncCopiesToHost, AsyncCopiesToDevice;
    public int Synchronizations, KernelLaunches, GraphLaunches, Captures, Memsets, DeviceCopies;

    public void Reset() => Allocations = Frees = PinnedAllocations = SyncCopiesToHost = SyncCopiesToDevice = AsyncCopiesToHost =
        AsyncCopiesToDevice = Synchronizations = KernelLaunches = GraphLaunches = Captures = Memsets = DeviceCopies = 0;

    public IDevice Inner => inner;
    public DeviceInfo Info => inner.Info;
    public DeviceStream DefaultStream => inner.DefaultStream;
    public DevicePtr Allocate(long bytes) { Allocations++; return inner.Allocate(bytes); }
    public void Free(DevicePtr ptr) { Frees++; inner.Free(ptr); }
    public (long FreeBytes, long TotalBytes) GetMemoryInfo() => inner.GetMemoryInfo();
    public void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src) { SyncCopiesToDevice++; inner.CopyToDevice(dst, src); }
    public void CopyToHost(Span<byte> dst, DevicePtr src) { SyncCopiesToHost++; inner.CopyToHost(dst, src); }
    public void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream) { AsyncCopiesToDevice++; inner.CopyToDeviceAsync(dst, src, srcOffset, bytes, stream); }
    public void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream) { AsyncCopiesToHost++; inner.CopyToHostAsync(dst, dstOffset, src, bytes, stream); }
    public void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream) { DeviceCopies++; inner.CopyDeviceToDeviceAsync(dst, src, bytes, stream); }
    public void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream) { Memsets++; inner.MemsetAsync(dst, value, bytes, stream); }
    public PinnedBuffer AllocatePinned(long bytes) { PinnedAllocations++; return inner.AllocatePinned(bytes); }
    public DeviceModule LoadModule(Qwen3Cuda.Runtime.CompiledModule module) => inner.LoadModule(module);
    public DeviceKernel GetKernel(DeviceModule module, string name) => inner.GetKernel(module, name);
    public KernelAttributes GetAttributes(DeviceKernel kernel) => inner.GetAttributes(kernel);
    public void SetMaxDynamicSharedMemory(DeviceKernel kernel, int bytes) => inner.SetMaxDynamicSharedMemory(kernel, bytes);
    public int MaxActiveBlocksPerMultiprocessor(DeviceKernel kernel, int blockThreads, int dynamicSharedBytes) => inner.MaxActiveBlocksPerMultiprocessor(kernel, blockThreads, dynamicSharedBytes);
    public void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args) { KernelLaunches++; inner.Launch(kernel, config, stream, args); }
    public DeviceStream CreateStream() => inner.CreateStream();
    public void Synchronize(DeviceStream stream) { Synchronizations++; inner.Synchronize(stream); }
    public void Synchronize() { Synchronizations++; inner.Synchronize(); }
    public DeviceEvent CreateEvent(bool timing = true) => inner.CreateEvent(timing);
    public void Record(DeviceEvent evt, DeviceStream stream) => inner.Record(evt, stream);
    public void Wait(DeviceStream stream, DeviceEvent evt) => inner.Wait(stream, evt);
    public void Synchronize(DeviceEvent evt) { Synchronizations++; inner.Synchronize(evt); }
    public float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end) => inner.ElapsedMilliseconds(start, end);
    public void BeginCapture(DeviceStream stream) { Captures++; inner.BeginCapture(stream); }
    public DeviceGraph EndCapture(DeviceStream stream) => inner.EndCapture(stream);
    public DeviceGraphExec Instantiate(DeviceGraph graph) => inner.Instantiate(graph);
    public bool TryUpdate(DeviceGraphExec exec, DeviceGraph graph) => inner.TryUpdate(exec, graph);
    public void Launch(DeviceGraphExec exec, DeviceStream stream) { GraphLaunches++; inner.Launch(exec, stream); }
    public void Dispose() => inner.Dispose();
}
