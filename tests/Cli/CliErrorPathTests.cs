using System.CommandLine;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Runtime.Native;
using Qwen3Cuda.Tests.Model;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>
/// The crashes and the hang a newcomer met (each of these failed before the one error path), each through the real entry point (<see cref="Program.Run"/>, or the built qwen3cuda.dll
/// in a child process where an environment variable or a signal is the input): one "error: ..." line, no stack trace,
/// the documented exit code (<see cref="ExitCodes"/>).
/// </summary>
[NonParallelizable]
public class CliErrorPathTests
{
    static (int Exit, string Out, string Err) Cli(params string[] args) => CliRunner.Run(args);

    static void AssertOneErrorLine(string err, string contains)
    {
        var lines = err.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines.Count(l => l.StartsWith("error: ", StringComparison.Ordinal)), Is.EqualTo(1), err);
        Assert.That(err, Does.Contain(contains));
        Assert.That(err, Does.Not.Contain("   at ").And.Not.Contain("Unhandled exception").And.Not.Contain("System."), "no stack trace, no .NET type names");
        Assert.That(err, Does.Not.Contain("Usage:").And.Not.Contain("Description:"), "no help dump");
    }

    // 1. info --model DIR with a missing, empty or malformed config.json.
    [TestCase(null, "config.json: file not found")]
    [TestCase("", "config.json: the file is empty")]
    [TestCase("{oops", "config.json: not valid JSON")]
    [TestCase("{\"model_type\": \"qwen3_moe\"}", "config.json: required field")]
    public void Info_BadConfig_IsOneLine(string? configText, string message)
    {
        string dir = TestCheckpoints.NewDir("badconfig");
        if (configText is not null) File.WriteAllText(Path.Combine(dir, "config.json"), configText);
        foreach (var verb in new[] { "info", "logits", "profile" })
        {
            var (exit, _, err) = verb == "logits" ? Cli(verb, "--model", dir, "--ids", "1") : Cli(verb, "--model", dir);
            Assert.That(exit, Is.EqualTo(ExitCodes.Error), $"{verb}: {err}");
            AssertOneErrorLine(err, message);
            Assert.That(err, Does.Contain(dir), "names the file");
        }
    }

    // 2. generate/chat when the model does not fit.
    [TestCase("generate")]
    [TestCase("chat")]
    public void DoesNotFit_IsOneLineWithTheLargestContextAndAQuantizedEstimate(string verb)
    {
        string[] args = ["--model", CliModels.TinyText(), "--device", "emulator", "--gpu-memory", "1MiB"];
        var (exit, _, err) = CliRunner.RunWithInput("hi\n", [verb, .. args, .. verb == "generate" ? new[] { "-p", "hi" } : []]);
        Assert.That(exit, Is.EqualTo(ExitCodes.OutOfMemory), err);
        AssertOneErrorLine(err, "but --gpu-memory is 1.0 MiB");
        Assert.That(err, Does.Match(@"The largest context that fits is \d+ tokens \(--ctx-size \d+\)"));
        Assert.That(err, Does.Contain("FP8").And.Contain("GPTQ-Int4").And.Contain("estimated from config.json"));
    }

    // 3. A missing NVRTC or driver (child processes: the libraries are probed once per process).
    [TestCase("generate", "--device", "emulator", "-p", "hi")]
    [TestCase("logits", "--device", "emulator", "--ids", "1,2")]
    [TestCase("profile")]
    public void MissingNvrtc_IsOneLine(params string[] args)
    {
        var r = ChildProcess.Run(ChildProcess.DotnetHost, [CliRunner.Dll, args[0], "--model", CliModels.TinyText(), .. args.Skip(1)],
            new Dictionary<string, string> { [NativeLibraries.NvrtcEnvironmentVariable] = "/nope/libnvrtc.so" });
        Assert.That(r.ExitCode, Is.EqualTo(ExitCodes.Unavailable), r.Stderr);
        AssertOneErrorLine(r.Stderr, "No NVRTC library found (tried /nope/libnvrtc.so)");
    }

    [TestCase("profile", "--device", "cuda")]
    [TestCase("bench", "--device", "cuda")]
    [TestCase("generate", "--device", "cuda", "-p", "hi")]
    public void MissingDriver_IsOneLine(params string[] args)
    {
        var r = ChildProcess.Run(ChildProcess.DotnetHost, [CliRunner.Dll, args[0], "--model", CliModels.TinyText(), .. args.Skip(1)],
            new Dictionary<string, string> { [NativeLibraries.CudaEnvironmentVariable] = "/nope/libcuda.so.1" });
        Assert.That(r.ExitCode, Is.EqualTo(ExitCodes.Unavailable), r.Stderr);
        AssertOneErrorLine(r.Stderr, "--device cuda is not available on this machine: No CUDA driver library found (tried /nope/libcuda.so.1)");
    }

    // 4. Option parse errors: one line naming the option as typed, no help dump, no .NET types, exit code 2.
    [TestCase("--seed", "-1", "--seed: '-1' is not a whole number")]
    [TestCase("-s", "x", "-s: 'x' is not a whole number")]
    [TestCase("--temperature", "abc", "--temperature: 'abc' is not a number")]
    [TestCase("--temperature", "-1", "--temperature must be >= 0")]
    [TestCase("--frequency-penalty", "2.5", "--frequency-penalty must be in [-2, 2], got 2.5")]
    [TestCase("--frequency-penalty", "x", "--frequency-penalty: 'x' is not a number")]
    [TestCase("--presence-penalty", "-3", "--presence-penalty must be in [-2, 2]")]
    [TestCase("--repetition-penalty", "0", "--repetition-penalty must be > 0")]
    [TestCase("--context", "99999999999", "--context: 99999999999 is out of range (1 to 16777216)")]
    [TestCase("--ctx-size", "0", "--ctx-size: 0 is out of range")]
    [TestCase("-n", "0", "-n: 0 is out of range")]
    [TestCase("--top-k", "-3", "--top-k: -3 is out of range (at least 0)")]
    [TestCase("--gpu-memory", "lots", "--gpu-memory 'lots': expected a number")]
    [TestCase("--device", "tpu", "--device: 'tpu' is not one of auto, cuda, cpu, emulator")]
    [TestCase("--bogus", "1", "Unrecognized command or argument '--bogus'")]
    public void Generate_BadOptionValues_AreOneLineUsageErrors(string option, string value, string message)
    {
        var (exit, _, err) = Cli("generate", "--model", CliModels.TinyText(), "-p", "hi", option, value);
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage), err);
        AssertOneErrorLine(err, message);
        Assert.That(err, Does.Contain("(see qwen3cuda generate --help)"));
    }

    /// <summary>The whole class: every option of every verb that takes a typed value answers garbage with one line, exit 2.</summary>
    [Test]
    public void EveryTypedOptionOfEveryVerb_AnswersGarbageWithOneLine()
    {
        var root = Program.BuildRoot();
        int checkedOptions = 0;
        foreach (var verb in root.Subcommands)
            foreach (var option in verb.Options)
            {
                if (option.ValueType == typeof(string) || option.ValueType == typeof(bool) || option.ValueType == typeof(bool?) || option.ValueType == typeof(string[])
                    || option.ValueType == typeof(FileInfo) || option is System.CommandLine.Help.HelpOption) continue;
                var required = verb.Options.Where(o => o.Required && o != option).SelectMany(o => new[] { o.Name, "1" });
                var (exit, _, err) = Cli([verb.Name, .. required, option.Name, "not-a-value!"]);
                Assert.That(exit, Is.EqualTo(ExitCodes.Usage), $"{verb.Name} {option.Name}: {err}");
                AssertOneErrorLine(err, option.Name);
                checkedOptions++;
            }
        Assert.That(checkedOptions, Is.GreaterThan(20));
    }

    /// <summary>--ctx-size above max_position_embeddings: every backend and info warn the same way (and suggest YaRN) instead of one refusing with a C# parameter name.</summary>
    [Test]
    public void CtxSizeAboveTheModelsLimit_WarnsAndSuggestsYarn_OnEveryVerb()
    {
        string tiny = CliModels.TinyText();   // max_position_embeddings 2048
        foreach (var args in new[]
        {
            new[] { "generate", "--model", tiny, "-p", "hi", "--device", "cpu", "--context", "262144", "-n", "2", "--temperature", "0" },
            new[] { "generate", "--model", tiny, "-p", "hi", "--device", "emulator", "--ctx-size", "4096", "-n", "1", "--temperature", "0" },
            new[] { "info", "--model", tiny, "--ctx-size", "262144" },
        })
        {
            var (exit, _, err) = Cli(args);
            Assert.That(exit, Is.EqualTo(ExitCodes.Ok), string.Join(' ', args) + "\n" + err);
            Assert.That(err, Does.Contain("is beyond what the model was trained for (the model's max_position_embeddings is 2048)").And.Contain("YaRN"));
            Assert.That(err, Does.Not.Contain("contextLength"));
        }
    }

    // 5. profile beyond the model's context: refused at once instead of running for minutes.
    [Test]
    public void Profile_BeyondTheContext_IsRefusedAtOnce()
    {
        var sw = Stopwatch.StartNew();
        var (exit, _, err) = Cli("profile", "--model", CliModels.TinyText(), "--tokens", "100000");
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage), err);
        AssertOneErrorLine(err, "the model's context is 2048 (max_position_embeddings)");
        Assert.That(sw.Elapsed, Is.LessThan(TimeSpan.FromSeconds(30)), "refused before any kernel runs");
        (exit, _, err) = Cli("bench", "--model", CliModels.TinyText(), "-p", "2000", "-n", "100", "--device", "cpu");
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage), err);
        AssertOneErrorLine(err, "more than the model's context of 2048");
    }

    [DllImport("libc", SetLastError = true)]
    static extern int kill(int pid, int sig);

    /// <summary>Whether this process ignores SIGINT: bit 1 (signal 2) of the SigIgn mask in /proc/self/status.</summary>
    static bool SigIntIgnored()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
            if (line.StartsWith("SigIgn:", StringComparison.Ordinal))
                return (Convert.ToUInt64(line["SigIgn:".Length..].Trim(), 16) & (1UL << (2 - 1))) != 0;
        return false;
    }

    // 7. Ctrl+C at the idle chat prompt ends the chat with a word (and the SIGINT exit status, 130).
    [Test]
    public void Chat_CtrlCAtThePrompt_SaysSoAndExits130()
    {
        if (!OperatingSystem.IsLinux()) Assert.Ignore("sends SIGINT with kill(2)");
        // A process started in the background without job control (`cmd &` in a script, nohup) inherits SIGINT ignored,
        // and so does the chat it starts; by Unix convention (and .NET's) an inherited ignore stays, so Ctrl+C cannot be tested.
        if (SigIntIgnored()) Assert.Ignore("SIGINT is ignored by this test process (inherited from a background launch), so the chat child ignores it too");
        var psi = new ProcessStartInfo(ChildProcess.DotnetHost)
        {
            RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (var a in new[] { CliRunner.Dll, "chat", "--model", CliModels.TinyText(), "--device", "cpu" }) psi.ArgumentList.Add(a);
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
            Assert.That(loaded.Wait(TimeSpan.FromSeconds(60)), Is.True, "chat loaded the model");
            Thread.Sleep(300);   // at the prompt, waiting for a line (stdin stays open)
            Assert.That(kill(p.Id, 2), Is.Zero, "kill(SIGINT)");
            Assert.That(p.WaitForExit(20_000), Is.True, "the chat ended after Ctrl+C");
            p.WaitForExit();
        }
        finally { if (!p.HasExited) p.Kill(entireProcessTree: true); }
        string err;
        lock (stderr) err = stderr.ToString();
        Assert.That(p.ExitCode, Is.EqualTo(ExitCodes.Interrupted), err);
        Assert.That(err, Does.Contain("[Ctrl+C] chat ended"));
        _ = stdout.Result;
    }
}
