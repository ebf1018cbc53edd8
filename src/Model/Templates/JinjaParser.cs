using System.Globalization;

namespace Qwen3Cuda.Model.Templates;

/// <summary>
/// Recursive-descent parser with @huggingface/jinja's precedence: ternary &lt; or &lt; and &lt; not &lt;
/// comparison/in &lt; + - ~ &lt; * / // % &lt; ** &lt; is-test &lt; filter &lt; unary sign &lt; call/member &lt; primary.
/// Statements: if/elif/else, for (with else and inline if), set (also block set and tuple/attribute
/// targets), macro, call, filter, break, continue. Anything else is an error naming it and its position.
/// </summary>
internal sealed class JinjaParser
{
    readonly List<JinjaToken> _t;
    int _i;

    JinjaParser(List<JinjaToken> tokens) => _t = tokens;

    public static List<JinjaNode> Parse(string template)
    {
        var p = new JinjaParser(JinjaLexer.Tokenize(template));
        var body = new List<JinjaNode>();
        while (p._i < p._t.Count) body.Add(p.ParseAny());
        return body;
    }

    JinjaToken Cur => _i < _t.Count ? _t[_i] : throw EndError();
    JinjaException EndError()
    {
        var last = _t.Count > 0 ? _t[^1] : new JinjaToken("", JinjaTokenType.Text, 0, 0);
        return new JinjaException("unexpected end of template (an unclosed block or expression?)", last.Line, last.Column);
    }
    static JinjaException Error(string message, JinjaToken at) => new(message, at.Line, at.Column);

    bool Is(JinjaTokenType type, int ahead = 0) => _i + ahead < _t.Count && _t[_i + ahead].Type == type;
    bool IsName(string name, int ahead = 0) => Is(JinjaTokenType.Identifier, ahead) && _t[_i + ahead].Value == name;
    bool IsStatement(params string[] names) =>
        Is(JinjaTokenType.OpenStatement) && Is(JinjaTokenType.Identifier, 1) && names.Contains(_t[_i + 1].Value);

    JinjaToken Expect(JinjaTokenType type, string what)
    {
        var tok = Cur;
        if (tok.Type != type) throw Error($"expected {what}, got '{tok.Value}'", tok);
        _i++;
        return tok;
    }

    void ExpectName(string name)
    {
        var tok = Cur;
        if (tok.Type != JinjaTokenType.Identifier || tok.Value != name) throw Error($"expected '{name}', got '{tok.Value}'", tok);
        _i++;
    }

    JinjaNode ParseAny()
    {
        var tok = Cur;
        switch (tok.Type)
        {
            case JinjaTokenType.Comment: _i++; return new CommentNode(tok.Line, tok.Column);
            case JinjaTokenType.Text: _i++; return new TextNode(tok.Value, tok.Line, tok.Column);
            case JinjaTokenType.OpenStatement: return ParseStatement();
            case JinjaTokenType.OpenExpression:
                _i++;
                var e = ParseExpression();
                Expect(JinjaTokenType.CloseExpression, "'}}'");
                return new OutputNode(e, tok.Line, tok.Column);
            default: throw Error($"unexpected '{tok.Value}'", tok);
        }
    }

    List<JinjaNode> ParseBodyUntil(params string[] ends)
    {
        var body = new List<JinjaNode>();
        while (!IsStatement(ends))
        {
            if (_i >= _t.Count) throw EndError();
            body.Add(ParseAny());
        }
        return body;
    }

    void ExpectEnd(string name)
    {
        Expect(JinjaTokenType.OpenStatement, "'{%'");
        ExpectName(name);
        Expect(JinjaTokenType.CloseStatement, "'%}'");
    }

    JinjaNode ParseStatement()
    {
        var open = Expect(JinjaTokenType.OpenStatement, "'{%'");
        var nameTok = Cur;
        if (nameTok.Type != JinjaTokenType.Identifier) throw Error($"expected a statement name after '{{%', got '{nameTok.Value}'", nameTok);
        _i++;
        int l = open.Line, c = open.Column;
        switch (nameTok.Value)
        {
            case "set":
            {
                var target = ParseExpressionSequence(primary: false);
                if (Is(JinjaTokenType.Equals))
                {
                    _i++;
                    var value = ParseExpressionSequence(primary: false);
                    Expect(JinjaTokenType.CloseStatement, "'%}'");
                    return new SetNode(target, value, [], l, c);
                }
                Expect(JinjaTokenType.CloseStatement, "'%}'");
                var body = ParseBodyUntil("endset");
                ExpectEnd("endset");
                return new SetNode(target, null, body, l, c);
            }
            case "if":
            {
                var node = ParseIf(l, c);
                ExpectEnd("endif");
                return node;
            }
            case "for":
            {
                var target = ParseExpressionSequence(primary: true);
                if (target is not (NameNode or ListNode { IsTuple: true }))
                    throw Error("expected a name or tuple of names as the for-loop variable", nameTok);
                if (!IsName("in")) throw Error("expected 'in' after the for-loop variable", Cur);
                _i++;
                var iterable = ParseExpression();
                JinjaNode? filter = null;
                if (iterable is SelectNode sel) { iterable = sel.Value; filter = sel.Condition; }
                Expect(JinjaTokenType.CloseStatement, "'%}'");
                var body = ParseBodyUntil("endfor", "else");
                var elseBody = new List<JinjaNode>();
                if (IsStatement("else"))
                {
                    _i += 2;
                    Expect(JinjaTokenType.CloseStatement, "'%}'");
                    elseBody = ParseBodyUntil("endfor");
                }
                ExpectEnd("endfor");
                return new ForNode(target, iterable, filter, body, elseBody, l, c);
            }
            case "macro":
            {
                var name = ParsePrimary();
                if (name is not NameNode n) throw Error("expected a macro name", nameTok);
                var parameters = ParseArguments(parameters: true);
                Expect(JinjaTokenType.CloseStatement, "'%}'");
                var body = ParseBodyUntil("endmacro");
                ExpectEnd("endmacro");
                return new MacroNode(n.Name, parameters, body, l, c);
            }
            case "call":
            {
                List<JinjaNode>? callerParams = null;
                if (Is(JinjaTokenType.OpenParen)) callerParams = ParseArguments(parameters: true);
                var callee = ParsePrimary();
                if (callee is not NameNode) throw Error("expected a macro name after 'call'", nameTok);
                var args = ParseArguments(parameters: false);
                Expect(JinjaTokenType.CloseStatement, "'%}'");
                var body = ParseBodyUntil("endcall");
                ExpectEnd("endcall");
                return new CallBlockNode(new CallNode(callee, args, callee.Line, callee.Column), callerParams, body, l, c);
            }
            case "filter":
            {
                JinjaNode filter = ParsePrimary();
                if (filter is NameNode && Is(JinjaTokenType.OpenParen))
                    filter = new CallNode(filter, ParseArguments(parameters: false), filter.Line, filter.Column);
                Expect(JinjaTokenType.CloseStatement, "'%}'");
                var body = ParseBodyUntil("endfilter");
                ExpectEnd("endfilter");
                return new FilterBlockNode(filter, body, l, c);
            }
            case "break":
                Expect(JinjaTokenType.CloseStatement, "'%}'");
                return new BreakNode(l, c);
            case "continue":
                Expect(JinjaTokenType.CloseStatement, "'%}'");
                return new ContinueNode(l, c);
            default:
                throw Error($"unsupported statement '{nameTok.Value}'", nameTok);
        }
    }

    IfNode ParseIf(int l, int c)
    {
        var test = ParseExpression();
        Expect(JinjaTokenType.CloseStatement, "'%}'");
        var body = ParseBodyUntil("elif", "else", "endif");
        var alternate = new List<JinjaNode>();
        if (IsStatement("elif"))
        {
            var tok = Cur;
            _i += 2;
            alternate.Add(ParseIf(tok.Line, tok.Column));
        }
        else if (IsStatement("else"))
        {
            _i += 2;
            Expect(JinjaTokenType.CloseStatement, "'%}'");
            alternate = ParseBodyUntil("endif");
        }
        return new IfNode(test, body, alternate, l, c);
    }

    JinjaNode ParseExpressionSequence(bool primary)
    {
        var first = primary ? ParsePrimary() : ParseExpression();
        if (!Is(JinjaTokenType.Comma)) return first;
        var items = new List<JinjaNode> { first };
        while (Is(JinjaTokenType.Comma))
        {
            _i++;
            items.Add(primary ? ParsePrimary() : ParseExpression());
        }
        return new ListNode(items, IsTuple: true, first.Line, first.Column);
    }

    public JinjaNode ParseExpression()
    {
        var a = ParseOr();
        if (!IsName("if")) return a;
        _i++;
        var test = ParseOr();
        if (IsName("else"))
        {
            _i++;
            var b = ParseExpression();
            return new TernaryNode(test, a, b, a.Line, a.Column);
        }
        return new SelectNode(a, test, a.Line, a.Column);
    }

    JinjaNode ParseOr()
    {
        var left = ParseAnd();
        while (IsName("or"))
        {
            _i++;
            left = new BinaryNode("or", left, ParseAnd(), left.Line, left.Column);
        }
        return left;
    }

    JinjaNode ParseAnd()
    {
        var left = ParseNot();
        while (IsName("and"))
        {
            _i++;
            left = new BinaryNode("and", left, ParseNot(), left.Line, left.Column);
        }
        return left;
    }

    JinjaNode ParseNot()
    {
        if (IsName("not"))
        {
            var tok = Cur;
            _i++;
            return new UnaryNode("not", ParseNot(), tok.Line, tok.Column);
        }
        return ParseComparison();
    }

    JinjaNode ParseComparison()
    {
        var left = ParseAdditive();
        while (true)
        {
            string op;
            if (IsName("not") && IsName("in", 1)) { op = "not in"; _i += 2; }
            else if (IsName("in")) { op = "in"; _i++; }
            else if (Is(JinjaTokenType.ComparisonBinaryOperator)) { op = Cur.Value; _i++; }
            else break;
            left = new BinaryNode(op, left, ParseAdditive(), left.Line, left.Column);
        }
        return left;
    }

    JinjaNode ParseAdditive()
    {
        var left = ParseMultiplicative();
        while (Is(JinjaTokenType.AdditiveBinaryOperator))
        {
            var op = Cur.Value;
            _i++;
            left = new BinaryNode(op, left, ParseMultiplicative(), left.Line, left.Column);
        }
        return left;
    }

    JinjaNode ParseMultiplicative()
    {
        var left = ParsePower();
        while (Is(JinjaTokenType.MultiplicativeBinaryOperator))
        {
            var op = Cur.Value;
            _i++;
            left = new BinaryNode(op, left, ParsePower(), left.Line, left.Column);
        }
        return left;
    }

    JinjaNode ParsePower()
    {
        var left = ParseTest();
        while (Is(JinjaTokenType.ExponentiationBinaryOperator))
        {
            _i++;
            left = new BinaryNode("**", left, ParseTest(), left.Line, left.Column);
        }
        return left;
    }

    JinjaNode ParseTest()
    {
        var operand = ParseFilter();
        while (IsName("is"))
        {
            _i++;
            bool negate = IsName("not");
            if (negate) _i++;
            var testTok = Cur;
            if (ParsePrimary() is not NameNode test) throw Error("expected a test name after 'is'", testTok);
            if (Is(JinjaTokenType.OpenParen)) throw Error($"tests with arguments ('is {test.Name}(...)') are not supported", testTok);
            operand = new TestNode(operand, negate, test.Name, testTok.Line, testTok.Column);
        }
        return operand;
    }

    JinjaNode ParseFilter()
    {
        var operand = ParseUnarySign();
        while (Is(JinjaTokenType.Pipe))
        {
            _i++;
            var fTok = Cur;
            JinjaNode filter = ParsePrimary();
            if (filter is not NameNode) throw Error("expected a filter name after '|'", fTok);
            if (Is(JinjaTokenType.OpenParen)) filter = new CallNode(filter, ParseArguments(parameters: false), fTok.Line, fTok.Column);
            operand = new FilterNode(operand, filter, fTok.Line, fTok.Column);
        }
        return operand;
    }

    JinjaNode ParseUnarySign()
    {
        if ((Is(JinjaTokenType.UnaryOperator) || Is(JinjaTokenType.AdditiveBinaryOperator)) && Cur.Value is "-" or "+")
        {
            var tok = Cur;
            _i++;
            return new UnaryNode(tok.Value, ParseUnarySign(), tok.Line, tok.Column);
        }
        return ParseCallMember();
    }

    JinjaNode ParseCallMember()
    {
        var member = ParseMember(ParsePrimary());
        return Is(JinjaTokenType.OpenParen) ? ParseCall(member) : member;
    }

    JinjaNode ParseCall(JinjaNode callee)
    {
        JinjaNode e = new CallNode(callee, ParseArguments(parameters: false), callee.Line, callee.Column);
        e = ParseMember(e);
        return Is(JinjaTokenType.OpenParen) ? ParseCall(e) : e;
    }

    List<JinjaNode> ParseArguments(bool parameters)
    {
        Expect(JinjaTokenType.OpenParen, "'('");
        var args = new List<JinjaNode>();
        while (!Is(JinjaTokenType.CloseParen))
        {
            var tok = Cur;
            if (!parameters && Is(JinjaTokenType.ExponentiationBinaryOperator))
            {
                _i++;
                args.Add(new SpreadNode(ParseExpression(), Keywords: true, tok.Line, tok.Column));
            }
            else if (!parameters && Is(JinjaTokenType.MultiplicativeBinaryOperator) && tok.Value == "*")
            {
                _i++;
                args.Add(new SpreadNode(ParseExpression(), Keywords: false, tok.Line, tok.Column));
            }
            else
            {
                var arg = ParseExpression();
                if (Is(JinjaTokenType.Equals))
                {
                    _i++;
                    if (arg is not NameNode n) throw Error("expected a name before '=' in an argument list", tok);
                    arg = new KeywordArgumentNode(n.Name, ParseExpression(), tok.Line, tok.Column);
                }
                else if (parameters && arg is not NameNode) throw Error("expected a parameter name", tok);
                args.Add(arg);
            }
            if (Is(JinjaTokenType.Comma)) _i++;
            else if (!Is(JinjaTokenType.CloseParen)) throw Error($"expected ',' or ')' in an argument list, got '{Cur.Value}'", Cur);
        }
        _i++;
        return args;
    }

    JinjaNode ParseMember(JinjaNode obj)
    {
        while (Is(JinjaTokenType.Dot) || Is(JinjaTokenType.OpenSquareBracket))
        {
            var op = Cur;
            _i++;
            if (op.Type == JinjaTokenType.OpenSquareBracket)
            {
                var prop = ParseSubscript(op);
                Expect(JinjaTokenType.CloseSquareBracket, "']'");
                obj = new MemberNode(obj, prop, Computed: true, op.Line, op.Column);
            }
            else
            {
                var prop = ParsePrimary();
                if (prop is not (NameNode or LiteralNode { Value: JinjaInt })) throw Error("expected a name or integer after '.'", op);
                obj = new MemberNode(obj, prop, Computed: false, op.Line, op.Column);
            }
        }
        return obj;
    }

    JinjaNode ParseSubscript(JinjaToken open)
    {
        var parts = new List<JinjaNode?>();
        bool isSlice = false;
        while (!Is(JinjaTokenType.CloseSquareBracket))
        {
            if (Is(JinjaTokenType.Colon))
            {
                parts.Add(null);
                _i++;
                isSlice = true;
            }
            else
            {
                parts.Add(ParseExpression());
                if (Is(JinjaTokenType.Colon)) { _i++; isSlice = true; }
            }
        }
        if (parts.Count == 0) throw Error("expected an index or slice inside '[]'", open);
        if (!isSlice) return parts[0]!;
        if (parts.Count > 3) throw Error("a slice takes at most 3 parts", open);
        return new SliceNode(parts.ElementAtOrDefault(0), parts.ElementAtOrDefault(1), parts.ElementAtOrDefault(2), open.Line, open.Column);
    }

    JinjaNode ParsePrimary()
    {
        var tok = Cur;
        _i++;
        switch (tok.Type)
        {
            case JinjaTokenType.NumericLiteral:
                return tok.Value.Contains('.')
                    ? new LiteralNode(new JinjaFloat(double.Parse(tok.Value, CultureInfo.InvariantCulture)), tok.Line, tok.Column)
                    : new LiteralNode(new JinjaInt(long.Parse(tok.Value, CultureInfo.InvariantCulture)), tok.Line, tok.Column);
            case JinjaTokenType.StringLiteral:
            {
                var value = tok.Value;
                while (Is(JinjaTokenType.StringLiteral)) value += _t[_i++].Value;
                return new LiteralNode(new JinjaString(value), tok.Line, tok.Column);
            }
            case JinjaTokenType.Identifier:
                return new NameNode(tok.Value, tok.Line, tok.Column);
            case JinjaTokenType.OpenParen:
            {
                var e = ParseExpressionSequence(primary: false);
                Expect(JinjaTokenType.CloseParen, "')'");
                return e;
            }
            case JinjaTokenType.OpenSquareBracket:
            {
                var items = new List<JinjaNode>();
                while (!Is(JinjaTokenType.CloseSquareBracket))
                {
                    items.Add(ParseExpression());
                    if (Is(JinjaTokenType.Comma)) _i++;
                }
                _i++;
                return new ListNode(items, IsTuple: false, tok.Line, tok.Column);
            }
            case JinjaTokenType.OpenCurlyBracket:
            {
                var items = new List<(JinjaNode, JinjaNode)>();
                while (!Is(JinjaTokenType.CloseCurlyBracket))
                {
                    var key = ParseExpression();
                    Expect(JinjaTokenType.Colon, "':' between a dict key and value");
                    items.Add((key, ParseExpression()));
                    if (Is(JinjaTokenType.Comma)) _i++;
                }
                _i++;
                return new DictNode(items, tok.Line, tok.Column);
            }
            default:
                throw Error($"unexpected '{tok.Value}' in an expression", tok);
        }
    }
}
