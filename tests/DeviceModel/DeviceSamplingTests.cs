using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Tests.Kernels;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Device sampling inside the captured decode graph (sample_reduce_bf16 + sample_draw_bf16 reading per-row settings from device memory):
/// seeded runs repeat, other seeds differ, each drawn token is the one the CPU computes from the same Philox number
/// and the step's logits, and a sampled decode step is still one graph launch with no allocation.
/// </summary>
[NonParallelizable]
public class DeviceSamplingTests
{
    static readonly DeviceModelOptions Options = new() { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 2, MaxSequences = 2 };

    static int[] Generate(Qwen3Cuda.Model.Device.DeviceModel dm, int sequence, SamplingSettings s, int steps)
    {
        dm.ResetSequence(sequence);
        var tokens = new int[steps];
        tokens[0] = dm.ForwardSampled(sequence, [3, 14, 15, 92, 65], s);
        Span<int> next = stackalloc int[1];
        for (int i = 1; i < steps; i++)
        {
            dm.DecodeBatchSampled([sequence], [tokens[i - 1]], s, next);
            tokens[i] = next[0];
        }
        return tokens;
    }

    [Test]
    public void SeededSampling_Repeats_OtherSeedsDiffer()
    {
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), Options);
        var s = new SamplingSettings(Temperature: 1.5f, TopK: 50, TopP: 0.95f, Seed: 7);
        int[] a = Generate(dm, 0, s, 10), b = Generate(dm, 1, s, 10), c = Generate(dm, 0, s with { Seed = 8 }, 10);
        Assert.That(b, Is.EqualTo(a), "same seed, same prompt (another sequence slot): same tokens");
        // The tiny random checkpoint's logits are flat (top-50 at temperature 1.5 keeps ~50 candidates each step), so
        // two seeds agreeing on all 10 draws has probability far below 1e-10: a real failure, not chance.
        Assert.That(c, Is.Not.EqualTo(a), "another seed draws other tokens");
        var greedy = Generate(dm, 0, new SamplingSettings(Temperature: 0f), 6);
        dm.ResetSequence(0);
        int first = dm.ForwardGreedy(0, [3, 14, 15, 92, 65]);
        Assert.That(greedy[0], Is.EqualTo(first), "temperature 0 is the argmax");
    }

    /// <summary>
    /// Sequence 0 returns its logits (DecodeBatch, bucket 1), sequence 1 samples (bucket 1) with the same inputs: the
    /// same kernels on the same data give bit-identical logits (GraphReplay_EqualsDirectLaunches), so the CPU
    /// reproduces each draw from those bf16 logits, the warpers' distribution and u = Philox(seed, position, 0).
    /// Tolerance: the kernel's fp32 cumulative sums may move a boundary by ~1e-6, so a different token is accepted
    /// only when u lies within 1e-4 of its boundary (as in the kernel test).
    /// </summary>
    [TestCase(0.8f, 20, 1f, 0f)]
    [TestCase(1.2f, 0, 0.9f, 0.05f)]
    public void SampledTokens_AreTheCpuDrawFromTheSameLogits(float temperature, int topK, float topP, float minP)
    {
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), Options);
        int V = dm.VocabSize;
        var s = new SamplingSettings(temperature, topK, topP, minP, Seed: 1234);
        int[] prompt = [5, 6, 7, 8];
        var logits = new float[V];
        dm.Forward(0, prompt, logits);
        int token = dm.ForwardSampled(1, prompt, s);
        int exact = 0;
        var next = new int[1];
        for (int step = 0; step < 6; step++)
        {
            ulong position = (ulong)dm.SequenceLength(1);   // the counter: the new token's position
            double[] p = Qwen3Cuda.Model.Selftest.SamplingCases.ExpectedDistribution(logits, s);
            double u = (Qwen3Cuda.Model.Selftest.SamplingCases.Philox(s.Seed, position, 0) >> 8) / 16777216.0;
            int want = -1;
            double cum = 0, before = 0;
            for (int i = 0; i < V && want < 0; i++)
            {
                if (p[i] > 0 && cum + p[i] > u) want = i;
                cum += p[i];
            }
            Assert.That(p[token], Is.GreaterThan(0), $"step {step}: token {token} is outside the top-k/top-p/min-p set");
            if (token != want)
            {
                for (int i = 0; i < token; i++) before += p[i];
                Assert.That(Math.Min(Math.Abs(before - u), Math.Abs(before + p[token] - u)), Is.LessThan(1e-4),
                    $"step {step}: u {u:F6} selects token {want}, the device drew {token}");
            }
            else exact++;
            dm.Forward(0, [token], logits);
            dm.DecodeBatchSampled([1], [token], s, next);
            token = next[0];
        }
        Assert.That(exact, Is.GreaterThanOrEqualTo(5), "boundary cases are rare: most draws must match exactly");
    }

    /// <summary>
    /// The CPU's draw from one row of bf16 logits: the warpers' distribution for <paramref name="s"/> and
    /// u = Philox(seed, counter, 0); also the distance from u to the nearest cumulative boundary of <paramref name="drawn"/>.
    /// </summary>
    static (int Want, double BoundaryDistance, bool Allowed) CpuDraw(float[] logits, SamplingSettings s, ulong counter, int drawn)
    {
        double[] p = Qwen3Cuda.Model.Selftest.SamplingCases.ExpectedDistribution(logits, s);
        double u = (Qwen3Cuda.Model.Selftest.SamplingCases.Philox(s.Seed, counter, 0) >> 8) / 16777216.0;
        int want = -1;
        double cum = 0, before = 0;
        for (int i = 0; i < p.Length && want < 0; i++)
        {
            if (p[i] > 0 && cum + p[i] > u) want = i;
            cum += p[i];
        }
        for (int i = 0; i < drawn; i++) before += p[i];
        return (want, Math.Min(Math.Abs(before - u), Math.Abs(before + p[drawn] - u)), p[drawn] > 0);
    }

    /// <summary>
    /// Two sequences with their own seed, temperature, top-k, top-p and min-p decoded in one batch (bucket 2, one graph):
    /// each row's token is the CPU's draw from that row's logits with that row's settings and u = Philox(its seed, its
    /// new position, 0), and it is the token the sequence draws decoded alone with the same settings. The logits come
    /// from sequences 2 and 3 decoded as a batch with the same inputs (same kernels, same data: bit-identical, see
    /// GraphReplay_EqualsDirectLaunches); the alone runs (sequences 4, 5) are teacher-forced with the batch's tokens so
    /// every step is compared. Tolerance as in SampledTokens_AreTheCpuDrawFromTheSameLogits: a CPU/device difference is
    /// accepted only when u lies within 1e-4 of the drawn token's boundary (fp32 cumulative sums).
    /// </summary>
    [Test]
    public void PerSequenceSettings_InOneBatch_EachRowDrawsWithItsOwnSeed()
    {
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, KernelTimingTests.TinyModel(), Options with { MaxSequences = 6 });
        int V = dm.VocabSize;
        SamplingSettings[] settings = [new(1.3f, 50, 1f, 0f, Seed: 7), new(0.8f, 0, 0.9f, 0.05f, Seed: 99)];
        int[][] prompts = [[3, 14, 15, 92, 65], [2, 71, 82]];
        var tokens = new int[2];
        var rowLogits = new float[V];
        for (int r = 0; r < 2; r++)
        {
            tokens[r] = dm.ForwardSampled(r, prompts[r], settings[r]);
            dm.Forward(2 + r, prompts[r], rowLogits);
            Assert.That(dm.ForwardSampled(4 + r, prompts[r], settings[r]), Is.EqualTo(tokens[r]), $"sequence {r}: prefill draw repeats");
        }
        var ids = new int[2];
        var one = new int[1];
        var logits = new float[2 * V];
        int exact = 0, steps = 5;
        for (int step = 0; step < steps; step++)
        {
            int[] input = [.. tokens];
            dm.DecodeBatchSampled([0, 1], input, settings, ids);
            dm.DecodeBatch([2, 3], input, logits);
            for (int r = 0; r < 2; r++)
            {
                ulong counter = (ulong)dm.SequenceLength(r);   // the new token's position
                logits.AsSpan(r * V, V).CopyTo(rowLogits);
                var (want, distance, allowed) = CpuDraw(rowLogits, settings[r], counter, ids[r]);
                Assert.That(allowed, $"step {step} row {r}: token {ids[r]} is outside its top-k/top-p/min-p set");
                if (ids[r] == want) exact++;
                else Assert.That(distance, Is.LessThan(1e-4), $"step {step} row {r}: its own seed selects {want}, the device drew {ids[r]}");
                dm.DecodeBatchSampled([4 + r], [input[r]], settings[r], one);
                Assert.That(one[0], Is.EqualTo(ids[r]), $"step {step}: sequence {r} alone draws what it drew in the batch");
            }
            tokens = ids.ToArray();
        }
        Assert.That(exact, Is.GreaterThanOrEqualTo(2 * steps - 1), "boundary cases are rare: almost every draw must match exactly");
        Assert.Throws<ArgumentException>(() => dm.DecodeBatchSampled([0, 1], [1, 2], [settings[0], settings[1], settings[0]], ids),
            "three settings for two sequences");
    }

    [Test]
    public void SampledDecodeStep_IsOneGraphLaunch_NoAllocation()
    {
        using var device = new CountingDevice(new EmulatedDevice());
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), Options);
        var s = new SamplingSettings(Temperature: 0.9f, TopK: 10, Seed: 3);
        dm.ForwardSampled(0, [5, 6, 7], s);
        dm.ForwardSampled(1, [9, 10], s);
        var ids = new int[2];
        for (int step = 0; step < 2; step++)
        {
            device.Reset();
            dm.DecodeBatchSampled([0, 1], [11 + step, 12 + step], s with { Seed = (ulong)step }, ids);
            Assert.That(device.Allocations + device.PinnedAllocations, Is.EqualTo(0), "allocations");
            Assert.That(device.GraphLaunches, Is.EqualTo(1), "graph launches");
            Assert.That(device.KernelLaunches, Is.EqualTo(0), "kernels outside the graph");
            Assert.That(device.Captures, Is.EqualTo(0), "no re-capture when the settings change");
            Assert.That(device.Synchronizations, Is.EqualTo(1), "host synchronisations");
            Assert.That(device.AsyncCopiesToHost + device.SyncCopiesToHost, Is.EqualTo(1), "copies to the host");
            Assert.That(device.AsyncCopiesToDevice, Is.EqualTo(1), "input copies (ids, positions, slots, lengths, tables, sampling settings: near neighbours, one copy)");
            Assert.That(ids, Has.All.InRange(0, dm.VocabSize - 1));
        }
    }
}
