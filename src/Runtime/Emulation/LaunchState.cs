using System.Diagnostics;
using System.Numerics;
using System.Runtime.CompilerServices;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Everything one kernel launch shares across its CTAs (read-only while CTAs run, except counters of sectors).</summary>
internal sealed unsafe class LaunchState
{
    public required string KernelName { get; init; }
    public required PtxModule Module { get; init; }
    public required PtxFunction Function { get; init; }
    public required Dim3 Grid { get; init; }
    public required Dim3 Block { get; init; }
    public required int StaticShared { get; init; }
    public required int DynamicShared { get; init; }
    public required int DynamicBase { get; init; }
    public required int LocalPerThread { get; init; }
    public required byte[] ParamBytes { get; init; }
    public required DeviceMemory Memory { get; init; }
    public required bool Sequential { get; init; }
    public required bool RaceCheck { get; init; }
    /// <summary>Longest run time of the launch (<see cref="EmulatorOptions.Watchdog"/>); null: none.</summary>
    public TimeSpan? Watchdog { get; init; }
    /// <summary>Stopwatch timestamp after which CTAs fail with a watchdog fault (0: none); set when the launch starts.</summary>
    public long DeadlineTimestamp;
    /// <summary>Hardware-like math (<see cref="EmulatorModes.HardwareMath"/>): noisy .approx functions, tensor-core mma accumulation.</summary>
    public bool HardwareMath { get; init; }
    public int MathSeed { get; init; }
    /// <summary>Interleaved scheduling (<see cref="EmulatorModes.Scheduling"/>) and its seed.</summary>
    public bool Interleaved { get; init; }
    public int ScheduleSeed { get; init; }
    /// <summary>Full-warp fast handlers use Vector512 (AVX-512 present and allowed by the options).</summary>
    public bool Wide512 { get; init; }
    public required long LaunchId { get; init; }
    public required DeviceInfo Device { get; init; }
    public TextWriter? PrintOut { get; init; }
    /// <summary>Reusable CTA contexts of the device (shared across launches).</summary>
    public required CtaPool CtaPool { get; init; }
    public int SharedBytes => DynamicBase + DynamicShared;
    /// <summary>The device's DRAM-traffic clock (32-byte sectors, never 0) when this launch started.</summary>
    public uint TrafficStamp { get; init; } = 1;
    /// <summary>Sectors of DRAM traffic after which data an earlier launch touched counts as evicted from L2.</summary>
    public uint ResidentWindowSectors { get; init; }
    /// <summary>The device's persisting clock (sectors prefetched with L2::evict_last so far, never 0) when this launch started.</summary>
    public uint PersistStamp { get; init; } = 1;
    /// <summary>Sectors of later evict_last prefetches after which an evict_last sector counts as evicted (0: not modelled).</summary>
    public uint PersistWindowSectors { get; init; }

    /// <summary>
    /// A cooperative launch (LaunchConfig.Cooperative): every CTA is resident from the start and they take turns, so a
    /// CTA may wait for another through global memory (a grid barrier) and still make progress (docs/emulator.md).
    /// </summary>
    public bool CoResident { get; init; }
    /// <summary>Launched with programmatic stream serialization (LaunchConfig.ProgrammaticDependentLaunch on cc 9.0+).</summary>
    public bool ProgrammaticLaunch { get; init; }
    /// <summary>
    /// Check the programmatic-dependent-launch contract before griddepcontrol.wait (docs/emulator.md): on for a programmatic
    /// launch and whenever the race checker is on.
    /// </summary>
    public bool PdlChecks { get; init; }
    /// <summary>
    /// The first launch id of the current step as the PDL check sees it: launches since the last host synchronisation or
    /// the start of the current graph launch. A pre-wait read of a sector that a launch with an id at or after this wrote
    /// is an error.
    /// </summary>
    public long PdlEpochStart { get; init; } = long.MaxValue;
    /// <summary>Record the critical warp's instructions per PTX instruction (<see cref="EmulatorOptions.CriticalWarpLines"/>).</summary>
    public bool CriticalWarpLines { get; init; }
    private readonly object _criticalLock = new();
    private long _criticalInstructions = -1, _criticalWarp = long.MaxValue;
    private int[]? _criticalCounts;

    /// <summary>
    /// A finished warp's instructions per PC of the kernel's entry code: kept when it executed more instructions than every
    /// warp offered before (on a tie, the lower CTA and warp, so parallel runs pick the same warp).
    /// </summary>
    public void OfferCriticalWarp(long instructions, long warpId, int[] counts)
    {
        lock (_criticalLock)
        {
            if (instructions < _criticalInstructions || (instructions == _criticalInstructions && warpId > _criticalWarp)) return;
            _criticalInstructions = instructions;
            _criticalWarp = warpId;
            _criticalCounts ??= new int[Function.Code.Length];
            Array.Copy(counts, _criticalCounts, _criticalCounts.Length);
        }
    }

    /// <summary>The critical warp's instructions summed per CUDA source line (per PTX line where the PTX has no line info), most first.</summary>
    public IReadOnlyList<InstructionLine> CriticalWarpLineCounts()
    {
        if (_criticalCounts is not { } counts) return [];
        var code = Function.Code;
        var lines = new Dictionary<string, (int FirstPtxLine, long Count)>();
        for (int pc = 0; pc < counts.Length; pc++)
        {
            if (counts[pc] == 0) continue;
            var ins = code[pc];
            string where = ins.SrcLine > 0 && Module.Files.TryGetValue(ins.SrcFile, out var file) ? $"{Path.GetFileName(file)}:{ins.SrcLine}" : $"PTX line {ins.PtxLine}";
            lines[where] = lines.TryGetValue(where, out var v) ? (Math.Min(v.FirstPtxLine, ins.PtxLine), v.Count + counts[pc]) : (ins.PtxLine, counts[pc]);
        }
        return [.. lines.Select(kv => new InstructionLine(kv.Key, kv.Value.FirstPtxLine, kv.Value.Count)).OrderByDescending(l => l.Instructions).ThenBy(l => l.FirstPtxLine)];
    }
    /// <summary>The kernel name of an earlier launch id of the step (for error messages).</summary>
    public Func<long, string>? LaunchName { get; init; }
    /// <summary>The traffic clock at the end of each recent earlier launch, by launch id (read-only during a launch).</summary>
    public IReadOnlyDictionary<long, uint>? LaunchEndClock { get; init; }

    /// <summary>Stamps the sectors of a kernel write of <paramref name="bytes"/> at <paramref name="addr"/> with this launch's id.</summary>
    public void NoteWrite(Allocation a, ulong addr, int bytes)
    {
        var lw = a.LastWriter;
        if (lw == null) lock (a) lw = a.LastWriter ??= new uint[a.Size / 32 + 2];
        uint id = (uint)LaunchId;
        ulong first = (addr - a.Start) >> 5, last = (addr - a.Start + (ulong)Math.Max(bytes, 1) - 1) >> 5;
        for (ulong s = first; s <= last && s < (ulong)lw.Length; s++) lw[s] = id;
    }

    /// <summary>The id of the launch of this step that last wrote a sector of [addr, addr + bytes) in <paramref name="a"/>, or 0.</summary>
    public long StepWriter(Allocation a, ulong addr, int bytes)
    {
        var lw = a.LastWriter;
        if (lw == null) return 0;
        ulong first = (addr - a.Start) >> 5, last = (addr - a.Start + (ulong)Math.Max(bytes, 1) - 1) >> 5;
        for (ulong s = first; s <= last && s < (ulong)lw.Length; s++)
        {
            uint w = lw[s];
            if (w == 0) continue;
            // ids are stamped as their low 32 bits; rebuild the full id nearest below this launch
            long id = (LaunchId & ~0xFFFFFFFFL) | w;
            if (id > LaunchId) id -= 1L << 32;
            if (id >= PdlEpochStart && id < LaunchId) return id;
        }
        return 0;
    }

    /// <summary>Tracks the last touch of each sector of <paramref name="a"/> from now on (a kernel writes there).</summary>
    public static void Track(Allocation a)
    {
        if (a.LastTouch != null) return;
        lock (a) a.LastTouch ??= new uint[a.Size / 32 + 2];
    }

    /// <summary>
    /// Sector <paramref name="index"/> of <paramref name="a"/> is touched for the first time in this launch: stamps it and
    /// returns true when an earlier launch touched it within the last <see cref="ResidentWindowSectors"/> of DRAM traffic
    /// (so it is taken to come from L2, not DRAM). A touch is stamped with its launch's start, except that the write of the
    /// launch that last wrote the sector is taken to happen at that launch's end (a kernel writes its outputs last: its own
    /// traffic does not evict them).
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public bool FirstTouchIsResident(Allocation a, ulong index)
    {
        bool resident = false;
        var lt = a.LastTouch;
        if (lt != null)
        {
            uint prior = lt[index];
            if (prior != 0 && a.LastWriter is { } lw && lw[index] is var w && w != 0 && LaunchEndClock is { } ends)
            {
                long id = (LaunchId & ~0xFFFFFFFFL) | w;   // ids are stamped as their low 32 bits: the full id nearest below
                if (id >= LaunchId) id -= 1L << 32;
                if (ends.TryGetValue(id, out uint end) && (int)(end - prior) > 0) prior = end;   // the later of the two (the clock wraps)
            }
            lt[index] = TrafficStamp;
            resident = prior != 0 && TrafficStamp - prior <= ResidentWindowSectors;
        }
        // prefetched with L2::evict_last by an earlier launch, and fewer than the window of such sectors since
        var pt = a.PersistTouch;
        if (!resident && pt != null && pt[index >> Allocation.PersistPageShift] is { } page)
        {
            uint p = page[index & (Allocation.PersistPageSectors - 1)];
            resident = p != 0 && p != PersistStamp && PersistStamp - p <= PersistWindowSectors;
        }
        return resident;
    }

    /// <summary>
    /// A prefetch with L2::evict_last of [addr, addr + bytes): stamps its sectors with this launch's persisting clock and
    /// counts each once in <see cref="Counters.PersistingSectors"/> (the clock advances by that count after the launch).
    /// </summary>
    public void TouchPersisting(Allocation a, ulong addr, int bytes, Counters c)
    {
        if (PersistWindowSectors == 0) return;
        if (a.PersistTouch == null) lock (a) a.PersistTouch ??= new uint[]?[(a.Size / 32 + 2 + Allocation.PersistPageSectors - 1) >> Allocation.PersistPageShift];
        var pt = a.PersistTouch;
        for (ulong s = (addr - a.Start) >> 5; s <= (addr - a.Start + (ulong)Math.Max(bytes, 1) - 1) >> 5; s++)
        {
            ref var page = ref pt[s >> Allocation.PersistPageShift];
            if (page == null) lock (pt) page ??= new uint[Allocation.PersistPageSectors];
            if (Interlocked.Exchange(ref page[s & (Allocation.PersistPageSectors - 1)], PersistStamp) != PersistStamp) c.PersistingSectors++;
        }
    }
    public byte* ParamPtr;

    /// <summary>The allocation's per-launch bitmap of touched 32-byte sectors (bit i: sector i from its start), cleared on first use in a launch.</summary>
    public ulong[] SectorBits(Allocation a) => ForThisLaunch(a, a.Touched);

    /// <summary>The bits of one of the allocation's per-launch bitmaps, cleared (or sized) when this launch first asks.</summary>
    private ulong[] ForThisLaunch(Allocation a, SectorBitmap map)
    {
        if (Volatile.Read(ref map.Epoch) != LaunchId)
        {
            lock (a)
            {
                if (map.Epoch != LaunchId)
                {
                    long words = (a.Size / 32 + 64) / 64 + 1;
                    if (map.Bits.Length == words) Array.Clear(map.Bits);
                    else map.Bits = new ulong[words];
                    Volatile.Write(ref map.Epoch, LaunchId);
                }
            }
        }
        return map.Bits;
    }

    /// <summary>The bits of bitmap word <paramref name="w"/> that sectors <paramref name="first"/> .. <paramref name="last"/> cover.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static ulong WordMask(ulong w, ulong first, ulong last)
    {
        int from = w == first >> 6 ? (int)(first & 63) : 0;
        int to = w == last >> 6 ? (int)(last & 63) : 63;
        return (to == 63 ? ulong.MaxValue : (1UL << (to + 1)) - 1) & ~((1UL << from) - 1);
    }

    /// <summary>
    /// Marks sectors <paramref name="first"/> .. <paramref name="last"/> (from the allocation's start) as touched by a load,
    /// store or cp.async in this launch, and counts in <see cref="Counters.RereadSectors"/> those such an access had touched
    /// before, each once per launch (word at a time).
    /// </summary>
    public void CountRereads(Allocation a, ulong first, ulong last, Counters c)
    {
        var accessed = ForThisLaunch(a, a.Accessed);
        ulong[]? reread = null;
        bool atomic = !Sequential;
        for (ulong w = first >> 6; w <= last >> 6; w++)
        {
            ulong m = WordMask(w, first, last);
            ref ulong cell = ref accessed[w];
            ulong old = Volatile.Read(ref cell);
            if ((old & m) != m)
            {
                if (atomic) old = Interlocked.Or(ref cell, m);
                else cell = old | m;
            }
            ulong again = old & m;
            if (again == 0) continue;
            reread ??= ForThisLaunch(a, a.Reread);
            ref ulong rcell = ref reread[w];
            ulong rold = Volatile.Read(ref rcell);
            if ((rold & again) == again) continue;
            if (atomic) rold = Interlocked.Or(ref rcell, again);
            else rcell = rold | again;
            c.RereadSectors += BitOperations.PopCount(again & ~rold);
        }
    }

    /// <summary>
    /// Marks the 32-byte sectors of an access in the allocation's per-launch bitmap; counts the new ones. <paramref
    /// name="access"/>: a load, store or cp.async (false: a prefetch), which also counts re-reads (<see cref="CountRereads"/>).
    /// </summary>
    public void TouchSector(Allocation a, ulong addr, int bytes, Counters c, bool access = true)
    {
        if (access) CountRereads(a, (addr - a.Start) >> 5, (addr - a.Start + (ulong)Math.Max(bytes, 1) - 1) >> 5, c);
        var bits = SectorBits(a);
        for (ulong s = (addr - a.Start) >> 5; s <= (addr - a.Start + (ulong)bytes - 1) >> 5; s++)
        {
            if (!MarkNew(bits, s)) continue;
            c.DistinctSectors++;
            if (FirstTouchIsResident(a, s)) c.L2ResidentSectors++;
        }
    }

    /// <summary>
    /// Marks the sectors of an access made before griddepcontrol.wait in the allocation's per-launch pre-wait bitmap and
    /// counts the new ones in <see cref="Counters.PreWaitSectors"/>: every sector some pre-wait access touches counts once,
    /// whatever the order in which the CTAs run (a sector another warp loaded after its wait first still counts).
    /// </summary>
    public void TouchPreWait(Allocation a, ulong addr, int bytes, Counters c)
    {
        var bits = ForThisLaunch(a, a.PreWait);
        for (ulong s = (addr - a.Start) >> 5; s <= (addr - a.Start + (ulong)Math.Max(bytes, 1) - 1) >> 5; s++)
            if (MarkNew(bits, s)) c.PreWaitSectors++;
    }

    /// <summary>Sets bit <paramref name="s"/> of a sector bitmap shared by the CTAs' threads; true if this call set it.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    private static bool MarkNew(ulong[] bits, ulong s)
    {
        ulong m = 1UL << (int)(s & 63);
        ref ulong w = ref bits[s >> 6];
        return (Volatile.Read(ref w) & m) == 0 && (Interlocked.Or(ref w, m) & m) == 0;
    }

    /// <summary>Runs every CTA of the grid (in parallel unless <see cref="Sequential"/>) and returns the merged counters.</summary>
    public Counters Run()
    {
        var pin = System.Runtime.InteropServices.GCHandle.Alloc(ParamBytes, System.Runtime.InteropServices.GCHandleType.Pinned);
        try
        {
            ParamPtr = (byte*)pin.AddrOfPinnedObject();
            DeadlineTimestamp = Watchdog is { } w ? System.Diagnostics.Stopwatch.GetTimestamp() + (long)(w.TotalSeconds * System.Diagnostics.Stopwatch.Frequency) : 0;
            long total = (long)Grid.Count;
            var merged = new Counters();
            if (CoResident) return RunCoResident(total, merged);
            if (Sequential || total == 1 || Environment.ProcessorCount == 1)
            {
                var cta = Rent();
                for (long i = 0; i < total; i++) cta.Run(i);
                merged.Add(cta.Counters);
                CtaPool.Return(cta);
                return merged;
            }
            Exception? first = null;
            var gate = new object();
            Parallel.For(0L, total, Rent, (i, state, cta) =>
            {
                if (state.ShouldExitCurrentIteration) return cta;
                try { cta.Run(i); }
                catch (Exception e)
                {
                    lock (gate) first ??= e;
                    state.Stop();
                }
                return cta;
            }, cta => { lock (gate) merged.Add(cta.Counters); CtaPool.Return(cta); });
            if (first != null) ExceptionDispatchInfoThrow(first);
            return merged;
        }
        finally { pin.Free(); }
    }

    /// <summary>
    /// A co-resident launch: every CTA begins, then the live ones take turns (one <see cref="Cta.Step"/> each per round: its
    /// warps run until they block or spend their quantum) until all have exited. Rounds run the CTAs in parallel unless
    /// <see cref="Sequential"/>; under interleaved scheduling each round visits them in a seeded random order.
    /// </summary>
    private Counters RunCoResident(long total, Counters merged)
    {
        var ctas = new Cta[total];
        for (long i = 0; i < total; i++)
        {
            ctas[i] = Rent();
            ctas[i].Begin(i);
        }
        var live = new List<Cta>(ctas);
        var done = new bool[total];   // per round: which of the live CTAs exited
        var rng = new Random(unchecked((int)(ScheduleSeed * 7919L ^ LaunchId)));
        try
        {
            while (live.Count > 0)
            {
                if (Interleaved) for (int i = live.Count - 1; i > 0; i--) { int j = rng.Next(i + 1); (live[i], live[j]) = (live[j], live[i]); }
                if (Sequential || live.Count == 1 || Environment.ProcessorCount == 1)
                    for (int i = 0; i < live.Count; i++) done[i] = live[i].Step();
                else
                {
                    try { Parallel.For(0, live.Count, i => done[i] = live[i].Step()); }
                    catch (AggregateException e) { ExceptionDispatchInfoThrow(e.InnerExceptions[0]); }
                }
                int n = 0;
                for (int i = 0; i < live.Count; i++) if (!done[i]) live[n++] = live[i];
                live.RemoveRange(n, live.Count - n);
            }
            foreach (var c in ctas) merged.Add(c.Counters);
            return merged;
        }
        finally
        {
            foreach (var c in ctas) CtaPool.Return(c);
        }
    }

    private Cta Rent() => CtaPool.Rent(this);

    [StackTraceHidden]
    private static void ExceptionDispatchInfoThrow(Exception e) => System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(e).Throw();

    public static int Align(int v, int a) => (v + a - 1) / a * a;
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public static long AlignL(long v, int a) => (v + a - 1) / a * a;
}
