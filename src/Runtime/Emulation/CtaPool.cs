namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// A device's reusable CTA contexts (warps, shared and local memory, race checker), so that steady-state launches
/// allocate almost nothing. A plain stack under a lock: contexts are rented once per worker of a launch, not per CTA.
/// It is not a ConcurrentBag on purpose: a bag keeps its items in thread-local slots that the thread pool's threads
/// root, and a pooled context references its last launch and through it the bag, so every emulated device that ever
/// launched stayed reachable with its memory and bookkeeping (the test suite's process grew to the machine's 24 GiB).
/// </summary>
internal sealed class CtaPool
{
    private readonly Stack<Cta> _free = new();

    /// <summary>A pooled context bound to <paramref name="launch"/>, or a new one.</summary>
    public Cta Rent(LaunchState launch)
    {
        Cta? cta;
        lock (_free) _free.TryPop(out cta);
        if (cta == null) return new Cta(launch);
        cta.Bind(launch);
        return cta;
    }

    public void Return(Cta cta)
    {
        lock (_free) _free.Push(cta);
    }
}
