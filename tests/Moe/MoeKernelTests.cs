using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>
/// The MoE kernels on every backend present (checks: src/Model/Selftest/MoeCases.cs): moe_router_topk against
/// ReferenceOps.Matmul + RouterTopK on exact-sum data (logits exact in any order; non-finite logits never give an invalid
/// id, issue 12 fault 3), moe_align against a CPU grouping, and the whole block at reduced, odd and the real shape (on the
/// emulator the one-token decode also holds each kernel's DRAM bytes and coalescing to bounds).
/// </summary>
[TestFixtureSource(typeof(Kernels.KernelBackends), nameof(Kernels.KernelBackends.All))]
public sealed class MoeKernelTests(string backend) : Kernels.KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(MoeCases), nameof(MoeCases.Router))]
    public void Router(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(MoeCases), nameof(MoeCases.Align))]
    public void Align(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(MoeCases), nameof(MoeCases.Block))]
    public void Block(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(MoeCases), nameof(MoeCases.RealBlock))]
    public void RealShapeBlock(KernelCase c) => Passes(c);

    /// <summary>fp8 / int8 experts (docs/formats.md): lossless quantizations of the bf16 cases, same reference and tolerance.</summary>
    [TestCaseSource(typeof(QuantizedCases), nameof(QuantizedCases.MoeBlock))]
    public void QuantizedBlock(KernelCase c) => Passes(c);
}

public sealed class MoeLauncherTests
{
    [Test]
    public void UnsupportedShapes_AreRejectedWithAClearMessage()
    {
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(300, 8, 2048, 768, true), true), Throws.ArgumentException.With.Message.Contains("300 experts"));
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 17, 2048, 768, true), true), Throws.ArgumentException.With.Message.Contains("top-k 17"));
        // The grouped GEMMs step K by 32: I 80 decodes (GEMVs) but has no grouped GEMM; I 96 takes the guarded variant.
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 8, 2048, 80, true), false), Throws.ArgumentException.With.Message.Contains("must be multiples of 32"));
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 8, 2048, 80, true), true), Throws.Nothing);
        Assert.That(() => MoeLaunchers.CheckShape(new MoeShape(128, 8, 2048, 96, true), false), Throws.Nothing);
    }

    /// <summary>Launchers built for the real shape skip the guarded variant and say so if a small shape's GEMM comes anyway.</summary>
    [Test]
    public void LaunchersForRealShapes_RejectAShapeThatNeedsTheGuardedGemm()
    {
        using var emu = new Kernels.EmulatorContext();
        var tiny = new MoeShape(8, 2, 64, 32, true);
        Assert.That(MoeLaunchers.NeedsGuardedGemm(MoeCase.Real) || MoeLaunchers.NeedsGuardedGemm(MoeCase.Small), Is.False);
        Assert.That(MoeLaunchers.NeedsGuardedGemm(tiny), Is.True);
        var moe = new MoeLaunchers(emu.Loader, [MoeCase.Real, MoeCase.Small]);
        var p = emu.Alloc<byte>(64);
        Assert.That(() => moe.GateUpGemm(emu.Stream, tiny, 16, p, p, p, p, p, p),
            Throws.InvalidOperationException.With.Message.Contains("needs the guarded moe_gemm.cu variant"));
    }

    [Test]
    public void MoeBlock_RejectsASmallWorkspace()
    {
        using var emu = new Kernels.EmulatorContext();
        long need = MoeWorkspace.Compute(16, MoeCase.Small).TotalBytes;
        var p = emu.Alloc<byte>(64);
        Assert.That(() => new MoeLaunchers(emu.Loader).MoeBlock(emu.Stream, MoeCase.Small, 16, p, p, p, p, default, p, p, need - 1),
            Throws.ArgumentException.With.Message.Contains($"smaller than the {need} bytes"));
    }

    /// <summary>The block's kernels compiled for sm_80 (the A100 feature set the tensor-core path is limited to), on an sm_80 emulator.</summary>
    [Test]
    public void Prefill_Small_TwelveTokens_Sm80()
    {
        using var ctx = new KernelCheckContext(new Qwen3Cuda.Runtime.Emulation.EmulatedDevice(Qwen3Cuda.Runtime.Emulation.EmulatorOptions.Sm80));
        Assert.That(ctx.Device.Info.Arch, Is.EqualTo("sm_80"));
        var c = MoeCases.BlockCheck("small shape, 12 tokens on sm_80 (grouped GEMMs)", () => MoeCase.Create(MoeCase.Small, 12, seed: 9));
        var r = c.Check(ctx);
        Assert.That(r.Passed, Is.True, r.ToString());
    }
}
