using System.Numerics;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Warp collectives (shfl/vote/match/redux), CTA barriers, vprintf.</summary>
internal sealed partial class Warp
{
    private void Shfl(Instr ins, uint exec)
    {
        var o = ins.Ops;
        Load(o[1], A, PtxType.B32);
        Load(o[2], B, PtxType.B32);
        Load(o[3], C, PtxType.B32);
        Load(o[4], E, PtxType.B32);
        uint pv = 0;
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int lane = BitOperations.TrailingZeroCount(e);
            uint mask = (uint)E[lane];
            if ((mask >> lane & 1) == 0) throw Fault($"synccheck: shfl.sync member mask 0x{mask:x8} does not contain the executing lane", ins, lane);
            int bval = (int)(B[lane] & 31), cval = (int)(C[lane] & 31), seg = (int)((C[lane] >> 8) & 31);
            int maxLane = (lane & seg) | (cval & ~seg), minLane = lane & seg;
            int j; bool ok;
            switch (ins.Mode)
            {
                case "up": j = lane - bval; ok = j >= maxLane; break;
                case "down": j = lane + bval; ok = j <= maxLane; break;
                case "bfly": j = lane ^ bval; ok = j <= maxLane; break;
                default: j = minLane | (bval & ~seg); ok = j <= maxLane; break;
            }
            if (!ok) j = lane;
            if (((exec >> j) & 1) == 0)
                throw Fault($"synccheck: shfl.sync reads lane {j}, which is not executing the shuffle (exec 0x{exec:x8})", ins, lane);
            D[lane] = A[j];
            if (ok) pv |= 1u << lane;
        }
        Store(o[0], D, exec, PtxType.B32);
        if (o[0].PairPred >= 0) P[o[0].PairPred] = (P[o[0].PairPred] & ~exec) | (pv & exec);
    }

    private uint MemberMask(Operand m, uint exec)
    {
        Load(m, E, PtxType.B32);
        return (uint)E[BitOperations.TrailingZeroCount(exec)];
    }

    private void Vote(Instr ins, uint exec)
    {
        var o = ins.Ops;
        uint mask = MemberMask(o[2], exec) & exec;
        uint p = PredValue(o[1]) & mask;
        if (ins.Mode == "ballot" || ins.T == PtxType.B32)
        {
            Fill(D, p);
            Store(o[0], D, exec, PtxType.B32);
            return;
        }
        bool r = ins.Mode switch { "all" => p == mask, "any" => p != 0, _ => p == mask || p == 0 };
        int d = o[0].Reg;
        P[d] = (P[d] & ~exec) | (r ? exec : 0);
    }

    private void Match(Instr ins, uint exec)
    {
        var o = ins.Ops;
        uint mask = MemberMask(o[2], exec) & exec;
        Load(o[1], A, ins.T);
        bool all = true;
        for (uint e = mask; e != 0; e &= e - 1) if (A[BitOperations.TrailingZeroCount(e)] != A[BitOperations.TrailingZeroCount(mask)]) all = false;
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            if (ins.Mode == "all") D[l] = all ? mask : 0;
            else
            {
                uint r = 0;
                for (uint f = mask; f != 0; f &= f - 1) { int k = BitOperations.TrailingZeroCount(f); if (A[k] == A[l]) r |= 1u << k; }
                D[l] = r;
            }
        }
        Store(o[0], D, exec, PtxType.B32);
        if (o[0].PairPred >= 0) P[o[0].PairPred] = (P[o[0].PairPred] & ~exec) | (all ? exec : 0);
    }

    private void Redux(Instr ins, uint exec)
    {
        var o = ins.Ops;
        uint mask = MemberMask(o[2], exec) & exec;
        Load(o[1], A, ins.T);
        bool s = PtxTypes.IsSigned(ins.T);
        ulong acc = ins.Mode switch { "and" => 0xFFFFFFFF, "min" => s ? 0x7FFFFFFFUL : 0xFFFFFFFF, "max" => s ? 0x80000000UL : 0, _ => 0 };
        for (uint e = mask; e != 0; e &= e - 1)
        {
            ulong v = A[BitOperations.TrailingZeroCount(e)];
            acc = ins.Mode switch
            {
                "add" => (acc + v) & 0xFFFFFFFF, "and" => acc & v, "or" => acc | v, "xor" => acc ^ v,
                "min" => s ? ((int)v < (int)acc ? v : acc) : Math.Min(acc, v),
                "max" => s ? ((int)v > (int)acc ? v : acc) : Math.Max(acc, v),
                _ => throw Fault("redux." + ins.Mode, ins, 0),
            };
        }
        Fill(D, acc);
        Store(o[0], D, exec, PtxType.B32);
    }

    /// <summary>bar.sync / bar.red / bar.arrive: the warp (all live lanes, convergent) parks at the barrier; the CTA releases it.</summary>
    private WarpStatus Barrier(Instr ins, uint exec)
    {
        if (!Collective(ins, ref exec)) return WarpStatus.Running;
        if (exec == 0) { Pc++; return WarpStatus.Running; } // guarded off for the whole warp
        var o = ins.Ops;
        Load(o[0], A, PtxType.U32);
        int id = (int)(A[BitOperations.TrailingZeroCount(Active)] & 15);
        int count = 0;
        if (ins.Op != Op.BarRed && o.Length > 1) { Load(o[1], B, PtxType.U32); count = (int)B[BitOperations.TrailingZeroCount(Active)]; }
        if (ins.Op == Op.BarRed)
        {
            if (o.Length == 4) { Load(o[2], B, PtxType.U32); count = (int)B[BitOperations.TrailingZeroCount(Active)]; }
            uint pred = PredValue(o[^1]) & exec;
            _barRedValue = pred;
        }
        if (ins.Op == Op.BarArrive)
        {
            Cta.Arrive(id, count, this);
            Pc++;
            return WarpStatus.Running;
        }
        BarrierId = id;
        BarrierCount = count;
        return WarpStatus.AtBarrier;
    }

    public uint BarRedValue => _barRedValue;

    /// <summary>Called by the CTA when the barrier completes: writes bar.red results and moves past the barrier.</summary>
    public void ReleaseBarrier(long popc, bool any, bool all)
    {
        var ins = _code[Pc];
        if (ins.Op == Op.BarRed)
        {
            if (ins.Mode == "popc") { Fill(D, (ulong)popc); Store(ins.Ops[0], D, Active, PtxType.U32); }
            else
            {
                bool r = ins.Mode == "and" ? all : any;
                int d = ins.Ops[0].Reg;
                P[d] = (P[d] & ~Active) | (r ? Active : 0);
            }
        }
        BarrierId = -1;
        Pc++;
    }

    private unsafe void Vprintf(Instr ins, uint exec)
    {
        // vprintf(fmt, args): arguments are the call-sequence .param vars holding a generic format pointer and a packed arg buffer
        var lists = ins.Ops.Where(x => x.Kind == OpKind.List).ToArray();
        var args = lists[^1].Elems;
        var w = Cta.Launch.PrintOut;
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong fmtAddr = *(ulong*)Translate(Space.Local, (ulong)(_frameBase + args[0].Sym!.Offset), 8, false, ins, l);
            ulong argAddr = *(ulong*)Translate(Space.Local, (ulong)(_frameBase + args[1].Sym!.Offset), 8, false, ins, l);
            var sb = new System.Text.StringBuilder();
            ulong a = fmtAddr;
            Space sp = Route(Space.Generic, ref a);
            for (int i = 0; i < 4096; i++)
            {
                byte ch = *Translate(sp, a + (ulong)i, 1, false, ins, l);
                if (ch == 0) break;
                sb.Append((char)ch);
            }
            w?.Write(FormatPrintf(sb.ToString(), argAddr, ins, l));
        }
        D.AsSpan().Clear();
        var rets = ins.Ops[0].Kind == OpKind.List && ins.Ops.Length > 2 ? ins.Ops[0] : null;
        if (rets != null) for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            *(int*)Translate(Space.Local, (ulong)(_frameBase + rets.Elems[0].Sym!.Offset), 4, true, ins, l) = 0;
        }
    }

    /// <summary>The precision of a printf conversion spec ("%.3f" → 3), 6 when absent, as in C.</summary>
    private static int Precision(ReadOnlySpan<char> spec)
    {
        int dot = spec.IndexOf('.');
        if (dot < 0) return 6;
        int p = 0;
        for (int i = dot + 1; i < spec.Length && char.IsDigit(spec[i]); i++) p = p * 10 + (spec[i] - '0');
        return p;
    }

    private unsafe string FormatPrintf(string fmt, ulong argAddr, Instr ins, int lane)
    {
        var sb = new System.Text.StringBuilder();
        ulong a = argAddr;
        Space sp = Route(Space.Generic, ref a);
        int off = 0;
        for (int i = 0; i < fmt.Length; i++)
        {
            if (fmt[i] != '%' || i + 1 >= fmt.Length) { sb.Append(fmt[i]); continue; }
            int j = i + 1;
            while (j < fmt.Length && "0123456789.-+ #l".Contains(fmt[j])) j++;
            if (j >= fmt.Length) break;
            char conv = fmt[j];
            if (conv == '%') { sb.Append('%'); i = j; continue; }
            bool wide = conv is 'f' or 'e' or 'g' or 'p' or 's' || fmt.AsSpan(i, j - i).Contains("ll", StringComparison.Ordinal);
            int size = wide ? 8 : 4;
            off = (off + size - 1) / size * size;
            ulong v = size == 8 ? *(ulong*)Translate(sp, a + (ulong)off, 8, false, ins, lane) : *(uint*)Translate(sp, a + (ulong)off, 4, false, ins, lane);
            off += size;
            var ci = System.Globalization.CultureInfo.InvariantCulture;
            sb.Append(conv switch
            {
                'd' or 'i' => (size == 8 ? (long)v : (int)v).ToString(ci),
                'u' => v.ToString(ci), 'x' => v.ToString("x", ci), 'X' => v.ToString("X", ci),
                'f' => FloatMath.AsF64(v).ToString("F" + Precision(fmt.AsSpan(i + 1, j - i - 1)), ci),
                'e' => FloatMath.AsF64(v).ToString((Precision(fmt.AsSpan(i + 1, j - i - 1)) > 0 ? "0." + new string('0', Precision(fmt.AsSpan(i + 1, j - i - 1))) : "0") + "e+00", ci),
                'g' => FloatMath.AsF64(v).ToString("G" + Precision(fmt.AsSpan(i + 1, j - i - 1)), ci),
                'c' => ((char)v).ToString(), 'p' => "0x" + v.ToString("x", ci),
                _ => "?",
            });
            i = j;
        }
        return sb.ToString();
    }
}
