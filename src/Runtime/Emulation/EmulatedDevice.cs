using System.Diagnostics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// <see cref="IDevice"/> on the CPU: runs the PTX of a <see cref="CompiledModule"/> with the warp interpreter,
/// checks every memory access (memcheck), shared-memory races (racecheck) and warp/CTA synchronisation
/// (synccheck), and records counters per launch (<see cref="LastLaunch"/>, <see cref="Launches"/>).
/// By default streams execute eagerly: a launch runs to completion before <c>Launch</c> returns. Under strict
/// streams (<see cref="EmulatorModes.StrictStreams"/>) work is queued and runs only when the host synchronises
/// (<see cref="StreamScheduler"/>), as late as a GPU may run it; see docs/emulator.md.
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
    private uint _persistClock = 1;   // sectors prefetched with L2::evict_last so far (wraps; 0 is skipped): the persisting clock
    private uint _trafficClock = 1;   // DRAM sectors moved by kernels so far (wraps; 0 is skipped): the L2-residency clock
    // the traffic clock at the end of each recent launch (by launch id): a launch's writes are taken to happen at its end
    private readonly Dictionary<long, uint> _launchEndClock = [];
    private readonly Queue<long> _launchEndOrder = new();
    private const int LaunchEndClocksKept = 1 << 16;
    private readonly CtaPool _ctaPool = new();
    private readonly StreamScheduler? _queues;   // strict streams only
    private readonly List<EmuStream> _capturing = [];
    private bool _disposed;

    public EmulatedDevice(EmulatorOptions? options = null)
    {
        _opt = options ?? new EmulatorOptions();
        _mem = new DeviceMemory(_opt.HeapLimitBytes, _opt.Strict, _opt.Modes.Poison);
        _default = new EmuStream(this, 0);
        if (_opt.Modes.StrictStreams) _queues = new StreamScheduler(_opt.Modes.ScheduleSeed);
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

    /// <summary>
    /// Forgets what the emulated L2 holds: no launch after this finds a sector L2-resident because a launch before it
    /// touched or prefetched it (both clocks pass their windows; docs/timing-model.md, section 4). The profiler calls it
    /// before each step it profiles, as the model it predicts (48 layers, gigabytes of traffic per step) leaves nothing of
    /// one step's data in L2 for the next; a short slice would. Call it when nothing is queued (after a synchronisation).
    /// </summary>
    public void EvictL2()
    {
        _trafficClock += (uint)Math.Min(uint.MaxValue / 2, _opt.L2ResidentBytes / 32) + 1;
        if (_trafficClock == 0) _trafficClock = 1;
        _persistClock += (uint)Math.Min(uint.MaxValue / 2, _opt.L2PersistingBytes / 32) + 1;
        if (_persistClock == 0) _persistClock = 1;
    }

    private readonly List<DeviceOperation> _operations = [];
    private bool _replaying;
    private void Note(DeviceOperationKind kind, long bytes) => _operations.Add(new DeviceOperation(kind, bytes, _replaying, _launches.Count, _runningStream));

    // ---------------- memory ----------------

    public DevicePtr Allocate(long bytes)
    {
        ThrowIfDisposed();
        return new DevicePtr(_mem.Allocate(bytes).Start);
    }

    /// <summary>Frees device memory; like cuMemFree it first waits for all queued work (which may still use it).</summary>
    public void Free(DevicePtr ptr)
    {
        ThrowIfDisposed();
        if (ptr.IsNull) return;
        HostWait("Free");
        _mem.Free(ptr.Address);
    }

    public (long FreeBytes, long TotalBytes) GetMemoryInfo() =>
        (Math.Max(0, Math.Min(_opt.ReportedMemoryBytes, _opt.HeapLimitBytes) - _mem.LiveBytes), _opt.ReportedMemoryBytes);

    /// <summary>Synchronous upload: waits for all queued work first (the IDevice contract), then copies.</summary>
    public void CopyToDevice(DevicePtr dst, ReadOnlySpan<byte> src)
    {
        HostWait("CopyToDevice");
        byte* p = _mem.HostRange(dst.Address, src.Length, "CopyToDevice destination");
        src.CopyTo(new Span<byte>(p, src.Length));
        MarkWritten(dst.Address, src.Length);
    }

    /// <summary>Synchronous download: waits for all queued work first, then copies.</summary>
    public void CopyToHost(Span<byte> dst, DevicePtr src)
    {
        HostWait("CopyToHost");
        byte* p = _mem.HostRange(src.Address, dst.Length, "CopyToHost source");
        new ReadOnlySpan<byte>(p, dst.Length).CopyTo(dst);
    }

    /// <summary>
    /// Queues a host-to-device copy that reads <paramref name="src"/> when it runs. Strict streams: the source bytes are
    /// remembered here and compared when the copy runs; a difference means the host rewrote a pinned buffer that a
    /// queued copy still had to read (a race on a GPU) and fails the synchronisation that runs the copy.
    /// </summary>
    public void CopyToDeviceAsync(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, DeviceStream stream)
    {
        src.CheckRange(srcOffset, bytes, nameof(src));
        var s = Stream(stream);
        if (s.Capture is { } cap) { cap.Add(new CopyToDeviceCommand(dst, src, srcOffset, bytes)); return; }
        _mem.HostRange(dst.Address, bytes, "CopyToDeviceAsync destination");
        if (_queues is null) { _runningStream = s.Id; ExecCopyToDevice(dst, src, srcOffset, bytes, null); return; }
        QueueCopyToDevice(s, dst, src, srcOffset, bytes);
    }

    // The strict-stream paths live in their own methods: a lambda's captured parameters would otherwise allocate their
    // closure on every call, eager ones included.
    private void QueueCopyToDevice(EmuStream s, DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes)
    {
        var issued = src.Span.Slice((int)srcOffset, (int)bytes).ToArray();
        Enqueue(s, $"CopyToDeviceAsync of {bytes} bytes to {dst}", () => ExecCopyToDevice(dst, src, srcOffset, bytes, issued));
    }

    /// <summary>Queues a device-to-host copy. Strict streams: the destination range holds poison until the copy runs,
    /// so host code that reads it before synchronising sees garbage, as it may on a GPU.</summary>
    public void CopyToHostAsync(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes, DeviceStream stream)
    {
        dst.CheckRange(dstOffset, bytes, nameof(dst));
        var s = Stream(stream);
        if (s.Capture is { } cap) { cap.Add(new CopyToHostCommand(dst, dstOffset, src, bytes)); return; }
        _mem.HostRange(src.Address, bytes, "CopyToHostAsync source");
        if (_queues is null) { _runningStream = s.Id; ExecCopyToHost(dst, dstOffset, src, bytes); return; }
        QueueCopyToHost(s, dst, dstOffset, src, bytes);
    }

    private void QueueCopyToHost(EmuStream s, PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes)
    {
        dst.Span.Slice((int)dstOffset, (int)bytes).Fill(_mem.Poison);
        Enqueue(s, $"CopyToHostAsync of {bytes} bytes from {src}", () => ExecCopyToHost(dst, dstOffset, src, bytes));
    }

    public void CopyDeviceToDeviceAsync(DevicePtr dst, DevicePtr src, long bytes, DeviceStream stream)
    {
        var s = Stream(stream);
        if (s.Capture is { } cap) { cap.Add(new CopyDeviceCommand(dst, src, bytes)); return; }
        Submit(s, $"CopyDeviceToDeviceAsync of {bytes} bytes", () => ExecCopyDevice(dst, src, bytes));
    }

    public void MemsetAsync(DevicePtr dst, byte value, long bytes, DeviceStream stream)
    {
        var s = Stream(stream);
        if (s.Capture is { } cap) { cap.Add(new MemsetCommand(dst, value, bytes)); return; }
        Submit(s, $"MemsetAsync of {bytes} bytes at {dst}", () => ExecMemset(dst, value, bytes));
    }

    private void ExecCopyToDevice(DevicePtr dst, PinnedBuffer src, long srcOffset, long bytes, byte[]? issued)
    {
        if (src.IsDisposed)
            throw new DeviceException($"strict streams: the pinned buffer of a queued CopyToDeviceAsync ({bytes} bytes to {dst}) was freed before the copy ran; keep it alive until an event or a synchronisation says the copy is done");
        var now = src.Span.Slice((int)srcOffset, (int)bytes);
        if (issued is not null && !now.SequenceEqual(issued))
        {
            int at = 0;
            while (now[at] == issued[at]) at++;
            throw new DeviceException($"strict streams: the host changed pinned buffer bytes after CopyToDeviceAsync queued a copy of them and before the copy ran " +
                $"(copy of {bytes} bytes from pinned offset {srcOffset} to {dst}; first changed byte at pinned offset {srcOffset + at}: 0x{issued[at]:x2} when queued, 0x{now[at]:x2} now). " +
                "On a GPU the copy may read either; wait for an event recorded after the copy before rewriting the buffer, or use another buffer.");
        }
        Note(DeviceOperationKind.CopyToDevice, bytes);
        byte* p = _mem.HostRange(dst.Address, bytes, "CopyToDeviceAsync destination");
        now.CopyTo(new Span<byte>(p, (int)bytes));
        MarkWritten(dst.Address, bytes);
    }

    private void ExecCopyToHost(PinnedBuffer dst, long dstOffset, DevicePtr src, long bytes)
    {
        if (dst.IsDisposed) throw new DeviceException($"strict streams: the pinned buffer of a queued CopyToHostAsync ({bytes} bytes from {src}) was freed before the copy ran");
        Note(DeviceOperationKind.CopyToHost, bytes);
        byte* p = _mem.HostRange(src.Address, bytes, "CopyToHostAsync source");
        new ReadOnlySpan<byte>(p, (int)bytes).CopyTo(dst.Span.Slice((int)dstOffset, (int)bytes));
    }

    private void ExecCopyDevice(DevicePtr dst, DevicePtr src, long bytes)
    {
        Note(DeviceOperationKind.CopyDeviceToDevice, bytes);
        byte* s = _mem.HostRange(src.Address, bytes, "device copy source");
        byte* d = _mem.HostRange(dst.Address, bytes, "device copy destination");
        Buffer.MemoryCopy(s, d, bytes, bytes);
        MarkWritten(dst.Address, bytes);
    }

    private void ExecMemset(DevicePtr dst, byte value, long bytes)
    {
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

    /// <summary>Host memory for async copies; like cuMemAllocHost it is not zeroed: it starts poison-filled.</summary>
    public PinnedBuffer AllocatePinned(long bytes)
    {
        var b = NativePinnedBuffer.Allocate(bytes);
        unsafe { System.Runtime.InteropServices.NativeMemory.Fill((void*)b.Pointer, (nuint)bytes, _mem.Poison); }
        return b;
    }

    // ---------------- modules and kernels ----------------

    public DeviceModule LoadModule(CompiledModule module)
    {
        ThrowIfDisposed();
        PtxModule ptx;
        try { ptx = PtxParser.ParseShared(module.Ptx); }
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
        var em = new EmuModule(this, ptx, globals)
        {
            SourceName = module.Name, Options = module.Options,
            OnRelease = gs =>
            {
                if (_queues is not null && _capturing.Count == 0 && !_disposed) _queues.DrainAll();   // queued launches of the module run first
                foreach (var a in gs) if (!a.Freed) _mem.Free(a.Start);
            },
        };
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
        bool funcWaits = ptx.Functions.Values.Any(f => !f.IsEntry && f.Code.Any(i => i.Op == Op.GridDepWait));
        foreach (var f in ptx.Entries)
        {
            f.HasGridDepWait = funcWaits || f.Code.Any(i => i.Op == Op.GridDepWait);
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
        var s = Stream(stream);
        if (s.Capture is { } cap) { cap.Add(new LaunchCommand(k, config, argBytes)); return; }
        var c = config;
        Submit(s, $"kernel {k.Name}", () => Run(k, c, argBytes));
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
        if (c.ProgrammaticDependentLaunch && !c.Cooperative && Info.ComputeMajor >= 9 && !k.Function.HasGridDepWait)
            throw new DeviceException($"{what}: programmatic dependent launch of a kernel whose PTX has no griddepcontrol.wait (pdl_wait()): it could read its predecessor's output before that kernel finished (docs/kernels.md, \"Programmatic dependent launch\"; PTX {k.Module.Ptx.Target})");
        if (c.Cooperative)
        {
            // the occupancy rules on threads, shared memory (1 KiB reserved per block) and 32 blocks per SM; registers are
            // not known to the emulator (the CUDA driver counts them too)
            int threads = (int)b.Count, shared = k.StaticShared + c.DynamicSharedBytes;
            int maxThreadsPerSm = Info.ComputeMajor == 8 && Info.ComputeMinor > 0 ? 1536 : 2048;
            int perSm = Math.Min(32, maxThreadsPerSm / threads);
            if (shared > 0) perSm = Math.Min(perSm, _opt.SharedMemoryPerMultiprocessor / (shared + 1024));
            long fit = (long)perSm * Info.MultiprocessorCount;
            if ((long)g.Count > fit)
                throw new DeviceException($"{what}: a cooperative launch needs every block resident at once, and at most {fit} fit ({Info.MultiprocessorCount} SMs x {perSm} blocks of {threads} threads and {shared} bytes of shared memory)");
        }
        var ps = k.Function.Params;
        if (args.Length != ps.Count) throw new DeviceException($"{what}: {args.Length} arguments given, the kernel takes {ps.Count}");
        for (int i = 0; i < ps.Count; i++)
            if (args[i].Length != ps[i].Size)
                throw new DeviceException($"{what}: argument {i} ({ps[i].Name}) is {args[i].Length} bytes, the kernel parameter is {ps[i].Size} bytes");
    }

    private void Run(EmuKernel k, LaunchConfig c, byte[][] args)
    {
        var f = k.Function;
        bool programmatic = c.ProgrammaticDependentLaunch && !c.Cooperative && Info.ComputeMajor >= 9 && _opt.ProgrammaticLaunch;
        var param = new byte[Math.Max(f.ParamBytes, 1)];
        for (int i = 0; i < args.Length; i++) args[i].CopyTo(param, (int)f.Params[i].Offset);
        var L = new LaunchState
        {
            KernelName = k.Name, Module = k.Module.Ptx, Function = f, Grid = c.Grid, Block = c.Block,
            StaticShared = k.StaticShared, DynamicShared = c.DynamicSharedBytes, DynamicBase = k.DynamicBase,
            LocalPerThread = Math.Max(k.LocalPerThread, 16), ParamBytes = param, Memory = _mem,
            Sequential = _opt.Sequential || (c.TilesInOrder && !c.Cooperative && !_opt.ConcurrentTilesInOrder),
            Watchdog = _opt.Watchdog, HardwareMath = _opt.Modes.HardwareMath, MathSeed = _opt.Modes.MathSeed,
            Interleaved = _opt.Modes.Interleaved, ScheduleSeed = _opt.Modes.ScheduleSeed,
            TrafficStamp = _trafficClock, LaunchEndClock = _launchEndClock, ResidentWindowSectors = (uint)Math.Min(uint.MaxValue / 2, _opt.L2ResidentBytes / 32),
            PersistStamp = _persistClock, PersistWindowSectors = (uint)Math.Min(uint.MaxValue / 2, _opt.L2PersistingBytes / 32),
            RaceCheck = _opt.RaceCheck, Wide512 = _opt.UseAvx512 && Warp.Avx512Available, LaunchId = ++_launchId, CtaPool = _ctaPool, Device = Info, PrintOut = _opt.PrintfOutput ?? Console.Out,
            CoResident = c.Cooperative, ProgrammaticLaunch = programmatic, CriticalWarpLines = _opt.CriticalWarpLines, PdlChecks = programmatic || _opt.RaceCheck, PdlEpochStart = _pdlEpochStart, LaunchName = _launchName,
        };
        _stepKernels[L.LaunchId] = k.Name;
        var sw = Stopwatch.StartNew();
        var counters = L.Run();
        _trafficClock += (uint)counters.DramSectors;
        if (_trafficClock == 0) _trafficClock = 1;
        _launchEndClock[L.LaunchId] = _trafficClock;
        _launchEndOrder.Enqueue(L.LaunchId);
        if (_launchEndOrder.Count > LaunchEndClocksKept) _launchEndClock.Remove(_launchEndOrder.Dequeue());
        _persistClock += (uint)counters.PersistingSectors;
        if (_persistClock == 0) _persistClock = 1;
        var rec = LaunchRecord.From(k.Name, c, counters, sw.Elapsed.TotalMilliseconds, k.Module.SourceName, k.Module.Options) with { InGraph = _replaying, ProgrammaticLaunch = programmatic, CriticalWarpLines = L.CriticalWarpLineCounts(), Stream = _runningStream };
        LastLaunch = rec;
        _launches.Add(rec);
    }

    // ---------------- programmatic dependent launch: the step ----------------

    /// <summary>First launch id of the current step (launches since the last host synchronisation or graph launch start).</summary>
    private long _pdlEpochStart = 1;
    /// <summary>Kernel names of the current step's launches, by launch id (for the PDL check's messages).</summary>
    private readonly Dictionary<long, string> _stepKernels = [];
    private Func<long, string>? _launchNameFunc;
    private Func<long, string> _launchName => _launchNameFunc ??= id => _stepKernels.TryGetValue(id, out var n) ? n : "?";

    /// <summary>A new step begins for the PDL check (docs/emulator.md): earlier launches' writes may be read before a wait.</summary>
    private void BeginPdlStep()
    {
        _pdlEpochStart = _launchId + 1;
        _stepKernels.Clear();
    }

    // ---------------- streams, events, graphs ----------------

    private EmuStream Stream(DeviceStream stream) => DeviceHandle.Own<EmuStream>(stream, this, nameof(stream));

    /// <summary>Runs work now (eager streams) or queues it on the stream (strict streams).</summary>
    private void Submit(EmuStream s, string what, Action work)
    {
        if (_queues is null) { _runningStream = s.Id; work(); }
        else Enqueue(s, what, work);
    }

    private void Enqueue(EmuStream s, string what, Action work) =>
        _queues!.Enqueue(s, new RunWork { What = what, Run = () => { _runningStream = s.Id; work(); } });

    /// <summary>A host call that waits for the whole device (synchronous copies, Free, device sync): runs every queue.
    /// Strict streams reject it during a capture, as CUDA's thread-local capture mode does.</summary>
    private void HostWait(string what)
    {
        if (_queues is null) { BeginPdlStep(); return; }
        CheckNotCapturing(what);
        _queues.DrainAll();
        BeginPdlStep();
    }

    private void CheckNotCapturing(string what)
    {
        if (_capturing.Count > 0)
            throw new DeviceException($"{what} while a stream is capturing a graph: CUDA does not allow a call that waits for the device during stream capture (thread-local capture mode)");
    }

    public DeviceStream CreateStream() => new EmuStream(this, ++_streamIds);
    private int _streamIds;
    /// <summary>The stream whose work runs now (operations and launches record it).</summary>
    private int _runningStream;

    public void Synchronize(DeviceStream stream)
    {
        var s = Stream(stream);
        if (_queues is null) { BeginPdlStep(); return; }
        if (s.Capture is not null) throw new DeviceException("Synchronize: the stream is capturing a graph (CUDA does not allow synchronising a capturing stream)");
        CheckNotCapturing("Synchronize(stream)");
        _queues.Drain(s);
        BeginPdlStep();
    }

    public void Synchronize() => HostWait("Synchronize()");

    public DeviceEvent CreateEvent(bool timing = true) => new EmuEvent(this);

    public void Record(DeviceEvent evt, DeviceStream stream)
    {
        var e = DeviceHandle.Own<EmuEvent>(evt, this, nameof(evt));
        var s = Stream(stream);
        if (s.Capture is not null) return;   // an event inside a capture orders nothing the emulator runs
        if (_queues is null)
        {
            // Eager streams: the record completes now; an event re-recorded on the same stream reuses its mark (no allocation per step).
            var done = e.Last is { Done: true } old && old.Stream == s ? old : new EventMark(s);
            done.Timestamp = Stopwatch.GetTimestamp();
            done.Done = true;
            e.Last = done;
            return;
        }
        var mark = new EventMark(s);
        e.Last = mark;
        _queues.Enqueue(s, new RecordWork { What = "event record", Mark = mark });
    }

    /// <summary>Work issued to <paramref name="stream"/> after this call runs after the event's latest record (none: no wait).</summary>
    public void Wait(DeviceStream stream, DeviceEvent evt)
    {
        var e = DeviceHandle.Own<EmuEvent>(evt, this, nameof(evt));
        var s = Stream(stream);
        if (_queues is null || s.Capture is not null || e.Last is not { Done: false } mark) return;
        _queues.Enqueue(s, new WaitWork { What = "event wait", Mark = mark });
    }

    public void Synchronize(DeviceEvent evt)
    {
        var e = DeviceHandle.Own<EmuEvent>(evt, this, nameof(evt));
        if (_queues is null || e.Last is null) { BeginPdlStep(); return; }
        CheckNotCapturing("Synchronize(event)");
        _queues.RunUntil(e.Last);
        BeginPdlStep();
    }

    public float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end)
    {
        var a = DeviceHandle.Own<EmuEvent>(start, this, nameof(start));
        var b = DeviceHandle.Own<EmuEvent>(end, this, nameof(end));
        if (a.Last == null || b.Last == null) throw new DeviceException("ElapsedMilliseconds: an event has not been recorded");
        if (!a.Last.Done || !b.Last.Done) throw new DeviceException("ElapsedMilliseconds: an event has not completed yet (synchronise on it first; CUDA returns CUDA_ERROR_NOT_READY)");
        return (float)Stopwatch.GetElapsedTime(a.Last.Timestamp, b.Last.Timestamp).TotalMilliseconds;
    }

    public void BeginCapture(DeviceStream stream)
    {
        var s = Stream(stream);
        if (s.Capture != null) throw new DeviceException("BeginCapture: the stream is already capturing");
        if (ReferenceEquals(s, _default)) throw new DeviceException("BeginCapture: the default stream cannot be captured");
        s.Capture = [];
        s.IsCapturing = true;
        _capturing.Add(s);
    }

    public DeviceGraph EndCapture(DeviceStream stream)
    {
        var s = Stream(stream);
        var cmds = s.Capture ?? throw new DeviceException("EndCapture: the stream is not capturing");
        s.Capture = null;
        s.IsCapturing = false;
        _capturing.Remove(s);
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

    /// <summary>Runs (eager) or queues (strict) the graph's nodes in capture order. Strict streams: the launch uses the
    /// graph as it is now (a later TryUpdate affects later launches only), and its host-to-device nodes read their
    /// pinned sources when they run, checked against the bytes at launch like <see cref="CopyToDeviceAsync"/>.</summary>
    public void Launch(DeviceGraphExec exec, DeviceStream stream)
    {
        var e = DeviceHandle.Own<EmuGraphExec>(exec, this, nameof(exec));
        var s = Stream(stream);
        if (s.Capture is { } cap) { cap.AddRange(e.Commands); return; }
        var commands = e.Commands;
        byte[]?[]? issued = null;
        if (_queues is not null)
        {
            issued = new byte[]?[commands.Count];
            for (int i = 0; i < commands.Count; i++)
            {
                if (commands[i] is CopyToDeviceCommand h && !h.Src.IsDisposed) issued[i] = h.Src.Span.Slice((int)h.SrcOffset, (int)h.Bytes).ToArray();
                if (commands[i] is CopyToHostCommand d && !d.Dst.IsDisposed) d.Dst.Span.Slice((int)d.DstOffset, (int)d.Bytes).Fill(_mem.Poison);
            }
        }
        Submit(s, $"graph of {commands.Count} nodes", () =>
        {
            BeginPdlStep();
            _replaying = true;
            try
            {
                for (int i = 0; i < commands.Count; i++)
                {
                    switch (commands[i])
                    {
                        case LaunchCommand l: Run(l.Kernel, l.Config, l.Args.Select(a => (byte[])a.Clone()).ToArray()); break;
                        case CopyToDeviceCommand h: ExecCopyToDevice(h.Dst, h.Src, h.SrcOffset, h.Bytes, issued?[i]); break;
                        case CopyToHostCommand d: ExecCopyToHost(d.Dst, d.DstOffset, d.Src, d.Bytes); break;
                        case CopyDeviceCommand dd: ExecCopyDevice(dd.Dst, dd.Src, dd.Bytes); break;
                        case MemsetCommand m: ExecMemset(m.Dst, m.Value, m.Bytes); break;
                    }
                }
            }
            finally { _replaying = false; }
        });
    }

    private void ThrowIfDisposed() => ObjectDisposedException.ThrowIf(_disposed, this);

    /// <summary>Frees everything; work still queued (strict streams) is dropped.</summary>
    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        _queues?.Discard();
        _mem.Dispose();
    }
}
