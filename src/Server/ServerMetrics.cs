using System.Globalization;
using System.Text;

namespace Qwen3Cuda.Server;

/// <summary>
/// The server's own measurements for GET /metrics: time to first token and inter-token latency as the client sees them
/// (from the request's arrival, over HTTP), request counts by outcome, tokens. The engine's gauges (running, waiting,
/// KV pages, prefix cache) are read at scrape time from <see cref="IServingEngine.Metrics"/>. Prometheus text format 0.0.4.
/// </summary>
public sealed class ServerMetrics
{
    /// <summary>Bucket upper bounds in seconds (vLLM's TTFT buckets, which also suit inter-token latency).</summary>
    public static readonly double[] LatencyBuckets = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];

    public Histogram TimeToFirstToken { get; } = new(LatencyBuckets);
    public Histogram InterTokenLatency { get; } = new(LatencyBuckets);
    public Histogram RequestLatency { get; } = new(LatencyBuckets);
    readonly Dictionary<string, long> _requests = [];
    long _promptTokens, _generationTokens;

    public void RequestFinished(string outcome, int promptTokens, int completionTokens)
    {
        lock (_requests)
        {
            _requests[outcome] = _requests.GetValueOrDefault(outcome) + 1;
            _promptTokens += promptTokens;
            _generationTokens += completionTokens;
        }
    }

    public string Render(Qwen3Cuda.Model.Serving.EngineMetrics engine, string modelName)
    {
        var sb = new StringBuilder();
        string label = $"model_name=\"{Escape(modelName)}\"";
        void Metric(string name, string type, string help, FormattableString value)
        {
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(' ').Append(type).Append('\n');
            sb.Append(name).Append('{').Append(label).Append("} ").Append(value.ToString(CultureInfo.InvariantCulture)).Append('\n');
        }
        Metric("qwen3cuda_num_requests_running", "gauge", "Requests in the running batch.", $"{engine.Running}");
        Metric("qwen3cuda_num_requests_waiting", "gauge", "Requests waiting for admission.", $"{engine.Waiting}");
        Metric("qwen3cuda_kv_pages_used", "gauge", "KV cache pages held by requests.", $"{engine.KvPagesUsed}");
        Metric("qwen3cuda_kv_pages_total", "gauge", "KV cache pages in all.", $"{engine.KvPagesTotal}");
        Metric("qwen3cuda_kv_cache_usage_ratio", "gauge", "KV pages used over total (0 to 1).", $"{(engine.KvPagesTotal > 0 ? (double)engine.KvPagesUsed / engine.KvPagesTotal : 0)}");
        Metric("qwen3cuda_prefix_cache_queries_total", "counter", "Prompt tokens looked up in the prefix cache.", $"{engine.PrefixCacheQueries}");
        Metric("qwen3cuda_prefix_cache_hits_total", "counter", "Prompt tokens found in the prefix cache.", $"{engine.PrefixCacheHits}");
        Metric("qwen3cuda_prefix_cache_hit_rate", "gauge", "Prefix cache hits over queries since start (0 to 1).", $"{(engine.PrefixCacheQueries > 0 ? (double)engine.PrefixCacheHits / engine.PrefixCacheQueries : 0)}");
        Metric("qwen3cuda_num_preemptions_total", "counter", "Requests preempted (KV pages freed, recomputed later) because pages ran out.", $"{engine.Preemptions}");
        Metric("qwen3cuda_engine_prompt_tokens_total", "counter", "Prompt tokens the engine took in.", $"{engine.PromptTokens}");
        Metric("qwen3cuda_engine_generation_tokens_total", "counter", "Tokens the engine generated.", $"{engine.GeneratedTokens}");
        // Speculative decoding, named as vLLM's spec_decode counters (all zero when the server does not speculate).
        Metric("qwen3cuda_spec_decode_num_drafts_total", "counter", "Speculative verification rounds (one target step of a request's proposals).", $"{engine.SpecDecodeRounds}");
        Metric("qwen3cuda_spec_decode_num_draft_tokens_total", "counter", "Tokens the drafters proposed.", $"{engine.SpecDecodeDraftTokens}");
        Metric("qwen3cuda_spec_decode_num_accepted_tokens_total", "counter", "Proposed tokens the target accepted.", $"{engine.SpecDecodeAcceptedTokens}");
        Metric("qwen3cuda_spec_decode_acceptance_rate", "gauge", "Accepted over proposed tokens since start (0 to 1).", $"{engine.SpecDecodeAcceptanceRate}");
        Metric("qwen3cuda_spec_decode_mean_acceptance_length", "gauge", "Tokens emitted per verification round since start: accepted proposals plus the target's own (0 before the first).", $"{engine.SpecDecodeMeanAcceptanceLength}");
        lock (_requests)
        {
            Metric("qwen3cuda_prompt_tokens_total", "counter", "Prompt tokens of finished HTTP requests.", $"{_promptTokens}");
            Metric("qwen3cuda_generation_tokens_total", "counter", "Tokens generated for finished HTTP requests.", $"{_generationTokens}");
            sb.Append("# HELP qwen3cuda_requests_total HTTP generation requests by outcome (stop, length, tool_calls, abort, mixed, error, cancelled).\n");
            sb.Append("# TYPE qwen3cuda_requests_total counter\n");
            foreach (var (outcome, count) in _requests.OrderBy(kv => kv.Key, StringComparer.Ordinal))
                sb.Append(CultureInfo.InvariantCulture, $"qwen3cuda_requests_total{{{label},outcome=\"{outcome}\"}} {count}\n");
        }
        TimeToFirstToken.Render(sb, "qwen3cuda_time_to_first_token_seconds", "Time from the request's arrival to its first streamed token.", label);
        InterTokenLatency.Render(sb, "qwen3cuda_inter_token_latency_seconds", "Time between successive output pieces of a request.", label);
        RequestLatency.Render(sb, "qwen3cuda_e2e_request_latency_seconds", "Time from the request's arrival to its last token.", label);
        RenderEngine(sb, engine.TimeToFirstToken, "qwen3cuda_engine_time_to_first_token_seconds", "The engine's time from a request's submission to its first token (no HTTP).", label);
        RenderEngine(sb, engine.InterTokenLatency, "qwen3cuda_engine_inter_token_latency_seconds", "The engine's time between successive tokens of a request.", label);
        return sb.ToString();
    }

    static void RenderEngine(StringBuilder sb, Qwen3Cuda.Model.Serving.LatencyHistogram h, string name, string help, string label)
    {
        sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
        sb.Append("# TYPE ").Append(name).Append(" histogram\n");
        long cumulative = 0;
        for (int i = 0; i < h.Bounds.Count; i++)
        {
            cumulative += h.Counts[i];
            sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{label},le=\"{h.Bounds[i]}\"}} {cumulative}\n");
        }
        sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{label},le=\"+Inf\"}} {h.Count}\n");
        sb.Append(CultureInfo.InvariantCulture, $"{name}_sum{{{label}}} {h.Sum}\n");
        sb.Append(CultureInfo.InvariantCulture, $"{name}_count{{{label}}} {h.Count}\n");
    }

    static string Escape(string s) => s.Replace("\\", "\\\\").Replace("\"", "\\\"").Replace("\n", "\\n");

    /// <summary>A Prometheus histogram (cumulative buckets, sum, count); thread-safe.</summary>
    public sealed class Histogram(double[] bounds)
    {
        readonly long[] _counts = new long[bounds.Length + 1];
        double _sum;
        long _count;

        public long Count { get { lock (_counts) return _count; } }

        public void Observe(double seconds)
        {
            int i = 0;
            while (i < bounds.Length && seconds > bounds[i]) i++;
            lock (_counts)
            {
                _counts[i]++;
                _sum += seconds;
                _count++;
            }
        }

        public void Render(StringBuilder sb, string name, string help, string label)
        {
            sb.Append("# HELP ").Append(name).Append(' ').Append(help).Append('\n');
            sb.Append("# TYPE ").Append(name).Append(" histogram\n");
            lock (_counts)
            {
                long cumulative = 0;
                for (int i = 0; i < bounds.Length; i++)
                {
                    cumulative += _counts[i];
                    sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{label},le=\"{bounds[i]}\"}} {cumulative}\n");
                }
                sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{label},le=\"+Inf\"}} {_count}\n");
                sb.Append(CultureInfo.InvariantCulture, $"{name}_sum{{{label}}} {_sum}\n");
                sb.Append(CultureInfo.InvariantCulture, $"{name}_count{{{label}}} {_count}\n");
            }
        }
    }
}
