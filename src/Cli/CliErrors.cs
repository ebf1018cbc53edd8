using System.CommandLine.Parsing;
using System.Text.Json;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Cli;

/// <summary>
/// The exit codes of every `qwen3cuda` verb (docs/troubleshooting.md lists them too). Errors print one line,
/// "error: ...", on stderr; only <see cref="InternalError"/> (a bug) adds the stack trace.
/// </summary>
public static class ExitCodes
{
    /// <summary>Done.</summary>
    public const int Ok = 0;
    /// <summary>Bad input: a missing or malformed model folder, config.json, checkpoint, tokenizer, template or file.</summary>
    public const int Error = 1;
    /// <summary>A bad command line: unknown option, a value out of range, options that contradict each other.</summary>
    public const int Usage = 2;
    /// <summary>This machine lacks what the command needs: NVRTC, the CUDA driver, a GPU.</summary>
    public const int Unavailable = 3;
    /// <summary>The model (weights + KV cache + workspace) or an allocation does not fit the device memory.</summary>
    public const int OutOfMemory = 4;
    /// <summary>A CUDA call or a kernel failed, or the emulator's memory/race/sync check or watchdog stopped a kernel.</summary>
    public const int DeviceFault = 5;
    /// <summary>A bug in qwen3cuda (an exception nobody meant to throw): the message asks for a report and shows the stack.</summary>
    public const int InternalError = 70;
    /// <summary>Stopped by Ctrl+C (128 + SIGINT, as shells report it).</summary>
    public const int Interrupted = 130;

    public static int For(ErrorKind kind) => kind switch
    {
        ErrorKind.InvalidArgument => Usage,
        ErrorKind.Unavailable => Unavailable,
        ErrorKind.OutOfMemory => OutOfMemory,
        ErrorKind.DeviceFault => DeviceFault,
        _ => Error,
    };
}

/// <summary>A command-line mistake found after parsing (options that contradict each other, a value that does not
/// suit the model); exit code <see cref="ExitCodes.Usage"/>. The message names the option.</summary>
public sealed class UsageException(string message) : Qwen3CudaException(message)
{
    public override ErrorKind Kind => ErrorKind.InvalidArgument;
}

/// <summary>
/// The one error path of the CLI: <see cref="Program.Run"/> sends every exception that leaves a verb here. Our own
/// errors (<see cref="Qwen3CudaException"/>) and the .NET ones that only bad input causes (a missing file, malformed
/// JSON, an argument the library refuses) become one line on stderr and an exit code from <see cref="ExitCodes"/>;
/// anything else is a bug and is reported as one, with its stack trace.
/// </summary>
public static class CliErrors
{
    public static int Report(Exception e, TextWriter stderr)
    {
        if (e is AggregateException { InnerExceptions.Count: 1 } agg) e = agg.InnerExceptions[0];
        int code = ExitCodeOf(e);
        if (code == ExitCodes.InternalError)
        {
            stderr.WriteLine($"internal error (a bug in qwen3cuda; please report it with this output): {e.GetType().FullName}: {e.Message}");
            stderr.WriteLine(e.StackTrace);
        }
        else if (code == ExitCodes.Interrupted) stderr.WriteLine("interrupted");
        else stderr.WriteLine($"error: {Message(e)}");
        stderr.Flush();
        return code;
    }

    public static int ExitCodeOf(Exception e) => e switch
    {
        Qwen3CudaException q => ExitCodes.For(q.Kind),
        OperationCanceledException => ExitCodes.Interrupted,
        ArgumentException or FormatException or IOException or UnauthorizedAccessException or InvalidDataException
            or NotSupportedException or JsonException => ExitCodes.Error,
        _ => ExitCodes.InternalError,
    };

    /// <summary>The message without .NET's " (Parameter 'x')" suffix or ArgumentOutOfRangeException's "Actual value was" line.</summary>
    public static string Message(Exception e)
    {
        string m = e.Message;
        if (e is ArgumentException { ParamName: { } p })
        {
            m = m.Replace($" (Parameter '{p}')", "", StringComparison.Ordinal);
            int actual = m.IndexOf("\nActual value was", StringComparison.Ordinal);
            if (actual >= 0) m = m[..actual];
        }
        return m.TrimEnd();
    }

    /// <summary>One line for a parse error: the first error, what the user typed, and where the verb's help is.</summary>
    public static int ReportParseErrors(System.CommandLine.ParseResult parse, TextWriter stderr)
    {
        var first = parse.Errors[0];
        string verb = parse.CommandResult.Command is System.CommandLine.RootCommand ? "" : " " + parse.CommandResult.Command.Name;
        string message = first.Message;
        if (message == "Required command was not provided.")
            message = "no verb given: qwen3cuda VERB [options] (verbs: " + string.Join(", ", parse.RootCommandResult.Command.Subcommands.Select(c => c.Name)) + ")";
        stderr.WriteLine($"error: {message.TrimEnd('.')} (see qwen3cuda{verb} --help)");
        stderr.Flush();
        return ExitCodes.Usage;
    }
}
