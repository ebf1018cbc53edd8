using System.Buffers;
using System.Text;
using System.Text.Json;

namespace Qwen3Cuda.Model.Tokenization;

/// <summary>An added token from tokenizer.json (special or not, all are matched before normalisation).</summary>
public sealed record AddedToken(int Id, string Content, bool Special);

/// <summary>
/// The Qwen3 tokenizer read from a model directory's tokenizer.json: added tokens split out first
/// (leftmost, longest match; all of them, including &lt;think&gt; and &lt;tool_call&gt; which the file
/// marks non-special), then NFC, the Qwen split pre-tokenizer, and byte-level BPE with a piece cache.
/// Thread-safe for concurrent Encode/Decode.
/// </summary>
public sealed class Qwen3Tokenizer
{
    const string QwenSplitPattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const int CacheLimitEntries = 200_000;

    readonly Dictionary<string, int> _vocab;            // byte-level token string -> id
    readonly byte[][] _tokenBytes;                       // id -> UTF-8 bytes it stands for
    readonly bool[] _isSpecial;                          // id -> skipped by Decode(skipSpecialTokens: true)
    readonly BytePairMerger _merger;
    readonly bool _nfc;
    readonly AddedToken[] _addedByLengthDesc;
    readonly Dictionary<int, AddedToken> _addedById = new();
    readonly SearchValues<char> _addedFirstChars;
    readonly Dictionary<string, int[]> _cache = new(StringComparer.Ordinal);
    readonly Dictionary<string, int[]>.AlternateLookup<ReadOnlySpan<char>> _cacheBySpan;
    readonly Lock _cacheLock = new();

    /// <summary>GPT-2's byte-to-printable-character map used by byte-level BPE vocabularies.</summary>
    internal static readonly char[] ByteToChar = BuildByteToChar();

    public IReadOnlyList<AddedToken> AddedTokens { get; }
    internal BytePairMerger Merger => _merger;
    /// <summary>One more than the largest id (vocabulary plus added tokens).</summary>
    public int VocabSize => _tokenBytes.Length;

    Qwen3Tokenizer(Dictionary<string, int> vocab, Dictionary<long, long> merges, List<AddedToken> added, bool nfc)
    {
        _vocab = vocab;
        _nfc = nfc;
        int size = 0;
        foreach (var id in vocab.Values) size = Math.Max(size, id + 1);
        foreach (var a in added) size = Math.Max(size, a.Id + 1);
        _tokenBytes = new byte[size][];
        _isSpecial = new bool[size];
        var charToByte = new Dictionary<char, byte>();
        for (int b = 0; b < 256; b++) charToByte[ByteToChar[b]] = (byte)b;
        foreach (var (token, id) in vocab)
        {
            var bytes = new byte[token.Length];
            for (int i = 0; i < token.Length; i++)
                bytes[i] = charToByte.TryGetValue(token[i], out var b) ? b
                    : throw new InvalidDataException($"tokenizer.json: vocabulary token {id} ('{token}') is not byte-level");
            _tokenBytes[id] = bytes;
        }
        foreach (var a in added)
        {
            _tokenBytes[a.Id] = Encoding.UTF8.GetBytes(a.Content);
            _isSpecial[a.Id] = a.Special;
            _addedById[a.Id] = a;
        }
        for (int i = 0; i < size; i++) _tokenBytes[i] ??= [];
        var byteIds = new int[256];
        for (int b = 0; b < 256; b++)
            byteIds[b] = vocab.TryGetValue(ByteToChar[b].ToString(), out int id) ? id
                : throw new InvalidDataException($"tokenizer.json: byte 0x{b:X2} has no single-byte token in model.vocab");
        _merger = new BytePairMerger(byteIds, merges);
        AddedTokens = added;
        _addedByLengthDesc = added.OrderByDescending(a => a.Content.Length).ToArray();
        _addedFirstChars = SearchValues.Create(new string(added.Where(a => a.Content.Length > 0).Select(a => a.Content[0]).Distinct().ToArray()));
        _cacheBySpan = _cache.GetAlternateLookup<ReadOnlySpan<char>>();
    }

    /// <summary>Loads &lt;dir&gt;/tokenizer.json.</summary>
    public static Qwen3Tokenizer FromModelDirectory(string modelDir)
    {
        var path = Path.Combine(modelDir, "tokenizer.json");
        if (!File.Exists(path)) throw new FileNotFoundException($"tokenizer.json not found in model directory '{modelDir}'", path);
        return FromFile(path);
    }

    public static Qwen3Tokenizer FromFile(string tokenizerJsonPath)
    {
        try
        {
            using var stream = File.OpenRead(tokenizerJsonPath);
            using var doc = JsonDocument.Parse(stream, new JsonDocumentOptions { MaxDepth = 256 });
            return FromJson(doc.RootElement);
        }
        catch (Exception e) when (e is JsonException or InvalidDataException or NotSupportedException or KeyNotFoundException or InvalidOperationException)
        {
            throw new InvalidDataException($"{tokenizerJsonPath}: {e.Message}", e);
        }
    }

    static Qwen3Tokenizer FromJson(JsonElement root)
    {
        var model = root.GetProperty("model");
        var type = model.TryGetProperty("type", out var t) ? t.GetString() : "BPE";
        if (type != "BPE") throw new NotSupportedException($"model.type '{type}' is not supported (only BPE)");
        bool nfc = false;
        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind == JsonValueKind.Object)
        {
            var nt = norm.GetProperty("type").GetString();
            if (nt != "NFC") throw new NotSupportedException($"normalizer.type '{nt}' is not supported (only NFC or null)");
            nfc = true;
        }
        CheckPreTokenizer(root.GetProperty("pre_tokenizer"));

        var vocabEl = model.GetProperty("vocab");
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocabEl.EnumerateObject()) vocab[p.Name] = p.Value.GetInt32();

        var merges = new Dictionary<long, long>();
        int rank = 0;
        foreach (var m in model.GetProperty("merges").EnumerateArray())
        {
            string left, right;
            if (m.ValueKind == JsonValueKind.Array)
            {
                left = m[0].GetString()!;
                right = m[1].GetString()!;
            }
            else
            {
                var s = m.GetString()!;
                int sp = s.IndexOf(' ', 1);
                if (sp < 0) throw new InvalidDataException($"model.merges[{rank}] '{s}' is not 'left right'");
                left = s[..sp];
                right = s[(sp + 1)..];
            }
            if (!vocab.TryGetValue(left, out int l) || !vocab.TryGetValue(right, out int r) || !vocab.TryGetValue(left + right, out int mid))
                throw new InvalidDataException($"model.merges[{rank}] ('{left}', '{right}') uses a token missing from model.vocab");
            merges.TryAdd(BytePairMerger.PairKey(l, r), ((long)rank << 32) | (uint)mid);
            rank++;
        }

        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var addedEl))
            foreach (var a in addedEl.EnumerateArray())
                added.Add(new AddedToken(a.GetProperty("id").GetInt32(), a.GetProperty("content").GetString()!,
                    a.TryGetProperty("special", out var sp) && sp.GetBoolean()));
        return new Qwen3Tokenizer(vocab, merges, added, nfc);
    }

    static void CheckPreTokenizer(JsonElement pre)
    {
        // Accept exactly: Sequence[Split(Qwen pattern, Isolated), ByteLevel(use_regex=false)], or the Split alone
        // followed by nothing; anything else would be silently mis-tokenized, so it is an error.
        var steps = pre.GetProperty("type").GetString() == "Sequence"
            ? pre.GetProperty("pretokenizers").EnumerateArray().ToList()
            : [pre];
        bool sawSplit = false;
        foreach (var s in steps)
        {
            var st = s.GetProperty("type").GetString();
            if (st == "Split")
            {
                var pattern = s.GetProperty("pattern").TryGetProperty("Regex", out var rx) ? rx.GetString() : null;
                if (pattern != QwenSplitPattern)
                    throw new NotSupportedException($"pre_tokenizer Split pattern '{pattern}' is not supported (only the Qwen2/Qwen3 pattern)");
                var behavior = s.GetProperty("behavior").GetString();
                if (behavior != "Isolated") throw new NotSupportedException($"pre_tokenizer Split behavior '{behavior}' is not supported");
                sawSplit = true;
            }
            else if (st == "ByteLevel")
            {
                if (s.TryGetProperty("use_regex", out var ur) && ur.GetBoolean())
                    throw new NotSupportedException("pre_tokenizer ByteLevel with use_regex=true is not supported");
            }
            else throw new NotSupportedException($"pre_tokenizer type '{st}' is not supported");
        }
        if (!sawSplit) throw new NotSupportedException("pre_tokenizer has no Split step (the Qwen split pattern is required)");
    }

    static char[] BuildByteToChar()
    {
        var map = new char[256];
        int n = 0;
        for (int b = 0; b < 256; b++)
        {
            bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
            map[b] = printable ? (char)b : (char)(256 + n++);
        }
        return map;
    }

    /// <summary>Empties the piece cache (benchmarks of cold encoding).</summary>
    public void ClearCache()
    {
        lock (_cacheLock) _cache.Clear();
    }

    /// <summary>Id of a token given as text: an added token's content, or a vocabulary entry in byte-level form.</summary>
    public int? TokenToId(string token)
    {
        foreach (var a in AddedTokens) if (a.Content == token) return a.Id;
        return _vocab.TryGetValue(token, out int id) ? id : null;
    }

    public bool IsSpecial(int id) => (uint)id < (uint)_isSpecial.Length && _isSpecial[id];
    public bool IsAddedToken(int id) => _addedById.ContainsKey(id);

    /// <summary>UTF-8 bytes a token stands for.</summary>
    public ReadOnlySpan<byte> TokenBytes(int id) => (uint)id < (uint)_tokenBytes.Length
        ? _tokenBytes[id]
        : throw new ArgumentOutOfRangeException(nameof(id), $"token id {id} is outside the vocabulary (0..{_tokenBytes.Length - 1})");

    public int[] Encode(string text, bool parseAddedTokens = true)
    {
        var ids = new List<int>(text.Length / 3 + 4);
        Encode(text, ids, parseAddedTokens);
        return ids.ToArray();
    }

    /// <summary>Appends the ids of <paramref name="text"/>. Added tokens are recognised unless <paramref name="parseAddedTokens"/> is false.</summary>
    public void Encode(string text, List<int> ids, bool parseAddedTokens = true)
    {
        if (!parseAddedTokens || _addedByLengthDesc.Length == 0)
        {
            EncodeOrdinary(text.AsSpan(), ids);
            return;
        }
        var span = text.AsSpan();
        int start = 0, i = 0;
        while (i < span.Length)
        {
            int k = span[i..].IndexOfAny(_addedFirstChars);
            if (k < 0) break;
            i += k;
            AddedToken? match = null;
            foreach (var a in _addedByLengthDesc)
                if (span[i..].StartsWith(a.Content, StringComparison.Ordinal)) { match = a; break; }
            if (match == null) { i++; continue; }
            if (i > start) EncodeOrdinary(span[start..i], ids);
            ids.Add(match.Id);
            i += match.Content.Length;
            start = i;
        }
        if (start < span.Length) EncodeOrdinary(span[start..], ids);
    }

    void EncodeOrdinary(ReadOnlySpan<char> text, List<int> ids)
    {
        if (text.IsEmpty) return;
        if (_nfc && !Nfc.IsQuickNormalized(text)) text = Nfc.Normalize(text).AsSpan();
        var sink = new EncodeSink { Owner = this, Ids = ids };
        QwenPreTokenizer.Split(text, ref sink);
    }

    struct EncodeSink : IPieceSink
    {
        public Qwen3Tokenizer Owner;
        public List<int> Ids;
        public void Piece(ReadOnlySpan<char> text, int start, int length) => Owner.EncodePiece(text.Slice(start, length), Ids);
    }

    void EncodePiece(ReadOnlySpan<char> piece, List<int> ids)
    {
        lock (_cacheLock)
        {
            if (_cacheBySpan.TryGetValue(piece, out var cached))
            {
                ids.AddRange(cached);
                return;
            }
        }
        int maxBytes = Encoding.UTF8.GetMaxByteCount(piece.Length);
        byte[]? rented = maxBytes > 512 ? ArrayPool<byte>.Shared.Rent(maxBytes) : null;
        Span<byte> buf = rented ?? stackalloc byte[512];
        int first = ids.Count;
        try
        {
            int n = Encoding.UTF8.GetBytes(piece, buf); // lone surrogates become U+FFFD
            _merger.Encode(buf[..n], ids);
        }
        finally
        {
            if (rented != null) ArrayPool<byte>.Shared.Return(rented);
        }
        var result = ids.GetRange(first, ids.Count - first).ToArray();
        lock (_cacheLock)
        {
            if (_cache.Count >= CacheLimitEntries) _cache.Clear();
            _cacheBySpan.TryAdd(piece, result);
        }
    }

    /// <summary>Text of <paramref name="ids"/>; invalid UTF-8 becomes U+FFFD.</summary>
    public string Decode(ReadOnlySpan<int> ids, bool skipSpecialTokens = false)
    {
        var bytes = new List<byte>(ids.Length * 4);
        foreach (int id in ids)
        {
            if (skipSpecialTokens && IsSpecial(id)) continue;
            foreach (var b in TokenBytes(id)) bytes.Add(b);
        }
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
    }

    public StreamingDecoder CreateStreamingDecoder(bool skipSpecialTokens = false) => new(this, skipSpecialTokens);
}
