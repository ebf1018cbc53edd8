using System.Diagnostics;
using System.Runtime.InteropServices;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Tests.Cli;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Serving;

/// <summary>`generate` on the engine keeps its Ctrl+C behaviour: SIGINT during the prefill stops the request at the next step, prints the stats and exits 130.</summary>
[NonParallelizable]
public class EngineCliTests
{
    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    [Test]
    public void Generate_CtrlCDuringPrefill_StopsAtTheNextStep_PrintsStats_AndExits130()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("sends SIGINT with kill(2)");
        string dir = CliModels.TinyText();
        var tokenizer = Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer.FromModelDirectory(dir);
        string prompt = "";
        while (tokenizer.Encode(prompt).Length < 1200) prompt += "the cat sat on the mat and looked at the dog. ";
        string file = Path.Combine(Model.TestCheckpoints.NewDir("long-prompt"), "prompt.txt");
        File.WriteAllText(file, prompt);
        // The emulator prefills in 64-token steps (tens of milliseconds each): the signal lands during the prefill.
        var psi = new ProcessStartInfo(ChildProcess.DotnetHost) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { CliRunner.Dll, "generate", "--model", dir, "-f", file, "-n", "8", "--temperature", "0", "--device", "emulator" }) psi.ArgumentList.Add(a);
        using var p = Process.Start(psi)!;
        var stderr = new System.Text.StringBuilder();
        var loaded = new ManualResetEventSlim();
        p.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            lock (stderr) stderr.AppendLine(e.Data);
            if (e.Data.StartsWith("loaded ", StringComparison.Ordinal)) loaded.Set();
        };
        p.BeginErrorReadLine();
        var stdout = p.StandardOutput.ReadToEndAsync();
        try
        {
            Assert.That(loaded.Wait(TimeSpan.FromSeconds(120)), Is.True, "generate loaded the model");
            Thread.Sleep(200);
            Assert.That(kill(p.Id, 2), Is.Zero, "kill(SIGINT)");
            Assert.That(p.WaitForExit(60_000), Is.True, "generate ended after Ctrl+C");
            p.WaitForExit();
        }
        finally { if (!p.HasExited) p.Kill(entireProcessTree: true); }
        string err;
        lock (stderr) err = stderr.ToString();
        Assert.That(p.ExitCode, Is.EqualTo(ExitCodes.Interrupted), err);
        Assert.That(err, Does.Contain("eval 0 tokens").And.Contain("stop: cancelled"), "stopped before the first token");
        _ = stdout.Result;
    }
}
