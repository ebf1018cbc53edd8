using System.Numerics;
using System.Runtime.CompilerServices;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// One thread block: its warps, shared memory (poison-filled), per-thread local memory, barriers and the
/// shared-memory race checker. Reused for many CTAs by one worker thread. Warps run until they block
/// (barrier, exit, or a quantum of instructions for spin loops), then the next warp runs; under interleaved scheduling
/// (<see cref="EmulatorModes.Scheduling"/>) warps take turns of a few instructions in a seeded random order.
/// </summary>
internal sealed unsafe class Cta
{
    public const int Quantum = 10_000;
    public LaunchState Launch { get; private set; }
    public Counters Counters { get; private set; } = new();
    public Warp[] Warps { get; private set; } = [];
    private byte[] _shared = [], _local = [];
    public byte* SharedPtr { get; private set; }
    public byte* LocalPtr { get; private set; }
    public RaceChecker? Race { get; private set; }
    private RaceChecker? _raceKept;   // the last checker, kept while a launch runs without one
    public (uint X, uint Y, uint Z) CtaId;
    public long Linear;
    private readonly int[] _arrived = new int[16];
    private WarpStatus[] _status = [];

    public Cta(LaunchState launch)
    {
        Launch = launch;
        Bind(launch);
    }

    /// <summary>
    /// Prepares this context for a launch: fresh counters; warps, shared memory, local memory and the race
    /// checker are kept from earlier launches when large enough (contexts are pooled per device, so steady-state
    /// launches allocate almost nothing).
    /// </summary>
    [System.Diagnostics.CodeAnalysis.MemberNotNull(nameof(Launch))]
    public void Bind(LaunchState launch)
    {
        Launch = launch;
        Counters = new Counters();
        int threads = (int)launch.Block.Count;
        int nw = (threads + 31) / 32;
        if (Warps.Length != nw)
        {
            var ws = new Warp[nw];
            for (int i = 0; i < nw; i++) ws[i] = i < Warps.Length ? Warps[i] : new Warp(this, i);
            Warps = ws;
            _status = new WarpStatus[nw];
        }
        int sharedNeed = Math.Max(launch.SharedBytes, 16), localNeed = Math.Max(launch.LocalPerThread * nw * 32, 16);
        if (_shared.Length < sharedNeed)
        {
            _shared = GC.AllocateUninitializedArray<byte>(sharedNeed, pinned: true);
            SharedPtr = (byte*)Unsafe.AsPointer(ref _shared[0]);
        }
        if (_local.Length < localNeed)
        {
            _local = GC.AllocateUninitializedArray<byte>(localNeed, pinned: true);
            LocalPtr = (byte*)Unsafe.AsPointer(ref _local[0]);
        }
        // The checker is kept across launches (the emulated decode step alternates a dozen kernels of different shared
        // sizes, and each change of size used to allocate every shadow array again) and grows only for a larger launch.
        if (!launch.RaceCheck || launch.SharedBytes == 0) Race = null;
        else
        {
            var kept = _raceKept;
            if (kept == null || kept.LaneLevel != launch.Interleaved || kept.Capacity < (launch.SharedBytes + 3) / 4)
                _raceKept = kept = new RaceChecker(launch.SharedBytes, launch.Interleaved);
            kept.Use(launch.SharedBytes);
            Race = kept;
        }
    }

    public string BlockText => $"({CtaId.X},{CtaId.Y},{CtaId.Z})";

    /// <summary>Runs CTA <paramref name="linear"/> of the launch to its end.</summary>
    public void Run(long linear)
    {
        Begin(linear);
        while (!Step()) { }
    }

    /// <summary>Sets this context up as CTA <paramref name="linear"/> of the launch: poisoned shared and local memory, warps at the entry.</summary>
    public void Begin(long linear)
    {
        var L = Launch;
        Linear = linear;
        CtaId = ((uint)(linear % L.Grid.X), (uint)(linear / L.Grid.X % L.Grid.Y), (uint)(linear / ((long)L.Grid.X * L.Grid.Y)));
        _shared.AsSpan(0, Math.Max(L.SharedBytes, 16)).Fill(L.Memory.Poison);
        _local.AsSpan(0, Math.Max(L.LocalPerThread * Warps.Length * 32, 16)).Fill(L.Memory.Poison);
        Array.Clear(_arrived);
        Race?.Reset();
        int threads = (int)L.Block.Count;
        for (int i = 0; i < Warps.Length; i++) Warps[i].Reset(L.Function, Math.Min(32, threads - 32 * i));
        Array.Clear(_status);
        if (L.Interleaved)
        {
            _rng = Mix((ulong)L.ScheduleSeed * 0x9E3779B97F4A7C15UL ^ (ulong)L.LaunchId << 20 ^ (ulong)linear) | 1;
            if (_order.Length != Warps.Length) _order = new int[Warps.Length];
            for (int i = 0; i < _order.Length; i++) _order[i] = i;
        }
    }

    /// <summary>
    /// One turn of the block: every warp that is not done or waiting at a barrier runs until it blocks (or for its quantum:
    /// a spinning warp gives the others, and in a co-resident launch the other blocks, their turn), then the barriers that
    /// can be released are. Returns true when every warp has exited (its counters are then added).
    /// </summary>
    public bool Step()
    {
        var L = Launch;
        var status = _status;
        bool its = L.Interleaved;
        while (true)
        {
            bool anyLive = false;
            if (its) for (int i = _order.Length - 1; i > 0; i--) { int j = Random(i + 1); (_order[i], _order[j]) = (_order[j], _order[i]); }
            for (int k = 0; k < Warps.Length; k++)
            {
                int w = its ? _order[k] : k;
                if (status[w] is WarpStatus.Done or WarpStatus.AtBarrier) continue;
                long before = Counters.WarpInstructions;
                status[w] = Warps[w].Run(its ? 1 + Random(48) : Quantum);   // interleaved: warps take turns of 1..48 instructions in a random order
                Warps[w].Instructions += Counters.WarpInstructions - before;
                anyLive = true;
            }
            bool allDone = true;
            for (int w = 0; w < Warps.Length; w++) if (status[w] != WarpStatus.Done) allDone = false;
            if (allDone)
            {
                bool waited = false;
                foreach (var wp in Warps)
                {
                    wp.CloseTrip();
                    var tail = wp.Tail;
                    var head = wp.Head;
                    Counters.AddWarp(wp.Instructions, wp.DramTrips, wp.L2Trips, wp.PreWaitInstructions, wp.PreWaitDramTrips, wp.PreWaitL2Trips,
                        tail.Instructions, tail.DramTrips, tail.L2Trips, head.Instructions, head.DramTrips, head.L2Trips);
                    if (wp.PcCounts is { } counts) L.OfferCriticalWarp(wp.Instructions, Linear * Warps.Length + wp.Index, counts);
                    waited |= wp.Waited;
                }
                if (waited) Counters.WaitingCtas++;
                return true;
            }
            if (TryReleaseBarriers(status)) continue;
            if (!anyLive || AllBlocked(status)) throw Deadlock(status);
            if (L.DeadlineTimestamp != 0 && System.Diagnostics.Stopwatch.GetTimestamp() > L.DeadlineTimestamp) throw WatchdogFault(status);
            if (L.CoResident) return false;
        }
    }

    private ulong _rng;
    private int[] _order = [];

    /// <summary>A pseudo-random number in [0, n) from this block's seeded generator (interleaved scheduling).</summary>
    public int Random(int n)
    {
        _rng ^= _rng << 13; _rng ^= _rng >> 7; _rng ^= _rng << 17;
        return (int)((_rng >> 33) % (ulong)n);
    }

    private static ulong Mix(ulong h)
    {
        h ^= h >> 30; h *= 0xBF58476D1CE4E5B9UL;
        h ^= h >> 27; h *= 0x94D049BB133111EBUL;
        return h ^ (h >> 31);
    }

    private static bool AllBlocked(WarpStatus[] status)
    {
        foreach (var s in status) if (s is WarpStatus.Running or WarpStatus.Yield) return false;
        return true;
    }

    public void Arrive(int id, int count, Warp w)
    {
        _arrived[id] += 32;
        _ = count; _ = w;
    }

    private bool TryReleaseBarriers(WarpStatus[] status)
    {
        bool released = false;
        for (int id = 0; id < 16; id++)
        {
            int waiting = 0, live = 0, count = 0;
            for (int w = 0; w < Warps.Length; w++)
            {
                if (status[w] == WarpStatus.Done) continue;
                live++;
                if (status[w] == WarpStatus.AtBarrier && Warps[w].BarrierId == id) { waiting++; count = Math.Max(count, Warps[w].BarrierCount); }
            }
            if (waiting == 0) continue;
            bool complete = count > 0 ? waiting * 32 + _arrived[id] >= count : waiting == live;
            if (!complete) continue;
            long popc = 0;
            bool any = false, all = true;
            for (int w = 0; w < Warps.Length; w++)
            {
                if (status[w] != WarpStatus.AtBarrier || Warps[w].BarrierId != id) continue;
                uint v = Warps[w].BarRedValue;
                popc += BitOperations.PopCount(v);
                any |= v != 0;
                all &= (v & Warps[w].Live) == Warps[w].Live;
            }
            for (int w = 0; w < Warps.Length; w++)
            {
                if (status[w] != WarpStatus.AtBarrier || Warps[w].BarrierId != id) continue;
                Warps[w].ReleaseBarrier(popc, any, all);
                status[w] = WarpStatus.Running;
            }
            _arrived[id] = 0;
            Counters.Barriers++;
            Race?.NextEpoch();   // a CTA barrier orders everything before it, the lanes of each warp included
            released = true;
        }
        return released;
    }

    private EmulatorFaultException WatchdogFault(WarpStatus[] status)
    {
        var sb = new System.Text.StringBuilder();
        sb.Append($"watchdog: kernel {Launch.KernelName} ran longer than {Launch.Watchdog!.Value.TotalSeconds:G4} s (EmulatorOptions.Watchdog), block {BlockText} still running. ");
        sb.Append(Launch.CoResident
            ? "Every block of this co-resident launch took its turns: a spin-wait on a flag no block sets, or on another lane of the same warp?"
            : "A spin-wait on another block (the emulator may run it later, or never while this one runs: a grid barrier needs LaunchConfig.Cooperative, whose blocks run co-resident) or on another lane of the same warp?");
        for (int w = 0; w < Warps.Length; w++)
        {
            var wp = Warps[w];
            if (status[w] == WarpStatus.Done) { sb.Append($"\n  warp {w}: exited"); continue; }
            var ins = Launch.Function.Code[Math.Min(wp.Pc, Launch.Function.Code.Length - 1)];
            sb.Append($"\n  warp {w}: {(status[w] == WarpStatus.AtBarrier ? $"waits at barrier {wp.BarrierId}" : "running")}, {wp.Where(ins)}: {ins.Text}");
        }
        return new EmulatorFaultException(sb.ToString());
    }

    private EmulatorFaultException Deadlock(WarpStatus[] status)
    {
        var sb = new System.Text.StringBuilder();
        sb.Append($"synccheck: barrier deadlock in kernel {Launch.KernelName}, block {BlockText}: ");
        sb.Append("some warps wait at a barrier that the other warps never reach (a __syncthreads() inside divergent code?)");
        for (int w = 0; w < Warps.Length; w++)
        {
            var wp = Warps[w];
            if (status[w] == WarpStatus.Done) { sb.Append($"\n  warp {w}: exited"); continue; }
            var ins = Launch.Function.Code[Math.Min(wp.Pc, Launch.Function.Code.Length - 1)];
            sb.Append($"\n  warp {w}: {(status[w] == WarpStatus.AtBarrier ? $"waits at barrier {wp.BarrierId}" : "blocked")}, {wp.Where(ins)}: {ins.Text}");
        }
        return new EmulatorFaultException(sb.ToString());
    }
}
