using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>A kernel that never finishes fails with the watchdog's message instead of hanging the process.</summary>
public class WatchdogTests
{
    private const string Source = """
        // waits for a flag nobody sets (on a GPU another block or the host would)
        extern "C" __global__ void spin(volatile int* flag, int* out) {
          while (flag[0] == 0) { }
          out[threadIdx.x] = 1;
        }
        extern "C" __global__ void finishes(volatile int* flag, int* out) {
          if (flag[0] == 0) out[threadIdx.x] = 2;
        }
        """;

    [Test]
    public void SpinWaitThatNeverEndsIsAWatchdogFault()
    {
        using var kit = new EmuKit(Source, new EmulatorOptions { Sequential = true, Watchdog = TimeSpan.FromMilliseconds(300), PrintfOutput = TextWriter.Null });
        var flag = kit.Zeros<int>(1);
        var outp = kit.Zeros<int>(64);
        var e = Assert.Throws<EmulatorFaultException>(() => kit.Launch("spin", new Dim3(2), new Dim3(64), 0, flag, outp))!;
        Assert.That(e.Message, Does.StartWith("watchdog: kernel spin ran longer than 0.3 s"));
        Assert.That(e.Message, Does.Contain("block (0,0,0)").And.Contain("warp 1: running, PTX line"));
        // the device stays usable: a kernel that ends runs normally on it afterwards
        kit.Launch("finishes", new Dim3(1), new Dim3(64), 0, flag, outp);
        Assert.That(kit.Download<int>(outp, 64), Is.All.EqualTo(2));
    }
}
