using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;
using static Qwen3Cuda.Tests.Serving.ServingTestSupport;

namespace Qwen3Cuda.Tests.Serving;

/// <summary>
/// The engine on the device model (PTX emulator, tiny checkpoint, steps of at most 8 rows so that every row goes through
/// the same decode GEMV and attention path alone or batched): requests with their own sampling settings, arriving
/// together, batched and preempted, yield exactly what each yields alone (a row's draw depends on its logits, seed and
/// position only), on the backend's sampler or the host's.
/// </summary>
[NonParallelizable]
public class EngineDeviceTests
{
    static Qwen3Cuda.Model.Device.DeviceModel Load(EmulatedDevice device, int sequences) =>
        Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceModel.DeviceCheckpoints.Tiny(),
            new DeviceModelOptions { ContextLength = 48, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 2, MaxOutputRows = 4, MaxSequences = sequences });

    /// <summary>The request alone, step by step on sequence <paramref name="sequence"/> (no engine), then the sequence is emptied.</summary>
    static int[] Alone(ICausalLanguageModel m, int sequence, int[] prompt, SamplingSettings settings, int newTokens)
    {
        var tokens = new List<int> { m.ForwardSampled(sequence, prompt, settings) };
        while (tokens.Count < newTokens) tokens.Add(m.ForwardSampled(sequence, [tokens[^1]], settings));
        m.ResetSequence(sequence);
        return [.. tokens];
    }

    [Test]
    public async Task ConcurrentRequests_WithTheirOwnSettings_YieldWhatEachYieldsAlone()
    {
        using var device = new EmulatedDevice();
        using var dm = Load(device, 4);
        var shared = Prompt(9, 41);
        int[][] prompts = [[.. shared, 5, 6], [.. shared, 7], Prompt(3, 42), Prompt(12, 43), Prompt(6, 44)];
        SamplingOptions[] sampling =
        [
            SamplingOptions.Greedy,
            new() { Temperature = 1.2f, TopK = 40, TopP = 0.9f, Seed = 11 },
            new() { Temperature = 0.9f, TopK = 0, TopP = 0.95f, MinP = 0.05f, Seed = 12345 },
            SamplingOptions.Greedy,
            new() { Temperature = 1f, TopK = 0, TopP = 1f, Seed = 5 },
        ];
        int[] budgets = [4, 3, 5, 3, 4];
        var expected = new int[5][];
        for (int i = 0; i < 5; i++)
        {
            var s = sampling[i];
            expected[i] = Alone(dm, 0, prompts[i], new SamplingSettings(s.Temperature, s.TopK, s.TopP, s.MinP, s.Seed ?? 0), budgets[i]);
        }
        dm.Kv.ClearPrefixCache();
        // Three sequences for five requests and 8-row steps: waiting, chunked prefill next to decode rows, prefix hits.
        await using var engine = new Engine(Borrow(dm), Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 3, MaxNumBatchedTokens = 8 });
        var requests = Enumerable.Range(0, 5).Select(i => engine.Submit(prompts[i], new RequestOptions { Sampling = sampling[i], MaxNewTokens = budgets[i] })).ToList();
        // The same first request again with host sampling (logprobs ask for the logits): the same greedy tokens.
        var host = engine.Submit(prompts[0], new RequestOptions { Sampling = sampling[0], MaxNewTokens = budgets[0], TopLogprobs = 0 });
        for (int i = 0; i < 5; i++)
            Assert.That((await requests[i].Result).Tokens, Is.EqualTo(expected[i]), $"request {i}");
        Assert.That((await host.Result).Tokens, Is.EqualTo(expected[0]), "host argmax of the device's logits");
        Assert.That(engine.Metrics.PrefixCacheHits, Is.GreaterThan(0), "requests 0 and 1 share two pages");
        Assert.That(engine.Metrics.KvPagesUsed, Is.Zero);
    }

    /// <summary>
    /// Pipelined decode in the engine (docs/architecture.md, "Pipelined decode"), two requests decoding side by side at a
    /// time. First a greedy one whose budget ends while a sampled one goes on (its queued token is its last: it gets no
    /// row in the step after), then a sampled one that ends at a stop token beside a greedy one (the step queued after
    /// its last still runs, and its row's token is discarded). Each yields what it yields alone, every page is free at
    /// the end, and the engine queued steps ahead; with the option off it queued none and yields the same.
    /// </summary>
    [TestCase(true)]
    [TestCase(false)]
    public async Task PipelinedDecode_YieldsWhatEachYieldsAlone(bool pipeline)
    {
        using var device = new EmulatedDevice();
        using var dm = Load(device, 2);
        int[][] prompts = [Prompt(5, 71), Prompt(7, 72), Prompt(6, 73), Prompt(4, 74)];
        SamplingOptions[] sampling =
        [
            SamplingOptions.Greedy, new() { Temperature = 1f, TopK = 20, TopP = 0.9f, Seed = 7 },
            new() { Temperature = 0.9f, TopK = 0, TopP = 0.95f, Seed = 8 }, SamplingOptions.Greedy,
        ];
        int[] budgets = [5, 12, 12, 9];
        var expected = new int[4][];
        for (int i = 0; i < 4; i++)
        {
            var o = sampling[i];
            expected[i] = Alone(dm, 0, prompts[i], new SamplingSettings(o.Temperature, o.TopK, o.TopP, o.MinP, o.Seed ?? 0), budgets[i]);
        }
        int stop = expected[2][4];
        int cut = Array.IndexOf(expected[2], stop) + 1;   // request 2 ends at the stop token's first occurrence
        dm.Kv.ClearPrefixCache();
        var model = (BorrowedPipelined)Borrow(dm);
        await using var engine = new Engine(model, Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 2, MaxNumBatchedTokens = 8, PipelineDecode = pipeline });
        EngineRequest Submit(int i) => engine.Submit(prompts[i], new RequestOptions { Sampling = sampling[i], MaxNewTokens = budgets[i], StopTokenIds = i == 2 ? [stop] : [] });

        var (a, b) = (Submit(0), Submit(1));
        Assert.That((await a.Result).Tokens, Is.EqualTo(expected[0]));
        Assert.That((await b.Result).Tokens, Is.EqualTo(expected[1]));
        int ahead = model.QueuedAhead;
        var (c, d) = (Submit(2), Submit(3));
        var stopped = await c.Result;
        Assert.That(stopped.Tokens, Is.EqualTo(expected[2][..cut]));
        Assert.That(stopped.FinishReason, Is.EqualTo(FinishReason.Stop));
        Assert.That((await d.Result).Tokens, Is.EqualTo(expected[3]));
        Assert.That(engine.Metrics.KvPagesUsed, Is.Zero);
        Assert.That(dm.PendingSteps, Is.Zero);
        if (pipeline)
        {
            Assert.That(ahead, Is.GreaterThan(4), "the first pair: decode steps queued while the step before ran");
            Assert.That(model.QueuedAhead - ahead, Is.GreaterThan(4), "the second pair");
        }
        else Assert.That(model.Enqueued, Is.Zero);
    }

    /// <summary>
    /// The shared KV pool (docs/memory.md) on the device: a budget that leaves 14 pages of 4 tokens for 4 sequences of up to
    /// 48 tokens (12 pages each; the old plan gave every sequence a fixed slice, so 4 x 48 tokens did not fit). Every
    /// sequence keeps the full 48-token context: a 46-token request runs next to three others, which wait or are
    /// preempted for pages and still yield what they yield alone; every page is free at the end.
    /// </summary>
    [Test]
    public async Task SharedPool_SmallerThanAllSequencesAtFullContext_RunsThemAll()
    {
        var options = new DeviceModelOptions { ContextLength = 48, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 2, MaxOutputRows = 4, MaxSequences = 4 };
        string dir = DeviceModel.DeviceCheckpoints.Tiny();
        bool hasLmHead;
        using (var ckpt = Qwen3Cuda.Model.Checkpoint.SafetensorsCheckpoint.Open(dir)) hasLmHead = ckpt.Contains("lm_head.weight");
        using var device = new EmulatedDevice();
        var probe = MemoryPlan.Compute(Qwen3Cuda.Model.Config.ModelConfig.Load(dir), options, 1L << 40, device.Info.MultiprocessorCount, hasLmHead);
        long budget = probe.Weights.TotalBytes + probe.Workspace.TotalBytes + 15 * probe.KvBytesPerPage;
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, options with { GpuMemoryBytes = budget });
        Assert.That((dm.Plan.KvPages, dm.Kv.Pages, dm.Kv.MaxPagesPerSequence, dm.ContextLength), Is.EqualTo((15, 15, 12, 48)), "14 usable pages; 12 per sequence");
        Assert.That(dm.Plan.MaxConcurrencyAtFullContext, Is.EqualTo(14 * 4 / 48.0));

        int[][] prompts = [Prompt(30, 61), Prompt(10, 62), Prompt(9, 63), Prompt(11, 64)];
        int[] budgets = [16, 8, 8, 8];   // 46 tokens (12 pages), then 18, 17 and 19 tokens (5 pages each)
        var expected = new int[4][];
        for (int i = 0; i < 4; i++) expected[i] = Alone(dm, 0, prompts[i], new SamplingSettings(Temperature: 0f), budgets[i]);
        dm.Kv.ClearPrefixCache();
        await using var engine = new Engine(Borrow(dm), Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 4, MaxNumBatchedTokens = 8, EnablePrefixCaching = false });
        var requests = Enumerable.Range(0, 4).Select(i => engine.Submit(prompts[i], new RequestOptions { Sampling = SamplingOptions.Greedy, MaxNewTokens = budgets[i], IgnoreEos = true })).ToList();
        for (int i = 0; i < 4; i++)
            Assert.That((await requests[i].Result).Tokens, Is.EqualTo(expected[i]), $"request {i}");
        Assert.That(engine.Metrics.KvPagesUsed, Is.Zero);
        Assert.That(engine.Metrics.KvPagesTotal, Is.EqualTo(14));
        Assert.That(engine.Metrics.Preemptions, Is.GreaterThan(0), "27 pages of demand on 14: some requests gave their pages back");
    }

    [Test]
    public async Task Penalties_OnTheDevice_EqualTheHostReference()
    {
        using var device = new EmulatedDevice();
        using var dm = Load(device, 3);
        var penalties = new PenaltySettings(Presence: 1.5f, Frequency: 0.75f, Repetition: 1.8f);
        int[][] prompts = [Prompt(5, 51), Prompt(11, 52)];
        int[][] expected = [.. prompts.Select(p => EngineTests.AlonePenalised(dm, 0, p, 6, penalties))];
        var plain = Alone(dm, 0, prompts[1], new SamplingSettings(Temperature: 0f), 6);
        dm.Kv.ClearPrefixCache();
        await using var engine = new Engine(Borrow(dm), Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 3, MaxNumBatchedTokens = 8 });
        var options = new RequestOptions { Sampling = SamplingOptions.Greedy, MaxNewTokens = 6, PresencePenalty = 1.5f, FrequencyPenalty = 0.75f, RepetitionPenalty = 1.8f };
        var onDevice = prompts.Select(p => engine.Submit(p, options)).ToList();
        var onHost = engine.Submit(prompts[1], options with { TopLogprobs = 0 });
        for (int i = 0; i < prompts.Length; i++)
            Assert.That((await onDevice[i].Result).Tokens, Is.EqualTo(expected[i]), $"request {i}: penalties.cu before the device's argmax");
        Assert.That((await onHost.Result).Tokens, Is.EqualTo(expected[1]), "the host's penalties on the device's logits");
        Assert.That(expected[1], Is.Not.EqualTo(plain), "the penalties change the answer");
    }

    /// <summary>
    /// Graph buckets grow to the sequence cap: with MaxBatch 16, a decode step of 12 sequences replays the 16-row graph
    /// (GEMMs and the MoE's grouped GEMMs past 8 rows), and gives the tokens of the same steps run eagerly.
    /// </summary>
    [Test]
    public async Task DecodeGraphsPastEightRows_ReplayWhatTheEagerStepsCompute()
    {
        var prompts = Enumerable.Range(0, 12).Select(i => Prompt(2 + i % 3, 60 + i)).ToArray();
        var results = new List<int[]>[2];
        for (int pass = 0; pass < 2; pass++)
        {
            using var device = new EmulatedDevice();
            using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceModel.DeviceCheckpoints.Tiny(),
                new DeviceModelOptions { ContextLength = 16, PageSize = 4, PrefillChunkTokens = 48, MaxBatch = 16, MaxOutputRows = 16, MaxSequences = 12 });
            Assert.That(dm.GraphBuckets, Is.EquivalentTo(new[] { 1, 2, 4, 8, 16 }));
            dm.ReplayGraphs = pass == 0;
            var gated = new EngineTests.GatedModel(new Borrowed(dm));   // the first step waits until all 12 are queued
            await using var engine = new Engine(gated, Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 12, MaxNumBatchedTokens = 48 });
            var requests = prompts.Select((p, i) => engine.Submit(p, new RequestOptions
            {
                Sampling = i % 2 == 0 ? SamplingOptions.Greedy : new SamplingOptions { Temperature = 1f, TopK = 0, TopP = 1f, Seed = (ulong)i },
                MaxNewTokens = 4,
            })).ToList();
            gated.Steps.Release(100);
            results[pass] = [];
            foreach (var r in requests) results[pass].Add([.. (await r.Result).Tokens]);
            // One prefill step and three decode steps of all 12 (a 12-row step: the 16-row graph); one more when the worker
            // scheduled its first step before the last submissions.
            Assert.That(engine.Metrics.Steps, Is.InRange(4, 5));
        }
        Assert.That(results[0], Is.EqualTo(results[1]));
    }
}
