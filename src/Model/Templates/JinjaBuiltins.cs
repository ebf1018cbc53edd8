using System.Text;

namespace Qwen3Cuda.Model.Templates;

/// <summary>
/// Methods on strings (upper, lower, strip, lstrip, rstrip, title, capitalize, startswith, endswith,
/// split, replace, join, length) and dicts (get, items, keys, values). strip/lstrip/rstrip with an
/// argument strip those characters as Python does (@huggingface/jinja 0.5.11 ignores the argument and
/// strips white space; the Qwen3 templates only pass '\n', where the two agree unless the text has other
/// white space at its ends).
/// </summary>
static class JinjaBuiltins
{
    static JinjaFunction Fn(string name, Func<List<JinjaValue>, JinjaDict, JinjaValue> f) => new(name, (a, k, _) => f(a, k));

    static string StrArg(List<JinjaValue> args, int i, string method) => args.Count > i && args[i] is JinjaString s ? s.Value
        : throw new JinjaException($"{method}() argument {i + 1} must be a string, got {(args.Count > i ? args[i].TypeName : "nothing")}");

    public static JinjaValue? StringMethod(JinjaString str, string name)
    {
        string s = str.Value;
        return name switch
        {
            "upper" => Fn(name, (_, _) => new JinjaString(s.ToUpperInvariant())),
            "lower" => Fn(name, (_, _) => new JinjaString(s.ToLowerInvariant())),
            "strip" => Fn(name, (a, _) => new JinjaString(Strip(s, a, left: true, right: true))),
            "lstrip" => Fn(name, (a, _) => new JinjaString(Strip(s, a, left: true, right: false))),
            "rstrip" => Fn(name, (a, _) => new JinjaString(Strip(s, a, left: false, right: true))),
            "title" => Fn(name, (_, _) => new JinjaString(Title(s))),
            "capitalize" => Fn(name, (_, _) => new JinjaString(s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..])),
            "length" => new JinjaInt(s.Length),
            "startswith" => Fn(name, (a, _) => JinjaValue.Bool(AffixMatch(s, a, name, (x, p) => x.StartsWith(p, StringComparison.Ordinal)))),
            "endswith" => Fn(name, (a, _) => JinjaValue.Bool(AffixMatch(s, a, name, (x, p) => x.EndsWith(p, StringComparison.Ordinal)))),
            "split" => Fn(name, (a, k) => Split(s, a, k)),
            "replace" => Fn(name, (a, k) => new JinjaString(Replace(s, StrArg(a, 0, name), StrArg(a, 1, name),
                a.Count > 2 ? a[2] : k.Get("count")))),
            "join" => Fn(name, (a, _) => a.Count == 1 && a[0] is JinjaList l
                ? new JinjaString(string.Join(s, l.Items.Select(x => x.ToString())))
                : throw new JinjaException("join() argument must be a list")),
            _ => null,
        };
    }

    public static JinjaValue? DictMethod(JinjaDict d, string name) => name switch
    {
        "get" => Fn(name, (a, _) => a.Count > 0 && a[0] is JinjaString key
            ? d.Entries.TryGetValue(key.Value, out var v) ? v : a.Count > 1 ? a[1] : JinjaValue.None
            : throw new JinjaException("dict.get() key must be a string")),
        "items" => Fn(name, (_, _) => Items(d)),
        "keys" => Fn(name, (_, _) => new JinjaList(d.Entries.Keys.Select(k => (JinjaValue)new JinjaString(k)).ToList())),
        "values" => Fn(name, (_, _) => new JinjaList(d.Entries.Values.ToList())),
        _ => null,
    };

    public static JinjaList Items(JinjaDict d) =>
        new(d.Entries.Select(kv => (JinjaValue)new JinjaList([new JinjaString(kv.Key), kv.Value], isTuple: true)).ToList());

    /// <summary>No argument (or none): JavaScript trim of white space. A string argument: Python's strip of those characters.</summary>
    public static string Strip(string s, List<JinjaValue> args, bool left, bool right)
    {
        if (args.Count == 0 || args[0] is JinjaNone or JinjaUndefined)
        {
            int b = 0, e = s.Length;
            if (left) while (b < e && JinjaLexer.IsSpace(s[b])) b++;
            if (right) while (e > b && JinjaLexer.IsSpace(s[e - 1])) e--;
            return s[b..e];
        }
        if (args[0] is not JinjaString chars) throw new JinjaException($"strip() argument must be a string, got {args[0].TypeName}");
        var set = chars.Value;
        int start = 0, end = s.Length;
        if (left) while (start < end && set.Contains(s[start])) start++;
        if (right) while (end > start && set.Contains(s[end - 1])) end--;
        return s[start..end];
    }

    static string Title(string s)
    {
        // /\b\w/g -> upper case: the first word character after a non-word character.
        var sb = new StringBuilder(s.Length);
        for (int i = 0; i < s.Length; i++)
        {
            bool word = IsAsciiWord(s[i]);
            bool boundary = word && (i == 0 || !IsAsciiWord(s[i - 1]));
            sb.Append(boundary ? char.ToUpperInvariant(s[i]) : s[i]);
        }
        return sb.ToString();
    }

    static bool IsAsciiWord(char c) => c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_';

    static bool AffixMatch(string s, List<JinjaValue> args, string method, Func<string, string, bool> test)
    {
        if (args.Count == 0) throw new JinjaException($"{method}() requires at least one argument");
        return args[0] switch
        {
            JinjaString p => test(s, p.Value),
            JinjaList l => l.Items.Any(x => x is JinjaString p ? test(s, p.Value) : throw new JinjaException($"{method}() tuple elements must be strings")),
            _ => throw new JinjaException($"{method}() argument must be a string or tuple of strings"),
        };
    }

    static JinjaList Split(string s, List<JinjaValue> args, JinjaDict kwargs)
    {
        var sepV = args.Count > 0 ? args[0] : kwargs.Get("sep");
        var maxV = args.Count > 1 ? args[1] : kwargs.Get("maxsplit");
        long max = maxV is JinjaInt mi ? mi.Value : -1;
        var parts = new List<string>();
        if (sepV is JinjaNone or JinjaUndefined)
        {
            int i = 0;
            while (i < s.Length)
            {
                while (i < s.Length && JinjaLexer.IsSpace(s[i])) i++;
                if (i >= s.Length) break;
                if (max >= 0 && parts.Count >= max) { parts.Add(s[i..]); break; }
                int j = i;
                while (j < s.Length && !JinjaLexer.IsSpace(s[j])) j++;
                parts.Add(s[i..j]);
                i = j;
            }
        }
        else if (sepV is JinjaString sep)
        {
            if (sep.Value.Length == 0) throw new JinjaException("split(): empty separator");
            var all = s.Split(sep.Value);
            if (max >= 0 && all.Length > max + 1)
            {
                parts.AddRange(all.Take((int)max));
                parts.Add(string.Join(sep.Value, all.Skip((int)max)));
            }
            else parts.AddRange(all);
        }
        else throw new JinjaException($"split() separator must be a string or none, got {sepV.TypeName}");
        return new JinjaList(parts.Select(p => (JinjaValue)new JinjaString(p)).ToList());
    }

    /// <summary>Python's str.replace(old, new, count).</summary>
    static string Replace(string s, string oldValue, string newValue, JinjaValue count)
    {
        long max = count is JinjaInt c ? c.Value : -1;
        if (max == 0) return s;
        var sb = new StringBuilder();
        long done = 0;
        if (oldValue.Length == 0)
        {
            var elems = JinjaInterpreter.StringElements(s);
            foreach (var e in elems)
            {
                if (max < 0 || done < max) { sb.Append(newValue); done++; }
                sb.Append(e);
            }
            if (max < 0 || done < max) sb.Append(newValue);
            return sb.ToString();
        }
        int i = 0;
        while (i <= s.Length)
        {
            int k = s.IndexOf(oldValue, i, StringComparison.Ordinal);
            if (k < 0 || (max >= 0 && done >= max)) break;
            sb.Append(s, i, k - i).Append(newValue);
            i = k + oldValue.Length;
            done++;
        }
        sb.Append(s, i, s.Length - i);
        return sb.ToString();
    }
}
