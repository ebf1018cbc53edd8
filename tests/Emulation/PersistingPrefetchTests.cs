using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// prefetch.global.L2::evict_last on the emulator's counters (docs/emulator.md, "Programmatic dependent launch";
/// docs/timing-model.md, "Weights fetched ahead"): a kernel prefetches weights for a later kernel; after more streaming
/// traffic than the L2 keeps ordinary data, the later kernel still finds the evict_last sectors L2-resident, and an
/// ordinary prefetch's not; the persisting window (EmulatorOptions.L2PersistingBytes) bounds how much such data counts.
/// </summary>
public sealed class PersistingPrefetchTests
{
    private const string Source = """
        extern "C" __global__ void fetch_ahead(const float* w, int n, int evict_last)
        {
            int i = (blockIdx.x * blockDim.x + threadIdx.x) * 32;   // one 128-byte line per thread
            if (i >= n) return;
            if (evict_last) asm volatile("prefetch.global.L2::evict_last [%0];" :: "l"(w + i) : "memory");
            else asm volatile("prefetch.global.L2 [%0];" :: "l"(w + i) : "memory");
        }
        extern "C" __global__ void copy(const float* in, float* out, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) out[i] = in[i];
        }
        """;

    private const int WeightFloats = 2048;                 // 8 KiB: 256 sectors
    private const int StreamFloats = 64 * 1024;            // 256 KiB of streaming reads, 4x the ordinary residency window

    private static (EmuKit Kit, DevicePtr W, DevicePtr Out, DevicePtr Big, DevicePtr BigOut) Setup(long persistingBytes)
    {
        var kit = new EmuKit(Source, new EmulatorOptions
        {
            Sequential = true, PrintfOutput = TextWriter.Null, L2ResidentBytes = 64 * 1024, L2PersistingBytes = persistingBytes,
        });
        return (kit, kit.Upload(new float[WeightFloats]), kit.Zeros<float>(WeightFloats), kit.Upload(new float[StreamFloats]), kit.Zeros<float>(StreamFloats));
    }

    private static LaunchRecord FetchStreamConsume(EmuKit kit, DevicePtr w, DevicePtr outp, DevicePtr big, DevicePtr bigOut, int evictLast)
    {
        var fetch = kit.Launch("fetch_ahead", new Dim3(1), new Dim3(64), 0, w, WeightFloats, evictLast);
        Assert.That(fetch.PersistingSectors, Is.EqualTo(evictLast == 1 ? WeightFloats * 4 / 32 : 0), "each evict_last sector counted once");
        kit.Launch("copy", new Dim3(StreamFloats / 256), new Dim3(256), 0, big, bigOut, StreamFloats);
        return kit.Launch("copy", new Dim3(WeightFloats / 256), new Dim3(256), 0, w, outp, WeightFloats);
    }

    [Test]
    public void EvictLastPrefetch_IsFoundInL2_AfterStreamingTraffic()
    {
        var (kit, w, outp, big, bigOut) = Setup(persistingBytes: 16L << 20);
        using var _ = kit;
        var consume = FetchStreamConsume(kit, w, outp, big, bigOut, evictLast: 1);
        Assert.That(consume.L2ResidentSectors, Is.EqualTo(WeightFloats * 4 / 32), "every weight sector fetched ahead is L2-resident");
        Assert.That(consume.DramRoundTrips, Is.Zero, "its loads are L2 round trips");
    }

    /// <summary>
    /// EvictL2 (what the profiler calls before each step) forgets both kinds of residency: an evict_last prefetch and data
    /// the launch just before touched are found in L2 without it and not after it.
    /// </summary>
    [Test]
    public void EvictL2_ForgetsPersistingAndOrdinaryResidency()
    {
        var (kit, w, outp, _, _) = Setup(persistingBytes: 16L << 20);
        using var _ = kit;
        kit.Launch("fetch_ahead", new Dim3(1), new Dim3(64), 0, w, WeightFloats, 1);
        var warm = kit.Launch("copy", new Dim3(WeightFloats / 256), new Dim3(256), 0, w, outp, WeightFloats);
        Assert.That(warm.L2ResidentSectors, Is.EqualTo(WeightFloats * 4 / 32), "without the eviction: resident");
        kit.Launch("fetch_ahead", new Dim3(1), new Dim3(64), 0, w, WeightFloats, 1);
        kit.Dev.EvictL2();
        var cold = kit.Launch("copy", new Dim3(WeightFloats / 256), new Dim3(256), 0, w, outp, WeightFloats);
        Assert.That(cold.L2ResidentSectors, Is.Zero, "after it: every sector from DRAM");
        var again = kit.Launch("copy", new Dim3(WeightFloats / 256), new Dim3(256), 0, outp, w, WeightFloats);
        Assert.That(again.L2ResidentSectors, Is.EqualTo(WeightFloats * 4 / 32), "the launch after the eviction left its data in L2 as usual");
    }

    [Test]
    public void OrdinaryPrefetch_IsNotKeptAcrossStreamingTraffic()
    {
        var (kit, w, outp, big, bigOut) = Setup(persistingBytes: 16L << 20);
        using var _ = kit;
        var consume = FetchStreamConsume(kit, w, outp, big, bigOut, evictLast: 0);
        Assert.That(consume.L2ResidentSectors, Is.Zero);
    }

    [Test]
    public void PersistingWindow_BoundsWhatCounts()
    {
        // window of 8 KiB: the weights (8 KiB) fit; fetching another 4 KiB after them pushes them out
        var (kit, w, outp, big, bigOut) = Setup(persistingBytes: 8 * 1024);
        using var _ = kit;
        var other = kit.Upload(new float[1024]);
        kit.Launch("fetch_ahead", new Dim3(1), new Dim3(64), 0, w, WeightFloats, 1);
        kit.Launch("fetch_ahead", new Dim3(1), new Dim3(64), 0, other, 1024, 1);
        var consume = kit.Launch("copy", new Dim3(WeightFloats / 256), new Dim3(256), 0, w, outp, WeightFloats);
        Assert.That(consume.L2ResidentSectors, Is.Zero, "12 KiB of evict_last data since the weights' prefetch: beyond the 8 KiB window");
        var consumeOther = kit.Launch("copy", new Dim3(4), new Dim3(256), 0, other, kit.Zeros<float>(1024), 1024);
        Assert.That(consumeOther.L2ResidentSectors, Is.EqualTo(1024 * 4 / 32), "the later 4 KiB are still within it");
        // off: evict_last is an ordinary prefetch
        var (kit0, w0, out0, big0, bigOut0) = Setup(persistingBytes: 0);
        using var __ = kit0;
        Assert.That(FetchStreamConsume(kit0, w0, out0, big0, bigOut0, evictLast: 0).L2ResidentSectors, Is.Zero);
        kit0.Launch("fetch_ahead", new Dim3(1), new Dim3(64), 0, w0, WeightFloats, 1);
        kit0.Launch("copy", new Dim3(StreamFloats / 256), new Dim3(256), 0, big0, bigOut0, StreamFloats);
        Assert.That(kit0.Launch("copy", new Dim3(WeightFloats / 256), new Dim3(256), 0, w0, out0, WeightFloats).L2ResidentSectors, Is.Zero);
    }
}
