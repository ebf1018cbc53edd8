using System.Globalization;
using System.Text;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Performance;

/// <summary>
/// The predicted time of one step (a prefill chunk or a decode step) on a GPU: its kernels one after another (each waits
/// for the last), a gap per graph node or per stream launch (a shorter one per programmatic graph node, whose pre-wait
/// bytes may also stream while the kernel before it runs), the small host copies outside the graph and the host's
/// wake-up after the result copy. <see cref="Layers"/> is the layer count it stands for (see <see cref="StepPredictor.ScaleLayers"/>).
/// </summary>
public sealed record StepPrediction
{
    public required GpuSpec Gpu { get; init; }
    public required string Name { get; init; }
    public required int Tokens { get; init; }
    public required int Layers { get; init; }
    public required IReadOnlyList<KernelPrediction> Launches { get; init; }
    public required IReadOnlyList<DeviceOperation> Operations { get; init; }

    /// <summary>Kernels and memsets/device copies that ran as nodes of a graph launch.</summary>
    public int GraphNodes => Launches.Count(l => l.Launch.InGraph && !l.ContinuesLaunch) + Operations.Count(o => o.InGraph);
    /// <summary>Kernels, memsets and device-to-device copies issued on a stream by themselves.</summary>
    public int StreamNodes => Launches.Count(l => !l.Launch.InGraph && !l.ContinuesLaunch) + Operations.Count(o => !o.InGraph && o.Kind is DeviceOperationKind.Memset or DeviceOperationKind.CopyDeviceToDevice);
    /// <summary>
    /// The stream the step's kernels ran on (the first launch's). A host copy on another stream (a pipelined step's input
    /// and result streams, docs/architecture.md "Pipelined decode") runs beside the kernels of the steps around it.
    /// </summary>
    public int KernelStream => Launches.Count > 0 ? Launches[0].Launch.Stream : 0;
    private bool IsHostCopy(DeviceOperation o) => !o.InGraph && o.Kind is DeviceOperationKind.CopyToDevice or DeviceOperationKind.CopyToHost;
    /// <summary>Host-device copies outside graphs on the kernels' stream (the step's inputs and its result): on the step's timeline.</summary>
    public int HostCopies => Operations.Count(o => IsHostCopy(o) && o.Stream == KernelStream);
    /// <summary>Host-device copies on other streams: they overlap the kernels of the steps before and after, off the timeline.</summary>
    public int OverlappedHostCopies => Operations.Count(o => IsHostCopy(o) && o.Stream != KernelStream);
    /// <summary>
    /// Graph nodes launched with programmatic dependent launch right after a kernel of the same graph that triggers its
    /// dependents early: the shorter gap. (One after a kernel that does not trigger keeps the full gap.)
    /// </summary>
    public int ProgrammaticNodes => Launches.Count(l => l.Overlap is { Limit: not OverlapLimit.NoEarlyTrigger });
    /// <summary>Pre-wait bytes of the programmatic nodes fetched while the kernel before each ran.</summary>
    public long OverlapBytes => Launches.Sum(l => l.Overlap?.Bytes ?? 0);
    public double KernelUs => Launches.Sum(l => l.Microseconds);
    public double GapUs => (GraphNodes - ProgrammaticNodes) * Gpu.GraphNodeGapUs + ProgrammaticNodes * Gpu.PdlNodeGapUs + StreamNodes * Gpu.StreamLaunchGapUs;
    /// <summary>Each host copy outside a graph on the kernels' stream: its fixed cost plus its bytes at the host link's bandwidth.</summary>
    public double CopyUs => Operations.Where(o => IsHostCopy(o) && o.Stream == KernelStream).Sum(CopyCostUs);
    private double CopyCostUs(DeviceOperation o) => Gpu.SmallCopyUs + o.Bytes / Gpu.HostCopyGBps / 1000.0;
    /// <summary>
    /// The host's wake-up after a result copy on the kernels' stream: the next step waits for it. After a result copy on
    /// another stream the next step is queued already and runs while the host wakes.
    /// </summary>
    public double SyncUs => Operations.Any(o => o.Kind == DeviceOperationKind.CopyToHost && (o.InGraph || o.Stream == KernelStream)) ? Gpu.SyncWakeUs : 0;
    public double TotalUs => KernelUs + GapUs + CopyUs + SyncUs;
    /// <summary>
    /// The same launches as one synchronous step (<c>DeviceModel.Step</c>: a step the engine cannot pipeline, speculative
    /// decoding): every host copy on the step's timeline, and the host's wake-up after its result copy.
    /// </summary>
    public double SynchronousUs => KernelUs + GapUs + Operations.Where(IsHostCopy).Sum(CopyCostUs)
        + (Operations.Any(o => o.Kind == DeviceOperationKind.CopyToHost) ? Gpu.SyncWakeUs : 0);
    public double TokensPerSecond => Tokens / TotalUs * 1e6;
    /// <summary>All the step's DRAM bytes: the kernels' own and those the programmatic nodes prefetched in their predecessors' shadow.</summary>
    public long DramBytes => Launches.Sum(l => l.DramBytes + (l.Overlap?.Bytes ?? 0));
}

/// <summary>Predicts steps from the emulator's launch records (docs/timing-model.md).</summary>
public static class StepPredictor
{
    /// <summary>
    /// Predicts a step from its launches and non-kernel operations in order; <paramref name="resources"/> gives each
    /// launch's registers and static shared memory on <paramref name="gpu"/>.
    /// </summary>
    public static StepPrediction Predict(GpuSpec gpu, string name, int tokens, int layers, IReadOnlyList<LaunchRecord> launches,
        IReadOnlyList<DeviceOperation> operations, Func<LaunchRecord, KernelResources> resources) => new()
    {
        Gpu = gpu, Name = name, Tokens = tokens, Layers = layers, Operations = operations,
        Launches = PredictLaunches(gpu, launches.Select(r => (r, resources(r))).ToList(), operations),
    };

    /// <summary>
    /// The launches predicted in order. A launch is a programmatic graph node when it was launched programmatically, it and
    /// the launch before it ran in a graph, and no other operation (memset, copy) came between them; if that launch
    /// triggers early (it was itself launched programmatically), the node gets <see cref="GpuSpec.PdlNodeGapUs"/> and its
    /// pre-wait bytes may stream in the shadow of the launch before it, as that one was predicted (its own overlap
    /// included): <see cref="KernelTimingModel.PrefetchOverlap"/>.
    /// </summary>
    public static IReadOnlyList<KernelPrediction> PredictLaunches(GpuSpec gpu, IReadOnlyList<(LaunchRecord Record, KernelResources Resources)> launches,
        IReadOnlyList<DeviceOperation> operations,
        StageRule? stageRule = null)
    {
        var between = operations.Select(o => o.LaunchesBefore).ToHashSet();   // an operation between launch i - 1 and launch i
        var result = new List<KernelPrediction>(launches.Count);
        for (int i = 0; i < launches.Count; i++)
        {
            var (r, res) = launches[i];
            bool chained = i > 0 && r.ProgrammaticLaunch && r.InGraph && launches[i - 1].Record.InGraph && !between.Contains(i);
            if (StagesAt(launches, i, between) is int stageCount)
            {
                result.AddRange(PredictStages(gpu, launches.Skip(i).Take(stageCount).ToList(), chained ? result[i - 1] : null, stageRule));
                i += stageCount - 1;
                continue;
            }
            var alone = KernelTimingModel.Predict(r, res, gpu);
            if (!chained) { result.Add(alone); continue; }
            var overlap = KernelTimingModel.PrefetchOverlap(gpu, alone, result[i - 1]);
            // every CTA resident beside the predecessor's last wave, which triggered early: their part before the wait runs
            // in that wave's shadow
            double shadow = overlap.Limit != OverlapLimit.NoEarlyTrigger && overlap.ResidentFraction >= 1 ? result[i - 1].LastWaveUs : 0;
            var p = overlap.Bytes > 0 || shadow > 0 ? KernelTimingModel.Predict(r, res, gpu, overlap.Bytes, shadow) : alone;
            result.Add(p with { Overlap = overlap });
        }
        return result;
    }

    /// <summary>
    /// The stage count when launch <paramref name="i"/> is the first of the complete stages of one stage-ordered launch
    /// run apart (<see cref="LaunchRecord.Stage"/> 0 .. n - 1 in a row, no operation between them), else null.
    /// </summary>
    static int? StagesAt(IReadOnlyList<(LaunchRecord Record, KernelResources Resources)> launches, int i, HashSet<int> between)
    {
        if (launches[i].Record.Stage is not { Index: 0, Count: > 0 } first || i + first.Count > launches.Count) return null;
        for (int k = 0; k < first.Count; k++)
            if (launches[i + k].Record.Stage != new Runtime.LaunchStage(k, first.Count) || launches[i + k].Record.Kernel != launches[i].Record.Kernel
                || (k > 0 && between.Contains(i + k)))
                return null;
        return first.Count;
    }

    /// <summary>
    /// The stages of one stage-ordered launch run apart, predicted as the one launch they stand for
    /// (<see cref="PersistentWhatIf.ComposeStages"/>; docs/timing-model.md, section 7): stage k takes the composed launch's
    /// time from stage k - 1 done to stage k done (the first from the launch's start), so the stages' times add up to the
    /// launch's, and the stages after the first are no graph nodes of their own (<see cref="KernelPrediction.ContinuesLaunch"/>).
    /// When the launch is a programmatic node after <paramref name="before"/>, its first stage's pre-wait bytes stream in
    /// that kernel's shadow as any programmatic launch's (<see cref="KernelTimingModel.PrefetchOverlap"/>).
    /// </summary>
    static IEnumerable<KernelPrediction> PredictStages(GpuSpec gpu, IReadOnlyList<(LaunchRecord Record, KernelResources Resources)> stages, KernelPrediction? before,
        StageRule? stageRule)
    {
        var alone = stages.Select(x => KernelTimingModel.Predict(x.Record, x.Resources, gpu)).ToList();
        var overlap = before is null ? null : KernelTimingModel.PrefetchOverlap(gpu, alone[0], before);
        var c = PersistentWhatIf.ComposeStages(gpu, alone, overlap?.Bytes ?? 0, stageRule);
        for (int k = 0; k < alone.Count; k++)
        {
            double from = k == 0 ? 0 : c.Stages[k - 1].DoneUs;
            yield return alone[k] with
            {
                Microseconds = c.Stages[k].DoneUs - from, DramBytes = c.Stages[k].Stage.DramBytes,
                // the composition took the overlap's bytes off the first stage: its time without them is not this stage's
                Overlap = k == 0 && overlap is not null ? overlap with { IsolatedMicroseconds = c.Stages[0].DoneUs } : null, ContinuesLaunch = k > 0,
                ComposedDramIdleUs = k == alone.Count - 1 ? c.Stages[k].IdleUs + c.EndIdleUs : null,
            };
        }
    }

    /// <summary>
    /// Finds the layers in a step's launches: the smallest prefix p and the largest n such that <paramref name="layers"/>
    /// consecutive runs of n launches starting at p have the same kernels, grids, blocks and shared memory. Null when there
    /// is no such split (layers of different shapes). <paramref name="lastLayerApart"/>: the last run need only have the same
    /// kernels and blocks as the others (its grids and shared memory may differ: a decode step whose experts launch runs the
    /// next layer's qkv projection, which the last layer has not; docs/timing-model.md, "One step"). A layer never starts or
    /// ends inside a stage-ordered launch measured apart (<see cref="LaunchRecord.Stage"/>): its stages are one launch.
    /// </summary>
    public static (int Prefix, int PerLayer)? FindLayers(IReadOnlyList<LaunchRecord> launches, int layers, bool lastLayerApart = false)
    {
        if (layers < 1 || (lastLayerApart && layers < 2)) return null;
        static bool Same(LaunchRecord a, LaunchRecord b) =>
            a.Kernel == b.Kernel && a.Grid == b.Grid && a.Block == b.Block && a.DynamicSharedBytes == b.DynamicSharedBytes;
        static bool SameKernel(LaunchRecord a, LaunchRecord b) => a.Kernel == b.Kernel && a.Block == b.Block;
        // a layer starts and ends between launches, never between the stages of one stage-ordered launch measured apart
        bool Boundary(int i) => i >= launches.Count || launches[i].Stage is not { Index: > 0 };
        for (int p = 0; p < launches.Count; p++)
            for (int n = (launches.Count - p) / layers; n >= 1; n--)
            {
                bool ok = true;
                for (int l = 0; l <= layers && ok; l++) ok = Boundary(p + l * n);
                for (int l = 1; l < layers && ok; l++)
                    for (int i = 0; i < n && ok; i++)
                        ok = lastLayerApart && l == layers - 1 ? SameKernel(launches[p + i], launches[p + l * n + i]) : Same(launches[p + i], launches[p + l * n + i]);
                if (ok) return (p, n);
            }
        return null;
    }

    /// <summary>
    /// The step with <paramref name="layers"/> decoder layers instead of the <see cref="StepPrediction.Layers"/> it ran:
    /// the launches before and after the layers are kept, the slice's layers (with the memsets and copies among them) kept as
    /// they ran and its last layer repeated for the rest (the first layer follows the prefix, every later one a layer). For a slice of a model (its layers have the same shapes) profiled at the same context length.
    /// When only the slice's last layer has other launch shapes (<see cref="FindLayers"/> with the last layer apart: the
    /// experts launch of every other layer also runs the next layer's qkv projection), the layer before it is repeated and
    /// the last layer stays last.
    /// The launches are predicted again in their new order, so a programmatic launch overlaps the launch now before it
    /// (the first layer's first kernel the prefix's last, every other layer's the previous layer's last).
    /// </summary>
    public static StepPrediction ScaleLayers(StepPrediction p, int layers)
    {
        if (layers < 1) throw new ArgumentException($"--scale-layers must be at least 1, got {layers}");
        if (layers == p.Layers) return p;
        var records = p.Launches.Select(l => l.Launch).ToList();
        var split = FindLayers(records, p.Layers);
        bool lastApart = split is null && (split = FindLayers(records, p.Layers, lastLayerApart: true)) is not null;
        if (split is null)
            throw new ArgumentException($"{p.Name}: cannot split the step's {records.Count} launches into {p.Layers} layers of the same kernels and shapes; --scale-layers needs a model whose layers are alike");
        (int prefix, int n) = split.Value;
        int end = prefix + p.Layers * n;
        int Segment(int launchesBefore) => launchesBefore < prefix ? -1 : launchesBefore >= end ? p.Layers : (launchesBefore - prefix) / n;
        // operations keep their place among the launches: LaunchesBefore moves with their segment
        var launches = new List<KernelPrediction>(p.Launches.Take(prefix));
        var ops = new List<DeviceOperation>(p.Operations.Where(o => Segment(o.LaunchesBefore) < 0));
        for (int l = 0; l < layers; l++)
        {
            // the slice's layers as they ran, then its last layer repeated: the first layer is special (it follows the
            // prefix, e.g. nothing fetched ahead for it), every later layer follows a layer like the last one does
            // (with the last layer apart: the one before it repeated, the slice's last layer as the last)
            int src = !lastApart ? Math.Min(l, p.Layers - 1) : l == layers - 1 ? p.Layers - 1 : Math.Min(l, p.Layers - 2);
            launches.AddRange(p.Launches.Skip(prefix + src * n).Take(n));
            ops.AddRange(p.Operations.Where(o => Segment(o.LaunchesBefore) == src).Select(o => o with { LaunchesBefore = o.LaunchesBefore + (l - src) * n }));
        }
        launches.AddRange(p.Launches.Skip(end));
        ops.AddRange(p.Operations.Where(o => Segment(o.LaunchesBefore) == p.Layers).Select(o => o with { LaunchesBefore = o.LaunchesBefore + (layers - p.Layers) * n }));
        var predicted = PredictLaunches(p.Gpu, launches.Select(k => (k.Launch, k.Resources)).ToList(), ops);
        return p with { Layers = layers, Launches = predicted, Operations = ops };
    }

    /// <summary>
    /// The predicted table of a step: one row per launch shape (kernel, grid, block), in first-launch order, then the
    /// step's time, tokens per second and, for decode, the roofline (<paramref name="minimumBytes"/> at the peak DRAM
    /// bandwidth). Everything is labelled predicted.
    /// </summary>
    public static string Table(StepPrediction p, string context, long? minimumBytes)
    {
        var inv = CultureInfo.InvariantCulture;
        var sb = new StringBuilder();
        var g = p.Gpu;
        sb.Append(inv, $"{p.Name} ({p.Tokens} token(s), {context}, {p.Layers} layer(s)) on {g.Name}: PREDICTED by the timing model (docs/timing-model.md), not measured{AssumedText(g)}\n");
        bool pdl = p.Launches.Any(l => l.Overlap is not null);   // the overlap column only for steps with programmatic launches
        sb.Append(inv, $"  {"kernel",-26}{"launches",9}{"grid",8}{"block",7}{"regs",6}{"blk/SM",7}{"waves",7}{"DRAM",11}{"L2",10}{(pdl ? $"{"overlap",10}" : "")}{"trips",7}{"inflight/SM",12}{"bound",9}{"pred us",10}{"pred %",8}\n");
        double total = p.TotalUs;
        foreach (var grp in p.Launches.GroupBy(l => (l.Kernel, l.Launch.Grid, l.Launch.Block, l.Launch.DynamicSharedBytes, l.Launch.Stage)))
        {
            var f = grp.First();
            int count = grp.Count();
            double us = grp.Sum(x => x.Microseconds);
            string waves = f.TailCtas > 0 ? $"{f.FullWaves}+t" : $"{f.FullWaves}";
            double trips = (double)grp.Sum(x => x.Launch.MaxWarpDramRoundTrips + x.Launch.MaxWarpL2RoundTrips) / count;
            // a stage of a launch measured apart: its share of the composed launch, not a bound of its own
            string name = LaunchName(f.Launch);
            string bound = f.Launch.Stage is not null ? "stage" : f.Bound.ToString();
            sb.Append(inv, $"  {name,-26}{count,9}{f.Launch.Grid.ToString(),8}{f.Launch.Block.ToString(),7}{f.Resources.RegistersPerThread,6}{f.Occupancy.BlocksPerSm,7}{waves,7}");
            // a kernel that prefetches its weights before griddepcontrol.wait has almost no DRAM round trips left: its bytes per
            // trip, so its Little's-law bytes in flight, say nothing (the prefetches keep its bytes in flight)
            string inflight = f.Launch.PreWaitSectors > 0 ? "prefetch" : ByteSize.Format((long)f.InFlightBytesPerSm);
            string overlap = pdl ? $"{ByteSize.Format(grp.Sum(x => x.Overlap?.Bytes ?? 0)),10}" : "";
            sb.Append(inv, $"{ByteSize.Format(grp.Sum(x => x.DramBytes)),11}{ByteSize.Format(grp.Sum(x => x.L2Bytes)),10}{overlap}{trips,7:F0}{inflight,12}{bound,9}{us,10:F1}{100 * us / total,7:F1}%\n");
        }
        string nodes = pdl
            ? $"{p.GraphNodes} graph node(s): {p.GraphNodes - p.ProgrammaticNodes} x {g.GraphNodeGapUs} us, {p.ProgrammaticNodes} programmatic x {g.PdlNodeGapUs} us"
            : $"{p.GraphNodes} graph node(s) x {g.GraphNodeGapUs} us";
        sb.Append(inv, $"  predicted {p.Name} step: kernels {p.KernelUs:F1} us + {nodes} + {p.StreamNodes} stream launch(es) x {g.StreamLaunchGapUs} us");
        string overlapped = p.OverlappedHostCopies > 0 ? $" ({p.OverlappedHostCopies} more on the input and result streams, beside the kernels)" : "";
        sb.Append(inv, $" + {p.HostCopies} host copies {p.CopyUs:F1} us{overlapped} + sync {p.SyncUs} us = {total:F1} us: {p.TokensPerSecond:F0} tok/s predicted\n");
        sb.Append(inv, $"  predicted time by part: kernels {100 * p.KernelUs / total:F1}%, launch gaps {100 * p.GapUs / total:F1}%, host copies and sync {100 * (p.CopyUs + p.SyncUs) / total:F1}%; {p.Launches.Count(l => !l.ContinuesLaunch)} kernel launches, DRAM {ByteSize.Format(p.DramBytes)}\n");
        if (pdl)
        {
            var chained = p.Launches.Where(l => l.Overlap is not null).Select(l => l.Overlap!).ToList();
            var prefetching = chained.Where(o => o.PreWaitBytes > 0).ToList();
            string Count(OverlapLimit limit) => prefetching.Count(o => o.Limit == limit).ToString(inv);
            sb.Append(inv, $"  programmatic dependent launch: {ByteSize.Format(p.OverlapBytes)} of {ByteSize.Format(chained.Sum(o => o.PreWaitBytes))} pre-wait bytes fetched while the kernel before ran, ");
            sb.Append(inv, $"saving {p.Launches.Sum(l => l.IsolatedMicroseconds - l.Microseconds):F1} us of kernel time; of the {prefetching.Count} programmatic node(s) with pre-wait bytes, {Count(OverlapLimit.PreWaitBytes)} overlapped fully, ");
            sb.Append(inv, $"{Count(OverlapLimit.Residency)} limited by residency, {Count(OverlapLimit.PredecessorDram)} by the predecessor's DRAM, {Count(OverlapLimit.L2Capacity)} by L2; {chained.Count(o => o.Limit == OverlapLimit.NoEarlyTrigger)} programmatic launch(es) after a kernel that does not trigger early (full gap, no overlap)\n");
        }
        if (minimumBytes is long min)
        {
            double roofUs = min / g.DramPeakGBps / 1000.0;
            double roofTokS = p.Tokens / roofUs * 1e6;
            sb.Append(inv, $"  roofline: {ByteSize.Format(min)} a step must move / {g.DramPeakGBps:F0} GB/s peak = {roofUs:F1} us: {roofTokS:F0} tok/s; predicted {100 * p.TokensPerSecond / roofTokS:F1}% of the roofline\n");
            if (p.OverlappedHostCopies > 0)
                sb.Append(inv, $"  as one synchronous step (Step: every host copy and the host's wake-up between steps): {p.SynchronousUs:F1} us: {p.Tokens / p.SynchronousUs * 1e6:F0} tok/s, {100 * roofUs / p.SynchronousUs:F1}% of the roofline\n");
        }
        return sb.ToString();
    }

    /// <summary>
    /// `profile --detail`: per launch shape (as in <see cref="Table"/>) the model's terms averaged per launch (each summed
    /// over the launch's waves; the kernel's time is the largest term of each wave) and the critical warp behind the
    /// latency term: its DRAM and L2 round trips and its instructions, with the share of the latency its own issue takes; the
    /// tail is the longest chain after a warp's tail mark, which comes after the waves (docs/timing-model.md, section 2).
    /// Shows which term to attack (docs/timing-model.md, section 2).
    /// </summary>
    public static string TermsTable(StepPrediction p)
    {
        var inv = CultureInfo.InvariantCulture;
        var g = p.Gpu;
        var sb = new StringBuilder();
        sb.Append(inv, $"  {p.Name}: the model's terms per launch (PREDICTED us, averaged over the launches) and the critical warp (the maxima over warps)\n");
        sb.Append(inv, $"  {"kernel",-26}{"launches",9}{"grid",8}{"DRAM",8}{"L2",8}{"fill",8}{"issue",8}{"latency",9}{"tail",8}{"DRAM trips",12}{"L2 trips",10}{"warp instr",12}{"instr us",10}\n");
        foreach (var grp in p.Launches.GroupBy(l => (l.Kernel, l.Launch.Grid, l.Launch.Block, l.Launch.DynamicSharedBytes, l.Launch.Stage)))
        {
            var f = grp.First();
            int n = grp.Count();
            double Avg(Func<KernelPrediction, double> sel) => grp.Sum(sel) / n;
            double instr = Avg(l => l.Launch.MaxWarpInstructions);
            double instrUs = instr / g.SingleWarpIpc / g.ClockHz * 1e6;
            sb.Append(inv, $"  {LaunchName(f.Launch),-26}{n,9}{f.Launch.Grid.ToString(),8}{Avg(l => l.DramUs),8:F1}{Avg(l => l.L2Us),8:F1}{Avg(l => l.SmFillUs),8:F1}{Avg(l => l.IssueUs),8:F1}{Avg(l => l.LatencyUs),9:F1}{Avg(l => l.TailUs),8:F1}");
            sb.Append(inv, $"{Avg(l => l.Launch.MaxWarpDramRoundTrips),12:F0}{Avg(l => l.Launch.MaxWarpL2RoundTrips),10:F0}{instr,12:F0}{instrUs,10:F1}\n");
        }
        return sb.ToString();
    }

    /// <summary>"; assumed: ..." when the description was changed by `profile --assume`, else nothing.</summary>
    public static string AssumedText(GpuSpec g) => g.Assumed.Count == 0 ? "" : $"; assumed: {string.Join(", ", g.Assumed)}";

    private static string Trim(string s, int n) => s.Length <= n ? s : s[..(n - 1)] + "~";

    /// <summary>A table's kernel column: the kernel, and for a stage of a launch measured apart its stage ("s1/3").</summary>
    private static string LaunchName(LaunchRecord r) => r.Stage is { } st ? $"{Trim(r.Kernel, 20)} s{st.Index}/{st.Count}" : Trim(r.Kernel, 25);
}

/// <summary>
/// Registers per thread and static shared memory of each launched kernel on a GPU: the launch's module (file and -D
/// defines, from its <see cref="LaunchRecord"/>) rebuilt as a CUBIN for the GPU's architecture, and ptxas's report of
/// it. Builds are cached (the compiler's disk cache too).
/// </summary>
public sealed class PtxasResources(KernelCompiler compiler, string arch)
{
    private readonly Dictionary<string, IReadOnlyList<PtxasKernelInfo>> _modules = [];

    public KernelResources For(LaunchRecord r)
    {
        if (string.IsNullOrEmpty(r.ModuleName)) throw new InvalidOperationException($"launch of {r.Kernel} has no module name: cannot rebuild it for {arch}");
        var defines = new Dictionary<string, string>();
        foreach (string o in r.ModuleOptions.Where(o => o.StartsWith("-D", StringComparison.Ordinal)))
        {
            int eq = o.IndexOf('=', StringComparison.Ordinal);
            defines[eq < 0 ? o[2..] : o[2..eq]] = eq < 0 ? "" : o[(eq + 1)..];
        }
        bool lineInfo = false;   // line info does not change the code; the `kernels` verb builds without it too (its cache entries are shared)
        string key = r.ModuleName + "|" + string.Join(";", defines.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => kv.Key + "=" + kv.Value)) + "|" + lineInfo;
        if (!_modules.TryGetValue(key, out var infos))
        {
            var module = compiler.Compile(new KernelBuild(r.ModuleName, arch, CompileTarget.Cubin) { Defines = defines, LineInfo = lineInfo });
            _modules[key] = infos = module.PtxasInfo;
        }
        var info = infos.FirstOrDefault(i => i.Kernel == r.Kernel)
            ?? throw new DeviceUnavailableException($"no ptxas report for kernel {r.Kernel} of {r.ModuleName} built for {arch}: this NVRTC cannot build {arch} CUBINs, which the prediction's register counts come from");
        return new KernelResources(info.Registers, info.StaticSharedBytes);
    }
}
