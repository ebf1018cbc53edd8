using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// Uninitialised memory holds poison (docs/emulator.md): NaN bytes for even seeds, large finite bytes for odd ones, in
/// device allocations, shared and local memory and fresh pinned buffers. And the mode list that selects it.
/// </summary>
public class PoisonTests
{
    private const string Source = """
        extern "C" __global__ void read_uninit_shared(float* out) {
          __shared__ float s[64];
          if (threadIdx.x == 0) s[0] = 1.0f;
          __syncthreads();
          out[threadIdx.x] = s[threadIdx.x];
        }
        """;

    private static EmulatorOptions Seed(int seed) => new() { Sequential = true, PrintfOutput = TextWriter.Null, Modes = EmulatorModes.Ambient with { PoisonSeed = seed } };

    [TestCase(0, 0xFF)]
    [TestCase(1, 0x7F)]
    [TestCase(2, 0xFF)]
    [TestCase(3, 0xFE)]
    public void SeedPicksThePattern(int seed, int expected) => Assert.That(EmulatorModes.PoisonByte(seed), Is.EqualTo((byte)expected));

    [Test]
    public void EvenSeedsAreNaN_OddSeedsLargeAndFinite()
    {
        foreach (int seed in new[] { 0, 1, 2, 3 })
        {
            byte b = EmulatorModes.PoisonByte(seed);
            float f32 = BitConverter.UInt32BitsToSingle((uint)(b * 0x01010101));
            float bf16 = BitConverter.UInt32BitsToSingle((uint)(b << 24 | b << 16));
            if (seed % 2 == 0) Assert.That(float.IsNaN(f32) && float.IsNaN(bf16), $"seed {seed}: NaN as f32 and bf16");
            else
            {
                Assert.That(float.IsFinite(f32) && float.IsFinite(bf16), $"seed {seed}: finite");
                Assert.That(Math.Abs(f32), Is.GreaterThan(1e38f), $"seed {seed}: f32 garbage is huge");
                Assert.That(Math.Abs(bf16), Is.GreaterThan(1e38f), $"seed {seed}: bf16 garbage is huge");
            }
        }
    }

    [TestCase(0)]
    [TestCase(1)]
    [TestCase(3)]
    public void AllocationsSharedMemoryAndPinnedBuffersHoldThePattern(int seed)
    {
        byte p = EmulatorModes.PoisonByte(seed);
        using var kit = new EmuKit(Source, Seed(seed));
        var dev = kit.Dev;
        var raw = dev.Allocate(256);
        var back = new byte[256];
        dev.CopyToHost(back, raw);
        Assert.That(back.Count(x => x != p), Is.Zero, "a fresh allocation");
        using (var pinned = dev.AllocatePinned(100))
            Assert.That(pinned.Span.ToArray().Count(x => x != p), Is.Zero, "a fresh pinned buffer");
        var outp = dev.Allocate(64 * 4);
        kit.Launch("read_uninit_shared", 1, 64, 0, outp);
        var got = kit.Download<float>(outp, 64);
        Assert.That(got[0], Is.EqualTo(1f));
        float poisoned = BitConverter.UInt32BitsToSingle((uint)(p * 0x01010101));
        for (int i = 1; i < 64; i++) Assert.That(BitConverter.SingleToUInt32Bits(got[i]), Is.EqualTo(BitConverter.SingleToUInt32Bits(poisoned)), $"shared word {i}");
    }

    [Test]
    public void ModesParseAndPrintBack()
    {
        var m = EmulatorModes.Parse("strict-streams, its=3 ,hw-math=5,poison=1");
        Assert.That(m.StrictStreams && m.Interleaved && m.HardwareMath, Is.True);
        Assert.That((m.ScheduleSeed, m.MathSeed, m.PoisonSeed), Is.EqualTo((3, 5, 1)));
        Assert.That(EmulatorModes.Parse(m.ToString()), Is.EqualTo(m));
        Assert.That(EmulatorModes.Parse("strict"), Is.EqualTo(EmulatorModes.Fast with { StrictStreams = true, Scheduling = ThreadScheduling.Interleaved, HardwareMath = true }));
        Assert.That(EmulatorModes.Parse("strict,fast"), Is.EqualTo(EmulatorModes.Fast));
        Assert.That(EmulatorModes.Parse("its,lockstep,eager-streams", m), Is.EqualTo(m with { Scheduling = ThreadScheduling.Lockstep, ScheduleSeed = 0, StrictStreams = false }), "its without a seed is seed 0");
        Assert.That(() => EmulatorModes.Parse("turbo"), Throws.ArgumentException.With.Message.Contains("unknown emulator mode 'turbo'").And.Message.Contains("hw-math"));
        Assert.That(() => EmulatorModes.Parse("its=x"), Throws.ArgumentException.With.Message.Contains("non-negative integer"));
        Assert.That(() => EmulatorModes.Parse("poison"), Throws.ArgumentException.With.Message.Contains("poison=N"));
        Assert.That(() => EmulatorModes.Parse("lockstep=2"), Throws.ArgumentException.With.Message.Contains("takes no value"));
    }
}
