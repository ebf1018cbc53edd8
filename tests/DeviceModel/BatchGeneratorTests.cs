using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Generation;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// <see cref="BatchGenerator"/>: requests with their own sampling options (seed, temperature, top-k/top-p/min-p,
/// token budget) decoded together in device-sampled batches yield exactly what each yields alone through
/// <see cref="Generator"/>. Exact: each row's draw depends only on its logits, its seed and its position, and the
/// batched rows' logits equal the single-sequence ones on this model (PerSequenceSettings_InOneBatch_EachRowDrawsWithItsOwnSeed
/// checks the draws against the CPU).
/// </summary>
[NonParallelizable]
public class BatchGeneratorTests
{
    [Test]
    public void Requests_WithTheirOwnSamplingOptions_YieldWhatEachYieldsAlone()
    {
        if (!Directory.Exists(TextTestSupport.QwenTokenizerDir)) Assert.Ignore("Qwen3 tokenizer not installed (bash .ci/setup)");
        var tok = Qwen3Tokenizer.FromModelDirectory(TextTestSupport.QwenTokenizerDir);
        string dir = KernelTimingTests.TinyModel();
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir,
            new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 2, MaxSequences = 6 });
        int[] prompt = [5, 17, 42, 99, 7];
        GenerationRequest[] requests =
        [
            new(prompt, new GenerationOptions { Sampling = new SamplingOptions { Temperature = 1.2f, TopK = 40, TopP = 0.9f, Seed = 11 }, MaxNewTokens = 4 }),
            new(prompt, new GenerationOptions { Sampling = new SamplingOptions { Temperature = 0.9f, TopK = 0, TopP = 0.95f, MinP = 0.05f, Seed = 12345 }, MaxNewTokens = 3 }),
            new([8, 3, 200], new GenerationOptions { Sampling = SamplingOptions.Greedy, MaxNewTokens = 3 }),
        ];
        // Three requests, batches of at most 2: each round is a bucket-2 step and a bucket-1 step.
        var batched = new BatchGenerator(dm, tok, []).Generate(requests);
        Assert.That(batched, Has.Count.EqualTo(3));
        for (int i = 0; i < requests.Length; i++)
        {
            var alone = new Generator(dm, tok, [], sequence: 3 + i).Generate(requests[i].Prompt, requests[i].Options);
            Assert.That(batched[i].Tokens, Is.EqualTo(alone.Tokens), $"request {i}: tokens");
            Assert.That(batched[i].Content, Is.EqualTo(alone.Content), $"request {i}: text");
            Assert.That(batched[i].StopReason, Is.EqualTo(StopReason.MaxNewTokens), $"request {i}");
            Assert.That(batched[i].Tokens, Has.Count.EqualTo(requests[i].Options.MaxNewTokens), $"request {i}: its own budget");
        }
        // Same prompt, other seed and settings: the tiny model's flat logits make equal first 3 draws (with ~40 candidates each) practically impossible.
        Assert.That(batched[1].Tokens, Is.Not.EqualTo(batched[0].Tokens.Take(3)), "each request draws with its own seed");

        var penalised = new GenerationRequest(prompt, new GenerationOptions { Sampling = SamplingOptions.Greedy with { RepetitionPenalty = 1.1f } });
        var e = Assert.Throws<ArgumentException>(() => new BatchGenerator(dm, tok, []).Generate([penalised]));
        Assert.That(e!.Message, Does.Contain("request 0").And.Contain("penalties"));
        // The CPU reference implements the same step contract (sampling with the device sampler's semantics): a batched
        // greedy request there yields what it yields alone through the Generator (the reference runs each sequence alone).
        using var cpu = ReferenceModel.Load(dir, 2, 16);
        var greedy = new GenerationRequest(prompt, new GenerationOptions { Sampling = SamplingOptions.Greedy, MaxNewTokens = 4 });
        var onCpu = new BatchGenerator(cpu, tok, []).Generate([greedy, greedy]);
        var cpuAlone = new Generator(cpu, tok, [], sequence: 1).Generate(prompt, greedy.Options);
        Assert.That(onCpu[0].Tokens, Is.EqualTo(cpuAlone.Tokens));
        Assert.That(onCpu[1].Tokens, Is.EqualTo(cpuAlone.Tokens));
    }
}
