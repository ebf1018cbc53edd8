using BenchmarkDotNet.Attributes;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Bench.Moe;

/// <summary>
/// One Qwen3-30B-A3B MoE block (E 128, k 8, H 2048, I 768) through <see cref="MoeLaunchers.MoeBlock"/>: decode GEMVs
/// for T &lt;= 8, grouped tensor-core GEMMs above. On a CUDA device each invocation is one block plus a stream
/// synchronise (the GPU time is also printed from CUDA events in GlobalSetup). Without a GPU the emulator runs the
/// block once in GlobalSetup for T &lt;= 8 and prints its counters (larger T would take hours there); the measured
/// method is then empty. Router weights and hidden states are random so routing spreads over the experts.
/// </summary>
[MemoryDiagnoser]
public class MoeBlockBench
{
    static readonly MoeShape Shape = new(128, 8, 2048, 768, true);

    [Params(1, 8, 64, 512, 4096)]
    public int Tokens { get; set; }

    IDevice _device = null!;
    KernelLoader _loader = null!;
    MoeLaunchers _moe = null!;
    DevicePtr _hidden, _router, _gateUp, _down, _out, _ws;
    long _wsBytes;
    bool _gpu;

    [GlobalSetup]
    public void Setup()
    {
        try { _device = CudaDevice.Open(); _gpu = true; }
        catch (Exception e) when (e is not OutOfMemoryException) // no driver library, no device, ...: fall back
        {
            Console.WriteLine($"// no CUDA device ({e.Message}); using the emulator");
            _device = new EmulatedDevice();
        }
        _loader = new KernelLoader(_device);
        _moe = new MoeLaunchers(_loader);
        if (!_gpu && Tokens > MoeLaunchers.DecodeMaxTokens)
        {
            Console.WriteLine($"// T={Tokens}: grouped GEMMs at real shape are too slow to emulate; run on a GPU");
            return;
        }
        var rng = new Random(1);
        ushort[] Random(int n) { var a = new ushort[n]; for (int i = 0; i < n; i++) a[i] = (ushort)(BitConverter.SingleToUInt32Bits((float)(rng.NextDouble() - 0.5) * 0.25f) >> 16); return a; }
        _hidden = Upload(Random(Tokens * Shape.Hidden));
        _router = Upload(Random(Shape.Experts * Shape.Hidden));
        long gu = MoeWeightPacking.GateUpElements(Shape.Experts, Shape.Inter, Shape.Hidden) * 2, dn = MoeWeightPacking.DownElements(Shape.Experts, Shape.Hidden, Shape.Inter) * 2;
        _gateUp = _device.Allocate(gu);
        _down = _device.Allocate(dn);
        _device.MemsetAsync(_gateUp, 0x3c, gu, _device.DefaultStream); // bf16 0x3c3c = 0.0115: values do not change the timing
        _device.MemsetAsync(_down, 0x3c, dn, _device.DefaultStream);
        _out = _device.Allocate(Tokens * Shape.Hidden * 2L);
        _wsBytes = MoeWorkspace.Compute(Tokens, Shape).TotalBytes;
        _ws = _device.Allocate(_wsBytes);
        _device.Synchronize();
        if (_device is EmulatedDevice emu)
        {
            emu.ClearLaunches();
            Block();
            foreach (var l in emu.Launches)
                Console.WriteLine($"// emulator T={Tokens} {l.Kernel}: grid {l.Grid}, distinct DRAM bytes {l.DistinctSectors * 32}, coalescing {l.CoalescingEfficiency:F3}, warp instructions {l.WarpInstructions}, mma {l.MmaCount}");
        }
        else
        {
            using var start = _device.CreateEvent();
            using var stop = _device.CreateEvent();
            Block();
            _device.Record(start, _device.DefaultStream);
            for (int i = 0; i < 20; i++) Block();
            _device.Record(stop, _device.DefaultStream);
            _device.Synchronize(stop);
            Console.WriteLine($"// GPU T={Tokens}: {_device.ElapsedMilliseconds(start, stop) / 20 * 1000:F1} us per MoE block (CUDA events)");
        }
    }

    DevicePtr Upload(ushort[] a)
    {
        var p = _device.Allocate(a.Length * 2L);
        _device.CopyToDevice(p, System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()));
        return p;
    }

    void Block() => _moe.MoeBlock(_device.DefaultStream, Shape, Tokens, _hidden, _router, _gateUp, _down, default, _out, _ws, _wsBytes);

    [Benchmark]
    public void MoeBlock()
    {
        if (!_gpu) return; // emulator: counters printed in GlobalSetup
        Block();
        _device.Synchronize(_device.DefaultStream);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _loader.Dispose();
        _device.Dispose();
    }
}
