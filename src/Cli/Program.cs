using System.CommandLine;

namespace Qwen3Cuda.Cli;

/// <summary>
/// The `qwen3cuda` command. Each verb lives in Commands/&lt;Verb&gt;Command.cs as a static class with
/// <c>public static Command Create()</c>; this list is the whole CLI.
/// </summary>
public static class Program
{
    public static RootCommand BuildRoot()
    {
        var root = new RootCommand("qwen3cuda: Qwen3 inference runtime with NVRTC-compiled CUDA kernels");
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
        return root;
    }

    public static int Main(string[] args)
    {
        // Redirected output (pipes, tests, CI) gets wide tables instead of Spectre's 80-column default.
        if (Console.IsOutputRedirected) Spectre.Console.AnsiConsole.Profile.Width = 200;
        return BuildRoot().Parse(args).Invoke();
    }
}
