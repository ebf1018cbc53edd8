namespace Qwen3Cuda.Runtime.Memory;

/// <summary>
/// The device storage of the paged KV cache: per layer a K and a V pool of <c>[pages, pageSize, numKvHeads, headDim]</c>
/// bf16 (the slot-major layout of kernels/rope.cu and attention_decode.cu; slot = page * pageSize + offset), all carved
/// from ONE device allocation, and the host page table (<see cref="KvPageTable"/>: which sequence holds which pages).
/// Block tables are copied to the device with each step's inputs. Page 0 is the scratch page: padding rows of a batch
/// point at it and never write; it is zeroed at construction so that what they read is finite.
/// </summary>
/// <summary>How the paged KV cache stores K and V: bf16, or FP8 E4M3 codes of the bf16 values (per-layer scale 1; docs/formats.md).</summary>
public enum KvCacheDtype { Bf16, Fp8 }

public static class KvCacheDtypes
{
    public static int ElementBytes(this KvCacheDtype d) => d == KvCacheDtype.Fp8 ? 1 : 2;
    public static string Name(this KvCacheDtype d) => d == KvCacheDtype.Fp8 ? "fp8" : "bf16";
}

public sealed class PagedKvCache : IDisposable
{
    private readonly IDevice _device;
    private readonly DeviceArena _arena;

    public PagedKvCache(IDevice device, int layers, int numKvHeads, int headDim, int pageSize, int pages, int maxSequences, int maxPagesPerSequence,
        KvCacheDtype dtype = KvCacheDtype.Bf16)
    {
        if (layers < 1 || numKvHeads < 1 || headDim < 1) throw new ArgumentException($"KV cache: layers {layers}, KV heads {numKvHeads}, head_dim {headDim} must be positive");
        Table = new KvPageTable(pages, pageSize, maxSequences, maxPagesPerSequence);
        _device = device;
        Layers = layers; NumKvHeads = numKvHeads; HeadDim = headDim;
        PageBytesPerPool = PageBytes(numKvHeads, headDim, pageSize, dtype);
        PoolBytes = PageBytesPerPool * pages;
        _arena = new DeviceArena(device, checked(PoolBytes * 2 * layers), "KV cache");
    }

    /// <summary>Bytes of one page of one pool (K or V) of one layer.</summary>
    public static long PageBytes(int numKvHeads, int headDim, int pageSize, KvCacheDtype dtype = KvCacheDtype.Bf16) =>
        (long)pageSize * numKvHeads * headDim * dtype.ElementBytes();

    /// <summary>Which pages each sequence holds (host side).</summary>
    public KvPageTable Table { get; }
    public int Layers { get; }
    public int NumKvHeads { get; }
    public int HeadDim { get; }
    public int PageSize => Table.PageSize;
    public int Pages => Table.Pages;
    public long PageBytesPerPool { get; }
    public long PoolBytes { get; }
    public long TotalBytes => _arena.Bytes;

    public DevicePtr K(int layer) => _arena.Base + (2L * layer) * PoolBytes;
    public DevicePtr V(int layer) => _arena.Base + (2L * layer + 1) * PoolBytes;

    /// <summary>Zeroes the scratch page 0 of every pool (queued on <paramref name="stream"/>).</summary>
    public void ZeroScratchPage(DeviceStream stream)
    {
        for (int l = 0; l < Layers; l++)
        {
            _device.MemsetAsync(K(l), 0, PageBytesPerPool, stream);
            _device.MemsetAsync(V(l), 0, PageBytesPerPool, stream);
        }
    }

    /// <summary>Queues the copies the page table asks for (copy-on-write of shared pages) before the next step writes.</summary>
    public void ApplyPendingCopies(DeviceStream stream)
    {
        foreach (var (src, dst) in Table.TakePendingCopies())
            for (int l = 0; l < Layers; l++)
            {
                _device.CopyDeviceToDeviceAsync(K(l) + dst * PageBytesPerPool, K(l) + src * PageBytesPerPool, PageBytesPerPool, stream);
                _device.CopyDeviceToDeviceAsync(V(l) + dst * PageBytesPerPool, V(l) + src * PageBytesPerPool, PageBytesPerPool, stream);
            }
    }

    public void Dispose() => _arena.Dispose();
}
