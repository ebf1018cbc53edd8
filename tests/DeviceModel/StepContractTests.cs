using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// The step contract (<see cref="ICausalLanguageModel.Step"/>) on the device model (emulator) and the CPU reference:
/// mixed steps (prefill runs of several sequences through both attention paths, decode rows, outputs in the middle of
/// a run), prefix sharing with copy-on-write, and validation. Device results are compared with the reference with the
/// tolerance of <see cref="DeviceModelTests"/> (both round to bf16 at the same points; fp32 sums run in different
/// orders, so an intermediate may differ by a bf16 ulp): max |d| &lt;= 0.03 max |ref| and NMSE &lt;= 1e-4 per row.
/// </summary>
[NonParallelizable]
public class StepContractTests
{
    const double RelTol = 0.03, NmseTol = 1e-4;

    static readonly DeviceModelOptions Options = new()
    {
        ContextLength = 64, PageSize = 4, PrefillChunkTokens = 32, MaxBatch = 4, MaxSequences = 4, MaxOutputRows = 12,
    };

    static int[] Prompt(int n, int vocab, int salt) => Enumerable.Range(0, n).Select(i => (i * 37 + salt * 101 + 3) % vocab).ToArray();

    static void AssertClose(ReadOnlySpan<float> dev, ReadOnlySpan<float> reference, string what)
    {
        double maxRef = 0, maxAbs = 0, se = 0, ss = 0;
        for (int i = 0; i < reference.Length; i++)
        {
            maxRef = Math.Max(maxRef, Math.Abs(reference[i]));
            double d = dev[i] - reference[i];
            maxAbs = Math.Max(maxAbs, Math.Abs(d));
            se += d * d; ss += (double)reference[i] * reference[i];
        }
        Assert.That(maxAbs / Math.Max(maxRef, 1e-30), Is.LessThanOrEqualTo(RelTol), $"{what}: max |d| / max |ref|");
        Assert.That(se / Math.Max(ss, 1e-30), Is.LessThanOrEqualTo(NmseTol), $"{what}: normalised MSE");
    }

    /// <summary>The reference's top-2 margin of a row exceeds what the tolerance allows: its argmax cannot flip.</summary>
    static bool ClearArgMax(ReadOnlySpan<float> logits)
    {
        float max = float.NegativeInfinity, second = float.NegativeInfinity, scale = 0;
        foreach (float v in logits)
        {
            scale = Math.Max(scale, Math.Abs(v));
            if (v > max) { second = max; max = v; } else if (v > second) second = v;
        }
        return max - second > 2 * RelTol * scale;
    }

    /// <summary>
    /// One step holding: a decode row of sequence 0 (logits), a decode row of sequence 1 (greedy sample), a 12-row prefill
    /// run of sequence 2 (flash attention; logits of its last row), and a 6-row run of sequence 3 (decode attention, one
    /// row per query; logits of its rows 2..5, as a speculative verification asks). Every output equals the reference
    /// running the same rows; then a graph-replayed decode batch of all four sequences confirms the KV the mixed step wrote.
    /// </summary>
    [Test]
    public void MixedStep_EqualsTheReference_AndItsKvIsRight()
    {
        string dir = DeviceCheckpoints.Tiny();
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, Options);
        using var rm = ReferenceModel.Load(dir, 4, dm.ContextLength);
        int V = dm.VocabSize;
        foreach (ICausalLanguageModel m in new ICausalLanguageModel[] { dm, rm })
        {
            m.Forward(0, Prompt(5, V, 0), new float[V]);
            m.Forward(1, Prompt(3, V, 1), new float[V]);
        }
        var greedy = new SamplingSettings(Temperature: 0f);
        StepBatch Mixed(ICausalLanguageModel m)
        {
            var b = new StepBatch();
            b.Add(0, 11, 5, StepOutput.Logits);
            b.Add(1, 12, 3, StepOutput.Sample, greedy);
            b.AddTokens(2, Prompt(12, V, 2), 0, StepOutput.Logits);
            var p3 = Prompt(6, V, 3);
            for (int i = 0; i < 6; i++) b.Add(3, p3[i], i, i >= 2 ? StepOutput.Logits : StepOutput.None);
            m.Step(b);
            return b;
        }
        var d = Mixed(dm);
        var r = Mixed(rm);
        Assert.That(d.OutputCount, Is.EqualTo(7));
        for (int row = 0; row < d.Count; row++)
        {
            if (d.Output(row) == StepOutput.Logits) AssertClose(d.Logits(row), r.Logits(row), $"row {row} (sequence {d.Sequence(row)}, position {d.Position(row)})");
        }
        // The greedy row: its token is the reference's when the reference's argmax is clear of the tolerance.
        var refLogits = new float[V];
        using (var check = ReferenceModel.Load(dir, 1, dm.ContextLength))
        {
            check.Forward(0, [.. Prompt(3, V, 1), 12], refLogits);
            if (ClearArgMax(refLogits)) Assert.That(d.SampledToken(1), Is.EqualTo(r.SampledToken(1)), "greedy row");
        }
        Assert.That(new[] { dm.SequenceLength(0), dm.SequenceLength(1), dm.SequenceLength(2), dm.SequenceLength(3) }, Is.EqualTo(new[] { 6, 4, 12, 6 }));

        // A decode batch of the four (bucket 4, graph replay) over the KV the mixed step wrote.
        var dl = new float[4 * V];
        var rl = new float[4 * V];
        dm.DecodeBatch([0, 1, 2, 3], [20, 21, 22, 23], dl);
        rm.DecodeBatch([0, 1, 2, 3], [20, 21, 22, 23], rl);
        for (int i = 0; i < 4; i++) AssertClose(dl.AsSpan(i * V, V), rl.AsSpan(i * V, V), $"decode row of sequence {i} after the mixed step");
    }

    /// <summary>
    /// Prefix sharing: sequence 1 adopts the committed pages of sequence 0's prompt and prefills only the rest; its logits
    /// equal a fresh run of the whole prompt. Then sequence 1 is cut back into a shared page and writes there: the page is
    /// copied first, so sequence 0 still decodes what a fresh run of its own tokens gives.
    /// </summary>
    [TestCase("emulator")]
    [TestCase("cpu")]
    public void PrefixSharing_PrefillsOnlyTheRest_CopyOnWriteKeepsTheOwner(string backend)
    {
        string dir = DeviceCheckpoints.Tiny();
        using var device = new EmulatedDevice();
        using ICausalLanguageModel m = backend == "cpu" ? new ReferenceModel(ModelWeights.Load(dir), 4, 64, pageSize: 4)
            : Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, Options);
        int V = m.VocabSize;
        m.Kv.PrefixCaching = true;
        var a = Prompt(19, V, 5);
        var la = new float[V];
        m.Forward(0, a, la);
        m.Kv.Commit(0, a);

        var b = a.Take(14).Concat(Prompt(5, V, 6)).ToArray();
        Assert.That(m.Kv.MatchPrefix(1, b), Is.EqualTo(12), "three whole pages of 4 tokens are shared");
        var lb = new float[V];
        m.Forward(1, b.AsSpan(12), lb);

        using var fresh = new ReferenceModel(ModelWeights.Load(dir), 2, 64, pageSize: 4);
        var fb = new float[V];
        fresh.Forward(0, b, fb);
        AssertClose(lb, fb, "shared-prefix prompt vs a fresh run");

        // Cut sequence 1 back to 10 tokens (inside its third page, shared with sequence 0) and write two other tokens.
        m.TruncateSequence(1, 10);
        int[] tail = [7, 9];
        var lt = new float[V];
        m.Forward(1, tail, lt);
        var ft = new float[V];
        fresh.ResetSequence(0);
        fresh.Forward(0, [.. b.Take(10), .. tail], ft);
        AssertClose(lt, ft, "after copy-on-write, the writer");

        // Sequence 0's third page is intact: its next decode step equals a fresh run of its tokens.
        m.Forward(0, [3], la);
        var fa = new float[V];
        fresh.Forward(1, [.. a, 3], fa);
        AssertClose(la, fa, "after copy-on-write, the owner");
    }

    [Test]
    public void InvalidSteps_AreRefusedAndChangeNothing()
    {
        string dir = DeviceCheckpoints.Tiny();
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, Options with { ContextLength = 16, MaxSequences = 2 });
        using var rm = new ReferenceModel(ModelWeights.Load(dir), 2, 16, pageSize: 4);
        foreach (ICausalLanguageModel m in new ICausalLanguageModel[] { dm, rm })
        {
            string who = m is ReferenceModel ? "cpu" : "emulator";
            m.Forward(0, [1, 2, 3], new float[m.VocabSize]);
            void Refused(Action<StepBatch> fill, string message)
            {
                var b = new StepBatch();
                fill(b);
                Assert.That(() => m.Step(b), Throws.InstanceOf<Exception>().With.Message.Contains(message), $"{who}: {message}");
                Assert.That(m.SequenceLength(0), Is.EqualTo(3), $"{who}: {message}: sequence 0 unchanged");
                Assert.That(m.SequenceLength(1), Is.EqualTo(0), $"{who}: {message}: sequence 1 unchanged");
            }
            Refused(b => { }, "no rows");
            Refused(b => b.Add(0, 5, 4), "next position is 3");
            Refused(b => { b.Add(1, 5, 0); b.Add(1, 6, 2); }, "does not follow");
            Refused(b => { b.Add(1, 5, 0); b.Add(0, 6, 3); b.Add(1, 7, 1); }, "two separate runs");
            Refused(b => b.Add(0, m.VocabSize, 3), "outside the vocabulary");
            Refused(b => b.Add(2, 1, 0), "sequence id must be in [0, 2)");
            Refused(b => b.AddTokens(1, new int[17], 0), m.MaxStepRows >= 17 ? "context length 16" : $"at most {m.MaxStepRows} per step");
            Refused(b => b.AddTokens(1, new int[m.MaxStepRows + 1], 0), $"at most {m.MaxStepRows} per step");
            Refused(b => b.Add(0, 5, 3, StepOutput.Sample, new SamplingSettings(TopP: 0f)), "top_p");
            if (m is Qwen3Cuda.Model.Device.DeviceModel)
                Refused(b => { for (int i = 0; i < 13; i++) b.Add(1, 5, i, StepOutput.Logits); }, "at most 12");
        }
    }

    [Test]
    public void AStepNeedingMorePagesThanAreFree_IsKvCacheFull_AndTakesNothing()
    {
        var table = new KvPageTable(pages: 4, pageSize: 4, maxSequences: 2, maxPagesPerSequence: 4);
        table.Reserve(0, 4); table.Advance(0, 4);
        var b = new StepBatch();
        b.AddTokens(1, new int[6], 0);
        b.Add(0, 1, 4);
        Assert.That(() => b.Prepare(vocabSize: 10, contextLength: 16, maxRows: 16, maxOutputRows: 4, table),
            Throws.InstanceOf<KvCacheFullException>().With.Message.Contains("needs 3 more pages"));
        Assert.That(table.BlockTable(1), Is.Empty);
        Assert.That(table.FreePages, Is.EqualTo(2));
    }
}
