using BenchmarkDotNet.Attributes;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Bench.Kernels;

/// <summary>
/// The prefill kernels of one layer at real widths: the fused qkv GEMM, o_proj GEMM + residual and causal flash
/// attention over the paged cache, for a prompt chunk of <see cref="Tokens"/> tokens (512 on a GPU; 64 on the emulator,
/// which interprets every mma). Run: dotnet run -c Release --project bench -- --filter *PrefillKernelsBench*
/// </summary>
public class PrefillKernelsBench
{
    private const int Hidden = 2048, NH = 32, NKV = 4, D = 128, PageSize = 16;
    private IDevice _device = null!;
    private KernelLoader _loader = null!;
    private GemmLaunchers _gemm = null!;
    private AttentionPrefillLaunchers _attn = null!;
    private BenchBuffers _buffers = null!;
    private DevicePtr _x, _qkvW, _qkv, _k, _v, _table, _lens, _qStart, _attnOut, _oW, _hidden;
    private int _maxPages;

    public int Tokens { get; private set; }

    // bf16 0x3c3c ~ 0.0115: finite everywhere
    private DevicePtr Alloc(long bytes) => _buffers.Alloc(bytes, 0x3c);

    [GlobalSetup]
    public void Setup()
    {
        _device = DeviceFactory.Open(BackendKind.Auto);   // CUDA when a GPU is present, else the emulator
        _buffers = new BenchBuffers(_device);
        Tokens = _device.Info.Backend == BackendKind.Cuda ? 512 : 64;
        _loader = new KernelLoader(_device);
        _gemm = new GemmLaunchers(_loader);
        _attn = new AttentionPrefillLaunchers(_loader, D);
        int qkvN = (NH + 2 * NKV) * D;
        _x = Alloc((long)Tokens * Hidden * 2); _qkvW = Alloc((long)qkvN * Hidden * 2); _qkv = Alloc((long)Tokens * qkvN * 2);
        _maxPages = (Tokens + PageSize - 1) / PageSize;
        _k = Alloc((long)_maxPages * PageSize * NKV * D * 2); _v = Alloc((long)_maxPages * PageSize * NKV * D * 2);
        _table = Alloc(_maxPages * 4);
        _device.CopyToDevice(_table, System.Runtime.InteropServices.MemoryMarshal.AsBytes(Enumerable.Range(0, _maxPages).ToArray().AsSpan()));
        _lens = Alloc(4);
        _device.CopyToDevice(_lens, BitConverter.GetBytes(Tokens));
        _qStart = Alloc(8);
        _device.CopyToDevice(_qStart, System.Runtime.InteropServices.MemoryMarshal.AsBytes(new[] { 0, Tokens }.AsSpan()));
        _attnOut = Alloc((long)Tokens * NH * D * 2); _oW = Alloc((long)Hidden * NH * D * 2); _hidden = Alloc((long)Tokens * Hidden * 2);
        _device.Synchronize();
    }

    [Benchmark] public void QkvGemm() { int n = (NH + 2 * NKV) * D; _gemm.Gemm(_device.DefaultStream, _qkv, n, _x, Hidden, _qkvW, Hidden, DevicePtr.Null, Tokens, n, Hidden); _device.Synchronize(); }

    [Benchmark]
    public void PrefillAttention()
    {
        _attn.Prefill(_device.DefaultStream, new AttnPrefillParams
        {
            Q = _qkv, KCache = _k, VCache = _v, BlockTable = _table, ContextLens = _lens, QStart = _qStart, Out = _attnOut, Seqs = 1,
            NumQHeads = NH, NumKvHeads = NKV, PageSize = PageSize, MaxPagesPerSeq = _maxPages, QStride = (NH + 2 * NKV) * D, OutStride = NH * D,
        }, Tokens);
        _device.Synchronize();
    }

    [Benchmark] public void OProjGemmResidual() { _gemm.Gemm(_device.DefaultStream, _hidden, Hidden, _attnOut, NH * D, _oW, NH * D, _hidden, Tokens, Hidden, NH * D); _device.Synchronize(); }

    [GlobalCleanup]
    public void Cleanup()
    {
        if (_device is EmulatedDevice emu)
            foreach (var l in emu.Launches.DistinctBy(l => l.Kernel))
                Console.WriteLine($"// emulator {l.Kernel}: grid {l.Grid}, mma {l.MmaCount}, distinct sectors {l.DistinctSectors}, coalescing {l.CoalescingEfficiency:F3}");
        _buffers.Dispose();
        _loader.Dispose();
        _device.Dispose();
    }
}
