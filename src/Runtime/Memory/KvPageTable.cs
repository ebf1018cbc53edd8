namespace Qwen3Cuda.Runtime.Memory;

/// <summary>Thrown when a sequence needs more KV pages than are free (the caller may preempt another sequence and retry).</summary>
public sealed class KvCacheFullException(string message) : Qwen3CudaException(message)
{
    public override ErrorKind Kind => ErrorKind.OutOfMemory;
}

/// <summary>
/// The host side of a paged KV cache (docs/architecture.md, "KV pages"): which pages each sequence holds, in order (its
/// block table), how many tokens it has, and which pages are free. Pages are reference-counted so that sequences can
/// share read-only pages, and full pages can be kept in a prefix cache keyed by a chained hash of their tokens:
/// <list type="bullet">
/// <item>A page is <i>committed</i> (<see cref="Commit"/>) once its tokens' K/V are final; its key is
/// hash(parent page's key, its tokens). A new sequence adopts the longest run of committed pages that matches its prompt
/// (<see cref="MatchPrefix"/>) and prefills only the rest.</item>
/// <item>A committed page whose last user leaves stays cached (evictable, least recently released first) until its memory
/// is needed for another page; a lookup revives it.</item>
/// <item>A sequence never writes into a shared page: writing into a partial last page that another sequence also holds
/// first copies it to a private page (<see cref="TakePendingCopies"/> lists the copies the storage must make before the
/// next step's writes).</item>
/// </list>
/// Page 0 is the scratch page (padding rows of a batch point at it) and is never handed out. Storage is the caller's:
/// <see cref="PagedKvCache"/> on a device, the CPU reference's own arrays. Not thread-safe.
/// </summary>
public sealed class KvPageTable
{
    private readonly int[] _refCount;                 // per page; a page in use by n sequences has n
    private readonly Stack<int> _free = new();         // released pages holding nothing worth keeping
    private int _neverUsed = 1;                        // pages >= this were never handed out (page 0: scratch)
    private readonly SequencePages[] _sequences;
    private readonly Dictionary<ulong, int> _byKey = [];
    private readonly CachedPage?[] _cached;            // committed pages: key, parent key, tokens
    private readonly LinkedList<int> _evictable = new();   // committed pages with no user, least recently released first
    private readonly LinkedListNode<int>?[] _evictNode;
    private readonly List<(int Source, int Destination)> _pendingCopies = [];

    /// <param name="pages">Pages in the pool, the scratch page 0 included.</param>
    /// <param name="pageSize">Tokens per page.</param>
    /// <param name="maxSequences">Sequences held at once (ids 0 .. maxSequences - 1).</param>
    /// <param name="maxPagesPerSequence">Longest block table of one sequence.</param>
    public KvPageTable(int pages, int pageSize, int maxSequences, int maxPagesPerSequence)
    {
        if (pages < 2) throw new ArgumentOutOfRangeException(nameof(pages), $"KV cache: {pages} pages; at least 2 are needed (page 0 is the scratch page)");
        if (pageSize < 1) throw new ArgumentOutOfRangeException(nameof(pageSize), $"KV cache: page size {pageSize} must be positive");
        if (maxSequences < 1) throw new ArgumentOutOfRangeException(nameof(maxSequences), $"KV cache: {maxSequences} sequences; at least 1");
        if (maxPagesPerSequence < 1) throw new ArgumentOutOfRangeException(nameof(maxPagesPerSequence), $"KV cache: {maxPagesPerSequence} pages per sequence; at least 1");
        Pages = pages; PageSize = pageSize; MaxPagesPerSequence = maxPagesPerSequence;
        _refCount = new int[pages];
        _cached = new CachedPage?[pages];
        _evictNode = new LinkedListNode<int>?[pages];
        _sequences = new SequencePages[maxSequences];
        for (int s = 0; s < maxSequences; s++) _sequences[s] = new SequencePages(maxPagesPerSequence);
    }

    public int Pages { get; }
    public int PageSize { get; }
    public int MaxSequences => _sequences.Length;
    public int MaxPagesPerSequence { get; }
    /// <summary>Keep committed pages for reuse by later prompts (<see cref="Commit"/> and <see cref="MatchPrefix"/> do nothing when off).</summary>
    public bool PrefixCaching { get; set; }

    /// <summary>Pages a sequence can take now: never used, released, or cached without a user (evicted on demand).</summary>
    public int FreePages => _free.Count + (Pages - _neverUsed) + _evictable.Count;
    /// <summary>Pages held by at least one sequence.</summary>
    public int UsedPages => Pages - 1 - FreePages;
    /// <summary>Committed pages in the prefix cache (in use or evictable).</summary>
    public int CachedPages => _byKey.Count;
    /// <summary>Prompt tokens looked up in the prefix cache, and how many of them were found.</summary>
    public long PrefixQueryTokens { get; private set; }
    public long PrefixHitTokens { get; private set; }

    public int Length(int sequence) => Seq(sequence).Length;
    /// <summary>The sequence's block table: page ids in position order.</summary>
    public IReadOnlyList<int> BlockTable(int sequence) => Seq(sequence).Pages;
    /// <summary>Users of a page (0: free or cached without a user).</summary>
    public int ReferenceCount(int page) => _refCount[page];

    /// <summary>Pages the sequence must take to hold <paramref name="tokens"/> more tokens (a copy-on-write page included).</summary>
    public int PagesNeeded(int sequence, int tokens)
    {
        var s = Seq(sequence);
        long need = (long)s.Length + tokens;
        long pages = (need + PageSize - 1) / PageSize - s.Pages.Count;
        if (tokens > 0 && NeedsCopyOnWrite(s)) pages++;
        return (int)Math.Max(0, Math.Min(pages, int.MaxValue));
    }

    /// <summary>Makes room for <paramref name="tokens"/> more tokens (takes pages) without changing the sequence's length.</summary>
    /// <exception cref="KvCacheFullException">not enough free pages (nothing is taken then).</exception>
    public void Reserve(int sequence, int tokens)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(tokens);
        var s = Seq(sequence);
        long need = (long)s.Length + tokens;
        long pages = (need + PageSize - 1) / PageSize;
        if (pages > MaxPagesPerSequence)
            throw new ArgumentException($"sequence {sequence} would hold {need} tokens, more than the {MaxPagesPerSequence} pages of {PageSize} tokens a sequence may have");
        int take = PagesNeeded(sequence, tokens);
        if (take > FreePages)
            throw new KvCacheFullException($"KV cache full: sequence {sequence} needs {take} more pages of {PageSize} tokens, {FreePages} are free (of {Pages - 1})");
        if (tokens > 0 && NeedsCopyOnWrite(s))
        {
            int last = s.Pages.Count - 1, shared = s.Pages[last], copy = TakePage();
            _pendingCopies.Add((shared, copy));
            s.Pages[last] = copy;
            Release(shared);
        }
        while (s.Pages.Count < pages) s.Pages.Add(TakePage());
    }

    /// <summary>The slot (page * pageSize + offset) of token <paramref name="position"/> of a sequence; its page must be reserved.</summary>
    public int Slot(int sequence, int position) => Seq(sequence).Pages[position / PageSize] * PageSize + position % PageSize;

    /// <summary>The sequence now holds <paramref name="tokens"/> more tokens (their K/V written into reserved pages).</summary>
    public void Advance(int sequence, int tokens)
    {
        var s = Seq(sequence);
        if (tokens < 0 || (long)s.Length + tokens > (long)s.Pages.Count * PageSize)
            throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"sequence {sequence}: {s.Length} tokens + {tokens} exceed its {s.Pages.Count} reserved pages");
        s.Length += tokens;
    }

    /// <summary>Keeps the first <paramref name="length"/> tokens of a sequence; whole pages past them are released.</summary>
    public void Truncate(int sequence, int length)
    {
        var s = Seq(sequence);
        if (length < 0 || length > s.Length)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"sequence {sequence} holds {s.Length} tokens; truncate to 0..{s.Length}");
        int keep = (length + PageSize - 1) / PageSize;
        for (int i = s.Pages.Count - 1; i >= keep; i--) { Release(s.Pages[i]); s.Pages.RemoveAt(i); }
        s.Length = length;
        int committed = length / PageSize;   // a page cut short is no longer the committed content
        if (s.Keys.Count > committed) s.Keys.RemoveRange(committed, s.Keys.Count - committed);
        if (keep > committed)
        {
            // The kept partial page will be written again: if this sequence is its only user, it leaves the prefix cache.
            int partial = s.Pages[keep - 1];
            if (_refCount[partial] == 1 && _cached[partial] is { } c && _byKey.TryGetValue(c.Key, out int p) && p == partial) Uncache(partial);
        }
    }

    /// <summary>Releases all of a sequence's pages (committed ones stay in the prefix cache).</summary>
    public void Reset(int sequence)
    {
        var s = Seq(sequence);
        // Release the tail first so that, among a sequence's cached pages, the deepest are evicted first.
        for (int i = s.Pages.Count - 1; i >= 0; i--) Release(s.Pages[i]);
        s.Pages.Clear();
        s.Keys.Clear();
        s.Length = 0;
    }

    /// <summary>Writes a sequence's block table into <paramref name="row"/> (MaxPagesPerSequence entries), unused entries 0.</summary>
    public void WriteBlockTable(int sequence, Span<int> row)
    {
        row.Clear();
        var t = Seq(sequence).Pages;
        for (int i = 0; i < t.Count; i++) row[i] = t[i];
    }

    /// <summary>
    /// Copies the storage must make (whole pages, every layer, K and V) before the next step writes, in order; the list
    /// is cleared. A copy appears when a sequence is about to write into a page that another sequence also holds.
    /// </summary>
    public IReadOnlyList<(int Source, int Destination)> TakePendingCopies()
    {
        if (_pendingCopies.Count == 0) return [];
        var copies = _pendingCopies.ToArray();
        _pendingCopies.Clear();
        return copies;
    }

    // ---------------- prefix cache ----------------

    /// <summary>
    /// For an empty sequence: adopts the cached pages holding the longest page-aligned prefix of <paramref name="prompt"/>,
    /// never its last token (that one must run through the model to produce logits). Returns the tokens adopted (the
    /// sequence's new length; 0 when prefix caching is off or nothing matches).
    /// </summary>
    public int MatchPrefix(int sequence, ReadOnlySpan<int> prompt)
    {
        var s = Seq(sequence);
        if (s.Length != 0 || s.Pages.Count != 0) throw new InvalidOperationException($"sequence {sequence} is not empty ({s.Length} tokens): reset it before matching a prefix");
        if (!PrefixCaching || prompt.IsEmpty) return 0;
        PrefixQueryTokens += prompt.Length;
        int maxPages = Math.Min((prompt.Length - 1) / PageSize, MaxPagesPerSequence);
        ulong parent = 0;
        for (int i = 0; i < maxPages; i++)
        {
            var block = prompt.Slice(i * PageSize, PageSize);
            ulong key = ChainKey(parent, block);
            if (!_byKey.TryGetValue(key, out int page) || _cached[page] is not { } c || c.Parent != parent || !block.SequenceEqual(c.Tokens)) break;
            if (_refCount[page] == 0) { _evictable.Remove(_evictNode[page]!); _evictNode[page] = null; }
            _refCount[page]++;
            s.Pages.Add(page);
            s.Keys.Add(key);
            parent = key;
        }
        s.Length = s.Pages.Count * PageSize;
        PrefixHitTokens += s.Length;
        return s.Length;
    }

    /// <summary>
    /// Commits the sequence's full pages whose tokens are final: <paramref name="tokens"/> are the sequence's tokens from
    /// position 0 (at least as many as should be committed; only pages within both its length and this span count).
    /// Call it for tokens that will not be rolled back (accepted tokens, not drafts).
    /// </summary>
    public void Commit(int sequence, ReadOnlySpan<int> tokens)
    {
        if (!PrefixCaching) return;
        var s = Seq(sequence);
        int full = Math.Min(s.Length, tokens.Length) / PageSize;
        for (int i = s.Keys.Count; i < full; i++)
        {
            var block = tokens.Slice(i * PageSize, PageSize);
            ulong parent = i == 0 ? 0 : s.Keys[i - 1];
            ulong key = ChainKey(parent, block);
            s.Keys.Add(key);
            int page = s.Pages[i];
            if (_cached[page] is not null || _byKey.ContainsKey(key)) continue;   // already cached (same content elsewhere: keep this one private)
            _cached[page] = new CachedPage(key, parent, block.ToArray());
            _byKey[key] = page;
        }
    }

    /// <summary>Drops every unused cached page (a reset of the prefix cache; pages in use stay).</summary>
    public void ClearPrefixCache()
    {
        while (_evictable.First is { } n) Evict(n.Value);
    }

    // ---------------- internals ----------------

    private bool NeedsCopyOnWrite(SequencePages s) => s.Length % PageSize != 0 && s.Pages.Count > 0 && _refCount[s.Pages[^1]] > 1;

    private int TakePage()
    {
        int page;
        if (_free.Count > 0) page = _free.Pop();
        else if (_neverUsed < Pages) page = _neverUsed++;
        else
        {
            page = _evictable.First!.Value;
            Evict(page);
            page = _free.Pop();
        }
        _refCount[page] = 1;
        return page;
    }

    private void Release(int page)
    {
        if (--_refCount[page] > 0) return;
        if (_refCount[page] < 0) throw new InvalidOperationException($"KV page {page} released more often than taken");
        if (_cached[page] is not null) _evictNode[page] = _evictable.AddLast(page);
        else _free.Push(page);
    }

    private void Evict(int page)
    {
        _evictable.Remove(_evictNode[page]!);
        _evictNode[page] = null;
        Uncache(page);
        _free.Push(page);
    }

    private void Uncache(int page)
    {
        var c = _cached[page]!;
        if (_byKey.TryGetValue(c.Key, out int p) && p == page) _byKey.Remove(c.Key);
        _cached[page] = null;
    }

    private SequencePages Seq(int sequence) =>
        (uint)sequence < (uint)_sequences.Length ? _sequences[sequence]
        : throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"sequence id must be in [0, {_sequences.Length})");

    /// <summary>64-bit chained key of a page: its parent's key and its tokens (a hit is verified against both, so a
    /// collision of keys cannot hand out wrong content unless a parent key collides too).</summary>
    private static ulong ChainKey(ulong parent, ReadOnlySpan<int> tokens)
    {
        ulong h = parent ^ 0x9E3779B97F4A7C15UL;
        foreach (int t in tokens)
        {
            h ^= (uint)t;
            h *= 0x100000001B3UL;
            h = (h ^ (h >> 29)) * 0xBF58476D1CE4E5B9UL;
        }
        h ^= h >> 33; h *= 0xFF51AFD7ED558CCDUL; h ^= h >> 33; h *= 0xC4CEB9FE1A85EC53UL; h ^= h >> 33;
        return h == 0 ? 1 : h;   // 0 is the root's parent key
    }

    /// <summary>A sequence's pages; the block table has room for the longest one from the start, so that taking a page in
    /// a decode step allocates nothing (4 bytes per page: 64 KiB for 256k tokens in pages of 16).</summary>
    private sealed class SequencePages(int maxPages)
    {
        public readonly List<int> Pages = new(maxPages);
        public readonly List<ulong> Keys = [];   // chained keys of the committed leading pages
        public int Length;
    }

    private sealed record CachedPage(ulong Key, ulong Parent, int[] Tokens);
}
