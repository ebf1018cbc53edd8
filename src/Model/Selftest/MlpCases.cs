using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// The dense SwiGLU MLP of Qwen3 dense models (docs/kernels.md, "Dense MLP"): swiglu.cu against a CPU loop, and the whole
/// path the device model runs (gate|up GEMV or GEMM -> swiglu -> down GEMV or GEMM + residual) against
/// ReferenceOps.SwiGluMlp, at the Qwen3-0.6B shape (hidden 1024, intermediate 3072) and odd shapes.
/// </summary>
public static class MlpCases
{
    public const int Qwen3_06B_Hidden = 1024, Qwen3_06B_Inter = 3072;

    public static IEnumerable<KernelCase> SwiGlu()
    {
        yield return SwiGluCase(2, Qwen3_06B_Inter, 2 * Qwen3_06B_Inter, Qwen3_06B_Inter, real: true);   // Qwen3-0.6B, 2 tokens
        yield return SwiGluCase(3, 24, 56, 32);          // odd: I 24 (3 chunks), padded strides
        yield return SwiGluCase(1, 2056, 4112, 2056);    // 257 chunks: a second block with one live thread
    }

    public static IEnumerable<KernelCase> DenseMlp()
    {
        yield return DenseCase(1, Qwen3_06B_Hidden, Qwen3_06B_Inter, real: true);   // Qwen3-0.6B decode (GEMVs)
        yield return DenseCase(4, Qwen3_06B_Hidden, Qwen3_06B_Inter, real: true);   // Qwen3-0.6B, 4 rows (a verification step)
        yield return DenseCase(19, 256, 384);                                       // a prefill chunk: the tensor-core GEMMs, ragged tiles
        yield return DenseCase(3, 64, 128);                                         // the tiny synthetic preset's dense layer
    }

    public static IEnumerable<KernelCase> All() => SwiGlu().Concat(DenseMlp());

    /// <summary>
    /// Tolerance: expf differs from MathF.Exp by a few fp32 ulps, which can move bf16(silu) across a rounding boundary: one
    /// bf16 ulp of the activation (2^-8 relative), carried through the product's rounding: 2^-7 relative, no absolute term
    /// (a zero product is exact on both sides).
    /// </summary>
    static KernelCase SwiGluCase(int tokens, int inter, int ldIn, int ldOut, bool real = false) =>
        new("swiglu", $"swiglu_bf16 tokens {tokens} I {inter} (ld {ldIn} -> {ldOut})", real, ctx =>
        {
            var swiglu = ctx.Cached("swiglu", () => new SwiGluLaunchers(ctx.Loader));
            var rng = new Random(tokens * 131 + inter);
            ushort[] gu = KernelData.Random(rng, tokens * ldIn, 6f);
            DevicePtr dIn = ctx.Upload(gu), dOut = ctx.AllocFilled<ushort>(tokens * ldOut, 0x7f);
            swiglu.SwiGlu(ctx.Stream, dOut, ldOut, dIn, ldIn, tokens, inter);
            ushort[] got = ctx.Download<ushort>(dOut, tokens * ldOut);
            var expected = new float[tokens * inter];
            var actual = new float[tokens * inter];
            var padding = new List<ushort>();
            for (int t = 0; t < tokens; t++)
            {
                for (int i = 0; i < inter; i++)
                {
                    float g = Bf16.ToFloat(gu[t * ldIn + i]), u = Bf16.ToFloat(gu[t * ldIn + inter + i]);
                    expected[t * inter + i] = Bf16.Round(Bf16.Round(ReferenceOps.Silu(g)) * u);
                    actual[t * inter + i] = Bf16.ToFloat(got[t * ldOut + i]);
                }
                for (int i = inter; i < ldOut; i++) padding.Add(got[t * ldOut + i]);
            }
            var c = new Checker();
            c.Close(actual, expected, 0, 1.0 / 128, "bf16(bf16(silu(g)) * u)");
            c.Exact<ushort>(padding.ToArray(), Enumerable.Repeat((ushort)0x7f7f, padding.Count).ToArray(), "columns past I untouched");
            return c.Result();
        });

    /// <summary>
    /// The device model's dense-layer launches on random data, against ReferenceOps.SwiGluMlp + the residual add. Tolerance
    /// per element: 2^-7 |ref| + 2^-6 rms(ref). The gate and up values are fp32 sums in another order than the reference's,
    /// so each may land one bf16 ulp away (2^-8 relative), and silu's exp adds another possible flip: an activation may
    /// carry up to two ulps; the down projection's own order and final rounding add one more ulp of the output (the
    /// relative term). Outputs that cancel to near zero carry the flipped activations' share, a few 2^-8 |a w| terms of
    /// size ~rms: 2^-6 rms (MoeCases.Compare allows 2^-7 rms with exact gate/up data).
    /// </summary>
    static KernelCase DenseCase(int tokens, int hidden, int inter, bool real = false) =>
        new("dense_mlp", $"dense SwiGLU MLP T {tokens} H {hidden} I {inter} + residual ({(tokens > GemvLaunchers.MaxTokens ? "GEMM" : "GEMV")})", real, ctx =>
        {
            var gemv = ctx.Cached("gemv", () => new GemvLaunchers(ctx.Loader));
            var gemm = ctx.Cached("gemm", () => new GemmLaunchers(ctx.Loader));
            var swiglu = ctx.Cached("swiglu", () => new SwiGluLaunchers(ctx.Loader));
            var rng = new Random(tokens * 7 + hidden + inter);
            float ws = 1f / MathF.Sqrt(hidden), wd = 1f / MathF.Sqrt(inter);
            ushort[] h = KernelData.Random(rng, tokens * hidden, 2f);
            ushort[] gateUp = KernelData.Random(rng, 2 * inter * hidden, 1.7f * ws);   // rows 0..I-1 gate, I..2I-1 up
            ushort[] down = KernelData.Random(rng, hidden * inter, 1.7f * wd);
            ushort[] residual = KernelData.Random(rng, tokens * hidden, 1f);
            DevicePtr dH = ctx.Upload(h), dGU = ctx.Upload(gateUp), dDown = ctx.Upload(down), dX = ctx.Upload(residual);
            DevicePtr dMid = ctx.AllocFilled<ushort>((long)tokens * 2 * inter), dAct = ctx.AllocFilled<ushort>((long)tokens * inter);
            long partial = Math.Max(tokens <= GemvLaunchers.MaxTokens ? gemv.Plan(tokens, 2 * inter, hidden).PartialBytes(tokens, 2 * inter) : 0,
                                    tokens <= GemvLaunchers.MaxTokens ? gemv.Plan(tokens, hidden, inter).PartialBytes(tokens, hidden) : 0);
            DevicePtr dPartial = partial > 0 ? ctx.AllocFilled<byte>(partial, 0) : DevicePtr.Null;   // the split-K tickets start at zero
            void Project(DevicePtr y, DevicePtr x, DevicePtr w, DevicePtr res, int n, int k)
            {
                if (tokens > GemvLaunchers.MaxTokens) gemm.Gemm(ctx.Stream, y, n, x, k, w, k, res, tokens, n, k);
                else gemv.Gemv(ctx.Stream, y, n, x, k, w, res, tokens, n, k, dPartial, partial);
            }
            Project(dMid, dH, dGU, DevicePtr.Null, 2 * inter, hidden);
            swiglu.SwiGlu(ctx.Stream, dAct, inter, dMid, 2 * inter, tokens, inter);
            Project(dX, dAct, dDown, dX, hidden, inter);   // in place: x = x + act Wd^T, as the model runs it

            var y = new float[tokens * hidden];
            ReferenceOps.SwiGluMlp(KernelData.ToFloats(h), gateUp.AsSpan(0, inter * hidden), gateUp.AsSpan(inter * hidden), down, y, tokens, hidden, inter);
            for (int i = 0; i < y.Length; i++) y[i] = Bf16.Round(Bf16.ToFloat(residual[i]) + Bf16.Round(y[i]));
            // the MLP output without the residual sets the scale of the absolute term
            var mlpOnly = new float[tokens * hidden];
            ReferenceOps.SwiGluMlp(KernelData.ToFloats(h), gateUp.AsSpan(0, inter * hidden), gateUp.AsSpan(inter * hidden), down, mlpOnly, tokens, hidden, inter);
            double rms = Math.Sqrt(mlpOnly.Select(v => (double)v * v).Average());
            var tol = y.Select(r => (float)(Math.Abs(r) / 128.0 + rms / 64.0)).ToArray();
            var c = new Checker();
            c.Within(KernelData.ToFloats(ctx.Download<ushort>(dX, tokens * hidden)), y, tol, "2^-7|ref| + 2^-6 rms(mlp)", "x + MLP(h)");
            c.True(rms > 1e-2, "test data not degenerate (rms of the MLP output > 1e-2)", $"rms {rms:G3}");
            return c.Result();
        });
}
