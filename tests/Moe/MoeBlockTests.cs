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
        // Sanity check against all-zero outputs (the tolerance scales with rms): the tiny preset shape (H 64, I 32) gives rms ~3e-4.
        Assert.That(rms, Is.GreaterThan(1e-4), "degenerate test data: outputs are ~0");
    }

    /// <summary>Runs the case's first <paramref name="tokens"/> tokens and checks routing, output and (optionally) bitwise repeatability.</summary>
    public static MoeRun RunAndCompare(MoeDevice dev, MoeCase c, string what, bool residual = false, int tokens = -1, bool repeat = true)
    {
        var run = new MoeRun(dev, c, tokens);
        int T = run.Tokens, H = c.Shape.Hidden, k = c.Shape.TopK;
        ushort[]? res = null;
        var resPtr = default(Qwen3Cuda.Runtime.DevicePtr);
        if (residual)
        {
            res = new ushort[c.Tokens * H];
            MoeCase.Fill(res, 999);
            resPtr = dev.Upload(res);
        }
        var sw = Stopwatch.StartNew();
        run.Run(resPtr);
        var first = run.ReadOutput();
        TestContext.Out.WriteLine($"{what}: one emulated MoE block {sw.ElapsedMilliseconds} ms");
        Assert.That(run.ReadIds(), Is.EqualTo(c.RefIds.AsSpan(0, T * k).ToArray()), $"{what}: expert ids differ from the reference router (exact: logits are exact)");
        // Routing weights: softmax in fp32 with a different exp and summation order: a few fp32 ulps of values <= 1.
        Assert.That(run.ReadWeights(), Is.EqualTo(c.RefWeights.AsSpan(0, T * k).ToArray()).Within(2e-6f), $"{what}: routing weights");
        AssertClose(c.Reference(res).AsSpan(0, T * H).ToArray(), first, H, what);
        if (repeat)
        {
            run.Run(resPtr);
            Assert.That(run.ReadOutput(), Is.EqualTo(first), $"{what}: a second run differs bitwise");
        }
        return run;
    }

    /// <summary>Bitwise repeatability (repeat) is checked on the 3-token decode, 8-token shared-expert decode and 64-token prefill cases.</summary>
    static void RunAndCompare(MoeCase c, string what, bool residual = false, bool repeat = true)
    {
        using var dev = new MoeDevice(c.Shape, c);
        RunAndCompare(dev, c, what, residual, repeat: repeat);
    }

    [Test]
    public void Decode_Small_ThreeTokens_NoNorm_WithResidual() =>
        RunAndCompare(MoeCase.Create(Small with { NormTopkProb = false }, 3, seed: 3), "small shape, 3 tokens, norm_topk_prob false, residual", residual: true);

    [Test]
    public void Prefill_Small_64Tokens() => RunAndCompare(MoeCase.Create(Small, 64, seed: 4), "small shape, 64 tokens (grouped GEMMs)");

    [Test]
    public void Prefill_Small_300Tokens() => RunAndCompare(MoeCase.Create(Small, 300, seed: 5), "small shape, 300 tokens (grouped GEMMs)", repeat: false);

    /// <summary>Every token picks among 10 of 32 experts: ~240 slots per used expert (several full tiles), 22 experts get none.</summary>
    [Test]
    public void Prefill_Small_300Tokens_HotExperts() =>
        RunAndCompare(MoeCase.Create(Small, 300, seed: 6, hotExperts: 10), "small shape, 300 tokens, 10 hot experts, 22 unused", residual: true, repeat: false);

    /// <summary>Nine tokens: the smallest count that takes the prefill path; partial tiles everywhere.</summary>
    [Test]
    public void Prefill_Small_NineTokens() => RunAndCompare(MoeCase.Create(Small, 9, seed: 7), "small shape, 9 tokens (grouped GEMMs)", repeat: false);

    /// <summary>Decode path with all 8 tokens routed to the same 8 experts: every expert row is read by 8 slots.</summary>
    [Test]
    public void Decode_Small_EightTokens_SameExperts() =>
        RunAndCompare(MoeCase.Create(Small, 8, seed: 8, hotExperts: 8), "small shape, 8 tokens on the same 8 experts (decode)");

    /// <summary>The tiny preset's MoE (E 8, k 2, H 64, I 32): both grouped GEMMs take the guarded variant (I % 64 and H % 128 are not 0).</summary>
    [Test]
    public void Prefill_TinyPreset_20Tokens() =>
        RunAndCompare(MoeCase.Create(new MoeShape(8, 2, 64, 32, true), 20, seed: 10), "tiny preset shape, 20 tokens (guarded grouped GEMMs)");

    /// <summary>H 192, I 96: the last N block of each GEMM is half past the end (guarded variant), with residual and no renormalisation.</summary>
    [Test]
    public void Prefill_PartialNBlocks_40Tokens() =>
        RunAndCompare(MoeCase.Create(new MoeShape(8, 2, 192, 96, false), 40, seed: 11), "H 192 / I 96, 40 tokens (partial last N blocks)", residual: true, repeat: false);

    /// <summary>
    /// A token whose hidden row is all NaN (issue 12, fault 3): its router logits are all NaN. The block must stay in bounds
    /// (before the fix the router gave expert id 0x7fffffff, which the decode GEMVs and moe_align used as an index: the
    /// emulator's bounds check stopped the launch), the other tokens must match the reference, and the NaN token's output
    /// must be NaN (visible, not a silently plausible row).
    /// </summary>
    [TestCase(3, 1)]    // decode path: expert GEMVs
    [TestCase(12, 5)]   // prefill path: moe_align + grouped GEMMs
    public void NaNToken_StaysInBounds_AndTheOtherTokensMatch(int tokens, int nanToken)
    {
        var c = MoeCase.Create(Small, tokens, seed: 20 + tokens);
        using var dev = new MoeDevice(c.Shape, c);
        var run = new MoeRun(dev, c);
        int H = c.Shape.Hidden, k = c.Shape.TopK;
        var nanRow = Enumerable.Repeat((ushort)0x7fc0, H).ToArray();
        dev.Device.CopyToDevice(run.Hidden + (long)nanToken * H * 2, MoeDevice.AsBytes(nanRow));
        run.Run();
        var ids = run.ReadIds();
        Assert.That(ids, Is.All.InRange(0, c.Shape.Experts - 1), "expert ids");
        var output = run.ReadOutput();
        var reference = c.Reference();
        var keep = Enumerable.Range(0, tokens).Where(t => t != nanToken).ToArray();
        Assert.That(keep.SelectMany(t => ids.Skip(t * k).Take(k)), Is.EqualTo(keep.SelectMany(t => c.RefIds.Skip(t * k).Take(k))), "ids of the finite tokens");
        AssertClose(keep.SelectMany(t => reference.Skip(t * H).Take(H)).ToArray(), keep.SelectMany(t => output.Skip(t * H).Take(H)).ToArray(), H, "finite tokens");
        Assert.That(output.Skip(nanToken * H).Take(H).Select(Bf16.ToFloat), Is.All.NaN, "the NaN token's output is NaN");
    }

    /// <summary>Launchers built for the real shape skip the guarded variant and say so if a small shape's GEMM comes anyway.</summary>
    [Test]
    public void LaunchersForRealShapes_RejectAShapeThatNeedsTheGuardedGemm()
    {
        using var dev = new MoeDevice(Small);
        var tiny = new MoeShape(8, 2, 64, 32, true);
        Assert.That(MoeLaunchers.NeedsGuardedGemm(Real) || MoeLaunchers.NeedsGuardedGemm(Small), Is.False);
        Assert.That(MoeLaunchers.NeedsGuardedGemm(tiny), Is.True);
        var moe = new MoeLaunchers(dev.Loader, [Real, Small]);
        var p = dev.Device.Allocate(64);
        Assert.That(() => moe.GateUpGemm(dev.Device.DefaultStream, tiny, 16, p, p, p, p, p, p),
            Throws.InvalidOperationException.With.Message.Contains("needs the guarded moe_gemm.cu variant"));
    }

    [Test]
    public void MoeBlock_RejectsASmallWorkspace()
    {
        using var dev = new MoeDevice(Small);
        long need = MoeWorkspace.Compute(16, Small).TotalBytes;
        var p = dev.Device.Allocate(64);
        Assert.That(() => dev.Moe.MoeBlock(dev.Device.DefaultStream, Small, 16, p, p, p, p, default, p, p, need - 1),
            Throws.ArgumentException.With.Message.Contains($"smaller than the {need} bytes"));
    }

    /// <summary>The same kernels compiled for sm_80 (the A100 feature set the tensor-core path is limited to).</summary>
    [Test]
    public void Prefill_Small_TwelveTokens_Sm80()
    {
        var c = MoeCase.Create(Small, 12, seed: 9);
        using var dev = new MoeDevice(c.Shape, Qwen3Cuda.Runtime.Emulation.EmulatorOptions.Sm80, c);
        Assert.That(dev.Device.Info.Arch, Is.EqualTo("sm_80"));
        RunAndCompare(dev, c, "small shape, 12 tokens on sm_80 (grouped GEMMs)", repeat: false);
    }
}
