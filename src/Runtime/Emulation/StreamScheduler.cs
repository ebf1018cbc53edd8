using System.Diagnostics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>One item of a stream's queue under strict streams: device work, an event record, or a wait on one.</summary>
internal abstract class StreamWork
{
    public required string What { get; init; }
}

internal sealed class RunWork : StreamWork
{
    public required Action Run { get; init; }
}

internal sealed class RecordWork : StreamWork
{
    public required EventMark Mark { get; init; }
}

internal sealed class WaitWork : StreamWork
{
    public required EventMark Mark { get; init; }
}

/// <summary>One <c>Record</c> of an event on a stream: done (with the host clock's time) once the stream reaches it.</summary>
internal sealed class EventMark(EmuStream stream)
{
    public EmuStream Stream { get; } = stream;
    public bool Done { get; set; }
    public long Timestamp { get; set; }
}

/// <summary>
/// Strict streams (docs/emulator.md): every stream keeps a queue of the work issued to it, and nothing runs until the
/// host synchronises. Then exactly the work the synchronisation waits for runs: a stream's queue in order, a wait on an
/// event first running the recording stream up to that record, and a device-wide synchronisation takes the streams in a
/// seeded random order (work on two streams with no event between them may run in either order, as on a GPU).
/// A fault in queued work surfaces at the synchronisation, like a sticky CUDA error, and discards everything still queued.
/// </summary>
internal sealed class StreamScheduler(int seed)
{
    private readonly List<EmuStream> _busy = [];   // streams with queued work
    private readonly Random _rng = new(seed);

    public bool Idle => _busy.Count == 0;

    public void Enqueue(EmuStream s, StreamWork w)
    {
        if (s.Pending.Count == 0) _busy.Add(s);
        s.Pending.Enqueue(w);
    }

    /// <summary>Runs queued work until <paramref name="mark"/> is reached (or its stream's queue was discarded).</summary>
    public void RunUntil(EventMark mark)
    {
        while (!mark.Done && mark.Stream.Pending.Count > 0) Step(mark.Stream);
    }

    /// <summary>Runs a stream's queue to the end (and whatever its waits depend on).</summary>
    public void Drain(EmuStream s)
    {
        while (s.Pending.Count > 0) Step(s);
    }

    /// <summary>Runs every queue to the end, one item at a time from a randomly chosen stream.</summary>
    public void DrainAll()
    {
        while (_busy.Count > 0) Step(_busy[_busy.Count == 1 ? 0 : _rng.Next(_busy.Count)]);
    }

    /// <summary>Drops all queued work (after a fault: a GPU context is unusable after one too).</summary>
    public void Discard()
    {
        foreach (var s in _busy) s.Pending.Clear();
        _busy.Clear();
    }

    private void Step(EmuStream s)
    {
        var w = s.Pending.Peek();
        if (w is WaitWork wait && !wait.Mark.Done)
        {
            RunUntil(wait.Mark);
            if (s.Pending.Count == 0 || !ReferenceEquals(s.Pending.Peek(), w)) return; // discarded meanwhile
        }
        s.Pending.Dequeue();
        if (s.Pending.Count == 0) _busy.Remove(s);
        try
        {
            switch (w)
            {
                case RunWork r: r.Run(); break;
                case RecordWork rec:
                    rec.Mark.Timestamp = Stopwatch.GetTimestamp();
                    rec.Mark.Done = true;
                    break;
            }
        }
        catch
        {
            Discard();
            throw;
        }
    }
}
