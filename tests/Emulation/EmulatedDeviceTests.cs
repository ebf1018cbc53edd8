using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>IDevice behaviour of the emulator: graphs, memory rules, module loading errors, attributes.</summary>
public class EmulatedDeviceTests
{
    internal const string Source = """
        extern "C" __global__ void add_scalar(float* y, float v, int n) {
          int i = blockIdx.x * blockDim.x + threadIdx.x;
          if (i < n) y[i] += v;
        }
        """;

    [Test]
    public void GraphCaptureCopiesArgumentsAndReplays()
    {
        using var kit = new EmuKit(Source);
        var dev = kit.Dev;
        var y = kit.Zeros<float>(40);
        var k = dev.GetKernel(kit.Module, "add_scalar");
        using var stream = dev.CreateStream();
        using var pinned = dev.AllocatePinned(40 * 4);
        dev.BeginCapture(stream);
        Assert.That(stream.IsCapturing, Is.True);
        var buf = new byte[64];
        var a = new KernelArgs(buf, new nint[4]);
        a.Add(y.Address); a.Add(1.5f); a.Add(40);
        dev.Launch(k, new LaunchConfig(2, 32), stream, a);
        Array.Clear(buf); // the graph must have copied the argument bytes at capture time
        dev.CopyToHostAsync(pinned, 0, y, 40 * 4, stream);
        using var graph = dev.EndCapture(stream);
        Assert.That(graph.KernelNodeCount, Is.EqualTo(1));
        Assert.That(kit.Download<float>(y, 40), Is.All.EqualTo(0f), "nothing ran during capture");
        using var exec = dev.Instantiate(graph);
        dev.Launch(exec, stream);
        dev.Launch(exec, stream);
        dev.Synchronize(stream);
        Assert.That(kit.Download<float>(y, 40), Is.All.EqualTo(3f));
        Assert.That(MemoryMarshal.Cast<byte, float>(pinned.Span).ToArray(), Is.All.EqualTo(3f), "the captured device-to-host copy ran");
        Assert.That(dev.Launches.Count(l => l.Kernel == "add_scalar"), Is.EqualTo(2));
        dev.ClearLaunches();
        Assert.That(dev.Launches, Is.Empty);
    }

    [Test]
    public void MemoryRulesAndInfo()
    {
        using var dev = new EmulatedDevice(new EmulatorOptions { HeapLimitBytes = 1 << 20 });
        var p = dev.Allocate(1000);
        var q = dev.Allocate(10);
        Assert.That(p.Address % 256, Is.Zero);
        Assert.That(q.Address % 256, Is.Zero);
        var back = new byte[1000];
        dev.CopyToHost(back, p);
        Assert.That(back, Is.All.EqualTo(dev.Options.Modes.Poison), "fresh allocations are poison-filled, not zeroed");
        Assert.That(() => dev.Allocate(2 << 20), Throws.InstanceOf<DeviceOutOfMemoryException>());
        Assert.That(() => dev.CopyToDevice(q, new byte[11]), Throws.InstanceOf<DeviceException>().With.Message.Contains("not inside a live allocation"));
        dev.Free(p);
        Assert.That(() => dev.Free(p), Throws.InstanceOf<DeviceException>().With.Message.Contains("double free"));
        var r = dev.Allocate(1000);
        Assert.That(r.Address, Is.Not.EqualTo(p.Address), "freed ranges are quarantined (never reused)");
        Assert.That(dev.GetMemoryInfo().TotalBytes, Is.EqualTo(80L << 30));
        Assert.That(dev.Info.Arch, Is.EqualTo("sm_90"));
        Assert.That(dev.Info.MultiprocessorCount, Is.EqualTo(132));
    }

    [Test]
    public void UnknownInstructionFailsAtLoadNamingTheLine()
    {
        using var dev = new EmulatedDevice();
        string ptx = ".version 7.8\n.target sm_80\n.address_size 64\n.visible .entry k(.param .u64 p)\n{\n.reg .b32 %r<3>;\nfrobnicate.b32 %r1, %r2;\nret;\n}\n";
        var m = new CompiledModule { Name = "bad.ptx", PtxArch = "compute_80", Ptx = ptx };
        Assert.That(() => dev.LoadModule(m), Throws.InstanceOf<PtxLoadException>().With.Message.Contains("PTX line 7").And.Message.Contains("frobnicate"));
        var m2 = m with { Ptx = ptx.Replace("frobnicate.b32 %r1, %r2;", "add.s32 %r1, %r9, 1;") };
        Assert.That(() => dev.LoadModule(m2), Throws.InstanceOf<PtxLoadException>().With.Message.Contains("PTX line 7").And.Message.Contains("%r9"));
    }

    [Test]
    public void AttributesFromPtx()
    {
        const string src = """
            extern "C" __global__ void __launch_bounds__(256) k(float* y) {
              __shared__ float s[300];
              s[threadIdx.x] = 1; __syncthreads(); y[threadIdx.x] = s[255 - threadIdx.x];
            }
            """;
        using var kit = new EmuKit(src);
        var k = kit.Dev.GetKernel(kit.Module, "k");
        var at = kit.Dev.GetAttributes(k);
        Assert.That(at.StaticSharedBytes, Is.EqualTo(1200));
        Assert.That(at.MaxThreadsPerBlock, Is.EqualTo(256));
        Assert.That(at.MaxDynamicSharedBytes, Is.EqualTo(48 * 1024 - 1200));
        var y = kit.Zeros<float>(512);
        Assert.That(() => kit.Launch("k", 1, 512, 0, y), Throws.InstanceOf<DeviceException>().With.Message.Contains(".maxntid 256"));
        Assert.That(kit.Dev.MaxActiveBlocksPerMultiprocessor(k, 256, 0), Is.GreaterThan(0));
    }
}

/// <summary>Device printf (vprintf system call) and __noinline__ calls with local-memory frames.</summary>
public class PrintfTests
{
    [Test]
    public void PrintfFormatsArguments()
    {
        const string src = """
            extern "C" __global__ void hello(int base) {
              if (threadIdx.x < 2) printf("t=%d v=%f w=%.2f u=%u\n", threadIdx.x + base, 0.5f * threadIdx.x, 1.0f / 3, 7u);
            }
            """;
        var sw = new StringWriter();
        using var kit = new EmuKit(src, new Qwen3Cuda.Runtime.Emulation.EmulatorOptions { Sequential = true, PrintfOutput = sw });
        kit.Launch("hello", 1, 32, 0, 10);
        Assert.That(sw.ToString(), Is.EqualTo("t=10 v=0.000000 w=0.33 u=7\nt=11 v=0.500000 w=0.33 u=7\n"));
    }
}
