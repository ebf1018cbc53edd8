using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// Strict streams (docs/emulator.md): queued work runs only when the host synchronises; async uploads read host memory
/// when they run; events order streams; results read before a synchronisation are poison. Each test shows the
/// emulator catching a host-side mistake that eager streams would hide.
/// </summary>
public class StrictStreamsTests
{
    private const string Source = """
        extern "C" __global__ void fill(float* y, float v, int n) {
          int i = blockIdx.x * blockDim.x + threadIdx.x;
          if (i < n) y[i] = v;
        }
        extern "C" __global__ void add(float* y, const float* x, int n) {
          int i = blockIdx.x * blockDim.x + threadIdx.x;
          if (i < n) y[i] += x[i];
        }
        extern "C" __global__ void oob(float* y) { y[1 << 20] = 1.0f; }
        """;

    private static EmulatorOptions Strict(int seed = 0) =>
        new() { Sequential = true, PrintfOutput = TextWriter.Null, Modes = EmulatorModes.Fast with { StrictStreams = true, ScheduleSeed = seed } };

    private static void Launch(EmuKit kit, string kernel, DeviceStream s, params object[] args)
    {
        var a = new KernelArgs(new byte[64], new nint[8]);
        foreach (var x in args)
            switch (x)
            {
                case DevicePtr p: a.Add(p.Address); break;
                case float f: a.Add(f); break;
                case int i: a.Add(i); break;
            }
        kit.Dev.Launch(kit.Dev.GetKernel(kit.Module, kernel), new LaunchConfig(1, 32), s, a);
    }

    [Test]
    public void WorkRunsAtTheSynchronisation_AndResultsReadBeforeItArePoison()
    {
        using var kit = new EmuKit(Source, Strict());
        var dev = kit.Dev;
        var y = kit.Zeros<float>(32);
        using var s = dev.CreateStream();
        using var pinned = dev.AllocatePinned(32 * 4);
        Launch(kit, "fill", s, y, 2f, 32);
        dev.CopyToHostAsync(pinned, 0, y, 32 * 4, s);
        Assert.That(dev.Launches, Is.Empty, "nothing ran at the launch");
        var early = MemoryMarshal.Cast<byte, float>(pinned.Span).ToArray();
        Assert.That(early.All(float.IsNaN), "read before synchronising: poison (NaN bytes for seed 0)");
        dev.Synchronize(s);
        Assert.That(dev.Launches, Has.Count.EqualTo(1));
        Assert.That(MemoryMarshal.Cast<byte, float>(pinned.Span).ToArray(), Is.All.EqualTo(2f));
    }

    [Test]
    public void EagerStreams_RunAtTheLaunch()
    {
        using var kit = new EmuKit(Source, Strict() with { Modes = EmulatorModes.Fast });
        var y = kit.Zeros<float>(32);
        Launch(kit, "fill", kit.Dev.DefaultStream, y, 2f, 32);
        Assert.That(kit.Dev.Launches, Has.Count.EqualTo(1), "eager: the kernel ran inside Launch");
    }

    [Test]
    public void AsyncUpload_ReadsHostMemoryWhenItRuns_ARewriteBeforeThenIsReported()
    {
        using var kit = new EmuKit(Source, Strict());
        var dev = kit.Dev;
        var y = kit.Zeros<float>(32);
        using var s = dev.CreateStream();
        using var pinned = dev.AllocatePinned(32 * 4);
        var f = MemoryMarshal.Cast<byte, float>(pinned.Span);
        f.Fill(1f);
        dev.CopyToDeviceAsync(y, pinned, 0, 32 * 4, s);
        f[5] = 7f;   // the bug: the copy has not run yet
        var e = Assert.Throws<DeviceException>(() => dev.Synchronize(s))!;
        Assert.That(e.Message, Does.Contain("host changed pinned buffer bytes after CopyToDeviceAsync queued a copy").And.Contain("pinned offset 2"));

        // the right way: wait for an event recorded after the copy, then rewrite
        using var done = dev.CreateEvent();
        f.Fill(1f);
        dev.CopyToDeviceAsync(y, pinned, 0, 32 * 4, s);
        dev.Record(done, s);
        dev.Synchronize(done);
        f.Fill(9f);
        dev.Synchronize(s);
        Assert.That(kit.Download<float>(y, 32), Is.All.EqualTo(1f));
    }

    [Test]
    public void PinnedBufferFreedBeforeItsCopyRan_IsReported()
    {
        using var kit = new EmuKit(Source, Strict());
        var dev = kit.Dev;
        var y = kit.Zeros<float>(32);
        using var s = dev.CreateStream();
        var pinned = dev.AllocatePinned(32 * 4);
        dev.CopyToDeviceAsync(y, pinned, 0, 32 * 4, s);
        pinned.Dispose();
        Assert.That(() => dev.Synchronize(s), Throws.InstanceOf<DeviceException>().With.Message.Contains("was freed before the copy ran"));
    }

    [Test]
    public void EventsOrderStreams_WithoutTheWaitTheConsumerRunsFirst()
    {
        foreach (bool wait in new[] { true, false })
        {
            using var kit = new EmuKit(Source, Strict());
            var dev = kit.Dev;
            var x = kit.Zeros<float>(32);
            var y = kit.Zeros<float>(32);
            using var producer = dev.CreateStream();
            using var consumer = dev.CreateStream();
            using var ready = dev.CreateEvent();
            Launch(kit, "fill", producer, x, 5f, 32);
            dev.Record(ready, producer);
            if (wait) dev.Wait(consumer, ready);
            Launch(kit, "add", consumer, y, x, 32);
            dev.Synchronize(consumer);
            var got = kit.Download<float>(y, 32);   // a synchronous copy waits for everything, the producer included
            Assert.That(got, Is.All.EqualTo(wait ? 5f : 0f), wait ? "the consumer waited for the producer's event" : "without the wait the consumer ran before the producer");
        }
    }

    [Test]
    public void DeviceSynchronise_InterleavesIndependentStreamsBySeed()
    {
        var outcomes = new HashSet<float>();
        for (int seed = 0; seed < 16; seed++)
        {
            using var kit = new EmuKit(Source, Strict(seed));
            var dev = kit.Dev;
            var y = kit.Zeros<float>(32);
            using var a = dev.CreateStream();
            using var b = dev.CreateStream();
            Launch(kit, "fill", a, y, 1f, 32);   // two unordered writers of the same buffer: a race
            Launch(kit, "fill", b, y, 2f, 32);
            dev.Synchronize();
            outcomes.Add(kit.Download<float>(y, 1)[0]);
        }
        Assert.That(outcomes, Is.EquivalentTo(new[] { 1f, 2f }), "either writer may finish last, depending on the schedule seed");
    }

    [Test]
    public void AFaultSurfacesAtTheSynchronisation_AndDiscardsTheRest()
    {
        using var kit = new EmuKit(Source, Strict());
        var dev = kit.Dev;
        var y = kit.Zeros<float>(32);
        using var s = dev.CreateStream();
        Launch(kit, "oob", s, y);
        Launch(kit, "fill", s, y, 3f, 32);
        Assert.That(() => dev.Synchronize(s), Throws.InstanceOf<EmulatorFaultException>().With.Message.Contains("out-of-bounds"));
        Assert.That(kit.Download<float>(y, 32), Is.All.EqualTo(0f), "the work queued after the fault was discarded");
    }

    [Test]
    public void ElapsedTime_NeedsCompletedEvents_AndWaitingCallsAreRejectedDuringCapture()
    {
        using var kit = new EmuKit(Source, Strict());
        var dev = kit.Dev;
        var y = kit.Zeros<float>(32);
        using var s = dev.CreateStream();
        using var e0 = dev.CreateEvent();
        using var e1 = dev.CreateEvent();
        dev.Record(e0, s);
        Launch(kit, "fill", s, y, 1f, 32);
        dev.Record(e1, s);
        Assert.That(() => dev.ElapsedMilliseconds(e0, e1), Throws.InstanceOf<DeviceException>().With.Message.Contains("not completed"));
        dev.Synchronize(e1);
        Assert.That(dev.ElapsedMilliseconds(e0, e1), Is.GreaterThanOrEqualTo(0f));

        dev.BeginCapture(s);
        Launch(kit, "fill", s, y, 4f, 32);
        Assert.That(() => dev.Synchronize(s), Throws.InstanceOf<DeviceException>().With.Message.Contains("capturing"));
        Assert.That(() => dev.CopyToHost(new byte[4], y), Throws.InstanceOf<DeviceException>().With.Message.Contains("during stream capture"));
        using var g = dev.EndCapture(s);
    }

    [Test]
    public void GraphLaunch_ReadsItsUploadSourceWhenItRuns()
    {
        using var kit = new EmuKit(Source, Strict());
        var dev = kit.Dev;
        var x = kit.Zeros<float>(32);
        var y = kit.Zeros<float>(32);
        using var s = dev.CreateStream();
        using var pinned = dev.AllocatePinned(32 * 4);
        var f = MemoryMarshal.Cast<byte, float>(pinned.Span);
        dev.BeginCapture(s);
        dev.CopyToDeviceAsync(x, pinned, 0, 32 * 4, s);
        Launch(kit, "add", s, y, x, 32);
        using var graph = dev.EndCapture(s);
        using var exec = dev.Instantiate(graph);
        f.Fill(1f);
        dev.Launch(exec, s);
        dev.Synchronize(s);
        Assert.That(kit.Download<float>(y, 32), Is.All.EqualTo(1f));
        f.Fill(2f);
        dev.Launch(exec, s);
        f.Fill(3f);   // the bug: the graph's upload node has not read the buffer yet
        Assert.That(() => dev.Synchronize(s), Throws.InstanceOf<DeviceException>().With.Message.Contains("host changed pinned buffer bytes"));
    }
}
