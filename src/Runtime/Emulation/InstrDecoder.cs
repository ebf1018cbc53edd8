namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Turns an opcode string such as <c>ld.global.nc.v4.u32</c> into <see cref="Instr"/> fields, and checks
/// operand counts. Unknown opcodes or modifiers fail here, at module load, naming the PTX line.
/// </summary>
internal static class InstrDecoder
{
    private static readonly Dictionary<string, Op> Bases = new(StringComparer.Ordinal)
    {
        ["add"] = Op.Add, ["sub"] = Op.Sub, ["mul"] = Op.Mul, ["mad"] = Op.Mad, ["fma"] = Op.Fma, ["div"] = Op.Div,
        ["rem"] = Op.Rem, ["abs"] = Op.Abs, ["neg"] = Op.Neg, ["min"] = Op.Min, ["max"] = Op.Max, ["mov"] = Op.Mov,
        ["ld"] = Op.Ld, ["ldu"] = Op.Ld, ["st"] = Op.St, ["cvt"] = Op.Cvt, ["cvta"] = Op.Cvta, ["setp"] = Op.Setp,
        ["selp"] = Op.Selp, ["and"] = Op.And, ["or"] = Op.Or, ["xor"] = Op.Xor, ["not"] = Op.Not, ["cnot"] = Op.Cnot,
        ["shl"] = Op.Shl, ["shr"] = Op.Shr, ["shf"] = Op.Shf, ["bra"] = Op.Bra, ["ret"] = Op.Ret, ["exit"] = Op.Exit,
        ["call"] = Op.Call, ["bar"] = Op.Bar, ["barrier"] = Op.Bar, ["membar"] = Op.Membar, ["fence"] = Op.Membar,
        ["shfl"] = Op.Shfl, ["vote"] = Op.Vote, ["match"] = Op.Match, ["redux"] = Op.Redux, ["activemask"] = Op.Activemask,
        ["atom"] = Op.Atom, ["red"] = Op.Red, ["popc"] = Op.Popc, ["clz"] = Op.Clz, ["brev"] = Op.Brev, ["bfe"] = Op.Bfe,
        ["bfi"] = Op.Bfi, ["bfind"] = Op.Bfind, ["prmt"] = Op.Prmt, ["lop3"] = Op.Lop3, ["dp4a"] = Op.Dp4a, ["dp2a"] = Op.Dp2a,
        ["rcp"] = Op.Rcp, ["sqrt"] = Op.Sqrt, ["rsqrt"] = Op.Rsqrt, ["ex2"] = Op.Ex2, ["lg2"] = Op.Lg2, ["sin"] = Op.Sin,
        ["cos"] = Op.Cos, ["tanh"] = Op.Tanh, ["mma"] = Op.Mma, ["ldmatrix"] = Op.Ldmatrix, ["cp"] = Op.CpAsync,
        ["nanosleep"] = Op.Nanosleep, ["trap"] = Op.Trap, ["copysign"] = Op.Copysign, ["testp"] = Op.Testp,
        ["mul24"] = Op.Mul24, ["mad24"] = Op.Mad24, ["sad"] = Op.Sad, ["slct"] = Op.Slct, ["prefetch"] = Op.Prefetch,
        ["prefetchu"] = Op.Prefetch, ["isspacep"] = Op.Isspacep, ["brkpt"] = Op.Brkpt, ["pmevent"] = Op.PmEvent,
        ["griddepcontrol"] = Op.GridDepWait,
    };

    private static readonly HashSet<string> Cmps = ["eq", "ne", "lt", "le", "gt", "ge", "lo", "ls", "hi", "hs", "equ", "neu", "ltu", "leu", "gtu", "geu", "num", "nan"];
    private static readonly HashSet<string> AtomOps = ["add", "min", "max", "inc", "dec", "cas", "exch", "and", "or", "xor"];
    private static readonly HashSet<string> Ignored =
    [
        "sync", "aligned", "ca", "cg", "cs", "lu", "cv", "wb", "wt", "relaxed", "acquire", "release", "acq_rel", "sc", "weak", "mmio",
        "cta", "gpu", "sys", "gl", "L1::evict_last", "L1::evict_first", "L1::no_allocate", "L2::64B", "L2::128B", "L2::256B",
        "L1::evict_normal", "L1::evict_unchanged", "L2::cache_hint", "shared::cta", "m8n8", "noftz", "to", "cc", "L2",
    ];

    public static void Decode(Instr ins, string opcode, List<Operand> ops, Func<string, Exception> err)
    {
        var parts = opcode.Split('.');
        if (!Bases.TryGetValue(parts[0], out var op)) throw err($"unknown instruction '{opcode}'");
        ins.Op = op;
        var types = new List<PtxType>();
        bool sawShared = false;
        for (int i = 1; i < parts.Length; i++)
        {
            string m = parts[i];
            // re-join "::" modifiers that Split broke apart ("shared::cta" arrives as "shared::cta" since ':' is not in idents)
            var t = PtxTypes.Parse(m);
            if (t != null) { types.Add(t.Value); continue; }
            switch (m)
            {
                case "rn": ins.Rnd = Rnd.Rn; continue;
                case "rz": ins.Rnd = Rnd.Rz; continue;
                case "rm": ins.Rnd = Rnd.Rm; continue;
                case "rp": ins.Rnd = Rnd.Rp; continue;
                case "rna": ins.Rnd = Rnd.Rna; continue;
                case "rni": ins.Rnd = Rnd.Rni; continue;
                case "rzi": ins.Rnd = Rnd.Rzi; continue;
                case "rmi": ins.Rnd = Rnd.Rmi; continue;
                case "rpi": ins.Rnd = Rnd.Rpi; continue;
                case "ftz": ins.Ftz = true; continue;
                case "sat": case "satfinite": ins.Sat = true; continue;
                case "approx": ins.Approx = true; continue;
                case "full": ins.Full = true; continue;
                case "uni": ins.Uni = true; continue;
                case "wide": ins.Wide = true; continue;
                case "hi": if (op is Op.Mul or Op.Mad or Op.Mul24 or Op.Mad24) { ins.Hi = true; continue; } break;
                case "lo": if (op is Op.Mul or Op.Mad or Op.Mul24 or Op.Mad24) continue; break;
                case "relu": ins.Relu = true; continue;
                case "NaN": ins.NanMode = true; continue;
                case "xorsign": case "abs": if (op is Op.Min or Op.Max) break; break;
                case "trans": ins.Trans = true; continue;
                case "nc": ins.Nc = true; continue;
                case "volatile": ins.Volatile = true; continue;
                case "global": if (op == Op.CpAsync && sawShared) continue; ins.Space = Space.Global; continue;
                case "shared": case "shared::cta": sawShared = true; ins.Space = Space.Shared; continue;
                case "local": ins.Space = Space.Local; continue;
                case "param": ins.Space = Space.Param; continue;
                case "const": ins.Space = Space.Const; continue;
                case "v2": ins.Vec = 2; continue;
                case "v4": ins.Vec = 4; continue;
                case "x1": ins.Shape = 1; continue;
                case "x2": ins.Shape = 2; continue;
                case "x4": ins.Shape = 4; continue;
                case "m16n8k16": ins.Shape = 16; continue;
                case "m16n8k8": ins.Shape = 8; continue;
                case "row": case "col": ins.Mode2 += m + "."; continue;
                case "async": continue;
                case "to": if (op == Op.Cvta) { ins.Mode = "to"; continue; } break;
                case "commit_group": ins.Op = Op.CpAsyncCommit; continue;
                case "wait_group": ins.Op = Op.CpAsyncWait; continue;
                case "wait_all": ins.Op = Op.CpAsyncWaitAll; continue;
                case "wait": if (op == Op.GridDepWait) continue; break;
                case "launch_dependents": if (op == Op.GridDepWait) { ins.Op = Op.GridDepLaunch; continue; } break;
                case "warp": if (op == Op.Bar) { ins.Op = Op.BarWarp; continue; } break;
                case "arrive": if (op == Op.Bar) { ins.Op = Op.BarArrive; continue; } break;
                case "red": if (op == Op.Bar) { ins.Op = Op.BarRed; continue; } break;
                case "popc": if (ins.Op == Op.BarRed) { ins.Mode = m; continue; } break;
                case "shiftamt": ins.Mode = m; continue;
                case "l": case "r": if (op == Op.Shf) { ins.Mode = m; continue; } break;
                case "wrap": case "clamp": if (op == Op.Shf) { ins.Mode2 = m; continue; } break;
                case "up": case "down": case "bfly": case "idx": if (op == Op.Shfl) { ins.Mode = m; continue; } break;
                case "all": case "any": case "ballot":
                    if (op is Op.Vote or Op.Match) { ins.Mode = m; continue; }
                    break;
                case "f4e": case "b4e": case "rc8": case "ecl": case "ecr": case "rc16": if (op == Op.Prmt) { ins.Mode = m; continue; } break;
                case "finite": case "infinite": case "number": case "notanumber": case "normal": case "subnormal":
                    if (op == Op.Testp) { ins.Mode = m; continue; }
                    break;
            }
            if (op == Op.Vote && m == "uni") { ins.Mode = m; continue; }
            if (op == Op.Setp && Cmps.Contains(m) && ins.Mode == "") { ins.Mode = m; continue; }
            if (op == Op.Setp && m is "and" or "or" or "xor") { ins.Mode2 = m; continue; }
            if (op is Op.Atom or Op.Red or Op.Redux or Op.BarRed && AtomOps.Contains(m)) { ins.Mode = m; continue; }
            if (ins.Op == Op.BarRed && m is "and" or "or") { ins.Mode = m; continue; }
            if (op == Op.Prefetch && m == "L2::evict_last") { ins.Mode = m; continue; }
            if (op == Op.Membar || Ignored.Contains(m) || m.StartsWith("L2::", StringComparison.Ordinal) || m.StartsWith("L1::", StringComparison.Ordinal)) continue;
            throw err($"unsupported modifier '.{m}' in '{opcode}'");
        }
        if (op == Op.GridDepWait && parts.Length != 2) throw err($"'{opcode}': griddepcontrol takes exactly one of .wait and .launch_dependents");
        if (op == Op.PmEvent && (parts.Length != 1 || ops.Count != 1 || ops[0].Kind != OpKind.Imm || ops[0].Imm is < 0 or > 15))
            throw err($"'{opcode}': only 'pmevent N;' with N an immediate 0..15 is supported (pmevent {Warp.TailEvent} marks a launch's tail, {Warp.StreamEvent} where a CTA's weight stream begins: docs/emulator.md)");
        if (types.Count > 0) ins.T = types[0];
        if (types.Count > 1) ins.T2 = types[1];
        if (types.Count > 2) ins.T3 = types[^1];
        if (op == Op.Mma) { ins.T = types[0]; ins.T2 = types[1]; ins.T3 = types[^1]; }
        Validate(ins, opcode, ops, err);
        Warp.Classify(ins);
        // 0f literals used by f64 instructions are widened; 0d literals used by f32 instructions narrowed
        foreach (var o in ops)
        {
            if (o.Kind != OpKind.Imm || o.RegBits == 0) continue;
            var ft = ins.Op == Op.Cvt ? ins.T2 : ins.T;
            if (o.RegBits == 32 && ft == PtxType.F64) o.Imm = BitConverter.DoubleToUInt64Bits(BitConverter.UInt32BitsToSingle((uint)o.Imm));
            else if (o.RegBits == 64 && ft == PtxType.F32) o.Imm = BitConverter.SingleToUInt32Bits((float)BitConverter.UInt64BitsToDouble(o.Imm));
        }
        Warp.PrepareFast(ins);
    }

    private static void Validate(Instr ins, string opcode, List<Operand> ops, Func<string, Exception> err)
    {
        int n = ops.Count;
        (int Min, int Max) want = ins.Op switch
        {
            Op.Add or Op.Sub or Op.Mul or Op.Div or Op.Rem or Op.Min or Op.Max or Op.And or Op.Or or Op.Xor or Op.Shl or Op.Shr
                or Op.Copysign or Op.Mul24 => (3, 3),
            Op.Mad or Op.Fma or Op.Selp or Op.Bfe or Op.Prmt or Op.Dp4a or Op.Dp2a or Op.Sad or Op.Slct or Op.Mad24 or Op.Shf => (4, 4),
            Op.Abs or Op.Neg or Op.Mov or Op.Not or Op.Cnot or Op.Cvta or Op.Popc or Op.Clz or Op.Brev or Op.Bfind
                or Op.Rcp or Op.Sqrt or Op.Rsqrt or Op.Ex2 or Op.Lg2 or Op.Sin or Op.Cos or Op.Tanh or Op.Testp => (2, 2),
            Op.Ld or Op.St => (2, 2),
            Op.Cvt => (2, 3),
            Op.Setp => (3, 4),
            Op.Bfi => (5, 5),
            Op.Lop3 => (5, 5),
            Op.Bra or Op.Ret or Op.Exit or Op.Trap or Op.Membar or Op.CpAsyncCommit or Op.CpAsyncWaitAll or Op.Brkpt or Op.Nop
                or Op.GridDepWait or Op.GridDepLaunch => (0, 0),
            Op.Call => (1, 3),
            Op.Bar or Op.BarArrive => (1, 2),
            Op.BarRed => (3, 4),
            Op.BarWarp or Op.Nanosleep or Op.CpAsyncWait or Op.Activemask => (1, 1),
            Op.Shfl => (4, 5),
            Op.Vote or Op.Match or Op.Redux => (3, 3),
            Op.Atom => (3, 4),
            Op.Red => (2, 2),
            Op.Mma => (4, 4),
            Op.Ldmatrix => (2, 2),
            Op.CpAsync => (3, 4),
            Op.Prefetch or Op.PmEvent => (1, 1),
            Op.Isspacep => (2, 2),
            _ => (0, 8),
        };
        if (n < want.Min || n > want.Max) throw err($"'{opcode}' takes {want.Min}{(want.Max != want.Min ? "-" + want.Max : "")} operands, found {n}");
        bool needsType = ins.Op is not (Op.Bra or Op.Ret or Op.Exit or Op.Call or Op.Bar or Op.BarArrive or Op.BarRed or Op.BarWarp
            or Op.Membar or Op.Trap or Op.CpAsync or Op.CpAsyncCommit or Op.CpAsyncWait or Op.CpAsyncWaitAll or Op.Nanosleep
            or Op.Prefetch or Op.Brkpt or Op.Nop or Op.Isspacep or Op.Activemask or Op.GridDepWait or Op.GridDepLaunch or Op.PmEvent);
        if (needsType && ins.T == PtxType.None && ins.Op != Op.Vote) throw err($"'{opcode}' has no type");
        if (ins.Op == Op.Cvt && ins.T2 == PtxType.None) throw err($"'{opcode}' needs a destination and a source type");
        if (ins.Op == Op.Mma && ins.Shape == 0) throw err($"'{opcode}': only m16n8k16 and m16n8k8 are supported");
        if (ins.Op == Op.Mma && (ins.T != PtxType.F32 || ins.T3 != PtxType.F32 || ins.T2 is not (PtxType.BF16 or PtxType.F16)))
            throw err($"'{opcode}': only f32 accumulate with bf16 or f16 inputs is supported");
        if (ins.Op == Op.Ldmatrix && ins.Shape == 0) throw err($"'{opcode}' needs .x1, .x2 or .x4");
        if (ins.Op is Op.Mma or Op.Ldmatrix or Op.Bar) ins.Aligned = true;
        if (ins.Op is Op.Shfl && ins.Mode == "") throw err($"'{opcode}' needs a mode");
        if (ins.Op is Op.Atom or Op.Red && ins.Mode == "") throw err($"'{opcode}' needs an operation");
        if (ins.Op == Op.Setp && ins.Mode == "") throw err($"'{opcode}' needs a comparison");
        if (ins.Op == Op.Ld && ops[1].Kind != OpKind.Addr) throw err($"'{opcode}' needs an address operand");
        if (ins.Op == Op.St && ops[0].Kind != OpKind.Addr) throw err($"'{opcode}' needs an address operand");
    }
}
