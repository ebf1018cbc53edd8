using System.Runtime.CompilerServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// An emulated device that is disposed and dropped is collected with its memory and per-sector bookkeeping: its pooled
/// CTA contexts, used by the thread pool's threads in a parallel launch, must not root it. They once did (a ConcurrentBag
/// keeps items in thread-local slots that the threads root, and a pooled context references its last launch), and the
/// test suite's one process kept every device it had made until it ran out of memory.
/// </summary>
public class DeviceLifetimeTests
{
    [Test]
    public void ADroppedDevice_IsCollected_AfterParallelLaunches()
    {
        const int devices = 4;
        var memories = new WeakReference[devices];
        for (int d = 0; d < devices; d++) memories[d] = UseAndDropADevice();
        // Polls for up to 20 s: a finished parallel loop may leave replica tasks queued on the thread pool, and each
        // references its launch until a worker runs it. On a busy 2-core machine that can take longer than the 0.25 s this
        // test once waited. Before the fix every device stayed forever, so the wait does not weaken the test; it returns as
        // soon as the devices are gone.
        int alive = devices;
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (true)
        {
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true);
            GC.WaitForPendingFinalizers();
            GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true);
            alive = memories.Count(w => w.IsAlive);
            if (alive <= 1 || DateTime.UtcNow > deadline) break;
            Thread.Sleep(100);   // lets the pool's threads run what a finished parallel loop left queued
        }
        // At most one: a worker thread may still hold the last loop's queued (finished) task, which references its launch
        // until the thread runs it.
        Assert.That(alive, Is.LessThanOrEqualTo(1), $"{alive} of {devices} dropped devices' memory is still reachable");
    }

    /// <summary>Runs parallel (not sequential) launches of 64 CTAs on a new device, disposes it, and returns a weak reference to its memory.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static WeakReference UseAndDropADevice()
    {
        using var kit = new EmuKit(EmulatedDeviceTests.Source, new EmulatorOptions { Sequential = false, PrintfOutput = TextWriter.Null });
        var y = kit.Zeros<float>(64 * 32);
        for (int i = 0; i < 3; i++) kit.Launch("add_scalar", new Dim3(64), new Dim3(32), 0, y, 1f, 64 * 32);
        Assert.That(kit.Download<float>(y, 64 * 32), Is.All.EqualTo(3f));
        var memory = typeof(EmulatedDevice).GetField("_mem", System.Reflection.BindingFlags.NonPublic | System.Reflection.BindingFlags.Instance)!
            .GetValue(kit.Dev)!;
        return new WeakReference(memory);
    }
}
