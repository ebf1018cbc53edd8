using System.Globalization;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Recursive-descent parser for the PTX that NVRTC 11.8 emits (docs/emulator.md).
/// Registers are resolved to slots while parsing (inline-asm <c>{ }</c> scopes shadow), labels after
/// each function; <see cref="InstrDecoder"/> turns opcode strings into <see cref="Instr"/> fields.
/// </summary>
internal sealed partial class PtxParser
{
    private readonly List<Token> _t;
    private int _p;
    private readonly PtxModule _m = new();
    private readonly Dictionary<string, PtxSymbol> _moduleSyms = new(StringComparer.Ordinal);
    private int _curFile, _curSrcLine;

    // per-function state
    private PtxFunction? _fn;
    private List<Dictionary<string, (bool IsPred, int Index, int Bits)>> _scopes = [];
    private Dictionary<string, PtxSymbol> _fnSyms = new(StringComparer.Ordinal);
    private Dictionary<string, int> _labels = new(StringComparer.Ordinal);
    private List<(Instr Instr, string Label, int Line)> _pendingLabels = [];
    private List<(Instr Instr, string Callee)> _pendingCalls = [];
    private List<Instr> _code = [];

    private PtxParser(string ptx) => _t = PtxLexer.Tokenize(ptx);

    // Parsed modules by PTX text, shared between loads (ParseShared). A test run loads the same few dozen modules
    // into a new device again and again; the parse and its analyses (register liveness above all) were a quarter of
    // the CPU time of a device-model test.
    private static readonly Dictionary<string, PtxModule> SharedModules = new(StringComparer.Ordinal);
    private static long _sharedChars;
    private const long SharedCharsLimit = 32L << 20;

    /// <summary>
    /// <see cref="Parse"/>, shared between loads of the same PTX text when the module can be: a parsed module is a
    /// pure function of its text and nothing mutates it while kernels run, except the addresses of its device-scope
    /// globals, which each load allocates. So a module with globals is parsed afresh on every load. The load's
    /// shared-memory offsets and flags (EmulatedDevice.LoadModule) are recomputed to the same values each time.
    /// Parse errors are not cached. Bounded: past 32 Mi characters of PTX the cache starts over.
    /// </summary>
    public static PtxModule ParseShared(string ptx)
    {
        lock (SharedModules)
            if (SharedModules.TryGetValue(ptx, out var hit)) return hit;
        var m = Parse(ptx);
        if (m.Globals.Count > 0) return m;
        lock (SharedModules)
        {
            if (SharedModules.TryGetValue(ptx, out var raced)) return raced;
            if (_sharedChars + ptx.Length > SharedCharsLimit) { SharedModules.Clear(); _sharedChars = 0; }
            SharedModules[ptx] = m;
            _sharedChars += ptx.Length;
        }
        return m;
    }

    /// <param name="ptx">The module's PTX text.</param>
    /// <param name="compactRegisters">Share register slots between registers whose live ranges never overlap
    /// (<see cref="RegisterCompaction"/>); off only to compare the two in tests.</param>
    public static PtxModule Parse(string ptx, bool compactRegisters = true)
    {
        var p = new PtxParser(ptx);
        p.ParseModule();
        ResolveCalls(p._m, p);
        RebaseRegisters(p._m);
        // the round-trip analysis reads registers as declared; it only marks instructions
        foreach (var f in p._m.Functions.Values) RoundTripAnalysis.Mark(f, p._m.TotalRegs);
        if (compactRegisters && !p._m.HasFunctions)
        {
            var renamed = new HashSet<Operand>(ReferenceEqualityComparer.Instance);
            p._m.TotalRegs = p._m.Entries.Select(f => RegisterCompaction.Compact(f, renamed)).DefaultIfEmpty(0).Max();
        }
        foreach (var f in p._m.Entries) f.LiveInRows = RegisterLiveness.LiveIn(f);
        return p._m;
    }

    /// <summary>
    /// Gives every .func its own register slots after the largest entry's, so a callee never clobbers its
    /// caller (entries start at slot 0: one warp runs one entry). Sets the module's register totals.
    /// </summary>
    private static void RebaseRegisters(PtxModule m)
    {
        int regBase = m.Entries.Select(f => f.NumRegs).DefaultIfEmpty(0).Max();
        int predBase = m.Entries.Select(f => f.NumPreds).DefaultIfEmpty(0).Max();
        foreach (var f in m.Functions.Values.Where(f => !f.IsEntry && !f.IsExtern))
        {
            foreach (var ins in f.Code)
            {
                if (ins.GuardPred >= 0) ins.GuardPred += predBase;
                foreach (var o in ins.Ops) Rebase(o, regBase, predBase);
                Warp.PrepareFast(ins); // its operand rows moved
            }
            regBase += f.NumRegs;
            predBase += f.NumPreds;
        }
        m.HasFunctions = m.Functions.Values.Any(f => !f.IsEntry && !f.IsExtern);
        m.TotalRegs = regBase;
        m.TotalPreds = predBase;
    }

    private static void Rebase(Operand o, int regBase, int predBase)
    {
        if (o.Kind == OpKind.Pred) o.Reg += predBase;
        else if (o.Kind is OpKind.Reg || (o.Kind == OpKind.Addr && o.Reg >= 0)) o.Reg += regBase;
        if (o.PairPred >= 0) o.PairPred += predBase;
        foreach (var e in o.Elems) Rebase(e, regBase, predBase);
    }

    private Token Peek(int k = 0) => _t[Math.Min(_p + k, _t.Count - 1)];
    private Token Next() => _t[Math.Min(_p++, _t.Count - 1)];

    private PtxLoadException Err(string msg, Token? at = null) =>
        new($"PTX line {(at ?? Peek()).Line}: {msg} (at '{(at ?? Peek()).Text}')");

    private void Expect(string punct)
    {
        var t = Next();
        if (!t.Is(punct)) throw Err($"expected '{punct}'", t);
    }

    private bool Accept(string punct)
    {
        if (Peek().Is(punct)) { _p++; return true; }
        return false;
    }

    private string Ident()
    {
        var t = Next();
        if (t.Kind != TokKind.Ident) throw Err("expected a name", t);
        return t.Text;
    }

    private long Integer()
    {
        bool neg = Accept("-");
        var t = Next();
        if (t.Kind != TokKind.Number) throw Err("expected an integer", t);
        long v = (long)ParseUnsigned(t);
        return neg ? -v : v;
    }

    private ulong ParseUnsigned(Token t)
    {
        string s = t.Text.TrimEnd('U', 'u');
        try
        {
            if (s.StartsWith("0x", StringComparison.OrdinalIgnoreCase)) return ulong.Parse(s[2..], NumberStyles.HexNumber, CultureInfo.InvariantCulture);
            if (s.Contains('.') || s.Contains('e') || s.Contains('E'))
                return BitConverter.DoubleToUInt64Bits(double.Parse(s, CultureInfo.InvariantCulture));
            if (s.Length > 1 && s[0] == '0' && s.All(char.IsDigit)) return Convert.ToUInt64(s, 8);
            return ulong.Parse(s, CultureInfo.InvariantCulture);
        }
        catch (FormatException) { throw Err("bad number", t); }
        catch (OverflowException) { throw Err("number out of range", t); }
    }

    private void ParseModule()
    {
        while (Peek().Kind != TokKind.End)
        {
            var t = Peek();
            if (t.Kind != TokKind.Ident) throw Err("unexpected token at module scope");
            switch (t.Text)
            {
                case ".version":
                    _p++; _m.Version = Next().Text;
                    if (!_m.Version.StartsWith("7.", StringComparison.Ordinal) && !_m.Version.StartsWith("8.", StringComparison.Ordinal))
                        throw Err($"PTX version {_m.Version} is not supported (7.x or 8.x)", t);
                    break;
                case ".target":
                    _p++; _m.Target = Ident();
                    while (Accept(",")) Ident();
                    if (!_m.Target.StartsWith("sm_", StringComparison.Ordinal)) throw Err($"target {_m.Target} is not supported", t);
                    break;
                case ".address_size":
                    _p++;
                    if (Integer() != 64) throw Err("only .address_size 64 is supported", t);
                    break;
                case ".file": ParseFile(); break;
                case ".loc": ParseLoc(); break;
                case ".section": SkipSection(); break;
                case ".pragma": _p++; Next(); Expect(";"); break;
                default: ParseModuleDecl(); break;
            }
        }
        foreach (var f in _m.Functions.Values)
            if (f.IsExtern && f.Name != "vprintf")
                throw new PtxLoadException($"PTX line {f.PtxLine}: .extern .func {f.Name} is not provided by the emulator (only vprintf is)");
    }

    private void ParseFile()
    {
        var at = Next();
        int id = (int)Integer();
        var name = Next();
        if (name.Kind != TokKind.String) throw Err("expected a file name", name);
        _m.Files[id] = name.Text;
        while (Accept(",")) Integer();
        _ = at;
    }

    private void ParseLoc()
    {
        _p++;
        _curFile = (int)Integer();
        _curSrcLine = (int)Integer();
        Integer();
        // optional ", function_name X, inlined_at a b c"
        while (Peek().Is(","))
        {
            _p++;
            var k = Ident();
            if (k == "function_name") Ident();
            else if (k == "inlined_at") { Integer(); Integer(); Integer(); }
            else throw Err($"unknown .loc attribute {k}");
        }
    }

    private void SkipSection()
    {
        _p++;
        Ident();
        Expect("{");
        int depth = 1;
        while (depth > 0)
        {
            var t = Next();
            if (t.Kind == TokKind.End) throw Err("unterminated .section", t);
            if (t.Is("{")) depth++;
            else if (t.Is("}")) depth--;
        }
    }

    private void ParseModuleDecl()
    {
        bool isExtern = false;
        while (Peek().Text is ".visible" or ".extern" or ".weak" or ".common")
            if (Next().Text == ".extern") isExtern = true;
        var kw = Peek();
        switch (kw.Text)
        {
            case ".entry": ParseFunction(isEntry: true, isExtern); break;
            case ".func": ParseFunction(isEntry: false, isExtern); break;
            case ".global": case ".const": case ".shared":
                {
                    var sym = ParseVarDecl(null, isExtern);
                    Expect(";");
                    if (_moduleSyms.ContainsKey(sym.Name)) throw Err($"duplicate symbol {sym.Name}", kw);
                    _moduleSyms[sym.Name] = sym;
                    if (sym.Space == Space.Shared) { if (!sym.IsExternShared) _m.ModuleShared.Add(sym); }
                    else _m.Globals.Add(sym);
                    break;
                }
            default: throw Err($"unknown module-level directive {kw.Text}", kw);
        }
    }

    /// <summary>Parses <c>.space [.align N] [.vN] .type name[[size]] [= init]</c> (no trailing ';').</summary>
    private PtxSymbol ParseVarDecl(PtxFunction? owner, bool isExtern)
    {
        var spaceTok = Next();
        Space space = spaceTok.Text switch
        {
            ".global" => Space.Global, ".const" => Space.Const, ".shared" => Space.Shared,
            ".local" => Space.Local, ".param" => Space.Param,
            _ => throw Err("expected a state space", spaceTok),
        };
        int align = 0, vec = 1;
        PtxType type = PtxType.None;
        while (Peek().Kind == TokKind.Ident && Peek().Text.StartsWith('.'))
        {
            var d = Next().Text;
            if (d == ".align") align = (int)Integer();
            else if (d == ".v2") vec = 2;
            else if (d == ".v4") vec = 4;
            else if (d.StartsWith(".ptr", StringComparison.Ordinal) || d is ".shared::cta") { }
            else type = PtxTypes.Parse(d[1..]) ?? throw Err($"unknown type {d}");
        }
        string name = Ident();
        int elem = PtxTypes.Size(type) * vec;
        long count = 1;
        bool unsized = false;
        if (Accept("["))
        {
            if (Accept("]")) unsized = true;
            else { count = Integer(); Expect("]"); }
        }
        var sym = new PtxSymbol
        {
            Name = name, Space = space, Size = elem * count, Align = align == 0 ? Math.Max(elem, 1) : align,
            IsExternShared = space == Space.Shared && (isExtern || unsized), Owner = owner,
        };
        if (Accept("="))
        {
            var bytes = new List<byte>();
            void AddValue()
            {
                ulong v;
                if (Peek().Kind == TokKind.FloatBits) v = FloatBits(Next(), type);
                else v = (ulong)Integer();
                for (int i = 0; i < elem / vec; i++) bytes.Add((byte)(v >> (8 * i)));
            }
            if (Accept("{"))
            {
                int depth = 1;
                while (depth > 0)
                {
                    if (Accept("{")) { depth++; continue; }
                    if (Accept("}")) { depth--; continue; }
                    if (Accept(",")) continue;
                    AddValue();
                }
            }
            else AddValue();
            var init = new byte[sym.Size];
            bytes.Take(init.Length).ToArray().CopyTo(init, 0);
            sym.Init = init;
        }
        return sym;
    }

    private ulong FloatBits(Token t, PtxType type)
    {
        string hex = t.Text[2..];
        ulong bits = ulong.Parse(hex, NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        bool isF = t.Text[1] is 'f' or 'F';
        if (isF && type == PtxType.F64) return BitConverter.DoubleToUInt64Bits(BitConverter.UInt32BitsToSingle((uint)bits));
        if (!isF && type == PtxType.F32) return BitConverter.SingleToUInt32Bits((float)BitConverter.UInt64BitsToDouble(bits));
        return bits;
    }

    private void ParseFunction(bool isEntry, bool isExtern)
    {
        var kw = Next();
        var retParams = new List<PtxSymbol>();
        if (!isEntry && Peek().Is("("))
        {
            _p++;
            while (!Accept(")")) { retParams.Add(ParseVarDecl(null, false)); Accept(","); }
        }
        string name = Ident();
        var fn = new PtxFunction { Name = name, IsEntry = isEntry, PtxLine = kw.Line };
        fn.RetParams.AddRange(retParams);
        if (Accept("("))
            while (!Accept(")")) { fn.Params.Add(ParseVarDecl(fn, false)); Accept(","); }
        while (Peek().Kind == TokKind.Ident && Peek().Text is ".maxntid" or ".reqntid" or ".minnctapersm" or ".maxnreg" or ".noreturn" or ".maxclusterrank" or ".reqnctapercluster")
        {
            var d = Next().Text;
            if (d == ".noreturn") continue;
            long prod = Integer();
            while (Accept(",")) prod *= Integer();
            if (d is ".maxntid" or ".reqntid") fn.MaxNtid = (int)prod;
        }
        if (_m.Functions.TryGetValue(name, out var prior) && !prior.IsExtern && !Peek().Is(";"))
            throw Err($"duplicate function {name}", kw);
        if (Accept(";"))
        {
            // a prototype (declaration only)
            fn.IsExtern = isExtern;
            if (!_m.Functions.ContainsKey(name)) _m.Functions[name] = fn;
            return;
        }
        _m.Functions[name] = fn;
        if (isEntry) LayoutParams(fn, retParams);
        else
            foreach (var p in fn.Params.Concat(retParams)) { p.InFrame = true; p.Offset = AllocFrame(fn, p.Size, p.Align); }
        ParseBody(fn);
    }

    private static void LayoutParams(PtxFunction fn, List<PtxSymbol> retParams)
    {
        long off = 0;
        foreach (var p in fn.Params.Concat(retParams))
        {
            off = (off + p.Align - 1) / p.Align * p.Align;
            p.Offset = off;
            off += p.Size;
        }
        fn.ParamBytes = (int)off;
    }

    private int AllocFrame(PtxFunction fn, long size, int align)
    {
        long off = ((long)fn.FrameBytes + align - 1) / align * align;
        fn.FrameBytes = (int)(off + size);
        return (int)off;
    }
}
