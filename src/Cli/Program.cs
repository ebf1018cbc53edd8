using System.CommandLine;
using System.CommandLine.Invocation;

namespace Qwen3Cuda.Cli;

/// <summary>
/// The `qwen3cuda` command. Each verb lives in Commands/&lt;Verb&gt;Command.cs as a static class with
/// <c>public static Command Create()</c>; <see cref="BuildRoot"/> is the whole CLI. Every invocation goes through
/// <see cref="Run"/>: parse errors and every exception a verb lets out end there, in <see cref="CliErrors"/>, as one
/// line on stderr and an exit code from <see cref="ExitCodes"/>. Verbs do not catch errors themselves.
/// </summary>
public static class Program
{
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("qwen3cuda: Qwen3 inference runtime with NVRTC-compiled CUDA kernels. " +
            "First run: qwen3cuda generate -m demo -p \"Hello\" (a small random model; see the README). Exit codes: see docs/troubleshooting.md.");
        // Verbs, one line each:
        root.Subcommands.Add(Commands.InfoCommand.Create());
        root.Subcommands.Add(Commands.KernelsCommand.Create());
        root.Subcommands.Add(Commands.LogitsCommand.Create());
        root.Subcommands.Add(Commands.EmulateCommand.Create());
        root.Subcommands.Add(Commands.GenerateCommand.Create());
        root.Subcommands.Add(Commands.ChatCommand.Create());
        root.Subcommands.Add(Commands.TokenizeCommand.Create());
        root.Subcommands.Add(Commands.DetokenizeCommand.Create());
        root.Subcommands.Add(Commands.TemplateCommand.Create());
        root.Subcommands.Add(Commands.ProfileCommand.Create());
        root.Subcommands.Add(Commands.BenchCommand.Create());
        root.Subcommands.Add(Commands.SelftestCommand.Create());
        root.Subcommands.Add(Commands.DemoCommand.Create());
        root.Subcommands.Add(Commands.ServeCommand.Create());
        root.Subcommands.Add(Commands.BenchServeCommand.Create());
        return root;
    }

    public static int Main(string[] args)
    {
        // Redirected output (pipes, tests, CI) gets wide tables instead of Spectre's 80-column default.
        if (Console.IsOutputRedirected) Spectre.Console.AnsiConsole.Profile.Width = 200;
        return Run(args, Console.Out, Console.Error);
    }

    /// <summary>Parses and runs one command line: the entry point of Main and of the tests.</summary>
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var parse = BuildRoot().Parse(args);
        try
        {
            if (parse.Action is ParseErrorAction)
            {
                if (args.Length == 0)
                {
                    // A bare `qwen3cuda`: the overview of the verbs, and the usage exit code.
                    BuildRoot().Parse(["--help"]).Invoke(new InvocationConfiguration { Output = stdout, Error = stderr });
                    return ExitCodes.Usage;
                }
                return CliErrors.ReportParseErrors(parse, stderr);
            }
            return parse.Invoke(new InvocationConfiguration { Output = stdout, Error = stderr, EnableDefaultExceptionHandler = false });
        }
        catch (Exception e)
        {
            stdout.Flush();
            return CliErrors.Report(e, stderr);
        }
    }
}
