using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Pipelined decode (docs/architecture.md, "Pipelined decode"): <c>DeviceModel.Enqueue</c> / <c>Complete</c> and
/// <c>Generate</c> on top of them. The small MoE checkpoint on 10 SMs, under strict streams (nothing runs until the host
/// waits; independent streams in a seeded order), so a missing event between the input, compute and result streams
/// shows as another token or a strict-streams fault. The reference is the same model stepped one synchronous step per
/// token: a row's draw depends on its seed and position only, and the steps run the same kernels on the same bits, so the
/// tokens must be equal, not close.
/// </summary>
[NonParallelizable]
public class PipelinedDecodeTests
{
    static readonly DeviceModelOptions Options = new() { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, MaxSequences = 2 };
    static readonly int[] Prompt = [3, 14, 15, 92, 65];

    static EmulatedDevice Device(int scheduleSeed) => new(new EmulatorOptions
    {
        MultiprocessorCount = 10, Modes = EmulatorModes.Ambient with { StrictStreams = true, ScheduleSeed = EmulatorModes.Ambient.ScheduleSeed + scheduleSeed },
    });

    /// <summary>One synchronous step per token (the reference), then the logits after the last token it appended.</summary>
    static int[] StepByStep(Qwen3Cuda.Model.Device.DeviceModel dm, SamplingSettings s, int count, out float[] nextLogits)
    {
        var tokens = new int[count];
        tokens[0] = dm.ForwardSampled(0, Prompt, s);
        var next = new int[1];
        for (int i = 1; i < count; i++)
        {
            dm.DecodeBatchSampled([0], [tokens[i - 1]], s, next);
            tokens[i] = next[0];
        }
        nextLogits = new float[dm.VocabSize];
        dm.Forward(0, [tokens[^1]], nextLogits);
        return tokens;
    }

    [TestCase(0f, true, 1)]
    [TestCase(0f, false, 2)]
    [TestCase(0.8f, true, 3)]
    [TestCase(0.8f, false, 4)]
    public void Generate_Pipelined_GivesTheStepByStepTokens(float temperature, bool graphs, int seed)
    {
        var s = new SamplingSettings(temperature, 20, 0.9f, 0f, Seed: 11);
        const int count = 9;
        using var device = Device(seed);
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(), Options with { UseGraphs = graphs });
        var expected = StepByStep(dm, s, count, out var expectedLogits);
        dm.ResetSequence(0);
        var tokens = new int[count];
        Assert.That(dm.Generate(0, Prompt, s, tokens), Is.EqualTo(count));
        Assert.That(tokens, Is.EqualTo(expected), "the same tokens as one synchronous step per token");
        Assert.That(dm.PendingSteps, Is.Zero);
        Assert.That(dm.SequenceLength(0), Is.EqualTo(Prompt.Length + count - 1), "the prompt and every generated token but the last");
        var logits = new float[dm.VocabSize];
        dm.Forward(0, [tokens[^1]], logits);
        Assert.That(logits, Is.EqualTo(expectedLogits), "the same KV cache: the next step's logits are the same bits");
        if (temperature > 0) Assert.That(tokens.Distinct().Count(), Is.GreaterThan(1), "the draws are not all one token");
    }

    /// <summary>
    /// GPU only: the same comparison on CUDA, where the three streams really run at once (greedy and sampled, graphs on):
    /// the pipelined tokens are the synchronous steps' tokens, and the next logits after them the same bits.
    /// </summary>
    [Test]
    [Category(Kernels.KernelBackends.GpuCategory)]
    public void Generate_Pipelined_OnCuda_GivesTheStepByStepTokens([Values(0f, 0.8f)] float temperature)
    {
        var status = Qwen3Cuda.Runtime.Cuda.CudaDriver.Probe();
        if (status.Devices.Count == 0) Assert.Ignore("needs a CUDA GPU: " + (status.Problem ?? "none present"));
        var s = new SamplingSettings(temperature, 20, 0.9f, 0f, Seed: 11);
        const int count = 33;
        using var device = Qwen3Cuda.Runtime.DeviceFactory.Open(Qwen3Cuda.Runtime.BackendKind.Cuda);
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(), Options);
        var expected = StepByStep(dm, s, count, out var expectedLogits);
        dm.ResetSequence(0);
        var tokens = new int[count];
        Assert.That(dm.Generate(0, Prompt, s, tokens), Is.EqualTo(count));
        Assert.That(tokens, Is.EqualTo(expected));
        var logits = new float[dm.VocabSize];
        dm.Forward(0, [tokens[^1]], logits);
        Assert.That(logits, Is.EqualTo(expectedLogits));
    }

    /// <summary>A stop after the third token: the step queued past it is discarded and the sequence truncated to the tokens before it.</summary>
    [Test]
    public void Generate_StopsEarly_AndForgetsTheStepQueuedPastTheStop()
    {
        var s = new SamplingSettings(0.8f, 20, 0.9f, 0f, Seed: 5);
        using var device = Device(5);
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(), Options);
        var expected = StepByStep(dm, s, 3, out var expectedLogits);
        dm.ResetSequence(0);
        var tokens = new int[8];
        int seen = 0;
        int n = dm.Generate(0, Prompt, s, tokens, stop: _ => ++seen == 3);
        Assert.That(n, Is.EqualTo(3));
        Assert.That(tokens[..3], Is.EqualTo(expected));
        Assert.That(dm.PendingSteps, Is.Zero);
        Assert.That(dm.SequenceLength(0), Is.EqualTo(Prompt.Length + 2));
        var logits = new float[dm.VocabSize];
        dm.Forward(0, [tokens[2]], logits);
        Assert.That(logits, Is.EqualTo(expectedLogits), "the discarded step left nothing the next step reads");
    }

    /// <summary>
    /// Generate on a model that does not pipeline (the CPU reference): one ForwardSampled per token, the same stop and
    /// sequence-length rules, and a clear error past the context.
    /// </summary>
    [Test]
    public void Generate_OnTheReference_IsOneForwardSampledPerToken()
    {
        var s = new SamplingSettings(0.8f, 20, 0.9f, 0f, Seed: 3);
        using var m = Qwen3Cuda.Model.Reference.ReferenceModel.Load(DeviceCheckpoints.Tiny(), maxSequences: 1, contextLength: 16);
        var expected = new int[6];
        expected[0] = m.ForwardSampled(0, Prompt, s);
        for (int i = 1; i < expected.Length; i++) expected[i] = m.ForwardSampled(0, [expected[i - 1]], s);
        m.ResetSequence(0);
        var tokens = new int[6];
        Assert.That(m.Generate(0, Prompt, s, tokens), Is.EqualTo(6));
        Assert.That(tokens, Is.EqualTo(expected));
        Assert.That(m.SequenceLength(0), Is.EqualTo(Prompt.Length + 5));
        m.ResetSequence(0);
        int seen = 0;
        Assert.That(m.Generate(0, Prompt, s, tokens, stop: _ => ++seen == 2), Is.EqualTo(2));
        Assert.That(m.SequenceLength(0), Is.EqualTo(Prompt.Length + 1));
        m.ResetSequence(0);
        Assert.That(() => m.Generate(0, Prompt, s, new int[13]), Throws.ArgumentException.With.Message.Contains("more than the context length 16"));
        Assert.That(m.SequenceLength(0), Is.Zero, "refused before anything ran");
    }

    /// <summary>
    /// Two sequences queued together, the second step's rows in the other order: each row's fed token names the output
    /// row of the step before that sampled its sequence's token (FedToken(1), FedToken(0)), and the rows are the same
    /// tokens as two synchronous steps of the rows as given.
    /// </summary>
    [Test]
    public void Enqueue_TwoSequences_FedTokensFollowTheirOutputRows()
    {
        var s0 = new SamplingSettings(0.8f, 20, 0.9f, 0f, Seed: 21);
        var s1 = s0 with { Seed = 22 };
        using var device = Device(6);
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(), Options);
        int[] Prefill() { dm.ResetSequence(0); dm.ResetSequence(1); return [dm.ForwardSampled(0, Prompt, s0), dm.ForwardSampled(1, [9, 8, 7], s1)]; }

        var first = Prefill();
        var a = new int[2];
        dm.DecodeBatchSampled([0, 1], first, [s0, s1], a);
        var b = new int[2];
        dm.DecodeBatchSampled([1, 0], [a[1], a[0]], [s1, s0], b);
        var c = new int[2];
        dm.DecodeBatchSampled([0, 1], [b[1], b[0]], [s0, s1], c);

        Assert.That(Prefill(), Is.EqualTo(first));
        // rows (sequence, token) of a queued step, each sequence with its own settings
        StepBatch Queue(params (int Sequence, int Token)[] rows)
        {
            var q = new StepBatch(2);
            foreach (var (seq, token) in rows) q.Add(seq, token, dm.SequenceLength(seq), StepOutput.Sample, seq == 0 ? s0 : s1);
            dm.Enqueue(q);
            return q;
        }
        var q1 = Queue((0, first[0]), (1, first[1]));
        var q2 = Queue((1, StepBatch.FedToken(1)), (0, StepBatch.FedToken(0)));
        dm.Complete(q1);
        Assert.That(new[] { q1.SampledToken(0), q1.SampledToken(1) }, Is.EqualTo(a));
        var q3 = Queue((0, StepBatch.FedToken(1)), (1, StepBatch.FedToken(0)));
        dm.Complete(q2);
        Assert.That(new[] { q2.SampledToken(0), q2.SampledToken(1) }, Is.EqualTo(b));
        dm.Complete(q3);
        Assert.That(new[] { q3.SampledToken(0), q3.SampledToken(1) }, Is.EqualTo(c));
    }

    /// <summary>
    /// What the timing model reads (docs/timing-model.md, section 3): a pipelined step's input and result copies run on
    /// two streams of their own, not on its kernels' stream; a synchronous step's copies on its kernels' stream.
    /// </summary>
    [Test]
    public void PipelinedStep_CopiesRunOnTheInputAndResultStreams()
    {
        var s = new SamplingSettings(0f);
        using var device = Device(8);
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(), Options);
        int first = dm.ForwardSampled(0, Prompt, s);
        static List<DeviceOperation> HostCopies(EmulatedDevice d) =>
            [.. d.Operations.Where(o => !o.InGraph && o.Kind is DeviceOperationKind.CopyToDevice or DeviceOperationKind.CopyToHost)];

        device.ClearLaunches();
        var b = new StepBatch(1);
        b.Add(0, StepBatch.FedToken(0), dm.SequenceLength(0), StepOutput.Sample, s);
        dm.Enqueue(b);
        dm.Complete(b);
        int kernels = device.Launches.Select(l => l.Stream).Distinct().Single();
        var copies = HostCopies(device);
        Assert.That(copies.Select(o => o.Kind), Is.EquivalentTo(new[] { DeviceOperationKind.CopyToDevice, DeviceOperationKind.CopyToHost }));
        Assert.That(copies.Select(o => o.Stream), Has.None.EqualTo(kernels).And.Unique, "the input and the result copy on two streams of their own");

        device.ClearLaunches();
        var next = new int[1];
        dm.DecodeBatchSampled([0], [b.SampledToken(0)], s, next);
        Assert.That(HostCopies(device).Select(o => o.Stream), Has.All.EqualTo(device.Launches.Select(l => l.Stream).Distinct().Single()),
            "Step: its copies on its kernels' stream");
        Assert.That(first, Is.InRange(0, dm.VocabSize - 1));
    }

    [Test]
    public void Enqueue_RefusesWhatItCannotPipeline_WithClearErrors()
    {
        var s = new SamplingSettings(0f);
        using var device = Device(7);
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(), Options);
        var logits = new float[dm.VocabSize];
        dm.Forward(0, Prompt, logits);   // a step with logits: nothing for a fed token to take
        var fed = new StepBatch(1);
        fed.Add(0, StepBatch.FedToken(0), dm.SequenceLength(0), StepOutput.Sample, s);
        Assert.That(() => dm.Enqueue(fed), Throws.ArgumentException.With.Message.Contains("fed token"));
        var two = new StepBatch(2);
        two.Add(0, 1, dm.SequenceLength(0), StepOutput.Sample, s);
        two.Add(0, 2, dm.SequenceLength(0) + 1, StepOutput.Sample, s);
        Assert.That(() => dm.Enqueue(two), Throws.ArgumentException.With.Message.Contains("one row per sequence"));
        var asLogits = new StepBatch(1);
        asLogits.Add(0, 1, dm.SequenceLength(0), StepOutput.Logits);
        Assert.That(() => dm.Enqueue(asLogits), Throws.ArgumentException.With.Message.Contains("no logits"));
        Assert.That(() => dm.Complete(fed), Throws.InvalidOperationException.With.Message.Contains("no pipelined step"));
        Assert.That(dm.SequenceLength(0), Is.EqualTo(Prompt.Length), "a refused step changes nothing");

        var b1 = new StepBatch(1);
        b1.Add(0, 1, dm.SequenceLength(0), StepOutput.Sample, s);
        dm.Enqueue(b1);
        var b2 = new StepBatch(1);
        b2.Add(0, StepBatch.FedToken(0), dm.SequenceLength(0), StepOutput.Sample, s);
        var pastTheFeed = new StepBatch(1);
        pastTheFeed.Add(0, StepBatch.FedToken(1), dm.SequenceLength(0), StepOutput.Sample, s);
        Assert.That(() => dm.Enqueue(pastTheFeed), Throws.ArgumentException.With.Message.Contains("previous step sampled 1 output row"));
        dm.Enqueue(b2);
        var b3 = new StepBatch(1);
        b3.Add(0, StepBatch.FedToken(0), dm.SequenceLength(0), StepOutput.Sample, s);
        Assert.That(() => dm.Enqueue(b3), Throws.InvalidOperationException.With.Message.Contains("two pipelined steps"));
        Assert.That(() => dm.Step(b3), Throws.InvalidOperationException.With.Message.Contains("Complete them before a Step"));
        Assert.That(() => dm.Complete(b2), Throws.ArgumentException.With.Message.Contains("oldest"));
        dm.Complete(b1);
        dm.Complete(b2);
        Assert.That(b2.SampledToken(0), Is.InRange(0, dm.VocabSize - 1));
        Assert.That(() => dm.Step(b3), Throws.ArgumentException.With.Message.Contains("token id -1 is outside the vocabulary"), "Step takes no fed token");
    }
}
