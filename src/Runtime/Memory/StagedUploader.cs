namespace Qwen3Cuda.Runtime.Memory;

/// <summary>Progress of a weight upload: bytes copied so far of the total, and the tensor being copied.</summary>
public readonly record struct UploadProgress(long DoneBytes, long TotalBytes, string Current);

/// <summary>
/// Host-to-device upload through two pinned staging buffers used in turn: while the device copies buffer A
/// (async, on the upload stream), the host fills buffer B from the source (a memory-mapped checkpoint: the
/// disk read). Before a buffer is refilled, the event recorded after its last copy is waited for. Sources
/// larger than a buffer are cut into pieces. Call <see cref="Finish"/> once at the end (it synchronises).
/// </summary>
public sealed unsafe class StagedUploader : IDisposable
{
    public const long DefaultStagingBytes = 64L << 20;
    private readonly IDevice _device;
    private readonly PinnedBuffer[] _staging = new PinnedBuffer[2];
    private readonly DeviceEvent[] _done = new DeviceEvent[2];
    private readonly bool[] _pending = new bool[2];
    private readonly DeviceStream _stream;
    private readonly Action<UploadProgress>? _progress;
    private int _next;

    public StagedUploader(IDevice device, long totalBytes, Action<UploadProgress>? progress = null, long stagingBytes = DefaultStagingBytes)
    {
        _device = device;
        _progress = progress;
        TotalBytes = totalBytes;
        long size = Math.Max(4096, Math.Min(stagingBytes, Math.Max(totalBytes, 1)));
        _stream = device.CreateStream();
        for (int i = 0; i < 2; i++)
        {
            _staging[i] = device.AllocatePinned(size);
            _done[i] = device.CreateEvent(timing: false);
        }
    }

    public long TotalBytes { get; }
    public long DoneBytes { get; private set; }
    /// <summary>Pieces copied (for tests: a multi-piece upload really alternates the buffers).</summary>
    public int Pieces { get; private set; }

    /// <summary>Copies <paramref name="bytes"/> bytes at host address <paramref name="source"/> to <paramref name="dst"/>.</summary>
    public void Upload(DevicePtr dst, nint source, long bytes, string name)
    {
        long staging = _staging[0].Length;
        for (long done = 0; done < bytes;)
        {
            int b = _next;
            _next ^= 1;
            if (_pending[b]) _device.Synchronize(_done[b]);   // the device has finished reading this buffer
            long n = Math.Min(staging, bytes - done);
            Buffer.MemoryCopy((byte*)source + done, (void*)_staging[b].Pointer, n, n);
            _device.CopyToDeviceAsync(dst + done, _staging[b], 0, n, _stream);
            _device.Record(_done[b], _stream);
            _pending[b] = true;
            done += n;
            DoneBytes += n;
            Pieces++;
            _progress?.Invoke(new UploadProgress(DoneBytes, TotalBytes, name));
        }
    }

    /// <summary>Fills <paramref name="bytes"/> device bytes with zero (async, on the upload stream).</summary>
    public void Zero(DevicePtr dst, long bytes) => _device.MemsetAsync(dst, 0, bytes, _stream);

    /// <summary>Waits for every copy.</summary>
    public void Finish() => _device.Synchronize(_stream);

    public void Dispose()
    {
        if (!_stream.IsDisposed) _device.Synchronize(_stream);   // pinned buffers must outlive their copies
        for (int i = 0; i < 2; i++)
        {
            _staging[i]?.Dispose();
            _done[i]?.Dispose();
        }
        _stream.Dispose();
    }
}
