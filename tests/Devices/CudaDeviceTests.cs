using Qwen3Cuda.Model;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Devices;

/// <summary>Tests that need a real GPU: skipped (with the reason) on machines without one, as in CI.</summary>
[TestFixture]
public class CudaDeviceTests
{
    private CudaDevice _device = null!;

    [OneTimeSetUp]
    public void Open()
    {
        var status = CudaDriver.Probe();
        if (status.Devices.Count == 0) Assert.Ignore("needs a CUDA GPU: " + (status.Problem ?? "none present"));
        _device = CudaDevice.Open(0);
    }

    [OneTimeTearDown]
    public void Close() => _device?.Dispose();

    [Test]
    public void AddRmsNormOnTheGpuMatchesTheHostComputation()
    {
        const int rows = 3, width = 2048;
        var rng = new Random(1);
        ushort[] hidden = Enumerable.Range(0, rows * width).Select(_ => Bf16.FromFloat((float)(rng.NextDouble() * 4 - 2))).ToArray();
        ushort[] delta = Enumerable.Range(0, rows * width).Select(_ => Bf16.FromFloat((float)(rng.NextDouble() - 0.5))).ToArray();
        ushort[] weight = Enumerable.Range(0, width).Select(_ => Bf16.FromFloat((float)(rng.NextDouble() + 0.5))).ToArray();
        using var loader = new KernelLoader(_device);
        var rms = new RmsNormLaunchers(loader);
        DevicePtr dH = Upload(hidden), dD = Upload(delta), dW = Upload(weight), dO = _device.Allocate(rows * width * 2);
        rms.AddRmsNorm(_device.DefaultStream, dO, dH, dD, dW, rows, width, 1e-6f);
        var outBits = new ushort[rows * width];
        _device.CopyToHost(System.Runtime.InteropServices.MemoryMarshal.AsBytes(outBits.AsSpan()), dO);
        for (int r = 0; r < rows; r++)
        {
            var sum = new float[width];
            double ss = 0;
            for (int i = 0; i < width; i++)
            {
                sum[i] = Bf16.Round(Bf16.ToFloat(hidden[r * width + i]) + Bf16.ToFloat(delta[r * width + i]));
                ss += sum[i] * (double)sum[i];
            }
            float inv = 1f / MathF.Sqrt((float)(ss / width) + 1e-6f);
            for (int i = 0; i < width; i++)
            {
                float expected = Bf16.Round(Bf16.Round(sum[i] * inv) * Bf16.ToFloat(weight[i]));
                float got = Bf16.ToFloat(outBits[r * width + i]);
                // one bf16 ulp (2^-7 relative): rsqrt.approx and the fp32 reduction order can move a rounding boundary
                Assert.That(got, Is.EqualTo(expected).Within(Math.Abs(expected) * (1.0 / 128) + 1e-6), $"row {r} col {i}");
            }
        }
        foreach (var p in new[] { dH, dD, dW, dO }) _device.Free(p);
    }

    private DevicePtr Upload(ushort[] data)
    {
        DevicePtr p = _device.Allocate(data.Length * 2L);
        _device.CopyToDevice(p, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
        return p;
    }
}
