namespace Qwen3Cuda.Tests.Emulation;

/// <summary>shfl in every mode with widths and partial masks; vote, match, redux.</summary>
public class WarpOpsTests
{
    private const string Source = """
        extern "C" __global__ void shuffles(int* out, int width, int delta) {
          int lane = threadIdx.x & 31;
          int v = lane * 10 + 1;
          out[0 * 32 + lane] = __shfl_sync(0xffffffffu, v, delta, width);
          out[1 * 32 + lane] = __shfl_up_sync(0xffffffffu, v, delta, width);
          out[2 * 32 + lane] = __shfl_down_sync(0xffffffffu, v, delta, width);
          out[3 * 32 + lane] = __shfl_xor_sync(0xffffffffu, v, delta, width);
          if (lane < 16) out[4 * 32 + lane] = __shfl_xor_sync(0x0000ffffu, v, delta & 15, 16);
          else out[4 * 32 + lane] = -1;
        }
        extern "C" __global__ void votes(unsigned* out, const int* keys) {
          int lane = threadIdx.x & 31;
          int k = keys[lane];
          out[0 * 32 + lane] = __ballot_sync(0xffffffffu, k > 2);
          out[1 * 32 + lane] = __all_sync(0xffffffffu, k >= 0);
          out[2 * 32 + lane] = __any_sync(0xffffffffu, k == 5);
          out[3 * 32 + lane] = __match_any_sync(0xffffffffu, k);
          out[4 * 32 + lane] = __reduce_add_sync(0xffffffffu, (unsigned)k);
          out[5 * 32 + lane] = __reduce_max_sync(0xffffffffu, (unsigned)k);
          unsigned m = 0;
          if (k & 1) m = __activemask();
          out[6 * 32 + lane] = m;
          out[7 * 32 + lane] = __popc(__ballot_sync(0xffffffffu, 1));
        }
        """;

    /// <summary>CUDA's shfl semantics (ISA formula with c = ((32-width)&lt;&lt;8) | clamp).</summary>
    private static int Shfl(string mode, int[] v, int lane, int b, int width)
    {
        int seg = (32 - width) & 31, clamp = mode == "up" ? 0 : 31;
        int maxLane = (lane & seg) | (clamp & ~seg), minLane = lane & seg;
        int j; bool ok;
        switch (mode)
        {
            case "up": j = lane - b; ok = j >= maxLane; break;
            case "down": j = lane + b; ok = j <= maxLane; break;
            case "bfly": j = lane ^ b; ok = j <= maxLane; break;
            default: j = minLane | (b & ~seg); ok = j <= maxLane; break;
        }
        return v[ok ? j : lane];
    }

    [TestCase(32, 1)]
    [TestCase(32, 5)]
    [TestCase(16, 3)]
    [TestCase(8, 2)]
    [TestCase(8, 7)]
    [TestCase(4, 1)]
    public void ShuffleModesAndWidths(int width, int delta)
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<int>(5 * 32);
        kit.Launch("shuffles", 1, 32, 0, d, width, delta);
        var got = kit.Download<int>(d, 5 * 32);
        var v = Enumerable.Range(0, 32).Select(l => l * 10 + 1).ToArray();
        for (int l = 0; l < 32; l++)
        {
            // __shfl_sync's srcLane is taken modulo width by CUDA (b & (width-1) via the segment mask)
            Assert.That(got[l], Is.EqualTo(Shfl("idx", v, l, delta, width)), $"idx lane {l}");
            Assert.That(got[32 + l], Is.EqualTo(Shfl("up", v, l, delta, width)), $"up lane {l}");
            Assert.That(got[64 + l], Is.EqualTo(Shfl("down", v, l, delta, width)), $"down lane {l}");
            Assert.That(got[96 + l], Is.EqualTo(Shfl("bfly", v, l, delta, width)), $"xor lane {l}");
            Assert.That(got[128 + l], Is.EqualTo(l < 16 ? Shfl("bfly", v, l, delta & 15, 16) : -1), $"partial-mask lane {l}");
        }
    }

    [Test]
    public void VoteMatchReduxActivemask()
    {
        using var kit = new EmuKit(Source);
        var keys = Enumerable.Range(0, 32).Select(l => (l * 7) % 6).ToArray();
        var dk = kit.Upload(keys);
        var d = kit.Zeros<uint>(8 * 32);
        kit.Launch("votes", 1, 32, 0, d, dk);
        var got = kit.Download<uint>(d, 8 * 32);
        uint ballot = 0, odd = 0;
        for (int l = 0; l < 32; l++) { if (keys[l] > 2) ballot |= 1u << l; if ((keys[l] & 1) != 0) odd |= 1u << l; }
        for (int l = 0; l < 32; l++)
        {
            uint match = 0;
            for (int k = 0; k < 32; k++) if (keys[k] == keys[l]) match |= 1u << k;
            Assert.That(got[l], Is.EqualTo(ballot));
            Assert.That(got[32 + l], Is.EqualTo(1u));
            Assert.That(got[64 + l], Is.EqualTo(keys.Contains(5) ? 1u : 0u));
            Assert.That(got[96 + l], Is.EqualTo(match), $"match lane {l}");
            Assert.That(got[128 + l], Is.EqualTo((uint)keys.Sum()));
            Assert.That(got[160 + l], Is.EqualTo((uint)keys.Max()));
            Assert.That(got[192 + l], Is.EqualTo((keys[l] & 1) != 0 ? odd : 0u), $"activemask lane {l}");
            Assert.That(got[224 + l], Is.EqualTo(32u));
        }
    }
}
