using System.Globalization;
using System.Text;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>
/// Launch records of one kernel summed over a step: the emulator's counters (zero on CUDA), and on CUDA the GPU time
/// of its launches from events around each one (<see cref="GpuMilliseconds"/>; null on the emulator, whose events read
/// the host clock: emulation time is never reported as GPU time).
/// </summary>
public sealed record KernelProfile(string Kernel, int Launches, long WarpInstructions, long GlobalBytes, long DramBytes, double Coalescing, double? GpuMilliseconds);

/// <summary>
/// One profiled step: per-kernel rows in first-launch order and the totals. <see cref="Milliseconds"/>: the step as
/// the model runs it (decode: one graph replay), from events on the model's stream around it: input copies, kernels,
/// result copy and the host's wait for it; meaningful on CUDA only.
/// </summary>
public sealed record StepProfile(string Name, int Tokens, IReadOnlyList<KernelProfile> Kernels, double Milliseconds)
{
    /// <summary>The emulator's launch records of the step in order (empty on CUDA): the timing model's input.</summary>
    public IReadOnlyList<LaunchRecord> Records { get; init; } = [];
    /// <summary>The emulator's copies and memsets of the step in order (empty on CUDA).</summary>
    public IReadOnlyList<DeviceOperation> Operations { get; init; } = [];
    /// <summary>On CUDA with per-kernel timing: each launch's GPU time in issue order.</summary>
    public IReadOnlyList<TimedLaunch> TimedLaunches { get; init; } = [];
    public long DramBytes => Kernels.Sum(k => k.DramBytes);
    public int Launches => Kernels.Sum(k => k.Launches);
    /// <summary>Sum of the per-kernel GPU times (the step launched one kernel at a time); null without them.</summary>
    public double? KernelMilliseconds => Kernels.Count > 0 && Kernels.All(k => k.GpuMilliseconds is not null) ? Kernels.Sum(k => k.GpuMilliseconds!.Value) : null;
}

/// <summary>
/// Profiles one prefill and one decode step of a <see cref="DeviceModel"/>: on the emulator from its per-launch
/// records (warp instructions, bytes requested, distinct 32-byte DRAM sectors, coalescing); on CUDA the step time
/// from events around the step as the model runs it (decode: the graph replay), then, when the model runs on a
/// <see cref="KernelTimingDevice"/>, the step undone and run again with its kernels launched one by one, each between
/// a pair of events (<see cref="TimeKernels"/>). Kernel names come from <see cref="DeviceKernel.Name"/> on both
/// backends. <see cref="MinimumDecodeBytes"/> is the DRAM traffic a decode step cannot avoid.
/// </summary>
public static class DeviceProfiler
{
    /// <summary>
    /// Runs <paramref name="step"/> once as the model runs it; on CUDA with a <see cref="KernelTimingDevice"/> under the
    /// model, calls <paramref name="undo"/> (which must restore the state before the step: the same sequence lengths)
    /// and runs the step again for per-kernel times.
    /// </summary>
    public static StepProfile Profile(DeviceModel model, string name, int tokens, Action step, Action undo)
    {
        var device = model.Device;
        var emu = Unwrap(device);
        emu?.ClearLaunches();
        double ms;
        using (var start = device.CreateEvent())
        using (var end = device.CreateEvent())
        {
            device.Synchronize();
            emu?.EvictL2();   // a cold L2, as after a full step of the real model (a slice's previous step would still be in it)
            device.Record(start, model.Stream);
            step();
            device.Record(end, model.Stream);
            device.Synchronize();
            ms = device.ElapsedMilliseconds(start, end);
        }
        if (emu is not null)
        {
            var rows = emu.Launches.GroupBy(r => r.Kernel).Select(g => new KernelProfile(g.Key, g.Count(), g.Sum(r => r.WarpInstructions),
                g.Sum(r => r.GlobalLoadBytes + r.GlobalStoreBytes), g.Sum(r => r.DistinctSectors * 32), Coalescing(g), null)).ToList();
            return new StepProfile(name, tokens, rows, ms) { Records = [.. emu.Launches], Operations = [.. emu.Operations] };
        }
        if (device is not KernelTimingDevice timing) return new StepProfile(name, tokens, [], ms);
        undo();
        var launches = TimeKernels(model, timing, step);
        var timed = launches.GroupBy(l => l.Kernel).Select(g => new KernelProfile(g.Key, g.Count(), 0, 0, 0, 0, g.Sum(l => l.Milliseconds))).ToList();
        return new StepProfile(name, tokens, timed, ms) { TimedLaunches = launches };
    }

    /// <summary>
    /// Runs <paramref name="step"/> with graph replay off (<see cref="DeviceModel.ReplayGraphs"/>) and every launch
    /// between a pair of events of <paramref name="timing"/> (which must be the model's device); returns the launches in
    /// issue order. On the emulator the times are host (emulation) time.
    /// </summary>
    public static IReadOnlyList<TimedLaunch> TimeKernels(DeviceModel model, KernelTimingDevice timing, Action step)
    {
        if (!ReferenceEquals(model.Device, timing)) throw new ArgumentException("TimeKernels: the model does not run on this KernelTimingDevice", nameof(timing));
        bool replay = model.ReplayGraphs;
        model.ReplayGraphs = false;
        timing.Synchronize();
        timing.Begin();
        try
        {
            step();
            return timing.End();
        }
        finally
        {
            model.ReplayGraphs = replay;
            if (timing.IsTiming) timing.End();
        }
    }

    private static double Coalescing(IEnumerable<LaunchRecord> g)
    {
        long bytes = g.Sum(r => r.GlobalLoadBytes + r.GlobalStoreBytes), sectors = g.Sum(r => r.GlobalLoadSectors + r.GlobalStoreSectors);
        return sectors == 0 ? 1 : bytes / (sectors * 32.0);
    }

    private static EmulatedDevice? Unwrap(IDevice d) => (d is KernelTimingDevice t ? t.Inner : d) as EmulatedDevice;

    /// <summary>
    /// The bytes one decode step of one sequence must move at context length <paramref name="context"/> (tokens already
    /// in the cache, the new one included): every layer's attention weights (fused qkv, o_proj, the four norms), the
    /// router and the top-k selected experts (a dense layer: its whole MLP), the final norm, lm_head, one embedding
    /// row, the K and V read for the context and the new token's K and V written. Matrices count in their weight format with
    /// their scale tensors (docs/formats.md): the minimum of a quantized checkpoint is its quantized bytes.
    /// </summary>
    /// <remarks>
    /// <paramref name="layers"/>: the count of decoder layers to account for (null: the plan's); other than the plan's,
    /// the layers' bytes (weights and KV) are scaled from the plan's average layer (a slice of a model whose layers are alike).
    /// </remarks>
    public static long MinimumDecodeBytes(MemoryPlan plan, int context, int? layers = null)
    {
        var c = plan.Config;
        var w = plan.Weights;
        long bf = sizeof(ushort), H = c.HiddenSize;
        static long M(DeviceTensor t) => WeightLayout.BytesWithScales(t);   // a matrix in its format: weights + scales
        long layerBytes = 0;
        foreach (var l in w.Layers)
        {
            layerBytes += M(l.Qkv) + M(l.OProj) + l.InputNorm.Bytes + l.QNorm.Bytes + l.KNorm.Bytes + l.PostNorm.Bytes;
            long experts = M(l.GateUp) + M(l.Down);                       // all E experts
            layerBytes += l.IsMoe ? l.Router!.Bytes + experts / l.Experts * l.TopK : experts;
        }
        layerBytes += (long)context * plan.KvBytesPerToken;   // K, V read (the new token's included)
        layerBytes += plan.KvBytesPerToken;                   // the new token's K, V written
        if (layers is int n && n != c.NumHiddenLayers) layerBytes = (long)Math.Round((double)layerBytes * n / c.NumHiddenLayers);
        return layerBytes + H * bf + M(w.LmHead) + w.FinalNorm.Bytes;
    }

    /// <summary>
    /// The per-kernel table of a step. Emulator: counter columns, no times (its clock is emulation time). CUDA: the
    /// step time as the model runs it, then per kernel its launches, GPU time summed over them, share of the step
    /// launched one by one (the rows sum to 100%) and time per launch.
    /// </summary>
    public static string Table(StepProfile p, bool emulator)
    {
        var sb = new StringBuilder();
        var inv = CultureInfo.InvariantCulture;
        if (emulator)
        {
            sb.Append(inv, $"{p.Name} ({p.Tokens} token(s)): {p.Launches} launches, DRAM {ByteSize.Format(p.DramBytes)} (distinct sectors; emulator counters, no timings)\n");
            if (p.Kernels.Count == 0) return sb.ToString();
            sb.Append(inv, $"  {"kernel",-28}{"launches",9}{"warp instr",14}{"global bytes",14}{"DRAM bytes",14}{"coalescing",12}\n");
            foreach (var k in p.Kernels)
                sb.Append(inv, $"  {k.Kernel,-28}{k.Launches,9}{k.WarpInstructions,14:N0}{ByteSize.Format(k.GlobalBytes),14}{ByteSize.Format(k.DramBytes),14}{k.Coalescing,12:F3}\n");
            return sb.ToString();
        }
        sb.Append(inv, $"{p.Name} ({p.Tokens} token(s)): {p.Milliseconds:F3} ms as run (CUDA events around the step: input copies, kernels, result copy)");
        if (p.KernelMilliseconds is not double total)
        {
            sb.Append('\n');
            return sb.ToString();
        }
        sb.Append(inv, $"; {p.Launches} launches one by one: {total:F3} ms (CUDA events around each launch)\n");
        sb.Append(inv, $"  {"kernel",-28}{"launches",9}{"GPU ms",12}{"% of step",11}{"us/launch",11}\n");
        foreach (var k in p.Kernels)
        {
            double ms = k.GpuMilliseconds ?? 0;
            sb.Append(inv, $"  {k.Kernel,-28}{k.Launches,9}{ms,12:F4}{(total > 0 ? 100 * ms / total : 0),10:F1}%{1000 * ms / k.Launches,11:F2}\n");
        }
        return sb.ToString();
    }
}
