using System.Numerics;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>
/// Register slots shared between registers whose live ranges never overlap (<see cref="RegisterCompaction"/>): on every
/// kernel as NVRTC compiles it, no slot ever holds two registers that are live at the same instruction, and the
/// persistent kernels' register files shrink by an order of magnitude. Every kernel test runs compacted modules too
/// (the parser compacts by default), against the CPU reference or the multi-kernel path.
/// </summary>
[Category("ParseOnly")]   // no kernel runs: .ci/run's emulator-mode passes skip them
public class RegisterCompactionTests
{
    [Test]
    public void NoSlotHoldsTwoLiveRegisters_OnEveryKernel()
    {
        var compiler = new KernelCompiler();
        int checkedEntries = 0;
        foreach (var file in KernelSources.KernelFiles)
        {
            string ptx = compiler.Compile(new KernelBuild(file, "sm_80", CompileTarget.Ptx)).Ptx;
            var plain = PtxParser.Parse(ptx, compactRegisters: false);
            var packed = PtxParser.Parse(ptx);
            Assert.That(plain.HasFunctions, Is.False, $"{file}: the kernels have no .func bodies (compaction skips such modules)");
            foreach (var fn in plain.Entries)
            {
                var cf = packed.Functions[fn.Name];
                int[] slot = SlotOfEachRegister(fn, cf);
                CheckNoOverlap(fn, slot, $"{file}:{fn.Name}");
                Assert.That(cf.NumRegs, Is.LessThanOrEqualTo(fn.NumRegs), $"{file}:{fn.Name}");
                checkedEntries++;
            }
        }
        Assert.That(checkedEntries, Is.GreaterThan(KernelSources.KernelFiles.Count));
    }

    [Test]
    public void ThePersistentBlocksRegisterFile_ShrinksTenfold()
    {
        string ptx = new KernelCompiler().Compile(new KernelBuild("persistent_decode.cu", "sm_80", CompileTarget.Ptx)).Ptx;
        var plain = PtxParser.Parse(ptx, compactRegisters: false).Functions["persistent_attn_block"];
        var packed = PtxParser.Parse(ptx).Functions["persistent_attn_block"];
        TestContext.Out.WriteLine($"persistent_attn_block: {plain.NumRegs} registers declared, {packed.NumRegs} slots");
        Assert.That(packed.NumRegs * 10, Is.LessThan(plain.NumRegs));
    }

    /// <summary>The slot each declared register got, read off the operands in the same places of both parses.</summary>
    private static int[] SlotOfEachRegister(PtxFunction plain, PtxFunction packed)
    {
        var slot = Enumerable.Repeat(-1, plain.NumRegs).ToArray();
        Assert.That(packed.Code, Has.Length.EqualTo(plain.Code.Length));
        for (int i = 0; i < plain.Code.Length; i++)
            for (int k = 0; k < plain.Code[i].Ops.Length; k++)
                Pair(plain.Code[i].Ops[k], packed.Code[i].Ops[k], slot, plain.Name, i);
        return slot;
    }

    private static void Pair(Operand u, Operand c, int[] slot, string fn, int at)
    {
        if ((u.Kind == OpKind.Reg || u.Kind == OpKind.Addr) && u.Reg >= 0)
        {
            if (slot[u.Reg] < 0) slot[u.Reg] = c.Reg;
            else Assert.That(c.Reg, Is.EqualTo(slot[u.Reg]), $"{fn}: register {u.Name} renamed two ways (instruction {at})");
        }
        for (int e = 0; e < u.Elems.Length; e++) Pair(u.Elems[e], c.Elems[e], slot, fn, at);
    }

    /// <summary>
    /// Walks each block backward from the registers live at its end: at every instruction, the registers live after it,
    /// the ones it writes and the ones it reads must all have different slots.
    /// </summary>
    private static void CheckNoOverlap(PtxFunction fn, int[] slot, string what)
    {
        var live = RegisterLiveness.Solve(fn);
        int words = live.Words;
        var now = new ulong[words];
        var owner = new int[slot.Length == 0 ? 1 : slot.Max() + 1];
        var stamp = new int[owner.Length];
        int point = 0;
        var defs = new List<int>();
        var uses = new List<int>();
        for (int b = 0; b < live.Blocks; b++)
        {
            var (next, target) = live.Successors(fn, b);
            for (int w = 0; w < words; w++)
                now[w] = live.LiveOut(next, target, w);
            for (int i = live.Starts[b + 1] - 1; i >= live.Starts[b]; i--)
            {
                RegisterLiveness.Operands(fn.Code[i], fn.NumRegs, defs, uses);
                point++;
                void Claim(int r)
                {
                    int s = slot[r];
                    Assert.That(s, Is.GreaterThanOrEqualTo(0), $"{what}: register {r} is live at instruction {i} but never named");
                    if (stamp[s] == point && owner[s] != r)
                        Assert.Fail($"{what}: registers {owner[s]} and {r} share slot {s} and are both live at instruction {i} ({fn.Code[i]})");
                    stamp[s] = point;
                    owner[s] = r;
                }
                for (int w = 0; w < words; w++)
                    for (ulong bits = now[w]; bits != 0; bits &= bits - 1) Claim(w * 64 + BitOperations.TrailingZeroCount(bits));
                foreach (int r in defs) Claim(r);
                foreach (int r in uses) Claim(r);
                foreach (int r in defs) now[r >> 6] &= ~(1UL << (r & 63));
                foreach (int r in uses) now[r >> 6] |= 1UL << (r & 63);
            }
        }
    }
}
