using NUnit.Framework.Interfaces;

[assembly: Qwen3Cuda.Tests.Support.CollectAfterEachFixture]

namespace Qwen3Cuda.Tests.Support;

/// <summary>
/// Between test fixtures, a full blocking garbage collection that also compacts the large-object heap. The suite runs
/// in one process and its fixtures build emulated devices of gigabytes (real-shape weights, per-sector bookkeeping of a
/// quarter of their size in large arrays); without it the process could keep the garbage of earlier fixtures while the
/// next one allocates, and the full suite reached the 24 GiB of a CI machine. No test result depends on it.
/// NUnit runs an assembly-level suite action once for the whole assembly, so this is a per-test action that collects
/// when the first test of a new fixture starts (after the previous fixture's one-time tear-down).
/// With QWEN3CUDA_TEST_MEMLOG=FILE each collection appends one line to FILE: the fixture that ended, its seconds, and
/// after the collection the process's resident memory (and its peak), the managed heap and the GC's committed bytes.
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class CollectAfterEachFixtureAttribute : Attribute, ITestAction
{
    static readonly string? MemLog = Environment.GetEnvironmentVariable("QWEN3CUDA_TEST_MEMLOG");
    static readonly object Gate = new();
    static string? _fixture;
    static long _fixtureStartTicks;

    public ActionTargets Targets => ActionTargets.Test;

    public void BeforeTest(ITest test)
    {
        string? fixture = test.TypeInfo?.FullName ?? test.Parent?.FullName;
        lock (Gate)
        {
            if (fixture == _fixture) return;
            if (_fixture is not null) Collect(_fixture);
            _fixture = fixture;
            _fixtureStartTicks = Environment.TickCount64;
        }
    }

    public void AfterTest(ITest test) { }

    static void Collect(string endedFixture)
    {
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);   // what the finalizers released
        if (MemLog is null) return;
        var info = GC.GetGCMemoryInfo(GCKind.Any);
        using var self = System.Diagnostics.Process.GetCurrentProcess();
        const double MiB = 1 << 20;
        File.AppendAllText(MemLog,
            $"{endedFixture}\t{(Environment.TickCount64 - _fixtureStartTicks) / 1000.0:F1}s\trss {self.WorkingSet64 / MiB:F0}\t" +
            $"peak {self.PeakWorkingSet64 / MiB:F0}\theap {info.HeapSizeBytes / MiB:F0}\tcommitted {info.TotalCommittedBytes / MiB:F0}\n");
    }
}
