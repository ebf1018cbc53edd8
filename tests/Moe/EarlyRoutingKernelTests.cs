using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Tests.Kernels;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>
/// Early routing's kernels on every backend present (checks: src/Model/Selftest/EarlyRoutingCases.cs): moe_router_fold
/// against the fp64 fold of <c>EarlyRouting.FoldRouter</c>, moe_early_route against <c>EarlyRouting.UnscaledLogits</c> and
/// the top-k of its own logits (ties to the lower expert), at the tiny, odd and real shapes.
/// </summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class EarlyRoutingKernelTests(string backend) : KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(EarlyRoutingCases), nameof(EarlyRoutingCases.All))]
    public void EarlyRouting(KernelCase c) => Passes(c);
}

public sealed class EarlyRoutingLauncherTests
{
    [Test]
    public void ParamsMatchTheCudaStructs()
    {
        StructLayoutCheck.AssertMatches(typeof(MoeRouterFoldParams), EarlyRoutingLaunchers.File, "MoeRouterFoldParams");
        StructLayoutCheck.AssertMatches(typeof(MoeEarlyRouteParams), EarlyRoutingLaunchers.File, "MoeEarlyRouteParams");
    }

    /// <summary>Shapes and sizes the kernels do not take are a clear error naming the argument, before any launch.</summary>
    [Test]
    public void BadArguments_AreRejectedWithAClearMessage()
    {
        using var emu = new EmulatorContext();
        var l = new EarlyRoutingLaunchers(emu.Loader);
        var p = emu.Alloc<byte>(64);
        var s = emu.Stream;
        Assert.That(() => l.Route(s, 5, 128, 8, 2048, 4096, p, p, p, p, p, p, p, p), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("1 to 4 tokens"));
        Assert.That(() => l.Route(s, 1, 300, 8, 2048, 4096, p, p, p, p, p, p, p, p), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("1 to 256 experts"));
        Assert.That(() => l.Route(s, 1, 8, 9, 64, 64, p, p, p, p, p, p, p, p), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("top-k must be 1..8 for 8 experts"));
        Assert.That(() => l.Route(s, 1, 128, 8, 2044, 4096, p, p, p, p, p, p, p, p), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("hidden size must be a positive multiple of 8"));
        Assert.That(() => l.Route(s, 1, 128, 8, 2048, 4096, p, p, p, p, p, p, p, DevicePtr.Null), Throws.ArgumentException.With.Message.Contains("every buffer"));
        Assert.That(() => l.Fold(s, 128, 2048, 4100, p, p, p, p), Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("query dimension"));
        Assert.That(() => l.Fold(s, 128, 2048, 4096, p, p, DevicePtr.Null, p), Throws.ArgumentException.With.Message.Contains("o_proj"));
    }
}
