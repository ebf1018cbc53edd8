using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>Atomics under contention, dynamic shared memory, bf16 conversions, cp.async, counters.</summary>
public class MemoryTests
{
    private const string Source = """
        __device__ float atomicMaxFloat(float* addr, float v) {
          int* p = (int*)addr; int old = *p, assumed;
          do { assumed = old; if (__int_as_float(assumed) >= v) break; old = atomicCAS(p, assumed, __float_as_int(v)); } while (old != assumed);
          return __int_as_float(old);
        }
        extern "C" __global__ void contention(int* counters, float* fmax, unsigned* wrap, int* order) {
          __shared__ int s;
          if (threadIdx.x == 0) s = 0;
          __syncthreads();
          int t = blockIdx.x * blockDim.x + threadIdx.x;
          atomicAdd(&counters[t % 3], 1);
          atomicMaxFloat(fmax, (float)((t * 37) % 1001));
          atomicInc(wrap, 9u);
          int mine = atomicAdd(&s, 1);
          __syncthreads();
          if (threadIdx.x == 0) atomicAdd(&counters[3], s);
          order[t] = mine;
        }
        extern "C" __global__ void reverse_dyn(float* out, const float* in) {
          extern __shared__ float buf[];
          int t = threadIdx.x, n = blockDim.x;
          buf[t] = in[blockIdx.x * n + t];
          __syncthreads();
          out[blockIdx.x * n + t] = buf[n - 1 - t];
        }
        extern "C" __global__ void to_bf16(unsigned short* out, unsigned* packed, const float* in, int n) {
          int t = blockIdx.x * blockDim.x + threadIdx.x;
          if (t >= n) return;
          unsigned short r;
          asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(in[t]));
          out[t] = r;
          unsigned p;
          asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(p) : "f"(in[t]), "f"(-in[t]));
          packed[t] = p;
        }
        extern "C" __global__ void copy_async(float* out, const float* in, int valid) {
          __shared__ __align__(16) float tile[128];
          int t = threadIdx.x;
          unsigned dst = (unsigned)__cvta_generic_to_shared(&tile[4 * t]);
          int bytes = (4 * t < valid) ? 16 : 0;
          asm volatile("cp.async.cg.shared::cta.global.L2::128B [%0], [%1], 16, %2;" :: "r"(dst), "l"(in + 4 * t), "r"(bytes));
          asm volatile("cp.async.commit_group;");
          asm volatile("cp.async.wait_group 0;");
          __syncthreads();
          for (int i = 0; i < 4; i++) out[4 * t + i] = tile[(4 * t + 4 + i) % 128];
        }
        extern "C" __global__ void strided(float* out, const float* in, int stride) {
          int t = threadIdx.x;
          out[t] = in[t * stride];
        }
        """;

    [Test]
    public void AtomicsUnderContention([Values(true, false)] bool sequential)
    {
        using var kit = new EmuKit(Source, new EmulatorOptions { Sequential = sequential, PrintfOutput = TextWriter.Null });
        int blocks = 8, threads = 96, n = blocks * threads;
        var dc = kit.Zeros<int>(4);
        var dm = kit.Upload(new[] { -1f });
        var dw = kit.Zeros<uint>(1);
        var dor = kit.Zeros<int>(n);
        kit.Launch("contention", blocks, threads, 0, dc, dm, dw, dor);
        var c = kit.Download<int>(dc, 4);
        Assert.That(c[0] + c[1] + c[2], Is.EqualTo(n));
        Assert.That(c[0], Is.EqualTo(n / 3));
        Assert.That(c[3], Is.EqualTo(n), "shared-memory atomic counts per block, summed");
        float want = Enumerable.Range(0, n).Max(t => (float)((t * 37) % 1001));
        Assert.That(kit.Download<float>(dm, 1)[0], Is.EqualTo(want));
        Assert.That(kit.Download<uint>(dw, 1)[0], Is.EqualTo((uint)(n % 10)), "atomicInc wraps at 9");
        var order = kit.Download<int>(dor, n);
        for (int b = 0; b < blocks; b++)
            Assert.That(order.Skip(b * threads).Take(threads).OrderBy(x => x), Is.EqualTo(Enumerable.Range(0, threads)), $"block {b} tickets");
    }

    [Test]
    public void DynamicSharedMemory()
    {
        using var kit = new EmuKit(Source);
        int n = 256, blocks = 3;
        var x = Enumerable.Range(0, n * blocks).Select(i => (float)i).ToArray();
        var din = kit.Upload(x);
        var dout = kit.Zeros<float>(n * blocks);
        kit.Launch("reverse_dyn", blocks, n, n * 4, dout, din);
        var got = kit.Download<float>(dout, n * blocks);
        for (int b = 0; b < blocks; b++)
            for (int t = 0; t < n; t++) Assert.That(got[b * n + t], Is.EqualTo(x[b * n + n - 1 - t]));
        var k = kit.Dev.GetKernel(kit.Module, "reverse_dyn");
        Assert.Throws<DeviceException>(() => kit.Launch("reverse_dyn", 1, 64, 64 * 1024, dout, din), "64 KiB dynamic smem without opt-in");
        kit.Dev.SetMaxDynamicSharedMemory(k, 100 * 1024);
        kit.Launch("reverse_dyn", 1, 64, 64 * 1024, dout, din);
    }

    private static ushort RefBf16(float f)
    {
        if (float.IsNaN(f)) return 0x7FFF;
        uint u = BitConverter.SingleToUInt32Bits(f);
        u += 0x7FFF + ((u >> 16) & 1);
        return (ushort)(u >> 16);
    }

    [Test]
    public void Bf16ConversionsRoundNearestEven()
    {
        using var kit = new EmuKit(Source);
        var vals = new List<float> { 0f, -0f, 1f, -1f, 1.00390625f, 1.01171875f, 3.4e38f, -3.4e38f, float.PositiveInfinity, float.NegativeInfinity,
            1e-40f, -1e-42f, 65504f, 0.1f, 1.0f / 3, BitConverter.UInt32BitsToSingle(0x3F808000), BitConverter.UInt32BitsToSingle(0x3F818000),
            BitConverter.UInt32BitsToSingle(0x3F808001), BitConverter.UInt32BitsToSingle(0x7F7FFFFF) };
        var rnd = new Random(3);
        for (int i = 0; i < 200; i++) vals.Add(BitConverter.UInt32BitsToSingle((uint)rnd.NextInt64(0, 0x7F800000)) * (i % 2 == 0 ? 1 : -1));
        int n = vals.Count;
        var din = kit.Upload(vals.ToArray());
        var dout = kit.Zeros<ushort>(n);
        var dp = kit.Zeros<uint>(n);
        kit.Launch("to_bf16", (n + 63) / 64, 64, 0, dout, dp, din, n);
        var got = kit.Download<ushort>(dout, n);
        var packed = kit.Download<uint>(dp, n);
        for (int i = 0; i < n; i++)
        {
            Assert.That(got[i], Is.EqualTo(RefBf16(vals[i])), $"value {vals[i]:R} (0x{BitConverter.SingleToUInt32Bits(vals[i]):x8})");
            Assert.That(packed[i], Is.EqualTo(((uint)RefBf16(vals[i]) << 16) | RefBf16(-vals[i])), "bf16x2: first operand in the high half");
        }
    }

    [Test]
    public void CpAsyncZeroFillsBeyondSourceSize()
    {
        using var kit = new EmuKit(Source);
        var x = Enumerable.Range(0, 128).Select(i => (float)i + 0.5f).ToArray();
        var din = kit.Upload(x);
        var dout = kit.Zeros<float>(128);
        int valid = 64;
        var rec = kit.Launch("copy_async", 1, 32, 0, dout, din, valid);
        var got = kit.Download<float>(dout, 128);
        for (int i = 0; i < 128; i++)
        {
            int src = (i + 4) % 128;
            Assert.That(got[i], Is.EqualTo(src < valid ? x[src] : 0f), $"element {i}");
        }
        Assert.That(rec.CpAsyncBytes, Is.EqualTo(32 * 16));
    }

    [TestCase(1, 4, 1.0)]
    [TestCase(2, 8, 0.5)]
    [TestCase(8, 32, 0.125)]
    public void CoalescingCounters(int stride, int sectorsPerLoad, double loadEfficiency)
    {
        using var kit = new EmuKit(Source);
        var din = kit.Zeros<float>(32 * stride);
        var dout = kit.Zeros<float>(32);
        var rec = kit.Launch("strided", 1, 32, 0, dout, din, stride);
        Assert.That(rec.GlobalLoadRequests, Is.EqualTo(1));
        Assert.That(rec.GlobalStoreRequests, Is.EqualTo(1));
        Assert.That(rec.GlobalLoadSectors, Is.EqualTo(sectorsPerLoad));
        Assert.That(rec.GlobalStoreSectors, Is.EqualTo(4));
        Assert.That(rec.GlobalLoadBytes, Is.EqualTo(128));
        Assert.That(rec.DistinctSectors, Is.EqualTo(sectorsPerLoad + 4));
        Assert.That(rec.CoalescingEfficiency, Is.EqualTo(256.0 / ((sectorsPerLoad + 4) * 32)).Within(1e-12));
        Assert.That(128.0 / (sectorsPerLoad * 32), Is.EqualTo(loadEfficiency).Within(1e-12));
    }
}
