using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>One test per error class of memcheck / racecheck / synccheck; each checks the message names what it must.</summary>
public class CheckerTests
{
    private const string Source = """
        extern "C" __global__ void oob_write(float* out, int n) {
          int t = blockIdx.x * blockDim.x + threadIdx.x;
          out[t] = 1.0f;
        }
        extern "C" __global__ void oob_shared(float* out, int k) {
          extern __shared__ float buf[];
          buf[threadIdx.x * k] = 1.0f;
          out[threadIdx.x] = 2.0f;
        }
        extern "C" __global__ void misaligned(float* out) {
          char* p = (char*)out;
          *(float*)(p + 2 + 4 * threadIdx.x) = 1.0f;
        }
        extern "C" __global__ void race(float* out) {
          __shared__ float s[64];
          s[threadIdx.x] = (float)threadIdx.x;
          out[threadIdx.x] = s[63 - threadIdx.x];
        }
        extern "C" __global__ void divergent_barrier(float* out) {
          __shared__ float s[32];
          if (threadIdx.x < 16) { s[threadIdx.x] = 1.0f; __syncthreads(); }
          out[threadIdx.x] = 1.0f;
          __syncthreads();
        }
        extern "C" __global__ void raw(float* out) {
          __shared__ float s[32];
          if (threadIdx.x < 32) s[threadIdx.x] = 1.0f;
          else out[threadIdx.x] = s[threadIdx.x - 32];
        }
        extern "C" __global__ void deadlock(float* out) {
          if (threadIdx.x < 32) asm volatile("bar.sync 1, 64;");
          out[threadIdx.x] = 1.0f;
        }
        extern "C" __global__ void early_consume(float* out, const float* in, int wait) {
          __shared__ __align__(16) float tile[128];
          unsigned dst = (unsigned)__cvta_generic_to_shared(&tile[4 * threadIdx.x]);
          asm volatile("cp.async.ca.shared.global [%0], [%1], 16;" :: "r"(dst), "l"(in + 4 * threadIdx.x));
          asm volatile("cp.async.commit_group;");
          if (wait) asm volatile("cp.async.wait_group 0;");
          out[threadIdx.x] = tile[4 * threadIdx.x];
          asm volatile("cp.async.wait_all;");
        }
        extern "C" __global__ void uninit_read(float* out, const float* in) {
          out[threadIdx.x] = in[threadIdx.x];
        }
        """;

    private static EmulatorFaultException Fault(Action a) => Assert.Throws<EmulatorFaultException>(() => a())!;

    /// <summary>Warps run until they block, in order (interleaved scheduling finds the same races in another order).</summary>
    private static EmulatorOptions LockstepOptions => new()
    {
        Sequential = true, PrintfOutput = TextWriter.Null, Modes = EmulatorModes.Ambient with { Scheduling = ThreadScheduling.Lockstep },
    };

    [Test]
    public void OutOfBoundsGlobalWrite()
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<float>(100);
        var e = Fault(() => kit.Launch("oob_write", 4, 32, 0, d, 100));
        Assert.That(e.Message, Does.Contain("out-of-bounds global write of 4 bytes"));
        Assert.That(e.Message, Does.Contain("kernel oob_write"));
        Assert.That(e.Message, Does.Contain("PTX line"));
        Assert.That(e.Message, Does.Contain("(CUDA test.cu:3)"), "the .loc source line of the store");
        Assert.That(e.Message, Does.Contain("block (3,0,0), thread (4,0,0)"), "thread 100 is the first out of bounds");
        Assert.That(e.Message, Does.Contain($"0x{d.Address + 400:x}"));
        Assert.That(e.Message, Does.Contain("of 400 bytes, offset 400"), "nearest allocation and offset");
    }

    [Test]
    public void OutOfBoundsShared()
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<float>(32);
        var e = Fault(() => kit.Launch("oob_shared", 1, 32, 64, d, 1));
        Assert.That(e.Message, Does.Contain("out-of-bounds shared write of 4 bytes at shared offset 64"));
        Assert.That(e.Message, Does.Contain("0 static + 64 dynamic"));
        Assert.That(e.Message, Does.Contain("thread (16,0,0)"));
    }

    [Test]
    public void MisalignedAccess()
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<float>(64);
        var e = Fault(() => kit.Launch("misaligned", 1, 32, 0, d));
        Assert.That(e.Message, Does.Contain("misaligned global write of 4 bytes"));
        Assert.That(e.Message, Does.Contain($"0x{d.Address + 2:x}"));
        Assert.That(e.Message, Does.Contain("thread (0,0,0)"));
    }

    [Test]
    public void UseAfterFree()
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<float>(64);
        kit.Dev.Free(d);
        var e = Fault(() => kit.Launch("oob_write", 1, 32, 0, d, 32));
        Assert.That(e.Message, Does.Contain("use after free"));
        Assert.That(e.Message, Does.Contain("freed allocation"));
        Assert.That(e.Message, Does.Contain("offset 0"));
    }

    [Test]
    public void SharedMemoryRace()
    {
        using var kit = new EmuKit(Source, LockstepOptions);   // the report names the first conflict of the lockstep schedule
        var d = kit.Zeros<float>(64);
        var e = Fault(() => kit.Launch("race", 1, 64, 0, d));
        // warp 0 runs until it blocks: it reads s[32..63] before warp 1 has written them
        Assert.That(e.Message, Does.Contain("racecheck: write-after-read hazard on shared memory offset 128"));
        Assert.That(e.Message, Does.Contain("warp 0 read it and warp 1 writes it"));
        Assert.That(e.Message, Does.Contain("kernel race"));
        // the same kernel in one warp has no inter-warp race
        kit.Launch("race", 1, 32, 0, d);
    }

    [Test]
    public void SharedMemoryReadAfterWrite()
    {
        using var kit = new EmuKit(Source, LockstepOptions);
        var d = kit.Zeros<float>(64);
        var e = Fault(() => kit.Launch("raw", 1, 64, 0, d));
        Assert.That(e.Message, Does.Contain("racecheck: read-after-write hazard on shared memory offset 0"));
        Assert.That(e.Message, Does.Contain("warp 0 wrote it"));
        Assert.That(e.Message, Does.Contain("warp 1 reads it"));
        Assert.That(e.Message, Does.Contain("thread (32,0,0)"));
    }

    [Test]
    public void CpAsyncConsumedBeforeWait()
    {
        using var kit = new EmuKit(Source);
        var input = kit.Zeros<float>(128);
        var output = kit.Zeros<float>(32);
        var e = Fault(() => kit.Launch("early_consume", 1, 32, 0, output, input, 0));
        Assert.That(e.Message, Does.Contain("destination of a cp.async by warp 0 that has not completed"));
        Assert.That(e.Message, Does.Contain("read before cp.async.wait_group"));
        kit.Launch("early_consume", 1, 32, 0, output, input, 1);
    }

    [Test]
    public void BarrierDeadlock()
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<float>(64);
        // warp 0 waits for 64 threads at barrier 1; warp 1 never arrives and exits
        var e = Fault(() => kit.Launch("deadlock", 1, 64, 0, d));
        Assert.That(e.Message, Does.Contain("synccheck: barrier deadlock in kernel deadlock"));
        Assert.That(e.Message, Does.Contain("warp 0: waits at barrier 1"));
        Assert.That(e.Message, Does.Contain("warp 1: exited"));
    }

    [Test]
    public void DivergentBarrier()
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<float>(32);
        var e = Fault(() => kit.Launch("divergent_barrier", 1, 32, 0, d));
        Assert.That(e.Message, Does.Contain("synccheck"));
        Assert.That(e.Message, Does.Contain("divergent_barrier"));
        Assert.That(e.Message, Does.Contain("lanes 0x0000ffff wait at PTX line"));
        Assert.That(e.Message, Does.Contain("bar.sync"));
    }

    [Test]
    public void StrictModeReportsUninitialisedReads()
    {
        using var kit = new EmuKit(Source, new EmulatorOptions { Strict = true, Sequential = true });
        var input = kit.Dev.Allocate(32 * 4);
        var output = kit.Zeros<float>(32);
        var e = Fault(() => kit.Launch("uninit_read", 1, 32, 0, output, input));
        Assert.That(e.Message, Does.Contain("initcheck: read of never-written global memory"));
        kit.Dev.MemsetAsync(input, 0, 32 * 4, kit.Dev.DefaultStream);
        kit.Launch("uninit_read", 1, 32, 0, output, input);
    }

    [Test]
    public void LaunchValidation()
    {
        using var kit = new EmuKit(Source);
        var d = kit.Zeros<float>(32);
        Assert.That(() => kit.Launch("oob_write", 1, 2048, 0, d, 1), Throws.InstanceOf<DeviceException>().With.Message.Contains("1024"));
        Assert.That(() => kit.Launch("oob_write", 1, 32, 0, d), Throws.InstanceOf<DeviceException>().With.Message.Contains("1 arguments given, the kernel takes 2"));
        Assert.That(() => kit.Launch("oob_write", 1, 32, 0, d, 1L), Throws.InstanceOf<DeviceException>().With.Message.Contains("is 8 bytes, the kernel parameter is 4 bytes"));
    }
}
