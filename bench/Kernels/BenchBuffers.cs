using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Bench.Kernels;

/// <summary>Device buffers of a kernel benchmark, filled with one byte value and freed together.</summary>
public sealed class BenchBuffers(IDevice device) : IDisposable
{
    private readonly List<DevicePtr> _buffers = [];

    public DevicePtr Alloc(long bytes, byte fill = 0)
    {
        DevicePtr p = device.Allocate(bytes);
        var chunk = new byte[Math.Min(bytes, 1 << 20)];
        Array.Fill(chunk, fill);
        for (long o = 0; o < bytes; o += chunk.Length)
            device.CopyToDevice(p + o, chunk.AsSpan(0, (int)Math.Min(chunk.Length, bytes - o)));
        _buffers.Add(p);
        return p;
    }

    public void Dispose()
    {
        foreach (var p in _buffers) device.Free(p);
        _buffers.Clear();
    }
}
