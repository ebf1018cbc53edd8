namespace Qwen3Cuda.Runtime.Memory;

/// <summary>
/// The paged KV cache: per layer a K and a V pool of <c>[pages, pageSize, numKvHeads, headDim]</c> bf16 (the
/// slot-major layout of kernels/rope.cu and attention_decode.cu; slot = page * pageSize + offset), all
/// carved from ONE device allocation. Pages are handed to sequences on demand from a free list; each
/// sequence's block table (page ids in order) lives on the host and is copied to the device with the
/// step inputs. Page 0 is reserved as a scratch page: padding rows of a batch point at it and never write. Device
/// memory is not zeroed at allocation, so the constructor zeroes page 0 of every pool (on the given stream): a padding
/// row reads zeros (finite scores, a finite output), never what the allocation held.
/// </summary>
public sealed class PagedKvCache : IDisposable
{
    private readonly DeviceArena _arena;
    private readonly Stack<int> _free = new();
    private readonly List<int>[] _tables;
    private readonly int[] _lengths;

    /// <param name="stream">The stream the cache is used on: page 0 is zeroed there, before any work queued after the constructor.</param>
    public PagedKvCache(IDevice device, DeviceStream stream, int layers, int numKvHeads, int headDim, int pageSize, int pages, int maxSequences, int maxPagesPerSequence)
    {
        if (layers < 1 || numKvHeads < 1 || headDim < 1) throw new ArgumentException($"KV cache: layers {layers}, KV heads {numKvHeads}, head_dim {headDim} must be positive");
        if (pageSize < 1) throw new ArgumentOutOfRangeException(nameof(pageSize), $"KV cache: page size {pageSize} must be positive");
        if (pages < 2) throw new ArgumentOutOfRangeException(nameof(pages), $"KV cache: {pages} pages; at least 2 are needed (page 0 is the scratch page)");
        Layers = layers; NumKvHeads = numKvHeads; HeadDim = headDim; PageSize = pageSize; Pages = pages;
        MaxPagesPerSequence = maxPagesPerSequence;
        PoolBytes = PageBytes(numKvHeads, headDim, pageSize) * pages;
        _arena = new DeviceArena(device, checked(PoolBytes * 2 * layers), "KV cache");
        long page0 = PageBytes(numKvHeads, headDim, pageSize);
        try
        {
            for (int l = 0; l < layers; l++)
            {
                device.MemsetAsync(K(l), 0, page0, stream);
                device.MemsetAsync(V(l), 0, page0, stream);
            }
        }
        catch
        {
            _arena.Dispose();
            throw;
        }
        for (int p = pages - 1; p >= 1; p--) _free.Push(p);
        _tables = new List<int>[maxSequences];
        _lengths = new int[maxSequences];
        for (int s = 0; s < maxSequences; s++) _tables[s] = new List<int>();
    }

    /// <summary>Bytes of one page of one pool (K or V) of one layer.</summary>
    public static long PageBytes(int numKvHeads, int headDim, int pageSize) => (long)pageSize * numKvHeads * headDim * sizeof(ushort);

    public int Layers { get; }
    public int NumKvHeads { get; }
    public int HeadDim { get; }
    public int PageSize { get; }
    public int Pages { get; }
    public int MaxPagesPerSequence { get; }
    public long PoolBytes { get; }
    public long TotalBytes => _arena.Bytes;
    public int FreePages => _free.Count;

    public DevicePtr K(int layer) => _arena.Base + (2L * layer) * PoolBytes;
    public DevicePtr V(int layer) => _arena.Base + (2L * layer + 1) * PoolBytes;

    public int Length(int sequence) => _lengths[sequence];
    public IReadOnlyList<int> BlockTable(int sequence) => _tables[sequence];

    /// <summary>Makes room for <paramref name="tokens"/> more tokens of <paramref name="sequence"/> (takes pages), without changing its length.</summary>
    public void Reserve(int sequence, int tokens)
    {
        long need = (long)_lengths[sequence] + tokens;
        int pages = (int)((need + PageSize - 1) / PageSize);
        if (pages > MaxPagesPerSequence)
            throw new ArgumentException($"sequence {sequence} would hold {need} tokens, more than the {MaxPagesPerSequence} pages of {PageSize} tokens a sequence may have");
        var table = _tables[sequence];
        if (pages - table.Count > _free.Count)
            throw new InvalidOperationException($"KV cache full: sequence {sequence} needs {pages - table.Count} more pages of {PageSize} tokens, {_free.Count} are free (of {Pages - 1})");
        while (table.Count < pages) table.Add(_free.Pop());
    }

    /// <summary>The slot (page * pageSize + offset) of token <paramref name="position"/> of a sequence; the page must be reserved.</summary>
    public int Slot(int sequence, int position) => _tables[sequence][position / PageSize] * PageSize + position % PageSize;

    public void Advance(int sequence, int tokens) => _lengths[sequence] += tokens;

    /// <summary>Keeps the first <paramref name="length"/> tokens of a sequence; whole pages past them go back to the free list.</summary>
    public void Truncate(int sequence, int length)
    {
        if (length < 0 || length > _lengths[sequence])
            throw new ArgumentOutOfRangeException(nameof(length), length, $"sequence {sequence} holds {_lengths[sequence]} tokens; truncate to 0..{_lengths[sequence]}");
        var table = _tables[sequence];
        int keep = (length + PageSize - 1) / PageSize;
        for (int i = table.Count - 1; i >= keep; i--) { _free.Push(table[i]); table.RemoveAt(i); }
        _lengths[sequence] = length;
    }

    /// <summary>Returns a sequence's pages to the free list.</summary>
    public void Reset(int sequence)
    {
        foreach (int p in _tables[sequence]) _free.Push(p);
        _tables[sequence].Clear();
        _lengths[sequence] = 0;
    }

    /// <summary>Writes a sequence's block table into <paramref name="row"/> (length MaxPagesPerSequence), unused entries 0.</summary>
    public void WriteBlockTable(int sequence, Span<int> row)
    {
        row.Clear();
        var t = _tables[sequence];
        for (int i = 0; i < t.Count; i++) row[i] = t[i];
    }

    public void Dispose() => _arena.Dispose();
}
