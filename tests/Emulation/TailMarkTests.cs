using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// The tail mark (tail_begin() in kernels/common.cuh: `pmevent 7`): the emulator splits each warp's round trips and
/// instructions at its first mark, and the launch record keeps the largest parts before and from it
/// (docs/emulator.md, "Counters"; the timing model adds the longest tail after the waves, docs/timing-model.md section 2).
/// </summary>
public sealed class TailMarkTests
{
    private static readonly KernelCompiler Compiler = new(Path.Combine(Path.GetTempPath(), "qwen3cuda-emu-tests"));
    private const string Source = """
        __device__ __forceinline__ void tail_mark() { asm volatile("pmevent 7;" ::: "memory"); }
        __device__ __forceinline__ void other_event() { asm volatile("pmevent 3;" ::: "memory"); }

        // one DRAM round trip before the mark (a), one after it (b, at an index read from a); warp 1 marks twice (the first counts)
        extern "C" __global__ void trips_around_tail(const float* a, const float* b, float* out)
        {
            float x = a[threadIdx.x];
            other_event();
            tail_mark();
            float y = b[(int)x + threadIdx.x];
            tail_mark();
            out[threadIdx.x] = x + y;
        }
        extern "C" __global__ void no_tail(const float* a, float* out) { out[threadIdx.x] = a[threadIdx.x] * 2.f; }

        // two warps, two tails: warp 0's has a round trip, warp 1's more instructions and none
        extern "C" __global__ void two_tails(const float* a, float* out, int n)
        {
            float x = 0.f;
            tail_mark();
            if (threadIdx.x < 32) x = a[threadIdx.x];
            else for (int i = 0; i < n; i++) x = x * 1.5f + 1.f;
            out[threadIdx.x] = x;
        }
        """;

    [Test]
    public void RoundTripsAndInstructions_AreSplitAtTheFirstTailMark()
    {
        var compiled = Compiler.CompileSource("tail_test.cu", Source, new KernelBuild("tail_test.cu", "sm_90", CompileTarget.Ptx));
        using var dev = new EmulatedDevice(new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null });
        using var module = dev.LoadModule(compiled);
        DevicePtr Upload(float[] v)
        {
            var p = dev.Allocate(v.Length * sizeof(float));
            dev.CopyToDevice(p, MemoryMarshal.AsBytes(v.AsSpan()));
            return p;
        }
        var dA = Upload(new float[64]);
        var dB = Upload(Enumerable.Range(0, 64).Select(i => (float)i).ToArray());
        var dOut = dev.Allocate(64 * sizeof(float));
        var args = new KernelArgs(new byte[KernelArgs.DefaultBufferBytes], new nint[KernelArgs.MaxArgs]);
        args.Add(dA.Address); args.Add(dB.Address); args.Add(dOut.Address);
        dev.Launch(dev.GetKernel(module, "trips_around_tail"), new LaunchConfig(1, 64, 0), dev.DefaultStream, args);
        var plain = new KernelArgs(new byte[KernelArgs.DefaultBufferBytes], new nint[KernelArgs.MaxArgs]);
        plain.Add(dA.Address); plain.Add(dOut.Address);
        dev.Launch(dev.GetKernel(module, "no_tail"), new LaunchConfig(1, 64, 0), dev.DefaultStream, plain);
        dev.Synchronize(dev.DefaultStream);
        var r = dev.Launches[^2];
        Assert.That((r.MaxWarpPreTailDramRoundTrips, r.MaxWarpPreTailL2RoundTrips), Is.EqualTo((1L, 0L)), "a, before the mark");
        Assert.That((r.MaxWarpTailDramRoundTrips, r.MaxWarpTailL2RoundTrips), Is.EqualTo((1L, 0L)), "b, after it (the mark ends the open trip)");
        Assert.That(r.MaxWarpTailInstructions, Is.GreaterThan(0));
        Assert.That(r.MaxWarpPreTailInstructions + r.MaxWarpTailInstructions, Is.EqualTo(r.MaxWarpInstructions), "the warps run the same code: the parts add up");
        var none = dev.Launches[^1];
        Assert.That((none.MaxWarpTailInstructions, none.MaxWarpTailDramRoundTrips, none.MaxWarpTailL2RoundTrips), Is.EqualTo((0L, 0L, 0L)), "no mark, no tail");
        Assert.That(none.MaxWarpPreTailInstructions, Is.EqualTo(none.MaxWarpInstructions), "without a mark the whole warp is before it");
        Assert.That(none.TailChains, Is.Empty, "no mark, no tail chains");
        Assert.That(r.TailChains, Is.EqualTo(new[] { new TailChain(r.MaxWarpTailDramRoundTrips, r.MaxWarpTailL2RoundTrips, r.MaxWarpTailInstructions) }),
            "two warps with the same tail: one chain, the maxima");
    }

    /// <summary>The record keeps each warp's tail as its own chain (the ones no other covers): the maxima mix two warps.</summary>
    [Test]
    public void TailChains_AreTheWarpsOwn()
    {
        var compiled = Compiler.CompileSource("tail_test.cu", Source, new KernelBuild("tail_test.cu", "sm_90", CompileTarget.Ptx));
        using var dev = new EmulatedDevice(new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null });
        using var module = dev.LoadModule(compiled);
        var dA = dev.Allocate(64 * sizeof(float));
        dev.CopyToDevice(dA, new byte[64 * sizeof(float)]);
        var dOut = dev.Allocate(64 * sizeof(float));
        var args = new KernelArgs(new byte[KernelArgs.DefaultBufferBytes], new nint[KernelArgs.MaxArgs]);
        args.Add(dA.Address); args.Add(dOut.Address); args.Add(40);
        dev.Launch(dev.GetKernel(module, "two_tails"), new LaunchConfig(1, 64, 0), dev.DefaultStream, args);
        dev.Synchronize(dev.DefaultStream);
        var r = dev.Launches[^1];
        Assert.That(r.TailChains, Has.Count.EqualTo(2), string.Join(", ", r.TailChains));
        var load = r.TailChains.Single(c => c.DramRoundTrips == 1);
        var loop = r.TailChains.Single(c => c.DramRoundTrips == 0);
        Assert.That(loop.Instructions, Is.GreaterThan(load.Instructions), "the loop's tail is the longer in instructions");
        Assert.That((r.MaxWarpTailDramRoundTrips, r.MaxWarpTailInstructions), Is.EqualTo((1L, loop.Instructions)), "the maxima: one from each warp");
    }
}
