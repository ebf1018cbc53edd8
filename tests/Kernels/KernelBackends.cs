using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// The backends the kernel tests run on: the PTX emulator always, a CUDA GPU when one opens (otherwise its fixtures are
/// skipped, saying why). One list of checks (src/Model/Selftest, shared with `qwen3cuda selftest`) serves both.
/// </summary>
public static class KernelBackends
{
    public const string Emulator = "emulator", Cuda = "cuda";

    /// <summary>
    /// The category of every test that needs a GPU to run (it is skipped without one): `--filter TestCategory=gpu` selects
    /// them on a GPU machine (tools/gpu-check/run, step tests).
    /// </summary>
    public const string GpuCategory = "gpu";

    public static IEnumerable<TestFixtureData> All()
    {
        yield return new TestFixtureData(Emulator);
        var cuda = new TestFixtureData(Cuda);
        cuda.Properties.Add(NUnit.Framework.Internal.PropertyNames.Category, GpuCategory);
        yield return cuda;
    }

    /// <summary>A check context on <paramref name="backend"/>, or Assert.Ignore when it is CUDA and no GPU opens.</summary>
    public static KernelCheckContext Open(string backend)
    {
        if (backend == Emulator) return new KernelCheckContext(new EmulatedDevice());
        CudaDriverStatus status;
        try { status = CudaDriver.Probe(); }
        catch (Qwen3Cuda.Runtime.DeviceException e) { status = new CudaDriverStatus(true, null, 0, [], $"the driver failed listing devices: {e.Message}"); }
        if (status.Devices.Count == 0)
            Assert.Ignore($"no CUDA device ({status.Problem ?? (status.DriverLoaded ? "no device present" : "no driver")}): these checks ran on the emulator only");
        return new KernelCheckContext(Qwen3Cuda.Runtime.DeviceFactory.Open(Qwen3Cuda.Runtime.BackendKind.Cuda));
    }
}

/// <summary>A fixture run once per backend (<see cref="KernelBackends"/>): <see cref="Ctx"/> is that backend's check context.</summary>
public abstract class KernelBackendFixture(string backend)
{
    protected string Backend { get; } = backend;
    protected KernelCheckContext Ctx { get; private set; } = null!;

    [OneTimeSetUp]
    public void OpenBackend() => Ctx = KernelBackends.Open(Backend);

    [OneTimeTearDown]
    public void CloseBackend() => Ctx?.Dispose();

    /// <summary>Runs the check and fails with its comparisons (each with its tolerance) when one does not hold.</summary>
    protected void Passes(KernelCase c)
    {
        var r = c.Check(Ctx);
        TestContext.Out.WriteLine($"[{Backend}] {c.Family}: {c.Name}\n{r}");
        Assert.That(r.Passed, Is.True, $"[{Backend}] {c.Name}:\n{r}");
    }
}
