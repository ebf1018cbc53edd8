using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Model.Device;

/// <summary>
/// Picks the prefill chunk (the token rows of one device step) from the memory budget when none was asked for
/// (<see cref="DeviceModelOptions.AutoPrefillChunk"/>): the largest of <see cref="DeviceModelOptions.PrefillChunkTokens"/>,
/// its half, its quarter, ... down to <see cref="MinAutoChunkTokens"/> whose workspace fits next to the weights and a KV
/// cache of the context the smallest chunk would get (a larger chunk never costs context). A larger chunk reads each
/// expert's weights once for more rows, so the grouped expert GEMM moves from memory-bound towards compute-bound
/// (docs/timing-model.md, "Prefill").
/// </summary>
public static class PrefillChunkSizing
{
    /// <summary>Most token rows a device step may hold (<see cref="DeviceModelOptions.Validate"/>).</summary>
    public const int MaxChunkTokens = 8192;
    /// <summary>The chunk a GPU tries first when no --max-num-batched-tokens was given.</summary>
    public const int DefaultMaxChunkTokens = 2048;
    /// <summary>The smallest chunk the automatic choice goes down to (the former fixed default).</summary>
    public const int MinAutoChunkTokens = 512;

    /// <summary>
    /// <paramref name="o"/> with its prefill chunk chosen for a device with <paramref name="memory"/> free and total bytes
    /// (as <see cref="MemoryPlan.Compute(ModelConfig, DeviceModelOptions, ValueTuple{long, long}, int, bool)"/> takes
    /// them); unchanged unless <see cref="DeviceModelOptions.AutoPrefillChunk"/>. The chunk never goes below the decode
    /// batch or the output rows. When even the smallest does not fit, the smallest is returned and the plan reports what
    /// is missing.
    /// </summary>
    public static DeviceModelOptions Choose(ModelConfig c, DeviceModelOptions o, (long FreeBytes, long TotalBytes) memory, int multiprocessors, bool checkpointHasLmHead)
    {
        o.Validate();
        if (!o.AutoPrefillChunk) return o;
        int floor = Math.Max(Math.Min(MinAutoChunkTokens, o.PrefillChunkTokens), Math.Max(o.MaxBatch, o.OutputRows));
        var candidates = new List<int>();
        for (int t = o.PrefillChunkTokens; t > floor; t /= 2) candidates.Add(t);
        candidates.Add(floor);
        MemoryPlan Plan(int tokens) => MemoryPlan.Compute(c, o with { PrefillChunkTokens = tokens }, memory, multiprocessors, checkpointHasLmHead);
        var smallest = Plan(floor);
        if (!smallest.Fits) return smallest.Options;
        foreach (int t in candidates)
        {
            var plan = t == floor ? smallest : Plan(t);
            if (plan.Fits && plan.ContextLength >= smallest.ContextLength) return plan.Options;
        }
        return smallest.Options;
    }
}
