using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// The emulator's timing-model counters (docs/timing-model.md): dependent global-memory round trips per warp (DRAM when
/// a trip fetched a sector first touched in the launch, else L2), special-function and shuffle instructions, per-warp
/// maxima, cache-reuse bytes, and the module identity and graph flag of a launch record. Hand-written kernels whose
/// counts follow from the source.
/// </summary>
public class RoundTripCounterTests
{
    const string Source = """
        // next[] is a chain of indices 64 ints (256 bytes, 8 sectors) apart: each hop depends on the last and touches a new sector
        extern "C" __global__ void chase(const int* next, int hops, int* out)
        {
            int i = threadIdx.x & 0;   // every lane follows the same chain
            for (int k = 0; k < hops; k++) i = next[i];
            out[threadIdx.x] = i;
        }
        // every line of x prefetched into L2, then x loaded once, then (twice > 0) loaded again
        extern "C" __global__ void prefetch_then_load(const float* x, int twice, float* out)
        {
            int t = threadIdx.x;
            if ((t & 31) == 0) asm volatile("prefetch.global.L2 [%0];" :: "l"(x + t) : "memory");
            __syncthreads();
            float v = x[t];
            if (twice) v += x[t ^ 1];
            out[t] = v;
        }
        // each thread sums its share of x: a launch that moves much and writes little, at its end
        extern "C" __global__ void sum_all(const float* x, int n, float* out)
        {
            float s = 0.f;
            for (int i = threadIdx.x; i < n; i += blockDim.x) s += x[i];
            out[threadIdx.x] = s;
        }
        // four independent loads, then one use: one round trip
        extern "C" __global__ void independent(const float* a, const float* b, const float* c, const float* d, float* out)
        {
            int t = blockIdx.x * blockDim.x + threadIdx.x;
            out[t] = a[t] + b[t] + c[t] + d[t];
        }
        // idx[t] = t: the second load's address needs the first load's value and reads the same sectors again (an L2 trip)
        extern "C" __global__ void reread(const int* idx, int* out)
        {
            int t = threadIdx.x;
            int j = idx[t];
            out[t] = idx[j];
        }
        // four guarded loads (the decode GEMV's pattern: in the PTX each sits in its own if-then block): one round trip
        extern "C" __global__ void guarded(const float* x, int n, float* out)
        {
            int t = threadIdx.x;
            float a = t < n ? x[t] : 0.f, b = t + 32 < n ? x[t + 32] : 0.f, c = t + 64 < n ? x[t + 64] : 0.f, d = t + 96 < n ? x[t + 96] : 0.f;
            out[t] = a + b + c + d;
        }
        // a loop that is not unrolled: the next iteration's load waits for this one's add (in-order issue), one trip each
        extern "C" __global__ void rolled(const float* x, int iters, float* out)
        {
            float s = 0.f;
        #pragma unroll 1
            for (int i = 0; i < iters; i++) s += x[i * 32 + threadIdx.x];
            out[threadIdx.x] = s;
        }
        extern "C" __global__ void fill(float* y) { int t = blockIdx.x * blockDim.x + threadIdx.x; y[t] = (float)t; }
        extern "C" __global__ void copy_plus_one(const float* x, float* y) { int t = blockIdx.x * blockDim.x + threadIdx.x; y[t] = x[t] + 1.f; }
        // an atomicAdd whose result is unused (ptxas: a red) and one whose result is read
        extern "C" __global__ void atomics(int* counter, int use, int* out)
        {
            atomicAdd(counter, 1);
            if (use) out[threadIdx.x] = atomicAdd(counter + 1, 1);
        }
        // one ex2 (SFU) and five shuffles per warp
        extern "C" __global__ void sfu_shuffle(const float* x, float* out)
        {
            float v = __expf(x[threadIdx.x]);
            for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
            out[threadIdx.x] = v;
        }
        """;

    [Test]
    public void PointerChase_CountsOneDramTripPerHop()
    {
        // Warps in lockstep order (warp 1 after warp 0), whatever QWEN3CUDA_EMULATOR says: the DRAM/L2 split below depends on it.
        using var kit = new EmuKit(Source, new EmulatorOptions { Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Lockstep } });
        const int hops = 5;
        var next = new int[64 * (hops + 1)];
        for (int h = 0; h < hops; h++) next[64 * h] = 64 * (h + 1);
        var dn = kit.Upload(next);
        var dout = kit.Zeros<int>(64);
        var r = kit.Launch("chase", 1, 64, 0, dn, hops, dout);
        Assert.That(kit.Download<int>(dout, 64), Is.All.EqualTo(64 * hops));
        Assert.That(r.Warps, Is.EqualTo(2));
        // warp 0 fetches each hop's sector first (DRAM); warp 1 runs after it (sequential emulation) and finds them touched (L2)
        Assert.That(r.DramRoundTrips + r.L2RoundTrips, Is.EqualTo(2 * hops));
        Assert.That(r.MaxWarpDramRoundTrips + r.MaxWarpL2RoundTrips, Is.GreaterThanOrEqualTo(hops));
        Assert.That(r.MaxWarpDramRoundTrips, Is.EqualTo(hops));
        Assert.That(r.ModuleName, Is.EqualTo("test.cu"));
        Assert.That(r.InGraph, Is.False);
    }

    /// <summary>An atom whose result nothing reads (ptxas issues a red) starts no round trip; one whose result is read does.</summary>
    [Test]
    public void AnAtomicWhoseResultIsUnused_IsNoRoundTrip()
    {
        using var kit = new EmuKit(Source);
        var counter = kit.Zeros<int>(2);
        var dout = kit.Zeros<int>(32);
        var unused = kit.Launch("atomics", 1, 32, 0, counter, 0, dout);
        Assert.That(unused.DramRoundTrips + unused.L2RoundTrips, Is.Zero, "the unused result: no trip");
        var used = kit.Launch("atomics", 1, 32, 0, counter, 1, dout);
        Assert.That(used.DramRoundTrips + used.L2RoundTrips, Is.EqualTo(1), "the returned value is stored: one trip");
        Assert.That(kit.Download<int>(counter, 2), Is.EqualTo(new[] { 64, 32 }));
    }

    [Test]
    public void IndependentLoads_ShareOneTrip()
    {
        using var kit = new EmuKit(Source);
        int n = 128;
        var a = kit.Upload(Enumerable.Range(0, n).Select(i => (float)i).ToArray());
        var dout = kit.Zeros<float>(n);
        var r = kit.Launch("independent", 2, 64, 0, a, a, a, a, dout);
        Assert.That(r.Warps, Is.EqualTo(4));
        Assert.That(r.DramRoundTrips + r.L2RoundTrips, Is.EqualTo(4), "one trip per warp: the four loads are issued before any is used");
        Assert.That(r.MaxWarpDramRoundTrips, Is.EqualTo(1));
        // the same array four times: 4 x 128 floats requested, 128 x 4 bytes distinct; the rest is cache reuse (+ the stores are distinct)
        Assert.That(r.DistinctSectors * 32, Is.EqualTo(2 * n * 4));
        Assert.That(r.CacheReuseBytes, Is.EqualTo(3 * n * 4));
        Assert.That(r.RereadSectors * 32, Is.EqualTo(n * 4), "the re-read set: the array, each sector once (not the stores)");
    }

    [Test]
    public void DependentRereadOfTheSameSectors_IsAnL2Trip()
    {
        using var kit = new EmuKit(Source);
        var idx = kit.Upload(Enumerable.Range(0, 32).ToArray());
        var dout = kit.Zeros<int>(32);
        var r = kit.Launch("reread", 1, 32, 0, idx, dout);
        Assert.That(kit.Download<int>(dout, 32), Is.EqualTo(Enumerable.Range(0, 32).ToArray()));
        Assert.That((r.DramRoundTrips, r.L2RoundTrips), Is.EqualTo((1L, 1L)));
        Assert.That((r.MaxWarpDramRoundTrips, r.MaxWarpL2RoundTrips), Is.EqualTo((1L, 1L)));
    }

    /// <summary>
    /// The re-read set counts sectors a load touches after an earlier load, not after a prefetch: x prefetched then loaded
    /// once has none; loaded again, all of its 16 sectors (and the stores of out, touched once, none).
    /// </summary>
    [Test]
    public void RereadSet_CountsLoadsAfterLoads_NotLoadsAfterAPrefetch()
    {
        using var kit = new EmuKit(Source);
        var x = kit.Upload(Enumerable.Range(0, 128).Select(i => (float)i).ToArray());
        var dout = kit.Zeros<float>(128);
        var once = kit.Launch("prefetch_then_load", 1, 128, 0, x, 0, dout);
        Assert.That(once.DistinctSectors, Is.EqualTo(32), "x and out: 16 sectors each");
        Assert.That(once.RereadSectors, Is.Zero, "a load after a prefetch is no re-read");
        Assert.That(once.CacheReuseBytes, Is.Zero);
        var twice = kit.Launch("prefetch_then_load", 1, 128, 0, x, 1, dout);
        Assert.That(kit.Download<float>(dout, 2), Is.EqualTo(new[] { 0f + 1f, 1f + 0f }));
        Assert.That(twice.RereadSectors, Is.EqualTo(16), "x, each sector once");
        Assert.That(twice.CacheReuseBytes, Is.EqualTo(128 * 4));
    }

    [Test]
    public void GuardedLoadsInIfThenBlocks_ShareOneTrip()
    {
        using var kit = new EmuKit(Source);
        var x = kit.Upload(Enumerable.Range(0, 128).Select(i => (float)i).ToArray());
        var dout = kit.Zeros<float>(32);
        var r = kit.Launch("guarded", 1, 32, 0, x, 128, dout);
        Assert.That(kit.Download<float>(dout, 32)[1], Is.EqualTo(1 + 33 + 65 + 97));
        Assert.That((r.DramRoundTrips, r.L2RoundTrips), Is.EqualTo((1L, 0L)));
    }

    [Test]
    public void RolledLoop_OneTripPerIteration()
    {
        using var kit = new EmuKit(Source);
        const int iters = 5;
        var x = kit.Upload(Enumerable.Range(0, 32 * iters).Select(i => 1f).ToArray());
        var dout = kit.Zeros<float>(32);
        var r = kit.Launch("rolled", 1, 32, 0, x, iters, dout);
        Assert.That(kit.Download<float>(dout, 32), Is.All.EqualTo((float)iters));
        Assert.That(r.DramRoundTrips, Is.EqualTo(iters));
    }

    /// <summary>
    /// Data a kernel wrote is still in L2 for the next kernel (an L2 trip, its sectors counted resident) until more than
    /// EmulatorOptions.L2ResidentBytes of DRAM traffic has passed (here 4 KiB; an 8 KiB copy in between evicts it).
    /// </summary>
    [Test]
    public void DataAnEarlierKernelWrote_IsL2ResidentUntilEnoughTrafficPassed()
    {
        using var kit = new EmuKit(Source, new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null, L2ResidentBytes = 4096 });
        var a = kit.Zeros<float>(32);
        var b = kit.Zeros<float>(32);
        var big = kit.Zeros<float>(2048);
        var big2 = kit.Zeros<float>(2048);
        kit.Launch("fill", 1, 32, 0, a);
        var soon = kit.Launch("copy_plus_one", 1, 32, 0, a, b);
        Assert.That(soon.DistinctSectors, Is.EqualTo(8), "a's 4 sectors read, b's 4 written");
        Assert.That(soon.L2ResidentSectors, Is.EqualTo(4), "a was written by the launch before");
        Assert.That((soon.DramRoundTrips, soon.L2RoundTrips), Is.EqualTo((0L, 1L)));
        kit.Launch("copy_plus_one", 64, 32, 0, big, big2);   // 16 KiB of DRAM traffic (big is not kernel-written: not tracked)
        var late = kit.Launch("copy_plus_one", 1, 32, 0, a, b);
        Assert.That(late.L2ResidentSectors, Is.EqualTo(0));
        Assert.That((late.DramRoundTrips, late.L2RoundTrips), Is.EqualTo((1L, 0L)));
        Assert.That(kit.Download<float>(b, 32)[5], Is.EqualTo(6f));
    }

    /// <summary>
    /// A launch's writes are taken to happen at its end: a kernel that streams 8 KiB, twice the 4 KiB window, and then writes
    /// 128 bytes leaves them resident for the next launch (its own traffic came before them); 16 KiB of another launch's
    /// traffic after it still evicts them.
    /// </summary>
    [Test]
    public void AKernelsOutput_IsNotEvictedByItsOwnTraffic()
    {
        using var kit = new EmuKit(Source, new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null, L2ResidentBytes = 4096 });
        var x = kit.Upload(Enumerable.Repeat(1f, 2048).ToArray());
        var sums = kit.Zeros<float>(32);
        var b = kit.Zeros<float>(32);
        var big = kit.Zeros<float>(4096);
        var big2 = kit.Zeros<float>(4096);
        var producer = kit.Launch("sum_all", 1, 32, 0, x, 2048, sums);
        Assert.That(producer.DistinctSectors * 32, Is.EqualTo(8192 + 128), "x streamed, the sums written");
        var next = kit.Launch("copy_plus_one", 1, 32, 0, sums, b);
        Assert.That(next.L2ResidentSectors, Is.EqualTo(4), "the sums: written at the producer's end, after its 8 KiB");
        Assert.That(kit.Download<float>(b, 32), Is.All.EqualTo(65f));
        kit.Launch("copy_plus_one", 128, 32, 0, big, big2);   // 32 KiB of traffic, then the sums again
        var later = kit.Launch("copy_plus_one", 1, 32, 0, sums, b);
        Assert.That(later.L2ResidentSectors, Is.Zero, "evicted by the traffic of the launches after");
    }

    [Test]
    public void SpecialFunctionsAndShuffles_AreCountedPerWarp()
    {
        using var kit = new EmuKit(Source);
        var x = kit.Upload(new float[64]);
        var dout = kit.Zeros<float>(64);
        var r = kit.Launch("sfu_shuffle", 1, 64, 0, x, dout);
        Assert.That(kit.Download<float>(dout, 64), Is.All.EqualTo(32f));
        Assert.That(r.SpecialFunctionInstructions, Is.EqualTo(2), "one ex2.approx per warp");
        Assert.That(r.Shuffles, Is.EqualTo(2 * 5));
        Assert.That(r.MaxWarpInstructions, Is.EqualTo(r.WarpInstructions / 2), "both warps run the same instructions");
    }
}
