namespace Qwen3Cuda.Tests.Support;

/// <summary>Pearson's chi-square goodness of fit for the sampling tests (speculative decoding, the device sampler).</summary>
public static class ChiSquareTest
{
    /// <summary>
    /// Upper 0.1% point of chi-square with df degrees of freedom (Wilson-Hilferty; within 1% of the tables for df >= 10).
    /// With fixed seeds the test is deterministic; the threshold says how unlikely a correct sampler would be to fail it.
    /// </summary>
    public static double Critical(int df)
    {
        const double z = 3.0902;   // standard normal upper 0.1%
        double a = 2.0 / (9 * df);
        return df * Math.Pow(1 - a + z * Math.Sqrt(a), 3);
    }

    /// <summary>Chi-square statistic of observed counts against expected probabilities (cells of zero probability must be empty) and its degrees of freedom.</summary>
    public static (double Chi2, int Df) ChiSquare(long[] observed, double[] expected, long n)
    {
        double chi = 0;
        int cells = 0;
        for (int i = 0; i < observed.Length; i++)
        {
            if (expected[i] == 0)
            {
                Assert.That(observed[i], Is.Zero, $"cell {i} has probability 0 but was drawn");
                continue;
            }
            double e = expected[i] * n;
            chi += (observed[i] - e) * (observed[i] - e) / e;
            cells++;
        }
        return (chi, cells - 1);
    }

    /// <summary>Chi-square without the zero-cell assertion (against a distribution the samples need not follow).</summary>
    public static (double Chi2, int Df) ChiSquareLenient(long[] observed, double[] expected, long n)
    {
        double chi = 0;
        int cells = 0;
        for (int i = 0; i < observed.Length; i++)
        {
            double e = Math.Max(expected[i], 1e-9) * n;
            chi += (observed[i] - e) * (observed[i] - e) / e;
            cells++;
        }
        return (chi, cells - 1);
    }
}
