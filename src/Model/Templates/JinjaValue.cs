using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Qwen3Cuda.Model.Templates;

/// <summary>
/// Runtime values of the Jinja interpreter. Semantics follow @huggingface/jinja (the reference the
/// chat templates are tested against): JSON numbers that are whole become integers, undefined and
/// none print as nothing, lists and dicts print as JSON, booleans print as true/false.
/// </summary>
internal abstract class JinjaValue
{
    public abstract string TypeName { get; }
    public virtual bool IsTruthy => true;
    /// <summary>Text when printed by {{ }} or concatenated.</summary>
    public abstract override string ToString();

    public static readonly JinjaUndefined Undefined = new();
    public static readonly JinjaNone None = new();
    public static readonly JinjaBool True = new(true), False = new(false);
    public static JinjaBool Bool(bool b) => b ? True : False;

    /// <summary>Converts parsed JSON (messages, tools) into template values, keeping key order.</summary>
    public static JinjaValue FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Null => None,
        JsonValueKind.True => True,
        JsonValueKind.False => False,
        JsonValueKind.String => new JinjaString(e.GetString()!),
        JsonValueKind.Number => FromNumber(e.GetDouble()),
        JsonValueKind.Array => new JinjaList(e.EnumerateArray().Select(FromJson).ToList()),
        JsonValueKind.Object => new JinjaDict(e.EnumerateObject().Select(p => new KeyValuePair<string, JinjaValue>(p.Name, FromJson(p.Value)))),
        _ => Undefined,
    };

    /// <summary>JavaScript numbers: a whole value is an integer (1.0 becomes 1), as @huggingface/jinja does.</summary>
    public static JinjaValue FromNumber(double d) =>
        Math.Floor(d) == d && Math.Abs(d) <= 9007199254740991 ? new JinjaInt((long)d) : new JinjaFloat(d);

    /// <summary>Converts plain .NET values (string, bool, numbers, lists, dictionaries, null).</summary>
    public static JinjaValue From(object? o) => o switch
    {
        null => None,
        JinjaValue v => v,
        string s => new JinjaString(s),
        bool b => Bool(b),
        int i => new JinjaInt(i),
        long l => new JinjaInt(l),
        double d => FromNumber(d),
        float f => FromNumber(f),
        JsonElement je => FromJson(je),
        IEnumerable<KeyValuePair<string, object?>> dict => new JinjaDict(dict.Select(kv => new KeyValuePair<string, JinjaValue>(kv.Key, From(kv.Value)))),
        System.Collections.IEnumerable list => new JinjaList(list.Cast<object?>().Select(From).ToList()),
        _ => throw new ArgumentException($"cannot pass a {o.GetType().Name} to a template"),
    };

    /// <summary>JavaScript's Number.prototype.toString (shortest round trip; exponent form outside [1e-7, 1e21)).</summary>
    public static string FormatJsNumber(double d)
    {
        if (double.IsNaN(d)) return "NaN";
        if (double.IsPositiveInfinity(d)) return "Infinity";
        if (double.IsNegativeInfinity(d)) return "-Infinity";
        if (d == 0) return "0";
        // Shortest round-trip digits: "R" gives them, in either plain or exponent form.
        var shortest = d.ToString("R", CultureInfo.InvariantCulture);
        bool negative = shortest.StartsWith('-');
        if (negative) shortest = shortest[1..];
        int exp10;
        string digits;
        int ePos = shortest.IndexOfAny(['E', 'e']);
        string mantissa = ePos >= 0 ? shortest[..ePos] : shortest;
        int expPart = ePos >= 0 ? int.Parse(shortest[(ePos + 1)..], CultureInfo.InvariantCulture) : 0;
        int dot = mantissa.IndexOf('.');
        string intPart = dot >= 0 ? mantissa[..dot] : mantissa, fracPart = dot >= 0 ? mantissa[(dot + 1)..] : "";
        digits = (intPart + fracPart).TrimStart('0');
        int leadingZeros = (intPart + fracPart).Length - digits.Length;
        exp10 = intPart.Length - leadingZeros + expPart; // value = 0.digits * 10^exp10
        digits = digits.TrimEnd('0');
        if (digits.Length == 0) digits = "0";
        var sb = new StringBuilder();
        if (negative) sb.Append('-');
        int k = digits.Length, n = exp10;
        if (k <= n && n <= 21) sb.Append(digits).Append('0', n - k);
        else if (0 < n && n <= 21) sb.Append(digits, 0, n).Append('.').Append(digits, n, k - n);
        else if (-6 < n && n <= 0) sb.Append("0.").Append('0', -n).Append(digits);
        else
        {
            sb.Append(digits[0]);
            if (k > 1) sb.Append('.').Append(digits, 1, k - 1);
            sb.Append('e').Append(n - 1 >= 0 ? "+" : "-").Append(Math.Abs(n - 1));
        }
        return sb.ToString();
    }
}

internal sealed class JinjaUndefined : JinjaValue
{
    public override string TypeName => "undefined";
    public override bool IsTruthy => false;
    public override string ToString() => "";
}

internal sealed class JinjaNone : JinjaValue
{
    public override string TypeName => "none";
    public override bool IsTruthy => false;
    public override string ToString() => "";
}

internal sealed class JinjaBool(bool value) : JinjaValue
{
    public bool Value { get; } = value;
    public override string TypeName => "boolean";
    public override bool IsTruthy => Value;
    public override string ToString() => Value ? "true" : "false";
}

internal sealed class JinjaInt(long value) : JinjaValue
{
    public long Value { get; } = value;
    public override string TypeName => "integer";
    public override bool IsTruthy => Value != 0;
    public override string ToString() => Value.ToString(CultureInfo.InvariantCulture);
}

internal sealed class JinjaFloat(double value) : JinjaValue
{
    public double Value { get; } = value;
    public override string TypeName => "float";
    public override bool IsTruthy => Value != 0 && !double.IsNaN(Value);
    public override string ToString() =>
        Value == 0 && double.IsNegative(Value) ? "-0.0"
        : Value % 1 == 0 && !double.IsInfinity(Value) ? FormatJsNumber(Value) + ".0"
        : FormatJsNumber(Value);
}

internal sealed class JinjaString(string value) : JinjaValue
{
    public string Value { get; } = value;
    public override string TypeName => "string";
    public override bool IsTruthy => Value.Length > 0;
    public override string ToString() => Value;
}

internal sealed class JinjaList(List<JinjaValue> items, bool isTuple = false) : JinjaValue
{
    public List<JinjaValue> Items { get; } = items;
    public bool IsTuple { get; } = isTuple;
    public override string TypeName => IsTuple ? "tuple" : "list";
    public override bool IsTruthy => Items.Count > 0;
    public override string ToString() => JinjaJson.Serialize(this, JinjaJson.Options.Default, undefinedAsNull: false);
}

/// <summary>A dict (insertion-ordered). Also the keyword-arguments bag passed to functions.</summary>
internal class JinjaDict : JinjaValue
{
    public OrderedDictionary<string, JinjaValue> Entries { get; }
    public JinjaDict() => Entries = new OrderedDictionary<string, JinjaValue>(StringComparer.Ordinal);
    public JinjaDict(IEnumerable<KeyValuePair<string, JinjaValue>> entries) : this()
    {
        foreach (var kv in entries) Entries[kv.Key] = kv.Value;
    }
    public override string TypeName => "dict";
    public override bool IsTruthy => Entries.Count > 0;
    public override string ToString() => JinjaJson.Serialize(this, JinjaJson.Options.Default, undefinedAsNull: false);
    public JinjaValue Get(string key) => Entries.TryGetValue(key, out var v) ? v : Undefined;
}

/// <summary>Result of namespace(...): attributes can be assigned with {% set ns.x = ... %}.</summary>
internal sealed class JinjaNamespace : JinjaValue
{
    public OrderedDictionary<string, JinjaValue> Entries { get; } = new(StringComparer.Ordinal);
    public override string TypeName => "namespace";
    public override string ToString() => JinjaJson.Serialize(this, JinjaJson.Options.Default, undefinedAsNull: false);
}

/// <summary>A callable: macros, namespace(), range(), raise_exception(), string methods.</summary>
internal sealed class JinjaFunction(string name, Func<List<JinjaValue>, JinjaDict, JinjaEnvironment, JinjaValue> call) : JinjaValue
{
    public string Name { get; } = name;
    public Func<List<JinjaValue>, JinjaDict, JinjaEnvironment, JinjaValue> Call { get; } = call;
    public override string TypeName => "function";
    public override string ToString() => $"<function {Name}>";
}

/// <summary>The tojson filter: Python json.dumps layout (", " and ": " separators by default), no ASCII escaping by default.</summary>
internal static class JinjaJson
{
    public sealed record Options(int? Indent, bool EnsureAscii, string? ItemSeparator, string? KeySeparator, bool SortKeys)
    {
        public static readonly Options Default = new(null, false, null, null, false);
    }

    public static string Serialize(JinjaValue v, Options o, bool undefinedAsNull = true)
    {
        var sb = new StringBuilder();
        Write(sb, v, o, 0, undefinedAsNull);
        return sb.ToString();
    }

    static void Write(StringBuilder sb, JinjaValue v, Options o, int depth, bool undefinedAsNull)
    {
        string itemSep = o.ItemSeparator ?? (o.Indent is > 0 ? "," : ", ");
        string keySep = o.KeySeparator ?? ": ";
        switch (v)
        {
            case JinjaNone: sb.Append("null"); break;
            case JinjaUndefined: sb.Append(undefinedAsNull ? "null" : "undefined"); break;
            case JinjaBool b: sb.Append(b.Value ? "true" : "false"); break;
            case JinjaInt i: sb.Append(i.Value.ToString(CultureInfo.InvariantCulture)); break;
            case JinjaFloat f: sb.Append(double.IsFinite(f.Value) ? JinjaValue.FormatJsNumber(f.Value) : "null"); break;
            case JinjaString s: WriteString(sb, s.Value, o.EnsureAscii); break;
            case JinjaList l:
            {
                bool pretty = o.Indent is > 0 && l.Items.Count > 0;
                sb.Append('[');
                for (int k = 0; k < l.Items.Count; k++)
                {
                    if (k > 0) sb.Append(itemSep);
                    if (pretty) NewLine(sb, o.Indent!.Value, depth + 1);
                    Write(sb, l.Items[k], o, depth + 1, undefinedAsNull);
                }
                if (pretty) NewLine(sb, o.Indent!.Value, depth);
                sb.Append(']');
                break;
            }
            case JinjaDict or JinjaNamespace:
            {
                var entries = v is JinjaDict d ? d.Entries.ToList() : ((JinjaNamespace)v).Entries.ToList();
                if (o.SortKeys) entries.Sort((a, b) => string.Compare(a.Key, b.Key, StringComparison.Ordinal));
                bool pretty = o.Indent is > 0 && entries.Count > 0;
                sb.Append('{');
                for (int k = 0; k < entries.Count; k++)
                {
                    if (k > 0) sb.Append(itemSep);
                    if (pretty) NewLine(sb, o.Indent!.Value, depth + 1);
                    WriteString(sb, entries[k].Key, o.EnsureAscii);
                    sb.Append(keySep);
                    Write(sb, entries[k].Value, o, depth + 1, undefinedAsNull);
                }
                if (pretty) NewLine(sb, o.Indent!.Value, depth);
                sb.Append('}');
                break;
            }
            default: throw new JinjaException($"cannot convert a {v.TypeName} to JSON");
        }
    }

    static void NewLine(StringBuilder sb, int indent, int depth) => sb.Append('\n').Append(' ', indent * depth);

    /// <summary>JSON.stringify's string escaping (control characters as \u00xx, lone surrogates as \udxxx).</summary>
    static void WriteString(StringBuilder sb, string s, bool ensureAscii)
    {
        sb.Append('"');
        for (int i = 0; i < s.Length; i++)
        {
            char c = s[i];
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                default:
                    bool loneSurrogate = char.IsHighSurrogate(c) ? !(i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
                        : char.IsLowSurrogate(c) && !(i > 0 && char.IsHighSurrogate(s[i - 1]));
                    if (c < 0x20 || loneSurrogate || (ensureAscii && c >= 0x7F))
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    else sb.Append(c);
                    break;
            }
        }
        sb.Append('"');
    }
}

/// <summary>A template error: names the construct and, when known, the line and column in the template source.</summary>
public sealed class JinjaException : Runtime.Qwen3CudaException
{
    public override Runtime.ErrorKind Kind => Runtime.ErrorKind.InvalidInput;
    public int Line { get; }
    public int Column { get; }
    public JinjaException(string message) : base(message) { }
    public JinjaException(string message, int line, int column)
        : base(line > 0 ? $"{message} (template line {line}, column {column})" : message)
    {
        Line = line;
        Column = column;
    }
}
