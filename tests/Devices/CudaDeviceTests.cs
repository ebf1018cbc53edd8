using Qwen3Cuda.Model;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Cuda;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Devices;

/// <summary>Tests that need a real GPU: skipped (with the reason) on machines without one, as in CI.</summary>
[TestFixture]
[Category(Kernels.KernelBackends.GpuCategory)]
public class CudaDeviceTests
{
    private CudaDevice _device = null!;

    [OneTimeSetUp]
    public void Open()
    {
        var status = CudaDriver.Probe();
        if (status.Devices.Count == 0) Assert.Ignore("needs a CUDA GPU: " + (status.Problem ?? "none present"));
        _device = CudaDevice.Open(0);
    }

    [OneTimeTearDown]
    public void Close() => _device?.Dispose();

    [Test]
    public void AddRmsNormOnTheGpuMatchesTheHostComputation()
    {
        const int rows = 3, width = 2048;
        var rng = new Random(1);
        ushort[] hidden = Enumerable.Range(0, rows * width).Select(_ => Bf16.FromFloat((float)(rng.NextDouble() * 4 - 2))).ToArray();
        ushort[] delta = Enumerable.Range(0, rows * width).Select(_ => Bf16.FromFloat((float)(rng.NextDouble() - 0.5))).ToArray();
        ushort[] weight = Enumerable.Range(0, width).Select(_ => Bf16.FromFloat((float)(rng.NextDouble() + 0.5))).ToArray();
        using var loader = new KernelLoader(_device);
        var rms = new RmsNormLaunchers(loader);
        DevicePtr dH = Upload(hidden), dD = Upload(delta), dW = Upload(weight), dO = _device.Allocate(rows * width * 2);
        rms.AddRmsNorm(_device.DefaultStream, dO, dH, dD, dW, rows, width, 1e-6f);
        var outBits = new ushort[rows * width];
        _device.CopyToHost(System.Runtime.InteropServices.MemoryMarshal.AsBytes(outBits.AsSpan()), dO);
        for (int r = 0; r < rows; r++)
        {
            var sum = new float[width];
            double ss = 0;
            for (int i = 0; i < width; i++)
            {
                sum[i] = Bf16.Round(Bf16.ToFloat(hidden[r * width + i]) + Bf16.ToFloat(delta[r * width + i]));
                ss += sum[i] * (double)sum[i];
            }
            float inv = 1f / MathF.Sqrt((float)(ss / width) + 1e-6f);
            for (int i = 0; i < width; i++)
            {
                float expected = Bf16.Round(Bf16.Round(sum[i] * inv) * Bf16.ToFloat(weight[i]));
                float got = Bf16.ToFloat(outBits[r * width + i]);
                // one bf16 ulp (2^-7 relative): rsqrt.approx and the fp32 reduction order can move a rounding boundary
                Assert.That(got, Is.EqualTo(expected).Within(Math.Abs(expected) * (1.0 / 128) + 1e-6), $"row {r} col {i}");
            }
        }
        foreach (var p in new[] { dH, dD, dW, dO }) _device.Free(p);
    }

    /// <summary>
    /// Two kernels chained with programmatic dependent launch (docs/kernels.md): the second prefetches its weights, waits
    /// for the first and reads its output. Run directly on a stream and as a captured graph (how the decode step runs),
    /// 20 times each, so that a consumer reading before its producer finished would show. On a GPU below sm_90 or with
    /// PDL off the flags fall back to ordinary launches and the same results must come out. Exact: integers in fp32.
    /// </summary>
    [Test]
    public void TwoDependentProgrammaticLaunches_GiveTheProducersResult()
    {
        TestContext.Out.WriteLine($"{_device.Info.Name} ({_device.Info.Arch}): programmatic dependent launch {_device.ProgrammaticLaunchStatus}");
        const string source = """
            __device__ __forceinline__ void pdl_wait() {
            #if __CUDA_ARCH__ >= 900
                asm volatile("griddepcontrol.wait;" ::: "memory");
            #endif
            }
            __device__ __forceinline__ void pdl_launch_dependents() {
            #if __CUDA_ARCH__ >= 900
                asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
            #endif
            }
            extern "C" __global__ void pdl_produce(const float* in, float* mid, int n, int round)
            {
                pdl_wait();
                pdl_launch_dependents();
                int i = blockIdx.x * blockDim.x + threadIdx.x;
                float v = in[i];
                if (i < n) mid[i] = v * 2.f + (float)round;
            }
            extern "C" __global__ void pdl_consume(const float* mid, const float* w, float* out, int n)
            {
                int i = blockIdx.x * blockDim.x + threadIdx.x;
            #if __CUDA_ARCH__ >= 900
                if (i < n) asm volatile("prefetch.global.L2 [%0];" :: "l"(w + i));
            #endif
                pdl_wait();
                pdl_launch_dependents();
                if (i < n) out[i] = mid[i] + w[i];
            }
            """;
        var compiler = new KernelCompiler(Path.Combine(Path.GetTempPath(), "qwen3cuda-gpu-tests"));
        var compiled = compiler.CompileSource("pdl_gpu_test.cu", source, new KernelBuild("pdl_gpu_test.cu", _device.Info.Arch, CompileTarget.Ptx));
        using var module = _device.LoadModule(compiled);
        var produce = _device.GetKernel(module, "pdl_produce");
        var consume = _device.GetKernel(module, "pdl_consume");
        const int n = 1 << 20;
        var input = Enumerable.Range(0, n).Select(i => (float)(i % 1000)).ToArray();
        var weight = Enumerable.Range(0, n).Select(i => (float)(i % 7)).ToArray();
        DevicePtr dIn = UploadF(input), dW = UploadF(weight), dMid = _device.Allocate(n * 4L), dOut = _device.Allocate(n * 4L);
        using var stream = _device.CreateStream();
        void Step(int round)
        {
            var a = new KernelArgs(stackalloc byte[64], stackalloc nint[8]);
            a.Add(dIn); a.Add(dMid); a.Add(n); a.Add(round);
            _device.Launch(produce, new LaunchConfig(n / 256, 256, 0, ProgrammaticDependentLaunch: true), stream, a);
            var b = new KernelArgs(stackalloc byte[64], stackalloc nint[8]);
            b.Add(dMid); b.Add(dW); b.Add(dOut); b.Add(n);
            _device.Launch(consume, new LaunchConfig(n / 256, 256, 0, ProgrammaticDependentLaunch: true), stream, b);
        }
        void Check(int round, string how)
        {
            var got = new float[n];
            _device.CopyToHost(System.Runtime.InteropServices.MemoryMarshal.AsBytes(got.AsSpan()), dOut);
            for (int i = 0; i < n; i++)
                if (got[i] != input[i] * 2f + round + weight[i]) Assert.Fail($"{how}, round {round}: out[{i}] = {got[i]}, expected {input[i] * 2f + round + weight[i]}");
        }
        // mid is cleared before every round, so a consumer that read it before its producer finished would see zeros
        for (int r = 1; r <= 20; r++) { _device.MemsetAsync(dMid, 0, n * 4L, stream); Step(r); _device.Synchronize(stream); Check(r, "stream"); }
        _device.BeginCapture(stream);
        Step(100);
        using var graph = _device.EndCapture(stream);
        using var exec = _device.Instantiate(graph);
        for (int r = 0; r < 20; r++) { _device.MemsetAsync(dMid, 0, n * 4L, stream); _device.Launch(exec, stream); _device.Synchronize(stream); Check(100, "graph"); }
        foreach (var p in new[] { dIn, dW, dMid, dOut }) _device.Free(p);
    }

    /// <summary>
    /// A cooperative launch on the GPU: the emulator's co-resident grid-barrier kernel (Emulation/CoResidentLaunchTests)
    /// with one block per SM, rounds of reading another block's element between two grid barriers; exact (integers in
    /// fp32). A wrong barrier or a grid that was not resident would hang (the driver refuses a grid that cannot be) or
    /// read stale values.
    /// </summary>
    [Test]
    public void CooperativeGridBarrier_EveryBlockSeesTheOthersWrites()
    {
        var compiler = new KernelCompiler(Path.Combine(Path.GetTempPath(), "qwen3cuda-gpu-tests"));
        var compiled = compiler.CompileSource("coresident_gpu_test.cu", Emulation.CoResidentLaunchTests.Source,
            new KernelBuild("coresident_gpu_test.cu", _device.Info.Arch, CompileTarget.Ptx));
        using var module = _device.LoadModule(compiled);
        var rotate = _device.GetKernel(module, "rotate");
        int blocks = _device.Info.MultiprocessorCount, threads = 256, rounds = 50;
        DevicePtr a = _device.Allocate((long)blocks * threads * 4), count = _device.Allocate(4), generation = _device.Allocate(4);
        using var stream = _device.CreateStream();
        _device.MemsetAsync(count, 0, 4, stream);
        _device.MemsetAsync(generation, 0, 4, stream);
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[8]);
        args.Add(a); args.Add(count); args.Add(generation); args.Add(rounds);
        _device.Launch(rotate, new LaunchConfig(blocks, threads, Cooperative: true), stream, args);
        _device.Synchronize(stream);
        var got = new float[blocks * threads];
        _device.CopyToHost(System.Runtime.InteropServices.MemoryMarshal.AsBytes(got.AsSpan()), a);
        Assert.That(got, Is.EqualTo(Emulation.CoResidentLaunchTests.Expected(blocks, threads, rounds)));
        foreach (var p in new[] { a, count, generation }) _device.Free(p);
    }

    private DevicePtr UploadF(float[] data)
    {
        DevicePtr p = _device.Allocate(data.Length * 4L);
        _device.CopyToDevice(p, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
        return p;
    }

    private DevicePtr Upload(ushort[] data)
    {
        DevicePtr p = _device.Allocate(data.Length * 2L);
        _device.CopyToDevice(p, System.Runtime.InteropServices.MemoryMarshal.AsBytes(data.AsSpan()));
        return p;
    }
}
