using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>The project's own kernels (kernels/*.cu) through their launchers on the emulator.</summary>
public class RealKernelTests
{
    private static ushort Bf16(float f)
    {
        uint u = BitConverter.SingleToUInt32Bits(f);
        return (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
    }

    private static float F(ushort h) => BitConverter.UInt32BitsToSingle((uint)h << 16);

    [TestCase(3, 2048)]
    [TestCase(2, 520)]
    public void AddRmsNormMatchesReference(int rows, int width)
    {
        using var dev = new EmulatedDevice(new EmulatorOptions { PrintfOutput = TextWriter.Null });
        using var loader = new KernelLoader(dev, new KernelCompiler(Path.Combine(Path.GetTempPath(), "qwen3cuda-emu-tests")));
        var launch = new RmsNormLaunchers(loader);
        var rnd = new Random(7);
        ushort[] Rand(int n, float scale) => Enumerable.Range(0, n).Select(_ => Bf16((float)(rnd.NextDouble() * 2 - 1) * scale)).ToArray();
        var h = Rand(rows * width, 3f);
        var d = Rand(rows * width, 1f);
        var w = Rand(width, 1.5f);
        DevicePtr Up(ushort[] a) { var p = dev.Allocate(a.Length * 2); dev.CopyToDevice(p, MemoryMarshal.AsBytes(a.AsSpan())); return p; }
        var dh = Up(h); var dd = Up(d); var dw = Up(w);
        var dout = dev.Allocate(rows * width * 2);
        launch.AddRmsNorm(dev.DefaultStream, dout, dh, dd, dw, rows, width, 1e-6f);
        var got = new ushort[rows * width];
        var gotH = new ushort[rows * width];
        dev.CopyToHost(MemoryMarshal.AsBytes(got.AsSpan()), dout);
        dev.CopyToHost(MemoryMarshal.AsBytes(gotH.AsSpan()), dh);
        for (int r = 0; r < rows; r++)
        {
            var sum = new float[width];
            double ss = 0;
            for (int i = 0; i < width; i++) { sum[i] = F(Bf16(F(h[r * width + i]) + F(d[r * width + i]))); ss += (double)sum[i] * sum[i]; }
            float inv = (float)(1 / Math.Sqrt(ss / width + 1e-6));
            for (int i = 0; i < width; i++)
            {
                // residual add: one bf16 rounding of an exact f32 sum, bit-exact
                Assert.That(gotH[r * width + i], Is.EqualTo(Bf16(sum[i])), $"hidden row {r} col {i}");
                float want = F(Bf16(F(Bf16(sum[i] * inv)) * F(w[i])));
                // two bf16 roundings and an fp32 reduction in another order: within 2 bf16 ulps (2 * 2^-8 relative)
                Assert.That(F(got[r * width + i]), Is.EqualTo(want).Within(Math.Abs(want) * 2 * 0.0078125 + 1e-30), $"out row {r} col {i}");
            }
        }
        var rec = dev.LastLaunch!;
        Assert.That(rec.Kernel, Is.EqualTo("add_rmsnorm_bf16"));
        Assert.That(rec.Barriers, Is.GreaterThan(0));
    }
}
