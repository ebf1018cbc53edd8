using System.Diagnostics;
using Qwen3Cuda.Tests.Kernels;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>
/// tools/gpu-check (the prepared device check, docs/timing-model.md "Calibrating"): its scripts parse, and the run
/// script selects the tests by the category the GPU tests carry. (Its dry run, DRY_RUN=1 on the emulator, needs a
/// prepared bundle: minutes of publishing, so it is run by hand, not here.)
/// </summary>
public class GpuCheckScriptTests
{
    [TestCase("prepare")]
    [TestCase("run")]
    public void Script_Parses(string name)
    {
        string path = Path.Combine(RepoPaths.Root, "tools", "gpu-check", name);
        Assert.That(File.Exists(path), path);
        var psi = new ProcessStartInfo("bash", ["-n", path]) { RedirectStandardError = true, UseShellExecute = false };
        using var p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.That((p.ExitCode, err), Is.EqualTo((0, "")), $"bash -n {path}");
    }

    [Test]
    public void RunScript_SelectsTheGpuCategory()
    {
        string run = File.ReadAllText(Path.Combine(RepoPaths.Root, "tools", "gpu-check", "run"));
        Assert.That(run, Does.Contain($"--TestCaseFilter:\"TestCategory={KernelBackends.GpuCategory}\""));
        Assert.That(File.ReadAllText(Path.Combine(RepoPaths.Root, ".gitignore")), Does.Contain("/.gpu-check/"), "the bundle is never committed");
    }
}
