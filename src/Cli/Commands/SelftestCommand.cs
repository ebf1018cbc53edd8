using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda selftest [--device cuda|emulator|auto] [--model DIR [--layers N]] [--all-cases] [--only FAMILIES]`: the first thing to run on a
/// GPU. Prints NVRTC, driver and device properties, then a table (section, case, max error, tolerance, pass) of: every
/// kernel file compiled and loaded for the device; every kernel check (the kernel tests' list, <see cref="KernelCases"/>);
/// a copy bandwidth probe; with --model, one prefill + 16 decode steps of the model's first layers against the CPU
/// reference. Exit code 1 when any row fails.
/// </summary>
public static class SelftestCommand
{
    public static Command Create()
    {
        var device = CliOptions.Device("auto", "auto (default: cuda when a GPU opens, else the PTX emulator) | cuda | emulator", "auto", "cuda", "emulator");
        var model = CliOptions.Model(required: false);
        model.Description = "Also compare one prefill + 16 decode steps of this model's first layers with the CPU reference. " + CliOptions.ModelDescription;
        var layers = CliOptions.NullableInt("--layers", [], "Decoder layers of --model to compare (default: 2 on the emulator, 4 on a GPU)", 1, int.MaxValue);
        var all = new Option<bool>("--all-cases") { Description = "On the emulator, also run the heavy real-shape cases (lm_head GEMV, 64/300-token MoE blocks: minutes)" };
        var only = new Option<string?>("--only") { Description = "Comma-separated kernel families to check (rmsnorm, rope, gemv, gemm, attention_decode, ...); compile, bandwidth and model rows always run", HelpName = "FAMILIES" };
        var cmd = new Command("selftest", "Check this machine: NVRTC, driver, device, every kernel against the CPU reference, bandwidth, optionally a model") { device, model, layers, all, only };
        cmd.SetAction(parse => Run(parse.GetValue(device)!, parse.GetValue(model), parse.GetValue(layers), parse.GetValue(all), parse.GetValue(only),
            parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error));
        return cmd;
    }

    private static int Run(string deviceText, string? modelSpec, int? layers, bool allCases, string? only, TextWriter stdout, TextWriter stderr)
    {
        string[]? families = only?.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var known = KernelCases.Families();
        if (families is not null && (families.Length == 0 || families.Any(f => !known.Contains(f))))
            throw new UsageException($"--only '{only}': expected kernel families from {string.Join(", ", known)}");
        if (layers is not null && modelSpec is null) throw new UsageException("--layers needs --model");
        string? modelDir = modelSpec is null ? null : ModelOpener.Resolve(modelSpec, stderr);
        var backend = ModelOpener.ChooseBackend(deviceText, stderr, autoFallback: BackendKind.Emulator);

        var sw = Stopwatch.StartNew();
        Environment(stdout);
        var device = DeviceFactory.Open(backend);
        using (device)
        {
            var d = device.Info;
            string peak = d.PeakMemoryBandwidthBytesPerSecond is double p ? Invariant($", peak memory bandwidth {p / 1e9:F0} GB/s") : "";
            stdout.WriteLine(Invariant($"Device: {d.Name} ({d.Backend.ToString().ToLowerInvariant()}), {d.Arch}, {d.MultiprocessorCount} SMs, {d.TotalMemoryBytes / (double)(1L << 30):F1} GiB, {d.SharedMemoryPerBlockOptin / 1024} KiB shared memory per block (opt-in){peak}"));
            if (device is CudaDevice cuda)
            {
                stdout.WriteLine($"Programmatic dependent launch: {cuda.ProgrammaticLaunchStatus}");
                stdout.WriteLine($"L2 for persisting lines (weights fetched ahead): {cuda.PersistingL2Status}");
            }
            if (d.Backend == BackendKind.Emulator && !allCases) stdout.WriteLine("(the emulator skips the heavy real-shape cases; --all-cases runs them)");
            stdout.WriteLine();
            var rows = new List<SelftestRow>();
            string Header() => $"| {"section",-17} | {"case",-92} | {"max error",-30} | {"tolerance",-48} | pass |";
            stdout.WriteLine(Header());
            stdout.WriteLine($"|{new string('-', 19)}|{new string('-', 94)}|{new string('-', 32)}|{new string('-', 50)}|------|");
            var options = new SelftestOptions
            {
                ModelDir = modelDir, Layers = layers, AllCases = allCases, Families = families,
                Progress = r =>
                {
                    rows.Add(r);
                    stdout.WriteLine($"| {r.Section,-17} | {Fit(r.Case, 92),-92} | {Fit(r.MaxError, 30),-30} | {Fit(r.Tolerance, 48),-48} | {(r.Passed ? "yes " : "FAIL")} |");
                    stdout.Flush();
                },
            };
            Selftest.Run(device, options);
            var failed = rows.Where(r => !r.Passed).ToList();
            foreach (var f in failed) stdout.WriteLine($"\nFAIL {f.Section}: {f.Case}\n{f.Detail}".TrimEnd());
            stdout.WriteLine(Invariant($"\n{rows.Count - failed.Count} passed, {failed.Count} failed ({sw.Elapsed.TotalSeconds:F0} s)"));
            return failed.Count == 0 ? 0 : 1;
        }
    }

    private static void Environment(TextWriter stdout)
    {
        if (NativeLibraries.TryNvrtc(out _))
        {
            var (major, minor) = NvrtcLibrary.Version;
            stdout.WriteLine($"NVRTC: {major}.{minor} ({NativeLibraries.NvrtcPath}), archs sm_{string.Join(" sm_", NvrtcLibrary.SupportedArchs())}");
        }
        else stdout.WriteLine("NVRTC: not found (tried " + string.Join(", ", NativeLibraries.NvrtcCandidates()) + "): kernels cannot be compiled");
        CudaDriverStatus driver;
        try { driver = CudaDriver.Probe(); }
        catch (DeviceException e) { driver = new CudaDriverStatus(true, null, 0, [], $"the driver failed listing devices: {e.Message}"); }
        stdout.WriteLine(driver.DriverLoaded && driver.Problem is null
            ? $"CUDA driver: {driver.DriverVersionText} ({driver.LibraryPath}), {driver.Devices.Count} device(s)"
            : $"CUDA driver: {driver.Problem}");
    }

    private static string Fit(string s, int width) => s.Length <= width ? s : s[..(width - 3)] + "...";

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
