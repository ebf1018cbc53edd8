namespace Qwen3Cuda.Runtime.Emulation;

internal sealed partial class PtxParser
{
    private void ParseBody(PtxFunction fn)
    {
        _fn = fn;
        _scopes = [new()];
        _fnSyms = new(StringComparer.Ordinal);
        foreach (var p in fn.Params.Concat(fn.RetParams)) _fnSyms[p.Name] = p;
        _labels = new(StringComparer.Ordinal);
        _pendingLabels = [];
        _pendingCalls = [];
        _code = [];
        Expect("{");
        int depth = 1;
        while (depth > 0)
        {
            var t = Peek();
            if (t.Kind == TokKind.End) throw Err($"function {fn.Name} is not closed");
            if (t.Is("{")) { _p++; depth++; _scopes.Add(new()); continue; }
            if (t.Is("}")) { _p++; depth--; _scopes.RemoveAt(_scopes.Count - 1); continue; }
            if (t.Kind == TokKind.Ident && Peek(1).Is(":") && !t.Text.StartsWith('.'))
            {
                _p += 2;
                if (_labels.ContainsKey(t.Text)) throw Err($"duplicate label {t.Text}", t);
                _labels[t.Text] = _code.Count;
                continue;
            }
            switch (t.Text)
            {
                case ".loc": ParseLoc(); continue;
                case ".pragma": _p++; Next(); Expect(";"); continue;
                case ".reg": ParseRegDecl(); continue;
                case ".local": case ".shared": case ".param": case ".global": case ".const":
                    {
                        var sym = ParseVarDecl(fn, false);
                        Expect(";");
                        if (sym.Space is Space.Local or Space.Param)
                        {
                            sym.InFrame = true;
                            sym.Offset = AllocFrame(fn, sym.Size, sym.Align);
                        }
                        else if (sym.Space == Space.Shared) fn.SharedVars.Add(sym);
                        else _m.Globals.Add(sym);
                        _fnSyms[sym.Name] = sym;
                        continue;
                    }
            }
            ParseInstruction();
        }
        // resolve branch targets and calls
        foreach (var (ins, label, line) in _pendingLabels)
        {
            if (!_labels.TryGetValue(label, out int target)) throw new PtxLoadException($"PTX line {line}: unknown label {label}");
            ins.Target = target;
        }
        fn.Code = [.. _code, new Instr { Op = Op.Ret, Text = "ret (implicit end of function)", PtxLine = _t[_p - 1].Line }];
        foreach (var (ins, callee) in _pendingCalls) _callFixups.Add((ins, callee));
        fn.DeclaredRegisters = fn.NumRegs;
        _fn = null;
    }

    private readonly List<(Instr Instr, string Callee)> _callFixups = [];

    /// <summary>Resolves call targets after all functions are parsed (called by the loader).</summary>
    internal static void ResolveCalls(PtxModule m, PtxParser p)
    {
        foreach (var (ins, callee) in p._callFixups)
        {
            if (!m.Functions.TryGetValue(callee, out var f)) throw new PtxLoadException($"PTX line {ins.PtxLine}: call to unknown function {callee}");
            ins.Callee = f;
        }
    }

    private void ParseRegDecl()
    {
        _p++;
        var typeTok = Next();
        int vec = 1;
        if (typeTok.Text is ".v2" or ".v4") { vec = typeTok.Text == ".v2" ? 2 : 4; typeTok = Next(); }
        var type = PtxTypes.Parse(typeTok.Text.TrimStart('.')) ?? throw Err($"unknown register type {typeTok.Text}", typeTok);
        bool isPred = type == PtxType.Pred;
        int bits = Math.Max(PtxTypes.Size(type) * 8, 16);
        if (vec != 1) throw Err("vector registers are not supported", typeTok);
        do
        {
            string name = Ident();
            if (Accept("<"))
            {
                long n = Integer();
                Expect(">");
                for (int i = 0; i < n; i++) DeclareReg(name + i.ToString(System.Globalization.CultureInfo.InvariantCulture), isPred, bits);
            }
            else DeclareReg(name, isPred, bits);
        } while (Accept(","));
        Expect(";");
    }

    private void DeclareReg(string name, bool isPred, int bits)
    {
        var fn = _fn!;
        int idx;
        if (isPred) idx = fn.NumPreds++;
        else { idx = fn.RegBits.Count; fn.RegBits.Add(bits); }
        _scopes[^1][name] = (isPred, idx, bits);
    }

    private bool TryReg(string name, out (bool IsPred, int Index, int Bits) r)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
            if (_scopes[i].TryGetValue(name, out r)) return true;
        r = default;
        return false;
    }

    private void ParseInstruction()
    {
        var first = Peek();
        var ins = new Instr { PtxLine = first.Line, SrcFile = _curFile, SrcLine = _curSrcLine };
        if (Accept("@"))
        {
            bool neg = Accept("!");
            var pt = Next();
            if (!TryReg(pt.Text, out var pr) || !pr.IsPred) throw Err($"guard {pt.Text} is not a declared predicate", pt);
            ins.GuardPred = pr.Index;
            ins.GuardNeg = neg;
        }
        var opTok = Next();
        if (opTok.Kind != TokKind.Ident) throw Err("expected an instruction", opTok);
        var ops = new List<Operand>();
        string? label = null;
        string? callee = null;
        bool isBranch = opTok.Text == "bra" || opTok.Text.StartsWith("bra.", StringComparison.Ordinal);
        bool isCall = opTok.Text == "call" || opTok.Text.StartsWith("call.", StringComparison.Ordinal);
        while (!Peek().Is(";"))
        {
            if (Peek().Kind == TokKind.End) throw Err("missing ';'");
            if (isBranch && Peek().Kind == TokKind.Ident && !TryReg(Peek().Text, out _)) { label = Next().Text; continue; }
            if (isCall && Peek().Kind == TokKind.Ident && !TryReg(Peek().Text, out _) && !_fnSyms.ContainsKey(Peek().Text))
            {
                callee = Next().Text;
                Accept(",");
                continue;
            }
            ops.Add(ParseOperand());
            if (!Accept(",") && !Peek().Is(";") && !(isCall && Peek().Kind == TokKind.Ident)) throw Err("expected ',' or ';'");
        }
        _p++;
        ins.Ops = [.. ops];
        ins.Text = opTok.Text + " " + string.Join(", ", ops.Select(o => o.Name)) + (label != null ? " " + label : "") + (callee != null ? " " + callee : "");
        InstrDecoder.Decode(ins, opTok.Text, ops, line => Err(line, opTok));
        if (label != null) _pendingLabels.Add((ins, label, opTok.Line));
        if (callee != null) _pendingCalls.Add((ins, callee));
        if (ins.Op == Op.Bra && label == null) throw Err("branch without a label (indirect branches are not supported)", opTok);
        _code.Add(ins);
    }

    private Operand ParseOperand()
    {
        var t = Peek();
        if (t.Is("["))
        {
            _p++;
            var o = new Operand { Kind = OpKind.Addr };
            var bt = Peek();
            if (bt.Kind == TokKind.Ident)
            {
                _p++;
                if (TryReg(bt.Text, out var r))
                {
                    if (r.IsPred) throw Err("predicate used as an address", bt);
                    o.Reg = r.Index; o.RegBits = r.Bits;
                }
                else o.Sym = ResolveSym(bt);
            }
            else o.Offset = Integer();
            while (Peek().Is("+") || Peek().Is("-"))
            {
                bool minus = Next().Text == "-";
                long v = Integer();
                o.Offset += minus ? -v : v;
            }
            Expect("]");
            o.Name = $"[{bt.Text}{(o.Offset != 0 ? "+" + o.Offset : "")}]";
            return o;
        }
        if (t.Is("{") || t.Is("("))
        {
            string close = t.Is("{") ? "}" : ")";
            _p++;
            var elems = new List<Operand>();
            while (!Accept(close)) { elems.Add(ParseOperand()); Accept(","); }
            return new Operand { Kind = t.Is("{") ? OpKind.Vec : OpKind.List, Elems = [.. elems], Name = "{" + string.Join(",", elems.Select(e => e.Name)) + "}" };
        }
        if (t.Is("!"))
        {
            _p++;
            var inner = ParseOperand();
            if (inner.Kind != OpKind.Pred) throw Err("'!' applies only to predicates", t);
            inner.Neg = true;
            inner.Name = "!" + inner.Name;
            return inner;
        }
        if (t.Kind == TokKind.FloatBits)
        {
            _p++;
            ulong bits = ulong.Parse(t.Text[2..], System.Globalization.NumberStyles.HexNumber, System.Globalization.CultureInfo.InvariantCulture);
            // keep the literal's own width; the decoder converts 0f to f64 for .f64 instructions
            return new Operand { Kind = OpKind.Imm, Imm = bits, Name = t.Text, RegBits = t.Text[1] is 'f' or 'F' ? 32 : 64 };
        }
        if (t.Kind == TokKind.Number || t.Is("-"))
        {
            var start = Peek();
            long v = Integer();
            return new Operand { Kind = OpKind.Imm, Imm = (ulong)v, Name = (start.Is("-") ? "-" : "") + (start.Is("-") ? _t[_p - 1].Text : start.Text) };
        }
        if (t.Kind == TokKind.Ident)
        {
            _p++;
            if (t.Text == "_") return new Operand { Kind = OpKind.Sink, Name = "_" };
            Operand o;
            if (TryReg(t.Text, out var r))
                o = r.IsPred ? new Operand { Kind = OpKind.Pred, Reg = r.Index, Name = t.Text } : new Operand { Kind = OpKind.Reg, Reg = r.Index, RegBits = r.Bits, Name = t.Text };
            else if (SpecialRegs.TryParse(t.Text, out var sr)) o = new Operand { Kind = OpKind.Special, Special = sr, Name = t.Text, RegBits = 32 };
            else o = new Operand { Kind = OpKind.Sym, Sym = ResolveSym(t), Name = t.Text };
            if (Accept("|"))
            {
                var pt = Next();
                if (!TryReg(pt.Text, out var pr) || !pr.IsPred) throw Err($"{pt.Text} is not a predicate", pt);
                o.PairPred = pr.Index;
                o.Name += "|" + pt.Text;
            }
            return o;
        }
        throw Err("unexpected operand", t);
    }

    private PtxSymbol ResolveSym(Token t)
    {
        if (_fnSyms.TryGetValue(t.Text, out var s)) return s;
        if (_moduleSyms.TryGetValue(t.Text, out s)) return s;
        throw Err($"unknown register or symbol {t.Text}", t);
    }
}

internal static class SpecialRegs
{
    private static readonly Dictionary<string, SpecialReg> Map = new(StringComparer.Ordinal)
    {
        ["%tid.x"] = SpecialReg.TidX, ["%tid.y"] = SpecialReg.TidY, ["%tid.z"] = SpecialReg.TidZ,
        ["%ntid.x"] = SpecialReg.NtidX, ["%ntid.y"] = SpecialReg.NtidY, ["%ntid.z"] = SpecialReg.NtidZ,
        ["%ctaid.x"] = SpecialReg.CtaidX, ["%ctaid.y"] = SpecialReg.CtaidY, ["%ctaid.z"] = SpecialReg.CtaidZ,
        ["%nctaid.x"] = SpecialReg.NctaidX, ["%nctaid.y"] = SpecialReg.NctaidY, ["%nctaid.z"] = SpecialReg.NctaidZ,
        ["%laneid"] = SpecialReg.LaneId, ["%warpid"] = SpecialReg.WarpId, ["%nwarpid"] = SpecialReg.NWarpId,
        ["%smid"] = SpecialReg.SmId, ["%nsmid"] = SpecialReg.NSmId, ["%gridid"] = SpecialReg.GridId,
        ["%lanemask_eq"] = SpecialReg.LanemaskEq, ["%lanemask_le"] = SpecialReg.LanemaskLe, ["%lanemask_lt"] = SpecialReg.LanemaskLt,
        ["%lanemask_ge"] = SpecialReg.LanemaskGe, ["%lanemask_gt"] = SpecialReg.LanemaskGt,
        ["%clock"] = SpecialReg.Clock, ["%clock_hi"] = SpecialReg.ClockHi, ["%clock64"] = SpecialReg.Clock64,
        ["%globaltimer"] = SpecialReg.GlobalTimer, ["%globaltimer_lo"] = SpecialReg.GlobalTimerLo, ["%globaltimer_hi"] = SpecialReg.GlobalTimerHi,
        ["%dynamic_smem_size"] = SpecialReg.DynamicSmemSize, ["%total_smem_size"] = SpecialReg.TotalSmemSize,
    };

    public static bool TryParse(string s, out SpecialReg r) => Map.TryGetValue(s, out r);
}
