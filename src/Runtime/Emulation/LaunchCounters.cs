namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Mutable per-worker counters, merged into a <see cref="LaunchRecord"/> at the end of a launch.</summary>
internal sealed class Counters
{
    public long WarpInstructions, ThreadInstructions;
    public long GlobalLoadRequests, GlobalStoreRequests, GlobalLoadBytes, GlobalStoreBytes, GlobalLoadSectors, GlobalStoreSectors;
    public long GlobalAtomics, DistinctSectors;
    public long SharedLoadRequests, SharedStoreRequests, SharedWavefronts, SharedBankConflicts;
    public long LocalBytes, Barriers, MmaCount, CpAsyncBytes, DivergentBranches;

    public void Add(Counters o)
    {
        WarpInstructions += o.WarpInstructions; ThreadInstructions += o.ThreadInstructions;
        GlobalLoadRequests += o.GlobalLoadRequests; GlobalStoreRequests += o.GlobalStoreRequests;
        GlobalLoadBytes += o.GlobalLoadBytes; GlobalStoreBytes += o.GlobalStoreBytes;
        GlobalLoadSectors += o.GlobalLoadSectors; GlobalStoreSectors += o.GlobalStoreSectors;
        GlobalAtomics += o.GlobalAtomics; DistinctSectors += o.DistinctSectors;
        SharedLoadRequests += o.SharedLoadRequests; SharedStoreRequests += o.SharedStoreRequests;
        SharedWavefronts += o.SharedWavefronts; SharedBankConflicts += o.SharedBankConflicts;
        LocalBytes += o.LocalBytes; Barriers += o.Barriers; MmaCount += o.MmaCount; CpAsyncBytes += o.CpAsyncBytes;
        DivergentBranches += o.DivergentBranches;
    }

}

/// <summary>
/// Counters of one kernel launch on the emulator (performance proxies, not timings). Sectors are 32-byte
/// units; <see cref="CoalescingEfficiency"/> = bytes requested / (sectors × 32) over global loads and stores.
/// </summary>
public sealed record LaunchRecord
{
    public required string Kernel { get; init; }
    public required Dim3 Grid { get; init; }
    public required Dim3 Block { get; init; }
    public int DynamicSharedBytes { get; init; }
    public long WarpInstructions { get; init; }
    public long ThreadInstructions { get; init; }
    public long GlobalLoadRequests { get; init; }
    public long GlobalStoreRequests { get; init; }
    public long GlobalLoadBytes { get; init; }
    public long GlobalStoreBytes { get; init; }
    /// <summary>32-byte sectors summed over requests (each request counts its distinct sectors).</summary>
    public long GlobalLoadSectors { get; init; }
    public long GlobalStoreSectors { get; init; }
    /// <summary>Distinct 32-byte sectors touched over the whole launch: a DRAM-traffic proxy.</summary>
    public long DistinctSectors { get; init; }
    public long GlobalAtomics { get; init; }
    public long SharedLoadRequests { get; init; }
    public long SharedStoreRequests { get; init; }
    public long SharedWavefronts { get; init; }
    public long SharedBankConflicts { get; init; }
    public long LocalBytes { get; init; }
    public long Barriers { get; init; }
    public long MmaCount { get; init; }
    public long CpAsyncBytes { get; init; }
    public long DivergentBranches { get; init; }
    public double ElapsedMilliseconds { get; init; }

    public long GridBlocks => (long)Grid.Count;
    public double SectorsPerRequest => GlobalLoadRequests + GlobalStoreRequests == 0 ? 0
        : (double)(GlobalLoadSectors + GlobalStoreSectors) / (GlobalLoadRequests + GlobalStoreRequests);
    public double CoalescingEfficiency => GlobalLoadSectors + GlobalStoreSectors == 0 ? 1
        : (double)(GlobalLoadBytes + GlobalStoreBytes) / ((GlobalLoadSectors + GlobalStoreSectors) * 32.0);

    internal static LaunchRecord From(string kernel, in LaunchConfig cfg, Counters c, double ms) => new()
    {
        Kernel = kernel, Grid = cfg.Grid, Block = cfg.Block, DynamicSharedBytes = cfg.DynamicSharedBytes,
        WarpInstructions = c.WarpInstructions, ThreadInstructions = c.ThreadInstructions,
        GlobalLoadRequests = c.GlobalLoadRequests, GlobalStoreRequests = c.GlobalStoreRequests,
        GlobalLoadBytes = c.GlobalLoadBytes, GlobalStoreBytes = c.GlobalStoreBytes,
        GlobalLoadSectors = c.GlobalLoadSectors, GlobalStoreSectors = c.GlobalStoreSectors,
        DistinctSectors = c.DistinctSectors, GlobalAtomics = c.GlobalAtomics,
        SharedLoadRequests = c.SharedLoadRequests, SharedStoreRequests = c.SharedStoreRequests,
        SharedWavefronts = c.SharedWavefronts, SharedBankConflicts = c.SharedBankConflicts,
        LocalBytes = c.LocalBytes, Barriers = c.Barriers, MmaCount = c.MmaCount, CpAsyncBytes = c.CpAsyncBytes,
        DivergentBranches = c.DivergentBranches, ElapsedMilliseconds = ms,
    };
}

/// <summary>A memory-check, race-check or sync-check violation found while running a kernel.</summary>
public sealed class EmulatorFaultException(string message) : DeviceException(message);
