using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

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

    /// <summary>Both handler widths: Vector512 (when this CPU has AVX-512; otherwise both runs use Vector256) and Vector256.</summary>
    [TestCase(true)]
    [TestCase(false)]
    public void FullWarpFastPathsMatchGenericHandlers(bool avx512)
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
        using var kit = new EmuKit(Source, new EmulatorOptions { Sequential = true, UseAvx512 = avx512, PrintfOutput = TextWriter.Null });
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

    private const string MemorySource = """
        // global access patterns the uniform-stride fast path and the v4 transpose take, plus ones they must decline
        extern "C" __global__ void patterns(float* out, const float* in, const uint4* in4, uint4* out4, const int* idx) {
          int t = blockIdx.x * blockDim.x + threadIdx.x;
          float a = in[t];                    // contiguous, 4 B
          float b = in[2 * t + 1];            // stride 8 B
          float c = in[16 * (t & 31)];        // stride 64 B: one sector per lane
          float d = in[7];                    // broadcast (stride 0)
          float e = in[255 - t];              // negative stride
          float f = in[idx[t]];               // gather: no uniform stride
          uint4 v = in4[t];                   // v4 contiguous (transpose)
          uint4 w = in4[2 * (t & 31) + 64];   // v4 at stride 32 B (transpose)
          out[t] = a + 2 * b + 3 * c + 4 * d + 5 * e + 6 * f;
          out[256 + 2 * t] = a;               // strided store
          out4[t] = make_uint4(v.w ^ w.x, v.z + w.y, v.y - w.z, v.x | w.w);   // v4 contiguous store
          out4[160 + 2 * (t & 31)] = v;       // v4 store at stride 32 B
        }
        """;

    /// <summary>
    /// The global fast path (uniform-stride detection, strided copies, the v4 transpose, sector ranges) against the
    /// per-lane path: strict mode (initcheck) turns the fast path off, so the same launch runs both ways. Data and
    /// every memory counter must be identical (both paths do exact copies; the counters count the same sectors).
    /// </summary>
    [Test]
    public void GlobalFastPathMatchesPerLanePathInDataAndCounters()
    {
        var rnd = new Random(11);
        var x = Enumerable.Range(0, 1024).Select(_ => (float)rnd.NextDouble()).ToArray();
        var x4 = Enumerable.Range(0, 4 * 256).Select(_ => (uint)rnd.Next()).ToArray();
        var idx = Enumerable.Range(0, 64).Select(_ => rnd.Next(0, 1024)).ToArray();
        (float[] Out, uint[] Out4, LaunchRecord Rec) Run(bool strict)
        {
            using var kit = new EmuKit(MemorySource, new EmulatorOptions { Sequential = true, Strict = strict, PrintfOutput = TextWriter.Null });
            var din = kit.Upload(x);
            var din4 = kit.Upload(x4);
            var dout = kit.Zeros<float>(512);
            var dout4 = kit.Zeros<uint>(4 * 224);
            var didx = kit.Upload(idx);
            var rec = kit.Launch("patterns", new Dim3(2), new Dim3(32), 0, dout, din, din4, dout4, didx);
            return (kit.Download<float>(dout, 512), kit.Download<uint>(dout4, 4 * 224), rec);
        }
        var fast = Run(strict: false);
        var slow = Run(strict: true);
        Assert.That(fast.Out, Is.EqualTo(slow.Out), "float outputs");
        Assert.That(fast.Out4, Is.EqualTo(slow.Out4), "uint4 outputs");
        var (f, s) = (fast.Rec, slow.Rec);
        Assert.Multiple(() =>
        {
            Assert.That(f.GlobalLoadRequests, Is.EqualTo(s.GlobalLoadRequests), "load requests");
            Assert.That(f.GlobalStoreRequests, Is.EqualTo(s.GlobalStoreRequests), "store requests");
            Assert.That(f.GlobalLoadBytes, Is.EqualTo(s.GlobalLoadBytes), "load bytes");
            Assert.That(f.GlobalStoreBytes, Is.EqualTo(s.GlobalStoreBytes), "store bytes");
            Assert.That(f.GlobalLoadSectors, Is.EqualTo(s.GlobalLoadSectors), "load sectors");
            Assert.That(f.GlobalStoreSectors, Is.EqualTo(s.GlobalStoreSectors), "store sectors");
            Assert.That(f.DistinctSectors, Is.EqualTo(s.DistinctSectors), "distinct sectors");
            Assert.That(f.WarpInstructions, Is.EqualTo(s.WarpInstructions), "warp instructions");
        });
        // and the outputs are right, not just equal: spot-check lane 5 of block 1 against a host computation
        int t = 37;
        float want = x[t] + 2 * x[2 * t + 1] + 3 * x[16 * (t & 31)] + 4 * x[7] + 5 * x[255 - t] + 6 * x[idx[t]];
        Assert.That(fast.Out[t], Is.EqualTo(want).Within(1e-5f), "fp32 sum of six terms (order may differ from the host's: a few ulps)");
        Assert.That(fast.Out4[4 * t], Is.EqualTo(x4[4 * t + 3] ^ x4[4 * (2 * (t & 31) + 64)]), "out4.x");
        Assert.That(fast.Out4[4 * (160 + 2 * (t & 31)) + 2], Is.EqualTo(x4[4 * t + 2]), "strided v4 store .z");
    }
}
