using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// The `kernels` verb (tests/Compiler) checks every kernel file at its default defines; this checks the variants the
/// launchers build for small models (the synth presets): head_dim 16 and 32 and the guarded grouped expert GEMMs. Each must
/// compile for sm_80 and sm_90 with a ptxas report and no register spills.
/// </summary>
[TestFixture]
public sealed class KernelVariantSpillTests
{
    [TestCase("sm_80", "rope.cu", "HEAD_DIM", "16")]
    [TestCase("sm_80", "attention_decode.cu", "HEAD_DIM", "16")]
    [TestCase("sm_80", "attention_prefill.cu", "HEAD_DIM", "16")]
    [TestCase("sm_90", "rope.cu", "HEAD_DIM", "16")]
    [TestCase("sm_90", "attention_decode.cu", "HEAD_DIM", "16")]
    [TestCase("sm_90", "attention_prefill.cu", "HEAD_DIM", "16")]
    [TestCase("sm_80", "rope.cu", "HEAD_DIM", "32")]
    [TestCase("sm_80", "attention_decode.cu", "HEAD_DIM", "32")]
    [TestCase("sm_80", "attention_prefill.cu", "HEAD_DIM", "32")]
    [TestCase("sm_80", "moe_gemm.cu", "MOE_GEMM_GUARD_N", "1")]
    [TestCase("sm_90", "rope.cu", "HEAD_DIM", "32")]
    [TestCase("sm_90", "attention_decode.cu", "HEAD_DIM", "32")]
    [TestCase("sm_90", "attention_prefill.cu", "HEAD_DIM", "32")]
    [TestCase("sm_90", "moe_gemm.cu", "MOE_GEMM_GUARD_N", "1")]
    [TestCase("sm_80", "rope.cu", "KV_FP8", "1")]                  // --kv-cache-dtype fp8 (head_dim 128)
    [TestCase("sm_80", "attention_decode.cu", "KV_FP8", "1")]
    [TestCase("sm_80", "attention_prefill.cu", "KV_FP8", "1")]
    [TestCase("sm_90", "rope.cu", "KV_FP8", "1")]
    [TestCase("sm_90", "attention_decode.cu", "KV_FP8", "1")]
    [TestCase("sm_90", "attention_prefill.cu", "KV_FP8", "1")]
    public void SmallModelVariantCompilesWithoutSpills(string arch, string file, string define, string value)
    {
        var compiler = new KernelCompiler(useCache: true);
        CompiledModule m = compiler.Compile(new KernelBuild(file, arch, CompileTarget.Cubin)
        {
            Defines = new Dictionary<string, string> { [define] = value }, LineInfo = false,
        });
        Assert.That(m.PtxasInfo, Is.Not.Empty, $"{file} {define}={value}: no ptxas report for {arch}");
        foreach (var k in m.PtxasInfo)
        {
            TestContext.Out.WriteLine($"{file} {define}={value} {k.Kernel} {arch}: {k.Registers} registers, spills {k.SpillStoreBytes}/{k.SpillLoadBytes} B");
            Assert.That(k.SpillStoreBytes + k.SpillLoadBytes, Is.Zero, $"{file}:{k.Kernel} with {define}={value} spills at {arch}");
        }
    }
}
