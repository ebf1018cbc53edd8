using System.Reflection;
using System.Text.Json;
using System.Text.Json.Nodes;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Model.Performance;

/// <summary>
/// What the timing model needs to know about one GPU (docs/timing-model.md). Loaded from the embedded gpus.json, where
/// every number has its source or is marked as an assumption (<see cref="Sources"/>, by property name in camelCase).
/// </summary>
public sealed record GpuSpec
{
    public required string Key { get; init; }
    public required string Name { get; init; }
    /// <summary>Substrings of the CUDA device name that identify this GPU (for `profile --device cuda` without --predict).</summary>
    public IReadOnlyList<string> Match { get; init; } = [];
    /// <summary>"sm_80", "sm_89", "sm_90": the CUBIN the register counts come from and the emulator's compute capability.</summary>
    public required string Arch { get; init; }
    public required long MemoryBytes { get; init; }
    public required int Sms { get; init; }
    /// <summary>SM clock under load, GHz.</summary>
    public required double ClockGHz { get; init; }
    /// <summary>The vendor's peak DRAM bandwidth (the roofline's), GB/s (10^9 bytes).</summary>
    public required double DramPeakGBps { get; init; }
    /// <summary>What a streaming read reaches, GB/s: the bandwidth of a kernel with enough bytes in flight.</summary>
    public required double DramAchievableGBps { get; init; }
    public required long L2Bytes { get; init; }
    /// <summary>Data a kernel touched counts as still in L2 for the next kernels until this fraction of <see cref="L2Bytes"/> of other DRAM traffic has passed.</summary>
    public required double L2ResidencyFraction { get; init; }
    /// <summary>
    /// The L2 set aside for persisting lines: data prefetched with L2::evict_last stays in L2 for a later kernel, whatever
    /// the other traffic, while no more than this much other such data was prefetched since (docs/timing-model.md,
    /// "Weights fetched ahead").
    /// </summary>
    public long L2PersistingBytes { get; init; } = 16L << 20;
    public required double L2BytesPerClock { get; init; }
    /// <summary>Bytes one SM can receive from L2 per clock.</summary>
    public required double SmFillBytesPerClock { get; init; }
    public required double DramLatencyNs { get; init; }
    public required double L2LatencyNs { get; init; }
    public required int MaxWarpsPerSm { get; init; }
    public required int MaxBlocksPerSm { get; init; }
    public required int RegistersPerSm { get; init; }
    public required int RegisterAllocationUnit { get; init; }
    public required int MaxRegistersPerThread { get; init; }
    public required int SharedPerSmBytes { get; init; }
    public required int SharedPerBlockOptinBytes { get; init; }
    public required int SharedAllocationUnit { get; init; }
    public required int SharedReservedPerBlockBytes { get; init; }
    /// <summary>Warp instructions an SM issues per clock (one per scheduler).</summary>
    public required double IssuePerSmPerClock { get; init; }
    /// <summary>Warp instructions one warp issues per clock on its own.</summary>
    public required double SingleWarpIpc { get; init; }
    public required double SfuLanesPerSm { get; init; }
    public required double LsuRequestsPerSmPerClock { get; init; }
    /// <summary>Dense BF16 FLOP per clock per SM through mma.sync with FP32 accumulation.</summary>
    public required double MmaFlopsPerClockPerSm { get; init; }
    public required double GraphNodeGapUs { get; init; }
    /// <summary>
    /// The gap before a graph node launched with programmatic dependent launch after a kernel of the same graph (sm_90 and
    /// newer): its launch overlaps that kernel, only the drain and the release from griddepcontrol.wait remain.
    /// </summary>
    public required double PdlNodeGapUs { get; init; }
    public required double StreamLaunchGapUs { get; init; }
    public required double SmallCopyUs { get; init; }
    public required double HostCopyGBps { get; init; }
    public required double SyncWakeUs { get; init; }
    /// <summary>Where each number comes from, by camelCase property name.</summary>
    public IReadOnlyDictionary<string, string> Sources { get; init; } = new Dictionary<string, string>();
    /// <summary>
    /// The numbers changed from gpus.json by `profile --assume NAME=VALUE` (<see cref="GpuCatalog.WithAssumptions"/>), as
    /// "name value (gpus.json: old)"; empty for a description as shipped. Printed with every prediction made with them.
    /// </summary>
    public IReadOnlyList<string> Assumed { get; init; } = [];

    public int ComputeMajor => Arch[3] - '0';
    public int ComputeMinor => Arch[4] - '0';
    public double ClockHz => ClockGHz * 1e9;

    /// <summary>
    /// An emulator that presents itself as this GPU (SM count, compute capability, shared memory, memory size), so the
    /// launchers pick this GPU's grids (split-K and attention splits follow the SM count).
    /// </summary>
    public EmulatorOptions EmulatorOptions(long heapLimitBytes) => new()
    {
        Name = $"PTX emulator as {Name} ({Arch})", ComputeMajor = ComputeMajor, ComputeMinor = ComputeMinor,
        MultiprocessorCount = Sms, SharedMemoryPerMultiprocessor = SharedPerSmBytes, SharedMemoryPerBlockOptin = SharedPerBlockOptinBytes,
        ReportedMemoryBytes = MemoryBytes, HeapLimitBytes = heapLimitBytes, L2ResidentBytes = (long)(L2Bytes * L2ResidencyFraction),
        L2PersistingBytes = L2PersistingBytes,
    };
}

/// <summary>The GPU descriptions shipped in gpus.json (embedded).</summary>
public static class GpuCatalog
{
    private static readonly Lazy<IReadOnlyList<GpuSpec>> Specs = new(Load);

    public static IReadOnlyList<GpuSpec> All => Specs.Value;

    /// <summary>The GPU with this key (a100, h100, h200, rtx4090, l40s; case-insensitive), with a clear error naming the known keys.</summary>
    public static GpuSpec Get(string key) =>
        All.FirstOrDefault(g => string.Equals(g.Key, key.Trim(), StringComparison.OrdinalIgnoreCase))
        ?? throw new ArgumentException($"--predict '{key}': no description of that GPU; known: {string.Join(", ", All.Select(g => g.Key))}");

    /// <summary>The description whose match strings occur in a CUDA device name, or null.</summary>
    public static GpuSpec? ForDeviceName(string deviceName) =>
        All.FirstOrDefault(g => g.Match.Any(m => deviceName.Contains(m, StringComparison.OrdinalIgnoreCase)));

    private static IReadOnlyList<GpuSpec> Load()
    {
        using var stream = typeof(GpuCatalog).Assembly.GetManifestResourceStream("Qwen3Cuda.Model.Performance.gpus.json")
            ?? throw new InvalidOperationException("embedded resource gpus.json is missing");
        return Parse(new StreamReader(stream).ReadToEnd());
    }

    /// <summary>Parses a gpus.json text: each GPU's fields over the common ones, sources merged the same way.</summary>
    public static IReadOnlyList<GpuSpec> Parse(string json)
    {
        var root = JsonNode.Parse(json)?.AsObject() ?? throw new InvalidDataException("gpus.json: not a JSON object");
        var common = root["common"]?.AsObject() ?? new JsonObject();
        var options = new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase, UnmappedMemberHandling = System.Text.Json.Serialization.JsonUnmappedMemberHandling.Disallow };
        var result = new List<GpuSpec>();
        foreach (var node in root["gpus"]?.AsArray() ?? throw new InvalidDataException("gpus.json: no \"gpus\" array"))
        {
            var merged = common.DeepClone().AsObject();
            var sources = merged["sources"]?.DeepClone().AsObject() ?? new JsonObject();
            foreach (var (k, v) in node!.AsObject())
            {
                if (k == "sources") foreach (var (sk, sv) in v!.AsObject()) sources[sk] = sv?.DeepClone();
                else merged[k] = v?.DeepClone();
            }
            merged["sources"] = sources;
            try { result.Add(merged.Deserialize<GpuSpec>(options)!); }
            catch (JsonException e) { throw new InvalidDataException($"gpus.json: GPU '{node["key"]}': {e.Message}", e); }
        }
        return result;
    }

    /// <summary>
    /// Fields that may be set to 0 by <see cref="WithAssumptions"/>: gaps, copy and wake-up costs, latencies, the residency
    /// share and the persisting L2, the reserved shared memory. Every other number is a size, a rate or a count the model
    /// divides by or allocates in, and must be positive.
    /// </summary>
    private static readonly HashSet<string> ZeroAllowed =
    [
        "graphNodeGapUs", "pdlNodeGapUs", "streamLaunchGapUs", "smallCopyUs", "syncWakeUs", "dramLatencyNs", "l2LatencyNs",
        "l2ResidencyFraction", "l2PersistingBytes", "sharedReservedPerBlockBytes",
    ];

    /// <summary>
    /// <paramref name="gpu"/> with some of its numbers replaced (`profile --assume NAME=VALUE`: the calibration knobs, e.g.
    /// pdlNodeGapUs or dramLatencyNs after `profile --device cuda` measured the step; docs/timing-model.md, "Calibrating on
    /// a GPU"). Names are gpus.json's camelCase field names. A clear error names an unknown field (with the known ones), a
    /// value that is not a finite number, a fraction for a whole-number field, a negative value, or zero where the model
    /// needs a positive one. The changes are listed in <see cref="GpuSpec.Assumed"/>.
    /// </summary>
    public static GpuSpec WithAssumptions(GpuSpec gpu, IReadOnlyList<(string Name, string Value)> assumptions)
    {
        if (assumptions.Count == 0) return gpu;
        var options = new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase };
        var node = JsonSerializer.SerializeToNode(gpu with { Assumed = [] }, options)!.AsObject();
        node.Remove("assumed");
        var shipped = node.DeepClone().AsObject();
        var props = typeof(GpuSpec).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .ToDictionary(p => JsonNamingPolicy.CamelCase.ConvertName(p.Name), p => p.PropertyType);
        var numeric = NumericFields().ToHashSet();
        var changes = new List<string>();
        foreach (var (rawName, rawValue) in assumptions)
        {
            string name = rawName.Trim();
            if (!numeric.Contains(name))
                throw new ArgumentException($"--assume {rawName}: not a number of the GPU description; known: {string.Join(", ", numeric.Order(StringComparer.Ordinal))}");
            if (!double.TryParse(rawValue.Trim(), System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out double v) || !double.IsFinite(v))
                throw new ArgumentException($"--assume {name}={rawValue}: not a finite number");
            if (v < 0 || (v == 0 && !ZeroAllowed.Contains(name)))
                throw new ArgumentException($"--assume {name}={rawValue}: must be {(ZeroAllowed.Contains(name) ? "at least 0" : "positive")}");
            var type = props[name];
            if (type != typeof(double) && v != Math.Floor(v))
                throw new ArgumentException($"--assume {name}={rawValue}: a whole number is needed");
            if (type == typeof(int) && v > int.MaxValue) throw new ArgumentException($"--assume {name}={rawValue}: too large");
            string old = shipped[name]!.ToJsonString();
            node[name] = type == typeof(double) ? JsonValue.Create(v) : type == typeof(int) ? JsonValue.Create((int)v) : JsonValue.Create((long)v);
            changes.RemoveAll(c => c.StartsWith(name + " ", StringComparison.Ordinal));
            changes.Add(string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{name} {v} (gpus.json: {old})"));
        }
        return node.Deserialize<GpuSpec>(options)! with { Assumed = changes };
    }

    /// <summary>The camelCase names of the numeric fields of <see cref="GpuSpec"/> (each must have a source).</summary>
    public static IEnumerable<string> NumericFields() =>
        typeof(GpuSpec).GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Where(p => p.CanWrite && (p.PropertyType == typeof(int) || p.PropertyType == typeof(long) || p.PropertyType == typeof(double)))
            .Select(p => JsonNamingPolicy.CamelCase.ConvertName(p.Name));
}
