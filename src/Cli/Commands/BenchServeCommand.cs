using System.CommandLine;
using System.Globalization;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Server;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda bench-serve (--url URL | -m MODEL [--device D] [-c N] [--max-num-seqs N]) [--num-prompts N]
/// [--request-rate R | --max-concurrency N] [--input-len N] [--output-len N]`: load on an OpenAI-compatible server, after
/// vLLM's benchmark_serving (random token-id prompts, streamed /v1/completions with ignore_eos). With -m it starts
/// `serve` in process on a free loopback port. Prints request and token throughput, TTFT, ITL and end-to-end latency
/// (mean, p50, p90, p99). On the CPU reference or the emulator the counts are meaningful, the times are not GPU times.
/// </summary>
public static class BenchServeCommand
{
    public static Command Create()
    {
        var url = new Option<string?>("--url") { Description = "Base URL of a running server, e.g. http://127.0.0.1:8000", HelpName = "URL" };
        var model = CliOptions.Model(required: false);
        model.Description = "Start a server in process for this model instead of --url. " + CliOptions.ModelDescription;
        var apiKey = new Option<string?>("--api-key") { Description = "Bearer key for --url (default: $QWEN3CUDA_API_KEY)", HelpName = "KEY" };
        var name = new Option<string?>("--model-name") { Description = "The \"model\" sent (default: the first of GET /v1/models)", HelpName = "NAME" };
        var prompts = CliOptions.Int("--num-prompts", [], "Requests to send", 100, 1, 1_000_000);
        var rate = new Option<double>("--request-rate")
        {
            Description = "Requests per second (Poisson arrivals); inf sends all at once (default)",
            HelpName = "R|inf",
            DefaultValueFactory = _ => double.PositiveInfinity,
            CustomParser = r =>
            {
                string t = CliOptions.Token(r);
                if (t is "inf" or "infinity") return double.PositiveInfinity;
                if (double.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && v > 0 && double.IsFinite(v)) return v;
                r.AddError($"{CliOptions.Name(r)}: '{t}' is not a positive number of requests per second (or inf)");
                return double.PositiveInfinity;
            },
        };
        var concurrency = CliOptions.NullableInt("--max-concurrency", [], "Most requests in flight at once (default: no bound)", 1, 1_000_000);
        var inputLen = CliOptions.Int("--input-len", [], "Prompt tokens per request (random token ids)", 128, 1, CliOptions.MaxContextTokens);
        var outputLen = CliOptions.Int("--output-len", [], "Tokens generated per request (ignore_eos)", 32, 1, CliOptions.MaxContextTokens);
        var seed = CliOptions.Int("--seed", [], "Seed of the random prompts and arrival times", 0, 0, int.MaxValue);
        var device = CliOptions.Device("auto", "With -m: auto (cuda when a GPU opens, else cpu) | cuda | cpu | emulator", "auto", "cuda", "cpu", "emulator");
        var ctx = CliOptions.CtxSize();
        var maxSeqs = CliOptions.Int("--max-num-seqs", [], "With -m: most sequences running at once", 64, 1, 4096);
        var maxTokens = CliOptions.Int("--max-num-batched-tokens", [], "With -m: most token rows per engine step", 2048, 1, 1 << 20);
        var cmd = new Command("bench-serve", "Load an OpenAI-compatible server (vLLM benchmark_serving style): throughput, TTFT, ITL")
        {
            url, model, apiKey, name, prompts, rate, concurrency, inputLen, outputLen, seed, device, ctx, maxSeqs, maxTokens,
        };
        var spec = new SpeculativeCliOptions();
        spec.AddTo(cmd);
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var stderr = parse.InvocationConfiguration.Error;
            string? u = parse.GetValue(url), m = parse.GetValue(model);
            if ((u is null) == (m is null)) throw new UsageException("give either --url URL (a running server) or -m MODEL (a server started in process), not both or neither");
            var options = new ServeBenchmarkOptions
            {
                NumPrompts = parse.GetValue(prompts),
                RequestRate = parse.GetValue(rate),
                MaxConcurrency = parse.GetValue(concurrency),
                InputLength = parse.GetValue(inputLen),
                OutputLength = parse.GetValue(outputLen),
                Seed = parse.GetValue(seed),
                Model = parse.GetValue(name),
                ApiKey = parse.GetValue(apiKey) ?? Environment.GetEnvironmentVariable("QWEN3CUDA_API_KEY"),
            };
            ServeBenchmarkResult result;
            string? note = null;
            if (u is not null)
            {
                if (parse.GetValue(spec.DraftModel) is not null || parse.GetValue(spec.Draft) is not null || parse.GetResult(spec.NumDraftTokens) is { Implicit: false })
                    throw new UsageException("--draft-model, --draft and --num-draft-tokens set up a server started in process (-m MODEL); a server at --url speculates as it was started");
                if (!Uri.TryCreate(u.EndsWith('/') ? u : u + "/", UriKind.Absolute, out var baseUrl) || baseUrl.Scheme is not ("http" or "https"))
                    throw new UsageException($"--url '{u}' is not an http(s) URL such as http://127.0.0.1:8000");
                result = ServeBenchmark.RunAsync(baseUrl, options).GetAwaiter().GetResult();
            }
            else
            {
                string dir = ModelOpener.Resolve(m!, stderr);
                // auto decided here, so that the report knows whether its times are GPU times.
                var backend = ModelOpener.ChooseBackend(parse.GetValue(device)!, stderr);
                string dev = backend.ToString().ToLowerInvariant();
                var engineOptions = spec.ApplyTo(parse, new EngineOptions
                {
                    Device = dev, ContextLength = parse.GetValue(ctx), MaxNumSeqs = parse.GetValue(maxSeqs), MaxNumBatchedTokens = parse.GetValue(maxTokens),
                    MaxWaitingRequests = Math.Max(1024, options.NumPrompts), ModelName = ServeCommand.DefaultName(m!), Log = stderr,
                });
                result = InProcess(dir, engineOptions, options, stderr).GetAwaiter().GetResult();
                if (backend != Qwen3Cuda.Runtime.BackendKind.Cuda)
                    note = $"note: on the {(backend == Qwen3Cuda.Runtime.BackendKind.Cpu ? "CPU reference" : "PTX emulator")} the counts (requests, tokens, failures) are meaningful; the times are not GPU times.";
            }
            stdout.Write(ServeBenchmark.Format(result, note));
            stdout.Flush();
            if (result.Failed > 0)
                throw new InvalidDataException($"{result.Failed} of {result.Requests.Count} requests failed (first: {result.Requests.First(r => !r.Ok).Error})");
            return ExitCodes.Ok;
        });
        return cmd;
    }

    static async Task<ServeBenchmarkResult> InProcess(string dir, EngineOptions engineOptions, ServeBenchmarkOptions options, TextWriter stderr)
    {
        await using var engine = await Engine.LoadAsync(dir, engineOptions).ConfigureAwait(false);
        var server = await OpenAiServer.StartAsync(new EngineBackend(engine, dir), new ServerOptions { Host = "127.0.0.1", Port = 0 }).ConfigureAwait(false);
        await using (server.ConfigureAwait(false))
        {
            stderr.WriteLine($"bench-serve: {options.NumPrompts} requests to {engine.ModelName} ({engineOptions.Device}) via {server.Address}");
            stderr.Flush();
            var result = await ServeBenchmark.RunAsync(server.Address, options).ConfigureAwait(false);
            if (engineOptions.Speculates)
            {
                var e = engine.Metrics;
                stderr.WriteLine(string.Create(System.Globalization.CultureInfo.InvariantCulture,
                    $"speculative decoding: {e.SpecDecodeRounds} rounds, {e.SpecDecodeAcceptedTokens}/{e.SpecDecodeDraftTokens} drafted tokens accepted ({e.SpecDecodeAcceptanceRate:P1}), mean acceptance length {e.SpecDecodeMeanAcceptanceLength:F2}"));
                stderr.Flush();
            }
            return result;
        }
    }
}
