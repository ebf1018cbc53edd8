using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// Programmatic dependent launch on the emulator (docs/emulator.md, "Programmatic dependent launch"): griddepcontrol.wait
/// and launch_dependents at sm_90, the launch record's ProgrammaticLaunch and PreWaitSectors, prefetch.global.L2 as a
/// touch of its 128-byte line, and the contract checks: before its wait a kernel may not store, may not read what a
/// kernel of the step wrote, may not call launch_dependents; a programmatic launch needs a kernel with a wait.
/// </summary>
public sealed class ProgrammaticLaunchTests
{
    private const string Source = """
        __device__ __forceinline__ void wait() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
        __device__ __forceinline__ void go() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }
        __device__ __forceinline__ void pf(const void* p) { asm volatile("prefetch.global.L2 [%0];" :: "l"(p) : "memory"); }

        extern "C" __global__ void produce(float* out, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i < n) out[i] = (float)i;
        }
        // the contract kept: prefetch of the weights (one line per thread), wait, launch_dependents, then the producer's output
        extern "C" __global__ void consume(const float* in, const float* w, float* out, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            if (i * 32 < n) pf(w + i * 32);
            wait();
            go();
            if (i < n) out[i] = in[i] * 2.f + w[i];
        }
        // the weights loaded into registers before the wait (a persistent GEMV tile's held steps), the input after it
        extern "C" __global__ void consume_loaded(const float* in, const float* w, float* out, int n)
        {
            int i = blockIdx.x * blockDim.x + threadIdx.x;
            float wv = i < n ? w[i] : 0.f;
            wait();
            go();
            if (i < n) out[i] = in[i] * 2.f + wv;
        }
        extern "C" __global__ void load_before_wait(const float* in, float* out)
        {
            float v = in[threadIdx.x];
            wait();
            go();
            out[threadIdx.x] = v;
        }
        extern "C" __global__ void prefetch_before_wait(const float* in, float* out)
        {
            pf(in + threadIdx.x);
            wait();
            go();
            out[threadIdx.x] = in[threadIdx.x];
        }
        extern "C" __global__ void store_before_wait(float* out)
        {
            out[threadIdx.x] = 1.f;
            wait();
            go();
        }
        extern "C" __global__ void launch_before_wait(float* out)
        {
            go();
            wait();
            out[threadIdx.x] = 1.f;
        }
        extern "C" __global__ void no_wait(float* out) { out[threadIdx.x] = 1.f; }
        // two dependent round trips before the wait (b's index comes from a), one after it (in does not depend on them)
        extern "C" __global__ void trips_around_wait(const float* a, const float* b, const float* in, float* out)
        {
            float x = a[threadIdx.x];
            float y = b[(int)x + threadIdx.x];
            wait();
            go();
            out[threadIdx.x] = x + y + in[threadIdx.x];
        }
        // one round trip before the wait (a), one after it (in), and one after the tail mark (c, at an index read from in)
        extern "C" __global__ void trips_around_wait_and_tail(const float* a, const float* in, const float* c, float* out)
        {
            float x = a[threadIdx.x];
            wait();
            go();
            float y = in[threadIdx.x];
            asm volatile("pmevent 7;" ::: "memory");
            out[threadIdx.x] = x + c[(int)y + threadIdx.x];
        }
        // a weight stream whose addresses depend on what the warp read after its wait: one round trip before the wait (a),
        // one after it (ids), the stream mark, then the "weights" at an index read from ids; stream_first marks before its wait
        extern "C" __global__ void stream_after_ids(const float* a, const int* ids, const float* w, float* out)
        {
            float x = a[threadIdx.x];
            wait();
            go();
            int e = ids[threadIdx.x];
            asm volatile("pmevent 6;" ::: "memory");
            out[threadIdx.x] = x + w[e + threadIdx.x];
        }
        extern "C" __global__ void stream_first(const float* w, float* out)
        {
            asm volatile("pmevent 6;" ::: "memory");
            float x = w[threadIdx.x];
            wait();
            go();
            out[threadIdx.x] = x;
        }
        extern "C" __global__ void prefetch_at(const char* p, long long offset) { pf(p + offset); }
        // CTAs from `first_idle` on exit before their wait (a decode attention CTA past its row's split plan)
        extern "C" __global__ void some_exit_early(const float* in, float* out, int first_idle)
        {
            if ((int)blockIdx.x >= first_idle) return;
            wait();
            go();
            out[blockIdx.x * blockDim.x + threadIdx.x] = in[blockIdx.x * blockDim.x + threadIdx.x] + 1.f;
        }
        """;

    private static readonly KernelCompiler Compiler = new(Path.Combine(Path.GetTempPath(), "qwen3cuda-emu-tests"));

    private sealed class Kit : IDisposable
    {
        public EmulatedDevice Dev { get; }
        private readonly DeviceModule _module;

        public Kit(int computeMajor = 9, bool programmaticLaunch = true)
        {
            var compiled = Compiler.CompileSource("pdl_test.cu", Source, new KernelBuild("pdl_test.cu", $"sm_{computeMajor}0", CompileTarget.Ptx));
            Dev = new EmulatedDevice(new EmulatorOptions
            {
                ComputeMajor = computeMajor, Sequential = true, PrintfOutput = TextWriter.Null, Modes = EmulatorModes.Ambient with { StrictStreams = true },
                ProgrammaticLaunch = programmaticLaunch,
            });
            _module = Dev.LoadModule(compiled);
        }

        public DevicePtr Upload(float[] data)
        {
            var p = Dev.Allocate(data.Length * sizeof(float));
            Dev.CopyToDevice(p, MemoryMarshal.AsBytes(data.AsSpan()));
            return p;
        }

        public float[] Download(DevicePtr p, int n)
        {
            var r = new float[n];
            Dev.CopyToHost(MemoryMarshal.AsBytes(r.AsSpan()), p);
            return r;
        }

        /// <summary>Queues a launch (strict streams: it runs at the next synchronisation).</summary>
        public void Launch(string kernel, uint grid, uint block, bool programmatic, params object[] args)
        {
            var a = new KernelArgs(new byte[KernelArgs.DefaultBufferBytes], new nint[KernelArgs.MaxArgs]);
            foreach (var x in args)
            {
                switch (x)
                {
                    case DevicePtr p: a.Add(p.Address); break;
                    case int i: a.Add(i); break;
                    case long l: a.Add(l); break;
                    default: throw new ArgumentException($"unsupported argument type {x.GetType()}");
                }
            }
            Dev.Launch(Dev.GetKernel(_module, kernel), new LaunchConfig(grid, block, 0, programmatic), Dev.DefaultStream, a);
        }

        public void Sync() => Dev.Synchronize(Dev.DefaultStream);

        public void Dispose()
        {
            _module.Dispose();
            Dev.Dispose();
        }
    }

    /// <summary>
    /// A producer then a programmatic consumer that keeps the contract: the consumer reads the producer's output after
    /// its wait (the result proves it), the record says programmatic, and PreWaitSectors is exactly the weight's sectors:
    /// 4096 floats = 16 KiB = 128 lines, each prefetched by one thread before the wait (512 sectors of 32 bytes); the
    /// input and output are first touched after the wait.
    /// </summary>
    [Test]
    public void ProgrammaticConsumer_ReadsTheProducersOutput_AndCountsItsPrefetchedWeightsAsPreWaitSectors()
    {
        using var k = new Kit();
        const int n = 4096;
        var w = Enumerable.Range(0, n).Select(i => 0.25f * (i % 7)).ToArray();
        var dIn = k.Dev.Allocate(n * sizeof(float));
        var dW = k.Upload(w);
        var dOut = k.Dev.Allocate(n * sizeof(float));
        k.Launch("produce", n / 256, 256, false, dIn, n);
        k.Launch("consume", n / 256, 256, true, dIn, dW, dOut, n);
        k.Sync();
        var launches = k.Dev.Launches.TakeLast(2).ToArray();
        Assert.That(launches[0].ProgrammaticLaunch, Is.False);
        Assert.That(launches[0].PreWaitSectors, Is.Zero, "a kernel without griddepcontrol.wait has no pre-wait sectors");
        Assert.That(launches[1].ProgrammaticLaunch, Is.True);
        Assert.That(launches[1].PreWaitSectors, Is.EqualTo(n * sizeof(float) / 32));
        Assert.That(launches[1].DistinctSectors, Is.EqualTo(3L * n * sizeof(float) / 32), "in, w and out, each once: the loads of w hit the prefetched sectors");
        Assert.That(launches[1].GlobalLoadRequests, Is.EqualTo(2L * n / 32), "a prefetch is not a load request: two loads per warp");
        Assert.That(launches[1].PreWaitLoadBytes, Is.Zero, "a prefetch loads nothing into the SM");
        var got = k.Download(dOut, n);
        for (int i = 0; i < n; i++) Assert.That(got[i], Is.EqualTo(i * 2f + w[i]), $"out[{i}]");
    }

    /// <summary>
    /// A programmatic consumer that loads its weights into registers before its wait: PreWaitLoadBytes is their 16 KiB
    /// (4096 floats, each lane's 4 bytes), PreWaitSectors their 512 sectors; the input, read after the wait, is in neither.
    /// </summary>
    [Test]
    public void WeightsLoadedBeforeTheWait_CountAsPreWaitLoadBytes()
    {
        using var k = new Kit();
        const int n = 4096;
        var w = Enumerable.Range(0, n).Select(i => 0.5f * (i % 5)).ToArray();
        var dIn = k.Dev.Allocate(n * sizeof(float));
        var dW = k.Upload(w);
        var dOut = k.Dev.Allocate(n * sizeof(float));
        k.Launch("produce", n / 256, 256, false, dIn, n);
        k.Launch("consume_loaded", n / 256, 256, true, dIn, dW, dOut, n);
        k.Sync();
        var consumer = k.Dev.Launches.Last();
        Assert.That(consumer.PreWaitLoadBytes, Is.EqualTo(n * sizeof(float)));
        Assert.That(consumer.PreWaitSectors, Is.EqualTo(n * sizeof(float) / 32));
        var got = k.Download(dOut, n);
        for (int i = 0; i < n; i++) Assert.That(got[i], Is.EqualTo(i * 2f + w[i]), $"out[{i}]");
    }

    /// <summary>
    /// The critical warp's figures split at its first griddepcontrol.wait (docs/timing-model.md, "Programmatic dependent
    /// launch"): one warp with two dependent DRAM round trips before the wait (a, then b at an index read from a; the second
    /// still in flight at the wait) and one after it (in, independent of both: the wait ends the open trip, so it is a trip
    /// of its own). The parts add up to the warp's totals.
    /// </summary>
    [Test]
    public void RoundTripsAndInstructions_AreSplitAtTheWait()
    {
        using var k = new Kit();
        var dA = k.Upload(new float[32]);
        var dB = k.Upload(Enumerable.Range(0, 32).Select(i => (float)i).ToArray());
        var dIn = k.Upload(Enumerable.Repeat(0.5f, 32).ToArray());
        var dOut = k.Dev.Allocate(32 * sizeof(float));
        k.Launch("trips_around_wait", 1, 32, true, dA, dB, dIn, dOut);
        k.Sync();
        var r = k.Dev.Launches[^1];
        Assert.That(k.Download(dOut, 32), Is.EqualTo(Enumerable.Range(0, 32).Select(i => i + 0.5f).ToArray()));
        Assert.That((r.MaxWarpPreWaitDramRoundTrips, r.MaxWarpPreWaitL2RoundTrips), Is.EqualTo((2L, 0L)), "a, then b, before the wait");
        Assert.That((r.MaxWarpPostWaitDramRoundTrips, r.MaxWarpPostWaitL2RoundTrips), Is.EqualTo((1L, 0L)), "in, after it");
        Assert.That(r.MaxWarpDramRoundTrips, Is.EqualTo(3));
        Assert.That(r.MaxWarpPreWaitInstructions, Is.GreaterThan(0));
        Assert.That(r.MaxWarpPostWaitInstructions, Is.GreaterThan(0));
        Assert.That(r.MaxWarpPreWaitInstructions + r.MaxWarpPostWaitInstructions, Is.EqualTo(r.MaxWarpInstructions), "one warp: the parts add up");
    }

    /// <summary>
    /// The part between the wait and the tail mark (tail_begin(), kernels/common.cuh) has maxima of its own
    /// (LaunchRecord.MaxWarpPostWaitPreTail*: a stage's chain is that part plus the longest tail, docs/timing-model.md
    /// section 7): one DRAM round trip in each of the three parts, and the three parts add up to the warp's totals.
    /// </summary>
    [Test]
    public void RoundTripsAndInstructions_BetweenTheWaitAndTheTailMark_AreAPartOfTheirOwn()
    {
        using var k = new Kit();
        var dA = k.Upload(Enumerable.Repeat(1f, 32).ToArray());
        var dIn = k.Upload(new float[32]);
        var dC = k.Upload(Enumerable.Range(0, 32).Select(i => (float)i).ToArray());
        var dOut = k.Dev.Allocate(32 * sizeof(float));
        k.Launch("trips_around_wait_and_tail", 1, 32, true, dA, dIn, dC, dOut);
        k.Sync();
        var r = k.Dev.Launches[^1];
        Assert.That(k.Download(dOut, 32), Is.EqualTo(Enumerable.Range(0, 32).Select(i => i + 1f).ToArray()));
        Assert.That((r.MaxWarpPreWaitDramRoundTrips, r.MaxWarpPostWaitPreTailDramRoundTrips, r.MaxWarpTailDramRoundTrips), Is.EqualTo((1L, 1L, 1L)),
            "a before the wait, in between, c after the mark");
        Assert.That((r.MaxWarpPostWaitDramRoundTrips, r.MaxWarpPreTailDramRoundTrips), Is.EqualTo((2L, 2L)));
        Assert.That(r.MaxWarpPostWaitPreTailL2RoundTrips, Is.Zero);
        Assert.That(r.MaxWarpPostWaitPreTailInstructions, Is.GreaterThan(0));
        Assert.That(r.MaxWarpPreWaitInstructions + r.MaxWarpPostWaitPreTailInstructions + r.MaxWarpTailInstructions, Is.EqualTo(r.MaxWarpInstructions),
            "one warp: the three parts add up");
    }

    /// <summary>
    /// The stream mark (stream_begin(), kernels/common.cuh: pmevent 6) splits off a warp's head, from its wait to the mark
    /// (LaunchRecord.MaxWarpHead*, which the timing model puts before the DRAM stream, docs/timing-model.md section 2): the
    /// ids' round trip and the instructions up to the mark; a's trip before the wait is not in it, nor the weights' after
    /// it. A mark before the wait leaves no head.
    /// </summary>
    [Test]
    public void TheStreamMark_SplitsOffTheHeadFromTheWait()
    {
        using var k = new Kit();
        var dA = k.Upload(Enumerable.Repeat(1f, 32).ToArray());
        var dIds = k.Dev.Allocate(32 * sizeof(int));
        k.Dev.CopyToDevice(dIds, System.Runtime.InteropServices.MemoryMarshal.AsBytes(new int[32].AsSpan()));
        var dW = k.Upload(Enumerable.Range(0, 32).Select(i => (float)i).ToArray());
        var dOut = k.Dev.Allocate(32 * sizeof(float));
        k.Launch("stream_after_ids", 1, 32, true, dA, dIds, dW, dOut);
        k.Sync();
        var r = k.Dev.Launches[^1];
        Assert.That(k.Download(dOut, 32), Is.EqualTo(Enumerable.Range(0, 32).Select(i => i + 1f).ToArray()));
        Assert.That((r.MaxWarpHeadDramRoundTrips, r.MaxWarpHeadL2RoundTrips), Is.EqualTo((1L, 0L)), "the ids' trip");
        Assert.That(r.MaxWarpHeadInstructions, Is.GreaterThan(0).And.LessThan(r.MaxWarpPostWaitInstructions), "from the wait to the mark");
        Assert.That(r.MaxWarpPostWaitDramRoundTrips, Is.EqualTo(2), "the ids, then the weights");

        k.Launch("stream_first", 1, 32, true, dW, dOut);
        k.Sync();
        var first = k.Dev.Launches[^1];
        Assert.That((first.MaxWarpHeadInstructions, first.MaxWarpHeadDramRoundTrips, first.MaxWarpHeadL2RoundTrips), Is.EqualTo((0L, 0L, 0L)),
            "a mark before the wait: no head");
        k.Launch("no_wait", 1, 32, false, dOut);
        k.Sync();
        Assert.That(k.Dev.Launches[^1].MaxWarpHeadInstructions, Is.Zero, "no mark: no head");
    }

    [Test]
    public void WithoutTheFlag_OrOnSm80_TheLaunchIsNotProgrammatic()
    {
        using var k = new Kit();
        var dIn = k.Upload(new float[256]);
        var dW = k.Upload(new float[256]);
        var dOut = k.Dev.Allocate(256 * sizeof(float));
        k.Launch("consume", 1, 256, false, dIn, dW, dOut, 256);
        k.Sync();
        Assert.That(k.Dev.LastLaunch!.ProgrammaticLaunch, Is.False);
        Assert.That(k.Dev.LastLaunch!.PreWaitSectors, Is.EqualTo(256 * 4 / 32), "the kernel still waits: its prefetches are pre-wait sectors");

        using var k80 = new Kit(8);
        var e = Assert.Throws<EmulatorFaultException>(() =>
        {
            k80.Launch("consume", 1, 256, true, k80.Upload(new float[256]), k80.Upload(new float[256]), k80.Dev.Allocate(1024), 256);
            k80.Sync();
        })!;
        Assert.That(e.Message, Does.Contain("needs sm_90 or newer").And.Contain("sm_80"));
    }

    /// <summary>
    /// EmulatorOptions.ProgrammaticLaunch false (what QWEN3CUDA_PDL=0 sets, as it turns the CUDA backend's programmatic
    /// launches off): a launch flagged programmatic runs as an ordinary one and is recorded so, with the same result.
    /// </summary>
    [Test]
    public void ProgrammaticLaunchOff_TheFlaggedLaunchRunsAsAnOrdinaryOne()
    {
        using var k = new Kit(programmaticLaunch: false);
        const int n = 256;
        var w = Enumerable.Range(0, n).Select(i => 0.5f * i).ToArray();
        var dIn = k.Dev.Allocate(n * sizeof(float));
        var dW = k.Upload(w);
        var dOut = k.Dev.Allocate(n * sizeof(float));
        k.Launch("produce", 1, n, false, dIn, n);
        k.Launch("consume", 1, n, true, dIn, dW, dOut, n);
        k.Sync();
        Assert.That(k.Dev.LastLaunch!.ProgrammaticLaunch, Is.False);
        var got = k.Download(dOut, n);
        for (int i = 0; i < n; i++) Assert.That(got[i], Is.EqualTo(i * 2f + w[i]), $"out[{i}]");
        Assert.That(new EmulatorOptions().ProgrammaticLaunch, Is.EqualTo(Environment.GetEnvironmentVariable("QWEN3CUDA_PDL") != "0"), "the default follows QWEN3CUDA_PDL");
    }

    /// <summary>
    /// LaunchRecord.WaitingCtas counts the CTAs that reached griddepcontrol.wait: of 8, the 3 below first_idle (the timing
    /// model counts residency over them); a kernel without a wait has none.
    /// </summary>
    [Test]
    public void WaitingCtas_AreThoseThatReachedTheWait()
    {
        using var k = new Kit();
        var dIn = k.Upload(Enumerable.Range(0, 8 * 32).Select(i => (float)i).ToArray());
        var dOut = k.Dev.Allocate(8 * 32 * sizeof(float));
        k.Launch("some_exit_early", 8, 32, true, dIn, dOut, 3);
        k.Sync();
        var r = k.Dev.LastLaunch!;
        Assert.That((r.ProgrammaticLaunch, r.WaitingCtas, r.GridBlocks), Is.EqualTo((true, 3L, 8L)));
        Assert.That(k.Download(dOut, 3 * 32), Is.EqualTo(Enumerable.Range(0, 3 * 32).Select(i => i + 1f).ToArray()));
        k.Launch("produce", 8, 32, false, dOut, 8 * 32);
        k.Sync();
        Assert.That(k.Dev.LastLaunch!.WaitingCtas, Is.Zero);
    }

    /// <summary>`produce` writes 256 floats, then <paramref name="consumer"/> is launched programmatically on them in the same step; returns the emulator's fault.</summary>
    private static EmulatorFaultException ConsumerOfTheProducersOutput_Throws(string consumer)
    {
        using var k = new Kit();
        var dIn = k.Dev.Allocate(256 * sizeof(float));
        var dOut = k.Dev.Allocate(256 * sizeof(float));
        k.Launch("produce", 1, 256, false, dIn, 256);
        k.Launch(consumer, 1, 256, true, dIn, dOut);
        return Assert.Throws<EmulatorFaultException>(k.Sync)!;
    }

    [Test]
    public void LoadBeforeTheWait_OfWhatTheStepsPreviousKernelWrote_IsAnErrorNamingTheWriter()
    {
        var e = ConsumerOfTheProducersOutput_Throws("load_before_wait");
        Assert.That(e.Message, Does.Contain("pdl check: load from global memory").And.Contain("before griddepcontrol.wait")
            .And.Contain("kernel produce").And.Contain("kernel load_before_wait").And.Contain("allocation"));
    }

    [Test]
    public void PrefetchBeforeTheWait_OfWhatTheStepWrote_IsAnError_ButNotAfterAHostSynchronisation()
    {
        var e = ConsumerOfTheProducersOutput_Throws("prefetch_before_wait");
        Assert.That(e.Message, Does.Contain("pdl check: prefetch of global memory").And.Contain("kernel produce"));

        using var k2 = new Kit();
        var dIn2 = k2.Dev.Allocate(256 * sizeof(float));
        var dOut2 = k2.Dev.Allocate(256 * sizeof(float));
        k2.Launch("produce", 1, 256, false, dIn2, 256);
        k2.Sync();   // a new step: the producer finished before the host went on
        k2.Launch("prefetch_before_wait", 1, 256, true, dIn2, dOut2);
        k2.Sync();
        Assert.That(k2.Download(dOut2, 256), Is.EqualTo(Enumerable.Range(0, 256).Select(i => (float)i).ToArray()));
    }

    [Test]
    public void StoreBeforeTheWait_IsAnError()
    {
        using var k = new Kit();
        var dOut = k.Dev.Allocate(256 * sizeof(float));
        k.Launch("store_before_wait", 1, 256, true, dOut);
        var e = Assert.Throws<EmulatorFaultException>(k.Sync)!;
        Assert.That(e.Message, Does.Contain("pdl check: store to global memory").And.Contain("before griddepcontrol.wait").And.Contain("kernel store_before_wait"));
    }

    [Test]
    public void LaunchDependentsBeforeTheWait_IsAnError()
    {
        using var k = new Kit();
        var dOut = k.Dev.Allocate(256 * sizeof(float));
        k.Launch("launch_before_wait", 1, 256, true, dOut);
        var e = Assert.Throws<EmulatorFaultException>(k.Sync)!;
        Assert.That(e.Message, Does.Contain("griddepcontrol.launch_dependents before griddepcontrol.wait").And.Contain("kernel launch_before_wait"));
    }

    [Test]
    public void ProgrammaticLaunch_OfAKernelWithoutAWait_IsRejectedAtLaunch()
    {
        using var k = new Kit();
        var dOut = k.Dev.Allocate(256 * sizeof(float));
        var e = Assert.Throws<DeviceException>(() => k.Launch("no_wait", 1, 256, true, dOut))!;
        Assert.That(e.Message, Does.Contain("launch of no_wait").And.Contain("no griddepcontrol.wait"));
        k.Launch("no_wait", 1, 256, false, dOut);   // without the flag it is an ordinary kernel
        k.Sync();
    }

    /// <summary>A prefetch touches the sectors of its 128-byte line inside the allocation; one outside any allocation is an error.</summary>
    [Test]
    public void Prefetch_TouchesItsLine_AndOutOfBoundsIsAnError()
    {
        using var k = new Kit();
        var buf = k.Upload(new float[100]);   // 400 bytes: lines [0, 128), ..., [384, 400) clipped to the allocation
        k.Launch("prefetch_at", 1, 1, false, buf, 130L);
        k.Sync();
        Assert.That(k.Dev.LastLaunch!.DistinctSectors, Is.EqualTo(4));
        Assert.That(k.Dev.LastLaunch!.GlobalLoadRequests, Is.Zero);
        Assert.That(k.Dev.LastLaunch!.PreWaitSectors, Is.Zero, "the kernel has no griddepcontrol.wait");
        k.Launch("prefetch_at", 1, 1, false, buf, 390L);
        k.Sync();
        Assert.That(k.Dev.LastLaunch!.DistinctSectors, Is.EqualTo(1), "bytes 384..399: one sector of the last line lies in the allocation");
        k.Launch("prefetch_at", 1, 1, false, buf, 400L);
        var e = Assert.Throws<EmulatorFaultException>(k.Sync)!;
        Assert.That(e.Message, Does.Contain("memcheck: out-of-bounds prefetch"));
    }
}
