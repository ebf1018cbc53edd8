using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Tests.Serving;

namespace Qwen3Cuda.Tests.Speculative;

/// <summary>
/// The drafter sources of a speculating engine (docs/speculative.md, "Serving"): a draft model's sequences are handed out
/// one per request, never twice, and come back (their pages freed) when the request's drafter is disposed.
/// </summary>
public class DraftSourceTests
{
    [Test]
    public void ModelDraftSource_HandsOutEachSequenceOnce_AndTakesThemBack()
    {
        using var model = ServingTestSupport.CpuModel(sequences: 2, context: 64);
        using var source = new ModelDraftSource(new ServingTestSupport.Borrowed(model), "tiny", ownsModel: false);
        var a = source.Create();
        var b = source.Create();
        Assert.That(a, Is.Not.Null);
        Assert.That(b, Is.Not.Null);
        Assert.That(source.Create(), Is.Null, "two sequences, two drafters: a third request decodes without speculation");
        var draft = new int[3];
        var greedy = new SamplingSettings(Temperature: 0f);
        Assert.That(a!.Propose([5, 17, 300, 42], 3, greedy, draft, [], 0), Is.EqualTo(3));
        Assert.That(b!.Propose([7, 7, 7], 3, greedy, draft, [], 0), Is.EqualTo(3));
        Assert.That(model.Kv.UsedPages, Is.GreaterThan(0));
        a.Dispose();
        a.Dispose();   // twice: the sequence goes back once
        Assert.That(source.FreeSequences, Is.EqualTo(1));
        b.Dispose();
        Assert.That(source.FreeSequences, Is.EqualTo(2));
        Assert.That(model.Kv.UsedPages, Is.Zero, "the drafts' pages are freed");
        Assert.That(source.Create(), Is.Not.Null);
    }

    [Test]
    public void NgramDraftSource_MakesAStatelessDrafterPerRequest()
    {
        using var source = new NgramDraftSource();
        Assert.That(source.VocabSize, Is.Null);
        var first = source.Create();
        var second = source.Create();
        Assert.That(first, Is.InstanceOf<NgramDrafter>());
        Assert.That(second, Is.Not.SameAs(first));
    }
}
