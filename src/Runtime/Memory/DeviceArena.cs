namespace Qwen3Cuda.Runtime.Memory;

/// <summary>A byte range of a <see cref="DeviceArena"/>: base pointer and length.</summary>
public readonly record struct DeviceSlice(DevicePtr Ptr, long Bytes)
{
    public DevicePtr At(long offset) => Ptr + offset;
}

/// <summary>
/// ONE device allocation that a size table carves into 256-byte aligned views (llm.c's one slab).
/// The owner computes the table first (<see cref="ArenaLayout"/>), allocates once, and asks for views by
/// offset; nothing is allocated afterwards. Dispose frees the allocation.
/// </summary>
public sealed class DeviceArena : IDisposable
{
    public const int Alignment = 256;
    private readonly IDevice _device;
    private bool _disposed;

    public DeviceArena(IDevice device, long bytes, string name)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        _device = device;
        Name = name;
        Bytes = Math.Max(bytes, Alignment);
        try { Base = device.Allocate(Bytes); }
        catch (DeviceOutOfMemoryException e)
        {
            var (free, total) = device.GetMemoryInfo();
            throw new DeviceOutOfMemoryException(Bytes,
                $"{name}: cannot allocate {ByteSize.Format(Bytes)} on {device.Info.Name} ({ByteSize.Format(free)} free of {ByteSize.Format(total)}): {e.Message}");
        }
    }

    public string Name { get; }
    public DevicePtr Base { get; }
    public long Bytes { get; }

    /// <summary>The view [offset, offset + bytes), checked against the arena.</summary>
    public DeviceSlice Slice(long offset, long bytes)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (offset < 0 || bytes < 0 || offset + bytes > Bytes)
            throw new ArgumentOutOfRangeException(nameof(offset), $"{Name}: view [{offset}, {offset + bytes}) is outside the arena of {Bytes} bytes");
        if (offset % Alignment != 0)
            throw new ArgumentException($"{Name}: view offset {offset} is not {Alignment}-byte aligned", nameof(offset));
        return new DeviceSlice(Base + offset, bytes);
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _device.Free(Base);
    }
}

/// <summary>Builds a size table: each <see cref="Take"/> returns the next 256-byte aligned offset.</summary>
public sealed class ArenaLayout
{
    private readonly List<(string Name, long Offset, long Bytes)> _entries = [];
    public long TotalBytes { get; private set; }
    public IReadOnlyList<(string Name, long Offset, long Bytes)> Entries => _entries;

    public long Take(string name, long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        long offset = TotalBytes;
        _entries.Add((name, offset, bytes));
        TotalBytes = checked(offset + ByteSize.AlignUp(Math.Max(bytes, 1), DeviceArena.Alignment));
        return offset;
    }
}
