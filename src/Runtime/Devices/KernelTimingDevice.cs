namespace Qwen3Cuda.Runtime;

/// <summary>One kernel launch seen by <see cref="KernelTimingDevice"/>: its name (<see cref="DeviceKernel.Name"/>, the
/// name the emulator's launch records carry too), its configuration and the time between the events around it.</summary>
public readonly record struct TimedLaunch(string Kernel, LaunchConfig Config, double Milliseconds);

/// <summary>
/// An <see cref="IDevice"/> decorator for per-kernel timing: everything is forwarded to <see cref="Inner"/>; between
/// <see cref="Begin"/> and <see cref="End"/> every kernel launch that is not being captured is bracketed by a pair of
/// timing events recorded on its stream. A pair (not one event between consecutive launches) so that a gap where the
/// GPU waits for the host is not charged to the next kernel. Events come from a pool that grows on first use and is
/// reused, so a second timed step creates none. What the times mean is the backend's: CUDA events measure GPU time;
/// the emulator's events read the host clock (emulation time, not a GPU figure). Not thread-safe. Does not own
/// <see cref="Inner"/>: disposing this frees the pooled events only.
/// </summary>
public sealed class KernelTimingDevice(IDevice inner) : IDevice
{
    private readonly List<DeviceEvent> _pool = [];
    private readonly List<(string Kernel, LaunchConfig Config, int Start, int End)> _launches = [];
    private int _used;

    public IDevice Inner => inner;

    /// <summary>True between <see cref="Begin"/> and <see cref="End"/>.</summary>
    public bool IsTiming { get; private set; }

    /// <summary>Starts timing launches (forgets the launches of an earlier <see cref="Begin"/>).</summary>
    public void Begin()
    {
        if (IsTiming) throw new InvalidOperationException("KernelTimingDevice.Begin: already timing (call End first)");
        _launches.Clear();
        _used = 0;
        IsTiming = true;
    }

    /// <summary>Stops timing, waits for the device and returns the timed launches in issue order.</summary>
    public IReadOnlyList<TimedLaunch> End()
    {
        if (!IsTiming) throw new InvalidOperationException("KernelTimingDevice.End: Begin was not called");
        IsTiming = false;
        inner.Synchronize();
        var result = new TimedLaunch[_launches.Count];
        for (int i = 0; i < result.Length; i++)
        {
            var (kernel, config, start, end) = _launches[i];
            result[i] = new TimedLaunch(kernel, config, inner.ElapsedMilliseconds(_pool[start], _pool[end]));
        }
        return result;
    }

    private int RecordEvent(DeviceStream stream)
    {
        if (_used == _pool.Count) _pool.Add(inner.CreateEvent(timing: true));
        inner.Record(_pool[_used], stream);
        return _used++;
    }

    public void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args)
    {
        if (!IsTiming || stream.IsCapturing)
        {
            inner.Launch(kernel, config, stream, args);
            return;
        }
        int start = RecordEvent(stream);
        inner.Launch(kernel, config, stream, args);
        _launches.Add((kernel.Name, config, start, RecordEvent(stream)));
    }

    // ---- everything else is forwarded unchanged ----
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
    public void Launch(DeviceGraphExec exec, DeviceStream stream) => inner.Launch(exec, stream);

    public void Dispose()
    {
        IsTiming = false;
        foreach (var e in _pool) e.Dispose();
        _pool.Clear();
    }
}
