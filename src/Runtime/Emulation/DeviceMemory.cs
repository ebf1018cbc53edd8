using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// A per-launch bitmap of an allocation's 32-byte sectors (bit i: sector i from its start). It is kept from launch to
/// launch and cleared when a launch first uses it (LaunchState.ForThisLaunch); a new array per launch was megabytes of
/// garbage a launch.
/// </summary>
internal sealed class SectorBitmap
{
    public ulong[] Bits = [];
    /// <summary>The launch the bits belong to (-1: none yet).</summary>
    public long Epoch = -1;

    /// <summary>Frees the bits (the allocation was freed or its device disposed).</summary>
    public void Drop() { Bits = []; Epoch = -1; }
}

/// <summary>One device allocation: a device address range backed by native memory.</summary>
internal sealed unsafe class Allocation
{
    public required ulong Start { get; init; }
    public required long Size { get; init; }
    public byte* Host { get; set; }
    public bool Freed { get; set; }
    public string Label { get; init; } = "";
    /// <summary>Strict mode: one bit per byte, set once the byte is written.</summary>
    public ulong[]? Written { get; set; }
    /// <summary>The sectors touched in the current launch (distinct-sector counter, LaunchState.SectorBits).</summary>
    public SectorBitmap Touched { get; } = new();
    /// <summary>The sectors an access before griddepcontrol.wait touched in the current launch (LaunchState.TouchPreWait).</summary>
    public SectorBitmap PreWait { get; } = new();
    /// <summary>The sectors a load, store or cp.async touched in the current launch (prefetches not: LaunchState.CountRereads).</summary>
    public SectorBitmap Accessed { get; } = new();
    /// <summary>The sectors such an access touched again in the current launch (each counted once in RereadSectors).</summary>
    public SectorBitmap Reread { get; } = new();
    /// <summary>
    /// Per 32-byte sector: the device's DRAM-traffic clock when a kernel last touched it (0: never). Allocated when a
    /// kernel first writes here: data kernels produce (activations, KV, partials) may still be in L2 when the next kernels
    /// read it; weights, written only by copies, are not tracked (see <see cref="LaunchState.FirstTouchIsResident"/>).
    /// </summary>
    public uint[]? LastTouch { get; set; }
    /// <summary>
    /// Per 32-byte sector: the device's persisting clock when a prefetch with L2::evict_last last touched it (0: never),
    /// in pages of <see cref="PersistPageSectors"/> sectors allocated when a prefetch first stamps one (a few MiB fetched
    /// ahead in a weight arena of GiBs; see <see cref="LaunchState.FirstTouchIsResident"/>). Null until the first.
    /// </summary>
    public uint[]?[]? PersistTouch { get; set; }
    public const int PersistPageShift = 16, PersistPageSectors = 1 << PersistPageShift;
    /// <summary>
    /// Per 32-byte sector: the id (low 32 bits) of the last kernel launch that stored or did an atomic there (0: none).
    /// Allocated at the first kernel write; the programmatic-dependent-launch check (<see cref="LaunchState.PdlEpochStart"/>)
    /// reads it.
    /// </summary>
    public uint[]? LastWriter { get; set; }
    public ulong End => Start + (ulong)Size;
    public override string ToString() => $"{(Freed ? "freed " : "")}allocation {Label}[0x{Start:x}, 0x{End:x}) of {Size} bytes";
}

/// <summary>
/// The emulated global memory: device addresses start at 0x7f00_0000_0000, every allocation gets a fresh,
/// 256-byte aligned range (freed ranges are never reused: quarantine), native backing filled with a poison
/// pattern (NaN or large finite bytes, <see cref="EmulatorModes.PoisonSeed"/>), and a sorted table that every access is checked against.
/// </summary>
internal sealed unsafe class DeviceMemory : IDisposable
{
    public const ulong HeapBase = 0x7f00_0000_0000UL;
    /// <summary>The byte fresh allocations are filled with (<see cref="EmulatorModes.PoisonByte"/>).</summary>
    public byte Poison { get; }
    private readonly List<Allocation> _table = []; // sorted by Start (addresses only grow)
    private readonly object _lock = new();
    private ulong _next = HeapBase;
    private readonly bool _strict;
    public long LiveBytes { get; private set; }
    public long LimitBytes { get; }

    public DeviceMemory(long limitBytes, bool strict, byte poison = 0xFF)
    {
        Poison = poison;
        LimitBytes = limitBytes;
        _strict = strict;
    }

    public Allocation Allocate(long bytes, string label = "")
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        lock (_lock)
        {
            if (LiveBytes + bytes > LimitBytes)
                throw new DeviceOutOfMemoryException(bytes, $"emulated device out of memory: {bytes} bytes requested, {LimitBytes - LiveBytes} of the {LimitBytes}-byte heap limit free");
            var a = new Allocation { Start = _next, Size = bytes, Label = label };
            a.Host = (byte*)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 256);
            new Span<byte>(a.Host, (int)Math.Min(bytes, int.MaxValue)).Fill(Poison);
            if (bytes > int.MaxValue) NativeMemory.Fill(a.Host, (nuint)bytes, Poison);
            if (_strict) a.Written = new ulong[(bytes + 63) / 64];
            _next += ((ulong)Math.Max(bytes, 1) + 255 + 4096) & ~255UL; // a gap between allocations: OOB never lands in a neighbour
            _table.Add(a);
            LiveBytes += bytes;
            // the GC does not see native memory: tell it, so that garbage (an undisposed device's bookkeeping) is
            // collected before a large emulated heap and the managed one together exhaust the machine
            GC.AddMemoryPressure(Math.Max(bytes, 1));
            return a;
        }
    }

    public void Free(ulong address)
    {
        lock (_lock)
        {
            var a = Find(address);
            if (a == null || a.Start != address)
                throw new DeviceException($"free of 0x{address:x}, which is not the start of an allocation{Describe(address)}");
            if (a.Freed) throw new DeviceException($"double free of 0x{address:x} ({a})");
            Release(a);
            LiveBytes -= a.Size;
        }
    }

    /// <summary>
    /// Frees an allocation's native memory (and its share of the GC's memory pressure) and drops its per-sector
    /// bookkeeping, up to a quarter of its size in arrays; the quarantined allocation keeps only its range.
    /// </summary>
    private static void Release(Allocation a)
    {
        if (!a.Freed && a.Host != null)
        {
            NativeMemory.AlignedFree(a.Host);
            GC.RemoveMemoryPressure(Math.Max(a.Size, 1));
        }
        a.Freed = true;
        a.Host = null;
        a.Written = null;
        a.Touched.Drop();
        a.PreWait.Drop();
        a.Accessed.Drop();
        a.Reread.Drop();
        a.LastTouch = null;
        a.LastWriter = null;
        a.PersistTouch = null;
    }

    /// <summary>The allocation whose range (or, for 0-byte ones, start) contains <paramref name="address"/>, live or freed.</summary>
    public Allocation? Find(ulong address)
    {
        var t = _table;
        int lo = 0, hi = t.Count - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            var a = t[mid];
            if (address < a.Start) hi = mid - 1;
            else if (address >= a.Start + (ulong)Math.Max(a.Size, 1)) lo = mid + 1;
            else return a;
        }
        return null;
    }

    /// <summary>" (nearest: ...)" text naming the allocation nearest to an address, with the offset.</summary>
    public string Describe(ulong address)
    {
        lock (_lock)
        {
            Allocation? best = null;
            ulong bestDist = ulong.MaxValue;
            foreach (var a in _table)
            {
                ulong d = address < a.Start ? a.Start - address : address >= a.End ? address - a.End + 1 : 0;
                if (d < bestDist || (d == bestDist && !a.Freed)) { best = a; bestDist = d; }
            }
            if (best == null) return " (no allocations exist)";
            long off = (long)(address - best.Start);
            return $" (nearest: {best}, offset {off})";
        }
    }

    /// <summary>Checked host pointer for a host-side copy; throws with a clear message when outside a live allocation.</summary>
    public byte* HostRange(ulong address, long bytes, string what)
    {
        Allocation? a;
        lock (_lock) a = Find(address);
        if (a == null || a.Freed || address + (ulong)bytes > a.End)
            throw new DeviceException($"{what}: [0x{address:x}, +{bytes}) is not inside a live allocation{Describe(address)}");
        return a.Host + (address - a.Start);
    }

    public Allocation? FindLocked(ulong address)
    {
        lock (_lock) return Find(address);
    }

    public void MarkWritten(Allocation a, ulong address, long bytes)
    {
        var w = a.Written;
        if (w == null) return;
        long off = (long)(address - a.Start);
        for (long i = off; i < off + bytes; i++) Interlocked.Or(ref w[i >> 6], 1UL << (int)(i & 63));
    }

    /// <summary>Strict mode: the first offset in the range never written, or -1.</summary>
    public static long FirstUnwritten(Allocation a, ulong address, int bytes)
    {
        var w = a.Written;
        if (w == null) return -1;
        long off = (long)(address - a.Start);
        for (long i = off; i < off + bytes; i++)
            if ((Volatile.Read(ref w[i >> 6]) & (1UL << (int)(i & 63))) == 0) return i;
        return -1;
    }

    public List<Allocation> Live()
    {
        lock (_lock) return _table.Where(a => !a.Freed).ToList();
    }

    public void Dispose()
    {
        lock (_lock)
        {
            foreach (var a in _table) Release(a);
            LiveBytes = 0;
        }
    }
}
