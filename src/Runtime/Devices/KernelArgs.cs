using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime;

/// <summary>
/// The arguments of one kernel launch, packed without allocation: each value is copied into a
/// caller-provided byte buffer at its natural alignment, and <see cref="Pointers"/> holds the address of
/// each value, exactly the <c>void** kernelParams</c> that <c>cuLaunchKernel</c> takes.
/// <code>
/// var args = new KernelArgs(stackalloc byte[KernelArgs.DefaultBufferBytes], stackalloc nint[KernelArgs.MaxArgs]);
/// args.Add(output); args.Add(rows); args.Add(new RmsNormParams { ... });
/// device.Launch(kernel, config, stream, args);
/// </code>
/// The buffer must stay where it is until the launch returns: stackalloc it, or pin it.
/// </summary>
public unsafe ref struct KernelArgs
{
    public const int MaxArgs = 32;
    public const int DefaultBufferBytes = 1024;

    private readonly Span<byte> _buffer;
    private readonly Span<nint> _pointers;
    private int _used;
    private int _count;
    private fixed int _sizes[MaxArgs];

    public KernelArgs(Span<byte> buffer, Span<nint> pointers)
    {
        _buffer = buffer;
        _pointers = pointers;
        _used = 0;
        _count = 0;
    }

    public readonly int Count => _count;
    public readonly ReadOnlySpan<nint> Pointers => _pointers[.._count];
    public readonly int SizeOf(int index) => (uint)index < (uint)_count ? _sizes[index] : throw new ArgumentOutOfRangeException(nameof(index));
    /// <summary>The bytes of argument <paramref name="index"/>.</summary>
    public readonly ReadOnlySpan<byte> Bytes(int index) => new((void*)_pointers[index], SizeOf(index));

    public void Add<T>(T value) where T : unmanaged
    {
        if (_count >= _pointers.Length || _count >= MaxArgs)
            throw new ArgumentException($"a kernel launch takes at most {Math.Min(_pointers.Length, MaxArgs)} arguments");
        int size = sizeof(T);
        int align = Math.Min(size >= 16 ? 16 : size >= 8 ? 8 : size >= 4 ? 4 : size >= 2 ? 2 : 1, 16);
        int offset = (_used + align - 1) & ~(align - 1);
        if (offset + size > _buffer.Length)
            throw new ArgumentException($"kernel arguments need more than {_buffer.Length} bytes of argument buffer");
        MemoryMarshal.Write(_buffer.Slice(offset, size), in value);
        _pointers[_count] = (nint)Unsafe.AsPointer(ref _buffer[offset]);
        _sizes[_count] = size;
        _count++;
        _used = offset + size;
    }
}
