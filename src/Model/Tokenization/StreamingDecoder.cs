using System.Text;

namespace Qwen3Cuda.Model.Tokenization;

/// <summary>
/// Incremental detokenizer: <see cref="Push"/> returns the text completed by one more token and holds
/// back a trailing incomplete UTF-8 sequence (at most 3 bytes) until the bytes that complete it arrive.
/// Bytes that can never become valid are emitted as U+FFFD at once, so the concatenated pieces equal
/// <see cref="Qwen3Tokenizer.Decode"/> of the same ids.
/// </summary>
public sealed class StreamingDecoder
{
    readonly Qwen3Tokenizer _tokenizer;
    readonly bool _skipSpecial;
    readonly List<byte> _pending = new(16);

    internal StreamingDecoder(Qwen3Tokenizer tokenizer, bool skipSpecialTokens)
    {
        _tokenizer = tokenizer;
        _skipSpecial = skipSpecialTokens;
    }

    /// <summary>Bytes held back, waiting for the rest of a multi-byte character.</summary>
    public int PendingByteCount => _pending.Count;

    public string Push(int id)
    {
        if (_skipSpecial && _tokenizer.IsSpecial(id)) return "";
        if ((uint)id >= (uint)_tokenizer.VocabSize) return ""; // model vocabularies may be padded past the tokenizer's
        foreach (var b in _tokenizer.TokenBytes(id)) _pending.Add(b);
        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending);
        int complete = span.Length - IncompleteTailLength(span);
        if (complete == 0) return "";
        var text = Encoding.UTF8.GetString(span[..complete]);
        _pending.RemoveRange(0, complete);
        return text;
    }

    /// <summary>Emits whatever is held back (as U+FFFD when incomplete) and starts afresh.</summary>
    public string Flush()
    {
        var text = Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_pending));
        _pending.Clear();
        return text;
    }

    public void Reset() => _pending.Clear();

    /// <summary>
    /// Length of the trailing bytes that form a proper prefix of a valid UTF-8 sequence (so may still
    /// complete), 0 when the buffer ends on a character boundary or on bytes that can never be valid.
    /// </summary>
    public static int IncompleteTailLength(ReadOnlySpan<byte> s)
    {
        for (int back = 1; back <= 3 && back <= s.Length; back++)
        {
            byte lead = s[s.Length - back];
            if ((lead & 0xC0) == 0x80) continue; // continuation byte: look further back
            int need = lead >= 0xF0 && lead <= 0xF4 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC2 && lead < 0xE0 ? 2 : 0;
            if (lead > 0xF4) need = 0;
            if (need <= back) return 0; // ASCII, invalid lead, or already complete
            // Second byte ranges that keep the sequence valid (Unicode Table 3-7).
            if (back >= 2)
            {
                byte second = s[s.Length - back + 1];
                var (lo, hi) = lead switch
                {
                    0xE0 => (0xA0, 0xBF),
                    0xED => (0x80, 0x9F),
                    0xF0 => (0x90, 0xBF),
                    0xF4 => (0x80, 0x8F),
                    _ => (0x80, 0xBF),
                };
                if (second < lo || second > hi) return 0;
            }
            return back;
        }
        return 0;
    }
}
