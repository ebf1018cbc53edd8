namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Configuration of an <see cref="EmulatedDevice"/>: the GPU it pretends to be and how it checks.</summary>
public sealed record EmulatorOptions
{
    public string Name { get; init; } = "Qwen3Cuda PTX emulator (sm_90)";
    public int ComputeMajor { get; init; } = 9;
    public int ComputeMinor { get; init; }
    public int MultiprocessorCount { get; init; } = 132;
    public int SharedMemoryPerMultiprocessor { get; init; } = 228 * 1024;
    public int SharedMemoryPerBlockOptin { get; init; } = 227 * 1024;
    public int SharedMemoryPerBlock { get; init; } = 48 * 1024;
    /// <summary>Memory reported by <see cref="IDevice.GetMemoryInfo"/> (80 GiB like an H100).</summary>
    public long ReportedMemoryBytes { get; init; } = 80L << 30;
    /// <summary>Host memory the emulated heap may really use (the free memory it reports). 8 GiB: the device model keeps
    /// max(1 GiB, 3%) of the reported 80 GiB free (2.4 GiB), and a 2-layer real-shape slice (3.7 GB) must still load.</summary>
    public long HeapLimitBytes { get; init; } = 8L << 30;
    /// <summary>Report reads of global memory that was never written (initcheck).</summary>
    public bool Strict { get; init; }
    /// <summary>Run CTAs one after another (bit-reproducible float atomics) instead of in parallel.</summary>
    public bool Sequential { get; init; }
    /// <summary>
    /// Run the CTAs of a launch whose tiles are taken in order (<see cref="LaunchConfig.TilesInOrder"/>) in parallel, as
    /// other launches: a CTA may then wait on a tile another CTA is running. Off (the default), such a launch runs its CTAs
    /// one after another, the schedule in which no tile ever waits, so its counters hold no polling and do not depend on
    /// how the host's threads raced (the timing model takes them as that schedule's). Its tests turn this on, and run it
    /// co-resident and interleaved (a cooperative launch), to check the waiting.
    /// </summary>
    public bool ConcurrentTilesInOrder { get; init; }
    /// <summary>Shared-memory race detection (warp granularity).</summary>
    public bool RaceCheck { get; init; } = true;
    /// <summary>
    /// A launch that runs longer than this fails with the PTX lines its warps are at, instead of hanging: a spin-wait
    /// that never ends (on a flag another CTA sets, which the emulator may run later or not at all, or on another lane
    /// of the same warp, which the lowest-PC scheduling may never run). Null: no limit.
    /// </summary>
    public TimeSpan? Watchdog { get; init; } = TimeSpan.FromMinutes(10);
    /// <summary>Full-warp fast handlers use Vector512 where the CPU has AVX-512 (off: Vector256 everywhere; same results).</summary>
    public bool UseAvx512 { get; init; } = true;
    /// <summary>Strictness modes (poison pattern, strict streams, interleaved scheduling, hardware-like math); by default
    /// the process-wide <see cref="EmulatorModes.Ambient"/> (QWEN3CUDA_EMULATOR).</summary>
    public EmulatorModes Modes { get; init; } = EmulatorModes.Ambient;
    /// <summary>
    /// For the counters only: data an earlier launch touched, in memory kernels write, counts as still in L2 (not a DRAM
    /// access, <see cref="LaunchRecord.L2ResidentSectors"/>) while less than this much DRAM traffic happened since
    /// (default: half of an H100's 50 MB L2; a timing-model run sets its GPU's figure).
    /// </summary>
    public long L2ResidentBytes { get; init; } = 25L << 20;
    /// <summary>
    /// For the counters only: sectors prefetched with <c>prefetch.global.L2::evict_last</c> count as still in L2 for a later
    /// launch, whatever the other traffic, while less than this much other evict_last data was prefetched since (the L2
    /// set-aside for persisting lines; default 16 MiB, a timing-model run sets its GPU's figure). 0: such a prefetch is an
    /// ordinary one.
    /// </summary>
    public long L2PersistingBytes { get; init; } = 16L << 20;
    /// <summary>Where device printf output goes (null: Console.Out).</summary>
    public TextWriter? PrintfOutput { get; init; }
    /// <summary>
    /// Launches flagged for programmatic dependent launch run as such (on a device of sm_90 or newer); false: as ordinary
    /// launches, what the CUDA backend does with <c>QWEN3CUDA_PDL=0</c>, so `profile --predict` models the step without it.
    /// The default follows that variable.
    /// </summary>
    public bool ProgrammaticLaunch { get; init; } = Environment.GetEnvironmentVariable("QWEN3CUDA_PDL") != "0";
    /// <summary>
    /// Each launch also records where its critical warp (the one that executed the most instructions) spent them, per
    /// CUDA source line (<see cref="LaunchRecord.CriticalWarpLines"/>; `profile --lines KERNEL`). Off by default: it costs
    /// a counter per executed instruction.
    /// </summary>
    public bool CriticalWarpLines { get; init; }

    /// <summary>An sm_80 (A100-like) configuration.</summary>
    public static EmulatorOptions Sm80 => new()
    {
        Name = "Qwen3Cuda PTX emulator (sm_80)", ComputeMajor = 8, ComputeMinor = 0, MultiprocessorCount = 108,
        SharedMemoryPerMultiprocessor = 164 * 1024, SharedMemoryPerBlockOptin = 163 * 1024, L2ResidentBytes = 20L << 20,
    };
}
