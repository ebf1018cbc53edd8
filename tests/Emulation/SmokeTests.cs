using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.Emulation;

public class SmokeTests
{
    private const string Source = """
        struct P { int n; float s; int pad; };
        extern "C" __global__ void saxpy(float* y, const float* x, P p) {
          int i = blockIdx.x * blockDim.x + threadIdx.x;
          if (i >= p.n) return;
          float v = x[i];
          for (int k = 0; k < 5; k++) v = v * p.s + 1.0f;
          y[i] = v + __shfl_xor_sync(0xffffffff, v, 1);
        }
        extern "C" __global__ void block_sum(float* out, const float* in, int n) {
          __shared__ float s[32];
          float acc = 0; for (int i = threadIdx.x; i < n; i += blockDim.x) acc += in[i];
          for (int o = 16; o > 0; o >>= 1) acc += __shfl_down_sync(0xffffffff, acc, o);
          if ((threadIdx.x & 31) == 0) s[threadIdx.x >> 5] = acc;
          __syncthreads();
          if (threadIdx.x == 0) { float t = 0; for (int w = 0; w < blockDim.x / 32; w++) t += s[w]; atomicAdd(out, t); }
        }
        """;

    [Test]
    public void SaxpyWithStructParamAndShuffle()
    {
        using var kit = new EmuKit(Source);
        int n = 100;
        var x = Enumerable.Range(0, n).Select(i => i * 0.25f).ToArray();
        var dx = kit.Upload(x);
        var dy = kit.Zeros<float>(n);
        kit.Launch("saxpy", 4, 32, 0, dy, dx, new Raw12(n, 0.5f, 0));
        var y = kit.Download<float>(dy, n);
        float F(int i) { float v = x[i]; for (int k = 0; k < 5; k++) v = MathF.FusedMultiplyAdd(v, 0.5f, 1f); return v; }
        for (int i = 0; i < n; i++)
        {
            int j = i ^ 1;
            // exact: the emulator runs fma.rn like MathF.FusedMultiplyAdd and one f32 add
            Assert.That(y[i], Is.EqualTo(F(i) + F(j)), $"element {i}");
        }
    }

    [Test]
    public void BlockSumWithSharedMemoryBarrierAndAtomic()
    {
        using var kit = new EmuKit(Source);
        int n = 1000;
        var x = Enumerable.Range(0, n).Select(i => (float)(i % 7)).ToArray();
        var din = kit.Upload(x);
        var dout = kit.Zeros<float>(1);
        var rec = kit.Launch("block_sum", 3, 128, 0, dout, din, n);
        float got = kit.Download<float>(dout, 1)[0];
        // small integers: every partial sum is exact in f32
        Assert.That(got, Is.EqualTo(3 * x.Sum()));
        Assert.That(rec.Barriers, Is.EqualTo(3));
        Assert.That(rec.GlobalAtomics, Is.EqualTo(3));
    }
}
