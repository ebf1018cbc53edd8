namespace Qwen3Cuda.Runtime;

/// <summary>What ptxas reported for one kernel of a CUBIN build.</summary>
public sealed record PtxasKernelInfo(
    string Kernel, string Arch, int Registers, int SpillStoreBytes, int SpillLoadBytes,
    int StackFrameBytes, int StaticSharedBytes, int ConstantBytes);

/// <summary>
/// The output of compiling one kernels/*.cu file with NVRTC: always the PTX (the emulator runs it, the
/// driver can JIT it), and the CUBIN for <see cref="CubinArch"/> when NVRTC knows that architecture.
/// </summary>
public sealed record CompiledModule
{
    /// <summary>Source file name, e.g. "rmsnorm.cu".</summary>
    public required string Name { get; init; }
    /// <summary>The virtual architecture of the PTX, e.g. "compute_90".</summary>
    public required string PtxArch { get; init; }
    public required string Ptx { get; init; }
    /// <summary>Real architecture of <see cref="Cubin"/> (e.g. "sm_90"), or null when no CUBIN was built.</summary>
    public string? CubinArch { get; init; }
    public byte[]? Cubin { get; init; }
    /// <summary>The NVRTC log (warnings, and the ptxas report for CUBIN builds).</summary>
    public string Log { get; init; } = "";
    public IReadOnlyList<PtxasKernelInfo> PtxasInfo { get; init; } = [];
    /// <summary>The -D constants and options this module was built with.</summary>
    public IReadOnlyList<string> Options { get; init; } = [];
    public double CompileMilliseconds { get; init; }
    public bool FromCache { get; init; }
}
