using System.Globalization;

namespace Qwen3Cuda.Model.Templates;

/// <summary>
/// Filters and tests. Supported filters: safe, tojson(indent, ensure_ascii, sort_keys, separators),
/// length/count, string, trim, upper, lower, title, capitalize, default/d, join, first, last, reverse,
/// list, sort, unique, items, dictsort, selectattr, rejectattr, map(attribute=), indent, replace, int,
/// float, abs, bool. Tests: defined, undefined, none, string, number, integer, float, boolean, true,
/// false, mapping, iterable, sequence, callable, odd, even, lower, upper.
/// </summary>
static class JinjaFilters
{
    public static JinjaValue Apply(JinjaInterpreter interp, JinjaValue operand, JinjaNode filterNode, JinjaEnvironment env)
    {
        string name;
        List<JinjaValue> args;
        JinjaDict kwargs;
        if (filterNode is NameNode n) { name = n.Name; args = []; kwargs = new JinjaDict(); }
        else if (filterNode is CallNode { Callee: NameNode cn } call)
        {
            name = cn.Name;
            (args, kwargs) = interp.EvaluateArguments(call.Arguments, env);
        }
        else throw new JinjaException("invalid filter", filterNode.Line, filterNode.Column);
        try
        {
            return ApplyNamed(interp, name, operand, args, kwargs, env);
        }
        catch (JinjaException e) when (e.Line == 0)
        {
            throw new JinjaException($"filter '{name}': {e.Message}", filterNode.Line, filterNode.Column);
        }
    }

    static JinjaValue Arg(List<JinjaValue> args, JinjaDict kwargs, int index, string name, JinjaValue fallback) =>
        index < args.Count ? args[index] : kwargs.Entries.TryGetValue(name, out var v) ? v : fallback;

    static JinjaValue ApplyNamed(JinjaInterpreter interp, string name, JinjaValue v, List<JinjaValue> args, JinjaDict kwargs, JinjaEnvironment env)
    {
        JinjaException Unsupported() => new($"not supported for a {v.TypeName} value");
        switch (name)
        {
            case "safe": return v;
            case "tojson":
            {
                var indent = Arg(args, kwargs, 0, "indent", JinjaValue.None);
                var sep = kwargs.Get("separators");
                string? itemSep = null, keySep = null;
                if (sep is JinjaList { Items.Count: 2 } sl && sl.Items[0] is JinjaString a && sl.Items[1] is JinjaString b)
                    (itemSep, keySep) = (a.Value, b.Value);
                else if (sep is not (JinjaUndefined or JinjaNone)) throw new JinjaException("separators must be a tuple of two strings");
                var o = new JinjaJson.Options(indent is JinjaInt ii ? (int)ii.Value : indent is JinjaNone or JinjaUndefined ? null
                        : throw new JinjaException("indent must be an integer"),
                    kwargs.Get("ensure_ascii").IsTruthy, itemSep, keySep, kwargs.Get("sort_keys").IsTruthy);
                return new JinjaString(JinjaJson.Serialize(v, o));
            }
            case "length" or "count":
                return v switch
                {
                    JinjaList l => new JinjaInt(l.Items.Count),
                    JinjaString s => new JinjaInt(s.Value.Length),
                    JinjaDict d => new JinjaInt(d.Entries.Count),
                    _ => throw Unsupported(),
                };
            case "string":
                return v switch
                {
                    JinjaString => v,
                    JinjaList or JinjaDict or JinjaNamespace => new JinjaString(v.ToString()),
                    JinjaInt or JinjaFloat or JinjaBool => new JinjaString(v.ToString()),
                    _ => throw Unsupported(),
                };
            case "trim":
                return v is JinjaString ts ? new JinjaString(JinjaBuiltins.Strip(ts.Value, args, true, true)) : throw Unsupported();
            case "upper" or "lower" or "title" or "capitalize":
                return v is JinjaString us ? ((JinjaFunction)JinjaBuiltins.StringMethod(us, name)!).Call([], new JinjaDict(), env) : throw Unsupported();
            case "default" or "d":
            {
                var fallback = Arg(args, kwargs, 0, "default_value", new JinjaString(""));
                bool boolean = Arg(args, kwargs, 1, "boolean", JinjaValue.False).IsTruthy;
                return v is JinjaUndefined || (boolean && !v.IsTruthy) ? fallback : v;
            }
            case "join":
            {
                var sep = Arg(args, kwargs, 0, "d", new JinjaString("")).ToString();
                return v switch
                {
                    JinjaList l => new JinjaString(string.Join(sep, l.Items.Select(x => x.ToString()))),
                    JinjaString s => new JinjaString(string.Join(sep, JinjaInterpreter.StringElements(s.Value))),
                    _ => throw Unsupported(),
                };
            }
            case "first" or "last":
                return v switch
                {
                    JinjaList l => l.Items.Count == 0 ? JinjaValue.Undefined : name == "first" ? l.Items[0] : l.Items[^1],
                    JinjaString s => s.Value.Length == 0 ? JinjaValue.Undefined
                        : new JinjaString(name == "first" ? JinjaInterpreter.StringElements(s.Value)[0] : JinjaInterpreter.StringElements(s.Value)[^1]),
                    _ => throw Unsupported(),
                };
            case "reverse":
                return v switch
                {
                    JinjaList l => new JinjaList(Enumerable.Reverse(l.Items).ToList()),
                    JinjaString s => new JinjaString(string.Concat(Enumerable.Reverse(JinjaInterpreter.StringElements(s.Value)))),
                    _ => throw Unsupported(),
                };
            case "list":
                return v switch
                {
                    JinjaList l => new JinjaList(l.Items.ToList()),
                    JinjaString s => new JinjaList(JinjaInterpreter.StringElements(s.Value).Select(x => (JinjaValue)new JinjaString(x)).ToList()),
                    JinjaDict d => new JinjaList(d.Entries.Keys.Select(k => (JinjaValue)new JinjaString(k)).ToList()),
                    _ => throw Unsupported(),
                };
            case "unique":
            {
                if (v is not JinjaList l) throw Unsupported();
                var result = new List<JinjaValue>();
                foreach (var x in l.Items) if (!result.Any(r => JinjaOperators.StrictEquals(r, x))) result.Add(x);
                return new JinjaList(result);
            }
            case "sort":
            {
                if (v is not JinjaList l) throw Unsupported();
                bool reverse = Arg(args, kwargs, 0, "reverse", JinjaValue.False).IsTruthy;
                bool caseSensitive = Arg(args, kwargs, 1, "case_sensitive", JinjaValue.False).IsTruthy;
                var attribute = Arg(args, kwargs, 2, "attribute", JinjaValue.None);
                JinjaValue Key(JinjaValue x) => attribute is JinjaNone ? x : AttributePath(x, attribute.ToString());
                var sorted = l.Items.ToList();
                // List.Sort is not stable; OrderBy is (as JavaScript's sort).
                sorted = sorted.OrderBy(x => x, Comparer<JinjaValue>.Create((a, b) => (reverse ? -1 : 1) * Compare(Key(a), Key(b), caseSensitive))).ToList();
                return new JinjaList(sorted);
            }
            case "items":
                return v is JinjaDict id ? JinjaBuiltins.Items(id) : throw Unsupported();
            case "dictsort":
            {
                if (v is not JinjaDict d) throw Unsupported();
                bool caseSensitive = Arg(args, kwargs, 0, "case_sensitive", JinjaValue.False).IsTruthy;
                bool byValue = Arg(args, kwargs, 1, "by", new JinjaString("key")).ToString() == "value";
                bool reverse = Arg(args, kwargs, 2, "reverse", JinjaValue.False).IsTruthy;
                var items = JinjaBuiltins.Items(d).Items.OrderBy(x => x, Comparer<JinjaValue>.Create((a, b) =>
                    (reverse ? -1 : 1) * Compare(((JinjaList)a).Items[byValue ? 1 : 0], ((JinjaList)b).Items[byValue ? 1 : 0], caseSensitive))).ToList();
                return new JinjaList(items);
            }
            case "selectattr" or "rejectattr":
            {
                if (v is not JinjaList l) throw Unsupported();
                if (args.Count == 0) throw new JinjaException("an attribute name is required");
                string attr = args[0].ToString();
                string? test = args.Count > 1 ? args[1].ToString() : null;
                bool select = name == "selectattr";
                var result = l.Items.Where(item =>
                {
                    var a = AttributePath(item, attr);
                    bool r = test == null ? a.IsTruthy : a is not JinjaUndefined && TestByName(test, a, args.Count > 2 ? args[2] : null);
                    return r == select;
                }).ToList();
                return new JinjaList(result);
            }
            case "map":
            {
                if (v is not JinjaList l) throw Unsupported();
                if (kwargs.Get("attribute") is not JinjaString attr) throw new JinjaException("only map(attribute='...') is supported");
                var fallback = kwargs.Get("default");
                return new JinjaList(l.Items.Select(x => AttributePath(x, attr.Value) is JinjaUndefined ? fallback : AttributePath(x, attr.Value)).ToList());
            }
            case "indent":
            {
                if (v is not JinjaString s) throw Unsupported();
                var width = Arg(args, kwargs, 0, "width", new JinjaInt(4));
                string pad = width is JinjaInt w ? new string(' ', (int)w.Value) : width.ToString();
                bool first = Arg(args, kwargs, 1, "first", JinjaValue.False).IsTruthy;
                bool blank = Arg(args, kwargs, 2, "blank", JinjaValue.False).IsTruthy;
                var lines = s.Value.Split('\n');
                for (int i = 0; i < lines.Length; i++)
                    if (!((!first && i == 0) || (!blank && lines[i].Length == 0))) lines[i] = pad + lines[i];
                return new JinjaString(string.Join("\n", lines));
            }
            case "replace":
                return v is JinjaString rs
                    ? ((JinjaFunction)JinjaBuiltins.StringMethod(rs, "replace")!).Call(args, kwargs, env)
                    : throw Unsupported();
            case "int":
                return v switch
                {
                    JinjaInt => v,
                    JinjaFloat f => new JinjaInt((long)Math.Floor(f.Value)),
                    JinjaBool b => new JinjaInt(b.Value ? 1 : 0),
                    JinjaString s => long.TryParse(s.Value.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long x)
                        ? new JinjaInt(x) : Arg(args, kwargs, 0, "default", new JinjaInt(0)),
                    _ => throw Unsupported(),
                };
            case "float":
                return v switch
                {
                    JinjaInt i => new JinjaFloat(i.Value),
                    JinjaFloat => v,
                    JinjaBool b => new JinjaFloat(b.Value ? 1 : 0),
                    JinjaString s => double.TryParse(s.Value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double x)
                        ? new JinjaFloat(x) : Arg(args, kwargs, 0, "default", new JinjaFloat(0)),
                    _ => throw Unsupported(),
                };
            case "abs":
                return v switch
                {
                    JinjaInt i => new JinjaInt(Math.Abs(i.Value)),
                    JinjaFloat f => new JinjaFloat(Math.Abs(f.Value)),
                    _ => throw Unsupported(),
                };
            case "bool":
                return JinjaValue.Bool(v.IsTruthy);
            default:
                throw new JinjaException($"unsupported filter '{name}'");
        }
    }

    /// <summary>"a.b.0" paths into dicts and lists (sort, selectattr, map).</summary>
    static JinjaValue AttributePath(JinjaValue item, string path)
    {
        var value = item;
        foreach (var part in path.Split('.'))
        {
            value = value switch
            {
                JinjaDict d => d.Get(part),
                JinjaNamespace ns => ns.Entries.TryGetValue(part, out var x) ? x : JinjaValue.Undefined,
                JinjaList l when int.TryParse(part, out int i) && i >= 0 && i < l.Items.Count => l.Items[i],
                _ => JinjaValue.Undefined,
            };
        }
        return value;
    }

    static int Compare(JinjaValue a, JinjaValue b, bool caseSensitive)
    {
        if (a is JinjaNone && b is JinjaNone) return 0;
        if (a is JinjaUndefined && b is JinjaUndefined) return 0;
        if (a is JinjaInt or JinjaFloat or JinjaBool && b is JinjaInt or JinjaFloat or JinjaBool)
        {
            double x = Num(a), y = Num(b);
            return x < y ? -1 : x > y ? 1 : 0;
        }
        if (a is JinjaString sa && b is JinjaString sb)
        {
            string x = caseSensitive ? sa.Value : sa.Value.ToLowerInvariant(), y = caseSensitive ? sb.Value : sb.Value.ToLowerInvariant();
            return Math.Sign(string.CompareOrdinal(x, y));
        }
        throw new JinjaException($"cannot compare a {a.TypeName} with a {b.TypeName}");
    }

    static double Num(JinjaValue v) => v switch { JinjaInt i => i.Value, JinjaFloat f => f.Value, JinjaBool b => b.Value ? 1 : 0, _ => 0 };

    public static bool Test(TestNode t, JinjaValue v)
    {
        try
        {
            return TestByName(t.Test, v, null);
        }
        catch (JinjaException e) when (e.Line == 0)
        {
            throw new JinjaException(e.Message, t.Line, t.Column);
        }
    }

    static bool TestByName(string test, JinjaValue v, JinjaValue? arg) => test switch
    {
        "defined" => v is not JinjaUndefined,
        "undefined" => v is JinjaUndefined,
        "none" => v is JinjaNone,
        "string" => v is JinjaString,
        "number" => v is JinjaInt or JinjaFloat,
        "integer" => v is JinjaInt,
        "float" => v is JinjaFloat,
        "boolean" => v is JinjaBool,
        "true" => v is JinjaBool { Value: true },
        "false" => v is JinjaBool { Value: false },
        "mapping" => v is JinjaDict,
        "iterable" => v is JinjaList or JinjaString or JinjaDict,
        "sequence" => v is JinjaList or JinjaString or JinjaDict,
        "callable" => v is JinjaFunction,
        "odd" => v is JinjaInt oi ? oi.Value % 2 != 0 : throw new JinjaException($"test 'odd' needs an integer, got {v.TypeName}"),
        "even" => v is JinjaInt ei ? ei.Value % 2 == 0 : throw new JinjaException($"test 'even' needs an integer, got {v.TypeName}"),
        "lower" => v is JinjaString ls && ls.Value == ls.Value.ToLowerInvariant(),
        "upper" => v is JinjaString us && us.Value == us.Value.ToUpperInvariant(),
        "equalto" or "eq" or "==" => arg != null && JinjaOperators.LooseEquals(v, arg),
        "ne" or "!=" => arg != null && !JinjaOperators.LooseEquals(v, arg),
        _ => throw new JinjaException($"unsupported test '{test}'"),
    };
}
