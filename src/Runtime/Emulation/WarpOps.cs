using System.Numerics;
using static Qwen3Cuda.Runtime.Emulation.FloatMath;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>Operand access, mov/setp/selp/cvt/cvta.</summary>
internal sealed partial class Warp
{
    public const ulong SharedWindow = 0x5000_0000_0000UL, LocalWindow = 0x6000_0000_0000UL, WindowSize = 0x1_0000_0000UL;

    /// <summary>Reads an operand for all 32 lanes, chopped to the instruction type's width.</summary>
    private void Load(Operand o, ulong[] dst, PtxType t)
    {
        int tb = PtxTypes.Size(t) * 8;
        switch (o.Kind)
        {
            case OpKind.Reg:
                Array.Copy(R, o.Reg * 32, dst, 0, 32);
                if (o.RegBits > tb && tb > 0 && tb < 64)
                {
                    ulong m = Mask(tb);
                    for (int l = 0; l < 32; l++) dst[l] &= m;
                }
                break;
            case OpKind.Imm:
                dst.AsSpan().Fill(tb > 0 && tb < 64 ? o.Imm & Mask(tb) : o.Imm);
                break;
            case OpKind.Special when Cta.Launch.Block.Y == 1 && Cta.Launch.Block.Z == 1 && o.Special is SpecialReg.TidX or SpecialReg.TidY or SpecialReg.TidZ:
                {
                    // 1-D block: %tid.x is the thread's linear index (no division per lane), %tid.y/z are 0
                    ulong first = o.Special == SpecialReg.TidX ? (ulong)(Index * 32) : 0, step = o.Special == SpecialReg.TidX ? 1UL : 0;
                    for (int l = 0; l < 32; l++) dst[l] = first + step * (ulong)l;
                    break;
                }
            case OpKind.Special:
                if (o.Special is SpecialReg.TidX or SpecialReg.TidY or SpecialReg.TidZ or SpecialReg.LaneId or SpecialReg.LanemaskEq
                    or SpecialReg.LanemaskLe or SpecialReg.LanemaskLt or SpecialReg.LanemaskGe or SpecialReg.LanemaskGt)
                    for (int l = 0; l < 32; l++) dst[l] = SpecialValue(o.Special, l);
                else dst.AsSpan().Fill(SpecialValue(o.Special, 0)); // the same for every lane of the warp
                break;
            case OpKind.Sym:
                dst.AsSpan().Fill(SymbolValue(o.Sym!));
                break;
            case OpKind.Pred:
                {
                    uint p = PredValue(o);
                    for (int l = 0; l < 32; l++) dst[l] = (p >> l) & 1;
                    break;
                }
            default: throw new InvalidOperationException($"operand {o.Name} cannot be read as a value");
        }
    }

    /// <summary>Writes exec lanes of a register (sign-extending signed narrow types, masking to the register width).</summary>
    private void Store(Operand o, ulong[] src, uint exec, PtxType t)
    {
        if (o.Kind == OpKind.Sink) return;
        if (o.Kind == OpKind.Pred)
        {
            uint p = 0;
            for (int l = 0; l < 32; l++) if (src[l] != 0) p |= 1u << l;
            P[o.Reg] = (P[o.Reg] & ~exec) | (p & exec);
            return;
        }
        if (o.Kind != OpKind.Reg) throw new InvalidOperationException($"operand {o.Name} is not a register destination");
        int rb = o.RegBits;
        ulong m = Mask(rb);
        int tb = PtxTypes.Size(t) * 8;
        bool sext = PtxTypes.IsSigned(t) && tb < rb;
        int b = o.Reg * 32;
        var r = R;
        if (exec == 0xFFFFFFFF && !sext)
        {
            for (int l = 0; l < 32; l++) r[b + l] = src[l] & m;
            return;
        }
        for (uint e = exec; e != 0; e &= e - 1)
        {
            int l = BitOperations.TrailingZeroCount(e);
            ulong v = src[l];
            if (sext) v = (ulong)SExt(v, tb);
            r[b + l] = v & m;
        }
    }

    private ulong SpecialValue(SpecialReg s, int lane)
    {
        var L = Cta.Launch;
        int tid = Index * 32 + lane;
        uint bx = L.Block.X, by = L.Block.Y;
        return s switch
        {
            SpecialReg.TidX => (ulong)(tid % bx), SpecialReg.TidY => (ulong)(tid / bx % by), SpecialReg.TidZ => (ulong)(tid / (bx * by)),
            SpecialReg.NtidX => bx, SpecialReg.NtidY => by, SpecialReg.NtidZ => L.Block.Z,
            SpecialReg.CtaidX => Cta.CtaId.X, SpecialReg.CtaidY => Cta.CtaId.Y, SpecialReg.CtaidZ => Cta.CtaId.Z,
            SpecialReg.NctaidX => L.Grid.X, SpecialReg.NctaidY => L.Grid.Y, SpecialReg.NctaidZ => L.Grid.Z,
            SpecialReg.LaneId => (ulong)lane, SpecialReg.WarpId => (ulong)Index, SpecialReg.NWarpId => (ulong)Cta.Warps.Length,
            SpecialReg.SmId => (ulong)(Cta.Linear % L.Device.MultiprocessorCount), SpecialReg.NSmId => (ulong)L.Device.MultiprocessorCount,
            SpecialReg.GridId => (ulong)L.LaunchId,
            SpecialReg.LanemaskEq => 1UL << lane, SpecialReg.LanemaskLe => (2UL << lane) - 1, SpecialReg.LanemaskLt => (1UL << lane) - 1,
            SpecialReg.LanemaskGe => ~((1UL << lane) - 1) & 0xFFFFFFFF, SpecialReg.LanemaskGt => ~((2UL << lane) - 1) & 0xFFFFFFFF,
            SpecialReg.Clock => (uint)Cta.Counters.WarpInstructions, SpecialReg.ClockHi => 0, SpecialReg.Clock64 => (ulong)Cta.Counters.WarpInstructions,
            SpecialReg.GlobalTimer or SpecialReg.GlobalTimerLo or SpecialReg.GlobalTimerHi => (ulong)Cta.Counters.WarpInstructions * 1000,
            SpecialReg.DynamicSmemSize => (ulong)L.DynamicShared, SpecialReg.TotalSmemSize => (ulong)L.SharedBytes,
            _ => 0,
        };
    }

    /// <summary>The value of a symbol used as an operand: its address in its own window.</summary>
    private ulong SymbolValue(PtxSymbol s) => s.Space switch
    {
        Space.Shared => (ulong)(s.IsExternShared ? Cta.Launch.DynamicBase : s.Offset),
        Space.Local => (ulong)(_frameBase + s.Offset),
        Space.Param => s.InFrame ? (ulong)(_frameBase + s.Offset) : (ulong)s.Offset,
        _ => s.Address,
    };

    private void Mov(Instr ins, uint exec)
    {
        var d = ins.Ops[0];
        var s = ins.Ops[1];
        if (d.Kind == OpKind.Pred)
        {
            uint v = PredValue(s);
            P[d.Reg] = (P[d.Reg] & ~exec) | (v & exec);
            return;
        }
        if (s.Kind == OpKind.Vec)
        {
            int n = s.Elems.Length, eb = PtxTypes.Size(ins.T) * 8 / n;
            Array.Clear(D);
            for (int i = 0; i < n; i++)
            {
                Load(s.Elems[i], A, PtxType.B64);
                ulong em = Mask(eb);
                for (int l = 0; l < 32; l++) D[l] |= (A[l] & em) << (eb * i);
            }
            Store(d, D, exec, ins.T);
            return;
        }
        if (d.Kind == OpKind.Vec)
        {
            int n = d.Elems.Length, eb = PtxTypes.Size(ins.T) * 8 / n;
            Load(s, A, ins.T);
            for (int i = 0; i < n; i++)
            {
                ulong em = Mask(eb);
                for (int l = 0; l < 32; l++) D[l] = (A[l] >> (eb * i)) & em;
                Store(d.Elems[i], D, exec, PtxType.B64);
            }
            return;
        }
        Load(s, D, ins.T);
        Store(d, D, exec, ins.T);
    }

    private void Setp(Instr ins, uint exec)
    {
        var o = ins.Ops;
        PtxType t = ins.T;
        Load(o[1], A, t);
        Load(o[2], B, t);
        uint r = 0;
        string cmp = ins.Mode;
        int bits = PtxTypes.Size(t) * 8;
        if (PtxTypes.IsFloat(t))
        {
            for (int l = 0; l < 32; l++)
            {
                double x, y;
                if (t == PtxType.F32)
                {
                    float fx = AsF32(A[l]), fy = AsF32(B[l]);
                    if (ins.Ftz) { fx = Ftz(fx); fy = Ftz(fy); }
                    x = fx; y = fy;
                }
                else if (t == PtxType.F64) { x = AsF64(A[l]); y = AsF64(B[l]); }
                else if (t == PtxType.BF16) { x = FromBf16(A[l]); y = FromBf16(B[l]); }
                else { x = FromF16(A[l]); y = FromF16(B[l]); }
                if (FloatMath.Compare(x, y, cmp)) r |= 1u << l;
            }
        }
        else
        {
            bool signed = PtxTypes.IsSigned(t);
            for (int l = 0; l < 32; l++)
            {
                bool v;
                if (signed)
                {
                    long x = SExt(A[l], bits), y = SExt(B[l], bits);
                    v = cmp switch { "eq" => x == y, "ne" => x != y, "lt" => x < y, "le" => x <= y, "gt" => x > y, "ge" => x >= y, _ => throw Fault($"setp.{cmp} on a signed type", ins, l) };
                }
                else
                {
                    ulong x = A[l], y = B[l];
                    v = cmp switch
                    {
                        "eq" => x == y, "ne" => x != y, "lt" or "lo" => x < y, "le" or "ls" => x <= y, "gt" or "hi" => x > y, "ge" or "hs" => x >= y,
                        _ => throw Fault($"setp.{cmp} on an unsigned type", ins, l),
                    };
                }
                if (v) r |= 1u << l;
            }
        }
        uint p = r, q = ~r;
        if (ins.Mode2 != "")
        {
            uint c = PredValue(o[3]);
            (p, q) = ins.Mode2 switch { "and" => (r & c, ~r & c), "or" => (r | c, ~r | c), _ => (r ^ c, ~r ^ c) };
        }
        int dp = o[0].Reg;
        P[dp] = (P[dp] & ~exec) | (p & exec);
        if (o[0].PairPred >= 0) P[o[0].PairPred] = (P[o[0].PairPred] & ~exec) | (q & exec);
    }

    private void Selp(Instr ins, uint exec)
    {
        var o = ins.Ops;
        Load(o[1], A, ins.T);
        Load(o[2], B, ins.T);
        uint p = PredValue(o[3]);
        for (int l = 0; l < 32; l++) D[l] = ((p >> l) & 1) != 0 ? A[l] : B[l];
        Store(o[0], D, exec, ins.T);
    }

    private void Slct(Instr ins, uint exec)
    {
        var o = ins.Ops;
        Load(o[1], A, ins.T);
        Load(o[2], B, ins.T);
        Load(o[3], C, ins.T2);
        for (int l = 0; l < 32; l++)
        {
            bool ge = ins.T2 == PtxType.F32 ? AsF32(C[l]) >= 0 : (int)C[l] >= 0;
            D[l] = ge ? A[l] : B[l];
        }
        Store(o[0], D, exec, ins.T);
    }

    private void Cvta(Instr ins, uint exec)
    {
        Load(ins.Ops[1], A, ins.T);
        bool to = ins.Mode == "to";
        ulong window = ins.Space switch { Space.Shared => SharedWindow, Space.Local => LocalWindow, _ => 0 };
        for (int l = 0; l < 32; l++) D[l] = window == 0 ? A[l] : to ? A[l] - window : A[l] + window;
        Store(ins.Ops[0], D, exec, ins.T);
    }

    private void Isspacep(Instr ins, uint exec)
    {
        Load(ins.Ops[1], A, PtxType.U64);
        for (int l = 0; l < 32; l++)
        {
            ulong a = A[l];
            bool sh = a - SharedWindow < WindowSize, lo = a - LocalWindow < WindowSize;
            D[l] = (ins.Space switch { Space.Shared => sh, Space.Local => lo, _ => !sh && !lo }) ? 1UL : 0;
        }
        Store(ins.Ops[0], D, exec, PtxType.Pred);
    }

    private void Cvt(Instr ins, uint exec)
    {
        PtxType dt = ins.T, st = ins.T2;
        var o = ins.Ops;
        Load(o[1], A, st);
        bool sFloat = PtxTypes.IsFloat(st), dFloat = PtxTypes.IsFloat(dt);
        int sb = PtxTypes.Size(st) * 8, db = PtxTypes.Size(dt) * 8;
        if (o.Length == 3)
        {
            // cvt.rn{.relu}.{bf16x2,f16x2}.f32 d, a, b: a -> d[31:16], b -> d[15:0]
            Load(o[2], B, st);
            bool bf = dt == PtxType.BF16x2;
            for (int l = 0; l < 32; l++)
            {
                float hi = AsF32(A[l]), lo = AsF32(B[l]);
                if (ins.Relu) { hi = float.IsNaN(hi) ? hi : Math.Max(hi, 0); lo = float.IsNaN(lo) ? lo : Math.Max(lo, 0); }
                ulong h = bf ? ToBf16(hi, ins.Rnd) : ToF16(hi), w = bf ? ToBf16(lo, ins.Rnd) : ToF16(lo);
                D[l] = (h << 16) | w;
            }
            Store(o[0], D, exec, PtxType.B32);
            return;
        }
        for (int l = 0; l < 32; l++)
        {
            ulong a = A[l];
            if (!sFloat && !dFloat)
            {
                long sv = PtxTypes.IsSigned(st) ? SExt(a, sb) : (long)(a & Mask(sb));
                if (ins.Sat)
                {
                    bool du = !PtxTypes.IsSigned(dt);
                    bool su = !PtxTypes.IsSigned(st);
                    if (su && sb == 64 && du) D[l] = db == 64 ? a : Math.Min(a, Mask(db));
                    else if (su && sb == 64) D[l] = (ulong)(long)Math.Min(a, (ulong)(Mask(db) >> 1)) & Mask(db);
                    else
                    {
                        long lo = du ? 0 : -(1L << (db - 1)), hi = du ? (db == 64 ? long.MaxValue : (long)Mask(db)) : (long)(Mask(db) >> 1);
                        D[l] = (ulong)Math.Clamp(sv, lo, hi) & Mask(db);
                    }
                }
                else D[l] = (ulong)sv & Mask(db);
                continue;
            }
            if (!sFloat)
            {
                bool ss = PtxTypes.IsSigned(st);
                double v = ss ? SExt(a, sb) : (double)(a & Mask(sb));
                if (!ss && sb == 64) v = a;
                D[l] = FromDouble(v, dt, ins, exactInt: true, srcLong: ss ? SExt(a, sb) : 0, srcULong: a);
                continue;
            }
            double x = st switch
            {
                PtxType.F32 => ins.Ftz ? Ftz(AsF32(a)) : AsF32(a),
                PtxType.F64 => AsF64(a),
                PtxType.BF16 => FromBf16(a),
                PtxType.F16 => FromF16(a),
                _ => throw Fault($"cvt from {st} is not supported", ins, l),
            };
            if (!dFloat) { D[l] = FloatMath.FloatToInt(x, ins.Rnd, dt, st == PtxType.F64); continue; }
            D[l] = FromDouble(x, dt, ins, false, 0, 0);
        }
        Store(o[0], D, exec, dt);
    }

    private ulong FromDouble(double x, PtxType dt, Instr ins, bool exactInt, long srcLong, ulong srcULong)
    {
        if (ins.Rnd is Rnd.Rni or Rnd.Rzi or Rnd.Rmi or Rnd.Rpi) x = FloatMath.RoundToIntegral(x, ins.Rnd);
        if (ins.Sat) x = double.IsNaN(x) ? 0 : Math.Clamp(x, 0, 1);
        switch (dt)
        {
            case PtxType.F64: return Bits(x);
            case PtxType.F32:
                {
                    float f;
                    if (exactInt && ins.Rnd is Rnd.Rn or Rnd.None && ins.T2 is PtxType.S64 or PtxType.U64)
                        f = ins.T2 == PtxType.S64 ? (float)srcLong : (float)srcULong;
                    else f = ToF32(x, ins.Rnd is Rnd.Rni or Rnd.Rzi or Rnd.Rmi or Rnd.Rpi ? Rnd.Rn : ins.Rnd);
                    if (ins.Ftz) f = Ftz(f);
                    if (ins.Sat) f = float.IsNaN(f) ? 0 : Math.Clamp(f, 0f, 1f);
                    return Bits(f);
                }
            case PtxType.BF16:
                {
                    float f = (float)x;
                    if ((double)f != x) return ToBf16Exact(x);
                    return ToBf16(f, ins.Rnd);
                }
            case PtxType.F16: return ToF16(x);
            default: throw new InvalidOperationException($"cvt to {dt} is not supported");
        }
    }
}
