using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>EmbeddingParams</c> in kernels/embedding.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct EmbeddingParams
{
    public DevicePtr Out;         // [Tokens, Width] bf16
    public DevicePtr Table;       // [Vocab, Width] bf16
    public DevicePtr Ids;         // [Tokens] int32
    public DevicePtr ErrorFlag;   // int32, set to 1 on an out-of-range id; may be null
    public DevicePtr Feed;        // [FeedCount] int32: the previous step's sampled ids, taken by fed ids -1 - j; may be null
    public int FeedCount;
    public int Tokens;
    public int Vocab;
    public int Width;
}

/// <summary>
/// Launcher for kernels/embedding.cu. An id outside [0, vocab) yields a zero row and sets the error flag (sticky;
/// the caller clears it and checks it after the step). An id -1 - j with j &lt; <c>feedCount</c> is a fed id: the
/// kernel takes <c>feed[j]</c> instead (pipelined decode: the token the previous step sampled for its output row j).
/// Nothing here allocates or synchronises.
/// </summary>
public sealed class EmbeddingLaunchers(KernelLoader loader)
{
    public const string File = "embedding.cu";
    private readonly DeviceKernel _gather = loader.Get(File, "embedding_gather_bf16");
    private readonly IDevice _device = loader.Device;

    public void Gather(DeviceStream stream, DevicePtr output, DevicePtr table, DevicePtr ids, DevicePtr errorFlag, int tokens, int vocab, int width,
        DevicePtr feed = default, int feedCount = 0)
    {
        if (feedCount < 0 || (feedCount > 0 && feed.IsNull)) throw new ArgumentException($"embedding_gather_bf16: feedCount {feedCount} needs a feed array", nameof(feedCount));
        if (width <= 0 || width % 8 != 0) throw new ArgumentException($"embedding_gather_bf16: width {width} must be a positive multiple of 8", nameof(width));
        if (tokens < 0 || vocab <= 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"embedding_gather_bf16: tokens {tokens} / vocab {vocab} invalid");
        if (tokens == 0) return;
        var p = new EmbeddingParams { Out = output, Table = table, Ids = ids, ErrorFlag = errorFlag, Feed = feed, FeedCount = feedCount, Tokens = tokens, Vocab = vocab, Width = width };
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_gather, new LaunchConfig(tokens, Math.Clamp((width / 8 + 31) / 32 * 32, 32, 256), ProgrammaticDependentLaunch: true), stream, args);
    }
}
