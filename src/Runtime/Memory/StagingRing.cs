namespace Qwen3Cuda.Runtime.Memory;

/// <summary>
/// A ring of pinned host buffers for the inputs of asynchronous host-to-device copies. The host fills the slot that
/// <see cref="Acquire"/> returns, queues its copies, then <see cref="Release"/> records an event behind them on the
/// stream; the slot is handed out again only after that event has completed, so a buffer the GPU may still be reading
/// is never rewritten (docs/architecture.md, "Host and device"). With several slots the host prepares step k+1 while
/// step k's copies are still queued; it waits only when it laps the ring.
/// </summary>
public sealed class StagingRing : IDisposable
{
    private readonly IDevice _device;
    private readonly PinnedBuffer[] _buffers;
    private readonly DeviceEvent[] _copied;
    private readonly bool[] _recorded;
    private int _next;
    private bool _acquired;

    public StagingRing(IDevice device, long slotBytes, int slots = 3)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(slots, 1);
        _device = device;
        _buffers = new PinnedBuffer[slots];
        _copied = new DeviceEvent[slots];
        _recorded = new bool[slots];
        try
        {
            for (int i = 0; i < slots; i++)
            {
                _buffers[i] = device.AllocatePinned(slotBytes);
                _buffers[i].Span.Clear();
                _copied[i] = device.CreateEvent(timing: false);
            }
        }
        catch { Dispose(); throw; }
        SlotBytes = slotBytes;
    }

    public long SlotBytes { get; }
    public int Slots => _buffers.Length;

    /// <summary>The next slot, once the copies last queued from it have run. Pair with <see cref="Release"/>.</summary>
    public PinnedBuffer Acquire()
    {
        if (_acquired) throw new InvalidOperationException("staging ring: the previous slot was not released");
        if (_recorded[_next]) _device.Synchronize(_copied[_next]);
        _acquired = true;
        return _buffers[_next];
    }

    /// <summary>Marks the acquired slot busy until the work queued so far on <paramref name="stream"/> (its copies) has run.</summary>
    public void Release(DeviceStream stream)
    {
        if (!_acquired) throw new InvalidOperationException("staging ring: no slot acquired");
        _device.Record(_copied[_next], stream);
        _recorded[_next] = true;
        _acquired = false;
        _next = (_next + 1) % _buffers.Length;
    }

    /// <summary>
    /// The host has synchronised the stream the slots' events were recorded on: every copy queued so far has run, so the
    /// next acquisitions need not wait on their events.
    /// </summary>
    public void StreamSynchronized() => Array.Clear(_recorded);

    /// <summary>Forgets an acquired slot without queuing anything from it (validation failed after Acquire).</summary>
    public void Abandon() => _acquired = false;

    public void Dispose()
    {
        foreach (var e in _copied) e?.Dispose();
        foreach (var b in _buffers) b?.Dispose();
    }
}
