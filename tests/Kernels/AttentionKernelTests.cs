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
}
