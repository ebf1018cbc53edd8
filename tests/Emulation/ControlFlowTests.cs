namespace Qwen3Cuda.Tests.Emulation;

/// <summary>Divergence and reconvergence (min-PC) in nested loops, early exits, calls.</summary>
public class ControlFlowTests
{
    private const string Source = """
        __device__ __noinline__ int twice_plus(int a, int b) { return 2 * a + b; }
        extern "C" __global__ void nested(int* out, int n) {
          int t = blockIdx.x * blockDim.x + threadIdx.x;
          if (t >= n) return;
          int acc = 0;
          for (int i = 0; i < (t % 7) + 1; i++) {
            if ((i + t) % 3 == 0) continue;
            for (int j = 0; j < (t % 5); j++) {
              if (j == 3 && (t & 1)) break;
              acc += i * j + (t & 3);
            }
            if (acc > 40 + t) break;
          }
          int w = __shfl_xor_sync(0xffffffffu & __activemask(), acc, 0);
          out[t] = twice_plus(acc, w);
        }
        extern "C" __global__ void collatz(int* out, int n) {
          int t = blockIdx.x * blockDim.x + threadIdx.x;
          if (t >= n) return;
          unsigned v = t + 1; int steps = 0;
          while (v != 1) { v = (v & 1) ? 3 * v + 1 : v / 2; steps++; }
          __syncwarp(__activemask());
          out[t] = steps;
        }
        extern "C" __global__ void early_exit_then_barrier(float* out, int n) {
          __shared__ float s[128];
          int t = threadIdx.x;
          if (t >= n) return;
          s[t] = (float)t;
          __syncthreads();
          out[t] = s[n - 1 - t];
        }
        """;

    private static int Nested(int t)
    {
        int acc = 0;
        for (int i = 0; i < (t % 7) + 1; i++)
        {
            if ((i + t) % 3 == 0) continue;
            for (int j = 0; j < (t % 5); j++)
            {
                if (j == 3 && (t & 1) != 0) break;
                acc += i * j + (t & 3);
            }
            if (acc > 40 + t) break;
        }
        return 3 * acc;
    }

    [Test]
    public void NestedLoopsWithBreakContinueAndCall()
    {
        using var kit = new EmuKit(Source);
        int n = 77;
        var d = kit.Zeros<int>(n);
        var rec = kit.Launch("nested", 3, 32, 0, d, n);
        var got = kit.Download<int>(d, n);
        for (int t = 0; t < n; t++) Assert.That(got[t], Is.EqualTo(Nested(t)), $"thread {t}");
        Assert.That(rec.DivergentBranches, Is.GreaterThan(0));
    }

    [Test]
    public void DataDependentWhileLoop()
    {
        using var kit = new EmuKit(Source);
        int n = 200;
        var d = kit.Zeros<int>(n);
        kit.Launch("collatz", 4, 64, 0, d, n);
        var got = kit.Download<int>(d, n);
        for (int t = 0; t < n; t++)
        {
            uint v = (uint)t + 1; int steps = 0;
            while (v != 1) { v = (v & 1) != 0 ? 3 * v + 1 : v / 2; steps++; }
            Assert.That(got[t], Is.EqualTo(steps), $"thread {t}");
        }
    }

    [Test]
    public void ExitedThreadsDoNotBlockBarrier()
    {
        using var kit = new EmuKit(Source);
        int n = 50; // warp 1 partially exits, warps 2-3 exit entirely before the barrier
        var d = kit.Zeros<float>(128);
        kit.Launch("early_exit_then_barrier", 1, 128, 0, d, n);
        var got = kit.Download<float>(d, n);
        for (int t = 0; t < n; t++) Assert.That(got[t], Is.EqualTo((float)(n - 1 - t)));
    }
}
