using System.Diagnostics;
using Qwen3Cuda.Model;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>The whole MoE block (router -> grouping -> experts -> combine) on the emulator against the CPU reference.</summary>
[TestFixture]
public class MoeBlockTests
{
    /// <summary>Qwen3-30B-A3B: E 128, k 8, H 2048, I 768, norm_topk_prob true.</summary>
    public static readonly MoeShape Real = new(128, 8, 2048, 768, true);
    /// <summary>Reduced shape for large token counts on the emulator (same k, fewer/smaller experts).</summary>
    public static readonly MoeShape Small = new(32, 8, 256, 128, true);

    /// <summary>
    /// Tolerance per element: |d| <= 2^-7 |ref| + 2^-8 rms(ref). The routing and the bf16 gate/up values are exact
    /// (exact-sum data), so differences come from silu's exp (fp32 ulps, sometimes one bf16 ulp of an activation) and
    /// the down projection's fp32 summation order (sometimes one bf16 ulp of an expert output): one carried ulp
    /// (2^-8 relative) plus the final rounding; the absolute term covers outputs that cancel to near zero.
    /// </summary>
    public static void AssertClose(float[] reference, ushort[] actual, int hidden, string what)
    {
        Assert.That(actual, Has.Length.EqualTo(reference.Length));
        double rms = Math.Sqrt(reference.Select(v => (double)v * v).Average());
        int bad = 0, exact = 0;
        string first = "";
        for (int i = 0; i < reference.Length; i++)
        {
            float a = Bf16.ToFloat(actual[i]), r = reference[i];
            if (a == r) exact++;
            double tol = Math.Abs(r) / 128.0 + rms / 256.0;
            if (!(Math.Abs(a - r) <= tol))
            {
                if (bad++ == 0) first = $"first at token {i / hidden}, column {i % hidden}: device {a}, reference {r}, tolerance {tol:g3}";
            }
        }
        TestContext.Out.WriteLine($"{what}: {reference.Length} outputs, {exact} bitwise equal to the reference, {bad} outside tolerance, rms {rms:g3}");
        Assert.That(bad, Is.Zero, $"{what}: {bad} of {reference.Length} outputs outside tolerance; {first}");
        Assert.That(rms, Is.GreaterThan(1e-3), "degenerate test data: outputs are ~0");
    }

    static void RunAndCompare(MoeCase c, string what, bool residual = false)
    {
        var sw = Stopwatch.StartNew();
        using var d = new MoeDeviceCase(c);
        ushort[]? res = null;
        var resPtr = default(Qwen3Cuda.Runtime.DevicePtr);
        if (residual)
        {
            res = new ushort[c.Tokens * c.Shape.Hidden];
            MoeCase.Fill(res, 999);
            resPtr = d.Upload(res);
        }
        long setup = sw.ElapsedMilliseconds;
        d.Run(resPtr);
        var first = d.ReadOutput();
        long run = sw.ElapsedMilliseconds - setup;
        var ids = d.Read<int>(d.Workspace + d.Layout.TopkIds, c.Tokens * c.Shape.TopK);
        Assert.That(ids, Is.EqualTo(c.RefIds), $"{what}: expert ids differ from the reference router (exact: logits are exact)");
        var w = d.Read<float>(d.Workspace + d.Layout.TopkWeights, c.Tokens * c.Shape.TopK);
        // Routing weights: softmax in fp32 with a different exp and summation order: a few fp32 ulps.
        Assert.That(w, Is.EqualTo(c.RefWeights).Within(2e-6f), $"{what}: routing weights");
        AssertClose(c.Reference(res), first, c.Shape.Hidden, what);
        // Deterministic: a second run gives the same bits.
        d.Run(resPtr);
        Assert.That(d.ReadOutput(), Is.EqualTo(first), $"{what}: a second run differs bitwise");
        TestContext.Out.WriteLine($"{what}: setup {setup} ms, one emulated MoE block {run} ms");
    }

    [Test]
    public void Decode_Small_ThreeTokens_NoNorm_WithResidual() =>
        RunAndCompare(MoeCase.Create(Small with { NormTopkProb = false }, 3, seed: 3), "small shape, 3 tokens, norm_topk_prob false, residual", residual: true);

    [Test]
    public void Prefill_Small_64Tokens() => RunAndCompare(MoeCase.Create(Small, 64, seed: 4), "small shape, 64 tokens (grouped GEMMs)");

    [Test]
    public void Prefill_Small_300Tokens() => RunAndCompare(MoeCase.Create(Small, 300, seed: 5), "small shape, 300 tokens (grouped GEMMs)");

    /// <summary>Every token picks among 10 of 32 experts: ~240 slots per used expert (several full tiles), 22 experts get none.</summary>
    [Test]
    public void Prefill_Small_300Tokens_HotExperts() =>
        RunAndCompare(MoeCase.Create(Small, 300, seed: 6, hotExperts: 10), "small shape, 300 tokens, 10 hot experts, 22 unused", residual: true);

    /// <summary>Nine tokens: the smallest count that takes the prefill path; partial tiles everywhere.</summary>
    [Test]
    public void Prefill_Small_NineTokens() => RunAndCompare(MoeCase.Create(Small, 9, seed: 7), "small shape, 9 tokens (grouped GEMMs)");
}
