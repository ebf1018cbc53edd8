using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// Cooperative (co-resident) launches on the emulator (docs/emulator.md, "Co-resident launches"): every block of the grid
/// is resident and the blocks take turns, so a block that spins on a flag another block sets (a grid barrier) makes
/// progress; the same kernel launched normally cannot finish on a sequential emulator (the watchdog says why); a grid that
/// could not be resident at once is refused. Exact: integers in fp32.
/// </summary>
public sealed class CoResidentLaunchTests
{
    internal const string Source = """
        // A sense-reversing grid barrier: block thread 0 arrives on `count`; the last one resets it and bumps `generation`,
        // the others spin until it moves. Fences order the data written before the barrier with the arrival.
        __device__ void grid_barrier(unsigned int* count, volatile unsigned int* generation)
        {
            __syncthreads();
            if (threadIdx.x == 0) {
                const unsigned int gen = *generation;
                __threadfence();
                if (atomicAdd(count, 1u) == gridDim.x - 1) {
                    *count = 0;
                    __threadfence();
                    atomicAdd((unsigned int*)generation, 1u);
                } else {
                    while (*generation == gen) { }
                }
                __threadfence();
            }
            __syncthreads();
        }

        // rounds of: barrier, read the element one block further on (written by another block), barrier, store it + 1
        extern "C" __global__ void rotate(float* a, unsigned int* count, unsigned int* generation, int rounds)
        {
            const int n = gridDim.x * blockDim.x, i = blockIdx.x * blockDim.x + threadIdx.x;
            a[i] = (float)i;
            for (int r = 0; r < rounds; r++) {
                grid_barrier(count, generation);
                const float v = ((volatile float*)a)[(i + blockDim.x) % n];
                grid_barrier(count, generation);
                a[i] = v + 1.f;
            }
        }
        """;

    /// <summary>What <c>rotate</c> leaves: after r rounds element i holds the start value of i + r blocks further on, plus r.</summary>
    internal static float[] Expected(int blocks, int threads, int rounds)
    {
        int n = blocks * threads;
        return [.. Enumerable.Range(0, n).Select(i => (float)((i + rounds * threads) % n + rounds))];
    }

    private static readonly object[] Modes =
    [
        new object[] { "sequential", new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null } },
        new object[] { "parallel", new EmulatorOptions { PrintfOutput = TextWriter.Null } },
        new object[] { "interleaved", new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = 5 + EmulatorModes.Ambient.ScheduleSeed } } },
    ];

    [TestCaseSource(nameof(Modes))]
    public void GridBarrier_CooperativeLaunch_EveryBlockMakesProgress(string mode, EmulatorOptions options)
    {
        const int blocks = 12, threads = 64, rounds = 3;
        using var kit = new EmuKit(Source, options);
        var a = kit.Zeros<float>(blocks * threads);
        var count = kit.Zeros<uint>(1);
        var generation = kit.Zeros<uint>(1);
        var rec = kit.Launch("rotate", new LaunchConfig(blocks, threads, Cooperative: true), a, count, generation, rounds);
        Assert.That(kit.Download<float>(a, blocks * threads), Is.EqualTo(Expected(blocks, threads, rounds)), mode);
        Assert.That(kit.Download<uint>(count, 1)[0], Is.Zero, "the barrier leaves its counter at zero");
        Assert.That(kit.Download<uint>(generation, 1)[0], Is.EqualTo(2u * rounds), "one generation per barrier");
        Assert.That(rec.ProgrammaticLaunch, Is.False);
    }

    [Test]
    public void GridBarrier_OrdinaryLaunch_OnASequentialEmulator_IsAWatchdogFaultThatNamesTheCooperativeLaunch()
    {
        using var kit = new EmuKit(Source, new EmulatorOptions { Sequential = true, Watchdog = TimeSpan.FromMilliseconds(300), PrintfOutput = TextWriter.Null });
        var a = kit.Zeros<float>(4 * 32);
        var count = kit.Zeros<uint>(1);
        var generation = kit.Zeros<uint>(1);
        var e = Assert.Throws<EmulatorFaultException>(() => kit.Launch("rotate", new LaunchConfig(4, 32), a, count, generation, 1))!;
        Assert.That(e.Message, Does.StartWith("watchdog: kernel rotate").And.Contain("LaunchConfig.Cooperative"));
    }

    [Test]
    public void CooperativeLaunch_LargerThanTheDeviceHolds_IsRefusedWithTheLimit()
    {
        // 2 SMs of 2048 threads: 2 blocks of 1024 threads each, 4 in all
        using var kit = new EmuKit(Source, new EmulatorOptions { Sequential = true, MultiprocessorCount = 2, PrintfOutput = TextWriter.Null });
        var a = kit.Zeros<float>(5 * 1024);
        var count = kit.Zeros<uint>(1);
        var generation = kit.Zeros<uint>(1);
        var e = Assert.Throws<DeviceException>(() => kit.Launch("rotate", new LaunchConfig(5, 1024, Cooperative: true), a, count, generation, 1))!;
        Assert.That(e.Message, Does.Contain("launch of rotate").And.Contain("a cooperative launch needs every block resident at once, and at most 4 fit (2 SMs x 2 blocks of 1024 threads"));
        kit.Launch("rotate", new LaunchConfig(4, 1024, Cooperative: true), a, count, generation, 1);
        Assert.That(kit.Download<float>(a, 4 * 1024), Is.EqualTo(Expected(4, 1024, 1)));
    }
}
