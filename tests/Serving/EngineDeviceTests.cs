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
        await using var engine = new Engine(new Borrowed(dm), Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 3, MaxNumBatchedTokens = 8 });
        var requests = Enumerable.Range(0, 5).Select(i => engine.Submit(prompts[i], new RequestOptions { Sampling = sampling[i], MaxNewTokens = budgets[i] })).ToList();
        // The same first request again with host sampling (logprobs ask for the logits): the same greedy tokens.
        var host = engine.Submit(prompts[0], new RequestOptions { Sampling = sampling[0], MaxNewTokens = budgets[0], TopLogprobs = 0 });
        for (int i = 0; i < 5; i++)
            Assert.That((await requests[i].Result).Tokens, Is.EqualTo(expected[i]), $"request {i}");
        Assert.That((await host.Result).Tokens, Is.EqualTo(expected[0]), "host argmax of the device's logits");
        Assert.That(engine.Metrics.PrefixCacheHits, Is.GreaterThan(0), "requests 0 and 1 share two pages");
        Assert.That(engine.Metrics.KvPagesUsed, Is.Zero);
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
        await using var engine = new Engine(new Borrowed(dm), Tokenizer, Template, [], new EngineOptions { MaxNumSeqs = 3, MaxNumBatchedTokens = 8 });
        var options = new RequestOptions { Sampling = SamplingOptions.Greedy, MaxNewTokens = 6, PresencePenalty = 1.5f, FrequencyPenalty = 0.75f, RepetitionPenalty = 1.8f };
        var onDevice = prompts.Select(p => engine.Submit(p, options)).ToList();
        var onHost = engine.Submit(prompts[1], options with { TopLogprobs = 0 });
        for (int i = 0; i < prompts.Length; i++)
            Assert.That((await onDevice[i].Result).Tokens, Is.EqualTo(expected[i]), $"request {i}: penalties.cu before the device's argmax");
        Assert.That((await onHost.Result).Tokens, Is.EqualTo(expected[1]), "the host's penalties on the device's logits");
        Assert.That(expected[1], Is.Not.EqualTo(plain), "the penalties change the answer");
    }
}
