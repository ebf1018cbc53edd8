using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using static Qwen3Cuda.Tests.Serving.ServingTestSupport;

namespace Qwen3Cuda.Tests.Serving;

/// <summary>
/// The engine on the CPU reference (tiny checkpoint): continuous batching gives each request the tokens it gets alone,
/// exactly (the reference computes every row of a step as it would alone: same ops in the same order, so greedy
/// argmaxes match bit for bit), the prefix cache and preemption change nothing but the work done, and requests never
/// leak KV pages.
/// </summary>
[NonParallelizable]
public class EngineTests
{
    /// <summary>Greedy tokens of a prompt run alone, step by step, on a fresh one-sequence model (no engine).</summary>
    static int[] Alone(int[] prompt, int newTokens, int context = 96)
    {
        using var m = CpuModel(1, context);
        var tokens = new List<int> { m.ForwardGreedy(0, prompt) };
        while (tokens.Count < newTokens) tokens.Add(m.ForwardGreedy(0, [tokens[^1]]));
        return [.. tokens];
    }

    static async Task WaitUntil(Func<bool> condition, string what)
    {
        for (int i = 0; i < 2000 && !condition(); i++) await Task.Delay(5);
        Assert.That(condition(), Is.True, what);
    }

    [Test]
    public async Task SixteenConcurrentGreedyRequests_ArrivingAtDifferentSteps_GetTheTokensTheyGetAlone()
    {
        // Budget 16 rows and 6 sequences: prompts are prefilled in chunks next to other requests' decode rows, and later
        // requests wait for a sequence. Requests 0-7 share a 12-token prefix (prefix-cache hits once a page is committed).
        var shared = Prompt(12, 1);
        var prompts = Enumerable.Range(0, 16).Select(i => i < 8 ? [.. shared, .. Prompt(1 + 3 * i, 100 + i)] : Prompt(2 + 2 * i, 200 + i)).ToArray();
        int[] budgets = [.. Enumerable.Range(0, 16).Select(i => 3 + i % 5)];
        await using var engine = CpuEngine(6, new EngineOptions { MaxNumSeqs = 6, MaxNumBatchedTokens = 16 });
        var requests = new List<EngineRequest>();
        for (int wave = 0; wave < 4; wave++)
        {
            for (int i = wave * 4; i < wave * 4 + 4; i++) requests.Add(engine.Submit(prompts[i], Greedy(budgets[i])));
            long steps = engine.Metrics.Steps;
            await WaitUntil(() => engine.Metrics.Steps >= steps + 2 || engine.Metrics.RequestsFinished == requests.Count, "the engine steps");
        }
        var results = await Task.WhenAll(requests.Select(async r => { await foreach (var _ in r.Pieces) { } return await r.Result; }));
        for (int i = 0; i < 16; i++)
        {
            Assert.That(results[i].Tokens, Is.EqualTo(Alone(prompts[i], budgets[i])), $"request {i}");
            Assert.That(results[i].FinishReason, Is.EqualTo(FinishReason.Length), $"request {i}");
            Assert.That(results[i].Usage.PromptTokens, Is.EqualTo(prompts[i].Length));
            Assert.That(results[i].Usage.CompletionTokens, Is.EqualTo(budgets[i]));
        }
        var m = engine.Metrics;
        Assert.That(m.RequestsFinished, Is.EqualTo(16));
        Assert.That(m.KvPagesUsed, Is.Zero, "every page is free (or cached without a user) at the end");
        Assert.That(m.Running + m.Waiting, Is.Zero);
        Assert.That(m.GeneratedTokens, Is.EqualTo(budgets.Sum()));
    }

    [Test]
    public void BadOptions_AreRefusedNamingTheField()
    {
        using var cts = new CancellationTokenSource();
        var engine = CpuEngine(1);
        try
        {
            int[] prompt = [1, 2, 3];
            (RequestOptions Options, string Field)[] cases =
            [
                (new RequestOptions { Sampling = new SamplingOptions { TopP = 2 } }, "top_p"),
                (new RequestOptions { Sampling = new SamplingOptions { Temperature = -1 } }, "temperature"),
                (new RequestOptions { Sampling = new SamplingOptions { TopK = -3 } }, "top_k"),
                (new RequestOptions { Sampling = new SamplingOptions { MinP = 1.5f } }, "min_p"),
                (new RequestOptions { MaxNewTokens = 0 }, "max_tokens"),
                (new RequestOptions { PresencePenalty = 3 }, "presence_penalty"),
                (new RequestOptions { FrequencyPenalty = -2.5f }, "frequency_penalty"),
                (new RequestOptions { RepetitionPenalty = 0 }, "repetition_penalty"),
                (new RequestOptions { TopLogprobs = 21 }, "top_logprobs"),
                (new RequestOptions { Stop = [""] }, "stop"),
                (new RequestOptions { StopTokenIds = [512] }, "stop_token_ids"),
            ];
            foreach (var (options, field) in cases)
            {
                var e = Assert.Throws<InvalidRequestException>(() => engine.Submit(prompt, options), field);
                Assert.That(e!.Parameter, Is.EqualTo(field));
                Assert.That(e.Message, Does.Contain(field));
            }
            Assert.That(Assert.Throws<InvalidRequestException>(() => engine.Submit([], Greedy(1)))!.Parameter, Is.EqualTo("prompt"));
            Assert.That(Assert.Throws<InvalidRequestException>(() => engine.Submit([1, 600], Greedy(1)))!.Message, Does.Contain("600"));
            var tooLong = Assert.Throws<PromptTooLongException>(() => engine.Submit(Prompt(96, 3), Greedy(1)))!;
            Assert.That((tooLong.PromptTokens, tooLong.ContextLength), Is.EqualTo((96, 96)));
            Assert.That(tooLong.Message, Does.Contain("96 tokens").And.Contain("holds 96"));
            Assert.That(engine.Metrics.RequestsFinished + engine.Metrics.Waiting, Is.Zero, "nothing was queued");
        }
        finally { engine.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
    }
}
