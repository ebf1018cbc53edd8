using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// A full warp clears only the registers its threads may read before writing (<see cref="RegisterLiveness"/>);
/// a kernel must still see zeros in every such register even when the warp's register file was left dirty by
/// an earlier launch.
/// </summary>
public class RegisterLivenessTests
{
    // "dirty" fills registers with non-zero values; "reads" reads %r4 (never written) and %r2 (written only by
    // thread 0, under a guard) and %r5 (written before any read): only %r2 and %r4 are live at the entry.
    private const string Ptx = """
        .version 7.8
        .target sm_80
        .address_size 64
        .visible .entry dirty(.param .u64 dirty_p0)
        {
          .reg .b32 %r<8>;
          .reg .b64 %rd<3>;
          ld.param.u64 %rd1, [dirty_p0];
          mov.u32 %r1, 111; mov.u32 %r2, 222; mov.u32 %r3, 333; mov.u32 %r4, 444; mov.u32 %r5, 555; mov.u32 %r6, 666;
          mov.u32 %r7, %tid.x;
          mul.wide.u32 %rd2, %r7, 4;
          add.s64 %rd2, %rd1, %rd2;
          add.s32 %r1, %r1, %r2; add.s32 %r1, %r1, %r3; add.s32 %r1, %r1, %r4; add.s32 %r1, %r1, %r5; add.s32 %r1, %r1, %r6;
          st.global.u32 [%rd2], %r1;
          ret;
        }
        .visible .entry reads(.param .u64 reads_p0)
        {
          .reg .pred %p<2>;
          .reg .b32 %r<8>;
          .reg .b64 %rd<3>;
          ld.param.u64 %rd1, [reads_p0];
          mov.u32 %r1, %tid.x;
          setp.eq.s32 %p1, %r1, 0;
          @%p1 mov.u32 %r2, 7;
          mov.u32 %r5, 1000;
          add.s32 %r3, %r2, %r4;
          add.s32 %r3, %r3, %r5;
          mul.wide.u32 %rd2, %r1, 4;
          add.s64 %rd2, %rd1, %rd2;
          st.global.u32 [%rd2], %r3;
          ret;
        }
        """;

    [Test]
    public void LiveInRegistersAreTheOnesReadBeforeWritten()
    {
        var module = PtxParser.Parse(Ptx);
        var reads = module.Functions["reads"];
        var dirty = module.Functions["dirty"];
        Assert.That(reads.LiveInRows, Has.Length.EqualTo(2), "reads: %r2 (guarded write) and %r4 (never written)");
        Assert.That(dirty.LiveInRows, Is.Empty, "dirty writes every register before reading it");
    }

    [Test]
    public void DirtyRegisterFileIsInvisibleToTheNextLaunch()
    {
        var got = RunOneWarpEach(Ptx, "dirty", "reads");
        for (int t = 0; t < 32; t++)
            Assert.That(got[t], Is.EqualTo(t == 0 ? 1007u : 1000u), $"thread {t}: uninitialised registers must read as zero");
    }

    // "wide" leaves 2^32 (low 32 bits zero) in 16 64-bit rows. In "divides" lanes 16..31 branch away, and lanes 0..15 write
    // %r2 and divide by it: %r2 is written before it is read, so it is not cleared at the entry, and the lanes that branched
    // away still hold "wide"'s value in its row. The ALU computes them too (their results are dropped), so their divisors
    // are zero at 32 bits but not at 64.
    private const string DividePtx = """
        .version 7.8
        .target sm_80
        .address_size 64
        .visible .entry wide(.param .u64 wide_p0)
        {
          .reg .b64 %rd<16>;
          mov.b64 %rd0, 4294967296;
          mov.b64 %rd1, 4294967296;
          mov.b64 %rd2, 4294967296;
          mov.b64 %rd3, 4294967296;
          mov.b64 %rd4, 4294967296;
          mov.b64 %rd5, 4294967296;
          mov.b64 %rd6, 4294967296;
          mov.b64 %rd7, 4294967296;
          mov.b64 %rd8, 4294967296;
          mov.b64 %rd9, 4294967296;
          mov.b64 %rd10, 4294967296;
          mov.b64 %rd11, 4294967296;
          mov.b64 %rd12, 4294967296;
          mov.b64 %rd13, 4294967296;
          mov.b64 %rd14, 4294967296;
          mov.b64 %rd15, 4294967296;
          ret;
        }
        .visible .entry divides(.param .u64 divides_p0)
        {
          .reg .pred %p<2>;
          .reg .b32 %r<8>;
          .reg .b64 %rd<3>;
          ld.param.u64 %rd1, [divides_p0];
          mov.u32 %r1, %tid.x;
          setp.ge.u32 %p1, %r1, 16;
          @%p1 bra DONE;
          mov.u32 %r2, 7;
          mov.u32 %r4, 100;
          div.s32 %r3, %r4, %r2;
          rem.s32 %r5, %r4, %r2;
          div.u32 %r6, %r4, %r2;
          mad.lo.s32 %r3, %r5, 1000, %r3;
          mad.lo.s32 %r3, %r6, 100000, %r3;
          mul.wide.u32 %rd2, %r1, 4;
          add.s64 %rd2, %rd1, %rd2;
          st.global.u32 [%rd2], %r3;
        DONE:
          ret;
        }
        """;

    /// <summary>
    /// Integer division in lanes that do not execute it never throws, whatever their registers hold: a pooled context's
    /// 64-bit value with zero low bits once made a 32-bit div.s32 throw DivideByZeroException mid-launch (a CI failure,
    /// in a strictness pass, depending on which context a launch got).
    /// </summary>
    [Test]
    public void DivisionInLanesThatBranchedAway_NeverThrows_WhateverTheirStaleRegistersHold()
    {
        var got = RunOneWarpEach(DividePtx, "wide", "divides");
        for (int t = 0; t < 16; t++)
            Assert.That(got[t], Is.EqualTo(14u + 2 * 1000 + 14 * 100000), $"thread {t}: 100 / 7, 100 % 7 and 100 / 7 unsigned");
    }

    /// <summary>
    /// The block-level solution (<see cref="RegisterLiveness.LiveIn"/>) equals the per-instruction fixed point on
    /// every entry of every kernel file as NVRTC compiles it for sm_80 and sm_90: loops, guarded branches, early
    /// exits, unrolled pipelines and all. Exact equality: both are the least solution of the same equations.
    /// </summary>
    [TestCase("sm_80")]
    [TestCase("sm_90")]
    [Category("ParseOnly")]   // no kernel runs: .ci/run's emulator-mode passes skip it
    public void BlockLevelLiveness_EqualsThePerInstructionFixedPoint_OnEveryKernel(string arch)
    {
        var compiler = new KernelCompiler();
        int entries = 0;
        foreach (var file in KernelSources.KernelFiles)
        {
            var module = PtxParser.Parse(compiler.Compile(new KernelBuild(file, arch, CompileTarget.Ptx)).Ptx);
            foreach (var fn in module.Entries)
            {
                Assert.That(RegisterLiveness.LiveIn(fn), Is.EqualTo(RegisterLiveness.LiveInByInstruction(fn)), $"{file}:{fn.Name} at {arch}");
                entries++;
            }
        }
        Assert.That(entries, Is.GreaterThan(KernelSources.KernelFiles.Count), "every file has at least one entry");
    }

    /// <summary>
    /// Launches <paramref name="kernels"/> of <paramref name="ptx"/> one after another, one warp each, on one sequential
    /// device (so each launch reuses the same pooled block context), each given the same zeroed 32-word buffer; returns it.
    /// </summary>
    private static uint[] RunOneWarpEach(string ptx, params string[] kernels)
    {
        using var dev = new EmulatedDevice(new EmulatorOptions { Sequential = true });
        using var module = dev.LoadModule(new CompiledModule { Name = "liveness.ptx", PtxArch = "compute_80", Ptx = ptx });
        var buf = dev.Allocate(32 * 4);
        dev.MemsetAsync(buf, 0, 32 * 4, dev.DefaultStream);
        foreach (var name in kernels)
        {
            var args = new KernelArgs(new byte[16], new nint[2]);
            args.Add(buf.Address);
            dev.Launch(dev.GetKernel(module, name), new LaunchConfig(1, 32), dev.DefaultStream, args);
        }
        var got = new uint[32];
        dev.CopyToHost(MemoryMarshal.AsBytes(got.AsSpan()), buf);
        return got;
    }
}
