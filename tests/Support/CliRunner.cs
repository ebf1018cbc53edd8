using Qwen3Cuda.Cli;

namespace Qwen3Cuda.Tests.Support;

/// <summary>Runs the `qwen3cuda` command in process through its real entry point (<see cref="Program.Run"/>: parsing, the
/// verb, and the one error handler) with its output and error captured.</summary>
public static class CliRunner
{
    public static (int Exit, string Out, string Err) Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int exit = Program.Run(args, output, error);
        return (exit, output.ToString(), error.ToString());
    }

    /// <summary>Like <see cref="Run"/>, with stdin reading <paramref name="stdin"/> (Console.In is swapped for the call).</summary>
    public static (int Exit, string Out, string Err) RunWithInput(string stdin, params string[] args)
    {
        var old = Console.In;
        Console.SetIn(new StringReader(stdin));
        try { return Run(args); }
        finally { Console.SetIn(old); }
    }

    /// <summary>The built qwen3cuda.dll next to the tests (for child-process runs: environment variables, signals).</summary>
    public static string Dll => Path.Combine(AppContext.BaseDirectory, "qwen3cuda.dll");
}
