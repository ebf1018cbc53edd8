using System.Buffers;

namespace Qwen3Cuda.Model.Tokenization;

/// <summary>
/// Byte-level BPE core: turns the UTF-8 bytes of one pre-tokenized piece into token ids by repeatedly
/// applying the lowest-ranked merge (leftmost on ties), as the Hugging Face BPE model does. Works on
/// token ids: every byte starts as its single-byte token, and a merge maps (left id, right id) to
/// (rank, merged id).
/// </summary>
internal sealed class BytePairMerger
{
    readonly int[] _byteTokenId;                 // [256]
    readonly Dictionary<long, long> _merges;     // key (left << 32 | right) -> (rank << 32 | merged id)

    public BytePairMerger(int[] byteTokenId, Dictionary<long, long> merges)
    {
        if (byteTokenId.Length != 256) throw new ArgumentException("byteTokenId must have 256 entries", nameof(byteTokenId));
        _byteTokenId = byteTokenId;
        _merges = merges;
    }

    public int MergeCount => _merges.Count;

    public static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    /// <summary>Pieces longer than this use the heap (O(n log n)) instead of the O(n^2) scan for the best pair.</summary>
    const int HeapThresholdBytes = 64;

    /// <summary>Appends the ids of <paramref name="bytes"/> (one piece) to <paramref name="output"/>.</summary>
    public void Encode(ReadOnlySpan<byte> bytes, List<int> output) => Encode(bytes, output, bytes.Length > HeapThresholdBytes);

    /// <summary>Same result either way; <paramref name="useHeap"/> picks the algorithm (tests compare the two).</summary>
    internal void Encode(ReadOnlySpan<byte> bytes, List<int> output, bool useHeap)
    {
        int n = bytes.Length;
        if (n == 0) return;
        if (n == 1)
        {
            output.Add(_byteTokenId[bytes[0]]);
            return;
        }
        // Per symbol: token id, next alive index (-1 at the end), previous alive index, and the rank and
        // merged id of the pair (this symbol, next symbol); int.MaxValue when it does not merge.
        const int StackLimit = 128;
        int[]? rented = n > StackLimit ? ArrayPool<int>.Shared.Rent(5 * n) : null;
        Span<int> all = rented != null ? rented.AsSpan(0, 5 * n) : stackalloc int[5 * StackLimit];
        Span<int> sym = all.Slice(0, n), next = all.Slice(n, n), prev = all.Slice(2 * n, n);
        Span<int> rank = all.Slice(3 * n, n), merged = all.Slice(4 * n, n);
        try
        {
            for (int i = 0; i < n; i++)
            {
                sym[i] = _byteTokenId[bytes[i]];
                next[i] = i + 1 < n ? i + 1 : -1;
                prev[i] = i - 1;
            }
            for (int i = 0; i < n; i++) Pair(i, sym, next, rank, merged);
            if (useHeap) MergeWithHeap(n, sym, next, prev, rank, merged);
            else while (true)
            {
                int best = -1, bestRank = int.MaxValue;
                for (int i = 0; i >= 0; i = next[i])
                    if (rank[i] < bestRank) { bestRank = rank[i]; best = i; }
                if (best < 0) break;
                int q = next[best];
                sym[best] = merged[best];
                next[best] = next[q];
                if (next[q] >= 0) prev[next[q]] = best;
                Pair(best, sym, next, rank, merged);
                if (prev[best] >= 0) Pair(prev[best], sym, next, rank, merged);
            }
            for (int i = 0; i >= 0; i = next[i]) output.Add(sym[i]);
        }
        finally
        {
            if (rented != null) ArrayPool<int>.Shared.Return(rented);
        }
    }

    /// <summary>
    /// The same merge order with a priority queue of (rank, position): entries go stale when a neighbour
    /// merges and are checked on the way out (the left symbol and its right neighbour must be unchanged).
    /// </summary>
    void MergeWithHeap(int n, Span<int> sym, Span<int> next, Span<int> prev, Span<int> rank, Span<int> merged)
    {
        var heap = new PriorityQueue<(int Pos, int Left, int Right, int RightPos), long>(n);
        void Push(int i, Span<int> sym, Span<int> next, Span<int> rank)
        {
            if (i >= 0 && rank[i] != int.MaxValue) heap.Enqueue((i, sym[i], sym[next[i]], next[i]), ((long)rank[i] << 32) | (uint)i);
        }
        for (int i = 0; i < n; i++) Push(i, sym, next, rank);
        while (heap.TryDequeue(out var e, out _))
        {
            int p = e.Pos;
            if (sym[p] != e.Left || next[p] != e.RightPos || sym[e.RightPos] != e.Right) continue; // stale
            int q = next[p];
            sym[p] = merged[p];
            sym[q] = -1; // removed
            next[p] = next[q];
            if (next[q] >= 0) prev[next[q]] = p;
            Pair(p, sym, next, rank, merged);
            Push(p, sym, next, rank);
            if (prev[p] >= 0)
            {
                Pair(prev[p], sym, next, rank, merged);
                Push(prev[p], sym, next, rank);
            }
        }
    }

    void Pair(int i, Span<int> sym, Span<int> next, Span<int> rank, Span<int> merged)
    {
        int j = next[i];
        if (j >= 0 && _merges.TryGetValue(PairKey(sym[i], sym[j]), out long v))
        {
            rank[i] = (int)(v >> 32);
            merged[i] = (int)v;
        }
        else rank[i] = int.MaxValue;
    }
}
