using System.CommandLine;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Server;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda serve -m MODEL [--host 127.0.0.1] [--port 8000] [--api-key K] [--served-model-name N] [--max-num-seqs N]
/// [--max-num-batched-tokens N] [--device D] [-c N] [--draft-model DIR | --draft ngram] [--num-draft-tokens K]`: the
/// OpenAI-compatible HTTP server (docs/serving.md) over one
/// <see cref="Engine"/>. Runs until SIGTERM or Ctrl+C, then stops taking requests, lets in-flight ones finish (up to
/// --shutdown-timeout) and cancels the rest; exit code 0.
/// </summary>
public static class ServeCommand
{
    public static Command Create()
    {
        var model = CliOptions.Model();
        var host = new Option<string>("--host") { Description = "Address to listen on (0.0.0.0: every interface)", DefaultValueFactory = _ => "127.0.0.1", HelpName = "ADDR" };
        var port = CliOptions.Int("--port", [], "TCP port (0: a free one, printed at start)", 8000, 0, 65535, "PORT");
        var apiKey = new Option<string?>("--api-key") { Description = "Require 'Authorization: Bearer KEY' on /v1/* (default: $QWEN3CUDA_API_KEY, else no key)", HelpName = "KEY" };
        var served = new Option<string?>("--served-model-name") { Description = "The model name clients send (default: the --model value)", HelpName = "NAME" };
        var maxSeqs = CliOptions.Int("--max-num-seqs", [], "Most sequences running at once (continuous batching)", 64, 1, 4096);
        var maxTokens = CliOptions.Int("--max-num-batched-tokens", [], "Most token rows per engine step (prefill chunks plus decode rows)", 2048, 1, 1 << 20);
        var maxWaiting = CliOptions.Int("--max-waiting-requests", [], "Requests waiting for admission before new ones get 429", 1024, 1, 1 << 20);
        var noPrefix = new Option<bool>("--no-prefix-caching") { Description = "Do not share KV pages of common prompt prefixes between requests" };
        var device = CliOptions.Device("auto",
            "auto (default): cuda when a GPU opens, else the CPU reference | cuda | cpu (the C# reference) | emulator (the CUDA kernels on the PTX emulator: for testing)",
            "auto", "cuda", "cpu", "emulator");
        var ctx = CliOptions.CtxSize();
        var gpuMemory = CliOptions.GpuMemory();
        var util = CliOptions.GpuMemoryUtilization();
        var shutdown = CliOptions.Seconds("--shutdown-timeout", "Seconds a shutdown lets in-flight requests finish before cancelling them", 30);
        var quiet = new Option<bool>("--quiet", "-q") { Description = "No access log line per request on stderr" };
        var spec = new SpeculativeCliOptions();
        var cmd = new Command("serve", "OpenAI-compatible HTTP server (/v1/chat/completions, /v1/completions, /v1/models, /health, /metrics)")
        {
            model, host, port, apiKey, served, maxSeqs, maxTokens, maxWaiting, noPrefix, device, ctx, gpuMemory, util, shutdown, quiet,
        };
        spec.AddTo(cmd);
        cmd.SetAction(parse =>
        {
            var stderr = parse.InvocationConfiguration.Error;
            string modelSpec = parse.GetValue(model)!;
            string? key = parse.GetValue(apiKey) ?? Environment.GetEnvironmentVariable("QWEN3CUDA_API_KEY");
            if (key is { Length: 0 }) throw new UsageException("--api-key is empty: give a key, or leave the option out to serve without one");
            string? name = parse.GetValue(served);
            if (name is { Length: 0 }) throw new UsageException("--served-model-name is empty");
            OpenAiServer.ResolveHost(parse.GetValue(host)!);   // a bad --host fails before the model loads
            string dir = ModelOpener.Resolve(modelSpec, stderr);
            var options = spec.ApplyTo(parse, new EngineOptions
            {
                MaxNumSeqs = parse.GetValue(maxSeqs),
                MaxNumBatchedTokens = parse.GetValue(maxTokens),
                MaxWaitingRequests = parse.GetValue(maxWaiting),
                EnablePrefixCaching = !parse.GetValue(noPrefix),
                ContextLength = parse.GetValue(ctx),
                Device = parse.GetValue(device)!,
                GpuMemoryBytes = parse.GetValue(gpuMemory),
                GpuMemoryUtilization = parse.GetValue(util),
                ModelName = name ?? DefaultName(modelSpec),
                Log = stderr,
            });
            return Run(dir, options, new ServerOptions
            {
                Host = parse.GetValue(host)!,
                Port = parse.GetValue(port),
                ApiKey = key,
                ServedModelName = options.ModelName,
                HandleSignals = true,
                ShutdownTimeout = TimeSpan.FromSeconds(parse.GetValue(shutdown)),
                Log = parse.GetValue(quiet) ? null : stderr,
            }, stderr).GetAwaiter().GetResult();
        });
        return cmd;
    }

    /// <summary>The name clients send by default: the --model value (demo, ORG/NAME), or a folder's own name.</summary>
    internal static string DefaultName(string modelSpec) =>
        Directory.Exists(modelSpec) ? Path.GetFileName(Path.GetFullPath(modelSpec).TrimEnd(Path.DirectorySeparatorChar)) : modelSpec;

    static async Task<int> Run(string dir, EngineOptions engineOptions, ServerOptions serverOptions, TextWriter stderr)
    {
        await using var engine = await Engine.LoadAsync(dir, engineOptions).ConfigureAwait(false);
        var backend = new EngineBackend(engine, dir);
        var server = await OpenAiServer.StartAsync(backend, serverOptions).ConfigureAwait(false);
        try
        {
            stderr.WriteLine($"serving {server.ModelName} (context {engine.ContextLength} tokens, up to {engineOptions.MaxNumSeqs} sequences{(engineOptions.Speculates ? $", speculative decoding with {engine.NumDraftTokens} draft tokens" : "")}) on {server.Address} " +
                             $"(POST /v1/chat/completions, /v1/completions; GET /v1/models, /health, /metrics){(serverOptions.ApiKey is null ? "" : "; API key required")}; Ctrl+C or SIGTERM stops");
            stderr.Flush();
            await server.WaitForShutdownAsync().ConfigureAwait(false);
            stderr.WriteLine("shutting down: in-flight requests finished or cancelled");
        }
        finally { await server.DisposeAsync().ConfigureAwait(false); }
        stderr.WriteLine("stopped");
        stderr.Flush();
        return ExitCodes.Ok;
    }
}
