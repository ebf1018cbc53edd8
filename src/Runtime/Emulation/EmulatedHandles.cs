namespace Qwen3Cuda.Runtime.Emulation;

internal sealed class EmuModule(IDevice owner, PtxModule module, List<Allocation> globals) : DeviceModule(owner)
{
    public PtxModule Ptx { get; } = module;
    /// <summary>The compiled module's file name and NVRTC options (for the launch records).</summary>
    public string SourceName { get; init; } = "";
    public IReadOnlyList<string> Options { get; init; } = [];
    public Dictionary<string, EmuKernel> Kernels { get; } = new(StringComparer.Ordinal);
    public override IReadOnlyList<string> KernelNames => Kernels.Keys.ToList();
    public Action<List<Allocation>>? OnRelease { get; set; }
    protected override void Release() => OnRelease?.Invoke(globals);
}

internal sealed class EmuKernel(IDevice owner, EmuModule module, PtxFunction fn) : DeviceKernel(owner, fn.Name)
{
    public EmuModule Module { get; } = module;
    public PtxFunction Function { get; } = fn;
    public int StaticShared { get; set; }
    public int DynamicBase { get; set; }
    public int LocalPerThread { get; set; }
    public int MaxDynamicShared { get; set; }
}

internal sealed class EmuStream(IDevice owner, int id) : DeviceStream(owner)
{
    /// <summary>The stream's number in its device (the default stream is 0): <see cref="DeviceOperation.Stream"/>, <see cref="LaunchRecord.Stream"/>.</summary>
    public int Id { get; } = id;
    public List<GraphCommand>? Capture { get; set; }
    /// <summary>Strict streams: work issued and not yet run (a disposed stream's work still runs, as on CUDA).</summary>
    public Queue<StreamWork> Pending { get; } = new();
    protected override void Release() { }
}

internal sealed class EmuEvent(IDevice owner) : DeviceEvent(owner)
{
    /// <summary>The latest record of the event (null: never recorded).</summary>
    public EventMark? Last { get; set; }
    protected override void Release() { }
}

internal sealed class EmuGraph(IDevice owner, List<GraphCommand> commands) : DeviceGraph(owner)
{
    public List<GraphCommand> Commands { get; } = commands;
    public override int KernelNodeCount => Commands.Count(c => c is LaunchCommand);
    protected override void Release() { }
}

internal sealed class EmuGraphExec(IDevice owner, List<GraphCommand> commands) : DeviceGraphExec(owner)
{
    public List<GraphCommand> Commands { get; set; } = commands;
    protected override void Release() { }
}

internal abstract record GraphCommand;
internal sealed record LaunchCommand(EmuKernel Kernel, LaunchConfig Config, byte[][] Args) : GraphCommand;
internal sealed record CopyToDeviceCommand(DevicePtr Dst, PinnedBuffer Src, long SrcOffset, long Bytes) : GraphCommand;
internal sealed record CopyToHostCommand(PinnedBuffer Dst, long DstOffset, DevicePtr Src, long Bytes) : GraphCommand;
internal sealed record CopyDeviceCommand(DevicePtr Dst, DevicePtr Src, long Bytes) : GraphCommand;
internal sealed record MemsetCommand(DevicePtr Dst, byte Value, long Bytes) : GraphCommand;
