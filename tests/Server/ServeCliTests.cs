using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Server;
using Qwen3Cuda.Tests.Cli;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Server;

/// <summary>
/// `qwen3cuda serve` and `bench-serve` as users run them: usage errors (exit code 2, one line naming the option), the
/// server as a child process stopped by SIGTERM while a request streams (the request finishes, exit code 0), and a
/// bounded load test on loopback (200 requests, concurrency 32, the demo model on the CPU reference).
/// </summary>
[TestFixture, NonParallelizable, CancelAfter(120_000)]
public sealed class ServeCliTests
{
    string? _oldCache;

    [OneTimeSetUp] public void SaveCache() => _oldCache = Environment.GetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable);
    [OneTimeTearDown] public void RestoreCache() => Environment.SetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable, _oldCache);

    [TestCase("serve --port 70000", "--port")]
    [TestCase("serve --max-num-seqs 0", "--max-num-seqs")]
    [TestCase("serve --api-key=", "--api-key")]
    [TestCase("bench-serve --num-prompts 5", "either --url")]
    [TestCase("bench-serve --url ftp://x --num-prompts 5", "--url")]
    [TestCase("bench-serve --url http://127.0.0.1:1 --request-rate -3", "--request-rate")]
    public void UsageError_IsOneLineNamingTheOption_Exit2(string args, string named)
    {
        var argv = args.Split(' ').ToList();
        if (argv[0] == "serve") argv.InsertRange(1, ["-m", CliModels.TinyText()]);
        var (exit, _, err) = CliRunner.Run([.. argv]);
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage), err);
        Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1), err);
        Assert.That(err, Does.StartWith("error: ").And.Contain(named));
    }

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    [Test]
    public async Task Serve_ChildProcess_SigtermLetsTheStreamingRequestFinish_Exit0()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("sends SIGTERM with kill(2)");
        string cache = CliModels.UseTestModelCache();
        ModelLocator.EnsureDemo();
        var psi = new ProcessStartInfo(ChildProcess.DotnetHost) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { CliRunner.Dll, "serve", "-m", "demo", "--device", "cpu", "--port", "0", "-c", "512", "--api-key", "k" }) psi.ArgumentList.Add(a);
        psi.Environment[ModelLocator.CacheEnvironmentVariable] = cache;
        using var p = Process.Start(psi)!;
        var stderr = new System.Text.StringBuilder();
        var listening = new TaskCompletionSource<Uri>(TaskCreationOptions.RunContinuationsAsynchronously);
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            var m = System.Text.RegularExpressions.Regex.Match(e.Data, @"^serving demo .* on (http://\S+) ");
            if (m.Success) listening.TrySetResult(new Uri(m.Groups[1].Value));
        };
        p.BeginErrorReadLine();
        var stdout = p.StandardOutput.ReadToEndAsync();
        string Err() { lock (stderr) return stderr.ToString(); }
        try
        {
            var address = await listening.Task.WaitAsync(TimeSpan.FromSeconds(60));
            using var http = new HttpClient { BaseAddress = address };
            Assert.That((await http.GetAsync("/health")).StatusCode, Is.EqualTo(System.Net.HttpStatusCode.OK));
            var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent("""{"prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": true, "stream": true}""", System.Text.Encoding.UTF8, "application/json"),
                Headers = { Authorization = new("Bearer", "k") },
            };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            Assert.That(await reader.ReadLineAsync(), Does.StartWith("data: "), "the stream started");
            Assert.That(kill(p.Id, 15), Is.Zero, "kill(SIGTERM)");
            var events = ServerWireTests.SseEvents("data: x\n\n" + await reader.ReadToEndAsync()).Skip(1).ToList();
            Assert.That(events[^1], Is.EqualTo("[DONE]"), "the in-flight request finished after SIGTERM");
            var last = JsonDocument.Parse(events[^2]).RootElement.GetProperty("choices")[0];
            Assert.That(last.GetProperty("finish_reason").GetString(), Is.EqualTo("length"), "it ran to its 40 tokens");
            Assert.That(p.WaitForExit(30_000), Is.True, "the server exited after SIGTERM");
            p.WaitForExit();
        }
        finally { if (!p.HasExited) p.Kill(entireProcessTree: true); }
        Assert.That(p.ExitCode, Is.EqualTo(ExitCodes.Ok), Err());
        Assert.That(Err(), Does.Contain("stopped"));
        _ = await stdout;
    }

    [Test]
    public async Task LoadTest_200RequestsAtConcurrency32_AllCompleteExactly_NothingLeftRunning()
    {
        CliModels.UseTestModelCache();
        string dir = ModelLocator.EnsureDemo();
        // Prefix caching off: the pages of finished requests are then all free, not kept cached.
        await using var engine = await Engine.LoadAsync(dir, new EngineOptions
        {
            Device = "cpu", ContextLength = 128, MaxNumSeqs = 32, ModelName = "demo", EnablePrefixCaching = false,
        });
        var server = await OpenAiServer.StartAsync(new EngineBackend(engine, dir), new ServerOptions { Host = "127.0.0.1", Port = 0 });
        await using var owned = server;
        var result = await ServeBenchmark.RunAsync(server.Address, new ServeBenchmarkOptions
        {
            NumPrompts = 200, MaxConcurrency = 32, InputLength = 12, OutputLength = 4, Seed = 3,
        });
        Assert.That(result.Requests, Has.Count.EqualTo(200));
        Assert.That(result.Failed, Is.Zero, string.Join("; ", result.Requests.Where(r => !r.Ok).Select(r => r.Error).Distinct()));
        Assert.That(result.Requests.Select(r => r.OutputTokens), Is.All.EqualTo(4), "every request got exactly its 4 tokens");
        Assert.That(result.Requests.Select(r => r.PromptTokens), Is.All.EqualTo(12));
        Assert.That(engine.Metrics.RequestsFinished, Is.EqualTo(200), "none lost, none run twice");
        Assert.That(engine.Metrics.GeneratedTokens, Is.EqualTo(800));
        Assert.That(engine.Metrics.Running + engine.Metrics.Waiting, Is.Zero);
        Assert.That(engine.Metrics.KvPagesUsed, Is.Zero, "every KV page is free at the end");
        Assert.That(server.Metrics.TimeToFirstToken.Count, Is.EqualTo(200));
        using var http = new HttpClient { BaseAddress = server.Address };
        var metrics = ServerWireTests.ParsePrometheus(await http.GetStringAsync("/metrics"));
        Assert.That(metrics["qwen3cuda_requests_total{outcome=\"length\"}"], Is.EqualTo(200));
        Assert.That(metrics["qwen3cuda_generation_tokens_total"], Is.EqualTo(800));
        Assert.That(metrics["qwen3cuda_num_requests_running"] + metrics["qwen3cuda_num_requests_waiting"], Is.Zero);
        Assert.That(metrics["qwen3cuda_engine_time_to_first_token_seconds_count"], Is.EqualTo(200), "one engine TTFT per request");
        Assert.That(metrics["qwen3cuda_engine_inter_token_latency_seconds_count"], Is.EqualTo(200 * 3), "three gaps between four tokens");
        string report = ServeBenchmark.Format(result, null);
        Assert.That(report, Does.Contain("Successful requests:").And.Contain("P99 ITL (ms):"));
    }

    [Test]
    public async Task RealEngine_QueueFull_Is429WithRetryAfter_TheAdmittedOnesComplete()
    {
        CliModels.UseTestModelCache();
        string dir = ModelLocator.EnsureDemo();
        // One running sequence and one waiting place: of eight requests sent at once, at most two are taken while the
        // first generates its 64 tokens.
        await using var engine = await Engine.LoadAsync(dir, new EngineOptions { Device = "cpu", ContextLength = 128, MaxNumSeqs = 1, MaxWaitingRequests = 1, ModelName = "demo" });
        var server = await OpenAiServer.StartAsync(new EngineBackend(engine, dir), new ServerOptions { Host = "127.0.0.1", Port = 0, RetryAfterSeconds = 3 });
        await using var owned = server;
        using var http = new HttpClient { BaseAddress = server.Address };
        var responses = await Task.WhenAll(Enumerable.Range(0, 8).Select(i => http.PostAsync("/v1/completions", new StringContent(
            $$"""{"prompt": [{{100 + i}}, 200, 300], "max_tokens": 64, "ignore_eos": true}""", System.Text.Encoding.UTF8, "application/json"))));
        var ok = responses.Where(r => r.StatusCode == System.Net.HttpStatusCode.OK).ToList();
        var refused = responses.Where(r => r.StatusCode == System.Net.HttpStatusCode.TooManyRequests).ToList();
        Assert.That(ok.Count + refused.Count, Is.EqualTo(8), string.Join(", ", responses.Select(r => r.StatusCode)));
        Assert.That(ok.Count, Is.InRange(1, 2));
        Assert.That(refused[0].Headers.RetryAfter?.Delta, Is.EqualTo(TimeSpan.FromSeconds(3)));
        var error = JsonDocument.Parse(await refused[0].Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.That(error.GetProperty("type").GetString(), Is.EqualTo("rate_limit_error"));
        foreach (var r in ok)
            Assert.That(JsonDocument.Parse(await r.Content.ReadAsStringAsync()).RootElement.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(64));
    }

    [Test]
    public void BenchServe_InProcessOnCpu_ReportsCountsAndSaysTimesAreNotGpuTimes()
    {
        CliModels.UseTestModelCache();
        var (exit, output, err) = CliRunner.Run("bench-serve", "-m", "demo", "--device", "cpu", "-c", "128", "--num-prompts", "12",
            "--max-concurrency", "4", "--input-len", "8", "--output-len", "3");
        Assert.That(exit, Is.EqualTo(ExitCodes.Ok), err);
        Assert.That(output, Does.Match(@"Successful requests:\s+12\n"));
        Assert.That(output, Does.Match(@"Failed requests:\s+0\n"));
        Assert.That(output, Does.Match(@"Total generated tokens:\s+36\n"));
        Assert.That(output, Does.Contain("P90 TTFT (ms):").And.Contain("not GPU times"));
    }
}
