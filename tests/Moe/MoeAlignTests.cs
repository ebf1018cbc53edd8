using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>moe_align_count + moe_align_scatter against a CPU grouping (exact integer outputs).</summary>
[TestFixture]
public class MoeAlignTests
{
    const int BM = MoeWorkspace.TileRows;

    static void Check(int experts, int tokens, int topK, Func<int, int, int> expertOf)
    {
        int slots = tokens * topK;
        var ids = new int[slots];
        for (int t = 0; t < tokens; t++) for (int j = 0; j < topK; j++) ids[t * topK + j] = expertOf(t, j);

        // CPU expectation: padded runs per expert, ascending slot order, -1 padding, one expert per tile.
        var counts = new int[experts];
        foreach (int e in ids) counts[e]++;
        var offsets = new int[experts + 1];
        for (int e = 0; e < experts; e++) offsets[e + 1] = offsets[e] + (counts[e] + BM - 1) / BM * BM;
        int rows = offsets[experts], tiles = rows / BM;
        var sorted = Enumerable.Repeat(-1, rows).ToArray();
        var fill = offsets[..experts].ToArray();
        for (int s = 0; s < slots; s++) sorted[fill[ids[s]]++] = s;
        var tileExpert = new int[tiles];
        for (int e = 0; e < experts; e++) for (int b = offsets[e] / BM; b < offsets[e + 1] / BM; b++) tileExpert[b] = e;

        var ws = MoeWorkspace.Compute(tokens, experts, topK, 64, 128);
        Assert.That(tiles, Is.LessThanOrEqualTo(ws.MaxTiles), "workspace bound on tiles");
        using var dev = new MoeDevice(new MoeShape(experts, topK, 128, 64, true));
        var d = dev.Device;
        var idsPtr = dev.Upload(ids);
        var mem = d.Allocate(ws.TotalBytes);
        dev.Moe.Align(d.DefaultStream, experts, slots, idsPtr, mem + ws.Counts, mem + ws.Offsets, mem + ws.SortedSlots, mem + ws.TileExpert, mem + ws.NumTiles);
        Assert.That(dev.Read<int>(mem + ws.Counts, experts), Is.EqualTo(counts), "counts");
        Assert.That(dev.Read<int>(mem + ws.Offsets, experts + 1), Is.EqualTo(offsets), "padded offsets");
        Assert.That(dev.Read<int>(mem + ws.NumTiles, 1)[0], Is.EqualTo(tiles), "tile count");
        Assert.That(dev.Read<int>(mem + ws.SortedSlots, rows), Is.EqualTo(sorted), "sorted slots (ascending within an expert, -1 padding)");
        Assert.That(dev.Read<int>(mem + ws.TileExpert, tiles), Is.EqualTo(tileExpert), "expert of each tile");
        TestContext.Out.WriteLine($"E {experts}, {slots} slots: {counts.Count(c => c == 0)} experts without tokens, {tiles} tiles");
    }

    static int Hash(int t, int j, int seed) => (int)((uint)((t * 7919 + j * 104729 + seed) * 2654435761u) >> 8);

    [Test]
    public void OneToken() => Check(128, 1, 8, (t, j) => j * 16 + 3);

    /// <summary>Random (with repeats across tokens) experts: 2400 slots over 128 experts, partial tiles everywhere.</summary>
    [Test]
    public void ThreeHundredTokens_Random() => Check(128, 300, 8, (t, j) => (Hash(t, j, 1) % 16) * 8 + j);

    /// <summary>All 2400 slots on 3 experts (many full tiles, 125 experts empty).</summary>
    [Test]
    public void ThreeHundredTokens_ThreeHotExperts() => Check(128, 300, 8, (t, j) => new[] { 5, 77, 127 }[Hash(t, j, 2) % 3]);

    [Test]
    public void OddSizes_SixtyExperts_TopFour() => Check(60, 37, 4, (t, j) => (t + 15 * j) % 60);
}
