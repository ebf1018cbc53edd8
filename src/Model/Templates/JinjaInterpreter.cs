using System.Text;

namespace Qwen3Cuda.Model.Templates;

/// <summary>A variable scope; lookups walk up to the parent (globals at the root).</summary>
internal sealed class JinjaEnvironment(JinjaEnvironment? parent = null)
{
    readonly Dictionary<string, JinjaValue> _vars = new(StringComparer.Ordinal);
    public JinjaEnvironment? Parent { get; } = parent;

    public void Set(string name, JinjaValue value) => _vars[name] = value;

    public JinjaValue Lookup(string name)
    {
        for (var e = this; e != null; e = e.Parent)
            if (e._vars.TryGetValue(name, out var v)) return v;
        return JinjaValue.Undefined;
    }
}

/// <summary>
/// Evaluates a parsed template. Scoping follows @huggingface/jinja: `set` writes the current scope,
/// a for loop has its own scope (shared by its iterations), macros see the caller's scope.
/// </summary>
internal sealed class JinjaInterpreter
{
    sealed class BreakSignal : Exception;
    sealed class ContinueSignal : Exception;

    public static JinjaEnvironment CreateGlobals()
    {
        var g = new JinjaEnvironment();
        g.Set("true", JinjaValue.True);
        g.Set("false", JinjaValue.False);
        g.Set("none", JinjaValue.None);
        g.Set("True", JinjaValue.True);
        g.Set("False", JinjaValue.False);
        g.Set("None", JinjaValue.None);
        g.Set("namespace", new JinjaFunction("namespace", (args, kwargs, _) =>
        {
            var ns = new JinjaNamespace();
            if (args.Count > 1) throw new JinjaException($"namespace expected at most 1 argument, got {args.Count}");
            if (args.Count == 1)
            {
                if (args[0] is not JinjaDict d) throw new JinjaException($"namespace() argument must be a dict, got {args[0].TypeName}");
                foreach (var kv in d.Entries) ns.Entries[kv.Key] = kv.Value;
            }
            foreach (var kv in kwargs.Entries) ns.Entries[kv.Key] = kv.Value;
            return ns;
        }));
        g.Set("raise_exception", new JinjaFunction("raise_exception", (args, _, _) =>
            throw new JinjaException("raise_exception: " + (args.Count > 0 ? args[0].ToString() : ""))));
        g.Set("range", new JinjaFunction("range", (args, _, _) =>
        {
            long Arg(int i) => args[i] is JinjaInt n ? n.Value : throw new JinjaException($"range() arguments must be integers, got {args[i].TypeName}");
            long start = 0, stop, step = 1;
            if (args.Count == 1) stop = Arg(0);
            else if (args.Count is 2 or 3) { start = Arg(0); stop = Arg(1); if (args.Count == 3) step = Arg(2); }
            else throw new JinjaException($"range() takes 1 to 3 arguments, got {args.Count}");
            if (step == 0) throw new JinjaException("range() step must not be zero");
            var items = new List<JinjaValue>();
            for (long i = start; step > 0 ? i < stop : i > stop; i += step) items.Add(new JinjaInt(i));
            return new JinjaList(items);
        }));
        g.Set("strftime_now", new JinjaFunction("strftime_now", (args, _, _) =>
            new JinjaString(Strftime(DateTime.Now, args.Count > 0 ? args[0].ToString() : ""))));
        return g;
    }

    static string Strftime(DateTime t, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length) { sb.Append(format[i]); continue; }
            char f = format[++i];
            sb.Append(f switch
            {
                'Y' => t.Year.ToString("D4", System.Globalization.CultureInfo.InvariantCulture),
                'm' => t.Month.ToString("D2", System.Globalization.CultureInfo.InvariantCulture),
                'd' => t.Day.ToString("D2", System.Globalization.CultureInfo.InvariantCulture),
                'H' => t.Hour.ToString("D2", System.Globalization.CultureInfo.InvariantCulture),
                'M' => t.Minute.ToString("D2", System.Globalization.CultureInfo.InvariantCulture),
                'b' => System.Globalization.CultureInfo.InvariantCulture.DateTimeFormat.GetAbbreviatedMonthName(t.Month),
                'B' => System.Globalization.CultureInfo.InvariantCulture.DateTimeFormat.GetMonthName(t.Month),
                '%' => "%",
                _ => "%" + f,
            });
        }
        return sb.ToString();
    }

    public string Render(List<JinjaNode> program, JinjaEnvironment env)
    {
        var sb = new StringBuilder();
        RenderBlock(program, env, sb);
        return sb.ToString();
    }

    void RenderBlock(List<JinjaNode> body, JinjaEnvironment env, StringBuilder sb)
    {
        foreach (var node in body) Execute(node, env, sb);
    }

    string RenderToString(List<JinjaNode> body, JinjaEnvironment env)
    {
        var sb = new StringBuilder();
        RenderBlock(body, env, sb);
        return sb.ToString();
    }

    static JinjaException Error(JinjaNode at, string message) => new(message, at.Line, at.Column);

    void Execute(JinjaNode node, JinjaEnvironment env, StringBuilder sb)
    {
        switch (node)
        {
            case TextNode t: sb.Append(t.Text); break;
            case CommentNode: break;
            case OutputNode o: sb.Append(Evaluate(o.Expression, env).ToString()); break;
            case IfNode i: RenderBlock(Evaluate(i.Test, env).IsTruthy ? i.Body : i.Else, env, sb); break;
            case ForNode f: ExecuteFor(f, env, sb); break;
            case SetNode s: ExecuteSet(s, env); break;
            case MacroNode m: env.Set(m.Name, MakeMacro(m.Name, m.Parameters, m.Body, null)); break;
            case CallBlockNode c: sb.Append(ExecuteCallBlock(c, env).ToString()); break;
            case FilterBlockNode fb: sb.Append(JinjaFilters.Apply(this, new JinjaString(RenderToString(fb.Body, env)), fb.Filter, env).ToString()); break;
            case BreakNode: throw new BreakSignal();
            case ContinueNode: throw new ContinueSignal();
            default: sb.Append(Evaluate(node, env).ToString()); break;
        }
    }

    void ExecuteFor(ForNode f, JinjaEnvironment env, StringBuilder sb)
    {
        var scope = new JinjaEnvironment(env);
        var iterable = Evaluate(f.Iterable, scope);
        List<JinjaValue> source = iterable switch
        {
            JinjaList l => l.Items,
            JinjaDict d => d.Entries.Keys.Select(k => (JinjaValue)new JinjaString(k)).ToList(),
            JinjaString s => StringElements(s.Value).Select(x => (JinjaValue)new JinjaString(x)).ToList(),
            _ => throw Error(f.Iterable, $"cannot loop over a {iterable.TypeName} value"),
        };
        var items = new List<JinjaValue>();
        foreach (var item in source)
        {
            if (f.Filter != null)
            {
                var probe = new JinjaEnvironment(scope);
                Bind(f.Target, item, probe);
                if (!Evaluate(f.Filter, probe).IsTruthy) continue;
            }
            items.Add(item);
        }
        bool iterated = false;
        for (int i = 0; i < items.Count; i++)
        {
            var loop = new JinjaDict();
            loop.Entries["index"] = new JinjaInt(i + 1);
            loop.Entries["index0"] = new JinjaInt(i);
            loop.Entries["revindex"] = new JinjaInt(items.Count - i);
            loop.Entries["revindex0"] = new JinjaInt(items.Count - i - 1);
            loop.Entries["first"] = JinjaValue.Bool(i == 0);
            loop.Entries["last"] = JinjaValue.Bool(i == items.Count - 1);
            loop.Entries["length"] = new JinjaInt(items.Count);
            loop.Entries["previtem"] = i > 0 ? items[i - 1] : JinjaValue.Undefined;
            loop.Entries["nextitem"] = i < items.Count - 1 ? items[i + 1] : JinjaValue.Undefined;
            scope.Set("loop", loop);
            Bind(f.Target, items[i], scope);
            var body = new StringBuilder();
            try
            {
                RenderBlock(f.Body, scope, body);
            }
            catch (ContinueSignal) { sb.Append(body); continue; }
            catch (BreakSignal) { sb.Append(body); break; }
            sb.Append(body);
            iterated = true;
        }
        if (!iterated) RenderBlock(f.Else, scope, sb);
    }

    void Bind(JinjaNode target, JinjaValue value, JinjaEnvironment env)
    {
        if (target is NameNode n) { env.Set(n.Name, value); return; }
        if (target is ListNode { IsTuple: true } t)
        {
            if (value is not JinjaList l) throw Error(target, $"cannot unpack a {value.TypeName} into {t.Items.Count} names");
            if (l.Items.Count != t.Items.Count)
                throw Error(target, $"too {(t.Items.Count > l.Items.Count ? "few" : "many")} values to unpack (expected {t.Items.Count}, got {l.Items.Count})");
            for (int i = 0; i < t.Items.Count; i++)
            {
                if (t.Items[i] is not NameNode name) throw Error(t.Items[i], "can only unpack into names");
                env.Set(name.Name, l.Items[i]);
            }
            return;
        }
        throw Error(target, "invalid assignment target");
    }

    void ExecuteSet(SetNode s, JinjaEnvironment env)
    {
        var value = s.Value != null ? Evaluate(s.Value, env) : new JinjaString(RenderToString(s.Body, env));
        if (s.Target is MemberNode { Computed: false, Property: NameNode prop } m)
        {
            var obj = Evaluate(m.Object, env);
            if (obj is not JinjaNamespace ns) throw Error(s.Target, $"cannot assign attribute '{prop.Name}' on a {obj.TypeName} (only on a namespace())");
            ns.Entries[prop.Name] = value;
            return;
        }
        Bind(s.Target, value, env);
    }

    /// <summary>A macro (or a call block's caller): binds positional, keyword and default arguments in a fresh scope.</summary>
    JinjaFunction MakeMacro(string name, List<JinjaNode> parameters, List<JinjaNode> body, JinjaEnvironment? closure)
    {
        return new JinjaFunction(name, (args, kwargs, callerEnv) =>
        {
            var scope = new JinjaEnvironment(closure ?? callerEnv);
            var remaining = new Dictionary<string, JinjaValue>(kwargs.Entries, StringComparer.Ordinal);
            var pendingDefaults = new List<(string, JinjaNode)>();
            for (int i = 0; i < parameters.Count; i++)
            {
                var (pname, def) = parameters[i] switch
                {
                    NameNode nn => (nn.Name, (JinjaNode?)null),
                    KeywordArgumentNode kw => (kw.Name, kw.Value),
                    var other => throw Error(other, "invalid macro parameter"),
                };
                JinjaValue? v = i < args.Count ? args[i] : null;
                if (v == null && remaining.Remove(pname, out var kv)) v = kv;
                if (v == null && def != null) pendingDefaults.Add((pname, def));
                scope.Set(pname, v ?? JinjaValue.Undefined);
            }
            scope.Set("varargs", new JinjaList(args.Skip(parameters.Count).ToList()));
            scope.Set("kwargs", new JinjaDict(remaining));
            foreach (var (pname, def) in pendingDefaults) scope.Set(pname, Evaluate(def, scope));
            return new JinjaString(RenderToString(body, scope));
        });
    }

    JinjaValue ExecuteCallBlock(CallBlockNode c, JinjaEnvironment env)
    {
        var caller = MakeMacro("caller", c.CallerParameters ?? [], c.Body, env);
        var (args, kwargs) = EvaluateArguments(c.Call.Arguments, env);
        var fn = Evaluate(c.Call.Callee, env);
        if (fn is not JinjaFunction f) throw Error(c, $"cannot call a {fn.TypeName}");
        var callEnv = new JinjaEnvironment(env);
        callEnv.Set("caller", caller);
        return f.Call(args, kwargs, callEnv);
    }

    internal (List<JinjaValue> Args, JinjaDict Kwargs) EvaluateArguments(List<JinjaNode> arguments, JinjaEnvironment env)
    {
        var args = new List<JinjaValue>();
        var kwargs = new JinjaDict();
        foreach (var a in arguments)
        {
            if (a is SpreadNode { Keywords: false } sp)
            {
                var v = Evaluate(sp.Value, env);
                if (v is not JinjaList l) throw Error(a, $"cannot unpack a {v.TypeName} with *");
                args.AddRange(l.Items);
            }
            else if (a is not (KeywordArgumentNode or SpreadNode)) args.Add(Evaluate(a, env));
        }
        foreach (var a in arguments)
        {
            if (a is KeywordArgumentNode kw)
            {
                if (!kwargs.Entries.TryAdd(kw.Name, Evaluate(kw.Value, env))) throw Error(a, $"got multiple values for keyword argument '{kw.Name}'");
            }
            else if (a is SpreadNode { Keywords: true } sp)
            {
                var v = Evaluate(sp.Value, env);
                if (v is not JinjaDict d) throw Error(a, $"argument after ** must be a mapping, not {v.TypeName}");
                foreach (var kv in d.Entries)
                    if (!kwargs.Entries.TryAdd(kv.Key, kv.Value)) throw Error(a, $"got multiple values for keyword argument '{kv.Key}'");
            }
        }
        return (args, kwargs);
    }

    /// <summary>Elements of a string as JavaScript's Array.from sees them (code points).</summary>
    internal static List<string> StringElements(string s)
    {
        var list = new List<string>(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            if (char.IsHighSurrogate(s[i]) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1])) { list.Add(s.Substring(i, 2)); i++; }
            else list.Add(s[i].ToString());
        }
        return list;
    }

    public JinjaValue Evaluate(JinjaNode node, JinjaEnvironment env)
    {
        try
        {
            return EvaluateCore(node, env);
        }
        catch (JinjaException) { throw; }
        catch (Exception e) when (e is not (BreakSignal or ContinueSignal))
        {
            throw Error(node, e.Message);
        }
    }

    JinjaValue EvaluateCore(JinjaNode node, JinjaEnvironment env)
    {
        switch (node)
        {
            case LiteralNode l: return l.Value;
            case NameNode n: return env.Lookup(n.Name);
            case ListNode l: return new JinjaList(l.Items.Select(x => Evaluate(x, env)).ToList(), l.IsTuple);
            case DictNode d:
            {
                var dict = new JinjaDict();
                foreach (var (k, v) in d.Items)
                {
                    var key = Evaluate(k, env);
                    if (key is not JinjaString ks) throw Error(k, $"dict keys must be strings, got {key.TypeName}");
                    dict.Entries[ks.Value] = Evaluate(v, env);
                }
                return dict;
            }
            case MemberNode m: return EvaluateMember(m, env);
            case CallNode c:
            {
                var (args, kwargs) = EvaluateArguments(c.Arguments, env);
                var fn = Evaluate(c.Callee, env);
                if (fn is not JinjaFunction f)
                    throw Error(c, $"cannot call {Describe(c.Callee)}: it is {(fn is JinjaUndefined ? "undefined" : "a " + fn.TypeName)}");
                return f.Call(args, kwargs, env);
            }
            case UnaryNode u:
            {
                var v = Evaluate(u.Operand, env);
                if (u.Operator == "not") return JinjaValue.Bool(!v.IsTruthy);
                int sign = u.Operator == "-" ? -1 : 1;
                return v switch
                {
                    JinjaInt i => new JinjaInt(sign * i.Value),
                    JinjaFloat f => new JinjaFloat(sign * f.Value),
                    JinjaBool b => new JinjaInt(sign * (b.Value ? 1 : 0)),
                    _ => throw Error(u, $"unary '{u.Operator}' is not defined for a {v.TypeName}"),
                };
            }
            case BinaryNode b: return JinjaOperators.Binary(this, b, env);
            case FilterNode f: return JinjaFilters.Apply(this, Evaluate(f.Operand, env), f.Filter, env);
            case TestNode t: return JinjaValue.Bool(JinjaFilters.Test(t, Evaluate(t.Operand, env)) != t.Negate);
            case TernaryNode t: return Evaluate(t.Condition, env).IsTruthy ? Evaluate(t.IfTrue, env) : Evaluate(t.IfFalse, env);
            case SelectNode s: return Evaluate(s.Condition, env).IsTruthy ? Evaluate(s.Value, env) : JinjaValue.Undefined;
            case KeywordArgumentNode or SpreadNode: throw Error(node, "keyword arguments and * / ** unpacking are only allowed in calls");
            default: throw Error(node, $"unsupported expression {node.GetType().Name}");
        }
    }

    static string Describe(JinjaNode n) => n switch
    {
        NameNode nn => $"'{nn.Name}'",
        MemberNode { Property: NameNode p } => $"'.{p.Name}'",
        _ => "this expression",
    };

    JinjaValue EvaluateMember(MemberNode m, JinjaEnvironment env)
    {
        var obj = Evaluate(m.Object, env);
        if (m.Property is SliceNode s) return Slice(obj, s, env);
        JinjaValue prop = m.Computed ? Evaluate(m.Property, env)
            : m.Property is NameNode n ? new JinjaString(n.Name) : ((LiteralNode)m.Property).Value;
        switch (obj)
        {
            case JinjaDict d:
                if (prop is not JinjaString key) throw Error(m, $"dict keys must be strings, got {prop.TypeName}");
                return d.Entries.TryGetValue(key.Value, out var v) ? v : JinjaBuiltins.DictMethod(d, key.Value) ?? JinjaValue.Undefined;
            case JinjaNamespace ns:
                if (prop is not JinjaString nkey) throw Error(m, $"namespace attributes must be strings, got {prop.TypeName}");
                return ns.Entries.TryGetValue(nkey.Value, out var nv) ? nv : JinjaValue.Undefined;
            case JinjaList l:
                if (prop is JinjaInt li) return At(l.Items, li.Value) ?? JinjaValue.Undefined;
                if (prop is JinjaString ls && ls.Value == "length") return new JinjaInt(l.Items.Count);
                if (prop is JinjaString) return JinjaValue.Undefined;
                throw Error(m, $"list indices must be integers, got {prop.TypeName}");
            case JinjaString str:
                if (prop is JinjaInt si)
                {
                    // JavaScript's String.at(): UTF-16 units.
                    long idx = si.Value < 0 ? str.Value.Length + si.Value : si.Value;
                    return idx >= 0 && idx < str.Value.Length ? new JinjaString(str.Value[(int)idx].ToString()) : JinjaValue.Undefined;
                }
                if (prop is JinjaString sname) return JinjaBuiltins.StringMethod(str, sname.Value) ?? JinjaValue.Undefined;
                throw Error(m, $"string indices must be integers, got {prop.TypeName}");
            default:
                return JinjaValue.Undefined;
        }
    }

    static JinjaValue? At(List<JinjaValue> items, long index)
    {
        long i = index < 0 ? items.Count + index : index;
        return i >= 0 && i < items.Count ? items[(int)i] : null;
    }

    JinjaValue Slice(JinjaValue obj, SliceNode s, JinjaEnvironment env)
    {
        long? Part(JinjaNode? n)
        {
            if (n == null) return null;
            var v = Evaluate(n, env);
            return v switch
            {
                JinjaInt i => i.Value,
                JinjaUndefined or JinjaNone => null,
                _ => throw Error(n, $"slice indices must be integers, got {v.TypeName}"),
            };
        }
        long? start = Part(s.Start), stop = Part(s.Stop), step = Part(s.Step) ?? 1;
        if (step == 0) throw Error(s, "slice step cannot be zero");
        List<T> Take<T>(List<T> a)
        {
            long n = a.Count, st = step!.Value, b, e;
            if (st > 0)
            {
                b = start is long x ? (x < 0 ? Math.Max(n + x, 0) : Math.Min(x, n)) : 0;
                e = stop is long y ? (y < 0 ? Math.Max(n + y, 0) : Math.Min(y, n)) : n;
            }
            else
            {
                b = start is long x ? (x < 0 ? Math.Max(n + x, -1) : Math.Min(x, n - 1)) : n - 1;
                e = stop is long y ? (y < -1 ? Math.Max(n + y, -1) : Math.Min(y, n - 1)) : -1;
            }
            var r = new List<T>();
            for (long i = b; st > 0 ? i < e : i > e; i += st) r.Add(a[(int)i]);
            return r;
        }
        return obj switch
        {
            JinjaList l => new JinjaList(Take(l.Items)),
            JinjaString str => new JinjaString(string.Concat(Take(StringElements(str.Value)))),
            _ => throw Error(s, $"cannot slice a {obj.TypeName}"),
        };
    }
}
