using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// The full-warp fast paths (Vector256 ALU, integer setp, selp, direct global loads/stores) must give bit-identical
/// results to the generic per-lane handlers: the same kernel runs once with 32 threads (every instruction executes
/// with a full mask, so the fast paths run) and once with 31 threads (partial mask, so only generic handlers run).
/// </summary>
public class FastPathTests
{
    private const string Source = """
        extern "C" __global__ void mix(unsigned* out, const int* xi, const float* xf, const unsigned* xb) {
          int t = threadIdx.x;
          int a = xi[t], b = xi[63 - t];
          float f = xf[t], g = xf[63 - t];
          unsigned w = xb[t];
          unsigned* o = out + t * 13;
          o[0] = (a < b) + 2 * (a >= b) + 4 * ((unsigned)a < (unsigned)b) + 8 * (a == b) + 16 * ((unsigned)a > (unsigned)b) + 32 * (a != b);
          o[1] = a > b ? (unsigned)a : (unsigned)b;
          o[2] = ((unsigned)a << 7) ^ ((unsigned)b >> 3) ^ (unsigned)(a >> 5);
          long long m = (long long)a * b;
          o[3] = (unsigned)m;
          o[4] = (unsigned)((unsigned long long)m >> 32);
          long long s = (long long)a + (long long)(unsigned)b;
          o[5] = (unsigned)(s >> 33);
          o[6] = __float_as_uint(f + g);
          o[7] = __float_as_uint(f - g);
          o[8] = __float_as_uint(f * g);
          o[9] = __float_as_uint(fmaf(f, g, f));
          o[10] = __float_as_uint(__uint_as_float(w << 16) * f) ^ __float_as_uint(__uint_as_float(w & 0xffff0000u));
          o[11] = (w & 0xffff0000u) | (unsigned)(a * b + t);
          o[12] = __float_as_uint((float)a) ^ __float_as_uint((float)(a >> 9));
        }
        """;

    [Test]
    public void FullWarpFastPathsMatchGenericHandlers()
    {
        var rnd = new Random(7);
        var xi = new int[64];
        var xf = new float[64];
        var xb = new uint[64];
        float[] specials = [0f, -0f, 1e-40f, -3e-39f, float.PositiveInfinity, float.NegativeInfinity, float.MaxValue, 1.5f];
        for (int i = 0; i < 64; i++)
        {
            xi[i] = i % 5 == 0 ? xi[Math.Max(0, 63 - i)] : rnd.Next(int.MinValue, int.MaxValue); // some equal pairs
            xf[i] = i < specials.Length ? specials[i] : (float)((rnd.NextDouble() - 0.5) * Math.Pow(2, rnd.Next(-130, 120)));
            xb[i] = (uint)rnd.Next() ^ ((uint)rnd.Next() << 16);
        }
        using var kit = new EmuKit(Source);
        var pi = kit.Upload(xi);
        var pf = kit.Upload(xf);
        var pb = kit.Upload(xb);
        var full = kit.Zeros<uint>(32 * 13);
        var partial = kit.Zeros<uint>(32 * 13);
        kit.Launch("mix", new Dim3(1), new Dim3(32), 0, full, pi, pf, pb);
        kit.Launch("mix", new Dim3(1), new Dim3(31), 0, partial, pi, pf, pb);
        var a = kit.Download<uint>(full, 31 * 13);
        var b = kit.Download<uint>(partial, 31 * 13);
        // bit-exact: both paths implement the same IEEE / integer operations (no NaN inputs, whose payloads are not specified)
        for (int i = 0; i < a.Length; i++)
            Assert.That(a[i], Is.EqualTo(b[i]), $"thread {i / 13}, output {i % 13}: full-warp path 0x{a[i]:x8}, per-lane path 0x{b[i]:x8}");
    }
}
