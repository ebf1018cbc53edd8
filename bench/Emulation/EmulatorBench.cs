using System.Runtime.InteropServices;
using BenchmarkDotNet.Attributes;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Bench.Emulation;

/// <summary>
/// Emulated throughput of the PTX interpreter (checks and counters on, CTAs sequential on one core):
/// a bandwidth kernel (bf16 → f32 scale-add with 16-byte loads), an arithmetic kernel (register-only fp32
/// fma/mul/add chains with integer index math) and an mma.sync GEMM. Global setup prints
/// M warp-instructions/s and G thread-instructions/s of one run of each.
/// Run: dotnet run -c Release --project bench -- --filter '*EmulatorBench*' --job short --inProcess
/// </summary>
[MemoryDiagnoser]
public class EmulatorBench
{
    private const string Source = """
        // y[i] = a * x[i] + y[i] over bf16 x (8 per thread per step, 16-byte loads) and f32 y
        extern "C" __global__ void axpy_bf16(float* y, const uint4* x, float a, int n8) {
          for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n8; i += gridDim.x * blockDim.x) {
            uint4 v = x[i];
            unsigned w[4] = {v.x, v.y, v.z, v.w};
            float4* yy = (float4*)(y + 8 * i);
            float4 p = yy[0], q = yy[1];
            p.x += a * __uint_as_float(w[0] << 16); p.y += a * __uint_as_float(w[0] & 0xffff0000u);
            p.z += a * __uint_as_float(w[1] << 16); p.w += a * __uint_as_float(w[1] & 0xffff0000u);
            q.x += a * __uint_as_float(w[2] << 16); q.y += a * __uint_as_float(w[2] & 0xffff0000u);
            q.z += a * __uint_as_float(w[3] << 16); q.w += a * __uint_as_float(w[3] & 0xffff0000u);
            yy[0] = p; yy[1] = q;
          }
        }
        // register-only fp32 fma/mul/add chains plus integer index math, like an unrolled GEMV inner loop on registers
        extern "C" __global__ void arith_f32(float* out, const float* in, int iters, int K) {
          int i = blockIdx.x * blockDim.x + threadIdx.x;
          float x = in[i], a0 = x, a1 = 0.5f * x, a2 = 0.25f * x, a3 = 0.125f * x;
          int row = i * K;
          for (int it = 0; it < iters; it++) {
            #pragma unroll
            for (int j = 0; j < 8; j++) {
              int k = row + it * 8 + j;
              float w = (float)(k & 1023) * 0.0009765625f;
              a0 = fmaf(w, a1, a0 * 0.5f);
              a1 = fmaf(w, a2, a1 * 0.5f) + 0.25f;
              a2 = a2 * 0.5f + a3 * w;
              a3 = fmaf(a3, 0.5f, w);
            }
          }
          out[i] = a0 + a1 + a2 + a3;
        }
        // C[M][N] = A[M][K] * B[N][K]^T, bf16 in, f32 out; one warp per 16x8 tile, fragments straight from global.
        extern "C" __global__ void gemm_mma(float* c, const unsigned* a, const unsigned* b, int M, int N, int K) {
          int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5, lane = threadIdx.x & 31;
          int tilesN = N / 8, tm = warp / tilesN, tn = warp % tilesN;
          if (tm * 16 >= M) return;
          int g = lane >> 2, t = lane & 3, K2 = K / 2;
          float d0 = 0, d1 = 0, d2 = 0, d3 = 0;
          for (int k = 0; k < K; k += 16) {
            const unsigned* ar = a + (tm * 16 + g) * K2 + k / 2 + t;
            const unsigned* br = b + (tn * 8 + g) * K2 + k / 2 + t;
            unsigned a0 = ar[0], a1 = ar[8 * K2], a2 = ar[4], a3 = ar[8 * K2 + 4], b0 = br[0], b1 = br[4];
            asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
              : "+f"(d0), "+f"(d1), "+f"(d2), "+f"(d3) : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
          }
          float* cr = c + (tm * 16 + g) * N + tn * 8 + 2 * t;
          cr[0] = d0; cr[1] = d1; cr[8 * N] = d2; cr[8 * N + 1] = d3;
        }
        """;

    /// <summary>Vector512 fast handlers (where the CPU has AVX-512) or Vector256 only.</summary>
    [Params(true, false)]
    public bool Avx512 { get; set; }

    private EmulatedDevice _dev = null!;
    private DeviceModule _module = null!;
    private DeviceKernel _axpy = null!, _gemm = null!, _arith = null!;
    private DevicePtr _x, _y, _a, _b, _c, _in, _out;
    private const int ArithThreads = 64 * 256, ArithIters = 16;
    private const int N8 = 1 << 15, M = 128, N = 128, K = 256;

    [GlobalSetup]
    public void Setup()
    {
        var compiled = new KernelCompiler().CompileSource("emu_bench.cu", Source, new KernelBuild("emu_bench.cu", "sm_80", CompileTarget.Ptx));
        _dev = new EmulatedDevice(new EmulatorOptions { Sequential = true, UseAvx512 = Avx512 });
        _module = _dev.LoadModule(compiled);
        _axpy = _dev.GetKernel(_module, "axpy_bf16");
        _gemm = _dev.GetKernel(_module, "gemm_mma");
        _arith = _dev.GetKernel(_module, "arith_f32");
        _x = Fill(N8 * 16, 0x3f80);
        _y = Fill(N8 * 32, 0);
        _a = Fill(M * K * 2, 0x3f80);
        _b = Fill(N * K * 2, 0x3f80);
        _c = Fill(M * N * 4, 0);
        _in = Fill(ArithThreads * 4, 0x3f80);
        _out = Fill(ArithThreads * 4, 0);
        Report("bandwidth axpy_bf16", Axpy);
        Report("arithmetic arith_f32", Arith);
        Report("mma gemm 128x128x256", Gemm);
    }

    private DevicePtr Fill(int bytes, ushort pattern)
    {
        var p = _dev.Allocate(bytes);
        var h = new ushort[bytes / 2];
        Array.Fill(h, pattern);
        _dev.CopyToDevice(p, MemoryMarshal.AsBytes(h.AsSpan()));
        return p;
    }

    private void Report(string name, Action run)
    {
        // warm-up long enough for tiered JIT to reach optimized code (a handful of runs would time tier-0 code)
        var warm = System.Diagnostics.Stopwatch.StartNew();
        while (warm.Elapsed.TotalSeconds < 2) run();
        // then ~2 s of runs, by wall clock and by process CPU time (the CI box is shared; CPU time is the fairer figure)
        var proc = System.Diagnostics.Process.GetCurrentProcess();
        proc.Refresh();
        var c0 = proc.TotalProcessorTime;
        var sw = System.Diagnostics.Stopwatch.StartNew();
        int runs = 0;
        while (sw.Elapsed.TotalSeconds < 2) { run(); runs++; }
        double s = sw.Elapsed.TotalSeconds / runs;
        proc.Refresh();
        double cpu = Math.Max((proc.TotalProcessorTime - c0).TotalSeconds, 1e-6) / runs;
        var r = _dev.LastLaunch!;
        string width = Avx512 && EmulatedDevice.Avx512Available ? "Vector512" : "Vector256";
        Console.WriteLine($"// {name} ({width}): {r.WarpInstructions / s / 1e6:F1} M warp-instr/s wall ({r.WarpInstructions / cpu / 1e6:F1} per CPU-second), " +
            $"{r.ThreadInstructions / s / 1e9:F2} G thread-instr/s, {r.WarpInstructions} warp-instr in {s * 1e3:F2} ms, " +
            $"mma {r.MmaCount} ({r.MmaCount / s / 1e6:F2} M mma/s), mean of {runs} runs");
    }

    [Benchmark]
    public void Axpy()
    {
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[8]);
        args.Add(_y.Address); args.Add(_x.Address); args.Add(0.5f); args.Add(N8);
        _dev.Launch(_axpy, new LaunchConfig(64, 256), _dev.DefaultStream, args);
    }

    [Benchmark]
    public void Gemm()
    {
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[8]);
        args.Add(_c.Address); args.Add(_a.Address); args.Add(_b.Address); args.Add(M); args.Add(N); args.Add(K);
        _dev.Launch(_gemm, new LaunchConfig(M / 16 * (N / 8) / 4, 128), _dev.DefaultStream, args);
    }

    [Benchmark]
    public void Arith()
    {
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[8]);
        args.Add(_out.Address); args.Add(_in.Address); args.Add(ArithIters); args.Add(1024);
        _dev.Launch(_arith, new LaunchConfig(ArithThreads / 256, 256), _dev.DefaultStream, args);
    }

    [GlobalCleanup]
    public void Cleanup()
    {
        _module.Dispose();
        _dev.Dispose();
    }
}
