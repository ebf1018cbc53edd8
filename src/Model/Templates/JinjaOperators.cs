using System.Globalization;

namespace Qwen3Cuda.Model.Templates;

/// <summary>Binary operators with @huggingface/jinja's rules (and/or return an operand; == is JavaScript's loose equality on values).</summary>
static class JinjaOperators
{
    public static JinjaValue Binary(JinjaInterpreter interp, BinaryNode node, JinjaEnvironment env)
    {
        var left = interp.Evaluate(node.Left, env);
        switch (node.Operator)
        {
            case "and": return left.IsTruthy ? interp.Evaluate(node.Right, env) : left;
            case "or": return left.IsTruthy ? left : interp.Evaluate(node.Right, env);
        }
        var right = interp.Evaluate(node.Right, env);
        string op = node.Operator;
        JinjaException Error(string m) => new(m, node.Line, node.Column);
        switch (op)
        {
            case "==": return JinjaValue.Bool(LooseEquals(left, right));
            case "!=": return JinjaValue.Bool(!LooseEquals(left, right));
        }
        if (left is JinjaUndefined || right is JinjaUndefined)
        {
            if (right is JinjaUndefined && op is "in" or "not in") return JinjaValue.Bool(op == "not in");
            throw Error($"cannot apply '{op}' to an undefined value");
        }
        if (left is JinjaNone || right is JinjaNone) throw Error($"cannot apply '{op}' to none");
        if (op == "~") return new JinjaString(ConcatText(left) + ConcatText(right));
        if (op == "**" && Numeric(left, out double pa, out bool fa) && Numeric(right, out double pb, out bool fb))
        {
            if (pa == 0 && pb < 0) throw Error("0.0 cannot be raised to a negative power");
            double res = Math.Pow(pa, pb);
            if (!double.IsFinite(res)) throw Error("exponentiation result is not a finite real number");
            return fa || fb || pb < 0 ? new JinjaFloat(res) : new JinjaInt((long)res);
        }
        if (left is JinjaInt or JinjaFloat && right is JinjaInt or JinjaFloat)
        {
            bool isFloat = left is JinjaFloat || right is JinjaFloat;
            if (!isFloat && op is "+" or "-" or "*" or "//" or "%")
            {
                long x = ((JinjaInt)left).Value, y = ((JinjaInt)right).Value;
                if (op is "//" or "%" && y == 0) throw Error("integer division or modulo by zero");
                return new JinjaInt(op switch
                {
                    "+" => x + y,
                    "-" => x - y,
                    "*" => x * y,
                    "//" => (long)Math.Floor((double)x / y),
                    _ => x % y, // JavaScript remainder (sign of the dividend), as the reference
                });
            }
            Numeric(left, out double a, out _);
            Numeric(right, out double b, out _);
            switch (op)
            {
                case "+": return new JinjaFloat(a + b);
                case "-": return new JinjaFloat(a - b);
                case "*": return new JinjaFloat(a * b);
                case "/": return new JinjaFloat(a / b);
                case "//": return new JinjaFloat(Math.Floor(a / b));
                case "%": return new JinjaFloat(a % b);
                case "<": return JinjaValue.Bool(a < b);
                case ">": return JinjaValue.Bool(a > b);
                case "<=": return JinjaValue.Bool(a <= b);
                case ">=": return JinjaValue.Bool(a >= b);
            }
        }
        else if (left is JinjaList la && right is JinjaList lb && op == "+")
            return new JinjaList([.. la.Items, .. lb.Items]);
        else if (right is JinjaList list && op is "in" or "not in")
        {
            bool member = list.Items.Any(x => StrictEquals(x, left));
            return JinjaValue.Bool(member == (op == "in"));
        }
        if (op == "+" && (left is JinjaString || right is JinjaString)) return new JinjaString(ConcatText(left) + ConcatText(right));
        if (left is JinjaString ls && right is JinjaString rs)
        {
            switch (op)
            {
                case "in": return JinjaValue.Bool(rs.Value.Contains(ls.Value, StringComparison.Ordinal));
                case "not in": return JinjaValue.Bool(!rs.Value.Contains(ls.Value, StringComparison.Ordinal));
                case "<": return JinjaValue.Bool(string.CompareOrdinal(ls.Value, rs.Value) < 0);
                case ">": return JinjaValue.Bool(string.CompareOrdinal(ls.Value, rs.Value) > 0);
                case "<=": return JinjaValue.Bool(string.CompareOrdinal(ls.Value, rs.Value) <= 0);
                case ">=": return JinjaValue.Bool(string.CompareOrdinal(ls.Value, rs.Value) >= 0);
            }
        }
        if (left is JinjaString key && right is JinjaDict dict && op is "in" or "not in")
            return JinjaValue.Bool(dict.Entries.ContainsKey(key.Value) == (op == "in"));
        throw Error($"operator '{op}' is not supported between a {left.TypeName} and a {right.TypeName}");
    }

    static bool Numeric(JinjaValue v, out double d, out bool isFloat)
    {
        isFloat = v is JinjaFloat;
        switch (v)
        {
            case JinjaInt i: d = i.Value; return true;
            case JinjaFloat f: d = f.Value; return true;
            case JinjaBool b: d = b.Value ? 1 : 0; return true;
            default: d = 0; return false;
        }
    }

    /// <summary>What JavaScript's value.toString() gives for ~ and string +: numbers without ".0".</summary>
    static string ConcatText(JinjaValue v) => v switch
    {
        JinjaFloat f => JinjaValue.FormatJsNumber(f.Value),
        _ => v.ToString(),
    };

    /// <summary>JavaScript == on the underlying values: containers by identity, primitives by value with number coercion.</summary>
    public static bool LooseEquals(JinjaValue a, JinjaValue b)
    {
        if (a is JinjaUndefined or JinjaNone) return b is JinjaUndefined or JinjaNone;
        if (b is JinjaUndefined or JinjaNone) return false;
        if (a is JinjaString sa && b is JinjaString sb) return sa.Value == sb.Value;
        if (IsPrimitive(a) && IsPrimitive(b))
            return ToNumber(a) is double x && ToNumber(b) is double y && x == y;
        return ReferenceEquals(a, b);
    }

    /// <summary>JavaScript === on the underlying values (used by `in` on lists).</summary>
    public static bool StrictEquals(JinjaValue a, JinjaValue b) => (a, b) switch
    {
        (JinjaString x, JinjaString y) => x.Value == y.Value,
        (JinjaInt or JinjaFloat, JinjaInt or JinjaFloat) => ToNumber(a) == ToNumber(b),
        (JinjaBool x, JinjaBool y) => x.Value == y.Value,
        (JinjaNone, JinjaNone) or (JinjaUndefined, JinjaUndefined) => true,
        _ => ReferenceEquals(a, b),
    };

    static bool IsPrimitive(JinjaValue v) => v is JinjaString or JinjaInt or JinjaFloat or JinjaBool;

    static double? ToNumber(JinjaValue v) => v switch
    {
        JinjaInt i => i.Value,
        JinjaFloat f => f.Value,
        JinjaBool b => b.Value ? 1 : 0,
        JinjaString s => s.Value.Trim().Length == 0 ? 0
            : double.TryParse(s.Value.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out var d) ? d : null,
        _ => null,
    };
}
