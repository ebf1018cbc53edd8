using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;

namespace Qwen3Cuda.Server;

/// <summary>What `qwen3cuda bench-serve` sends (vLLM's benchmark_serving with its random dataset).</summary>
public sealed record ServeBenchmarkOptions
{
    public int NumPrompts { get; init; } = 100;
    /// <summary>Requests per second, Poisson arrivals; infinity sends them all at once (bounded by <see cref="MaxConcurrency"/>).</summary>
    public double RequestRate { get; init; } = double.PositiveInfinity;
    /// <summary>Most requests in flight at once; null: no bound.</summary>
    public int? MaxConcurrency { get; init; }
    public int InputLength { get; init; } = 128;
    public int OutputLength { get; init; } = 32;
    /// <summary>Prompt token ids are drawn uniformly from [<see cref="MinTokenId"/>, <see cref="MaxTokenId"/>).</summary>
    public int MinTokenId { get; init; } = 1000;
    public int MaxTokenId { get; init; } = 30000;
    public int Seed { get; init; }
    /// <summary>The "model" sent; null: the first model GET /v1/models lists.</summary>
    public string? Model { get; init; }
    public string? ApiKey { get; init; }
}

/// <summary>One request's outcome (seconds).</summary>
public sealed record ServeRequestResult(bool Ok, int PromptTokens, int OutputTokens, double TimeToFirstToken, IReadOnlyList<double> InterTokenLatencies, double Latency, string? Error);

/// <summary>The run: counts and latency percentiles.</summary>
public sealed record ServeBenchmarkResult(ServeBenchmarkOptions Options, string Model, double DurationSeconds, IReadOnlyList<ServeRequestResult> Requests)
{
    public int Completed => Requests.Count(r => r.Ok);
    public int Failed => Requests.Count(r => !r.Ok);
    /// <summary>Completed requests that got fewer tokens than asked (ignore_eos asks for exactly the output length).</summary>
    public int Short => Requests.Count(r => r.Ok && r.OutputTokens < Options.OutputLength);
    public long InputTokens => Requests.Where(r => r.Ok).Sum(r => (long)r.PromptTokens);
    public long OutputTokens => Requests.Where(r => r.Ok).Sum(r => (long)r.OutputTokens);
    public double RequestThroughput => Completed / DurationSeconds;
    public double OutputThroughput => OutputTokens / DurationSeconds;
    public double TotalTokenThroughput => (InputTokens + OutputTokens) / DurationSeconds;
    public IReadOnlyList<double> Ttft => Requests.Where(r => r.Ok).Select(r => r.TimeToFirstToken).ToList();
    public IReadOnlyList<double> Itl => Requests.Where(r => r.Ok).SelectMany(r => r.InterTokenLatencies).ToList();
    public IReadOnlyList<double> E2e => Requests.Where(r => r.Ok).Select(r => r.Latency).ToList();

    /// <summary>The p-th percentile (0..100) by linear interpolation between order statistics (numpy's default); NaN when empty.</summary>
    public static double Percentile(IReadOnlyList<double> values, double p)
    {
        if (values.Count == 0) return double.NaN;
        var sorted = values.Order().ToArray();
        double rank = p / 100 * (sorted.Length - 1);
        int lo = (int)Math.Floor(rank), hi = (int)Math.Ceiling(rank);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
    }
}

/// <summary>
/// A load generator for an OpenAI-compatible server, after vLLM's benchmark_serving: random prompts of exactly
/// <see cref="ServeBenchmarkOptions.InputLength"/> token ids, streamed /v1/completions with ignore_eos and max_tokens
/// <see cref="ServeBenchmarkOptions.OutputLength"/>, sent at a Poisson rate or all at once under a concurrency cap. Time to
/// first token, inter-token latency (between streamed chunks) and end-to-end latency are measured at the client.
/// </summary>
public static class ServeBenchmark
{
    public static async Task<ServeBenchmarkResult> RunAsync(Uri baseUrl, ServeBenchmarkOptions o, CancellationToken ct = default)
    {
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = int.MaxValue, PooledConnectionLifetime = TimeSpan.FromMinutes(10) })
        {
            BaseAddress = baseUrl, Timeout = Timeout.InfiniteTimeSpan,
        };
        if (o.ApiKey is { } key) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        string model = o.Model ?? await FirstModel(http, ct).ConfigureAwait(false);
        var rng = new Random(o.Seed);
        var prompts = Enumerable.Range(0, o.NumPrompts)
            .Select(_ => Enumerable.Range(0, o.InputLength).Select(_ => rng.Next(o.MinTokenId, o.MaxTokenId)).ToArray()).ToList();
        using var gate = o.MaxConcurrency is int c ? new SemaphoreSlim(c, c) : null;
        var tasks = new List<Task<ServeRequestResult>>();
        var sw = Stopwatch.StartNew();
        foreach (var prompt in prompts)
        {
            if (!double.IsPositiveInfinity(o.RequestRate) && tasks.Count > 0)
                await Task.Delay(TimeSpan.FromSeconds(-Math.Log(1 - rng.NextDouble()) / o.RequestRate), ct).ConfigureAwait(false);
            if (gate is not null) await gate.WaitAsync(ct).ConfigureAwait(false);
            tasks.Add(Task.Run(async () =>
            {
                try { return await One(http, model, prompt, o.OutputLength, ct).ConfigureAwait(false); }
                finally { gate?.Release(); }
            }, ct));
        }
        var results = await Task.WhenAll(tasks).ConfigureAwait(false);
        return new ServeBenchmarkResult(o, model, sw.Elapsed.TotalSeconds, results);
    }

    static async Task<string> FirstModel(HttpClient http, CancellationToken ct)
    {
        using var r = await http.GetAsync("v1/models", ct).ConfigureAwait(false);
        string body = await r.Content.ReadAsStringAsync(ct).ConfigureAwait(false);
        if (!r.IsSuccessStatusCode) throw new HttpRequestException($"GET {http.BaseAddress}v1/models answered {(int)r.StatusCode}: {body}");
        return JsonDocument.Parse(body).RootElement.GetProperty("data")[0].GetProperty("id").GetString()!;
    }

    static async Task<ServeRequestResult> One(HttpClient http, string model, int[] prompt, int outputLength, CancellationToken ct)
    {
        var body = JsonSerializer.Serialize(new Dictionary<string, object>
        {
            ["model"] = model, ["prompt"] = prompt, ["max_tokens"] = outputLength, ["ignore_eos"] = true, ["temperature"] = 0,
            ["stream"] = true, ["stream_options"] = new Dictionary<string, bool> { ["include_usage"] = true },
        });
        var itl = new List<double>();
        long start = Stopwatch.GetTimestamp();
        double ttft = 0;
        long last = 0;
        int outputTokens = 0;
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "v1/completions") { Content = new StringContent(body, Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, ct).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
                return new ServeRequestResult(false, prompt.Length, 0, 0, [], 0, $"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync(ct).ConfigureAwait(false)}");
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct).ConfigureAwait(false));
            string? line;
            while ((line = await reader.ReadLineAsync(ct).ConfigureAwait(false)) != null)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                string data = line[6..];
                if (data == "[DONE]") break;
                using var doc = JsonDocument.Parse(data);
                var root = doc.RootElement;
                if (root.TryGetProperty("error", out var error)) return new ServeRequestResult(false, prompt.Length, 0, 0, [], 0, error.ToString());
                if (root.TryGetProperty("usage", out var usage) && usage.ValueKind == JsonValueKind.Object)
                    outputTokens = usage.GetProperty("completion_tokens").GetInt32();
                if (root.GetProperty("choices") is { } choices && choices.GetArrayLength() > 0 && choices[0].GetProperty("text").GetString() is { Length: > 0 })
                {
                    long now = Stopwatch.GetTimestamp();
                    if (last == 0) ttft = Stopwatch.GetElapsedTime(start, now).TotalSeconds;
                    else itl.Add(Stopwatch.GetElapsedTime(last, now).TotalSeconds);
                    last = now;
                }
            }
            return new ServeRequestResult(true, prompt.Length, outputTokens, ttft, itl, Stopwatch.GetElapsedTime(start).TotalSeconds, null);
        }
        catch (HttpRequestException e)
        {
            return new ServeRequestResult(false, prompt.Length, 0, 0, [], 0, e.Message);
        }
    }

    /// <summary>vLLM-style report. <paramref name="timingNote"/> (e.g. for the CPU reference or the emulator) is printed under the times.</summary>
    public static string Format(ServeBenchmarkResult r, string? timingNote)
    {
        var sb = new StringBuilder();
        void Line(string name, string value) => sb.Append(CultureInfo.InvariantCulture, $"{name,-40}{value,12}\n");
        string F(double v) => double.IsNaN(v) ? "n/a" : v.ToString("F2", CultureInfo.InvariantCulture);
        string rate = double.IsPositiveInfinity(r.Options.RequestRate) ? "inf" : r.Options.RequestRate.ToString(CultureInfo.InvariantCulture);
        sb.Append(CultureInfo.InvariantCulture, $"============ Serving Benchmark Result ============\n");
        Line("Model:", r.Model);
        Line("Request rate (req/s):", rate);
        Line("Max concurrency:", r.Options.MaxConcurrency?.ToString(CultureInfo.InvariantCulture) ?? "none");
        Line("Input / output length (tokens):", $"{r.Options.InputLength} / {r.Options.OutputLength}");
        Line("Successful requests:", r.Completed.ToString(CultureInfo.InvariantCulture));
        Line("Failed requests:", r.Failed.ToString(CultureInfo.InvariantCulture));
        Line("Requests short of the output length:", r.Short.ToString(CultureInfo.InvariantCulture));
        Line("Total input tokens:", r.InputTokens.ToString(CultureInfo.InvariantCulture));
        Line("Total generated tokens:", r.OutputTokens.ToString(CultureInfo.InvariantCulture));
        Line("Benchmark duration (s):", F(r.DurationSeconds));
        Line("Request throughput (req/s):", F(r.RequestThroughput));
        Line("Output token throughput (tok/s):", F(r.OutputThroughput));
        Line("Total token throughput (tok/s):", F(r.TotalTokenThroughput));
        foreach (var (title, values) in new[] { ("Time to First Token", r.Ttft), ("Inter-token Latency", r.Itl), ("End-to-end Latency", r.E2e) })
        {
            string abbrev = title switch { "Time to First Token" => "TTFT", "Inter-token Latency" => "ITL", _ => "E2EL" };
            sb.Append(CultureInfo.InvariantCulture, $"{"--- " + title + " ---",-52}\n");
            Line($"Mean {abbrev} (ms):", F(values.Count > 0 ? values.Average() * 1000 : double.NaN));
            foreach (var p in new[] { 50, 90, 99 }) Line($"P{p} {abbrev} (ms):", F(ServeBenchmarkResult.Percentile(values, p) * 1000));
        }
        sb.Append("==================================================\n");
        if (timingNote is not null) sb.Append(timingNote).Append('\n');
        foreach (var e in r.Requests.Where(x => !x.Ok).Select(x => x.Error).Distinct().Take(3)) sb.Append("failed: ").Append(e).Append('\n');
        return sb.ToString();
    }
}
