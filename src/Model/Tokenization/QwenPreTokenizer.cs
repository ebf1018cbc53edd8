using System.Globalization;

namespace Qwen3Cuda.Model.Tokenization;

/// <summary>
/// The Qwen2/Qwen3 split pre-tokenizer, hand-coded over Unicode code points (not UTF-16 units, so
/// characters outside the BMP are classified correctly). It reproduces the leftmost-first matches of
/// <code>
/// (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
/// </code>
/// with "Isolated" behaviour. Every code point is covered by some alternative, so the pieces tile the
/// input. \s is JavaScript's white space set (the reference tokenizer runs on a JS regex).
/// </summary>
internal static class QwenPreTokenizer
{
    /// <summary>Character classes of the pattern; "Other" is [^\s\p{L}\p{N}].</summary>
    enum Cls : byte { Other, Letter, Number, Space, LineBreak }

    static readonly Cls[] Ascii = BuildAscii();

    static Cls[] BuildAscii()
    {
        var t = new Cls[128];
        for (int c = 0; c < 128; c++) t[c] = ClassifySlow(c);
        return t;
    }

    static Cls ClassifySlow(int cp)
    {
        if (cp == '\r' || cp == '\n') return Cls.LineBreak;
        if (IsJsSpace(cp)) return Cls.Space;
        return CharUnicodeInfo.GetUnicodeCategory(cp) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => Cls.Letter,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => Cls.Number,
            _ => Cls.Other,
        };
    }

    /// <summary>ECMAScript WhiteSpace + LineTerminator (what \s matches in a JS regex).</summary>
    static bool IsJsSpace(int cp) => cp switch
    {
        '\t' or '\n' or '\v' or '\f' or '\r' or ' ' or 0xA0 or 0x1680 or 0x2028 or 0x2029 or 0x202F or 0x205F
            or 0x3000 or 0xFEFF => true,
        >= 0x2000 and <= 0x200A => true,
        _ => false,
    };

    /// <summary>Code point at <paramref name="i"/> and its length in UTF-16 units (lone surrogates count as Other).</summary>
    static Cls At(ReadOnlySpan<char> s, int i, out int width)
    {
        char c = s[i];
        width = 1;
        if (c < 128) return Ascii[c];
        int cp = c;
        if (char.IsHighSurrogate(c) && i + 1 < s.Length && char.IsLowSurrogate(s[i + 1]))
        {
            cp = char.ConvertToUtf32(c, s[i + 1]);
            width = 2;
        }
        else if (char.IsSurrogate(c)) return Cls.Other;
        return ClassifySlow(cp);
    }

    /// <summary>
    /// Calls <paramref name="sink"/>.Piece(text, start, length) for each piece of <paramref name="s"/>, in order.
    /// Returns the number of pieces.
    /// </summary>
    public static int Split<TSink>(ReadOnlySpan<char> s, ref TSink sink) where TSink : struct, IPieceSink
    {
        int n = s.Length, i = 0, count = 0;
        while (i < n)
        {
            int len = MatchAt(s, i);
            sink.Piece(s, i, len);
            i += len;
            count++;
        }
        return count;
    }

    /// <summary>Pieces as strings (tests and tools; the encoder uses the allocation-free overload).</summary>
    public static List<string> Split(string s)
    {
        var sink = new ListSink { Pieces = new List<string>() };
        Split(s.AsSpan(), ref sink);
        return sink.Pieces;
    }

    struct ListSink : IPieceSink
    {
        public List<string> Pieces;
        public void Piece(ReadOnlySpan<char> text, int start, int length) => Pieces.Add(text.Slice(start, length).ToString());
    }

    /// <summary>Length in UTF-16 units of the match starting at <paramref name="i"/> (always &gt; 0).</summary>
    static int MatchAt(ReadOnlySpan<char> s, int i)
    {
        int n = s.Length;
        var c = At(s, i, out int w);

        // 1. (?i:'s|'t|'re|'ve|'m|'ll|'d)  (ASCII case-insensitive, as the JS port writes it)
        if (s[i] == '\'' && i + 1 < n)
        {
            char a = char.ToLowerInvariant(s[i + 1]);
            if (a is 's' or 't' or 'm' or 'd') return 2;
            if (i + 2 < n)
            {
                char b = char.ToLowerInvariant(s[i + 2]);
                if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
            }
        }
        // 2. [^\r\n\p{L}\p{N}]?\p{L}+
        if (c == Cls.Letter) return w + RunLength(s, i + w, Cls.Letter);
        if (c is Cls.Other or Cls.Space && i + w < n && At(s, i + w, out int w2) == Cls.Letter)
            return w + w2 + RunLength(s, i + w + w2, Cls.Letter);
        // 3. \p{N}
        if (c == Cls.Number) return w;
        // 4. ' '?[^\s\p{L}\p{N}]+[\r\n]*
        int j = -1;
        if (c == Cls.Other) j = i;
        else if (s[i] == ' ' && i + 1 < n && At(s, i + 1, out _) == Cls.Other) j = i + 1;
        if (j >= 0)
        {
            j += RunLength(s, j, Cls.Other);
            j += RunLength(s, j, Cls.LineBreak);
            return j - i;
        }
        // c is white space (Space or LineBreak) from here on; [i, end) is the white space run.
        int end = i, lastBreak = -1;
        while (end < n)
        {
            var k = At(s, end, out int wk);
            if (k == Cls.LineBreak) lastBreak = end;
            else if (k != Cls.Space) break;
            end += wk;
        }
        // 5. \s*[\r\n]+  -> up to and including the run's last line break
        if (lastBreak >= 0) return lastBreak + 1 - i;
        // 6. \s+(?!\S)  -> whole run at end of text, else the run minus its last character
        if (end == n) return end - i;
        if (end - 1 > i) return end - 1 - i; // every white space character is one UTF-16 unit
        // 7. \s+
        return end - i;
    }

    static int RunLength(ReadOnlySpan<char> s, int i, Cls cls)
    {
        int start = i;
        while (i < s.Length && At(s, i, out int w) == cls) i += w;
        return i - start;
    }
}

/// <summary>Receives the pieces found by <see cref="QwenPreTokenizer.Split{TSink}"/>.</summary>
internal interface IPieceSink
{
    void Piece(ReadOnlySpan<char> text, int start, int length);
}
