namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>One warp's dependent chain from its tail mark on (LaunchRecord.TailChains): DRAM and L2 round trips and instructions.</summary>
public readonly record struct TailChain(long DramRoundTrips, long L2RoundTrips, long Instructions)
{
    /// <summary>Whether this chain is at least <paramref name="o"/> in all three, so at least as long on any GPU.</summary>
    public bool Covers(TailChain o) => DramRoundTrips >= o.DramRoundTrips && L2RoundTrips >= o.L2RoundTrips && Instructions >= o.Instructions;
}

/// <summary>
/// The chains of a launch's warps that no other warp's chain covers (a Pareto frontier): a chain's time is a positive
/// weighting of its three counts (the GPU's latencies and issue rate), so the longest chain on any GPU is one of these.
/// Warps of a kernel run a few shapes of code, so the frontier stays small; past <see cref="MaxChains"/> it is replaced
/// by one chain of the three maxima, which covers them all (the longest time can then only come out longer).
/// </summary>
internal sealed class TailChainFrontier
{
    public const int MaxChains = 16;
    private readonly List<TailChain> _chains = [];

    public int Count => _chains.Count;

    public void Add(TailChain c)
    {
        foreach (var x in _chains)
            if (x.Covers(c)) return;
        _chains.RemoveAll(c.Covers);
        _chains.Add(c);
        if (_chains.Count <= MaxChains) return;
        var max = new TailChain(_chains.Max(x => x.DramRoundTrips), _chains.Max(x => x.L2RoundTrips), _chains.Max(x => x.Instructions));
        _chains.Clear();
        _chains.Add(max);
    }

    public void Add(TailChainFrontier o)
    {
        foreach (var c in o._chains) Add(c);
    }

    public TailChain[] ToArray() => [.. _chains];
}
