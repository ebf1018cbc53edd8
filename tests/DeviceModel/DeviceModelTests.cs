using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// The whole DeviceModel on the PTX emulator against the CPU ReferenceModel: logits within tolerance and the
/// same greedy tokens for 32 steps (single sequence, batched, chunked prefill, across KV pages).
/// Tolerance: both sides round to bf16 at the same points, but fp32 sums run in different orders (warp trees
/// and split-K on the device, sequential on the CPU), so an intermediate may differ by one bf16 ulp (2^-8
/// relative) and that propagates through the layers. We require |d| &lt;= 0.03 * max|ref logit| per element
/// (a few bf16 ulps of the largest logits) and the normalised MSE below 1e-4.
/// </summary>
[NonParallelizable]
public class DeviceModelTests
{
    const double RelTol = 0.03, NmseTol = 1e-4;

    static int ArgMax(ReadOnlySpan<float> v)
    {
        int best = 0;
        for (int i = 1; i < v.Length; i++) if (v[i] > v[best]) best = i;
        return best;
    }

    static (double MaxAbs, double Nmse) Compare(ReadOnlySpan<float> dev, ReadOnlySpan<float> reference)
    {
        double maxRef = 0, maxAbs = 0, se = 0, ss = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
            double d = dev[i] - reference[i];
            maxAbs = Math.Max(maxAbs, Math.Abs(d));
            se += d * d; ss += (double)reference[i] * reference[i];
        }
        return (maxAbs / Math.Max(maxRef, 1e-30), se / Math.Max(ss, 1e-30));
    }

    static void AssertClose(ReadOnlySpan<float> dev, ReadOnlySpan<float> reference, string what, ref double worst)
    {
        var (rel, nmse) = Compare(dev, reference);
        worst = Math.Max(worst, rel);
        Assert.That(rel, Is.LessThanOrEqualTo(RelTol), $"{what}: max |d| / max |ref| = {rel:G3}");
        Assert.That(nmse, Is.LessThanOrEqualTo(NmseTol), $"{what}: normalised MSE {nmse:G3}");
    }

    static int[] Prompt(int n, int vocab, int salt) => Enumerable.Range(0, n).Select(i => (i * 37 + salt * 101 + 3) % vocab).ToArray();

    /// <summary>Prefill a prompt, then 32 greedy steps on both models; logits compared at every step, tokens must agree.</summary>
    static void RunGreedy(string modelDir, DeviceModelOptions options, int promptLength, int steps = 32)
    {
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, modelDir, options);
        using var rm = ReferenceModel.Load(modelDir, 1, dm.ContextLength);
        int V = dm.VocabSize;
        var prompt = Prompt(promptLength, V, 1);
        float[] a = new float[V], b = new float[V];
        dm.Forward(0, prompt, a);
        rm.Forward(0, prompt, b);
        double worst = 0;
        AssertClose(a, b, "prefill logits", ref worst);
        var devTokens = new List<int>();
        var refTokens = new List<int>();
        for (int s = 0; s < steps; s++)
        {
            int td = ArgMax(a), tr = ArgMax(b);
            devTokens.Add(td); refTokens.Add(tr);
            Assert.That(td, Is.EqualTo(tr), $"greedy token {s}: device {td}, reference {tr}");
            dm.Forward(0, [td], a);
            rm.Forward(0, [tr], b);
            AssertClose(a, b, $"decode step {s}", ref worst);
        }
        Assert.That(dm.SequenceLength(0), Is.EqualTo(promptLength + steps));
        TestContext.Out.WriteLine($"{Path.GetFileName(modelDir)}: {steps} greedy tokens equal; worst max|d|/max|ref| {worst:G3}; tokens {string.Join(",", devTokens)}");
    }

    [Test]
    public void Tiny_PrefillAndGreedyDecode_MatchReference_AcrossPages()
    {
        // Page size 4: the 11-token prompt and 32 decode steps cross 10 page boundaries.
        RunGreedy(DeviceCheckpoints.Tiny(), new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 4 }, promptLength: 11);
    }

    [Test]
    public void Small_ChunkedPrefillWithGroupedExperts_MatchesReference()
    {
        // Chunks of 16 tokens take the grouped expert GEMMs (T > 8) and the GEMV in 8-row slices; 37 tokens = 3 chunks.
        RunGreedy(DeviceCheckpoints.Small(), new DeviceModelOptions { ContextLength = 96, PageSize = 8, PrefillChunkTokens = 16, MaxBatch = 2 }, promptLength: 37);
    }
}
