namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>PTX scalar types. Sizes in bytes via <see cref="PtxTypes.Size"/>.</summary>
internal enum PtxType : byte
{
    None, B8, B16, B32, B64, B128, U8, U16, U32, U64, S8, S16, S32, S64, F16, F16x2, BF16, BF16x2, F32, F64, Pred, TF32,
}

internal static class PtxTypes
{
    public static PtxType? Parse(string s) => s switch
    {
        "b8" => PtxType.B8, "b16" => PtxType.B16, "b32" => PtxType.B32, "b64" => PtxType.B64, "b128" => PtxType.B128,
        "u8" => PtxType.U8, "u16" => PtxType.U16, "u32" => PtxType.U32, "u64" => PtxType.U64,
        "s8" => PtxType.S8, "s16" => PtxType.S16, "s32" => PtxType.S32, "s64" => PtxType.S64,
        "f16" => PtxType.F16, "f16x2" => PtxType.F16x2, "bf16" => PtxType.BF16, "bf16x2" => PtxType.BF16x2,
        "f32" => PtxType.F32, "f64" => PtxType.F64, "pred" => PtxType.Pred, "tf32" => PtxType.TF32,
        _ => null,
    };

    // sizes in bytes indexed by PtxType (the switch below is the definition; the table is built from it)
    private static readonly byte[] Sizes = Enumerable.Range(0, (int)PtxType.TF32 + 1).Select(i => (byte)SizeOf((PtxType)i)).ToArray();

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public static int Size(PtxType t) => (uint)t < (uint)Sizes.Length ? Sizes[(int)t] : 0;

    private static int SizeOf(PtxType t) => t switch
    {
        PtxType.B8 or PtxType.U8 or PtxType.S8 => 1,
        PtxType.B16 or PtxType.U16 or PtxType.S16 or PtxType.F16 or PtxType.BF16 => 2,
        PtxType.B32 or PtxType.U32 or PtxType.S32 or PtxType.F32 or PtxType.F16x2 or PtxType.BF16x2 or PtxType.TF32 => 4,
        PtxType.B64 or PtxType.U64 or PtxType.S64 or PtxType.F64 => 8,
        PtxType.B128 => 16,
        PtxType.Pred => 1,
        _ => 0,
    };

    public static bool IsSigned(PtxType t) => t is PtxType.S8 or PtxType.S16 or PtxType.S32 or PtxType.S64;
    public static bool IsFloat(PtxType t) => t is PtxType.F16 or PtxType.F16x2 or PtxType.BF16 or PtxType.BF16x2 or PtxType.F32 or PtxType.F64 or PtxType.TF32;
}

internal enum Space : byte { Generic, Global, Shared, Local, Param, Const }

internal enum SpecialReg : byte
{
    TidX, TidY, TidZ, NtidX, NtidY, NtidZ, CtaidX, CtaidY, CtaidZ, NctaidX, NctaidY, NctaidZ,
    LaneId, WarpId, NWarpId, SmId, NSmId, GridId, LanemaskEq, LanemaskLe, LanemaskLt, LanemaskGe, LanemaskGt,
    Clock, ClockHi, Clock64, GlobalTimer, GlobalTimerLo, GlobalTimerHi, DynamicSmemSize, TotalSmemSize,
}

internal enum OpKind : byte { None, Reg, Pred, Imm, Special, Vec, Addr, Sym, Label, Sink, List }

/// <summary>A resolved operand. Registers are slots in the warp register file; predicates are indices of lane masks.</summary>
internal sealed class Operand
{
    public OpKind Kind;
    /// <summary>Negated predicate (<c>!%p</c>).</summary>
    public bool Neg;
    /// <summary>Register slot (Reg, Addr base; -1 for none) or predicate index (Pred).</summary>
    public int Reg = -1;
    /// <summary>Width of the register in bits (16, 32, 64).</summary>
    public int RegBits;
    public ulong Imm;
    public SpecialReg Special;
    public Operand[] Elems = [];
    public PtxSymbol? Sym;
    public long Offset;
    public string Name = "";
    /// <summary>Second destination of <c>%r|%p</c> (predicate index), or -1.</summary>
    public int PairPred = -1;

    public override string ToString() => Name;
}

/// <summary>A variable in a state space: module-scope global/const/shared, a function's shared/local/param.</summary>
internal sealed class PtxSymbol
{
    public required string Name { get; init; }
    public required Space Space { get; init; }
    public long Size { get; set; }
    public int Align { get; set; } = 1;
    public byte[]? Init { get; set; }
    public bool IsExternShared { get; init; }
    /// <summary>Offset in its window: shared offset, local-frame offset, param offset.</summary>
    public long Offset { get; set; }
    /// <summary>Device address of a global/const variable once the module is loaded.</summary>
    public ulong Address { get; set; }
    /// <summary>The function that declared it (null at module scope).</summary>
    public PtxFunction? Owner { get; init; }
    /// <summary>Lives in the per-thread call frame (a .func's params, call-sequence .param vars, .local vars).</summary>
    public bool InFrame { get; set; }
    public override string ToString() => Name;
}

internal enum Op : byte
{
    Nop, Add, Sub, Mul, Mad, Fma, Div, Rem, Abs, Neg, Min, Max, Mov, Ld, St, Cvt, Cvta, Setp, Selp, And, Or, Xor, Not, Cnot,
    Shl, Shr, Shf, Bra, Ret, Exit, Call, Bar, BarArrive, BarRed, BarWarp, Membar, Shfl, Vote, Match, Redux, Activemask,
    Atom, Red, Popc, Clz, Brev, Bfe, Bfi, Bfind, Prmt, Lop3, Dp4a, Dp2a, Rcp, Sqrt, Rsqrt, Ex2, Lg2, Sin, Cos, Tanh,
    Mma, Ldmatrix, CpAsync, CpAsyncCommit, CpAsyncWait, CpAsyncWaitAll, Nanosleep, Trap, Copysign, Testp, Mul24, Mad24,
    Sad, Slct, Prefetch, Isspacep, Brkpt, Mul64Hi, GridDepWait, GridDepLaunch, PmEvent,
}

/// <summary>Rounding modifier.</summary>
internal enum Rnd : byte { None, Rn, Rz, Rm, Rp, Rna, Rni, Rzi, Rmi, Rpi }

/// <summary>One pre-decoded PTX instruction.</summary>
internal sealed class Instr
{
    public Op Op;
    public PtxType T, T2, T3;
    public Rnd Rnd;
    public bool Ftz, Sat, Approx, Full, Uni, Wide, Hi, Relu, NanMode, Trans, Nc, Volatile, Aligned;
    public Space Space;
    public int Vec = 1;
    /// <summary>Sub-mode: compare op for setp, atomic op, shuffle mode, vote mode, bool combiner, shf direction.</summary>
    public string Mode = "";
    public string Mode2 = "";
    public int GuardPred = -1;
    public bool GuardNeg;
    public Operand[] Ops = [];
    public int Target = -1;
    public PtxFunction? Callee;
    public FastKind Fast;
    /// <summary>Fast-path argument: the comparison of a classified setp (<see cref="IntCmp"/>).</summary>
    public IntCmp FastCmp;
    /// <summary>Fast-path operands (<see cref="Warp.PrepareFast"/>): register rows (slot·32), -1 for an immediate (then FImm*).</summary>
    public int FD = -1, FA = -1, FB = -1, FC = -1;
    public ulong FImmA, FImmB, FImmC;
    /// <summary>Highest register row + 32 over the fast operands (checked against the register file once per instruction).</summary>
    public int FRowsEnd;
    /// <summary>Classified and unguarded: a converged warp runs it through <see cref="Warp.ExecFast"/> directly.</summary>
    public bool FastGo;
    public int Shape; // mma: k (8/16); ldmatrix: number of matrices
    /// <summary>A global load that starts a new dependent memory round trip (<see cref="RoundTripAnalysis"/>).</summary>
    public bool RoundTripStart;
    /// <summary>An <c>atom</c> whose result register no instruction of its function reads: ptxas issues it as a <c>red</c>,
    /// which nothing waits for, so it starts no round trip (<see cref="RoundTripAnalysis"/>).</summary>
    public bool ResultUnused;
    /// <summary>Runs on the special-function unit (MUFU: rcp, sqrt, rsqrt, ex2, lg2, sin, cos, tanh).</summary>
    public bool IsSpecialFunction => Op is Op.Rcp or Op.Sqrt or Op.Rsqrt or Op.Ex2 or Op.Lg2 or Op.Sin or Op.Cos or Op.Tanh;
    public int PtxLine;
    public int SrcFile, SrcLine;
    public string Text = "";

    public bool IsCollective => Op is Op.Bar or Op.BarRed or Op.Shfl or Op.Vote or Op.Match or Op.Redux or Op.BarWarp or Op.Mma or Op.Ldmatrix;
    public override string ToString() => Text;
}

/// <summary>A parsed .entry or .func.</summary>
internal sealed class PtxFunction
{
    public required string Name { get; init; }
    public bool IsEntry { get; init; }
    public bool IsExtern { get; set; }
    public List<PtxSymbol> Params { get; } = [];
    public List<PtxSymbol> RetParams { get; } = [];
    public Instr[] Code { get; set; } = [];
    public List<int> RegBits { get; } = [];
    public int NumPreds { get; set; }
    public int NumRegs => RegBits.Count;
    /// <summary>Shared bytes declared inside the function (demoted statics).</summary>
    public List<PtxSymbol> SharedVars { get; } = [];
    /// <summary>Per-thread frame: .local vars, inner .param vars (call sequences), own params for .func.</summary>
    public int FrameBytes { get; set; }
    public int ParamBytes { get; set; }
    public int MaxNtid { get; set; }
    /// <summary>Entry only: registers that may be read before written (<see cref="RegisterLiveness"/>); the rows a warp must clear.</summary>
    public int[] LiveInRows { get; set; } = [];
    public int DeclaredRegisters { get; set; }
    public int StaticSharedBytes { get; set; }
    public int DynamicSharedAlign { get; set; } = 16;
    /// <summary>Entry only: the kernel (or a function of its module) executes griddepcontrol.wait (programmatic dependent launch).</summary>
    public bool HasGridDepWait { get; set; }
    public int PtxLine { get; init; }
    public override string ToString() => Name;
}

/// <summary>A parsed PTX module.</summary>
internal sealed class PtxModule
{
    public string Version { get; set; } = "";
    public string Target { get; set; } = "";
    public Dictionary<string, PtxFunction> Functions { get; } = new(StringComparer.Ordinal);
    public List<PtxSymbol> Globals { get; } = [];
    public List<PtxSymbol> ModuleShared { get; } = [];
    public Dictionary<int, string> Files { get; } = [];
    /// <summary>Register slots and predicates a warp needs: the largest entry plus every .func (see PtxParser.RebaseRegisters).</summary>
    public int TotalRegs { get; set; }
    public int TotalPreds { get; set; }
    /// <summary>True when the module has .func bodies (their registers live above every entry's).</summary>
    public bool HasFunctions { get; set; }
    public IEnumerable<PtxFunction> Entries => Functions.Values.Where(f => f.IsEntry);
}

/// <summary>PTX that the emulator cannot load: names the PTX line.</summary>
public sealed class PtxLoadException(string message) : DeviceException(message);
