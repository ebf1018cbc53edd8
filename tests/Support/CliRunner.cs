using System.CommandLine;
using Qwen3Cuda.Cli;

namespace Qwen3Cuda.Tests.Support;

/// <summary>Runs the `qwen3cuda` command in process with its output and error captured.</summary>
public static class CliRunner
{
    public static (int Exit, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int exit = Program.BuildRoot().Parse(args).Invoke(new InvocationConfiguration { Output = output, Error = error });
        return (exit, output.ToString(), error.ToString());
    }
}
