using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Cli;

/// <summary>Turns the errors a user can cause or meet (bad input, missing libraries, device faults) into one
/// clear line on stderr and exit code 1; anything else is a bug and keeps its stack trace.</summary>
public static class CliErrors
{
    public static int Run(Func<int> action)
    {
        try
        {
            return action();
        }
        catch (Exception e) when (IsUserFacing(e))
        {
            Console.Error.WriteLine($"error: {Message(e)}");
            return 1;
        }
    }

    public static async Task<int> RunAsync(Func<Task<int>> action)
    {
        try
        {
            return await action();
        }
        catch (Exception e) when (IsUserFacing(e))
        {
            Console.Error.WriteLine($"error: {Message(e)}");
            return 1;
        }
    }

    /// <summary>The message without .NET's " (Parameter 'x')" suffix.</summary>
    public static string Message(Exception e) =>
        e is ArgumentException { ParamName: { } p } a ? a.Message.Replace($" (Parameter '{p}')", "", StringComparison.Ordinal) : e.Message;

    private static bool IsUserFacing(Exception e) => e is ArgumentException or FormatException or IOException
        or UnauthorizedAccessException or InvalidDataException or NotSupportedException or InvalidOperationException
        or NativeLibraryMissingException or NvrtcException or DeviceException or System.Text.Json.JsonException
        or OperationCanceledException;
}
