using System.Numerics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Gives an entry function's registers slots shared by registers whose live ranges never overlap, so that a warp's
/// register file holds what the kernel keeps live at once rather than every virtual register NVRTC declares
/// (docs/emulator.md, "Register slots"). NVRTC's PTX is close to SSA: persistent_attn_block declares about 60,000
/// registers, which made every warp's file 15 MiB and a co-resident launch of a few hundred CTAs gigabytes.
/// <para>
/// A register's range is the hull, in instruction order, of every instruction that names it and of every block
/// boundary where it is live (<see cref="RegisterLiveness.Solve"/>: per thread path, a guarded write not a kill).
/// Between a write and a read that sees it the register is live at every point of the path, so the hull covers them;
/// a register read before any write is live from the entry, so its slot is cleared at the entry
/// (<see cref="PtxFunction.LiveInRows"/>) and no other register uses it before that read. Two ranges that meet at one
/// instruction count as overlapping (an instruction may read one and write the other). Slots are handed out by a
/// linear scan in range-start order. Every register write stores the whole 64-bit slot (masked to the register's
/// width), so a slot never shows its previous register's bits. Lanes keep their own rows, so lanes on different paths
/// never share a value. Only modules without .func bodies (whose registers live above the entries').
/// </para>
/// </summary>
internal static class RegisterCompaction
{
    /// <summary>Renumbers the registers of <paramref name="fn"/> in place; returns the slots it now uses.</summary>
    public static int Compact(PtxFunction fn, HashSet<Operand> renamed)
    {
        int regs = fn.NumRegs;
        var code = fn.Code;
        if (regs == 0 || code.Length == 0) return regs;
        var live = RegisterLiveness.Solve(fn);
        var first = new int[regs];
        var last = new int[regs];
        Array.Fill(first, int.MaxValue);
        Array.Fill(last, -1);
        int words = live.Words;
        for (int b = 0; b < live.Blocks; b++)
        {
            int start = live.Starts[b], end = live.Starts[b + 1] - 1;
            var (next, target) = live.Successors(fn, b);
            for (int w = 0; w < words; w++)
            {
                for (ulong bits = live.Live[b * words + w]; bits != 0; bits &= bits - 1)
                    Extend(first, last, w * 64 + BitOperations.TrailingZeroCount(bits), start);
                for (ulong bits = live.LiveOut(next, target, w); bits != 0; bits &= bits - 1)
                    Extend(first, last, w * 64 + BitOperations.TrailingZeroCount(bits), end);
            }
        }
        var defs = new List<int>();
        var uses = new List<int>();
        for (int i = 0; i < code.Length; i++)
        {
            RegisterLiveness.Operands(code[i], regs, defs, uses);
            foreach (int r in defs) Extend(first, last, r, i);
            foreach (int r in uses) Extend(first, last, r, i);
        }

        // linear scan: a slot is free again once its range ended before the next range starts
        var order = Enumerable.Range(0, regs).Where(r => last[r] >= 0).OrderBy(r => first[r]).ThenBy(r => r).ToArray();
        var slotOf = new int[regs];
        Array.Fill(slotOf, -1);
        var active = new PriorityQueue<int, int>();   // slot, by the end of its range
        var free = new PriorityQueue<int, int>();     // the lowest free slot first
        var slotBits = new List<int>();
        foreach (int r in order)
        {
            while (active.TryPeek(out int s, out int end) && end < first[r])
            {
                active.Dequeue();
                free.Enqueue(s, s);
            }
            if (!free.TryDequeue(out int slot, out _))
            {
                slot = slotBits.Count;
                slotBits.Add(0);
            }
            slotOf[r] = slot;
            slotBits[slot] = Math.Max(slotBits[slot], fn.RegBits[r]);
            active.Enqueue(slot, last[r]);
        }

        foreach (var ins in code)
        {
            foreach (var o in ins.Ops) Rename(o, slotOf, regs, renamed, fn);
            Warp.PrepareFast(ins);   // its operand rows moved
        }
        fn.RegBits.Clear();
        fn.RegBits.AddRange(slotBits);
        return slotBits.Count;
    }

    private static void Extend(int[] first, int[] last, int r, int at)
    {
        if (at < first[r]) first[r] = at;
        if (at > last[r]) last[r] = at;
    }

    private static void Rename(Operand o, int[] slotOf, int regs, HashSet<Operand> renamed, PtxFunction fn)
    {
        if ((o.Kind == OpKind.Reg || o.Kind == OpKind.Addr) && o.Reg >= 0 && o.Reg < regs)
        {
            if (!renamed.Add(o)) throw new InvalidOperationException($"{fn.Name}: operand {o.Name} is shared between instructions; its register cannot be renamed twice");
            int slot = slotOf[o.Reg];
            if (slot < 0) throw new InvalidOperationException($"{fn.Name}: register {o.Name} has no live range");
            o.Reg = slot;
        }
        foreach (var e in o.Elems) Rename(e, slotOf, regs, renamed, fn);
    }
}
