using Qwen3Cuda.Model;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda bench --model DIR [-p 512] [-n 128] [-r 3] [--device cuda|emulator|auto]`: llama-bench style table
/// (model, size, params, backend, test pp512 / tg128, t/s mean ± stddev) on a GPU. On the emulator, timings mean
/// nothing: it prints the simulated-traffic view of `profile` instead, and says so.
/// </summary>
public static class BenchCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Model directory", Required = true };
        var prompt = new Option<int>("-p", "--n-prompt") { Description = "Prompt tokens (pp test)", DefaultValueFactory = _ => 512 };
        var gen = new Option<int>("-n", "--n-gen") { Description = "Generated tokens (tg test)", DefaultValueFactory = _ => 128 };
        var reps = new Option<int>("-r", "--repetitions") { Description = "Repetitions of each test", DefaultValueFactory = _ => 3 };
        var device = new Option<string>("--device") { Description = "cuda | emulator | auto", DefaultValueFactory = _ => "auto" };
        var util = GpuMemoryCliOption.Create();
        var cmd = new Command("bench", "Prompt processing and generation throughput (llama-bench style)") { model, prompt, gen, reps, device, util };
        cmd.SetAction(parse => ProfileCommand.Guard(parse.InvocationConfiguration.Error, () => Run(parse.GetValue(model)!, parse.GetValue(prompt),
            parse.GetValue(gen), parse.GetValue(reps), parse.GetValue(device)!, GpuMemoryCliOption.Parse(parse.GetValue(util)),
            parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error)));
        return cmd;
    }

    private static int Run(string modelDir, int pp, int tg, int reps, string deviceText, double? utilization, TextWriter stdout, TextWriter stderr)
    {
        if (pp < 1 || tg < 1 || reps < 1) throw new ArgumentException($"-p {pp}, -n {tg} and -r {reps} must be positive");
        var backend = DeviceFactory.Resolve(DeviceFactory.Parse(deviceText), stderr);
        if (backend == BackendKind.Cpu) throw new ArgumentException("bench measures a device backend (cuda); use --device cuda or emulator");
        if (backend == BackendKind.Emulator)
        {
            stdout.WriteLine("bench: no CUDA device; the emulator's timings are meaningless, so this is the simulated-traffic view of one prefill and one decode step (qwen3cuda profile):");
            var r = ProfileCommand.Measure(modelDir, backend, Math.Min(pp, 16), gpuMemoryUtilization: utilization);
            stdout.Write(DeviceProfiler.Table(r.Prefill, true));
            stdout.Write(DeviceProfiler.Table(r.Decode, true));
            stdout.WriteLine($"decode step DRAM {ByteSize.Format(r.Decode.DramBytes)} vs minimum {ByteSize.Format(r.MinimumDecodeBytes)}; at 3.35 TB/s (H100 SXM) that bounds tg at {3.35e12 / r.Decode.DramBytes:F0} t/s");
            return 0;
        }
        using var device = DeviceFactory.Open(backend);
        using var dm = DeviceModel.Load(device, modelDir, new DeviceModelOptions
        {
            ContextLength = pp + tg + 1, PrefillChunkTokens = Math.Min(pp, 512), MaxBatch = 1, GpuMemoryUtilization = utilization,
        });
        int V = dm.VocabSize;
        var prompt = Enumerable.Range(0, pp).Select(i => (i * 7919 + 11) % V).ToArray();
        var logits = new float[V];
        var ppRates = new List<double>();
        var tgRates = new List<double>();
        for (int r = 0; r <= reps; r++)           // repetition 0 warms up
        {
            dm.ResetSequence(0);
            var sw = Stopwatch.StartNew();
            dm.Forward(0, prompt, logits);
            double ppSec = sw.Elapsed.TotalSeconds;
            int next = dm.ForwardGreedy(0, [1]);
            sw.Restart();
            for (int i = 1; i < tg; i++) next = dm.ForwardGreedy(0, [next]);
            double tgSec = sw.Elapsed.TotalSeconds;
            if (r == 0) continue;
            ppRates.Add(pp / ppSec);
            tgRates.Add((tg - 1) / tgSec);
        }
        long bytes = dm.Plan.Weights.TotalBytes;
        string name = $"{dm.Config.ModelType} {dm.Config.NumHiddenLayers}L bf16";
        stdout.WriteLine($"| {"model",-24} | {"size",10} | {"params",8} | {"backend",-8} | {"test",6} | {"t/s",20} |");
        stdout.WriteLine($"| {new string('-', 24)} | {new string('-', 10)} | {new string('-', 8)} | {new string('-', 8)} | {new string('-', 6)} | {new string('-', 20)} |");
        void Row(string test, List<double> rates)
        {
            double mean = rates.Average(), sd = rates.Count > 1 ? Math.Sqrt(rates.Sum(x => (x - mean) * (x - mean)) / (rates.Count - 1)) : 0;
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {name,-24} | {ByteSize.Format(bytes),10} | {dm.Plan.Weights.ParameterCount / 1e9,7:F2}B | {"CUDA",-8} | {test,6} | {$"{mean:F2} ± {sd:F2}",20} |"));
        }
        Row($"pp{pp}", ppRates);
        Row($"tg{tg}", tgRates);
        return 0;
    }
}
