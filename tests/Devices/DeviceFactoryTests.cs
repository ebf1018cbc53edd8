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

    [Test]
    public void AutoIsCudaExactlyWhenADeviceIsPresent()
    {
        var expected = CudaDriver.IsDeviceAvailable() ? BackendKind.Cuda : BackendKind.Emulator;
        Assert.That(DeviceFactory.Resolve(BackendKind.Auto), Is.EqualTo(expected));
        using IDevice d = DeviceFactory.Open(BackendKind.Auto);
        Assert.That(d.Info.Backend, Is.EqualTo(expected));
    }
}
