using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// Interleaved (independent thread) scheduling (docs/emulator.md): warps and the lane groups of a diverged warp take
/// turns in a seeded random order, and shared-memory accesses of two lanes of one warp need a warp synchronisation
/// between them (intra-warp racecheck). Lockstep scheduling hides every one of these bugs.
/// </summary>
public class InterleavedSchedulingTests
{
    private const string Source = """
        // lane i publishes s[i], lane i reads its neighbour's value
        extern "C" __global__ void neighbour(int* out, int sync) {
          __shared__ int s[32];
          int lane = threadIdx.x;
          s[lane] = lane * 10;
          if (sync == 1) __syncwarp();
          if (sync == 2) { int v = __shfl_xor_sync(0xffffffffu, lane, 1); if (v < 0) out[0] = v; }
          out[lane] = s[lane ^ 1];
        }
        // lane i reads its right neighbour's slot, then overwrites its own: the read of lane i-1 must come first
        extern "C" __global__ void shift(int* out, int sync) {
          __shared__ int s[33];
          int lane = threadIdx.x;
          s[lane] = lane; s[32] = 32;
          __syncwarp();
          int v = s[lane + 1];
          if (sync) __syncwarp();
          s[lane] = v;
          __syncwarp();
          out[lane] = s[lane];
        }
        // every lane stores the same value to one word: a benign write-after-write
        extern "C" __global__ void same_value(int* out) {
          __shared__ int flag;
          flag = 1;
          __syncwarp();
          out[threadIdx.x] = flag;
        }
        // lanes 0..15 exchange through shared memory, ordered by a partial __syncwarp of their half only
        extern "C" __global__ void half_warp(int* out) {
          __shared__ int s[32];
          int lane = threadIdx.x;
          if (lane < 16) {
            s[lane] = lane;
            __syncwarp(0x0000ffffu);
            out[lane] = s[lane ^ 1];
          } else out[lane] = -1;
        }
        // a read-modify-write of a global counter by every thread, without atomics: a race whose outcome depends on the schedule
        extern "C" __global__ void racy_count(int* c) {
          int v = *(volatile int*)c;
          unsigned w = threadIdx.x;
          for (int i = 0; i < 4 + (threadIdx.x & 3); i++) w = w * 1103515245u + 12345u;   // a long gap; lanes diverge at its end
          *(volatile int*)c = v + 1 + (w == 7u ? 1 : 0);
        }
        // lane 0 waits for lane 1's flag: a legal intra-warp spin-wait under independent thread scheduling
        extern "C" __global__ void spin(int* out) {
          __shared__ int flag;
          if (threadIdx.x == 0) flag = 0;
          __syncwarp();
          if (threadIdx.x == 0) { while (atomicAdd(&flag, 0) == 0) { } out[0] = 1; }
          else if (threadIdx.x == 1) { atomicExch(&flag, 1); }
        }
        """;

    private static EmulatorOptions Its(int seed) => new()
    {
        Sequential = true, PrintfOutput = TextWriter.Null, Watchdog = TimeSpan.FromSeconds(30),
        Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = seed },
    };

    private static EmulatorOptions Lockstep => Its(0) with { Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Lockstep } };

    [Test]
    public void NeighbourExchange_WithoutSyncwarp_IsAnIntraWarpRace_NamingBothLines()
    {
        using var kit = new EmuKit(Source, Its(1));
        var o = kit.Zeros<int>(32);
        var e = Assert.Throws<EmulatorFaultException>(() => kit.Launch("neighbour", 1, 32, 0, o, 0))!;
        Assert.That(e.Message, Does.Contain("racecheck (intra-warp): read-after-write hazard").And.Contain("__syncwarp"));
        Assert.That(System.Text.RegularExpressions.Regex.Matches(e.Message, @"PTX line \d+").Count, Is.GreaterThanOrEqualTo(2), "the writer's and the reader's PTX lines");

        using var lockstep = new EmuKit(Source, Lockstep);
        var o2 = lockstep.Zeros<int>(32);
        lockstep.Launch("neighbour", 1, 32, 0, o2, 0);   // lockstep: no intra-warp check, the lanes happen to be in step
        Assert.That(lockstep.Download<int>(o2, 32)[0], Is.EqualTo(10));
    }

    [TestCase(1)]
    [TestCase(2)]
    public void NeighbourExchange_OrderedBySyncwarpOrShuffle_IsClean(int sync)
    {
        using var kit = new EmuKit(Source, Its(2));
        var o = kit.Zeros<int>(32);
        kit.Launch("neighbour", 1, 32, 0, o, sync);
        Assert.That(kit.Download<int>(o, 32), Is.EqualTo(Enumerable.Range(0, 32).Select(l => (l ^ 1) * 10).ToArray()));
    }

    [Test]
    public void ReadThenOverwrite_WithoutSyncwarp_IsAWriteAfterRead()
    {
        using var kit = new EmuKit(Source, Its(3));
        var o = kit.Zeros<int>(32);
        Assert.That(() => kit.Launch("shift", 1, 32, 0, o, 0), Throws.InstanceOf<EmulatorFaultException>().With.Message.Contains("write-after-read hazard").And.Message.Contains("intra-warp"));
        kit.Launch("shift", 1, 32, 0, o, 1);
        Assert.That(kit.Download<int>(o, 32), Is.EqualTo(Enumerable.Range(1, 32).ToArray()));
    }

    [Test]
    public void SameValueStores_AndAPartialSyncwarp_AreNotReported()
    {
        using var kit = new EmuKit(Source, Its(4));
        var o = kit.Zeros<int>(32);
        kit.Launch("same_value", 1, 32, 0, o);
        Assert.That(kit.Download<int>(o, 32), Is.All.EqualTo(1));
        kit.Launch("half_warp", 1, 32, 0, o);
        Assert.That(kit.Download<int>(o, 16), Is.EqualTo(Enumerable.Range(0, 16).Select(l => l ^ 1).ToArray()));
    }

    [Test]
    public void RacyGlobalCounter_OutcomeDependsOnTheSeed_LockstepAlwaysTheSame()
    {
        var outcomes = new HashSet<int>();
        for (int seed = 0; seed < 12; seed++)
        {
            using var kit = new EmuKit(Source, Its(seed));
            var c = kit.Zeros<int>(1);
            kit.Launch("racy_count", 1, 64, 0, c);
            outcomes.Add(kit.Download<int>(c, 1)[0]);
        }
        Assert.That(outcomes.Count, Is.GreaterThan(1), $"interleaving yields several lost-update counts: {string.Join(", ", outcomes)}");
        using var lockstep = new EmuKit(Source, Lockstep);
        var c2 = lockstep.Zeros<int>(1);
        lockstep.Launch("racy_count", 1, 64, 0, c2);
        Assert.That(lockstep.Download<int>(c2, 1)[0], Is.EqualTo(2), "lockstep: each warp reads together, then writes together");
    }

    [Test]
    public void IntraWarpSpinWait_Terminates()
    {
        using var kit = new EmuKit(Source, Its(5));
        var o = kit.Zeros<int>(32);
        kit.Launch("spin", 1, 32, 0, o);
        Assert.That(kit.Download<int>(o, 1)[0], Is.EqualTo(1));
    }
}
