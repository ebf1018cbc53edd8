using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// Hardware-like math (docs/emulator.md): every .approx function stays within the PTX ISA's bound, keeps its special
/// cases exact, is deterministic, and really differs from the correctly rounded result; the tensor-core accumulation
/// model truncates as documented and stays within its error bound.
/// </summary>
public class HardwareMathTests
{
    private static IEnumerable<float> Inputs(int seed, float lo, float hi, int n = 20000)
    {
        var rng = new Random(seed);
        for (int i = 0; i < n; i++) yield return (float)(lo + (hi - lo) * rng.NextDouble());
    }

    private static double Ulp(double v) => Math.Abs((double)MathF.BitIncrement((float)Math.Abs(v)) - (float)Math.Abs(v));

    [Test]
    public void ApproxFunctions_StayWithinTheIsaBounds_AndAreNotExact()
    {
        foreach (int seed in new[] { 0, 7 })
        {
            int moved = 0, total = 0;
            void Check(string what, float got, double exact, double err, double bound, float rn)
            {
                total++;
                if (got != rn) moved++;
                Assert.That(err, Is.LessThanOrEqualTo(bound), $"seed {seed} {what}: got {got:R}, exact {exact:R}");
            }
            foreach (float x in Inputs(1, -60, 60))
            {
                double e = Math.Pow(2, x); float rn = (float)e, g = ApproxMath.Ex2(x, seed);
                Check($"ex2({x:R})", g, e, Math.Abs(g - (double)rn) / Ulp(rn), 2, rn);            // 2 ulp from correctly rounded
                g = ApproxMath.Rcp(x, seed); e = 1.0 / x; rn = (float)e;
                Check($"rcp({x:R})", g, e, Math.Abs(g - e) / Ulp(g), 1, rn);                       // 1 ulp
                float y = x * 0.37f + 1.5f;
                rn = x / y; g = ApproxMath.Div(rn, x, y, seed); e = (double)x / y;
                Check($"div({x:R}, {y:R})", g, e, Math.Abs(g - e) / Ulp(g), 2, rn);                 // 2 ulp
                float t = MathF.Abs(x) + 1e-3f;
                e = 1 / Math.Sqrt(t); rn = (float)e; g = ApproxMath.Rsqrt(t, seed);
                Check($"rsqrt({t:R})", g, e, Math.Abs(g - e) / e, Math.Pow(2, -22.9), rn);         // relative 2^-22.9
                e = Math.Sqrt(t); rn = (float)e; g = ApproxMath.Sqrt(t, seed);
                Check($"sqrt({t:R})", g, e, Math.Abs(g - e) / e, Math.Pow(2, -23), rn);            // relative 2^-23
                e = Math.Log2(t); rn = (float)e; g = ApproxMath.Lg2(t, seed);
                Check($"lg2({t:R})", g, e, t > 0.5f && t < 2f ? Math.Abs(g - e) : Math.Abs(g - e) / Math.Abs(e), Math.Pow(2, -22), rn);
                double sb = Math.Abs(x) <= 2 * Math.PI ? Math.Pow(2, -20.5) : Math.Pow(2, -14.7);
                e = Math.Sin(x); rn = (float)e; g = ApproxMath.Sin(x, seed);
                Check($"sin({x:R})", g, e, Math.Abs(g - e), sb, rn);                                // absolute
                e = Math.Cos(x); rn = (float)e; g = ApproxMath.Cos(x, seed);
                Check($"cos({x:R})", g, e, Math.Abs(g - e), sb, rn);
                float h = x / 10;
                e = Math.Tanh(h); rn = (float)e; g = ApproxMath.Tanh(h, seed);
                Check($"tanh({h:R})", g, e, Math.Abs(g - e) / Math.Abs(e), Math.Pow(2, -11), rn);   // relative 2^-11
            }
            Assert.That(moved, Is.GreaterThan(total / 4), $"seed {seed}: the noise moves results away from the correctly rounded value ({moved} of {total})");
        }
        var once = Inputs(2, -10, 10, 100).Select(x => ApproxMath.Ex2(x, 3)).ToArray();
        Assert.That(Inputs(2, -10, 10, 100).Select(x => ApproxMath.Ex2(x, 3)).ToArray(), Is.EqualTo(once), "deterministic: the same input gives the same result");
        Assert.That(Inputs(2, -10, 10, 100).Select(x => ApproxMath.Ex2(x, 4)).ToArray(), Is.Not.EqualTo(once), "another seed gives other results");
    }

    [Test]
    public void SpecialInputs_GiveTheIsaTableResults()
    {
        const int s = 5;
        Assert.That(ApproxMath.Ex2(0f, s), Is.EqualTo(1f));
        Assert.That(ApproxMath.Ex2(-0f, s), Is.EqualTo(1f));
        Assert.That(ApproxMath.Ex2(float.NegativeInfinity, s), Is.EqualTo(0f));
        Assert.That(ApproxMath.Ex2(float.PositiveInfinity, s), Is.EqualTo(float.PositiveInfinity));
        Assert.That(float.IsNaN(ApproxMath.Ex2(float.NaN, s)));
        Assert.That(ApproxMath.Rcp(0f, s), Is.EqualTo(float.PositiveInfinity));
        Assert.That(ApproxMath.Rcp(float.NegativeInfinity, s), Is.EqualTo(-0f));
        Assert.That(ApproxMath.Rsqrt(0f, s), Is.EqualTo(float.PositiveInfinity));
        Assert.That(ApproxMath.Rsqrt(float.PositiveInfinity, s), Is.EqualTo(0f));
        Assert.That(float.IsNaN(ApproxMath.Rsqrt(-1f, s)));
        Assert.That(ApproxMath.Lg2(0f, s), Is.EqualTo(float.NegativeInfinity));
        Assert.That(float.IsNaN(ApproxMath.Lg2(-2f, s)));
        Assert.That(ApproxMath.Sin(-0f, s), Is.EqualTo(-0f));
        Assert.That(ApproxMath.Cos(0f, s), Is.EqualTo(1f));
        Assert.That(float.IsNaN(ApproxMath.Sin(float.PositiveInfinity, s)));
        Assert.That(ApproxMath.Tanh(float.NegativeInfinity, s), Is.EqualTo(-1f));
        Assert.That(ApproxMath.Tanh(1e-40f, s), Is.EqualTo(1e-40f), "tanh passes subnormals through");
    }

    [Test]
    public void TensorCoreBlock_TruncatesLikeTheHardware_WithinItsBound()
    {
        // 1 + 3 * 2^-26: an exactly rounded f32 sum gives 1 (the tail is below half an ulp) either way; with 2^-24 + 2^-25
        // added the exact sum rounds up to 1 + 2^-23, the truncating block gives 1.
        Assert.That(Warp.TensorCoreBlock([1.0, Math.Pow(2, -24), Math.Pow(2, -25)], extraBits: 2), Is.EqualTo(1f), "round towards zero");
        Assert.That((float)(1.0 + Math.Pow(2, -24) + Math.Pow(2, -25)), Is.EqualTo(1f + MathF.Pow(2, -23)), "exact rounding would round up");
        // terms far below the largest are cut at 23 + extra bits below it: 2^-26 is lost with one extra bit, kept with three
        double[] eight = [1.0, .. Enumerable.Repeat(Math.Pow(2, -26), 8)];   // exact sum 1 + 2^-23
        Assert.That(Warp.TensorCoreBlock(eight, 1), Is.EqualTo(1f));
        Assert.That(Warp.TensorCoreBlock(eight, 3), Is.EqualTo(1f + MathF.Pow(2, -23)));
        Assert.That(Warp.TensorCoreBlock([-1.5, 0.25], 2), Is.EqualTo(-1.25f), "exact cases stay exact");
        Assert.That(float.IsNaN(Warp.TensorCoreBlock([double.PositiveInfinity, double.NegativeInfinity], 2)));

        var rng = new Random(3);
        Span<double> t = stackalloc double[17];
        for (int trial = 0; trial < 20000; trial++)
        {
            int n = trial % 2 == 0 ? 16 : 8, extra = n == 16 ? 2 : 1;
            double exact = 0, largest = 0;
            for (int i = 0; i <= n; i++)
            {
                float a = Bf16Of(rng), b = Bf16Of(rng);
                t[i] = i < n ? (double)a * b : (float)(rng.NextDouble() * 4 - 2);
                exact += t[i];
                largest = Math.Max(largest, Math.Abs(t[i]));
            }
            float got = Warp.TensorCoreBlock(t[..(n + 1)], extra);
            // each term cut below 2^(emax - 23 - extra) (emax <= log2 largest), then one truncation of the sum to f32
            double bound = (n + 1) * Math.ScaleB(1.0, Math.ILogB(largest) - 23 - extra) + Ulp(got);
            Assert.That(Math.Abs(got - exact), Is.LessThanOrEqualTo(bound), $"trial {trial}");
        }

        static float Bf16Of(Random rng) => BitConverter.UInt32BitsToSingle(BitConverter.SingleToUInt32Bits((float)(rng.NextDouble() * 4 - 2)) & 0xFFFF0000);
    }
}
