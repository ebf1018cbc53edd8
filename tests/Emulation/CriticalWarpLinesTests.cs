using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// <see cref="EmulatorOptions.CriticalWarpLines"/> (`profile --lines`): each launch records where the warp that executed
/// the most instructions spent them, per CUDA source line. Exact counts: the emulator counts every PTX instruction.
/// </summary>
public sealed class CriticalWarpLinesTests
{
    const string Source = """
        // warp 0 of each block loops n times, warp 1 once: warp 0 is the critical warp
        extern "C" __global__ void uneven(float* out, int n)
        {
            float acc = 0.f;
            const int iters = threadIdx.x < 32 ? n : 1;
            #pragma unroll 1
            for (int i = 0; i < iters; i++) {
                acc = acc * 0.5f + (float)i;   // the loop body
            }
            out[blockIdx.x * blockDim.x + threadIdx.x] = acc;
        }
        """;

    static readonly int BodyLine = Source.Split('\n').ToList().FindIndex(l => l.Contains("// the loop body")) + 1;

    static LaunchRecord Run(int n, EmulatorOptions options)
    {
        using var kit = new EmuKit(Source, options);
        var outBuf = kit.Zeros<float>(2 * 64);
        return kit.Launch("uneven", new Dim3(2), new Dim3(64), 0, outBuf, n);
    }

    [Test]
    public void TheCriticalWarpsInstructions_AddUpToItsCount_AndTheLoopBodyGrowsWithTheLoop()
    {
        var options = new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null, CriticalWarpLines = true };
        var r10 = Run(10, options);
        var r20 = Run(20, options);
        var r30 = Run(30, options);
        foreach (var r in new[] { r10, r20, r30 })
        {
            Assert.That(r.CriticalWarpLines, Is.Not.Empty);
            Assert.That(r.CriticalWarpLines.Sum(l => l.Instructions), Is.EqualTo(r.MaxWarpInstructions), "every instruction of the critical warp is on a line");
            Assert.That(r.CriticalWarpLines.Select(l => l.Instructions), Is.Ordered.Descending, "most first");
        }
        long Body(LaunchRecord r) => r.CriticalWarpLines.Single(l => l.Where == $"test.cu:{BodyLine}").Instructions;
        Assert.That(Body(r10), Is.GreaterThanOrEqualTo(10), "at least one instruction per iteration");
        Assert.That(Body(r20) - Body(r10), Is.Positive.And.EqualTo(Body(r30) - Body(r20)), "the body's instructions grow by the same count per 10 iterations");
        Assert.That(r20.CriticalWarpLines[0].Where, Is.EqualTo($"test.cu:{BodyLine}").Or.EqualTo($"test.cu:{BodyLine - 1}"),
            "the loop (its body or its control) is where the warp spends most");
    }

    [Test]
    public void ParallelRuns_PickTheSameWarp_AndTheProfileIsOffByDefault()
    {
        var sequential = Run(12, new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null, CriticalWarpLines = true });
        var parallel = Run(12, new EmulatorOptions { PrintfOutput = TextWriter.Null, CriticalWarpLines = true });
        Assert.That(parallel.CriticalWarpLines, Is.EqualTo(sequential.CriticalWarpLines), "both blocks' warp 0 tie: the lower block's is kept");
        Assert.That(Run(12, new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null }).CriticalWarpLines, Is.Empty);
    }
}
