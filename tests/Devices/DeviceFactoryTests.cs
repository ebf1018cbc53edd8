using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;

namespace Qwen3Cuda.Tests.Devices;

[TestFixture]
public class DeviceFactoryTests
{
    [TestCase("auto", BackendKind.Auto)]
    [TestCase("CUDA", BackendKind.Cuda)]
    [TestCase("emulator", BackendKind.Emulator)]
    [TestCase("cpu", BackendKind.Cpu)]
    public void ParsesDeviceNames(string text, BackendKind kind) => Assert.That(DeviceFactory.Parse(text), Is.EqualTo(kind));

    [Test]
    public void UnknownDeviceNamesTheOption()
    {
        var e = Assert.Throws<ArgumentException>(() => DeviceFactory.Parse("tpu"));
        Assert.That(e!.Message, Does.Contain("--device 'tpu'"));
    }

    static DeviceInfo Gpu => new()
    {
        Name = "NVIDIA H100 80GB HBM3", Backend = BackendKind.Cuda, ComputeMajor = 9, ComputeMinor = 0, MultiprocessorCount = 132,
        SharedMemoryPerBlock = 48 << 10, SharedMemoryPerBlockOptin = 227 << 10, SharedMemoryPerMultiprocessor = 228 << 10,
        MaxThreadsPerBlock = 1024, WarpSize = 32, TotalMemoryBytes = 80L << 30,
    };

    /// <summary>The decision of --device auto from a driver probe, for every outcome of the probe (no GPU needed).</summary>
    [Test]
    public void ChooseAuto_DecidesFromTheProbe()
    {
        var noDriver = DeviceFactory.ChooseAuto(new CudaDriverStatus(false, null, 0, [], "no CUDA driver found (tried libcuda.so.1)"));
        Assert.That(noDriver.Backend, Is.EqualTo(BackendKind.Emulator));
        Assert.That(noDriver.Reason, Is.EqualTo("no CUDA driver found (tried libcuda.so.1): running on the PTX emulator (slow; --device cpu for the C# reference)"));

        var initFailed = DeviceFactory.ChooseAuto(new CudaDriverStatus(true, "/usr/lib/libcuda.so.1", 12040, [], "cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)"));
        Assert.That(initFailed.Backend, Is.EqualTo(BackendKind.Emulator));
        Assert.That(initFailed.Reason, Does.StartWith("cuInit failed: CUDA_ERROR_NO_DEVICE").And.Contain("PTX emulator"));

        var noProblemText = DeviceFactory.ChooseAuto(new CudaDriverStatus(true, "/usr/lib/libcuda.so.1", 12040, [], null));
        Assert.That(noProblemText.Backend, Is.EqualTo(BackendKind.Emulator));
        Assert.That(noProblemText.Reason, Does.StartWith("no CUDA device present"));

        var gpu = DeviceFactory.ChooseAuto(new CudaDriverStatus(true, "/usr/lib/libcuda.so.1", 12040, [Gpu, Gpu with { Name = "second" }], null));
        Assert.That(gpu.Backend, Is.EqualTo(BackendKind.Cuda));
        Assert.That(gpu.Reason, Is.EqualTo("CUDA device 0 (NVIDIA H100 80GB HBM3, sm_90, driver 12.4): running on the GPU"));
    }

    [Test]
    [Category(Kernels.KernelBackends.GpuCategory)]
    public void AutoIsCudaExactlyWhenADeviceIsPresent()
    {
        var expected = CudaDriver.IsDeviceAvailable() ? BackendKind.Cuda : BackendKind.Emulator;
        Assert.That(DeviceFactory.Resolve(BackendKind.Auto), Is.EqualTo(expected));
        using IDevice d = DeviceFactory.Open(BackendKind.Auto);
        Assert.That(d.Info.Backend, Is.EqualTo(expected));
    }
}
