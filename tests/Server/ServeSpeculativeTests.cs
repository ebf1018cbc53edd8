using System.Net;
using System.Text;
using System.Text.Json;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Server;
using Qwen3Cuda.Tests.Cli;
using Qwen3Cuda.Tests.Model;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Server;

/// <summary>
/// `serve --draft ngram | --draft-model DIR --num-draft-tokens K` (docs/speculative.md, docs/serving.md): every request
/// speculates with a drafter of its own; greedy answers over HTTP, several at once, are the answers of a server without
/// speculation; /metrics counts the proposed and accepted tokens; bad options are refused naming the option.
/// </summary>
[TestFixture, NonParallelizable, CancelAfter(300_000)]
public sealed class ServeSpeculativeTests
{
    string? _oldCache;

    [OneTimeSetUp] public void SaveCache() => _oldCache = Environment.GetEnvironmentVariable(Qwen3Cuda.Model.ModelLocator.CacheEnvironmentVariable);
    [OneTimeTearDown] public void RestoreCache() => Environment.SetEnvironmentVariable(Qwen3Cuda.Model.ModelLocator.CacheEnvironmentVariable, _oldCache);

    /// <summary>Prompts (token ids of the tiny vocabulary) that repeat themselves, so prompt lookup finds proposals.</summary>
    static readonly int[][] Prompts =
    [
        [5, 17, 300, 42, 9, 77, 5, 17, 300, 42, 9, 3, 128],
        [40, 41, 42, 43, 40, 41, 42],
        [7, 7, 7, 7, 7, 7],
        [200, 100, 50, 25, 12, 6, 3, 1, 200, 100],
    ];

    /// <summary>Starts an engine on the tiny text model (CPU reference) behind a server, sends every prompt at once
    /// (greedy, 24 tokens each) and returns the answers' texts and the scraped metrics.</summary>
    static async Task<(string[] Texts, Dictionary<string, double> Metrics)> Serve(EngineOptions speculation, string device = "cpu", int maxTokens = 24)
    {
        string dir = CliModels.TinyText();
        await using var engine = await Engine.LoadAsync(dir, speculation with { Device = device, ContextLength = 96, MaxNumSeqs = 4, ModelName = "tiny" });
        var server = await OpenAiServer.StartAsync(new EngineBackend(engine, dir), new ServerOptions { Host = "127.0.0.1", Port = 0 });
        await using var owned = server;
        using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromSeconds(120) };
        var answers = await Task.WhenAll(Prompts.Select(async p =>
        {
            string body = $$"""{"prompt": [{{string.Join(",", p)}}], "max_tokens": {{maxTokens}}, "temperature": 0, "ignore_eos": true}""";
            var r = await http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
            string text = await r.Content.ReadAsStringAsync();
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), text);
            var json = JsonDocument.Parse(text).RootElement;
            Assert.That(json.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(maxTokens));
            var usage = json.GetProperty("usage");
            bool speculates = speculation.Draft is not null || speculation.DraftModel is not null;
            Assert.That(usage.EnumerateObject().Select(u => u.Name),
                Is.EquivalentTo(speculates
                    ? new[] { "prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details", "completion_tokens_details" }
                    : new[] { "prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details" }), "usage keeps OpenAI's shape");
            long accepted = 0, rejected = 0;
            if (speculates)
            {
                var details = usage.GetProperty("completion_tokens_details");
                accepted = details.GetProperty("accepted_prediction_tokens").GetInt64();
                rejected = details.GetProperty("rejected_prediction_tokens").GetInt64();
            }
            return (Text: json.GetProperty("choices")[0].GetProperty("text").GetString()!, Accepted: accepted, Rejected: rejected);
        }));
        var metrics = ServerWireTests.ParsePrometheus(await http.GetStringAsync("/metrics"));
        // The per-request counts in usage add up to the engine's counters.
        Assert.That(answers.Sum(a => a.Accepted), Is.EqualTo(metrics["qwen3cuda_spec_decode_num_accepted_tokens_total"]));
        Assert.That(answers.Sum(a => a.Accepted + a.Rejected), Is.EqualTo(metrics["qwen3cuda_spec_decode_num_draft_tokens_total"]));
        Assert.That(engine.Metrics.KvPagesUsed, Is.Zero, "every target page is free at the end (rolled-back rows too)");
        return ([.. answers.Select(a => a.Text)], metrics);
    }

    static readonly Lazy<Task<(string[] Texts, Dictionary<string, double> Metrics)>> Plain = new(() => Serve(new EngineOptions()));

    [Test]
    public async Task Ngram_GreedyAnswersEqualPlainServing_MetricsCountProposals()
    {
        var plain = await Plain.Value;
        var spec = await Serve(new EngineOptions { Draft = "ngram", NumDraftTokens = 3 });
        Assert.That(spec.Texts, Is.EqualTo(plain.Texts));
        Report("ngram k 3", spec.Metrics);
        Assert.That(plain.Metrics["qwen3cuda_spec_decode_num_draft_tokens_total"], Is.Zero, "no speculation without a drafter");
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_drafts_total"], Is.GreaterThan(0));
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_draft_tokens_total"], Is.GreaterThan(0));
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_accepted_tokens_total"], Is.GreaterThan(0), "the repeating answers are found by prompt lookup");
        AssertRatios(spec.Metrics, 3);
    }

    [Test]
    public async Task DraftModel_GreedyAnswersEqualPlainServing_MetricsCountProposals()
    {
        var plain = await Plain.Value;
        var spec = await Serve(new EngineOptions { DraftModel = CliModels.DenseDraft(), NumDraftTokens = 4 });
        Assert.That(spec.Texts, Is.EqualTo(plain.Texts));
        Report("dense draft k 4", spec.Metrics);
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_drafts_total"], Is.GreaterThan(0));
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_draft_tokens_total"], Is.GreaterThan(0));
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_accepted_tokens_total"], Is.GreaterThan(0), "the draft shares the target's embedding and first layer");
        AssertRatios(spec.Metrics, 4);
    }

    [Test]
    public async Task TargetAsItsOwnDraft_AcceptsEveryProposal()
    {
        var plain = await Plain.Value;
        var spec = await Serve(new EngineOptions { DraftModel = CliModels.TinyText(), NumDraftTokens = 2 });
        Assert.That(spec.Texts, Is.EqualTo(plain.Texts));
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_accepted_tokens_total"], Is.EqualTo(spec.Metrics["qwen3cuda_spec_decode_num_draft_tokens_total"]).And.GreaterThan(0));
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_acceptance_rate"], Is.EqualTo(1.0));
    }

    [Test]
    public async Task Emulator_DraftModel_GreedyAnswersEqualPlainServing()
    {
        // The device model's step takes k + 1 output rows per running request (4 x 4 here): the loader sizes them.
        var plain = await Serve(new EngineOptions(), "emulator", maxTokens: 10);
        var spec = await Serve(new EngineOptions { DraftModel = CliModels.DenseDraft(), NumDraftTokens = 3 }, "emulator", maxTokens: 10);
        Assert.That(spec.Texts, Is.EqualTo(plain.Texts));
        Report("emulator, dense draft k 3", spec.Metrics);
        Assert.That(spec.Metrics["qwen3cuda_spec_decode_num_draft_tokens_total"], Is.GreaterThan(0));
        AssertRatios(spec.Metrics, 3);
    }

    [Test]
    public async Task SampledAndLogprobsRequests_AreServedToo()
    {
        string dir = CliModels.TinyText();
        await using var engine = await Engine.LoadAsync(dir, new EngineOptions { Device = "cpu", ContextLength = 96, MaxNumSeqs = 2, ModelName = "tiny", Draft = "ngram" });
        var server = await OpenAiServer.StartAsync(new EngineBackend(engine, dir), new ServerOptions { Host = "127.0.0.1", Port = 0 });
        await using var owned = server;
        using var http = new HttpClient { BaseAddress = server.Address, Timeout = TimeSpan.FromSeconds(120) };
        async Task<JsonElement> Complete(string extra)
        {
            string body = $$"""{"prompt": [{{string.Join(",", Prompts[0])}}], "max_tokens": 12, "ignore_eos": true, {{extra}}}""";
            var r = await http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"));
            string text = await r.Content.ReadAsStringAsync();
            Assert.That(r.StatusCode, Is.EqualTo(HttpStatusCode.OK), text);
            return JsonDocument.Parse(text).RootElement;
        }
        var a = await Complete("\"temperature\": 0.8, \"top_k\": 50, \"seed\": 11");
        var b = await Complete("\"temperature\": 0.8, \"top_k\": 50, \"seed\": 11");
        Assert.That(a.GetProperty("usage").GetProperty("completion_tokens").GetInt32(), Is.EqualTo(12));
        Assert.That(b.GetProperty("choices")[0].GetProperty("text").GetString(), Is.EqualTo(a.GetProperty("choices")[0].GetProperty("text").GetString()), "a seeded sampled request repeats");
        double rounds = engine.Metrics.SpecDecodeRounds;
        Assert.That(rounds, Is.GreaterThan(0), "the sampled requests speculated");
        // logprobs: this request decodes without speculation (rounds report tokens, not logprobs), and gets one per token
        var c = await Complete("\"temperature\": 0, \"logprobs\": 2");
        Assert.That(c.GetProperty("choices")[0].GetProperty("logprobs").GetProperty("token_logprobs").GetArrayLength(), Is.EqualTo(12));
        Assert.That(engine.Metrics.SpecDecodeRounds, Is.EqualTo(rounds), "no round for the logprobs request");
    }

    /// <summary>The gauges follow from the counters: rate = accepted / proposed, mean length = 1 + accepted / rounds (at most k + 1).</summary>
    static void AssertRatios(Dictionary<string, double> m, int k)
    {
        double rounds = m["qwen3cuda_spec_decode_num_drafts_total"], drafted = m["qwen3cuda_spec_decode_num_draft_tokens_total"], accepted = m["qwen3cuda_spec_decode_num_accepted_tokens_total"];
        Assert.That(accepted, Is.LessThanOrEqualTo(drafted));
        Assert.That(drafted, Is.LessThanOrEqualTo(k * rounds));
        // 1e-12: the server prints doubles round-trip ("R"), so only the division's own rounding differs
        Assert.That(m["qwen3cuda_spec_decode_acceptance_rate"], Is.EqualTo(accepted / drafted).Within(1e-12));
        Assert.That(m["qwen3cuda_spec_decode_mean_acceptance_length"], Is.EqualTo(1 + accepted / rounds).Within(1e-12).And.InRange(1.0, k + 1.0));
    }

    static void Report(string what, Dictionary<string, double> m) => TestContext.Out.WriteLine(
        $"{what}: {m["qwen3cuda_spec_decode_num_accepted_tokens_total"]}/{m["qwen3cuda_spec_decode_num_draft_tokens_total"]} accepted in {m["qwen3cuda_spec_decode_num_drafts_total"]} rounds, mean acceptance length {m["qwen3cuda_spec_decode_mean_acceptance_length"]:F2}");

    [TestCase("--draft eagle", "--draft: 'eagle' is not one of ngram")]
    [TestCase("--draft ngram --num-draft-tokens 0", "--num-draft-tokens: 0 is out of range (1 to 16)")]
    [TestCase("--draft ngram --num-draft-tokens 17", "--num-draft-tokens: 17 is out of range (1 to 16)")]
    [TestCase("--num-draft-tokens 3", "--num-draft-tokens needs --draft-model DIR or --draft ngram")]
    [TestCase("--draft ngram --draft-model DRAFT", "give either --draft-model DIR or --draft ngram, not both")]
    public void BadSpeculationOptions_AreOneLineUsageErrors_Exit2(string args, string message)
    {
        var argv = new List<string> { "serve", "-m", CliModels.TinyText(), "--device", "cpu", "--port", "0" };
        argv.AddRange(args.Split(' ').Select(a => a == "DRAFT" ? CliModels.DenseDraft() : a));
        var (exit, _, err) = CliRunner.Run([.. argv]);
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage), err);
        Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1), err);
        Assert.That(err, Does.StartWith("error: ").And.Contain(message));
    }

    [Test]
    public void BenchServe_InProcessWithPromptLookup_ReportsAcceptance()
    {
        CliModels.UseTestModelCache();   // bench-serve's random prompts are ids of the real vocabulary: the demo model
        var (exit, output, err) = CliRunner.Run("bench-serve", "-m", "demo", "--device", "cpu", "-c", "64", "--max-num-seqs", "4",
            "--num-prompts", "8", "--max-concurrency", "4", "--input-len", "8", "--output-len", "8", "--draft", "ngram", "--num-draft-tokens", "2");
        Assert.That(exit, Is.Zero, err);
        Assert.That(output, Does.Contain("Successful requests:"));
        Assert.That(err, Does.Match(@"speculative decoding: [1-9][0-9]* rounds, [0-9]+/[0-9]+ drafted tokens accepted"));
        var url = CliRunner.Run("bench-serve", "--url", "http://127.0.0.1:1", "--num-prompts", "1", "--draft", "ngram");
        Assert.That(url.Exit, Is.EqualTo(ExitCodes.Usage));
        Assert.That(url.Err, Does.Contain("--draft-model, --draft and --num-draft-tokens set up a server started in process"));
    }

    [Test]
    public void MissingDraftModel_IsNamedAsTheDraftModel()
    {
        string missing = Path.Combine(TestCheckpoints.Root, "no-such-draft");
        var (exit, _, err) = CliRunner.Run("serve", "-m", CliModels.TinyText(), "--device", "cpu", "--port", "0", "--draft-model", missing);
        Assert.That(exit, Is.EqualTo(1), err);
        Assert.That(err.Trim(), Is.EqualTo($"error: --draft-model: folder '{missing}' does not exist (give a model folder, a Hugging Face repo id like Qwen/Qwen3-30B-A3B, or demo)"));
    }

    [Test]
    public void DraftModelWithAnotherVocabulary_IsRefusedBeforeServing()
    {
        string other = CliModels.WithTokenizer(new SyntheticOptions { Preset = SyntheticPreset.Small, Seed = 1, Layers = 1 }, "other-vocab");   // vocab 2048
        var (exit, _, err) = CliRunner.Run("serve", "-m", CliModels.TinyText(), "--device", "cpu", "--port", "0", "--draft-model", other);
        Assert.That(exit, Is.EqualTo(1), err);
        Assert.That(err, Does.Contain("the draft model's vocabulary (2048 tokens) differs from the target's (512)"));
        Assert.That(err, Does.Not.Contain("serving "), "nothing was served");
    }
}
