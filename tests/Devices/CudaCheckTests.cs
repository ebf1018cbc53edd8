using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Tests.Devices;

/// <summary>
/// CudaCheck with an interpolated call text (every copy, memset and graph launch of a decode step): nothing is formatted
/// or allocated when the call succeeded, the text is built when it failed. Checked with this thread's allocation counter
/// (the interpolation allocated a string per call before the handler overload).
/// </summary>
public class CudaCheckTests
{
    [Test]
    public void SuccessPath_AllocatesNothing()
    {
        var dst = new DevicePtr(0x7f00_1234_0000UL);
        long bytes = 4096;
        CudaCheck.Check(CuResult.Success, $"cuMemcpyHtoDAsync_v2({dst}, {bytes})");   // JIT and first-use allocations
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++) CudaCheck.Check(CuResult.Success, $"cuMemcpyHtoDAsync_v2({dst}, {bytes + i})");
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.Zero);
        // the measurement can fail: the same calls with the text formatted first (the old string overload) allocate
        before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 1000; i++) CudaCheck.Check(CuResult.Success, (string)$"cuMemcpyHtoDAsync_v2({dst}, {bytes + i})");
        Assert.That(GC.GetAllocatedBytesForCurrentThread() - before, Is.GreaterThan(1000 * 32));
    }

    [Test]
    public void FailurePath_BuildsTheCallText()
    {
        var dst = new DevicePtr(0x1234);
        var skipped = new CudaCheck.CallText(4, 1, CuResult.Success, out bool build);
        Assert.That(build, Is.False);
        var text = new CudaCheck.CallText(19, 2, CuResult.InvalidValue, out build);
        Assert.That(build, Is.True);
        text.AppendLiteral("cuMemsetD8Async(");
        text.AppendFormatted(dst);
        text.AppendLiteral(", ");
        text.AppendFormatted(64);
        text.AppendLiteral(")");
        Assert.That(text.ToStringAndClear(), Is.EqualTo("cuMemsetD8Async(0x1234, 64)"));
        _ = skipped;
    }
}
