using System.Diagnostics;
using System.Globalization;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>One row of the selftest table: a case, its largest error (or measured value), the tolerance it is held to, pass.</summary>
public sealed record SelftestRow(string Section, string Case, string MaxError, string Tolerance, bool Passed, string Detail = "")
{
    public static SelftestRow Info(string section, string what, string value) => new(section, what, value, "", true);
}

public sealed record SelftestOptions
{
    /// <summary>Model directory for the end-to-end check (null: kernels only).</summary>
    public string? ModelDir { get; init; }
    /// <summary>Decoder layers of the model to compare (the first ones). Null: 2 on the emulator, 4 on a GPU.</summary>
    public int? Layers { get; init; }
    /// <summary>Run the heavy kernel cases on the emulator too (a GPU always runs them).</summary>
    public bool AllCases { get; init; }
    /// <summary>Kernel families to check (null: all); compile, bandwidth and model rows always run.</summary>
    public IReadOnlyCollection<string>? Families { get; init; }
    /// <summary>Receives one line per finished row (progress), or null.</summary>
    public Action<SelftestRow>? Progress { get; init; }
}

/// <summary>
/// `qwen3cuda selftest`: what a GPU user runs first. On the device given: NVRTC and driver versions and the device's
/// properties; every kernel file compiled for the device's architecture and loaded; every kernel check of
/// <see cref="KernelCases"/> (the kernel tests' own list: real Qwen3-30B-A3B shapes and odd shapes against the CPU
/// reference, each at its stated tolerance; on the emulator without the heavy ones unless asked); a device-to-device copy
/// bandwidth probe against the memory's peak (not measured on the emulator); and with a model, one prefill and 16
/// decode steps of its first layers against the CPU reference model.
/// </summary>
public static class Selftest
{
    /// <summary>Decode steps the model check runs after its prefill.</summary>
    public const int DecodeSteps = 16;
    /// <summary>Prompt tokens of the model check's prefill.</summary>
    public const int PromptTokens = 16;
    // The device model test suite's tolerances (tests/DeviceModel/DeviceModelTests.cs): both sides round to bf16 at the same
    // points, but fp32 sums run in different orders, so an intermediate may differ by one bf16 ulp and that propagates.
    public const double LogitRelTolerance = 0.03, LogitNmseTolerance = 1e-4;
    /// <summary>A device-to-device copy must reach this fraction of the memory's peak bandwidth.</summary>
    public const double MinBandwidthFraction = 0.5;

    public static IReadOnlyList<SelftestRow> Run(IDevice device, SelftestOptions options)
    {
        var rows = new List<SelftestRow>();
        void Add(SelftestRow r) { rows.Add(r); options.Progress?.Invoke(r); }
        bool emulator = device.Info.Backend == BackendKind.Emulator;

        using (var ctx = new KernelCheckContext(device, ownsDevice: false))   // freed before the bandwidth probe and the model
        {
            foreach (var r in CompileAll(ctx)) Add(r);
            foreach (var c in KernelCases.All())
            {
                if (emulator && c.Heavy && !options.AllCases) continue;
                if (options.Families is { } only && !only.Contains(c.Family)) continue;
                Add(RunCase(ctx, c));
            }
        }
        Add(Bandwidth(device));
        if (options.ModelDir is string dir)
            foreach (var r in ModelCheck(device, dir, options.Layers ?? (emulator ? 2 : 4))) Add(r);
        return rows;
    }

    /// <summary>Every kernel file compiled for the device (a CUBIN where NVRTC knows its architecture, else PTX the driver JITs) and loaded.</summary>
    public static IEnumerable<SelftestRow> CompileAll(KernelCheckContext ctx)
    {
        foreach (string file in KernelSources.KernelFiles)
        {
            SelftestRow row;
            try
            {
                var sw = Stopwatch.StartNew();
                DeviceModule m = ctx.Loader.Module(file);
                var target = ctx.Device.Info.Backend == BackendKind.Cuda ? CompileTarget.Cubin : CompileTarget.Ptx;
                CompiledModule compiled = ctx.Loader.Compiler.Compile(new KernelBuild(file, ctx.Device.Info.Arch, target));
                string what = compiled.CubinArch is string sm ? $"{sm} CUBIN" : $"{compiled.PtxArch} PTX";
                int spills = compiled.PtxasInfo.Sum(k => k.SpillStoreBytes + k.SpillLoadBytes);
                string regs = compiled.PtxasInfo.Count > 0 ? $", up to {compiled.PtxasInfo.Max(k => k.Registers)} registers, {spills} B spilled" : "";
                row = new SelftestRow("compile", $"{file}: {m.KernelNames.Count} kernels, {what}{regs}", "", "compiles and loads", true,
                    string.Create(CultureInfo.InvariantCulture, $"{sw.Elapsed.TotalMilliseconds:F0} ms"));
            }
            catch (Exception e) when (e is Runtime.Native.NvrtcException or DeviceException or NotSupportedException or ArgumentException)
            {
                row = new SelftestRow("compile", file, "", "compiles and loads", false, e.Message);
            }
            yield return row;
        }
    }

    public static SelftestRow RunCase(KernelCheckContext ctx, KernelCase c)
    {
        CheckResult r;
        try { r = c.Check(ctx); }
        catch (Exception e) when (e is DeviceException or InvalidOperationException or ArgumentException)
        {
            return new SelftestRow(c.Family, c.Name, "", "", false, $"{e.GetType().Name}: {e.Message}");
        }
        var w = r.Worst;
        return new SelftestRow(c.Family, c.Name, w.MaxError.ToString("G3", CultureInfo.InvariantCulture),
            w.Tolerance + (r.Lines.Count > 1 ? $" ({w.What}; {r.Lines.Count} checks)" : $" ({w.What})"), r.Passed, r.Passed ? "" : r.ToString());
    }

    /// <summary>
    /// Device-to-device copies of 2 x 256 MiB (or a quarter of the free memory), timed with events: read + written bytes per
    /// second against the memory's peak (2 x memory clock x bus width). The emulator's timings mean nothing.
    /// </summary>
    public static SelftestRow Bandwidth(IDevice device)
    {
        if (device.Info.Backend != BackendKind.Cuda)
            return SelftestRow.Info("bandwidth", "device-to-device copy: not measured on the emulator (its timings mean nothing)", "-");
        long bytes = Math.Min(256L << 20, device.GetMemoryInfo().FreeBytes / 4) & ~255L;
        DevicePtr a = device.Allocate(bytes), b = device.Allocate(bytes);
        try
        {
            var stream = device.DefaultStream;
            device.MemsetAsync(a, 1, bytes, stream);
            device.CopyDeviceToDeviceAsync(b, a, bytes, stream);   // warm-up
            using var start = device.CreateEvent();
            using var end = device.CreateEvent();
            const int copies = 20;
            device.Record(start, stream);
            for (int i = 0; i < copies; i++) device.CopyDeviceToDeviceAsync((i & 1) == 0 ? b : a, (i & 1) == 0 ? a : b, bytes, stream);
            device.Record(end, stream);
            device.Synchronize(end);
            double seconds = device.ElapsedMilliseconds(start, end) / 1000.0;
            double gbps = 2.0 * bytes * copies / seconds / 1e9;
            string what = $"device-to-device copy, {bytes >> 20} MiB x {copies}";
            if (device.Info.PeakMemoryBandwidthBytesPerSecond is not double peak)
                return SelftestRow.Info("bandwidth", what, string.Create(CultureInfo.InvariantCulture, $"{gbps:F0} GB/s (the driver reports no peak)"));
            double fraction = gbps * 1e9 / peak;
            return new SelftestRow("bandwidth", what, string.Create(CultureInfo.InvariantCulture, $"{gbps:F0} GB/s = {fraction:P0} of {peak / 1e9:F0}"),
                string.Create(CultureInfo.InvariantCulture, $">= {MinBandwidthFraction:P0} of peak"), fraction >= MinBandwidthFraction);
        }
        finally
        {
            device.Free(a);
            device.Free(b);
        }
    }

    /// <summary>
    /// The first <paramref name="layers"/> layers of the model (embedding, those layers, final norm, lm_head) on the device and
    /// in the CPU reference: one prefill of <see cref="PromptTokens"/> tokens, then <see cref="DecodeSteps"/> decode steps,
    /// each fed the reference's greedy token so the two never diverge. Logits within <see cref="LogitRelTolerance"/> of the
    /// largest reference logit and NMSE within <see cref="LogitNmseTolerance"/>; the device's greedy token must be the
    /// reference's wherever the reference's top-2 margin exceeds twice the step's largest logit difference (a near-tie may flip).
    /// </summary>
    public static IEnumerable<SelftestRow> ModelCheck(IDevice device, string modelDir, int layers)
    {
        var rows = new List<SelftestRow>();
        ModelWeights deviceWeights;
        try { deviceWeights = ModelWeights.Load(modelDir, layers); }
        catch (Exception e) when (e is IOException or Config.ConfigException or Checkpoint.CheckpointException or InvalidDataException)
        {
            rows.Add(new SelftestRow("model", $"load {modelDir}", "", "", false, e.Message));
            return rows;
        }
        using (deviceWeights)
        {
            var c = deviceWeights.Config;
            int total = Config.ModelConfig.Load(modelDir).NumHiddenLayers;
            string scope = $"{c.NumHiddenLayers} of {total} layers";
            var options = new DeviceModelOptions { ContextLength = PromptTokens + DecodeSteps + 1, PrefillChunkTokens = PromptTokens, MaxBatch = 1, PageSize = 16 };
            using var dm = new DeviceModel(device, deviceWeights, options);
            using var rm = new ReferenceModel(ModelWeights.Load(modelDir, layers), 1, dm.ContextLength);
            int V = dm.VocabSize;
            // The device model tests' prompt (tests/DeviceModel/DeviceModelTests.cs): the tolerances above were set on it.
            var prompt = Enumerable.Range(0, PromptTokens).Select(i => (i * 37 + 104) % V).ToArray();
            float[] a = new float[V], b = new float[V];
            dm.Forward(0, prompt, a);
            rm.Forward(0, prompt, b);
            rows.Add(LogitRow($"prefill of {PromptTokens} tokens ({scope})", a, b));
            double worstRel = 0, worstNmse = 0;
            int worstStep = 0, flips = 0, checkedTokens = 0;
            for (int s = 0; s < DecodeSteps; s++)
            {
                var (rel, nmse, maxAbs) = Compare(a, b);
                if (rel > worstRel) (worstRel, worstStep) = (rel, s);
                worstNmse = Math.Max(worstNmse, nmse);
                var (best, margin) = Top2(b);
                if (margin > 2 * maxAbs) { checkedTokens++; if (ArgMax(a) != best) flips++; }
                dm.Forward(0, [best], a);
                rm.Forward(0, [best], b);
            }
            var (lr, ln, _) = Compare(a, b);
            if (lr > worstRel) (worstRel, worstStep) = (lr, DecodeSteps);
            worstNmse = Math.Max(worstNmse, ln);
            rows.Add(new SelftestRow("model", $"{DecodeSteps} decode steps ({scope}), worst at step {worstStep}",
                Invariant($"{worstRel:G3} of max|ref|, NMSE {worstNmse:G3}"), Invariant($"{LogitRelTolerance} of max|ref|, NMSE {LogitNmseTolerance}"),
                worstRel <= LogitRelTolerance && worstNmse <= LogitNmseTolerance));
            rows.Add(new SelftestRow("model", $"greedy tokens equal the reference's where its top-2 margin > 2 max|d| ({checkedTokens} of {DecodeSteps} steps)",
                $"{flips} differ", "0 differ", flips == 0));
        }
        return rows;
    }

    static SelftestRow LogitRow(string what, float[] device, float[] reference)
    {
        var (rel, nmse, _) = Compare(device, reference);
        return new SelftestRow("model", what, Invariant($"{rel:G3} of max|ref|, NMSE {nmse:G3}"),
            Invariant($"{LogitRelTolerance} of max|ref|, NMSE {LogitNmseTolerance}"), rel <= LogitRelTolerance && nmse <= LogitNmseTolerance);
    }

    /// <summary>max |d| / max |ref|, normalised MSE and max |d| (NaN anywhere: infinite errors).</summary>
    static (double Rel, double Nmse, double MaxAbs) Compare(ReadOnlySpan<float> dev, ReadOnlySpan<float> reference)
    {
        double maxRef = 0, maxAbs = 0, se = 0, ss = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
            double d = dev[i] - reference[i];
            maxAbs = double.IsNaN(d) ? double.PositiveInfinity : Math.Max(maxAbs, Math.Abs(d));
            se += d * d; ss += (double)reference[i] * reference[i];
        }
        double nmse = se / Math.Max(ss, 1e-30);
        return (maxAbs / Math.Max(maxRef, 1e-30), double.IsNaN(nmse) ? double.PositiveInfinity : nmse, maxAbs);
    }

    static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    static (int Best, double Margin) Top2(ReadOnlySpan<float> v)
    {
        int best = ArgMax(v);
        double second = double.NegativeInfinity;
        for (int i = 0; i < v.Length; i++) if (i != best) second = Math.Max(second, v[i]);
        return (best, v[best] - second);
    }

    static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
