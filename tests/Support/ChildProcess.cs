using System.Diagnostics;

namespace Qwen3Cuda.Tests.Support;

/// <summary>Runs a program with a time limit and captures its output (tests never hang).</summary>
public static class ChildProcess
{
    public sealed record Result(int ExitCode, string Stdout, string Stderr);

    public static Result Run(string fileName, IEnumerable<string> args, IDictionary<string, string>? env = null,
        string? stdin = null, int timeoutMs = 120_000, string? workingDirectory = null)
    {
        var psi = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, RedirectStandardInput = stdin != null,
            UseShellExecute = false, WorkingDirectory = workingDirectory ?? Environment.CurrentDirectory,
        };
        foreach (string a in args) psi.ArgumentList.Add(a);
        if (env != null) foreach (var (k, v) in env) psi.Environment[k] = v;
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"could not start {fileName}");
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (stdin != null)
        {
            p.StandardInput.Write(stdin);
            p.StandardInput.Close();
        }
        if (!p.WaitForExit(timeoutMs))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail($"{fileName} {string.Join(' ', args)} did not finish within {timeoutMs} ms");
        }
        p.WaitForExit();
        return new Result(p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>The `dotnet` host running this test process.</summary>
    public static string DotnetHost => Environment.ProcessPath is { } p && Path.GetFileNameWithoutExtension(p) == "dotnet" ? p : "dotnet";
}
