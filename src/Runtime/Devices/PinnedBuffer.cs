using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime;

/// <summary>
/// Page-locked (CUDA) or plain native (emulator) host memory, for asynchronous copies. Owns the
/// memory; <see cref="Span"/> views it.
/// </summary>
public abstract unsafe class PinnedBuffer : IDisposable
{
    protected PinnedBuffer(nint pointer, long bytes)
    {
        Pointer = pointer;
        Length = bytes;
    }

    public nint Pointer { get; private set; }
    public long Length { get; }
    public bool IsDisposed => Pointer == 0;

    public Span<byte> Span => Length <= int.MaxValue
        ? new Span<byte>((void*)Pointer, (int)Length)
        : throw new InvalidOperationException($"pinned buffer of {Length} bytes is too large for one span");

    public Span<T> AsSpan<T>() where T : unmanaged => MemoryMarshal.Cast<byte, T>(Span);

    public void Dispose()
    {
        if (Pointer == 0) return;
        Release(Pointer);
        Pointer = 0;
        GC.SuppressFinalize(this);
    }

    protected abstract void Release(nint pointer);

    internal void CheckRange(long offset, long bytes, string argument)
    {
        ObjectDisposedException.ThrowIf(Pointer == 0, this);
        if (offset < 0 || bytes < 0 || offset + bytes > Length)
            throw new ArgumentOutOfRangeException(argument, $"range [{offset}, {offset + bytes}) is outside the pinned buffer of {Length} bytes");
    }
}

/// <summary>Host memory from <see cref="NativeMemory"/>, used by backends without page-locking.</summary>
public sealed unsafe class NativePinnedBuffer : PinnedBuffer
{
    private NativePinnedBuffer(nint p, long bytes) : base(p, bytes) { }

    public static NativePinnedBuffer Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(bytes);
        return new NativePinnedBuffer((nint)NativeMemory.AlignedAlloc((nuint)Math.Max(bytes, 1), 64), bytes);
    }

    protected override void Release(nint pointer) => NativeMemory.AlignedFree((void*)pointer);
}
