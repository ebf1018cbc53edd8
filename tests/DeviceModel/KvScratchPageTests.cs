using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Issue 12, fault 4: KV page 0 is the scratch page that the padding rows of a decode batch read (block table row of
/// zeros, context length 1: key 0 of page 0). Device memory is not zeroed by cudaMalloc, so the page must be zeroed
/// at construction; otherwise a padding row attends over whatever the allocation held (on the emulator: poison, NaN or
/// ~3.4e38 by seed). The padded-batch test failed before the page was zeroed: the attention kernel's initcheck fault named
/// the KV cache allocation (offset 32: page 0, key 0, head 1); the page-0 read-back showed 0xFF / 0x7F bytes.
/// </summary>
public class KvScratchPageTests
{
    [TestCase(0)]
    [TestCase(1)]
    public void ZeroScratchPage_ClearsPageZeroOfEveryPool_Only(int poisonSeed)
    {
        using var device = new EmulatedDevice(new EmulatorOptions { Modes = EmulatorModes.Ambient with { PoisonSeed = poisonSeed } });
        using var stream = device.CreateStream();
        using var kv = new PagedKvCache(device, layers: 3, numKvHeads: 2, headDim: 16, pageSize: 4, pages: 5, maxSequences: 1, maxPagesPerSequence: 4);
        kv.ZeroScratchPage(stream);   // DeviceModel does this at construction, on its stream
        device.Synchronize(stream);
        long page = PagedKvCache.PageBytes(2, 16, 4);
        var bytes = new byte[page];
        for (int l = 0; l < 3; l++)
        {
            foreach (var (pool, name) in new[] { (kv.K(l), "K"), (kv.V(l), "V") })
            {
                device.CopyToHost(bytes, pool);
                Assert.That(bytes.Count(b => b != 0), Is.Zero, $"layer {l} {name}: non-zero bytes in page 0 (first: 0x{bytes.FirstOrDefault(b => b != 0):x2})");
                device.CopyToHost(bytes, pool + page);
                Assert.That(bytes.Count(b => b != EmulatorModes.PoisonByte(poisonSeed)), Is.Zero, $"layer {l} {name}: page 1 is left as allocated (only the scratch page is cleared)");
            }
        }
    }

    /// <summary>
    /// A decode batch of 3 sequences in the bucket of 4 (one padding row) with the emulator's initcheck on: every global
    /// read must hit bytes that were written (an upload, a memset or a kernel). The padding row reads page 0.
    /// </summary>
    [Test]
    public void PaddedDecodeBatch_ReadsOnlyInitialisedMemory()
    {
        string dir = DeviceCheckpoints.Tiny();
        using var device = new EmulatedDevice(new EmulatorOptions { Strict = true });
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, new DeviceModelOptions { ContextLength = 32, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 4, MaxSequences = 3 });
        var next = new int[3];
        for (int s = 0; s < 3; s++) next[s] = dm.ForwardGreedy(s, [1 + s, 2 + s, 3 + s]);
        var logits = new float[3 * dm.VocabSize];
        dm.DecodeBatch([0, 1, 2], next, logits);
        Assert.That(logits.All(float.IsFinite), "padded batch: every real row's logits are finite");
    }
}
