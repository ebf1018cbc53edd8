namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// A random paged KV cache for attention tests: slot-major pools [pages, pageSize, nKV, D] bf16, per-sequence block
/// tables with scrambled page order, unused block-table entries poisoned (a kernel that reads one faults on memcheck).
/// </summary>
public sealed class PagedKvFixture
{
    public PagedKvFixture(Random rng, int[] contextLens, int nKV, int d, int pageSize, float valueScale = 1f)
    {
        ContextLens = contextLens;
        NumKvHeads = nKV;
        HeadDim = d;
        PageSize = pageSize;
        MaxPagesPerSeq = Math.Max(1, contextLens.Max(l => (l + pageSize - 1) / pageSize) + 1);
        int used = contextLens.Sum(l => (l + pageSize - 1) / pageSize);
        Pages = used + 3;
        var order = Enumerable.Range(0, Pages).OrderBy(_ => rng.Next()).ToArray();
        BlockTable = new int[contextLens.Length * MaxPagesPerSeq];
        Array.Fill(BlockTable, 1 << 26);
        int next = 0;
        for (int s = 0; s < contextLens.Length; s++)
            for (int pg = 0; pg < (contextLens[s] + pageSize - 1) / pageSize; pg++)
                BlockTable[s * MaxPagesPerSeq + pg] = order[next++];
        K = Bf16.Random(rng, (long)Pages * pageSize * nKV * d is var n ? (int)n : 0, valueScale);
        V = Bf16.Random(rng, K.Length, valueScale);
        _kf = Bf16.ToFloats(K);
        _vf = Bf16.ToFloats(V);
    }

    private readonly float[] _kf, _vf;

    public int[] ContextLens { get; }
    public int NumKvHeads { get; }
    public int HeadDim { get; }
    public int PageSize { get; }
    public int Pages { get; }
    public int MaxPagesPerSeq { get; }
    public int[] BlockTable { get; }
    public ushort[] K { get; }
    public ushort[] V { get; }

    public long Offset(int seq, int key, int kvh)
    {
        int page = BlockTable[seq * MaxPagesPerSeq + key / PageSize];
        long slot = (long)page * PageSize + key % PageSize;
        return (slot * NumKvHeads + kvh) * HeadDim;
    }

    public float KAt(int seq, int key, int kvh, int i) => _kf[Offset(seq, key, kvh) + i];
    public float VAt(int seq, int key, int kvh, int i) => _vf[Offset(seq, key, kvh) + i];
}
