using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>
/// The C# params structs match the CUDA structs: pointers (8 bytes) first, then 4-byte ints, size rounded to 8; the
/// expert GEMV / GEMM structs end with a WeightScales (kernels/quant.cuh: a pointer and 3 ints, 8-aligned, 24 bytes).
/// </summary>
[TestFixture]
public class MoeParamsLayoutTests
{
    static void Expect<T>(int pointers, int ints, bool scales = false) where T : struct
    {
        int plain = pointers * 8 + ints * 4;
        int size = ((plain + 7) / 8 * 8) + (scales ? 24 : 0);
        Assert.That(Marshal.SizeOf<T>(), Is.EqualTo(size), $"sizeof({typeof(T).Name})");
        var fields = typeof(T).GetFields();
        for (int i = 0; i < fields.Length; i++)
        {
            int expected = i < pointers ? i * 8 : i < pointers + ints ? pointers * 8 + (i - pointers) * 4 : (plain + 7) / 8 * 8;
            Assert.That((int)Marshal.OffsetOf<T>(fields[i].Name), Is.EqualTo(expected), $"{typeof(T).Name}.{fields[i].Name}");
        }
        Assert.That(fields, Has.Length.EqualTo(pointers + ints + (scales ? 1 : 0)));
        if (scales) Assert.That(Marshal.SizeOf<WeightScales>(), Is.EqualTo(24));
    }

    /// <summary>The size NVRTC gives the kernel's by-value struct parameter equals the C# mirror's, for the quantized variants too.</summary>
    [TestCase("moe_decode.cu", "moe_gate_up_gemv_fp8", typeof(MoeGateUpGemvParams))]
    [TestCase("moe_decode.cu", "moe_down_gemv_int8", typeof(MoeDownGemvParams))]
    [TestCase("moe_decode.cu", "moe_down_gemv", typeof(MoeDownGemvParams))]
    [TestCase("moe_decode.cu", "moe_experts_gemv", typeof(MoeExpertsGemvParams))]
    [TestCase("moe_decode.cu", "moe_experts_gemv_int4", typeof(MoeExpertsGemvParams))]
    [TestCase("moe_router.cu", "moe_router_norm_topk", typeof(MoeRouterParams))]
    [TestCase("moe_gemm.cu", "moe_gate_up_gemm_fp8", typeof(MoeGateUpGemmParams))]
    [TestCase("moe_gemm.cu", "moe_down_gemm", typeof(MoeDownGemmParams))]
    [TestCase("gemv.cu", "gemv_fp8_t3", typeof(GemvParams))]
    [TestCase("gemm.cu", "gemm_int8_64x64", typeof(GemmParams))]
    public void PtxParamSize_EqualsTheMirror(string file, string kernel, Type mirror)
    {
        string ptx = new Qwen3Cuda.Runtime.KernelCompiler().Compile(new Qwen3Cuda.Runtime.KernelBuild(file, "sm_80", Qwen3Cuda.Runtime.CompileTarget.Ptx) { LineInfo = false }).Ptx;
        var m = System.Text.RegularExpressions.Regex.Match(ptx, $@"\.param \.align 8 \.b8 {kernel}_param_0\[(\d+)\]");
        Assert.That(m.Success, $"{kernel} takes one struct by value");
        Assert.That(Marshal.SizeOf(mirror), Is.EqualTo(int.Parse(m.Groups[1].Value)));
    }

    [Test] public void Router() => Expect<MoeRouterParams>(10, 7);   // 8 pointers, the fetch-ahead pointer and its 8-byte length; 7 ints (topk_by_consumer last)
    [Test] public void Align() => Expect<MoeAlignParams>(6, 3);
    [Test] public void GateUpGemv() => Expect<MoeGateUpGemvParams>(4, 4, scales: true);
    [Test] public void DownGemv() => Expect<MoeDownGemvParams>(8, 4, scales: true);
    /// <summary>The two GEMVs' structs back to back (each a multiple of 8 bytes), then the counters' pointer, the tickets
    /// per CTA and the follow-on tiles (two ints), the follow-on GEMV's GemvParams (8-byte aligned), then the fetch-ahead's
    /// pointer and byte count (8 bytes each).</summary>
    [Test]
    public void ExpertsGemv()
    {
        int gateUp = Marshal.SizeOf<MoeGateUpGemvParams>(), down = Marshal.SizeOf<MoeDownGemvParams>();
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.Down)), Is.EqualTo(gateUp));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.Sync)), Is.EqualTo(gateUp + down));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.TilesPerCta)), Is.EqualTo(gateUp + down + 8));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.NextTiles)), Is.EqualTo(gateUp + down + 12));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.Next)), Is.EqualTo(gateUp + down + 16));
        int next = gateUp + down + 16 + Marshal.SizeOf<GemvParams>();
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.FetchAhead)), Is.EqualTo(next));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.FetchAheadBytes)), Is.EqualTo(next + 8));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.RouterLogits)), Is.EqualTo(next + 16));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.RouterExperts)), Is.EqualTo(next + 24));
        Assert.That((int)Marshal.OffsetOf<MoeExpertsGemvParams>(nameof(MoeExpertsGemvParams.RouterNormTopkProb)), Is.EqualTo(next + 28));
        Assert.That(Marshal.SizeOf<MoeExpertsGemvParams>(), Is.EqualTo(next + 32));
    }

    [Test] public void GateUpGemm() => Expect<MoeGateUpGemmParams>(6, 3, scales: true);
    [Test] public void DownGemm() => Expect<MoeDownGemmParams>(6, 2, scales: true);
    [Test] public void Combine() => Expect<MoeCombineParams>(4, 3);
}
