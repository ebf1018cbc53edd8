using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Tests.DeviceModel;

namespace Qwen3Cuda.Tests.Speculative;

/// <summary>
/// Greedy speculative decoding is token for token the target's own greedy output (docs/speculative.md), with a dense
/// draft model made by synth, with the target itself as the draft (every proposal accepted), and with prompt lookup,
/// on the CPU reference and on the device model (emulator).
/// </summary>
[NonParallelizable]
public class SpeculativeGreedyTests
{
    internal static readonly SamplingSettings Greedy = new(Temperature: 0f);
    /// <summary>
    /// A dense one-layer draft of the tiny preset (`synth --preset tiny --dense --layers 1`, the target's seed): it shares
    /// the target's embedding, lm_head, norms and layer-0 attention (same tensor names, same seed), so its guesses are
    /// sometimes right and sometimes wrong, which exercises acceptance, rejection and rollback.
    /// </summary>
    internal static readonly SyntheticOptions DraftOptions = new() { Preset = SyntheticPreset.Tiny, Seed = 7, Dense = true, Layers = 1 };

    /// <summary>A prompt that repeats itself (so prompt lookup has something to find).</summary>
    internal static readonly int[] Prompt = [5, 17, 300, 42, 9, 77, 5, 17, 300, 42, 9, 3, 128];

    /// <summary>The target's greedy tokens, one decode step per token.</summary>
    internal static List<int> PlainGreedy(ICausalLanguageModel m, int seq, int[] prompt, int n)
    {
        m.ResetSequence(seq);
        var tokens = new List<int> { m.ForwardGreedy(seq, prompt) };
        while (tokens.Count < n) tokens.Add(m.ForwardGreedy(seq, [tokens[^1]]));
        return tokens;
    }

    /// <summary>The first token by a plain prefill (as the engine), then speculative rounds until n tokens.</summary>
    internal static List<int> Speculative(ICausalLanguageModel target, int seq, IDrafter drafter, int k, int[] prompt, int n, in SamplingSettings s,
        out SpeculationStats stats)
    {
        target.ResetSequence(seq);
        var history = new List<int>(prompt) { target.ForwardSampled(seq, prompt, s) };
        using var decoder = new SpeculativeDecoder(target, seq, drafter, k);
        var emitted = new List<int>();
        while (history.Count - prompt.Length < n)
        {
            emitted.Clear();
            int got = decoder.Step(history, s, n - (history.Count - prompt.Length), emitted);
            Assert.That(got, Is.EqualTo(emitted.Count).And.InRange(1, k + 1));
            history.AddRange(emitted);
            Assert.That(target.Kv.Length(seq), Is.EqualTo(history.Count - 1), "the target's cache holds all but the last token");
        }
        stats = decoder.Stats;
        return history.Skip(prompt.Length).ToList();
    }

    static void Report(string what, SpeculationStats s) => TestContext.Out.WriteLine($"{what}: {s}");

    [Test]
    public void Reference_MoeTargetDenseDraft_IsTokenIdentical()
    {
        using var target = ReferenceModel.Load(DeviceCheckpoints.Tiny(), 1, 128);
        using var draftModel = ReferenceModel.Load(Model.TestCheckpoints.Get(DraftOptions), 1, 128);
        var plain = PlainGreedy(target, 0, Prompt, 40);
        using var drafter = new ModelDrafter(draftModel);
        var spec = Speculative(target, 0, drafter, 4, Prompt, 40, Greedy, out var stats);
        Report("reference, dense draft k 4", stats);
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(stats.AcceptedTokens, Is.GreaterThan(0).And.LessThan(stats.DraftedTokens), "some proposals accepted, some rejected (rolled back)");
    }

    [Test]
    public void Reference_TargetAsItsOwnDraft_AcceptsEverything()
    {
        using var target = ReferenceModel.Load(DeviceCheckpoints.Tiny(), 2, 128);
        var plain = PlainGreedy(target, 0, Prompt, 30);
        using var drafter = new ModelDrafter(target, sequence: 1);
        var spec = Speculative(target, 0, drafter, 5, Prompt, 30, Greedy, out var stats);
        Report("reference, self draft k 5", stats);
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(stats.AcceptanceRate, Is.EqualTo(1.0));
        Assert.That(stats.MeanAcceptedLength, Is.GreaterThan(4.0), "full rounds of 5 (the last one shortened by the token budget)");
    }

    [Test]
    public void Reference_PromptLookup_IsTokenIdentical()
    {
        using var target = ReferenceModel.Load(DeviceCheckpoints.Tiny(), 1, 128);
        var plain = PlainGreedy(target, 0, Prompt, 40);
        var spec = Speculative(target, 0, new NgramDrafter(), 3, Prompt, 40, Greedy, out var stats);
        Report("reference, ngram k 3", stats);
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(stats.DraftedTokens, Is.GreaterThan(0), "the repeated prompt gives the lookup matches");
    }

    /// <summary>
    /// The device model on the emulator: verification steps of k + 1 rows (the decode GEMVs for 1..8 rows and the paged
    /// decode attention with per-row lengths) give the same argmax as one-row decode steps, so the output is identical,
    /// with a dense draft on the device too and with the target as its own draft (every proposal accepted).
    /// </summary>
    [Test]
    public void Emulator_MoeTargetDenseDraftAndSelfDraft_AreTokenIdentical()
    {
        using var device = new EmulatedDevice();
        var options = new DeviceModelOptions { ContextLength = 96, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, MaxSequences = 2, MaxOutputRows = 6 };
        using var target = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), options);
        using var draftModel = Qwen3Cuda.Model.Device.DeviceModel.Load(device, Model.TestCheckpoints.Get(DraftOptions), options with { MaxSequences = 1, MaxOutputRows = null });
        var plain = PlainGreedy(target, 0, Prompt, 24);
        using (var drafter = new ModelDrafter(draftModel))
        {
            var spec = Speculative(target, 0, drafter, 4, Prompt, 24, Greedy, out var stats);
            Report("emulator, dense draft k 4", stats);
            Assert.That(spec, Is.EqualTo(plain));
            Assert.That(stats.AcceptedTokens, Is.GreaterThan(0).And.LessThan(stats.DraftedTokens), "some proposals accepted, some rolled back");
        }
        using (var self = new ModelDrafter(target, sequence: 1))
        {
            var spec = Speculative(target, 0, self, 5, Prompt, 24, Greedy, out var stats);
            Report("emulator, self draft k 5", stats);
            Assert.That(spec, Is.EqualTo(plain));
            Assert.That(stats.AcceptanceRate, Is.EqualTo(1.0));
        }
        var lookup = Speculative(target, 0, new NgramDrafter(), 3, Prompt, 24, Greedy, out var ngramStats);
        Report("emulator, ngram k 3", ngramStats);
        Assert.That(lookup, Is.EqualTo(plain));
    }

    /// <summary>
    /// k 10: the verification step has 11 rows, more than the decode GEMV's 8, so it runs the tensor-core GEMMs, the
    /// grouped expert GEMMs and the flash prefill attention (as a prefill chunk), where plain decoding runs GEMVs: still the
    /// same greedy tokens on this checkpoint, and every proposal of the target as its own draft accepted.
    /// </summary>
    [Test]
    public void Emulator_LongDraft_VerifiesThroughThePrefillKernels()
    {
        using var device = new EmulatedDevice();
        var options = new DeviceModelOptions { ContextLength = 96, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, MaxSequences = 2, MaxOutputRows = 11 };
        using var target = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(), options);
        var plain = PlainGreedy(target, 0, Prompt, 24);
        using var self = new ModelDrafter(target, sequence: 1);
        var spec = Speculative(target, 0, self, 10, Prompt, 24, Greedy, out var stats);
        Report("emulator, self draft k 10", stats);
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(stats.AcceptanceRate, Is.EqualTo(1.0));
    }

    /// <summary>
    /// Continuous batching: the decoder's phases (Propose, AddVerificationRows into a shared batch, Accept) with another
    /// sequence decoding plainly in the same steps; both sequences produce their own greedy output.
    /// </summary>
    [Test]
    public void Reference_VerificationRowsShareAStepWithAnotherSequence()
    {
        using var target = ReferenceModel.Load(DeviceCheckpoints.Tiny(), 2, 128);
        int[] other = [9, 8, 7, 6, 5];
        var plain0 = PlainGreedy(target, 0, Prompt, 20);
        var plain1 = PlainGreedy(target, 1, other, 20);
        target.ResetSequence(0);
        target.ResetSequence(1);
        using var draftModel = ReferenceModel.Load(Model.TestCheckpoints.Get(DraftOptions), 1, 128);
        using var decoder = new SpeculativeDecoder(target, 0, new ModelDrafter(draftModel), 3, ownsDrafter: true);
        var h0 = new List<int>(Prompt) { target.ForwardGreedy(0, Prompt) };
        var h1 = new List<int>(other) { target.ForwardGreedy(1, other) };
        var batch = new StepBatch();
        var emitted = new List<int>();
        while (h0.Count - Prompt.Length < 20 || h1.Count - other.Length < 20)
        {
            bool spec = h0.Count - Prompt.Length < 20, step1 = h1.Count - other.Length < 20;
            batch.Clear();
            if (step1) batch.Add(1, h1[^1], h1.Count - 1, StepOutput.Sample, Greedy);
            if (spec)
            {
                decoder.Propose(h0, Greedy, 20 - (h0.Count - Prompt.Length));
                decoder.AddVerificationRows(batch, h0);
            }
            target.Step(batch);
            if (step1) h1.Add(batch.SampledToken(0));
            if (spec)
            {
                emitted.Clear();
                decoder.Accept(batch, h0, emitted);
                h0.AddRange(emitted);
            }
        }
        Assert.That(h0.Skip(Prompt.Length), Is.EqualTo(plain0));
        Assert.That(h1.Skip(other.Length), Is.EqualTo(plain1));
        Assert.That(decoder.Stats.AcceptedTokens, Is.GreaterThan(0));
    }

    /// <summary>A draft whose context is shorter than the sequence stops proposing there; decoding goes on, the same tokens.</summary>
    [Test]
    public void Reference_DraftPastItsContext_ProposesNothing()
    {
        using var target = ReferenceModel.Load(DeviceCheckpoints.Tiny(), 1, 128);
        using var draftModel = ReferenceModel.Load(Model.TestCheckpoints.Get(DraftOptions), 1, contextLength: 24);
        var plain = PlainGreedy(target, 0, Prompt, 30);
        using var drafter = new ModelDrafter(draftModel);
        var spec = Speculative(target, 0, drafter, 4, Prompt, 30, Greedy, out var stats);
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(stats.DraftedTokens, Is.GreaterThan(0).And.LessThan(4 * stats.Rounds), "proposals up to the draft's context only");
    }
}
