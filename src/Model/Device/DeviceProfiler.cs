using System.Globalization;
using System.Text;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>Launch records of one kernel summed over a step (emulator counters; milliseconds only on CUDA).</summary>
public sealed record KernelProfile(string Kernel, int Launches, long WarpInstructions, long GlobalBytes, long DramBytes, double Coalescing, double Milliseconds);

/// <summary>One profiled step: per-kernel rows in first-launch order and the totals.</summary>
public sealed record StepProfile(string Name, int Tokens, IReadOnlyList<KernelProfile> Kernels, double Milliseconds)
{
    public long DramBytes => Kernels.Sum(k => k.DramBytes);
    public int Launches => Kernels.Sum(k => k.Launches);
}

/// <summary>
/// Profiles one prefill and one decode step of a <see cref="DeviceModel"/>: on the emulator from its per-launch
/// records (warp instructions, bytes requested, distinct 32-byte DRAM sectors, coalescing); on CUDA the step
/// times from events. <see cref="MinimumDecodeBytes"/> is the DRAM traffic a decode step cannot avoid.
/// </summary>
public static class DeviceProfiler
{
    public static StepProfile Profile(DeviceModel model, string name, int tokens, Action step)
    {
        var device = model.Device;
        var emu = Unwrap(device);
        emu?.ClearLaunches();
        using var start = device.CreateEvent();
        using var end = device.CreateEvent();
        device.Synchronize();
        device.Record(start, device.DefaultStream);
        step();
        device.Record(end, device.DefaultStream);
        device.Synchronize();
        double ms = device.ElapsedMilliseconds(start, end);
        if (emu is null) return new StepProfile(name, tokens, [], ms);
        var rows = emu.Launches.GroupBy(r => r.Kernel).Select(g => new KernelProfile(g.Key, g.Count(), g.Sum(r => r.WarpInstructions),
            g.Sum(r => r.GlobalLoadBytes + r.GlobalStoreBytes), g.Sum(r => r.DistinctSectors * 32),
            Coalescing(g), g.Sum(r => r.ElapsedMilliseconds))).ToList();
        return new StepProfile(name, tokens, rows, ms);
    }

    private static double Coalescing(IEnumerable<LaunchRecord> g)
    {
        long bytes = g.Sum(r => r.GlobalLoadBytes + r.GlobalStoreBytes), sectors = g.Sum(r => r.GlobalLoadSectors + r.GlobalStoreSectors);
        return sectors == 0 ? 1 : bytes / (sectors * 32.0);
    }

    private static EmulatedDevice? Unwrap(IDevice d) => d as EmulatedDevice;

    /// <summary>
    /// The bytes one decode step of one sequence must move at context length <paramref name="context"/> (tokens already
    /// in the cache, the new one included): every layer's attention weights (fused qkv, o_proj, the four norms), the
    /// router and the top-k selected experts (a dense layer: its whole MLP), the final norm, lm_head, one embedding
    /// row, the K and V read for the context and the new token's K and V written.
    /// </summary>
    public static long MinimumDecodeBytes(MemoryPlan plan, int context)
    {
        var c = plan.Config;
        long bf = sizeof(ushort), H = c.HiddenSize, D = c.HeadDim;
        long total = 0;
        foreach (var l in plan.Weights.Layers)
        {
            total += ((long)c.QueryDim + 2 * c.KeyValueDim) * H * bf + H * c.QueryDim * bf + (2 * H + 2 * D) * bf;
            long expert = 3L * l.Inter * H * bf;
            total += l.IsMoe ? (long)l.Experts * H * bf + l.TopK * expert : expert;
        }
        total += H * bf + (long)c.VocabSize * H * bf + H * bf;
        total += (long)context * plan.KvBytesPerToken;        // K, V read (the new token's included)
        total += plan.KvBytesPerToken;                        // the new token's K, V written
        return total;
    }

    public static string Table(StepProfile p, bool emulator)
    {
        var sb = new StringBuilder();
        sb.Append(CultureInfo.InvariantCulture, $"{p.Name} ({p.Tokens} token(s)): {p.Launches} launches, {(emulator ? $"DRAM {ByteSize.Format(p.DramBytes)} (distinct sectors)" : $"{p.Milliseconds:F3} ms")}\n");
        if (p.Kernels.Count == 0) return sb.ToString();
        sb.Append(CultureInfo.InvariantCulture, $"  {"kernel",-28}{"launches",9}{"warp instr",14}{"global bytes",14}{"DRAM bytes",14}{"coalescing",12}\n");
        foreach (var k in p.Kernels)
            sb.Append(CultureInfo.InvariantCulture, $"  {k.Kernel,-28}{k.Launches,9}{k.WarpInstructions,14:N0}{ByteSize.Format(k.GlobalBytes),14}{ByteSize.Format(k.DramBytes),14}{k.Coalescing,12:F3}\n");
        return sb.ToString();
    }
}
