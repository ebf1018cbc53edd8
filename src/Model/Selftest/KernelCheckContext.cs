using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// A device and a kernel loader on which the kernel checks run, on any backend: the PTX emulator (tests, CI) or a CUDA GPU
/// (`qwen3cuda selftest --device cuda`, and the kernel tests when a GPU opens). Allocations are freed with the context.
/// Every transfer here is synchronous (a blocking copy waits for the work before it), so a check reads results only after
/// the kernels ran, on a GPU and on the emulator's strict streams alike.
/// </summary>
public sealed class KernelCheckContext : IDisposable
{
    private readonly List<DevicePtr> _allocations = [];
    private readonly Dictionary<string, object> _cache = [];
    private readonly bool _ownsDevice;

    public KernelCheckContext(IDevice device, bool ownsDevice = true, KernelCompiler? compiler = null)
    {
        Device = device;
        _ownsDevice = ownsDevice;
        Loader = new KernelLoader(device, compiler);
    }

    public IDevice Device { get; }
    public KernelLoader Loader { get; }
    public DeviceStream Stream => Device.DefaultStream;
    /// <summary>The emulator when the checks run on it (its launch counters are checked too), else null.</summary>
    public EmulatedDevice? Emulator => Device as EmulatedDevice;
    public string BackendName => Device.Info.Backend.ToString().ToLowerInvariant();

    /// <summary>One object per key for the life of the context (launchers, shared inputs of several cases).</summary>
    public T Cached<T>(string key, Func<T> make) where T : class
    {
        if (_cache.TryGetValue(key, out var o)) return (T)o;
        var made = make();
        _cache[key] = made;
        return made;
    }

    public DevicePtr Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        DevicePtr p = Alloc<T>(Math.Max(1, data.Length));
        Device.CopyToDevice(p, MemoryMarshal.AsBytes(data));
        return p;
    }

    public DevicePtr Upload<T>(T[] data) where T : unmanaged => Upload<T>(data.AsSpan());

    public unsafe DevicePtr Alloc<T>(long count) where T : unmanaged
    {
        DevicePtr p = Device.Allocate(Math.Max(1, count) * sizeof(T));
        _allocations.Add(p);
        return p;
    }

    /// <summary>Allocates and fills with a byte pattern (so a kernel that forgets to write shows garbage).</summary>
    public unsafe DevicePtr AllocFilled<T>(long count, byte value = 0xff) where T : unmanaged
    {
        DevicePtr p = Alloc<T>(count);
        var bytes = new byte[Math.Max(1, count) * sizeof(T)];
        Array.Fill(bytes, value);
        Device.CopyToDevice(p, bytes);
        return p;
    }

    public T[] Download<T>(DevicePtr p, long count) where T : unmanaged
    {
        var r = new T[count];
        Device.CopyToHost(MemoryMarshal.AsBytes(r.AsSpan()), p);
        return r;
    }

    /// <summary>Waits for the work queued on <see cref="Stream"/> (before reading the emulator's launch records).</summary>
    public void Synchronize() => Device.Synchronize(Stream);

    /// <summary>The emulator's records of the launches <paramref name="run"/> makes (empty on CUDA).</summary>
    public IReadOnlyList<LaunchRecord> RecordLaunches(Action run)
    {
        Emulator?.ClearLaunches();
        run();
        Synchronize();
        return Emulator is { } e ? [.. e.Launches] : [];
    }

    public void Dispose()
    {
        foreach (var o in _cache.Values) (o as IDisposable)?.Dispose();
        foreach (var p in _allocations) Device.Free(p);
        _allocations.Clear();
        Loader.Dispose();
        if (_ownsDevice) Device.Dispose();
    }
}
