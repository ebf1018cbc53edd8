using System.Diagnostics;
using System.Text.RegularExpressions;
using Qwen3Cuda.Model.Selftest;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Tests.DeviceModel;

namespace Qwen3Cuda.Tests.Selftest;

/// <summary>
/// `qwen3cuda selftest` through the CLI entry point on the PTX emulator, as CI runs it: every kernel file compiles and
/// loads, every non-heavy kernel check passes (the same list as tests/Kernels and tests/Moe), the bandwidth row says it
/// is not measured, and the tiny model's prefill + 16 decode steps match the CPU reference. About 1.5 minutes on the
/// 2-core CI machine (most of it the real-shape checks).
/// </summary>
[NonParallelizable]
public class SelftestCommandTests
{
    static (int Exit, string Out, string Err) Cli(params string[] args) => Support.CliRunner.Run(args);

    [Test]
    public void EmulatorSelftest_WithTheTinyModel_Passes()
    {
        var sw = Stopwatch.StartNew();
        var (exit, stdout, err) = Cli("selftest", "--device", "emulator", "--model", DeviceCheckpoints.Tiny());
        TestContext.Out.WriteLine(stdout);
        TestContext.Out.WriteLine($"selftest --device emulator --model tiny: {sw.Elapsed.TotalSeconds:F0} s");
        Assert.That(exit, Is.EqualTo(0), stdout + err);
        Assert.That(stdout, Does.Contain("NVRTC: ").And.Contain("CUDA driver: ").And.Contain("Device: Qwen3Cuda PTX emulator"));
        Assert.That(stdout, Does.Contain("| section ").And.Contain("| case ").And.Contain("| max error ").And.Contain("| tolerance ").And.Contain("| pass |"));
        foreach (string file in KernelSources.KernelFiles) Assert.That(stdout, Does.Contain($"| compile           | {file}: "), file);
        foreach (string family in KernelCases.Families()) Assert.That(stdout, Does.Contain($"| {family,-17} | "), family);
        int expected = KernelCases.All().Count(c => !c.Heavy);
        Assert.That(Regex.Matches(stdout, @"^\| (?!compile|bandwidth|model|section|-)\S+ +\| .* \| yes  \|$", RegexOptions.Multiline), Has.Count.EqualTo(expected), "every non-heavy kernel check ran and passed");
        Assert.That(stdout, Does.Contain("not measured on the emulator"));
        Assert.That(Regex.Matches(stdout, @"^\| model +\| .* \| yes  \|$", RegexOptions.Multiline), Has.Count.EqualTo(3), "prefill, decode steps, greedy tokens");
        Assert.That(stdout, Does.Match(@"\n\d+ passed, 0 failed \(\d+ s\)\n"));
    }

    /// <summary>A failing row makes the exit code 1 and is printed with its detail: a NaN in layer 1's norm weight breaks the model check.</summary>
    [Test]
    public void FailingRow_ExitsNonZero_AndSaysWhich()
    {
        string dir = DeviceCheckpoints.TinyPatched("model.layers.1.input_layernorm.weight", 5, 0x7fc0);
        var (exit, stdout, _) = Cli("selftest", "--device", "emulator", "--only", "rmsnorm", "--model", dir);
        TestContext.Out.WriteLine(stdout);
        Assert.That(exit, Is.EqualTo(1));
        Assert.That(Regex.Matches(stdout, @"^\| rmsnorm +\| .* \| yes  \|$", RegexOptions.Multiline), Has.Count.EqualTo(NormRopeCases.AddRmsNorm().Count() + NormRopeCases.RmsNormHeads().Count()));
        Assert.That(stdout, Does.Not.Contain("| rope "), "--only runs the named families");
        Assert.That(stdout, Does.Match(@"\| model +\| prefill of 16 tokens \(2 of 2 layers\) +\| .* \| FAIL \|"));
        Assert.That(stdout, Does.Contain("\nFAIL model: prefill of 16 tokens").And.Match(@"\d+ passed, [1-9]\d* failed"));
    }

    // Exit codes (docs/troubleshooting.md): 2 for a bad command line, 1 for bad input.
    [TestCase(new[] { "--device", "cpu" }, 2, "--device: 'cpu' is not one of auto, cuda, emulator")]
    [TestCase(new[] { "--device", "tpu" }, 2, "--device: 'tpu' is not one of auto, cuda, emulator")]
    [TestCase(new[] { "--device", "emulator", "--layers", "0", "--model", "." }, 2, "--layers: 0 is out of range (at least 1)")]
    [TestCase(new[] { "--device", "emulator", "--layers", "2" }, 2, "--layers needs --model")]
    [TestCase(new[] { "--device", "emulator", "--model", "/nonexistent/model" }, 1, "--model: folder '/nonexistent/model' does not exist")]
    [TestCase(new[] { "--device", "emulator", "--only", "rmsnorm,warp_drive" }, 2, "--only 'rmsnorm,warp_drive': expected kernel families from rmsnorm, ")]
    public void BadInput_IsOneClearLine(string[] args, int code, string message)
    {
        var (exit, _, err) = Cli(["selftest", .. args]);
        Assert.That(exit, Is.EqualTo(code));
        Assert.That(err, Does.StartWith("error: ").And.Contain(message));
        Assert.That(err, Does.Not.Contain("   at "));
    }

    [Test]
    public void CudaWithoutAGpu_SaysSo()
    {
        if (Runtime.Cuda.CudaDriver.IsDeviceAvailable()) Assert.Ignore("a CUDA device is present");
        var (exit, _, err) = Cli("selftest", "--device", "cuda");
        Assert.That(exit, Is.EqualTo(3), "exit code 3: unavailable (docs/troubleshooting.md)");
        Assert.That(err, Does.StartWith("error: ").And.Contain("cuda"));
    }
}
