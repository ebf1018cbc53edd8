using System.Text;

namespace Qwen3Cuda.Model.Templates;

internal enum JinjaTokenType
{
    Text, NumericLiteral, StringLiteral, Identifier, Equals, OpenParen, CloseParen, OpenStatement, CloseStatement,
    OpenExpression, CloseExpression, OpenSquareBracket, CloseSquareBracket, OpenCurlyBracket, CloseCurlyBracket,
    Comma, Dot, Colon, Pipe, AdditiveBinaryOperator, MultiplicativeBinaryOperator, ExponentiationBinaryOperator,
    ComparisonBinaryOperator, UnaryOperator, Comment,
}

/// <summary>A token and where it starts in the original template (1-based line and column).</summary>
internal sealed record JinjaToken(string Value, JinjaTokenType Type, int Line, int Column);

/// <summary>
/// Jinja lexer with the whitespace handling of transformers' chat templates (and @huggingface/jinja):
/// one trailing newline dropped, lstrip_blocks and trim_blocks on, {%- -%} {{- -}} {#- -#} trimming.
/// </summary>
internal static class JinjaLexer
{
    static readonly (string Seq, JinjaTokenType Type)[] Table =
    [
        ("{%", JinjaTokenType.OpenStatement), ("%}", JinjaTokenType.CloseStatement),
        ("{{", JinjaTokenType.OpenExpression), ("}}", JinjaTokenType.CloseExpression),
        ("(", JinjaTokenType.OpenParen), (")", JinjaTokenType.CloseParen),
        ("{", JinjaTokenType.OpenCurlyBracket), ("}", JinjaTokenType.CloseCurlyBracket),
        ("[", JinjaTokenType.OpenSquareBracket), ("]", JinjaTokenType.CloseSquareBracket),
        (",", JinjaTokenType.Comma), (".", JinjaTokenType.Dot), (":", JinjaTokenType.Colon), ("|", JinjaTokenType.Pipe),
        ("<=", JinjaTokenType.ComparisonBinaryOperator), (">=", JinjaTokenType.ComparisonBinaryOperator),
        ("==", JinjaTokenType.ComparisonBinaryOperator), ("!=", JinjaTokenType.ComparisonBinaryOperator),
        ("<", JinjaTokenType.ComparisonBinaryOperator), (">", JinjaTokenType.ComparisonBinaryOperator),
        ("+", JinjaTokenType.AdditiveBinaryOperator), ("-", JinjaTokenType.AdditiveBinaryOperator),
        ("~", JinjaTokenType.AdditiveBinaryOperator),
        ("**", JinjaTokenType.ExponentiationBinaryOperator), ("*", JinjaTokenType.MultiplicativeBinaryOperator),
        ("//", JinjaTokenType.MultiplicativeBinaryOperator), ("/", JinjaTokenType.MultiplicativeBinaryOperator),
        ("%", JinjaTokenType.MultiplicativeBinaryOperator), ("=", JinjaTokenType.Equals),
    ];

    /// <summary>ECMAScript \s (white space and line terminators), as used for trimming.</summary>
    internal static bool IsSpace(char c) => c is '\t' or '\n' or '\v' or '\f' or '\r' or ' ' or '\u00a0' or '\u1680'
        or '\u2028' or '\u2029' or '\u202f' or '\u205f' or '\u3000' or '\ufeff' || (c >= '\u2000' && c <= '\u200a');

    static bool IsWord(char c) => c is (>= 'a' and <= 'z') or (>= 'A' and <= 'Z') or (>= '0' and <= '9') or '_';
    static bool IsDigit(char c) => c is >= '0' and <= '9';

    /// <summary>Source text after the preprocessing passes, with each character's index in the original.</summary>
    sealed class Mapped
    {
        public readonly StringBuilder Text = new();
        public readonly List<int> Origin = new();
        public void Add(char c, int origin) { Text.Append(c); Origin.Add(origin); }
    }

    static Mapped Preprocess(string template)
    {
        // 0. A single trailing newline is dropped.
        int length = template.EndsWith('\n') ? template.Length - 1 : template.Length;
        // 1. lstrip_blocks: /^[ \t]*({[#%-])/gm -> "$1" (JS ^ in multiline mode follows \n \r \u2028 \u2029).
        var a = new Mapped();
        for (int i = 0; i < length; i++)
        {
            bool lineStart = i == 0 || template[i - 1] is '\n' or '\r' or '\u2028' or '\u2029';
            if (lineStart)
            {
                int j = i;
                while (j < length && template[j] is ' ' or '\t') j++;
                if (j > i && j + 1 < length && template[j] == '{' && template[j + 1] is '#' or '%' or '-')
                    i = j;
            }
            a.Add(template[i], i);
        }
        // 2. trim_blocks: /([#%-]})\n/g -> "$1"
        var b = new Mapped();
        var at = a.Text;
        for (int i = 0; i < at.Length; i++)
        {
            b.Add(at[i], a.Origin[i]);
            if (at[i] == '}' && i > 0 && at[i - 1] is '#' or '%' or '-' && i + 1 < at.Length && at[i + 1] == '\n') i++;
        }
        // 3. transformers' {% generation %} / {% endgeneration %} tags are removed.
        return RemoveGenerationTags(b);
    }

    static Mapped RemoveGenerationTags(Mapped m)
    {
        var s = m.Text.ToString();
        if (!s.Contains("generation", StringComparison.Ordinal)) return m;
        var r = new Mapped();
        int i = 0;
        while (i < s.Length)
        {
            int open = s.IndexOf("{%", i, StringComparison.Ordinal);
            if (open < 0) break;
            int p = open + 2;
            bool lstrip = p < s.Length && s[p] == '-';
            if (lstrip) p++;
            while (p < s.Length && IsSpace(s[p])) p++;
            if (string.CompareOrdinal(s, p, "end", 0, 3) == 0) p += 3;
            if (string.CompareOrdinal(s, p, "generation", 0, 10) != 0) { Copy(m, r, i, open + 2); i = open + 2; continue; }
            p += 10;
            while (p < s.Length && IsSpace(s[p])) p++;
            bool rstrip = p < s.Length && s[p] == '-';
            if (rstrip) p++;
            if (string.CompareOrdinal(s, p, "%}", 0, 2) != 0) { Copy(m, r, i, open + 2); i = open + 2; continue; }
            p += 2;
            int before = open;
            while (before > i && IsSpace(s[before - 1])) before--;
            int after = p;
            while (after < s.Length && IsSpace(s[after])) after++;
            Copy(m, r, i, lstrip ? before : open);
            if (!rstrip) Copy(m, r, p, after);
            i = after;
        }
        Copy(m, r, i, s.Length);
        return r;
    }

    static void Copy(Mapped from, Mapped to, int start, int end)
    {
        for (int k = start; k < end; k++) to.Add(from.Text[k], from.Origin[k]);
    }

    public static List<JinjaToken> Tokenize(string template)
    {
        var mapped = Preprocess(template);
        string src = mapped.Text.ToString();
        // Line starts of the original template, for positions.
        var lineStarts = new List<int> { 0 };
        for (int k = 0; k < template.Length; k++) if (template[k] == '\n') lineStarts.Add(k + 1);
        (int Line, int Col) PosOf(int index)
        {
            int orig = index < mapped.Origin.Count ? mapped.Origin[index] : template.Length;
            int line = lineStarts.BinarySearch(orig);
            if (line < 0) line = ~line - 1;
            return (line + 1, orig - lineStarts[line] + 1);
        }

        var tokens = new List<JinjaToken>();
        int pos = 0, curlyDepth = 0;
        void Push(string value, JinjaTokenType type, int start)
        {
            var (l, c) = PosOf(start);
            tokens.Add(new JinjaToken(value, type, l, c));
        }
        JinjaException Error(string message, int at)
        {
            var (l, c) = PosOf(at);
            return new JinjaException(message, l, c);
        }
        char At(int k) => k < src.Length ? src[k] : '\0';
        bool Starts(string seq) => string.CompareOrdinal(src, pos, seq, 0, seq.Length) == 0;
        void StripTrailingWhitespace()
        {
            if (tokens.Count > 0 && tokens[^1].Type == JinjaTokenType.Text)
            {
                var t = tokens[^1];
                var trimmed = t.Value.TrimEnd(JsSpaces);
                if (trimmed.Length == 0) tokens.RemoveAt(tokens.Count - 1);
                else tokens[^1] = t with { Value = trimmed };
            }
        }
        void SkipLeadingWhitespace()
        {
            while (pos < src.Length && IsSpace(src[pos])) pos++;
        }
        string ConsumeString(char quote, int start)
        {
            var sb = new StringBuilder();
            while (true)
            {
                if (pos >= src.Length) throw Error("unterminated string literal", start);
                char c = src[pos];
                if (c == quote) return sb.ToString();
                if (c == '\\')
                {
                    pos++;
                    if (pos >= src.Length) throw Error("unexpected end of template in a string escape", start);
                    char e = src[pos++];
                    if (e is 'x' or 'u')
                    {
                        int len = e == 'x' ? 2 : 4;
                        if (pos + len > src.Length || !int.TryParse(src.AsSpan(pos, len), System.Globalization.NumberStyles.HexNumber, null, out int code))
                            throw Error($"invalid escape \\{e} in string literal", pos - 2);
                        sb.Append((char)code);
                        pos += len;
                        continue;
                    }
                    sb.Append(e switch
                    {
                        'n' => '\n', 't' => '\t', 'r' => '\r', 'b' => '\b', 'f' => '\f', 'v' => '\v',
                        '\'' => '\'', '"' => '"', '\\' => '\\',
                        _ => throw Error($"unsupported escape \\{e} in string literal", pos - 2),
                    });
                    continue;
                }
                sb.Append(c);
                pos++;
            }
        }
        string ConsumeDigits()
        {
            int s0 = pos;
            while (pos < src.Length && IsDigit(src[pos])) pos++;
            return src[s0..pos];
        }

        while (pos < src.Length)
        {
            var last = tokens.Count > 0 ? tokens[^1].Type : (JinjaTokenType?)null;
            if (last is null or JinjaTokenType.CloseStatement or JinjaTokenType.CloseExpression or JinjaTokenType.Comment)
            {
                int s0 = pos;
                while (pos < src.Length && !(src[pos] == '{' && At(pos + 1) is '%' or '{' or '#')) pos++;
                if (pos > s0)
                {
                    Push(src[s0..pos], JinjaTokenType.Text, s0);
                    continue;
                }
            }
            if (src[pos] == '{' && At(pos + 1) == '#')
            {
                int start = pos;
                pos += 2;
                bool stripBefore = At(pos) == '-';
                if (stripBefore) pos++;
                int end = src.IndexOf("#}", pos, StringComparison.Ordinal);
                if (end < 0) throw Error("missing end of comment tag #}", start);
                string comment = src[pos..end];
                bool stripAfter = comment.EndsWith('-');
                if (stripAfter) comment = comment[..^1];
                if (stripBefore) StripTrailingWhitespace();
                Push(comment, JinjaTokenType.Comment, start);
                pos = end + 2;
                if (stripAfter) SkipLeadingWhitespace();
                continue;
            }
            if (Starts("{%-"))
            {
                StripTrailingWhitespace();
                Push("{%", JinjaTokenType.OpenStatement, pos);
                pos += 3;
                continue;
            }
            if (Starts("{{-"))
            {
                StripTrailingWhitespace();
                Push("{{", JinjaTokenType.OpenExpression, pos);
                curlyDepth = 0;
                pos += 3;
                continue;
            }
            SkipLeadingWhitespace();
            if (pos >= src.Length) break;
            if (Starts("-%}"))
            {
                Push("%}", JinjaTokenType.CloseStatement, pos);
                pos += 3;
                SkipLeadingWhitespace();
                continue;
            }
            if (Starts("-}}"))
            {
                Push("}}", JinjaTokenType.CloseExpression, pos);
                pos += 3;
                SkipLeadingWhitespace();
                continue;
            }
            char ch = src[pos];
            if (ch is '-' or '+')
            {
                var lt = tokens.Count > 0 ? tokens[^1].Type : (JinjaTokenType?)null;
                if (lt is null or JinjaTokenType.Text) throw Error($"unexpected character '{ch}'", pos);
                if (lt is not (JinjaTokenType.Identifier or JinjaTokenType.NumericLiteral or JinjaTokenType.StringLiteral
                    or JinjaTokenType.CloseParen or JinjaTokenType.CloseSquareBracket))
                {
                    int start = pos++;
                    string num = ConsumeDigits();
                    if (num.Length > 0 && At(pos) == '.' && IsDigit(At(pos + 1)))
                    {
                        pos++;
                        num = num + "." + ConsumeDigits();
                    }
                    Push(ch + num, num.Length > 0 ? JinjaTokenType.NumericLiteral : JinjaTokenType.UnaryOperator, start);
                    continue;
                }
            }
            bool matched = false;
            foreach (var (seq, type) in Table)
            {
                if (seq == "}}" && curlyDepth > 0) continue;
                if (!Starts(seq)) continue;
                Push(seq, type, pos);
                if (type == JinjaTokenType.OpenExpression) curlyDepth = 0;
                else if (type == JinjaTokenType.OpenCurlyBracket) curlyDepth++;
                else if (type == JinjaTokenType.CloseCurlyBracket) curlyDepth--;
                pos += seq.Length;
                matched = true;
                break;
            }
            if (matched) continue;
            if (ch is '\'' or '"')
            {
                int start = pos++;
                string s = ConsumeString(ch, start);
                Push(s, JinjaTokenType.StringLiteral, start);
                pos++;
                continue;
            }
            if (IsDigit(ch))
            {
                int start = pos;
                string num = ConsumeDigits();
                if ((tokens.Count == 0 || tokens[^1].Type != JinjaTokenType.Dot) && At(pos) == '.' && IsDigit(At(pos + 1)))
                {
                    pos++;
                    num = num + "." + ConsumeDigits();
                }
                Push(num, JinjaTokenType.NumericLiteral, start);
                continue;
            }
            if (IsWord(ch))
            {
                int start = pos;
                while (pos < src.Length && IsWord(src[pos])) pos++;
                Push(src[start..pos], JinjaTokenType.Identifier, start);
                continue;
            }
            throw Error($"unexpected character '{ch}'", pos);
        }
        return tokens;
    }

    static readonly char[] JsSpaces = BuildJsSpaces();

    static char[] BuildJsSpaces()
    {
        var list = new List<char>();
        for (int c = 0; c < 0x10000; c++) if (IsSpace((char)c)) list.Add((char)c);
        return list.ToArray();
    }
}
