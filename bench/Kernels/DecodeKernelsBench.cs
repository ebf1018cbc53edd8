using BenchmarkDotNet.Attributes;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Bench.Kernels;

/// <summary>
/// The decode-path kernels of one Qwen3-30B-A3B layer at real shapes (hidden 2048, 32/4 heads of 128, one token,
/// 4096 tokens of context), plus the lm_head GEMV. On a CUDA device each benchmark is one launch + stream sync, and
/// GlobalCleanup prints per-kernel CUDA-event times and achieved GB/s; without one, the emulator runs them and
/// GlobalCleanup prints its counters instead (lm_head is cut to 16384 rows there: 311 MB of weights is too slow to
/// interpret). Run: dotnet run -c Release --project bench -- --filter *DecodeKernelsBench*
/// </summary>
[MemoryDiagnoser]
public class DecodeKernelsBench
{
    private const int Hidden = 2048, NH = 32, NKV = 4, D = 128, Context = 4096, PageSize = 16;
    private IDevice _device = null!;
    private KernelLoader _loader = null!;
    private RmsNormLaunchers _norm = null!;
    private RopeLaunchers _rope = null!;
    private GemvLaunchers _gemv = null!;
    private AttentionDecodeLaunchers _attn = null!;
    private BenchBuffers _buffers = null!;
    private DevicePtr _hidden, _delta, _normW, _normed, _qkvW, _qkv, _q, _k, _v, _invFreq, _pos, _slot, _table, _lens, _attnOut;
    private DevicePtr _oW, _lmW, _logits, _partOut, _partLse, _gemvWs;
    private long _gemvWsBytes;
    private int _lmRows;

    private DevicePtr Alloc(long bytes, byte fill = 0) => _buffers.Alloc(bytes, fill);

    [GlobalSetup]
    public void Setup()
    {
        _device = DeviceFactory.Open(BackendKind.Auto);   // CUDA when a GPU is present, else the emulator
        _buffers = new BenchBuffers(_device);
        _loader = new KernelLoader(_device);
        _norm = new RmsNormLaunchers(_loader);
        _rope = new RopeLaunchers(_loader, D);
        _gemv = new GemvLaunchers(_loader);
        _attn = new AttentionDecodeLaunchers(_loader, D);
        _lmRows = _device.Info.Backend == BackendKind.Cuda ? 151936 : 16384;
        const byte one = 0x3f; // bf16 0x3f3f ~ 0.75: finite values everywhere
        _hidden = Alloc(Hidden * 2, one); _delta = Alloc(Hidden * 2, one); _normW = Alloc(Hidden * 2, one); _normed = Alloc(Hidden * 2);
        int qkvN = (NH + 2 * NKV) * D;
        _qkvW = Alloc((long)qkvN * Hidden * 2, one); _qkv = Alloc(qkvN * 2, one); _q = Alloc(NH * D * 2);
        int pages = Context / PageSize + 1;
        _k = Alloc((long)pages * PageSize * NKV * D * 2, one); _v = Alloc((long)pages * PageSize * NKV * D * 2, one);
        _invFreq = Alloc(D / 2 * 4); _pos = Alloc(4); _slot = Alloc(4);
        var table = Enumerable.Range(0, pages).ToArray();
        _table = Alloc(pages * 4);
        _device.CopyToDevice(_table, System.Runtime.InteropServices.MemoryMarshal.AsBytes(table.AsSpan()));
        _lens = Alloc(4);
        _device.CopyToDevice(_lens, BitConverter.GetBytes(Context));
        _attnOut = Alloc(NH * D * 2);
        long ws = _attn.WorkspaceBytes(1, NH, 128, out long lse);
        _partOut = Alloc(ws); _partLse = Alloc(lse);
        _oW = Alloc((long)Hidden * NH * D * 2, one);
        _lmW = Alloc((long)_lmRows * Hidden * 2, one); _logits = Alloc(_lmRows * 2);
        _gemvWsBytes = 1 << 20; _gemvWs = Alloc(_gemvWsBytes);
        _device.Synchronize();
    }

    [Benchmark] public void AddRmsNorm() { _norm.AddRmsNorm(_device.DefaultStream, _normed, _hidden, _delta, _normW, 1, Hidden, 1e-6f); _device.Synchronize(); }

    [Benchmark] public void QkvGemv() { _gemv.Gemv(_device.DefaultStream, _qkv, (NH + 2 * NKV) * D, _normed, Hidden, _qkvW, DevicePtr.Null, 1, (NH + 2 * NKV) * D, Hidden, _gemvWs, _gemvWsBytes); _device.Synchronize(); }

    [Benchmark]
    public void QkNormRopeKvWrite()
    {
        _rope.QkNormRopeKvWrite(_device.DefaultStream, new QkNormRopeParams
        {
            Qkv = _qkv, QOut = _q, KCache = _k, VCache = _v, QNormWeight = _normW, KNormWeight = _normW, InvFreq = _invFreq,
            Positions = _pos, SlotMapping = _slot, Tokens = 1, NumQHeads = NH, NumKvHeads = NKV, QkvStride = (NH + 2 * NKV) * D,
            QOutStride = NH * D, Eps = 1e-6f, AttentionScaling = 1f,
        });
        _device.Synchronize();
    }

    [Benchmark]
    public void DecodeAttention4K()
    {
        _attn.Decode(_device.DefaultStream, new DecodeAttentionArgs(_q, NH * D, _k, _v, _table, Context / PageSize + 1, PageSize, _lens, 1, Context,
            NH, NKV, _attnOut, NH * D, _partOut, _partLse, 128));
        _device.Synchronize();
    }

    [Benchmark] public void OProjGemvResidual() { _gemv.Gemv(_device.DefaultStream, _delta, Hidden, _attnOut, NH * D, _oW, _hidden, 1, Hidden, NH * D, _gemvWs, _gemvWsBytes); _device.Synchronize(); }

    [Benchmark] public void LmHeadGemv() { _gemv.Gemv(_device.DefaultStream, _logits, _lmRows, _normed, Hidden, _lmW, DevicePtr.Null, 1, _lmRows, Hidden, _gemvWs, _gemvWsBytes); _device.Synchronize(); }

    [GlobalCleanup]
    public void Cleanup()
    {
        if (_device is EmulatedDevice emu)
            foreach (var l in emu.Launches.DistinctBy(l => l.Kernel))
                Console.WriteLine($"// emulator {l.Kernel}: grid {l.Grid}, distinct sectors {l.DistinctSectors} ({l.DistinctSectors * 32.0 / 1e6:F2} MB), coalescing {l.CoalescingEfficiency:F3}, warp instructions {l.WarpInstructions}");
        _buffers.Dispose();
        _loader.Dispose();
        _device.Dispose();
    }
}
