namespace Qwen3Cuda.Runtime;

/// <summary>
/// Graph capture and error cleanup that never hide the exception that caused them. On CUDA a launch that fails while a
/// stream captures invalidates the capture, so cuStreamEndCapture then fails too (CUDA_ERROR_STREAM_CAPTURE_INVALIDATED),
/// and after a sticky device error every later call (frees, syncs) fails: cleanup in a catch block that throws would
/// replace the message that says what went wrong with one that says only that cleanup failed.
/// </summary>
public static class DeviceCapture
{
    /// <summary>Key in <see cref="Exception.Data"/> under which the messages of failed cleanups are kept.</summary>
    public const string CleanupFailuresKey = "Qwen3Cuda.CleanupFailures";

    /// <summary>
    /// Records the work <paramref name="body"/> queues on <paramref name="stream"/> as a graph. If <paramref name="body"/>
    /// throws, the capture is still ended (the stream must leave capture mode) and <paramref name="body"/>'s exception is
    /// what propagates; a failure of that EndCapture is kept in its <see cref="Exception.Data"/>.
    /// </summary>
    public static DeviceGraph Capture(this IDevice device, DeviceStream stream, Action body)
    {
        device.BeginCapture(stream);
        try
        {
            body();
        }
        catch (Exception original)
        {
            CleanupKeeping(original, "EndCapture after a failed capture", () => device.EndCapture(stream).Dispose());
            throw;
        }
        return device.EndCapture(stream);
    }

    /// <summary>
    /// Runs <paramref name="cleanup"/> while <paramref name="original"/> is propagating: a failure of the cleanup is
    /// recorded in <paramref name="original"/>'s <see cref="Exception.Data"/> (as "what: message") instead of replacing it.
    /// </summary>
    public static void CleanupKeeping(Exception original, string what, Action cleanup)
    {
        try
        {
            cleanup();
        }
        catch (Exception e)
        {
            string line = $"{what}: {e.GetType().Name}: {e.Message}";
            original.Data[CleanupFailuresKey] = original.Data[CleanupFailuresKey] is string earlier ? earlier + "\n" + line : line;
        }
    }
}
