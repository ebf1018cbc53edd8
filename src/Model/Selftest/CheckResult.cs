using System.Globalization;
using System.Text;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>One comparison of a check: the largest error, the tolerance it is held to, and the worst error / tolerance.</summary>
public sealed record CheckLine(string What, double MaxError, string Tolerance, double WorstRatio, bool Passed, string Detail);

/// <summary>The outcome of one kernel check: its comparisons (each with its stated tolerance) and whether all passed.</summary>
public sealed record CheckResult(IReadOnlyList<CheckLine> Lines)
{
    public bool Passed => Lines.Count > 0 && Lines.All(l => l.Passed);
    /// <summary>The line that decides the case: the first failure, else the largest error / tolerance.</summary>
    public CheckLine Worst => Lines.FirstOrDefault(l => !l.Passed) ?? Lines.OrderByDescending(l => l.WorstRatio).ThenByDescending(l => l.MaxError).First();
    public override string ToString() => string.Join("\n", Lines.Select(l =>
        $"{(l.Passed ? "pass" : "FAIL")} {l.What}: max |err| {l.MaxError.ToString("G3", CultureInfo.InvariantCulture)}, tolerance {l.Tolerance}" +
        (l.Detail.Length > 0 ? "\n" + l.Detail : "")));
}

/// <summary>
/// Collects the comparisons of one kernel check (llm.c's style: |actual - expected| &lt;= tol per element, the first
/// mismatches printed). A case states why its tolerance is what it is next to its call.
/// </summary>
public sealed class Checker
{
    private readonly List<CheckLine> _lines = [];

    public CheckResult Result() => new([.. _lines]);

    /// <summary>|actual - expected| &lt;= atol + rtol |expected| element-wise.</summary>
    public void Close(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, double atol, double rtol, string what)
    {
        var e = expected.ToArray();
        Compare(actual, expected, i => atol + rtol * Math.Abs(e[i]), rtol == 0 ? Invariant($"{atol:G3}") : Invariant($"{atol:G3} + {rtol:G3}|ref|"), what);
    }

    public void CloseBf16(ReadOnlySpan<ushort> actual, ReadOnlySpan<float> expected, double atol, double rtol, string what) =>
        Close(KernelData.ToFloats(actual), expected, atol, rtol, what);

    /// <summary>|actual - expected| &lt;= tol[i] (per-element bounds computed by the caller, described by <paramref name="toleranceText"/>).</summary>
    public void Within(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, ReadOnlySpan<float> tol, string toleranceText, string what)
    {
        var t = tol.ToArray();
        Compare(actual, expected, i => t[i], toleranceText, what);
    }

    /// <summary>Bitwise (or exactly equal) values: tolerance 0.</summary>
    public void Exact<T>(ReadOnlySpan<T> actual, ReadOnlySpan<T> expected, string what) where T : IEquatable<T>
    {
        int bad = 0;
        var sb = new StringBuilder();
        if (actual.Length != expected.Length) { Fail(what, $"{actual.Length} values, expected {expected.Length}"); return; }
        for (int i = 0; i < actual.Length; i++)
            if (!actual[i].Equals(expected[i]))
            {
                if (bad < 8) sb.AppendLine(Invariant($"  [{i}] got {actual[i]} expected {expected[i]}"));
                bad++;
            }
        _lines.Add(new CheckLine(what, bad == 0 ? 0 : double.NaN, "exact", bad == 0 ? 0 : double.PositiveInfinity, bad == 0,
            bad == 0 ? "" : $"{bad} of {actual.Length} differ:\n{sb}"));
    }

    /// <summary>A yes/no property (ids in range, a counter above a bound, ...).</summary>
    public void True(bool condition, string what, string detail = "")
    {
        _lines.Add(new CheckLine(what, 0, "holds", condition ? 0 : double.PositiveInfinity, condition, condition ? "" : detail));
    }

    public void Fail(string what, string detail) => True(false, what, detail);

    /// <summary>A measured value against a bound (emulator counters): value &lt;= max.</summary>
    public void AtMost(double value, double max, string what) =>
        _lines.Add(new CheckLine(what, value, Invariant($"<= {max:G4}"), max > 0 ? value / max : value > 0 ? double.PositiveInfinity : 0, value <= max,
            value <= max ? "" : Invariant($"{value:G6} > {max:G6}")));

    /// <summary>A measured value against a bound (emulator counters): value &gt;= min.</summary>
    public void AtLeast(double value, double min, string what) =>
        _lines.Add(new CheckLine(what, value, Invariant($">= {min:G4}"), value > 0 ? min / value : double.PositiveInfinity, value >= min,
            value >= min ? "" : Invariant($"{value:G6} < {min:G6}")));

    private void Compare(ReadOnlySpan<float> actual, ReadOnlySpan<float> expected, Func<int, double> tol, string toleranceText, string what)
    {
        if (actual.Length != expected.Length) { Fail(what, $"{actual.Length} values, expected {expected.Length}"); return; }
        int bad = 0;
        double maxErr = 0, worst = 0;
        var sb = new StringBuilder();
        for (int i = 0; i < actual.Length; i++)
        {
            double d = Math.Abs((double)actual[i] - expected[i]), t = tol(i);
            if (!(d <= t))
            {
                if (bad < 8) sb.AppendLine(Invariant($"  [{i}] got {actual[i]} expected {expected[i]} (|d| {d:G4} > tol {t:G4})"));
                bad++;
            }
            if (!double.IsNaN(d)) maxErr = Math.Max(maxErr, d); else maxErr = double.NaN;
            worst = Math.Max(worst, t > 0 ? d / t : d > 0 ? double.PositiveInfinity : 0);
        }
        _lines.Add(new CheckLine(what, maxErr, toleranceText, double.IsNaN(maxErr) ? double.PositiveInfinity : worst, bad == 0,
            bad == 0 ? "" : $"{bad} of {actual.Length} elements out of tolerance:\n{sb}"));
    }

    private static string Invariant(FormattableString s) => s.ToString(CultureInfo.InvariantCulture);
}
