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
    public static int[] LiveIn(PtxFunction fn)
    {
        var code = fn.Code;
        int n = code.Length, words = (fn.NumRegs + 63) / 64;
        if (n == 0 || words == 0) return [];
        var use = new ulong[n * words];
        var def = new ulong[n * words];
        for (int i = 0; i < n; i++)
        {
            var ins = code[i];
            var o = ins.Ops;
            bool firstIsDef = WritesFirstOperand(ins.Op) && ins.GuardPred < 0;
            for (int k = 0; k < o.Length; k++)
            {
                Mark(o[k], k == 0 && firstIsDef ? def : use, use, i * words, fn.NumRegs);
            }
        }
        // live[i] = use[i] | (live[succ...] & ~def[i]); iterate to a fixed point (loops converge in a few passes)
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
        var rows = new List<int>();
        for (int r = 0; r < fn.NumRegs; r++)
            if ((live[r >> 6] & (1UL << (r & 63))) != 0) rows.Add(r);
        return [.. rows];
    }

    /// <summary>Adds the registers of <paramref name="o"/> to <paramref name="set"/> (an address's base register always to <paramref name="use"/>).</summary>
    private static void Mark(Operand o, ulong[] set, ulong[] use, int at, int numRegs)
    {
        switch (o.Kind)
        {
            case OpKind.Reg:
                if (o.Reg >= 0 && o.Reg < numRegs) set[at + (o.Reg >> 6)] |= 1UL << (o.Reg & 63);
                break;
            case OpKind.Addr:
                // an address operand's base register is always read, even in a destination position
                if (o.Reg >= 0 && o.Reg < numRegs) use[at + (o.Reg >> 6)] |= 1UL << (o.Reg & 63);
                break;
            case OpKind.Vec:
            case OpKind.List:
                foreach (var e in o.Elems) Mark(e, set, use, at, numRegs);
                break;
        }
    }

    /// <summary>Instructions whose first operand is a destination that every executing thread writes in full.</summary>
    internal static bool WritesFirstOperand(Op op) => op is Op.Add or Op.Sub or Op.Mul or Op.Mad or Op.Fma or Op.Div or Op.Rem
        or Op.Abs or Op.Neg or Op.Min or Op.Max or Op.Mov or Op.Ld or Op.Cvt or Op.Cvta or Op.Selp or Op.Slct or Op.And or Op.Or
        or Op.Xor or Op.Not or Op.Cnot or Op.Shl or Op.Shr or Op.Shf or Op.Popc or Op.Clz or Op.Brev or Op.Bfe or Op.Bfi
        or Op.Bfind or Op.Prmt or Op.Lop3 or Op.Dp4a or Op.Dp2a or Op.Rcp or Op.Sqrt or Op.Rsqrt or Op.Ex2 or Op.Lg2 or Op.Sin
        or Op.Cos or Op.Tanh or Op.Copysign or Op.Mul24 or Op.Mad24 or Op.Sad or Op.Activemask or Op.Shfl or Op.Vote
        or Op.Match or Op.Redux or Op.Atom or Op.Mma or Op.Ldmatrix or Op.Mul64Hi;
}
