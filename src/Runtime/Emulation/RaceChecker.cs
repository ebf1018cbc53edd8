using System.Numerics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Shared-memory race detection (docs/emulator.md, "racecheck"). Always, at warp granularity: a shadow entry per 4-byte
/// word records the epoch (CTA barrier generation) and warp of the last write and the reader warps; two different warps
/// touching a word in the same epoch with at least one write is a hazard. With <see cref="LaneLevel"/> (interleaved
/// scheduling) also, byte by byte, between the lanes of one warp, which are not in lockstep on Volta and later: a write and another
/// lane's read or write of the same word are a hazard unless a warp synchronisation that both lanes took part in
/// (bar.warp.sync, shfl/vote/match/redux.sync, a CTA barrier) lies between them. Writes of the value already there are
/// not reported (a benign write-after-write).
/// </summary>
internal sealed class RaceChecker
{
    private readonly int[] _writeEpoch, _readEpoch, _writerLine;
    private readonly short[] _writer;
    private readonly ulong[] _readers;
    /// <summary>Per word: 1 + the warp whose cp.async to it has not completed (wait_group) yet; 0 when none.</summary>
    private readonly short[] _pending;
    // lane level, per byte (adjacent lanes often store the two halves of one word): the epoch, warp, lane, clock and PTX
    // line of the last write; the reader lanes since then (of one warp, in one epoch), the clock of the first and a line
    private readonly int[] _lwEpoch = [], _lwTime = [], _lwLine = [], _lrEpoch = [], _lrTime = [], _lrLine = [];
    private readonly short[] _lwWarp = [], _lrWarp = [];
    private readonly byte[] _lwLane = [];
    private readonly uint[] _lrLanes = [];
    private int _epoch = 1;
    private int _words;

    /// <summary>The current launch's shared-memory words (<see cref="Use"/>); at most <see cref="Capacity"/>.</summary>
    public int Words => _words;
    /// <summary>The words the shadow arrays hold: a pooled CTA context keeps its checker across launches of other kernels.</summary>
    public int Capacity => _writeEpoch.Length;
    public bool LaneLevel { get; }

    public RaceChecker(int sharedBytes, bool laneLevel)
    {
        int words = (sharedBytes + 3) / 4;
        _words = words;
        _writeEpoch = new int[words]; _readEpoch = new int[words]; _writerLine = new int[words];
        _writer = new short[words]; _readers = new ulong[words]; _pending = new short[words];
        LaneLevel = laneLevel;
        if (laneLevel)
        {
            int n = words * 4;
            _lwEpoch = new int[n]; _lwTime = new int[n]; _lwLine = new int[n]; _lwWarp = new short[n]; _lwLane = new byte[n];
            _lrEpoch = new int[n]; _lrTime = new int[n]; _lrLine = new int[n]; _lrWarp = new short[n]; _lrLanes = new uint[n];
        }
    }

    /// <summary>Checks a launch of <paramref name="sharedBytes"/> of shared memory from now on (at most <see cref="Capacity"/> words).</summary>
    public void Use(int sharedBytes)
    {
        int words = (sharedBytes + 3) / 4;
        if (words > Capacity) throw new ArgumentOutOfRangeException(nameof(sharedBytes), $"{words} words, more than the checker's {Capacity}");
        _words = words;
    }

    /// <summary>Forgets every access (a new CTA): only the current launch's words (see <see cref="Use"/>).</summary>
    public void Reset()
    {
        Array.Clear(_writeEpoch, 0, _words); Array.Clear(_readEpoch, 0, _words); Array.Clear(_pending, 0, _words);
        if (LaneLevel) { Array.Clear(_lwEpoch, 0, _words * 4); Array.Clear(_lrEpoch, 0, _words * 4); }
        _epoch = 1;
    }

    public void NextEpoch() => _epoch++;

    /// <summary>Marks (or clears) the destination words of an in-flight cp.async.</summary>
    public void MarkPending(uint offset, int bytes, int warp, bool pending)
    {
        for (uint i = offset >> 2; i <= (offset + (uint)bytes - 1) >> 2 && i < _words; i++) _pending[i] = pending ? (short)(warp + 1) : (short)0;
    }

    /// <summary>
    /// Checks and records one lane's access. <paramref name="sameValue"/>: a write that leaves the bytes as they were.
    /// Lane-level checks use the warp's race clock (<see cref="Warp.RaceTime"/>, one tick per shared-memory instruction).
    /// </summary>
    public void Access(uint offset, int bytes, bool write, int warp, Warp w, Instr ins, int lane, bool sameValue = false)
    {
        int e = _epoch;
        ulong bit = 1UL << (warp & 63);
        for (uint i = offset >> 2; i <= (offset + (uint)bytes - 1) >> 2 && i < _words; i++)
        {
            if (_pending[i] != 0)
                throw w.Fault($"racecheck: shared memory offset {i * 4} is the destination of a cp.async by warp {_pending[i] - 1} that has not completed: " +
                    $"it is {(write ? "written" : "read")} before cp.async.wait_group{(_pending[i] - 1 != warp ? " and a barrier" : "")}", ins, lane);
            if (write)
            {
                if (_writeEpoch[i] == e && _writer[i] != warp)
                    throw w.Fault($"racecheck: write-after-write hazard on shared memory offset {i * 4}: warp {_writer[i]} wrote it (PTX line {_writerLine[i]}) and warp {warp} writes it with no barrier in between", ins, lane);
                if (_readEpoch[i] == e && (_readers[i] & ~bit) != 0)
                    throw w.Fault($"racecheck: write-after-read hazard on shared memory offset {i * 4}: warp {BitOperations.TrailingZeroCount(_readers[i] & ~bit)} read it and warp {warp} writes it with no barrier in between", ins, lane);
                _writeEpoch[i] = e;
                _writer[i] = (short)warp;
                _writerLine[i] = ins.PtxLine;
            }
            else
            {
                if (_writeEpoch[i] == e && _writer[i] != warp)
                    throw w.Fault($"racecheck: read-after-write hazard on shared memory offset {i * 4}: warp {_writer[i]} wrote it (PTX line {_writerLine[i]}) and warp {warp} reads it with no barrier in between", ins, lane);
                if (_readEpoch[i] != e) { _readEpoch[i] = e; _readers[i] = 0; }
                _readers[i] |= bit;
            }
        }
        if (!LaneLevel) return;
        for (uint b = offset; b < offset + (uint)bytes && b < _words * 4; b++)
        {
            if (write) LaneWrite(b, e, warp, w, ins, lane, sameValue);
            else LaneRead(b, e, warp, w, ins, lane);
        }
    }

    private const string Why = "lanes of a warp are not in lockstep (independent thread scheduling, Volta and later): put a __syncwarp() between them";

    private void LaneWrite(uint b, int e, int warp, Warp w, Instr ins, int lane, bool sameValue)
    {
        if (_lwEpoch[b] == e && _lwWarp[b] == warp && _lwLane[b] != lane && !sameValue && !w.Ordered(_lwLane[b], lane, _lwTime[b]))
            throw w.Fault($"racecheck (intra-warp): write-after-write hazard on shared memory offset {b}: lane {_lwLane[b]} of warp {warp} wrote it " +
                $"(PTX line {_lwLine[b]}) and lane {lane} writes another value (PTX line {ins.PtxLine}) with no warp synchronisation in between; {Why}", ins, lane);
        if (_lrEpoch[b] == e && _lrWarp[b] == warp)
        {
            for (uint m = _lrLanes[b] & ~(1u << lane); m != 0; m &= m - 1)
            {
                int r = BitOperations.TrailingZeroCount(m);
                if (!w.Ordered(r, lane, _lrTime[b]))
                    throw w.Fault($"racecheck (intra-warp): write-after-read hazard on shared memory offset {b}: lane {r} of warp {warp} read it " +
                        $"(PTX line {_lrLine[b]}) and lane {lane} writes it (PTX line {ins.PtxLine}) with no warp synchronisation in between; {Why}", ins, lane);
            }
        }
        _lwEpoch[b] = e; _lwWarp[b] = (short)warp; _lwLane[b] = (byte)lane; _lwTime[b] = (int)w.RaceTime; _lwLine[b] = ins.PtxLine;
        _lrLanes[b] = 0;   // earlier reads are ordered before this write (or were just reported)
    }

    private void LaneRead(uint b, int e, int warp, Warp w, Instr ins, int lane)
    {
        if (_lwEpoch[b] == e && _lwWarp[b] == warp && _lwLane[b] != lane && !w.Ordered(_lwLane[b], lane, _lwTime[b]))
            throw w.Fault($"racecheck (intra-warp): read-after-write hazard on shared memory offset {b}: lane {_lwLane[b]} of warp {warp} wrote it " +
                $"(PTX line {_lwLine[b]}) and lane {lane} reads it (PTX line {ins.PtxLine}) with no warp synchronisation in between; {Why}", ins, lane);
        // the readers since the last write, of this epoch and warp; a full-warp synchronisation since the first of them orders them all
        if (_lrEpoch[b] != e || _lrWarp[b] != warp || (_lrLanes[b] != 0 && w.LastFullSync > _lrTime[b])) _lrLanes[b] = 0;
        if (_lrLanes[b] == 0) { _lrEpoch[b] = e; _lrWarp[b] = (short)warp; _lrTime[b] = (int)w.RaceTime; }
        _lrLanes[b] |= 1u << lane;
        _lrLine[b] = ins.PtxLine;
    }
}
