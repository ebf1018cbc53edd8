using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Issue 12, fault 6: a launch that fails while the decode graphs are captured. On CUDA the failed launch invalidates the
/// capture and cuStreamEndCapture then fails as well; the model used to end the capture in a catch block, so the user saw
/// "capture invalidated" instead of the launch error. <see cref="CaptureBreakingDevice"/> does what CUDA does.
/// </summary>
public class CaptureFailureTests
{
    /// <summary>Fails the <c>failAt</c>-th kernel launch issued while a stream captures; EndCapture of that capture then fails.</summary>
    sealed class CaptureBreakingDevice(IDevice inner, int failAt) : ForwardingDevice(inner)
    {
        int _captured;
        bool _invalidated;

        public override void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args)
        {
            if (stream.IsCapturing && ++_captured == failAt)
            {
                _invalidated = true;
                throw new DeviceException($"injected: launch of {kernel.Name} failed (CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES)");
            }
            base.Launch(kernel, config, stream, args);
        }

        public override DeviceGraph EndCapture(DeviceStream stream)
        {
            var graph = base.EndCapture(stream);
            if (!_invalidated) return graph;
            graph.Dispose();
            throw new DeviceException("cuStreamEndCapture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED");
        }
    }

    [TestCase(1)]    // the first launch of the first graph
    [TestCase(40)]   // inside a later layer
    public void FailedLaunchDuringCapture_KeepsItsOwnException(int failAt)
    {
        using var weights = ModelWeights.Load(DeviceCheckpoints.Tiny());
        using var device = new CaptureBreakingDevice(new EmulatedDevice(), failAt);
        var options = new DeviceModelOptions { ContextLength = 32, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 2 };
        var e = Assert.Throws<DeviceException>(() => new Qwen3Cuda.Model.Device.DeviceModel(device, weights, options));
        Assert.That(e!.Message, Does.StartWith("injected: launch of "), "the launch error, not the EndCapture error that followed it");
        Assert.That(e.Data[DeviceCapture.CleanupFailuresKey] as string, Does.Contain("CAPTURE_INVALIDATED"), "the cleanup failure is kept beside it");
    }

    [Test]
    public void Capture_EndsTheCaptureAndRethrowsTheBodysException()
    {
        using var device = new EmulatedDevice();
        using var stream = device.CreateStream();
        var e = Assert.Throws<InvalidOperationException>(() => device.Capture(stream, () => throw new InvalidOperationException("body failed")));
        Assert.That(e!.Message, Is.EqualTo("body failed"));
        Assert.That(stream.IsCapturing, Is.False, "the stream left capture mode");
        using var graph = device.Capture(stream, () => device.MemsetAsync(device.Allocate(64), 0, 64, stream));
        Assert.That(graph, Is.Not.Null);
    }
}
