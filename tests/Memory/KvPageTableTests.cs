using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Tests.Memory;

/// <summary>The host page table: reservation, reference counts, the prefix cache (chained keys, LRU eviction) and copy-on-write.</summary>
public class KvPageTableTests
{
    static int[] Tokens(int n, int salt = 0) => Enumerable.Range(0, n).Select(i => i * 7 + salt * 1000 + 1).ToArray();

    [Test]
    public void Reserve_TakesPagesOnDemand_ResetReturnsThem()
    {
        var t = new KvPageTable(pages: 6, pageSize: 4, maxSequences: 2, maxPagesPerSequence: 4);
        Assert.That(t.FreePages, Is.EqualTo(5), "page 0 is the scratch page");
        t.Reserve(0, 6);
        Assert.That(t.BlockTable(0), Has.Count.EqualTo(2).And.Not.Contains(0));
        Assert.That(t.Length(0), Is.EqualTo(0), "reserving does not change the length");
        t.Advance(0, 6);
        Assert.That(t.Slot(0, 5), Is.EqualTo(t.BlockTable(0)[1] * 4 + 1));
        Assert.That(t.PagesNeeded(0, 2), Is.EqualTo(0), "6 + 2 tokens fit in the 2 pages");
        Assert.That(t.PagesNeeded(0, 3), Is.EqualTo(1));
        Assert.That(() => t.Advance(0, 3), Throws.InstanceOf<ArgumentOutOfRangeException>(), "advancing past the reserved pages");
        t.Reserve(1, 12);
        Assert.That(() => t.Reserve(0, 3), Throws.InstanceOf<KvCacheFullException>());
        Assert.That(t.BlockTable(0), Has.Count.EqualTo(2), "a failed reservation takes nothing");
        Assert.That(() => t.Reserve(1, 17), Throws.ArgumentException.With.Message.Contains("4 pages"));
        t.Reset(1);
        Assert.That(t.FreePages, Is.EqualTo(3));
        Assert.That(t.UsedPages, Is.EqualTo(2));
    }

    [Test]
    public void Truncate_ReleasesWholePagesPastTheLength()
    {
        var t = new KvPageTable(pages: 9, pageSize: 4, maxSequences: 1, maxPagesPerSequence: 8);
        t.Reserve(0, 13); t.Advance(0, 13);
        Assert.That(t.BlockTable(0), Has.Count.EqualTo(4));
        t.Truncate(0, 5);
        Assert.That(t.BlockTable(0), Has.Count.EqualTo(2));
        Assert.That(t.Length(0), Is.EqualTo(5));
        Assert.That(t.FreePages, Is.EqualTo(6));
        Assert.That(() => t.Truncate(0, 6), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }

    [Test]
    public void MatchPrefix_AdoptsCommittedPages_NeverTheLastToken()
    {
        var t = new KvPageTable(pages: 20, pageSize: 4, maxSequences: 3, maxPagesPerSequence: 8) { PrefixCaching = true };
        var a = Tokens(14);
        t.Reserve(0, a.Length); t.Advance(0, a.Length);
        t.Commit(0, a);
        Assert.That(t.CachedPages, Is.EqualTo(3), "three full pages of 14 tokens");

        // Same first 12 tokens, then different: 3 pages shared.
        var b = a.Take(12).Concat(Tokens(5, salt: 1)).ToArray();
        Assert.That(t.MatchPrefix(1, b), Is.EqualTo(12));
        Assert.That(t.BlockTable(1), Is.EqualTo(t.BlockTable(0).Take(3)));
        Assert.That(t.ReferenceCount(t.BlockTable(0)[0]), Is.EqualTo(2));

        // A prompt that is exactly 12 cached tokens adopts only 2 pages: its last token must run.
        Assert.That(t.MatchPrefix(2, a.Take(12).ToArray()), Is.EqualTo(8));
        // A different first page matches nothing, even when later pages are equal (keys are chained).
        t.Reset(2);
        var c = Tokens(4, salt: 2).Concat(a.Skip(4).Take(9)).ToArray();
        Assert.That(t.MatchPrefix(2, c), Is.EqualTo(0));
        Assert.That(t.PrefixHitTokens, Is.EqualTo(20));
        Assert.That(t.PrefixQueryTokens, Is.EqualTo(b.Length + 12 + c.Length));
        Assert.That(() => t.MatchPrefix(1, b), Throws.InvalidOperationException, "only an empty sequence adopts a prefix");
    }

    [Test]
    public void ReleasedCommittedPages_StayCachedUntilEvicted_LeastRecentlyReleasedFirst()
    {
        var t = new KvPageTable(pages: 7, pageSize: 2, maxSequences: 2, maxPagesPerSequence: 6) { PrefixCaching = true };
        var a = Tokens(6);
        t.Reserve(0, 6); t.Advance(0, 6); t.Commit(0, a);
        t.Reset(0);
        Assert.That(t.FreePages, Is.EqualTo(6), "cached pages without a user count as free");
        Assert.That(t.CachedPages, Is.EqualTo(3));
        Assert.That(t.MatchPrefix(0, a.Append(99).ToArray()), Is.EqualTo(6), "a released prefix is revived");
        t.Reset(0);

        // Three never-used pages go first; then the cached ones, deepest (released first) first.
        t.Reserve(1, 8);
        Assert.That(t.CachedPages, Is.EqualTo(2), "one cached page evicted for the fourth page");
        Assert.That(t.MatchPrefix(0, a.Append(99).ToArray()), Is.EqualTo(4), "the first two pages of the prefix survive");
        t.Reset(0);
        t.Reset(1);
        t.ClearPrefixCache();
        Assert.That(t.CachedPages, Is.EqualTo(0));
        Assert.That(t.FreePages, Is.EqualTo(6));
    }

    [Test]
    public void WritingIntoASharedPage_CopiesItFirst()
    {
        var t = new KvPageTable(pages: 10, pageSize: 4, maxSequences: 2, maxPagesPerSequence: 4) { PrefixCaching = true };
        var a = Tokens(9);
        t.Reserve(0, 9); t.Advance(0, 9); t.Commit(0, a);
        Assert.That(t.MatchPrefix(1, a), Is.EqualTo(8));
        int shared = t.BlockTable(1)[1];
        t.Truncate(1, 6);                     // inside the shared second page
        Assert.That(t.ReferenceCount(shared), Is.EqualTo(2), "truncation keeps the shared page");
        Assert.That(t.PagesNeeded(1, 1), Is.EqualTo(1), "the write needs a private copy");
        t.Reserve(1, 1);
        Assert.That(t.BlockTable(1)[1], Is.Not.EqualTo(shared));
        Assert.That(t.TakePendingCopies(), Is.EqualTo(new[] { (shared, t.BlockTable(1)[1]) }));
        Assert.That(t.TakePendingCopies(), Is.Empty);
        Assert.That(t.ReferenceCount(shared), Is.EqualTo(1));
        Assert.That(t.BlockTable(0)[1], Is.EqualTo(shared), "the other sequence keeps its page");

        // A sequence's own committed page that it cuts short leaves the cache (its content will change).
        t.Truncate(0, 6);
        Assert.That(t.CachedPages, Is.EqualTo(1));
        t.Reset(1);
        Assert.That(t.MatchPrefix(1, a), Is.EqualTo(4), "only the first page is still cached");
    }
}
