using System.Diagnostics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// <see cref="IDevice"/> on the CPU: runs the PTX of a <see cref="CompiledModule"/> with the warp interpreter,
/// checks every memory access (memcheck), shared-memory races (racecheck) and warp/CTA synchronisation
/// (synccheck), and records counters per launch (<see cref="LastLaunch"/>, <see cref="Launches"/>).
/// Streams execute eagerly and in order: a launch runs to completion before <c>Launch</c> returns.
/// </summary>
public sealed unsafe class EmulatedDevice : IDevice
{
    /// <summary>True where the interpreter's full-warp handlers can use Vector512 (see <see cref="EmulatorOptions.UseAvx512"/>).</summary>
    public static bool Avx512Available => Warp.Avx512Available;

    private readonly DeviceMemory _mem;
    private readonly EmulatorOptions _opt;
    private readonly EmuStream _default;
    private readonly List<LaunchRecord> _launches = [];
    private long _launchId;
    private uint _trafficClock = 1;   // DRAM sectors moved by kernels so far (wraps; 0 is skipped): the L2-residency clock
    private readonly System.Collections.Concurrent.ConcurrentBag<Cta> _ctaPool = [];
    private bool _disposed;

    public EmulatedDevice(EmulatorOptions? options = null)
    {
        _opt = options ?? new EmulatorOptions();
        _mem = new DeviceMemory(_opt.HeapLimitBytes, _opt.Strict);
        _default = new EmuStream(this);
        Info = new DeviceInfo
        {
            Name = _opt.Name, Backend = BackendKind.Emulator, ComputeMajor = _opt.ComputeMajor, ComputeMinor = _opt.ComputeMinor,
            MultiprocessorCount = _opt.MultiprocessorCount, SharedMemoryPerBlock = _opt.SharedMemoryPerBlock,
            SharedMemoryPerBlockOptin = _opt.SharedMemoryPerBlockOptin, SharedMemoryPerMultiprocessor = _opt.SharedMemoryPerMultiprocessor,
            MaxThreadsPerBlock = 1024, WarpSize = 32, TotalMemoryBytes = _opt.ReportedMemoryBytes,
        };
    }

    public EmulatorOptions Options => _opt;
    public DeviceInfo Info { get; }
    public DeviceStream DefaultStream => _default;

    /// <summary>Counters of the most recent kernel launch (null before the first).</summary>
    public LaunchRecord? LastLaunch { get; private set; }
    /// <summary>Every launch since the last <see cref="ClearLaunches"/>, in order.</summary>
    public IReadOnlyList<LaunchRecord> Launches => _launches;
    /// <summary>Every asynchronous copy and memset since the last <see cref="ClearLaunches"/>, in order (graph nodes included).</summary>
    public IReadOnlyList<DeviceOperation> Operations => _operations;
    public void ClearLaunches()
    {
        _launches.Clear();
        _operations.Clear();
    }

    private readonly List<DeviceOperation> _operations = [];
    private bool _replaying;
    private void Note(DeviceOperationKind kind, long bytes) => _operations.Add(new DeviceOperation(kind, bytes, _replaying, _launches.Count));

    // ---------------- memory ----------------

    public DevicePtr Allocate(long bytes)
    {
        ThrowIfDisposed();
        return new DevicePtr(_mem.Allocate(bytes).Start);
    }

    public void Free(DevicePtr ptr)
    {
        ThrowIfDisposed();
        if (ptr.IsNull) return;
        _mem.Free(ptr.Address);
    }

    public (long FreeBytes, long TotalBytes) GetMemoryInfo() =>
        (Math.Max(0, Math.Min(_opt.ReportedMemoryBytes, _opt.HeapLimitBytes) - _mem.LiveBytes), _opt.ReportedMemoryBytes);

    public void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src)
    {
        byte* p = _mem.HostRange(dst.Address, src.Length, "CopyToDevice destination");
        src.CopyTo(new Span<byte>(p, src.Length));
        MarkWritten(dst.Address, src.Length);
    }

    public void CopyToHost(Span<byte> dst, DevicePtr src)
    {
        byte* p = _mem.HostRange(src.Address, dst.Length, "CopyToHost source");
        new ReadOnlySpan<byte>(p, dst.Length).CopyTo(dst);
    }

    public void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream)
    {
        src.CheckRange(srcOffset, bytes, nameof(src));
        if (Capturing(stream) is { } cap) { cap.Add(new CopyToDeviceCommand(dst, src, srcOffset, bytes)); return; }
        Note(DeviceOperationKind.CopyToDevice, bytes);
        CopyToDevice(dst, src.Span.Slice((int)srcOffset, (int)bytes));
    }

    public void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream)
    {
        dst.CheckRange(dstOffset, bytes, nameof(dst));
        if (Capturing(stream) is { } cap) { cap.Add(new CopyToHostCommand(dst, dstOffset, src, bytes)); return; }
        Note(DeviceOperationKind.CopyToHost, bytes);
        CopyToHost(dst.Span.Slice((int)dstOffset, (int)bytes), src);
    }

    public void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream)
    {
        if (Capturing(stream) is { } cap) { cap.Add(new CopyDeviceCommand(dst, src, bytes)); return; }
        Note(DeviceOperationKind.CopyDeviceToDevice, bytes);
        byte* s = _mem.HostRange(src.Address, bytes, "device copy source");
        byte* d = _mem.HostRange(dst.Address, bytes, "device copy destination");
        Buffer.MemoryCopy(s, d, bytes, bytes);
        MarkWritten(dst.Address, bytes);
    }

    public void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream)
    {
        if (Capturing(stream) is { } cap) { cap.Add(new MemsetCommand(dst, value, bytes)); return; }
        Note(DeviceOperationKind.Memset, bytes);
        byte* d = _mem.HostRange(dst.Address, bytes, "memset destination");
        System.Runtime.InteropServices.NativeMemory.Fill(d, (nuint)bytes, value);
        MarkWritten(dst.Address, bytes);
    }

    private void MarkWritten(ulong address, long bytes)
    {
        if (!_opt.Strict || bytes == 0) return;
        var a = _mem.FindLocked(address);
        if (a != null) _mem.MarkWritten(a, address, bytes);
    }

    public PinnedBuffer AllocatePinned(long bytes) => NativePinnedBuffer.Allocate(bytes);

    // ---------------- modules and kernels ----------------

    public DeviceModule LoadModule(CompiledModule module)
    {
        ThrowIfDisposed();
        PtxModule ptx;
        try { ptx = PtxParser.Parse(module.Ptx); }
        catch (PtxLoadException e) { throw new PtxLoadException($"{module.Name}: {e.Message}"); }
        var globals = new List<Allocation>();
        foreach (var g in ptx.Globals)
        {
            var a = _mem.Allocate(Math.Max(g.Size, 1), g.Name);
            g.Address = a.Start;
            if (g.Init != null) new Span<byte>(g.Init).CopyTo(new Span<byte>(a.Host, g.Init.Length));
            else new Span<byte>(a.Host, (int)g.Size).Clear(); // statics without an initializer are zero
            if (_opt.Strict) _mem.MarkWritten(a, a.Start, g.Size);
            globals.Add(a);
        }
        var em = new EmuModule(this, ptx, globals) { SourceName = module.Name, Options = module.Options, OnRelease = gs => { foreach (var a in gs) if (!a.Freed) _mem.Free(a.Start); } };
        // shared layout: module-scope shared (and .func-local shared) first, then each entry's own
        long prefix = 0;
        foreach (var s in ptx.ModuleShared.Concat(ptx.Functions.Values.Where(f => !f.IsEntry).SelectMany(f => f.SharedVars)))
        {
            prefix = LaunchState.AlignL(prefix, s.Align);
            s.Offset = prefix;
            prefix += s.Size;
        }
        bool hasCalls = ptx.Functions.Values.Any(f => f.Code.Any(i => i.Op == Op.Call && i.Callee?.Name != "vprintf"));
        int funcFrames = ptx.Functions.Values.Where(f => !f.IsEntry).Select(f => f.FrameBytes + 16).DefaultIfEmpty(0).Sum();
        foreach (var f in ptx.Entries)
        {
            long off = prefix;
            foreach (var s in f.SharedVars)
            {
                off = LaunchState.AlignL(off, s.Align);
                s.Offset = off;
                off += s.Size;
            }
            int dynAlign = 16;
            foreach (var s in ptx.Globals.Concat(ptx.ModuleShared)) _ = s;
            int stat = (int)off;
            var k = new EmuKernel(this, em, f)
            {
                StaticShared = stat,
                DynamicBase = LaunchState.Align(stat, dynAlign),
                LocalPerThread = LaunchState.Align(f.FrameBytes, 16) + (hasCalls ? Math.Max(funcFrames * 4, 1024) : 0),
            };
            k.MaxDynamicShared = Math.Max(0, _opt.SharedMemoryPerBlock - stat);
            if (stat > _opt.SharedMemoryPerBlock)
                throw new PtxLoadException($"{module.Name}: kernel {f.Name} declares {stat} bytes of static shared memory, more than the {_opt.SharedMemoryPerBlock}-byte limit");
            em.Kernels[f.Name] = k;
        }
        return em;
    }

    public DeviceKernel GetKernel(DeviceModule module, string name)
    {
        var m = DeviceHandle.Own<EmuModule>(module, this, nameof(module));
        if (!m.Kernels.TryGetValue(name, out var k))
            throw new DeviceException($"kernel '{name}' is not in the module (it has: {string.Join(", ", m.Kernels.Keys)}); was it declared extern \"C\"?");
        return k;
    }

    public KernelAttributes GetAttributes(DeviceKernel kernel)
    {
        var k = DeviceHandle.Own<EmuKernel>(kernel, this, nameof(kernel));
        var f = k.Function;
        return new KernelAttributes(f.DeclaredRegisters, k.StaticShared, f.FrameBytes, f.MaxNtid > 0 ? f.MaxNtid : 1024, k.MaxDynamicShared);
    }

    public void SetMaxDynamicSharedMemory(DeviceKernel kernel, int bytes)
    {
        var k = DeviceHandle.Own<EmuKernel>(kernel, this, nameof(kernel));
        if (bytes < 0 || bytes + k.StaticShared > _opt.SharedMemoryPerBlockOptin)
            throw new DeviceException($"SetMaxDynamicSharedMemory({k.Name}, {bytes}): static {k.StaticShared} + dynamic {bytes} bytes exceeds the {_opt.SharedMemoryPerBlockOptin}-byte opt-in limit per block");
        k.MaxDynamicShared = bytes;
    }

    public int MaxActiveBlocksPerMultiprocessor(DeviceKernel kernel, int blockThreads, int dynamicSharedBytes)
    {
        var k = DeviceHandle.Own<EmuKernel>(kernel, this, nameof(kernel));
        if (blockThreads <= 0 || blockThreads > 1024) return 0;
        int byThreads = 2048 / (((blockThreads + 31) / 32) * 32);
        int smem = k.StaticShared + dynamicSharedBytes;
        int bySmem = smem == 0 ? 32 : _opt.SharedMemoryPerMultiprocessor / (smem + 1024);
        int regs = Math.Max(k.Function.DeclaredRegisters, 16);
        int byRegs = 65536 / (regs * ((blockThreads + 31) / 32) * 32);
        return Math.Max(0, Math.Min(32, Math.Min(byThreads, Math.Min(bySmem, byRegs))));
    }

    public void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args)
    {
        ThrowIfDisposed();
        var k = DeviceHandle.Own<EmuKernel>(kernel, this, nameof(kernel));
        var argBytes = new byte[args.Count][];
        for (int i = 0; i < args.Count; i++) argBytes[i] = args.Bytes(i).ToArray();
        Validate(k, config, argBytes);
        if (Capturing(stream) is { } cap) { cap.Add(new LaunchCommand(k, config, argBytes)); return; }
        Run(k, config, argBytes);
    }

    private void Validate(EmuKernel k, in LaunchConfig c, byte[][] args)
    {
        var b = c.Block;
        var g = c.Grid;
        string what = $"launch of {k.Name} with grid ({g}) block ({b})";
        if (b.X == 0 || b.Y == 0 || b.Z == 0 || g.X == 0 || g.Y == 0 || g.Z == 0) throw new DeviceException($"{what}: a dimension is zero");
        if (b.Count > 1024 || b.X > 1024 || b.Y > 1024 || b.Z > 64) throw new DeviceException($"{what}: block exceeds 1024 threads (x, y <= 1024, z <= 64)");
        if (k.Function.MaxNtid > 0 && (int)b.Count > k.Function.MaxNtid) throw new DeviceException($"{what}: block of {b.Count} threads exceeds the kernel's .maxntid {k.Function.MaxNtid}");
        if (g.Y > 65535 || g.Z > 65535 || g.X > int.MaxValue) throw new DeviceException($"{what}: grid too large");
        if (c.DynamicSharedBytes < 0 || c.DynamicSharedBytes > k.MaxDynamicShared)
            throw new DeviceException($"{what}: {c.DynamicSharedBytes} bytes of dynamic shared memory exceeds the kernel's limit of {k.MaxDynamicShared} (use SetMaxDynamicSharedMemory to opt in, up to {_opt.SharedMemoryPerBlockOptin - k.StaticShared})");
        var ps = k.Function.Params;
        if (args.Length != ps.Count) throw new DeviceException($"{what}: {args.Length} arguments given, the kernel takes {ps.Count}");
        for (int i = 0; i < ps.Count; i++)
            if (args[i].Length != ps[i].Size)
                throw new DeviceException($"{what}: argument {i} ({ps[i].Name}) is {args[i].Length} bytes, the kernel parameter is {ps[i].Size} bytes");
    }

    private void Run(EmuKernel k, LaunchConfig c, byte[][] args)
    {
        var f = k.Function;
        var param = new byte[Math.Max(f.ParamBytes, 1)];
        for (int i = 0; i < args.Length; i++) args[i].CopyTo(param, (int)f.Params[i].Offset);
        var L = new LaunchState
        {
            KernelName = k.Name, Module = k.Module.Ptx, Function = f, Grid = c.Grid, Block = c.Block,
            StaticShared = k.StaticShared, DynamicShared = c.DynamicSharedBytes, DynamicBase = k.DynamicBase,
            LocalPerThread = Math.Max(k.LocalPerThread, 16), ParamBytes = param, Memory = _mem, Sequential = _opt.Sequential,
            Watchdog = _opt.Watchdog,
            TrafficStamp = _trafficClock, ResidentWindowSectors = (uint)Math.Min(uint.MaxValue / 2, _opt.L2ResidentBytes / 32),
            RaceCheck = _opt.RaceCheck, Wide512 = _opt.UseAvx512 && Warp.Avx512Available, LaunchId = ++_launchId, CtaPool = _ctaPool, Device = Info, PrintOut = _opt.PrintfOutput ?? Console.Out,
        };
        var sw = Stopwatch.StartNew();
        var counters = L.Run();
        _trafficClock += (uint)counters.DramSectors;
        if (_trafficClock == 0) _trafficClock = 1;
        var rec = LaunchRecord.From(k.Name, c, counters, sw.Elapsed.TotalMilliseconds, k.Module.SourceName, k.Module.Options) with { InGraph = _replaying };
        LastLaunch = rec;
        _launches.Add(rec);
    }

    // ---------------- streams, events, graphs ----------------

    public DeviceStream CreateStream() => new EmuStream(this);
    public void Synchronize(DeviceStream stream) => DeviceHandle.Own<EmuStream>(stream, this, nameof(stream));
    public void Synchronize() { }
    public DeviceEvent CreateEvent(bool timing = true) => new EmuEvent(this);

    public void Record(DeviceEvent evt, DeviceStream stream)
    {
        var e = DeviceHandle.Own<EmuEvent>(evt, this, nameof(evt));
        DeviceHandle.Own<EmuStream>(stream, this, nameof(stream));
        e.Timestamp = Stopwatch.GetTimestamp();
    }

    public void Wait(DeviceStream stream, DeviceEvent evt) => DeviceHandle.Own<EmuEvent>(evt, this, nameof(evt));
    public void Synchronize(DeviceEvent evt) => DeviceHandle.Own<EmuEvent>(evt, this, nameof(evt));

    public float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end)
    {
        var a = DeviceHandle.Own<EmuEvent>(start, this, nameof(start));
        var b = DeviceHandle.Own<EmuEvent>(end, this, nameof(end));
        if (a.Timestamp == null || b.Timestamp == null) throw new DeviceException("ElapsedMilliseconds: an event has not been recorded");
        return (float)Stopwatch.GetElapsedTime(a.Timestamp.Value, b.Timestamp.Value).TotalMilliseconds;
    }

    private List<GraphCommand>? Capturing(DeviceStream stream) => DeviceHandle.Own<EmuStream>(stream, this, nameof(stream)).Capture;

    public void BeginCapture(DeviceStream stream)
    {
        var s = DeviceHandle.Own<EmuStream>(stream, this, nameof(stream));
        if (s.Capture != null) throw new DeviceException("BeginCapture: the stream is already capturing");
        if (ReferenceEquals(s, _default)) throw new DeviceException("BeginCapture: the default stream cannot be captured");
        s.Capture = [];
        s.IsCapturing = true;
    }

    public DeviceGraph EndCapture(DeviceStream stream)
    {
        var s = DeviceHandle.Own<EmuStream>(stream, this, nameof(stream));
        var cmds = s.Capture ?? throw new DeviceException("EndCapture: the stream is not capturing");
        s.Capture = null;
        s.IsCapturing = false;
        return new EmuGraph(this, cmds);
    }

    public DeviceGraphExec Instantiate(DeviceGraph graph) => new EmuGraphExec(this, [.. DeviceHandle.Own<EmuGraph>(graph, this, nameof(graph)).Commands]);

    public bool TryUpdate(DeviceGraphExec exec, DeviceGraph graph)
    {
        var e = DeviceHandle.Own<EmuGraphExec>(exec, this, nameof(exec));
        var g = DeviceHandle.Own<EmuGraph>(graph, this, nameof(graph));
        if (e.Commands.Count != g.Commands.Count) return false;
        for (int i = 0; i < g.Commands.Count; i++)
        {
            if (e.Commands[i].GetType() != g.Commands[i].GetType()) return false;
            if (e.Commands[i] is LaunchCommand a && g.Commands[i] is LaunchCommand b && !ReferenceEquals(a.Kernel, b.Kernel)) return false;
        }
        e.Commands = [.. g.Commands];
        return true;
    }

    public void Launch(DeviceGraphExec exec, DeviceStream stream)
    {
        var e = DeviceHandle.Own<EmuGraphExec>(exec, this, nameof(exec));
        if (Capturing(stream) is { } cap) { cap.AddRange(e.Commands); return; }
        _replaying = true;
        try
        {
            Replay(e.Commands, stream);
        }
        finally { _replaying = false; }
    }

    private void Replay(List<GraphCommand> commands, DeviceStream stream)
    {
        foreach (var c in commands)
        {
            switch (c)
            {
                case LaunchCommand l: Run(l.Kernel, l.Config, l.Args.Select(a => (byte[])a.Clone()).ToArray()); break;
                case CopyToDeviceCommand h: CopyToDeviceAsync(h.Dst, h.Src, h.SrcOffset, h.Bytes, stream); break;
                case CopyToHostCommand d: CopyToHostAsync(d.Dst, d.DstOffset, d.Src, d.Bytes, stream); break;
                case CopyDeviceCommand dd: CopyDeviceToDeviceAsync(dd.Dst, dd.Src, dd.Bytes, stream); break;
                case MemsetCommand m: MemsetAsync(m.Dst, m.Value, m.Bytes, stream); break;
            }
        }
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _mem.Dispose();
    }
}
