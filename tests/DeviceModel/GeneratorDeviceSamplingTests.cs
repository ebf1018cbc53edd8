using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Generation;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>The Generator samples on the model's backend (Step rows with a sampled output) when no penalty is asked for.</summary>
[NonParallelizable]
public class GeneratorDeviceSamplingTests
{
    [Test]
    public void Greedy_DeviceSamplingEqualsHostSampling_SeededSamplingRepeats()
    {
        if (!Directory.Exists(TextTestSupport.QwenTokenizerDir)) Assert.Ignore("Qwen3 tokenizer not installed (bash .ci/setup)");
        var tok = Qwen3Tokenizer.FromModelDirectory(TextTestSupport.QwenTokenizerDir);
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(),
            new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 1, MaxSequences = 2 });
        int[] prompt = [5, 17, 42, 99, 7];
        var greedy = new GenerationOptions { Sampling = SamplingOptions.Greedy, MaxNewTokens = 8 };
        var onDevice = new Generator(dm, tok, [], sequence: 0).Generate(prompt, greedy);
        // The host's argmax of the logits the device returns, step by step on sequence 1.
        var onHost = new List<int>();
        var logits = new float[dm.VocabSize];
        dm.Forward(1, prompt, logits);
        for (int i = 0; i < 8; i++)
        {
            onHost.Add(CounterSampler.ArgMax(logits));
            if (i < 7) dm.Forward(1, [onHost[^1]], logits);
        }
        // Exact: both take the argmax of the same bf16 logits, ties to the lower index on both sides.
        Assert.That(onDevice.Tokens, Is.EqualTo(onHost));
        Assert.That(onDevice.Tokens, Has.Count.EqualTo(8));

        var sampled = new GenerationOptions { Sampling = new SamplingOptions { Temperature = 1.2f, TopK = 40, TopP = 0.9f, Seed = 11 }, MaxNewTokens = 8 };
        dm.ResetSequence(0);
        dm.ResetSequence(1);
        var a = new Generator(dm, tok, [], sequence: 0).Generate(prompt, sampled);
        var b = new Generator(dm, tok, [], sequence: 1).Generate(prompt, sampled);
        Assert.That(b.Tokens, Is.EqualTo(a.Tokens), "seeded device sampling repeats");
        Assert.That(a.Tokens, Has.All.InRange(0, dm.VocabSize - 1));
    }
}
