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
        // A deadline, not a count of delays: on a loaded 2-core machine a short delay can take far longer than it says.
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!condition() && DateTime.UtcNow < deadline) await Task.Delay(5);
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

    static async Task<RequestResult> Run(Engine engine, int[] prompt, RequestOptions options) => await engine.CompleteAsync(prompt, options);

    [Test]
    public async Task PrefixCache_SecondPromptSharingAPrefix_PrefillsOnlyTheRest_WithTheSameTokensAndLogprobs()
    {
        var shared = Prompt(33, 5);
        int[] first = [.. shared, .. Prompt(5, 6)], second = [.. shared, .. Prompt(7, 8)];
        var options = Greedy(6) with { TopLogprobs = 3 };
        RequestResult[] cached, uncached;
        List<TokenLogprob> cachedLogprobs = [], uncachedLogprobs = [];
        EngineMetrics metrics;
        await using (var engine = CpuEngine(2))
        {
            await Run(engine, first, options);
            cached = [await Run(engine, second, options)];
            var r = engine.Submit(second, options);
            await foreach (var p in r.Pieces) cachedLogprobs.AddRange(p.Logprobs ?? []);
            cached = [.. cached, await r.Result];
            metrics = engine.Metrics;
        }
        await using (var engine = CpuEngine(2, new EngineOptions { MaxNumSeqs = 2, EnablePrefixCaching = false }))
        {
            await Run(engine, first, options);
            var r = engine.Submit(second, options);
            await foreach (var p in r.Pieces) uncachedLogprobs.AddRange(p.Logprobs ?? []);
            uncached = [await r.Result];
            Assert.That(engine.Metrics.PrefixCacheHits, Is.Zero);
            Assert.That(uncached[0].Usage.CachedPromptTokens, Is.Zero);
        }
        // Page size 4: the 33 shared tokens fill 8 pages (32 tokens) that the second prompt adopts; the third run adopts
        // its own whole prompt but the last token (9 full pages of 40 tokens: 36).
        Assert.That(cached[0].Usage.CachedPromptTokens, Is.EqualTo(32));
        Assert.That(cached[1].Usage.CachedPromptTokens, Is.EqualTo(36));
        Assert.That(cached[0].Tokens, Is.EqualTo(uncached[0].Tokens));
        Assert.That(cached[1].Tokens, Is.EqualTo(uncached[0].Tokens));
        Assert.That(uncached[0].Tokens, Is.EqualTo(Alone(second, 6)));
        // The cached pages hold the K/V the prefill wrote, so the CPU reference's logits (and log-probabilities) are equal bit for bit.
        Assert.That(cachedLogprobs.Select(l => (l.Token, l.Logprob)), Is.EqualTo(uncachedLogprobs.Select(l => (l.Token, l.Logprob))));
        Assert.That(cachedLogprobs.Select(l => l.Top.Select(t => (t.Token, t.Logprob)).ToArray()),
            Is.EqualTo(uncachedLogprobs.Select(l => l.Top.Select(t => (t.Token, t.Logprob)).ToArray())));
        Assert.That(cachedLogprobs, Has.Count.EqualTo(6));
        Assert.That(cachedLogprobs.All(l => l.Top.Count == 3 && l.Top[0].Logprob >= l.Top[1].Logprob && l.Logprob <= l.Top[0].Logprob), Is.True);
        Assert.That(metrics.PrefixCacheQueries, Is.EqualTo(first.Length + 2 * second.Length));
        Assert.That(metrics.PrefixCacheHits, Is.EqualTo(32 + 36));
        Assert.That(metrics.PrefixCacheHitRate, Is.EqualTo(68.0 / (first.Length + 2 * second.Length)).Within(1e-12));
    }

    [Test]
    public async Task UnderATinyPageBudget_RequestsArePreemptedAndRecomputed_AndStillGetTheirTokens()
    {
        // 24 pages of 4 tokens (96 tokens) for 8 requests that need up to 9 pages each: running requests run out of pages
        // and the newest is preempted (its pages freed, its tokens prefilled again later).
        var prompts = Enumerable.Range(0, 8).Select(i => Prompt(10 + 2 * i, 300 + i)).ToArray();
        await using var engine = CpuEngine(8, new EngineOptions { MaxNumSeqs = 8, MaxNumBatchedTokens = 32 }, kvPages: 25);
        var requests = prompts.Select(p => engine.Submit(p, Greedy(12))).ToList();
        var results = await Task.WhenAll(requests.Select(async r => { await foreach (var _ in r.Pieces) { } return await r.Result; }));
        for (int i = 0; i < 8; i++) Assert.That(results[i].Tokens, Is.EqualTo(Alone(prompts[i], 12)), $"request {i}");
        Assert.That(engine.Metrics.Preemptions, Is.GreaterThan(0), "the budget forces preemption");
        Assert.That(engine.Metrics.KvPagesUsed, Is.Zero);
        Assert.That(engine.Metrics.KvPagesTotal, Is.EqualTo(24));
    }

    [Test]
    public async Task LoadTest_200RequestsAtConcurrency32_AllCompleteOnce_AndFreeEveryPage()
    {
        await using var engine = CpuEngine(16, new EngineOptions { MaxNumSeqs = 16, MaxNumBatchedTokens = 64 });
        using var gate = new SemaphoreSlim(32);
        int inFlight = 0, maxInFlight = 0;
        var tasks = Enumerable.Range(0, 200).Select(async i =>
        {
            await gate.WaitAsync();
            try
            {
                int now = Interlocked.Increment(ref inFlight);
                InterlockedMax(ref maxInFlight, now);
                var prompt = Prompt(3 + i % 9, 1000 + i);
                var r = engine.Submit(prompt, Greedy(2 + i % 5));
                var text = new System.Text.StringBuilder();
                await foreach (var p in r.Pieces) text.Append(p.Text);
                var result = await r.Result;
                Interlocked.Decrement(ref inFlight);
                return (i, prompt, result, text.ToString());
            }
            finally { gate.Release(); }
        }).ToList();
        var done = await Task.WhenAll(tasks);
        Assert.That(done.Select(d => d.i).Distinct().Count(), Is.EqualTo(200));
        foreach (var (i, prompt, result, text) in done)
        {
            Assert.That(result.Tokens, Has.Count.EqualTo(2 + i % 5), $"request {i}: a complete answer");
            Assert.That(result.FinishReason, Is.EqualTo(FinishReason.Length));
            Assert.That(result.Reasoning, Is.Empty);
            Assert.That(text.TrimStart('\n'), Is.EqualTo(result.Content), $"request {i}: its stream is its answer (the result trims leading newlines)");
            if (i % 20 == 0) Assert.That(result.Tokens, Is.EqualTo(Alone(prompt, 2 + i % 5)), $"request {i}");
        }
        var m = engine.Metrics;
        Assert.That(m.RequestsFinished, Is.EqualTo(200));
        Assert.That(m.GeneratedTokens, Is.EqualTo(done.Sum(d => d.result.Tokens.Count)), "no token counted twice or lost");
        Assert.That(m.KvPagesUsed, Is.Zero);
        Assert.That(m.Running + m.Waiting, Is.Zero);
        Assert.That(maxInFlight, Is.EqualTo(32));
    }

    static void InterlockedMax(ref int target, int value)
    {
        int seen;
        while ((seen = Volatile.Read(ref target)) < value && Interlocked.CompareExchange(ref target, value, seen) != seen) { }
    }

    [Test]
    public async Task Cancelling_OrAbandoningTheStream_StopsTheRequestAndFreesItsPages()
    {
        var gated = new GatedModel(CpuModel(2));
        await using var engine = new Engine(gated, Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 2 });
        using var cts = new CancellationTokenSource();
        var r = engine.Submit(Prompt(20, 9), Greedy(70), cts.Token);
        gated.Steps.Release(3);   // the prefill and two decode steps
        await WaitUntil(() => engine.Metrics.Steps == 3, "three steps ran");
        Assert.That(engine.Metrics.KvPagesUsed, Is.GreaterThan(0));
        cts.Cancel();
        gated.Steps.Release(1000);
        var result = await r.Result;
        Assert.That(result.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        // The worker had scheduled the fourth step (waiting at the gate) when the token was cancelled: that step
        // finishes, and the request ends before the fifth.
        Assert.That(result.Tokens, Has.Count.EqualTo(4), "cancelled at the next step");
        await foreach (var _ in r.Pieces) { }   // the stream ends
        await WaitUntil(() => engine.Metrics.KvPagesUsed == 0 && engine.Metrics.Running == 0, "the pages are freed");

        // A reader that stops reading early (break) abandons the request.
        var gate = new GatedModel(CpuModel(2));
        await using var engine2 = new Engine(gate, Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 2 });
        var abandoned = engine2.Submit(Prompt(20, 10), Greedy(70));
        var reader = Task.Run(async () => { await foreach (var p in abandoned.Pieces) break; });
        while (!reader.IsCompleted) { gate.Steps.Release(1); await Task.Delay(20); }
        await reader;
        gate.Steps.Release(1000);
        var ar = await abandoned.Result;
        Assert.That(ar.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(ar.Tokens.Count, Is.LessThan(70));
        await WaitUntil(() => engine2.Metrics.KvPagesUsed == 0 && engine2.Metrics.Running == 0, "the abandoned request's pages are freed");
        // The engine still serves.
        Assert.That((await engine2.CompleteAsync(Prompt(5, 11), Greedy(3))).Tokens, Has.Count.EqualTo(3));
    }

    [Test]
    public async Task ShutDownEngine_RefusesRequests_AndAFullQueueIsOverloaded()
    {
        var gated = new GatedModel(CpuModel(1));
        var engine = new Engine(gated, Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 1, MaxWaitingRequests = 2 });
        var running = engine.Submit(Prompt(20, 1), Greedy(60));
        await WaitUntil(() => engine.Metrics.Running == 1, "the first request runs");
        var w1 = engine.Submit(Prompt(4, 2), Greedy(2));
        var w2 = engine.Submit(Prompt(4, 3), Greedy(2));
        Assert.Throws<EngineOverloadedException>(() => engine.Submit(Prompt(4, 4), Greedy(2)));
        var shutdown = engine.ShutdownAsync(cancelInFlight: true);
        Assert.Throws<EngineShutDownException>(() => engine.Submit(Prompt(4, 6), Greedy(2)), "no new requests once shutting down");
        gated.Steps.Release(1000);
        await shutdown;
        Assert.That((await running.Result).FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That((await w1.Result).FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That((await w2.Result).FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.Throws<EngineShutDownException>(() => engine.Submit(Prompt(4, 5), Greedy(2)));
        await engine.DisposeAsync();
    }

    /// <summary>Greedy tokens with penalties, alone: the model's logits, Penalties.Apply with this loop's own counts, argmax.</summary>
    internal static int[] AlonePenalised(ICausalLanguageModel m, int sequence, int[] prompt, int newTokens, Qwen3Cuda.Runtime.Launchers.PenaltySettings p)
    {
        var counts = new Dictionary<int, int>();
        if (p.Repetition != 1f) foreach (int t in prompt) counts.TryAdd(t, 0);
        var logits = new float[m.VocabSize];
        var tokens = new List<int>();
        m.Forward(sequence, prompt, logits);
        while (true)
        {
            Penalties.Apply(logits, [.. counts.Keys], [.. counts.Values], p);
            int t = CounterSampler.ArgMax(logits);
            tokens.Add(t);
            counts[t] = counts.GetValueOrDefault(t) + 1;
            if (tokens.Count == newTokens) break;
            m.Forward(sequence, [t], logits);
        }
        m.ResetSequence(sequence);
        return [.. tokens];
    }

    [Test]
    public async Task Penalties_InBatchedSteps_GiveWhatTheyGiveAlone_OnTheBackendAndOnTheHost()
    {
        // Strong penalties so that the answer differs from the unpenalised one within a few tokens.
        var penalties = new Qwen3Cuda.Runtime.Launchers.PenaltySettings(Presence: 1.5f, Frequency: 0.75f, Repetition: 1.8f);
        var prompts = Enumerable.Range(0, 4).Select(i => Prompt(6 + 5 * i, 700 + i)).ToArray();
        int[][] expected;
        using (var m = CpuModel(1)) expected = [.. prompts.Select(p => AlonePenalised(m, 0, p, 10, penalties))];
        await using var engine = CpuEngine(4, new EngineOptions { MaxNumSeqs = 4, MaxNumBatchedTokens = 16 });
        var options = Greedy(10) with { PresencePenalty = penalties.Presence, FrequencyPenalty = penalties.Frequency, RepetitionPenalty = penalties.Repetition };
        var onBackend = prompts.Select(p => engine.Submit(p, options)).ToList();
        var onHost = prompts.Select(p => engine.Submit(p, options with { TopLogprobs = 0 })).ToList();   // logits rows: the host applies them
        var plain = prompts.Select(p => engine.Submit(p, Greedy(10))).ToList();
        bool anyDiffers = false;
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.That((await onBackend[i].Result).Tokens, Is.EqualTo(expected[i]), $"request {i} (penalties in the step)");
            Assert.That((await onHost[i].Result).Tokens, Is.EqualTo(expected[i]), $"request {i} (penalties on the host)");
            anyDiffers |= !(await plain[i].Result).Tokens.SequenceEqual(expected[i]);
        }
        Assert.That(anyDiffers, Is.True, "the penalties change the answers");
    }

    [Test]
    public async Task AModelFault_FailsTheRequestsInFlight_AndStopsTheEngine()
    {
        var gated = new GatedModel(new FaultyModel(CpuModel(2)));
        var engine = new Engine(gated, Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 2 });
        var r = engine.Submit(Prompt(5, 1), Greedy(4));
        gated.Steps.Release(10);
        var e = Assert.ThrowsAsync<InvalidOperationException>(async () => await r.Result)!;
        Assert.That(e.Message, Does.Contain("injected fault"));
        Assert.ThrowsAsync<InvalidOperationException>(async () => { await foreach (var _ in r.Pieces) { } });
        var refused = Assert.Throws<EngineShutDownException>(() => engine.Submit(Prompt(5, 2), Greedy(4)))!;
        Assert.That(refused.Message, Does.Contain("model fault").And.Contain("injected fault"));
        await engine.DisposeAsync();
        await engine.DisposeAsync();   // twice is harmless
    }

    /// <summary>A model whose every step throws (a device fault).</summary>
    sealed class FaultyModel(ICausalLanguageModel inner) : ICausalLanguageModel
    {
        public int VocabSize => inner.VocabSize;
        public int ContextLength => inner.ContextLength;
        public int MaxSequences => inner.MaxSequences;
        public int MaxStepRows => inner.MaxStepRows;
        public int MaxOutputRows => inner.MaxOutputRows;
        public Qwen3Cuda.Runtime.Memory.KvPageTable Kv => inner.Kv;
        public void Step(StepBatch batch) => throw new InvalidOperationException("injected fault");
        public void Dispose() => inner.Dispose();
    }

    [Test]
    public async Task LoadAsync_OpensAFolderOnTheCpu_AndChats()
    {
        string dir = Cli.CliModels.TinyText();
        var log = new StringWriter();
        await using var engine = await Engine.LoadAsync(dir, new EngineOptions { Device = "cpu", MaxNumSeqs = 2, ContextLength = 64, Log = log });
        Assert.That(engine.ModelName, Is.EqualTo(Path.GetFileName(dir)));
        Assert.That(engine.ContextLength, Is.EqualTo(64));
        Assert.That(log.ToString(), Does.Contain("on the CPU reference"));
        var options = Greedy(5) with { EnableThinking = false };
        var messages = new List<Qwen3Cuda.Model.Templates.ChatMessage> { new("user", "hi") };
        var text = new System.Text.StringBuilder();
        await foreach (var piece in engine.ChatAsync(messages, options)) text.Append(piece.Text);
        // The same prompt through RenderChat and CompleteAsync: the same answer (EOS ids from generation_config.json end it early or not).
        var prompt = engine.RenderChat(messages, options);
        Assert.That(Tokenizer.Decode([.. prompt]), Does.EndWith("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
        var result = await engine.CompleteAsync(prompt, options);
        Assert.That(text.ToString().TrimStart('\n'), Is.EqualTo(result.Content));
        Assert.That(result.Usage.PromptTokens, Is.EqualTo(prompt.Count));
        Assert.That(engine.EosTokenIds, Is.EquivalentTo(new[] { 314, 312 }), "generation_config.json's eos_token_id");
        Assert.ThrowsAsync<Qwen3Cuda.Model.ModelNotFoundException>(() => Engine.LoadAsync("/nonexistent/model", new EngineOptions { Device = "cpu" }));
    }

    [Test]
    public void Generate_WithPenalties_GivesThePenalisedGreedyTokens()
    {
        string dir = Cli.CliModels.TinyText();
        var (exit, _, err) = Support.CliRunner.Run("generate", "-m", dir, "-p", "the cat sat on the mat", "-n", "10", "--temperature", "0",
            "--repetition-penalty", "1.8", "--presence-penalty", "1.5", "--device", "cpu", "--print-token-ids");
        Assert.That(exit, Is.Zero, err);
        var line = err.Split('\n').Single(l => l.StartsWith("token ids: ", StringComparison.Ordinal));
        var ids = System.Text.Json.JsonSerializer.Deserialize<int[]>(line["token ids: ".Length..])!;
        var prompt = Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer.FromModelDirectory(dir).Encode("the cat sat on the mat");
        using var m = Qwen3Cuda.Model.Reference.ReferenceModel.Load(dir, 1, 64);
        var expected = AlonePenalised(m, 0, prompt, 10, new Qwen3Cuda.Runtime.Launchers.PenaltySettings(Presence: 1.5f, Repetition: 1.8f));
        var eos = Engine.DefaultEosTokenIds(Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer.FromModelDirectory(dir), dir);
        int end = Array.FindIndex(expected, eos.Contains);
        Assert.That(ids, Is.EqualTo(end < 0 ? expected : expected[..(end + 1)]));
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

    /// <summary>A model whose steps each wait for a release of <see cref="Steps"/> (requests stay where the test wants them).</summary>
    internal sealed class GatedModel(ICausalLanguageModel inner) : ICausalLanguageModel
    {
        public readonly SemaphoreSlim Steps = new(0);
        public int VocabSize => inner.VocabSize;
        public int ContextLength => inner.ContextLength;
        public int MaxSequences => inner.MaxSequences;
        public int MaxStepRows => inner.MaxStepRows;
        public int MaxOutputRows => inner.MaxOutputRows;
        public int MaxPenaltyEntries => inner.MaxPenaltyEntries;
        public Qwen3Cuda.Runtime.Memory.KvPageTable Kv => inner.Kv;
        public void Step(StepBatch batch)
        {
            Steps.Wait();
            inner.Step(batch);
        }
        public void Dispose() { inner.Dispose(); Steps.Dispose(); }
    }
}
