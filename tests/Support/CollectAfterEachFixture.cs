using NUnit.Framework.Interfaces;

[assembly: Qwen3Cuda.Tests.Support.CollectAfterEachFixture]

namespace Qwen3Cuda.Tests.Support;

/// <summary>
/// After each test fixture, a full blocking garbage collection that also compacts the large-object heap. The suite runs
/// in one process and its fixtures build emulated devices of gigabytes (real-shape weights, per-sector bookkeeping of a
/// quarter of their size in large arrays); without it the process could keep the garbage of earlier fixtures while the
/// next one allocates, and the full suite once reached the 24 GiB of a CI machine. No test result depends on it.
/// </summary>
[AttributeUsage(AttributeTargets.Assembly)]
public sealed class CollectAfterEachFixtureAttribute : Attribute, ITestAction
{
    public ActionTargets Targets => ActionTargets.Suite;

    public void BeforeTest(ITest test) { }

    public void AfterTest(ITest test)
    {
        if (test.Fixture is null) return;   // namespaces and the assembly: their fixtures have collected already
        System.Runtime.GCSettings.LargeObjectHeapCompactionMode = System.Runtime.GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
        GC.WaitForPendingFinalizers();
    }
}
