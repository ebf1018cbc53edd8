using Qwen3Cuda.Model;
using Qwen3Cuda.Runtime.Launchers;
using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda bench -m MODEL [-p 512] [-n 128] [-r 3] [--device auto|cuda|cpu|emulator] [-o md|json|csv]`: llama-bench
/// style results (model, size, params, backend, test pp512 / tg128, t/s mean ± stddev) as a markdown table, JSON or
/// CSV. cuda times the device model; cpu the C# reference; auto is cuda when a GPU opens, else cpu. On the emulator,
/// timings mean nothing: it prints the simulated-traffic view of `profile` instead, and says so.
/// </summary>
public static class BenchCommand
{
    /// <summary>One result row, as llama-bench reports it.</summary>
    public sealed record Row(string Model, long SizeBytes, long Parameters, string Backend, string Test, int Tokens, double TokensPerSecond, double StdDev, int Repetitions);

    public static Command Create()
    {
        var model = CliOptions.Model();
        var prompt = CliOptions.Int("--n-prompt", ["-p"], "Prompt tokens (pp test)", 512, 1, CliOptions.MaxContextTokens);
        var gen = CliOptions.Int("--n-gen", ["-n"], "Generated tokens (tg test)", 128, 1, CliOptions.MaxContextTokens);
        var reps = CliOptions.Int("--repetitions", ["-r"], "Repetitions of each test (after one warm-up)", 3, 1, 1000);
        var device = CliOptions.Device("auto", "auto (default: cuda when a GPU opens, else cpu) | cuda | cpu (the C# reference) | emulator (simulated traffic, no timings)",
            "auto", "cuda", "cpu", "emulator");
        var output = CliOptions.Choice("--output", ["-o"], "Output format: md (a markdown table), json or csv", "md", "md", "json", "csv");
        var util = CliOptions.GpuMemoryUtilization();
        var spec = new SpeculativeCliOptions();
        var cmd = new Command("bench", "Prompt processing and generation throughput (llama-bench style)") { model, prompt, gen, reps, device, output, util };
        spec.AddTo(cmd);
        cmd.SetAction(parse => Run(parse.GetValue(model)!, parse.GetValue(prompt), parse.GetValue(gen), parse.GetValue(reps), parse.GetValue(device)!,
            parse.GetValue(output)!, parse.GetValue(util), parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error, Speculation(parse, spec)));
        return cmd;
    }

    /// <summary>What `bench --draft-model DIR | --draft ngram [--num-draft-tokens K]` asked for (null: no speculation).</summary>
    sealed record SpeculationRequest(string? DraftDir, int NumDraftTokens);

    static SpeculationRequest? Speculation(ParseResult parse, SpeculativeCliOptions spec)
    {
        string? draftModel = parse.GetValue(spec.DraftModel), kind = parse.GetValue(spec.Draft);
        if (draftModel is not null && kind is not null) throw new UsageException("give either --draft-model DIR or --draft ngram, not both");
        if (draftModel is null && kind is null)
        {
            if (parse.GetResult(spec.NumDraftTokens) is { Implicit: false }) throw new UsageException("--num-draft-tokens needs --draft-model DIR or --draft ngram");
            return null;
        }
        return new SpeculationRequest(draftModel, parse.GetValue(spec.NumDraftTokens));
    }

    private static int Run(string modelSpec, int pp, int tg, int reps, string deviceText, string format, double? utilization, TextWriter stdout, TextWriter stderr,
        SpeculationRequest? speculation = null)
    {
        string? draftDir = speculation?.DraftDir is string d ? ModelOpener.Resolve(d, stderr) : null;
        string modelDir = ModelOpener.Resolve(modelSpec, stderr);
        var config = ModelConfig.Load(modelDir);
        if (pp + tg > config.MaxPositionEmbeddings)
            throw new UsageException($"-p {pp} + -n {tg} = {pp + tg} tokens, more than the model's context of {config.MaxPositionEmbeddings} (max_position_embeddings)");
        var backend = ModelOpener.ChooseBackend(deviceText, stderr, autoFallback: BackendKind.Cpu);
        if (backend == BackendKind.Emulator)
        {
            if (format != "md") throw new UsageException($"-o {format} needs timings, and the emulator's mean nothing: use --device cpu or cuda");
            stdout.WriteLine("bench: the emulator's timings are meaningless, so this is the simulated-traffic view of one prefill and one decode step (qwen3cuda profile):");
            var r = ProfileCommand.Measure(modelDir, backend, Math.Min(pp, 16), utilization: utilization);
            stdout.WriteLine(ProfileCommand.WeightsLine(r.Plan));
            stdout.Write(DeviceProfiler.Table(r.Prefill, true));
            stdout.Write(DeviceProfiler.Table(r.Decode, true));
            stdout.WriteLine($"decode step DRAM {ByteSize.Format(r.Decode.DramBytes)} vs minimum {ByteSize.Format(r.MinimumDecodeBytes)}; at 3.35 TB/s (H100 SXM) that bounds tg at {3.35e12 / r.Decode.DramBytes:F0} t/s");
            if (speculation is not null) SpeculativeBench.Predict(modelDir, draftDir, speculation.NumDraftTokens, Math.Min(tg, 32), GpuCatalog.Get("h100"), stdout);
            return 0;
        }
        var rows = backend == BackendKind.Cpu ? MeasureCpu(modelDir, config, pp, tg, reps) : MeasureCuda(modelDir, pp, tg, reps, utilization);
        if (speculation is not null) rows = [.. rows, MeasureSpeculative(modelDir, draftDir, backend, pp, tg, reps, speculation.NumDraftTokens, rows[0], stderr)];
        Write(rows, format, stdout);
        return 0;
    }

    /// <summary>The tg test with speculation (greedy), on the target's backend; the acceptance stats of the last repetition go to stderr.</summary>
    static Row MeasureSpeculative(string modelDir, string? draftDir, BackendKind backend, int pp, int tg, int reps, int k, Row like, TextWriter stderr)
    {
        using var target = ModelOpener.Open(modelDir, backend, maxSequences: 1, pp + tg + k + 1, null, TextWriter.Null, null, k + 1);
        using var draft = draftDir is null ? null : ModelOpener.Open(draftDir, backend, maxSequences: 1, pp + tg + k + 1, null, TextWriter.Null);
        Model.Speculative.SpeculativeDecoder.CheckVocabulary(target.Model.VocabSize, draft?.Model.VocabSize);
        var prompt = Prompt(pp, target.Model.VocabSize);
        var rates = new List<double>();
        Model.Speculative.SpeculationStats? stats = null;
        for (int r = 0; r <= reps; r++)
        {
            using Model.Speculative.IDrafter drafter = draft is null ? new Model.Speculative.NgramDrafter() : new Model.Speculative.ModelDrafter(draft.Model);
            var (rate, s) = SpeculativeBench.MeasureGreedy(target.Model, drafter, k, prompt, tg);
            if (r == 0) continue;   // warm-up
            rates.Add(rate);
            stats = s;
        }
        stderr.WriteLine($"bench tg{tg} with {(draftDir is null ? "prompt lookup" : "a draft model")}, k {k}: {stats}");
        return Make(like.Model, like.SizeBytes, like.Parameters, like.Backend, $"tg{tg}+spec{k}", tg, rates);
    }

    static int[] Prompt(int n, int vocab) => Enumerable.Range(0, n).Select(i => (i * 7919 + 11) % vocab).ToArray();

    static IReadOnlyList<Row> MeasureCuda(string modelDir, int pp, int tg, int reps, double? utilization)
    {
        using var device = DeviceFactory.Open(BackendKind.Cuda);
        using var dm = DeviceModel.Load(device, modelDir, new DeviceModelOptions
        {
            ContextLength = pp + tg + 1, MaxBatch = 1, GpuMemoryUtilization = utilization,
            // the prompt in one chunk up to 2048 tokens, smaller when the memory does not allow it (PrefillChunkSizing)
            PrefillChunkTokens = Math.Min(pp, PrefillChunkSizing.DefaultMaxChunkTokens), AutoPrefillChunk = true,
        });
        var prompt = Prompt(pp, dm.VocabSize);
        var logits = new float[dm.VocabSize];
        var generated = new int[tg];
        var (ppRates, tgRates) = Repeat(reps, pp, tg,
            () => { dm.ResetSequence(0); dm.Forward(0, prompt, logits); },
            // tg steps as generation runs them: pipelined (each step queued before the host reads the token before it)
            () => dm.Generate(0, [1], new SamplingSettings(Temperature: 0f), generated));
        string name = $"{dm.Config.ModelType} {dm.Config.NumHiddenLayers}L {dm.Plan.Weights.Format.LinearFormat.Name()}";
        return [Make(name, dm.Plan.Weights.TotalBytes, dm.Plan.Weights.ParameterCount, "CUDA", $"pp{pp}", pp, ppRates),
                Make(name, dm.Plan.Weights.TotalBytes, dm.Plan.Weights.ParameterCount, "CUDA", $"tg{tg}", tg, tgRates)];
    }

    static IReadOnlyList<Row> MeasureCpu(string modelDir, ModelConfig config, int pp, int tg, int reps)
    {
        using var m = ReferenceModel.Load(modelDir, maxSequences: 1, contextLength: pp + tg + 1);
        var prompt = Prompt(pp, m.VocabSize);
        var logits = new float[m.VocabSize];
        var (ppRates, tgRates) = Repeat(reps, pp, tg,
            () => { m.ResetSequence(0); m.Forward(0, prompt, logits); },
            () =>
            {
                m.Forward(0, [1], logits);
                for (int i = 1; i < tg; i++) m.Forward(0, [Sampler.ArgMax(logits)], logits);
            });
        var layout = new WeightLayout(config, m.Weights.Checkpoint.Contains("lm_head.weight"));
        string name = $"{config.ModelType} {config.NumHiddenLayers}L {layout.Format.LinearFormat.Name()}";
        return [Make(name, layout.TotalBytes, layout.ParameterCount, "CPU", $"pp{pp}", pp, ppRates),
                Make(name, layout.TotalBytes, layout.ParameterCount, "CPU", $"tg{tg}", tg, tgRates)];
    }

    /// <summary>Repetition 0 warms up; each later one times the prefill of pp tokens, then tg decode steps of one token
    /// each after it (as llama-bench's pp and tg tests).</summary>
    static (List<double> Pp, List<double> Tg) Repeat(int reps, int pp, int tg, Action prefill, Action decode)
    {
        var ppRates = new List<double>();
        var tgRates = new List<double>();
        for (int r = 0; r <= reps; r++)
        {
            var sw = Stopwatch.StartNew();
            prefill();
            double ppSec = sw.Elapsed.TotalSeconds;
            sw.Restart();
            decode();
            double tgSec = sw.Elapsed.TotalSeconds;
            if (r == 0) continue;
            ppRates.Add(pp / ppSec);
            tgRates.Add(tg / tgSec);
        }
        return (ppRates, tgRates);
    }

    static Row Make(string model, long size, long parameters, string backend, string test, int tokens, List<double> rates)
    {
        double mean = rates.Average(), sd = rates.Count > 1 ? Math.Sqrt(rates.Sum(x => (x - mean) * (x - mean)) / (rates.Count - 1)) : 0;
        return new Row(model, size, parameters, backend, test, tokens, mean, sd, rates.Count);
    }

    public static void Write(IReadOnlyList<Row> rows, string format, TextWriter stdout)
    {
        var inv = CultureInfo.InvariantCulture;
        switch (format)
        {
            case "json":
                stdout.WriteLine(JsonSerializer.Serialize(rows.Select(r => new
                {
                    model = r.Model, size_bytes = r.SizeBytes, parameters = r.Parameters, backend = r.Backend, test = r.Test,
                    tokens = r.Tokens, avg_ts = r.TokensPerSecond, stddev_ts = r.StdDev, repetitions = r.Repetitions,
                }), new JsonSerializerOptions { WriteIndented = true }));
                break;
            case "csv":
                stdout.WriteLine("model,size_bytes,parameters,backend,test,tokens,avg_ts,stddev_ts,repetitions");
                foreach (var r in rows)
                    stdout.WriteLine(string.Create(inv, $"\"{r.Model}\",{r.SizeBytes},{r.Parameters},{r.Backend},{r.Test},{r.Tokens},{r.TokensPerSecond:F3},{r.StdDev:F3},{r.Repetitions}"));
                break;
            default:
                stdout.WriteLine($"| {"model",-24} | {"size",10} | {"params",8} | {"backend",-8} | {"test",8} | {"t/s",20} |");
                stdout.WriteLine($"| {new string('-', 24)} | {new string('-', 10)} | {new string('-', 8)} | {new string('-', 8)} | {new string('-', 8)} | {new string('-', 20)} |");
                foreach (var r in rows)
                    stdout.WriteLine(string.Create(inv,
                        $"| {r.Model,-24} | {ByteSize.Format(r.SizeBytes),10} | {FormatParams(r.Parameters),8} | {r.Backend,-8} | {r.Test,8} | {$"{r.TokensPerSecond:F2} ± {r.StdDev:F2}",20} |"));
                break;
        }
    }

    static string FormatParams(long p) => p >= 1_000_000_000
        ? (p / 1e9).ToString("F2", CultureInfo.InvariantCulture) + " B"
        : (p / 1e6).ToString("F2", CultureInfo.InvariantCulture) + " M";
}
