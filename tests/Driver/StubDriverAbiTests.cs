using System.Globalization;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Driver;

/// <summary>
/// The real `cuda` backend (CudaDevice over our [LibraryImport] driver bindings) loaded against a stub
/// libcuda.so.1 built from tests/stubcuda/stubcuda.c, in a child process (see <see cref="ProbeProgram"/>).
/// The expected bytes are written out by hand here from the C layout rules, not computed by the code
/// under test, so a wrongly marshalled argument (size, alignment, endianness, order) fails.
/// </summary>
[TestFixture]
public class StubDriverAbiTests
{
    private static Dictionary<string, string> _out = null!, _outPdlOff = null!;

    [OneTimeSetUp]
    public void BuildStubAndRunProbe()
    {
        string dir = Path.Combine(Path.GetTempPath(), "qwen3cuda-stubcuda-" + Guid.NewGuid().ToString("N"));
        Directory.CreateDirectory(dir);
        string lib = Path.Combine(dir, "libcuda.so.1");
        var gcc = ChildProcess.Run("gcc", ["-shared", "-fPIC", "-Wall", "-Wextra", "-Werror", "-o", lib,
            Path.Combine(RepoPaths.Root, "tests", "stubcuda", "stubcuda.c")]);
        Assert.That(gcc.ExitCode, Is.Zero, "gcc failed to build the stub driver:\n" + gcc.Stderr);

        _out = RunProbe(new Dictionary<string, string> { ["QWEN3CUDA_LIBCUDA"] = lib });
        _outPdlOff = RunProbe(new Dictionary<string, string> { ["QWEN3CUDA_LIBCUDA"] = lib, ["QWEN3CUDA_PDL"] = "0" });
        Directory.Delete(dir, recursive: true);
    }

    private static Dictionary<string, string> RunProbe(Dictionary<string, string> environment)
    {
        var probe = ChildProcess.Run(ChildProcess.DotnetHost,
            [Path.Combine(AppContext.BaseDirectory, "Qwen3Cuda.Tests.dll"), "cuda-abi-probe"], environment);
        Assert.That(probe.ExitCode, Is.Zero, "probe failed:\n" + probe.Stdout + probe.Stderr);
        return probe.Stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select(l => l.Split('=', 2)).ToDictionary(p => p[0], p => p[1].TrimEnd('\r'));
    }

    private static string Get(string key) => _out.TryGetValue(key, out string? v) ? v : throw new AssertionException($"probe printed no '{key}'");

    [Test]
    public void DeviceQueriesArriveThroughTheBindings()
    {
        Assert.That(Get("driver.version"), Is.EqualTo("12.4"));
        Assert.That(Get("device.name"), Is.EqualTo("Qwen3Cuda stub device"));
        Assert.That(Get("device.arch"), Is.EqualTo("sm_90"));
        Assert.That(Get("device.sms"), Is.EqualTo("132"));
        Assert.That(Get("device.smem_optin"), Is.EqualTo((227 * 1024).ToString(CultureInfo.InvariantCulture)));
        Assert.That(Get("device.peak_bandwidth"), Is.EqualTo("3352320000000"), "2 x 2619 MHz x 5120 bits / 8: the H100 SXM's 3.35 TB/s");
        Assert.That(Get("attr.set"), Is.EqualTo("100000"), "cuFuncSetAttribute value");
        Assert.That(Get("attr.regs"), Is.EqualTo("40"));
        Assert.That(Get("occupancy"), Is.EqualTo("8"), "2048 / 256 threads in the stub");
    }

    [Test]
    public void CopiesAndMemsetMoveTheRightBytes()
    {
        Assert.That(Get("alloc.aligned"), Is.EqualTo("True"));
        var expected = Enumerable.Range(0, 256).Select(i => (byte)(i * 7 + 1)).ToArray();
        for (int i = 16; i < 24; i++) expected[i] = 0xEE;
        Assert.That(Get("copy.roundtrip"), Is.EqualTo(Convert.ToHexStringLower(expected)));
    }

    [Test]
    public void LaunchArgumentsArriveByteExact()
    {
        ulong a = ulong.Parse(Get("alloc.a")[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        string ptr = Convert.ToHexStringLower(BitConverter.GetBytes(a));
        Assert.That(Get("launch.count"), Is.EqualTo("5"), "one direct launch + a captured graph replayed twice + a programmatic launch + a cooperative one");
        Assert.That(Get("launch0.grid"), Is.EqualTo("3,2,1"));
        Assert.That(Get("launch0.block"), Is.EqualTo("128,1,1"));
        Assert.That(Get("launch0.smem"), Is.EqualTo("4096"));
        for (int i = 0; i < 5; i++)
        {
            Assert.That(Get($"launch{i}.programmatic"), Is.EqualTo(i == 3 ? "1" : "0"), "only the flagged launch goes through cuLaunchKernelEx with the attribute");
            Assert.That(Get($"launch{i}.cooperative"), Is.EqualTo(i == 4 ? "1" : "0"), "only the cooperative launch goes through cuLaunchCooperativeKernel");
            Assert.That(Get($"launch{i}.kernel"), Is.EqualTo("probe_kernel"));
            Assert.That(Get($"launch{i}.param0"), Is.EqualTo(ptr), "device pointer, 8 bytes little-endian");
            Assert.That(Get($"launch{i}.param1"), Is.EqualTo("04030201"), "int 0x01020304");
            Assert.That(Get($"launch{i}.param2"), Is.EqualTo("0000c03f"), "float 1.5");
            // struct { int A=7; float B=-2; u64 C=0x1122334455667788; short D=0x99; } : C layout, 24 bytes, of
            // which the last 6 are tail padding (unspecified contents: the struct's own padding bytes are copied).
            string param3 = Get($"launch{i}.param3");
            Assert.That(param3, Has.Length.EqualTo(2 * 24));
            Assert.That(param3[..(2 * 18)], Is.EqualTo("07000000" + "000000c0" + "8877665544332211" + "9900"));
            Assert.That(Get($"launch{i}.param4"), Is.EqualTo("ab"), "byte");
            Assert.That(Get($"launch{i}.param5"), Is.EqualTo("0000000000000840"), "double 3.0");
        }
        Assert.That(Get("launch3.grid"), Is.EqualTo("7,1,1"));
        Assert.That(Get("launch3.block"), Is.EqualTo("32,1,1"));
        Assert.That(Get("launch3.smem"), Is.EqualTo("64"));
        Assert.That(Get("launch4.grid"), Is.EqualTo("9,1,1"));
        Assert.That(Get("launch4.block"), Is.EqualTo("96,1,1"));
        Assert.That(Get("launch1.grid"), Is.EqualTo("5,1,1"));
        Assert.That(Get("launch1.block"), Is.EqualTo("64,1,1"));
        Assert.That(Get("graph.kernels"), Is.EqualTo("1"));
        Assert.That(Get("event.ms"), Is.EqualTo("1.5"));
    }

    /// <summary>
    /// The programmatic-dependent-launch probe at device open (sm_90 stub): a captured graph of two cuLaunchKernelEx
    /// launches of the probe kernel, instantiated and run once; it passes, so PDL is on.
    /// </summary>
    [Test]
    public void ProgrammaticLaunchProbePasses_OnTheSm90Stub()
    {
        Assert.That(Get("pdl.status"), Is.EqualTo("on"));
        Assert.That(Get("pdl.probe_runs"), Is.EqualTo("2"));
    }

    /// <summary>Opening the device sets 16 MiB of L2 aside for persisting lines (limit 0x06), within the stub's 37.5 MiB maximum.</summary>
    [Test]
    public void PersistingL2_IsSetAsideAtOpen()
    {
        Assert.That(Get("l2persist.status"), Is.EqualTo("16 MiB set aside"));
        Assert.That(Get("l2persist.limit"), Is.EqualTo("6"));
        Assert.That(Get("l2persist.value"), Is.EqualTo((16 << 20).ToString(CultureInfo.InvariantCulture)));
    }

    /// <summary>QWEN3CUDA_PDL=0: no probe, and the flagged launch goes through cuLaunchKernel like any other.</summary>
    [Test]
    public void Qwen3CudaPdl0_TurnsProgrammaticLaunchOff()
    {
        Assert.That(_outPdlOff["pdl.status"], Is.EqualTo("off (QWEN3CUDA_PDL=0)"));
        Assert.That(_outPdlOff["pdl.probe_runs"], Is.EqualTo("0"));
        Assert.That(_outPdlOff["launch.count"], Is.EqualTo("5"));
        Assert.That(_outPdlOff["launch3.grid"], Is.EqualTo("7,1,1"));
        Assert.That(_outPdlOff["launch3.programmatic"], Is.EqualTo("0"));
    }

    [Test]
    public void DriverErrorsNameTheCallTheErrorAndItsText()
    {
        Assert.That(Get("error.image"), Does.StartWith("cuModuleLoadDataEx(probe.cu, compute_90) failed: CUDA_ERROR_INVALID_IMAGE"));
        Assert.That(Get("error.image"), Does.Contain("JIT log: stub: image is not a STUBMODULE"));
        Assert.That(Get("error.function"), Is.EqualTo("cuModuleGetFunction(probe.cu, missing_kernel) failed: CUDA_ERROR_NOT_FOUND (named symbol not found)"));
        Assert.That(Get("error.oom"), Does.StartWith("out of device memory: cuMemAlloc_v2 of 2,199,023,255,552 bytes failed"));
    }
}
