namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Which registers of an entry function may be read before the thread writes them (backward liveness over the
/// instruction graph, per thread path). Only those rows must start at zero for a warp to behave as if the whole
/// register file were cleared; a launch then clears a few rows instead of every row of every warp.
/// A guarded write does not count as a write (the thread may skip it); so does any instruction whose first
/// operand is not a plain destination (st, red, cp.async, bar, call...): all their operands count as reads.
/// </summary>
internal static class RegisterLiveness
{
    /// <summary>Register rows (slot numbers) live at the entry of <paramref name="fn"/>, ascending.</summary>
    /// <remarks>
    /// Solved over basic blocks: each block's gen (read before any write in it) and kill (written in it) come from
    /// one backward walk of its instructions' operands, then live-in(B) = gen(B) | (live-out(B) &amp; ~kill(B)) is
    /// iterated over the blocks to the fixed point. That is the same least fixed point as the per-instruction
    /// equations (<see cref="LiveInByInstruction"/>, kept as the tests' oracle) at a fraction of the cost: the
    /// per-instruction form costs instructions × register words per pass, which made it an eighth of a device-model
    /// test's CPU time on the large persistent kernels.
    /// </remarks>
    public static int[] LiveIn(PtxFunction fn)
    {
        var b = Solve(fn);
        if (b.Blocks == 0) return [];
        return Rows(b.Live, fn.NumRegs);
    }

    /// <summary>The registers below <paramref name="numRegs"/> whose bits are set in the first words of <paramref name="live"/>, ascending.</summary>
    private static int[] Rows(ulong[] live, int numRegs)
    {
        var rows = new List<int>();
        for (int r = 0; r < numRegs; r++)
            if ((live[r >> 6] & (1UL << (r & 63))) != 0) rows.Add(r);
        return [.. rows];
    }

    /// <summary>
    /// A function's basic blocks and the registers live at their entries: block b is instructions
    /// <c>Starts[b] .. Starts[b + 1] - 1</c>, <c>Live[b * Words ..]</c> its live-in bits (block <c>Blocks</c>, the exit, empty).
    /// </summary>
    internal readonly record struct BlockLiveness(int Blocks, int Words, int[] Starts, int[] BlockOf, ulong[] Live)
    {
        /// <summary>The blocks control may go to from block <paramref name="b"/>'s last instruction (-1: none).</summary>
        public (int FallThrough, int Target) Successors(PtxFunction fn, int b)
        {
            var last = fn.Code[Starts[b + 1] - 1];
            bool uncond = last.GuardPred < 0;
            bool fallsThrough = !(uncond && (last.Op is Op.Bra or Op.Ret or Op.Exit or Op.Trap));
            int target = last.Op == Op.Bra && last.Target >= 0 && last.Target < fn.Code.Length ? BlockOf[last.Target] : -1;
            return (fallsThrough ? b + 1 : -1, target);
        }

        /// <summary>Word <paramref name="w"/> of the registers live at the end of a block whose successors are <paramref name="next"/> and <paramref name="target"/>.</summary>
        public ulong LiveOut(int next, int target, int w) =>
            (next >= 0 ? Live[next * Words + w] : 0) | (target >= 0 ? Live[target * Words + w] : 0);
    }

    /// <summary>Solves liveness over the basic blocks of <paramref name="fn"/> (see <see cref="LiveIn"/>).</summary>
    internal static BlockLiveness Solve(PtxFunction fn)
    {
        var code = fn.Code;
        int n = code.Length, words = (fn.NumRegs + 63) / 64;
        if (n == 0 || words == 0) return new BlockLiveness(0, words, [0], [0], new ulong[Math.Max(words, 1)]);
        // block leaders: the entry, every branch target, the instruction after a branch or an unconditional ret/exit/trap
        var leader = new bool[n + 1];
        leader[0] = leader[n] = true;
        for (int i = 0; i < n; i++)
        {
            var ins = code[i];
            if (ins.Op == Op.Bra && ins.Target >= 0 && ins.Target < n) leader[ins.Target] = true;
            if (EndsBlock(ins)) leader[i + 1] = true;
        }
        var blockOf = new int[n + 1];
        var starts = new List<int>();
        for (int i = 0; i <= n; i++)
        {
            if (leader[i]) starts.Add(i);
            blockOf[i] = starts.Count - 1;
        }
        int blocks = starts.Count - 1;          // the last start is n: the exit, no block
        var gen = new ulong[blocks * words];
        var kill = new ulong[blocks * words];
        var defs = new List<int>();
        var uses = new List<int>();
        for (int b = 0; b < blocks; b++)
        {
            int at = b * words;
            for (int i = starts[b + 1] - 1; i >= starts[b]; i--)
            {
                Operands(code[i], fn.NumRegs, defs, uses);
                foreach (int r in defs)
                {
                    gen[at + (r >> 6)] &= ~(1UL << (r & 63));
                    kill[at + (r >> 6)] |= 1UL << (r & 63);
                }
                foreach (int r in uses) gen[at + (r >> 6)] |= 1UL << (r & 63);
            }
        }
        var result = new BlockLiveness(blocks, words, [.. starts], blockOf, new ulong[(blocks + 1) * words]);
        var live = result.Live;   // block `blocks` (the exit) stays empty
        bool changed = true;
        while (changed)
        {
            changed = false;
            for (int b = blocks - 1; b >= 0; b--)
            {
                var (next, target) = result.Successors(fn, b);
                for (int w = 0; w < words; w++)
                {
                    ulong inw = gen[b * words + w] | (result.LiveOut(next, target, w) & ~kill[b * words + w]);
                    if (inw != live[b * words + w]) { live[b * words + w] = inw; changed = true; }
                }
            }
        }
        return result;
    }

    /// <summary>The registers <paramref name="ins"/> writes in full for every executing thread, and those it reads (or may leave as they were).</summary>
    internal static void Operands(Instr ins, int numRegs, List<int> defs, List<int> uses)
    {
        var o = ins.Ops;
        bool firstIsDef = WritesFirstOperand(ins.Op) && ins.GuardPred < 0;
        defs.Clear();
        uses.Clear();
        for (int k = 0; k < o.Length; k++) Collect(o[k], k == 0 && firstIsDef ? defs : uses, uses, numRegs);
    }

    /// <summary>True when control may leave <paramref name="ins"/> other than to the next instruction.</summary>
    private static bool EndsBlock(Instr ins) =>
        ins.Op == Op.Bra || (ins.GuardPred < 0 && ins.Op is Op.Ret or Op.Exit or Op.Trap);

    /// <summary>Adds the registers of <paramref name="o"/> to <paramref name="set"/> (an address's base register always to <paramref name="use"/>).</summary>
    internal static void Collect(Operand o, List<int> set, List<int> use, int numRegs)
    {
        switch (o.Kind)
        {
            case OpKind.Reg:
                if (o.Reg >= 0 && o.Reg < numRegs) set.Add(o.Reg);
                break;
            case OpKind.Addr:
                if (o.Reg >= 0 && o.Reg < numRegs) use.Add(o.Reg);
                break;
            case OpKind.Vec:
            case OpKind.List:
                foreach (var e in o.Elems) Collect(e, set, use, numRegs);
                break;
        }
    }

    /// <summary>
    /// The per-instruction form of <see cref="LiveIn"/>: live[i] = use[i] | (live[successors of i] &amp; ~def[i]),
    /// iterated to a fixed point. Slow on large kernels; the tests compare the two.
    /// </summary>
    internal static int[] LiveInByInstruction(PtxFunction fn)
    {
        var live = LiveByInstruction(fn, out _);
        if (live.Length == 0) return [];
        return Rows(live, fn.NumRegs);
    }

    /// <summary>The per-instruction fixed point: <c>live[i * words ..]</c> the registers live before instruction i.</summary>
    internal static ulong[] LiveByInstruction(PtxFunction fn, out int words)
    {
        var code = fn.Code;
        int n = code.Length;
        words = (fn.NumRegs + 63) / 64;
        if (n == 0 || words == 0) return [];
        var use = new ulong[n * words];
        var def = new ulong[n * words];
        var defs = new List<int>();
        var uses = new List<int>();
        for (int i = 0; i < n; i++)
        {
            Operands(code[i], fn.NumRegs, defs, uses);
            foreach (int r in defs) def[i * words + (r >> 6)] |= 1UL << (r & 63);
            foreach (int r in uses) use[i * words + (r >> 6)] |= 1UL << (r & 63);
        }
        var live = new ulong[(n + 1) * words];
        bool changed = true;
        while (changed)
        {
            changed = false;
            for (int i = n - 1; i >= 0; i--)
            {
                var ins = code[i];
                bool uncond = ins.GuardPred < 0;
                int next = i + 1, target = ins.Op == Op.Bra && ins.Target >= 0 ? ins.Target : -1;
                bool fallsThrough = !(uncond && (ins.Op is Op.Bra or Op.Ret or Op.Exit or Op.Trap));
                for (int w = 0; w < words; w++)
                {
                    ulong outw = 0;
                    if (fallsThrough && next < n) outw |= live[next * words + w];
                    if (target >= 0 && target < n) outw |= live[target * words + w];
                    ulong inw = use[i * words + w] | (outw & ~def[i * words + w]);
                    if (inw != live[i * words + w]) { live[i * words + w] = inw; changed = true; }
                }
            }
        }
        return live;
    }

    /// <summary>Instructions whose first operand is a destination that every executing thread writes in full.</summary>
    internal static bool WritesFirstOperand(Op op) => op is Op.Add or Op.Sub or Op.Mul or Op.Mad or Op.Fma or Op.Div or Op.Rem
        or Op.Abs or Op.Neg or Op.Min or Op.Max or Op.Mov or Op.Ld or Op.Cvt or Op.Cvta or Op.Selp or Op.Slct or Op.And or Op.Or
        or Op.Xor or Op.Not or Op.Cnot or Op.Shl or Op.Shr or Op.Shf or Op.Popc or Op.Clz or Op.Brev or Op.Bfe or Op.Bfi
        or Op.Bfind or Op.Prmt or Op.Lop3 or Op.Dp4a or Op.Dp2a or Op.Rcp or Op.Sqrt or Op.Rsqrt or Op.Ex2 or Op.Lg2 or Op.Sin
        or Op.Cos or Op.Tanh or Op.Copysign or Op.Mul24 or Op.Mad24 or Op.Sad or Op.Activemask or Op.Shfl or Op.Vote
        or Op.Match or Op.Redux or Op.Atom or Op.Mma or Op.Ldmatrix or Op.Mul64Hi;
}
