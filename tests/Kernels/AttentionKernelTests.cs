using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// attention_decode.cu and attention_prefill.cu on every backend present (checks: src/Model/Selftest/AttentionCases.cs):
/// paged KV in scrambled page order against fp64 softmax attention, the analytic first-token case, the rope -> prefill ->
/// decode pipeline at head_dim 16 and 32 against ReferenceOps, the fused decode attention against the separate kernels
/// (bitwise) and ReferenceOps, and on the emulator the 4096-key decode's DRAM bytes.
/// </summary>
[TestFixtureSource(typeof(KernelBackends), nameof(KernelBackends.All))]
public sealed class AttentionKernelTests(string backend) : KernelBackendFixture(backend)
{
    [TestCaseSource(typeof(AttentionCases), nameof(AttentionCases.Decode))]
    public void Decode(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(AttentionCases), nameof(AttentionCases.Fused))]
    public void Fused(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(AttentionCases), nameof(AttentionCases.Prefill))]
    public void Prefill(KernelCase c) => Passes(c);

    [TestCaseSource(typeof(AttentionCases), nameof(AttentionCases.SmallHeadDimPipeline))]
    public void SmallHeadDimPipeline(KernelCase c) => Passes(c);
}

public sealed class AttentionLauncherTests
{
    [Test]
    public void ParamsMirrorsMatchCuda()
    {
        StructLayoutCheck.AssertMatches(typeof(AttnDecodeParams), "attention_decode.cu", "AttnDecodeParams");
        StructLayoutCheck.AssertMatches(typeof(AttnDecodeFusedParams), "attention_decode.cu", "AttnDecodeFusedParams");
        StructLayoutCheck.AssertMatches(typeof(AttnPrefillParams), "attention_prefill.cu", "AttnPrefillParams");
    }

    /// <summary>The split plan on hand-computed cases (132 SMs, 4 KV heads unless stated; 64-key tiles).</summary>
    [Test]
    public void PlanSplitsCoversTheSmsAndCapsLongContextsAtTheFusedCombine()
    {
        Assert.Multiple(() =>
        {
            Assert.That(AttentionDecodeLaunchers.PlanSplits(132, 1, 4, 1025), Is.EqualTo(17), "1k: one split per tile (17 tiles) though 33 would cover the SMs");
            Assert.That(AttentionDecodeLaunchers.PlanSplits(132, 1, 4, 16000), Is.EqualTo(33), "16k: 250 tiles, 32 splits of 8 tiles, raised to 33 (132 / 4 CTAs)");
            Assert.That(AttentionDecodeLaunchers.PlanSplits(132, 1, 4, 32769), Is.EqualTo(64), "32k + 1: 513 tiles would be 65 splits of 8; capped at the fused combine's 64");
            Assert.That(AttentionDecodeLaunchers.PlanSplits(132, 1, 4, 131072), Is.EqualTo(64), "128k: 2048 tiles, 64 splits of 32 tiles");
            Assert.That(AttentionDecodeLaunchers.PlanSplits(132, 1, 1, 9000), Is.EqualTo(132), "one KV head: a CTA per SM beats the cap (the combine kernel runs after)");
            Assert.That(AttentionDecodeLaunchers.PlanSplits(132, 8, 4, 40), Is.EqualTo(1), "a context of one tile: one split");
        });
    }
}
