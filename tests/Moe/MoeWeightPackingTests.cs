using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

[TestFixture]
public class MoeWeightPackingTests
{
    /// <summary>Stacked gate_up [E, 2I, H]: expert e's row r is gate[r] for r &lt; I, up[r - I] after; down [E, H, I] verbatim.</summary>
    [Test]
    public void StackedLayout_PlacesEveryRow()
    {
        const int E = 3, I = 4, H = 8;
        var stacked = new ushort[MoeWeightPacking.GateUpElements(E, I, H)];
        var stackedDown = new ushort[MoeWeightPacking.DownElements(E, H, I)];
        for (int e = 0; e < E; e++)
        {
            var gate = Enumerable.Range(0, I * H).Select(i => (ushort)(10000 * e + i)).ToArray();
            var up = Enumerable.Range(0, I * H).Select(i => (ushort)(10000 * e + 1000 + i)).ToArray();
            var down = Enumerable.Range(0, H * I).Select(i => (ushort)(10000 * e + 2000 + i)).ToArray();
            MoeWeightPacking.PackGateUp(stacked, e, gate, up, I, H);
            MoeWeightPacking.PackDown(stackedDown, e, down, H, I);
        }
        for (int e = 0; e < E; e++)
            for (int r = 0; r < 2 * I; r++)
                for (int c = 0; c < H; c++)
                {
                    ushort expect = r < I ? (ushort)(10000 * e + r * H + c) : (ushort)(10000 * e + 1000 + (r - I) * H + c);
                    Assert.That(stacked[(e * 2 * I + r) * H + c], Is.EqualTo(expect));
                }
        Assert.That(stackedDown[(2 * H + 5) * I + 3], Is.EqualTo((ushort)(20000 + 2000 + 5 * I + 3)));
        Assert.That(MoeWeightPacking.GateUpExpertOffsetBytes(2, I, H), Is.EqualTo(2L * 2 * I * H * 2));
    }

    [Test]
    public void WrongSizes_NameTheTensor()
    {
        var stacked = new ushort[MoeWeightPacking.GateUpElements(2, 4, 8)];
        Assert.That(() => MoeWeightPacking.PackGateUp(stacked, 0, new ushort[31], new ushort[32], 4, 8), Throws.ArgumentException.With.Message.Contains("gate_proj"));
        Assert.That(() => MoeWeightPacking.PackGateUp(stacked, 2, new ushort[32], new ushort[32], 4, 8), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("expert 2"));
        Assert.That(() => MoeWeightPacking.PackDown(new ushort[64], 0, new ushort[33], 8, 4), Throws.ArgumentException.With.Message.Contains("down_proj"));
    }

    /// <summary>Workspace: 256-byte aligned, non-overlapping buffers; the documented ~190 MiB at T = 4096 real shape.</summary>
    [Test]
    public void Workspace_Layout()
    {
        var w = MoeWorkspace.Compute(4096, 128, 8, 768, 2048);
        long[] offs = [w.ExpertsSync, w.Counters, w.TicketBytes, w.Logits, w.TopkIds, w.TopkWeights, w.Counts, w.Offsets, w.SortedSlots, w.TileExpert, w.NumTiles, w.Inter, w.SlotOut, w.TotalBytes];
        Assert.That(offs, Is.Ordered.Ascending);
        Assert.That(offs.All(o => o % 256 == 0), Is.True);
        Assert.That(w.TotalBytes / (1 << 20), Is.InRange(180, 200));
        Assert.That(w.TotalBytes - w.SlotOut, Is.EqualTo(4096L * 8 * 2048 * 2));
        Assert.That(MoeWorkspace.MaxTilesFor(1, 128, 8), Is.EqualTo(8), "8 slots: at most 8 tiles");
        Assert.That(MoeWorkspace.MaxTilesFor(300, 128, 8), Is.EqualTo((2400 + 128 * 63) / 64));
    }
}
