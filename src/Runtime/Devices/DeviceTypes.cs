using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime;

/// <summary>A device virtual address. Zero is the null pointer.</summary>
[StructLayout(LayoutKind.Sequential)]
public readonly record struct DevicePtr(ulong Address)
{
    public static readonly DevicePtr Null = default;
    public bool IsNull => Address == 0;
    public DevicePtr Offset(long bytes) => new(checked((ulong)((long)Address + bytes)));
    public static DevicePtr operator +(DevicePtr p, long bytes) => p.Offset(bytes);
    public override string ToString() => $"0x{Address:x}";
}

/// <summary>Grid or block dimensions.</summary>
public readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1)
{
    public ulong Count => (ulong)X * Y * Z;
    public static implicit operator Dim3(uint x) => new(x);
    public static implicit operator Dim3(int x) => new(checked((uint)x));
    public override string ToString() => Y == 1 && Z == 1 ? $"{X}" : $"{X},{Y},{Z}";
}

/// <summary>Grid, block and dynamic shared memory of one kernel launch.</summary>
/// <summary>
/// Grid, block and dynamic shared memory of a kernel launch. <paramref name="ProgrammaticDependentLaunch"/>: the kernel
/// calls pdl_wait() (kernels/common.cuh) before it touches anything the previous kernel writes, so on sm_90 and newer
/// it may be launched with programmatic stream serialization and start while that kernel runs (docs/kernels.md,
/// "Programmatic dependent launch"); backends that cannot do this launch it normally. <paramref name="Cooperative"/>: every
/// block of the grid is resident at once (a cooperative launch: the grid must fit on the device, or the launch fails), so
/// blocks may wait for each other through global memory, e.g. at a grid barrier (docs/kernels.md, "Co-resident
/// launches"); the emulator then runs the blocks in turns. A cooperative launch is never programmatic.
/// </summary>
public readonly record struct LaunchConfig(Dim3 Grid, Dim3 Block, int DynamicSharedBytes = 0, bool ProgrammaticDependentLaunch = false, bool Cooperative = false)
{
    /// <summary>
    /// The kernel's CTAs take their tiles in order with an atomic and a tile waits only on tiles taken before it (a
    /// persistent launch, docs/kernels.md "Persistent launches"): it finishes under any schedule. The CUDA backend launches
    /// it as any other; the emulator runs its CTAs one after another unless told otherwise
    /// (<c>EmulatorOptions.ConcurrentTilesInOrder</c>), so its counters are those of the schedule in which nothing waits.
    /// </summary>
    public bool TilesInOrder { get; init; }

    /// <summary>
    /// Set when this launch is one stage of a stage-ordered launch run apart, one launch per stage (the same tiles; each
    /// stage waits on the launch before instead of a counter): the timing model composes such launches back into one
    /// (docs/timing-model.md, section 7). Null for any other launch. Backends run it as any launch.
    /// </summary>
    public LaunchStage? Stage { get; init; }
}

/// <summary>Stage <paramref name="Index"/> of <paramref name="Count"/> of one stage-ordered launch run apart (<see cref="LaunchConfig.Stage"/>).</summary>
public readonly record struct LaunchStage(int Index, int Count);

/// <summary>Which implementation of <see cref="IDevice"/> (or the CPU reference) runs the model.</summary>
public enum BackendKind
{
    /// <summary>CUDA if a driver and a device are present, else the emulator.</summary>
    Auto,
    /// <summary>The real CUDA driver (libcuda.so.1).</summary>
    Cuda,
    /// <summary>The PTX interpreter: runs NVRTC's PTX on the CPU with memory checking and counters.</summary>
    Emulator,
    /// <summary>The plain C# reference of the model math; not an <see cref="IDevice"/>.</summary>
    Cpu,
}

/// <summary>What the model code may ask of a device.</summary>
public sealed record DeviceInfo
{
    public required string Name { get; init; }
    public required BackendKind Backend { get; init; }
    /// <summary>Compute capability, e.g. (9, 0) for sm_90.</summary>
    public required int ComputeMajor { get; init; }
    public required int ComputeMinor { get; init; }
    public required int MultiprocessorCount { get; init; }
    /// <summary>Shared memory a block may use without opting in (48 KiB on every arch we support).</summary>
    public required int SharedMemoryPerBlock { get; init; }
    /// <summary>Shared memory a block may use after opting in with <see cref="IDevice.SetMaxDynamicSharedMemory"/>.</summary>
    public required int SharedMemoryPerBlockOptin { get; init; }
    public required int SharedMemoryPerMultiprocessor { get; init; }
    public required int MaxThreadsPerBlock { get; init; }
    public required int WarpSize { get; init; }
    public required long TotalMemoryBytes { get; init; }
    /// <summary>The memory's peak bandwidth from the driver (2 x memory clock x bus width); null when unknown (the emulator).</summary>
    public double? PeakMemoryBandwidthBytesPerSecond { get; init; }
    /// <summary>Architecture string for NVRTC, e.g. "sm_90".</summary>
    public string Arch => $"sm_{ComputeMajor}{ComputeMinor}";
}

/// <summary>Static attributes of a loaded kernel (from the driver, or from the PTX on the emulator).</summary>
public readonly record struct KernelAttributes(
    int Registers, int StaticSharedBytes, int LocalBytesPerThread, int MaxThreadsPerBlock, int MaxDynamicSharedBytes);

/// <summary>Thrown for device errors: a failed driver call, an emulator fault, out of device memory.</summary>
public class DeviceException : Qwen3CudaException
{
    public DeviceException(string message) : base(message) { }
    public DeviceException(string message, Exception inner) : base(message, inner) { }
    public override ErrorKind Kind => ErrorKind.DeviceFault;
}

/// <summary>Thrown when the device has not enough free memory for an allocation.</summary>
public sealed class DeviceOutOfMemoryException : DeviceException
{
    public long RequestedBytes { get; }
    public DeviceOutOfMemoryException(long requestedBytes, string message) : base(message) => RequestedBytes = requestedBytes;
    public override ErrorKind Kind => ErrorKind.OutOfMemory;
}
