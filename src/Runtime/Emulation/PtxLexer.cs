using System.Text;

namespace Qwen3Cuda.Runtime.Emulation;

internal enum TokKind : byte { Ident, Number, FloatBits, String, Punct, End }

/// <summary>One PTX token; <see cref="Line"/> is 1-based in the PTX text.</summary>
internal readonly record struct Token(TokKind Kind, string Text, int Line)
{
    public bool Is(string punct) => Kind == TokKind.Punct && Text == punct;
    public override string ToString() => Text;
}

/// <summary>
/// Splits PTX into tokens. Identifiers include dots, '%' and '$' (so <c>ld.global.f32</c>, <c>%tid.x</c>,
/// <c>$L__BB0_2</c> are one token each); comments are dropped; <c>0f..</c>/<c>0d..</c> are float bit patterns.
/// </summary>
internal static class PtxLexer
{
    public static List<Token> Tokenize(string text)
    {
        var toks = new List<Token>(text.Length / 4);
        int i = 0, line = 1, n = text.Length;
        while (i < n)
        {
            char c = text[i];
            if (c == '\n') { line++; i++; continue; }
            if (char.IsWhiteSpace(c)) { i++; continue; }
            if (c == '/' && i + 1 < n && text[i + 1] == '/')
            {
                while (i < n && text[i] != '\n') i++;
                continue;
            }
            if (c == '/' && i + 1 < n && text[i + 1] == '*')
            {
                i += 2;
                while (i + 1 < n && !(text[i] == '*' && text[i + 1] == '/')) { if (text[i] == '\n') line++; i++; }
                i += 2;
                continue;
            }
            if (c == '"')
            {
                var sb = new StringBuilder();
                i++;
                while (i < n && text[i] != '"') { if (text[i] == '\\' && i + 1 < n) i++; sb.Append(text[i]); i++; }
                i++;
                toks.Add(new Token(TokKind.String, sb.ToString(), line));
                continue;
            }
            if (char.IsDigit(c))
            {
                int s = i;
                if (c == '0' && i + 1 < n && (text[i + 1] == 'f' || text[i + 1] == 'F' || text[i + 1] == 'd' || text[i + 1] == 'D')
                    && i + 2 < n && Uri.IsHexDigit(text[i + 2]))
                {
                    i += 2;
                    while (i < n && Uri.IsHexDigit(text[i])) i++;
                    toks.Add(new Token(TokKind.FloatBits, text[s..i], line));
                    continue;
                }
                if (c == '0' && i + 1 < n && (text[i + 1] == 'x' || text[i + 1] == 'X'))
                {
                    i += 2;
                    while (i < n && Uri.IsHexDigit(text[i])) i++;
                }
                else
                {
                    while (i < n && (char.IsDigit(text[i]) || text[i] == '.' || text[i] == 'e' || text[i] == 'E')) i++;
                }
                if (i < n && (text[i] == 'U' || text[i] == 'u')) i++;
                toks.Add(new Token(TokKind.Number, text[s..i], line));
                continue;
            }
            if (IsIdentChar(c))
            {
                int s = i;
                // "::" inside an opcode (ld.shared::cta, L2::cache_hint) belongs to the identifier; a label ends in one ':'
                while (i < n && (IsIdentChar(text[i]) || (text[i] == ':' && i + 2 < n && text[i + 1] == ':' && IsIdentChar(text[i + 2]))))
                    i += text[i] == ':' ? 2 : 1;
                toks.Add(new Token(TokKind.Ident, text[s..i], line));
                continue;
            }
            toks.Add(new Token(TokKind.Punct, c.ToString(), line));
            i++;
        }
        toks.Add(new Token(TokKind.End, "<end of PTX>", line));
        return toks;
    }

    private static bool IsIdentChar(char c) => char.IsLetterOrDigit(c) || c == '_' || c == '.' || c == '%' || c == '$';
}
