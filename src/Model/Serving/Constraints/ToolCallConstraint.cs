using System.Runtime.CompilerServices;
using System.Text;
using System.Text.Json;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Model.Serving.Constraints;

/// <summary>
/// A tool call the answer must be (tool_choice "required" or a named function, docs/serving.md). The prompt already ends
/// with <c>&lt;tool_call&gt;\n</c> and, for a named call, with <c>{"name": "NAME", "arguments": </c>; the answer is then
/// constrained to <c>{"name": "ONE OF TOOLS", "arguments": </c> (required only), a JSON object, and
/// <c>}\n&lt;/tool_call&gt;</c>, after which the request ends.
/// </summary>
/// <param name="Name">the named function (its header is in the prompt); null: "required", the model picks one of <paramref name="ToolNames"/></param>
/// <param name="ToolNames">the request's tools</param>
public sealed record GuidedToolCall(string? Name, IReadOnlyList<string> ToolNames)
{
    /// <summary>The call's opening up to its arguments, as the server writes it for a named call and as "required" forces it.</summary>
    public static string Header(string name) => $"{{\"name\": {JsonSerializer.Serialize(name)}, \"arguments\": ";
    /// <summary>What follows the arguments object: the call's closing brace and Qwen's end-of-call tag.</summary>
    public const string Tail = "}\n</tool_call>";
}

/// <summary>
/// Every token's bytes, decoded once per tokenizer (<see cref="For"/>), and which are added tokens (&lt;|im_end|&gt;,
/// &lt;think&gt;, ...: never inside the arguments, where the engine would read them as markers).
/// </summary>
public sealed class TokenVocabulary
{
    static readonly ConditionalWeakTable<Qwen3Tokenizer, TokenVocabulary> Cache = new();

    readonly byte[][] _bytes;
    readonly bool[] _added, _plainString;

    public TokenVocabulary(IReadOnlyList<byte[]> bytes, IReadOnlyList<bool> added)
    {
        if (bytes.Count != added.Count) throw new ArgumentException($"{bytes.Count} token byte strings but {added.Count} added flags", nameof(added));
        _bytes = [.. bytes];
        _added = [.. added];
        _plainString = new bool[_bytes.Length];
        for (int id = 0; id < _bytes.Length; id++)
        {
            var b = _bytes[id];
            _plainString[id] = !_added[id] && b.Length > 0 && System.Text.Unicode.Utf8.IsValid(b)
                && b.AsSpan().IndexOfAny((byte)'"', (byte)'\\') < 0 && !b.AsSpan().ContainsAnyInRange((byte)0, (byte)0x1F);
        }
    }

    /// <summary>The vocabulary of <paramref name="tokenizer"/>, built on first use and kept as long as the tokenizer.</summary>
    public static TokenVocabulary For(Qwen3Tokenizer tokenizer) => Cache.GetValue(tokenizer, static t =>
    {
        var bytes = new byte[t.VocabSize][];
        var added = new bool[t.VocabSize];
        for (int id = 0; id < bytes.Length; id++)
        {
            bytes[id] = t.TokenBytes(id).ToArray();
            added[id] = t.IsAddedToken(id);
        }
        return new TokenVocabulary(bytes, added);
    });

    public int Count => _bytes.Length;
    public ReadOnlySpan<byte> Bytes(int id) => _bytes[id];
    public bool IsAdded(int id) => _added[id];
    /// <summary>Not an added token, and whole UTF-8 characters without '"', '\' or control characters: inside a JSON
    /// string it is always allowed and changes nothing (<see cref="JsonPrefixValidator.InStringBody"/>).</summary>
    public bool IsPlainString(int id) => _plainString[id];
}

/// <summary>
/// The per-request token constraint of a <see cref="GuidedToolCall"/>: a byte-level state (the header alternatives as a
/// sorted range, the arguments through a <see cref="JsonPrefixValidator"/>, the tail) advanced by each chosen token, and
/// the set of tokens whose bytes keep it a valid prefix. <see cref="Mask"/> tests every token of the vocabulary on the host
/// (about 152k per step for Qwen3): inside a string, tokens of plain text are allowed outright; otherwise a table of the
/// bytes allowed next rejects most on their first byte, and the rest run through a copy of the state until their first
/// refused byte (docs/serving.md, tool_choice).
/// </summary>
public sealed class ToolCallConstraint
{
    enum Phase : byte { Header, Arguments, Tail, Done }

    static readonly byte[] TailBytes = Encoding.UTF8.GetBytes(GuidedToolCall.Tail);

    sealed class State(byte[][] headers)
    {
        public Phase Phase;
        public int Lo, Hi = headers.Length, Matched;   // header: the alternatives [Lo, Hi) share the Matched bytes so far; tail: bytes matched
        public readonly JsonPrefixValidator Json = new(objectOnly: true);

        public void CopyFrom(State s)
        {
            Phase = s.Phase; Lo = s.Lo; Hi = s.Hi; Matched = s.Matched;
            Json.CopyFrom(s.Json);   // the open containers only (the initial state before the arguments)
        }

        public bool Push(byte b)
        {
            switch (Phase)
            {
                case Phase.Header:
                    // Sorted alternatives sharing a prefix: those with byte b next are a contiguous run.
                    int lo = Lo;
                    while (lo < Hi && (headers[lo].Length <= Matched || headers[lo][Matched] != b)) lo++;
                    if (lo == Hi) return false;
                    int hi = lo + 1;
                    while (hi < Hi && headers[hi].Length > Matched && headers[hi][Matched] == b) hi++;
                    Lo = lo; Hi = hi; Matched++;
                    if (headers[Lo].Length == Matched) { Phase = Phase.Arguments; Matched = 0; }   // no header is a prefix of another
                    return true;
                case Phase.Arguments:
                    if (!Json.Push(b)) return false;
                    if (Json.IsComplete) { Phase = Phase.Tail; Matched = 0; }
                    return true;
                case Phase.Tail:
                    if (TailBytes[Matched] != b) return false;
                    if (++Matched == TailBytes.Length) Phase = Phase.Done;
                    return true;
                default:
                    return false;
            }
        }
    }

    readonly TokenVocabulary _vocab;
    readonly State _state, _trial;
    readonly bool[] _firstByte = new bool[256];

    public ToolCallConstraint(GuidedToolCall call, TokenVocabulary vocabulary)
    {
        ArgumentNullException.ThrowIfNull(call);
        _vocab = vocabulary ?? throw new ArgumentNullException(nameof(vocabulary));
        byte[][] headers = call.Name is not null ? [] : [.. call.ToolNames.Distinct(StringComparer.Ordinal)
            .Select(n => Encoding.UTF8.GetBytes(GuidedToolCall.Header(n))).OrderBy(h => h, ByteOrder.Instance)];
        if (call.Name is null && headers.Length == 0) throw new InvalidRequestException("tool_choice", "tool_choice 'required' needs at least one tool");
        _state = new State(headers) { Phase = headers.Length == 0 ? Phase.Arguments : Phase.Header };
        _trial = new State(headers);
    }

    /// <summary>True once the call's closing tag is written: the request ends there.</summary>
    public bool IsComplete => _state.Phase == Phase.Done;

    /// <summary>Advances by the chosen token; false (state unchanged) when its bytes are not allowed here.</summary>
    public bool Advance(int token)
    {
        if (!Allows(token)) return false;
        _state.CopyFrom(_trial);
        return true;
    }

    /// <summary>Sets the logits of the tokens not allowed next to -inf; returns how many are allowed. Ids past the
    /// vocabulary (a model's padded rows) are never allowed.</summary>
    public int Mask(Span<float> logits)
    {
        FillFirstBytes();
        bool inString = InStringBody;
        int allowed = 0;
        for (int id = 0; id < logits.Length; id++)
        {
            if (id < _vocab.Count && ((inString && _vocab.IsPlainString(id)) || Test(id))) allowed++;
            else logits[id] = float.NegativeInfinity;
        }
        return allowed;
    }

    /// <summary>The ids allowed next (what <see cref="Mask"/> keeps).</summary>
    public IReadOnlyList<int> AllowedTokens()
    {
        FillFirstBytes();
        bool inString = InStringBody;
        var ids = new List<int>();
        for (int id = 0; id < _vocab.Count; id++) if ((inString && _vocab.IsPlainString(id)) || Test(id)) ids.Add(id);
        return ids;
    }

    /// <summary>Inside a string of the arguments (the common case): plain tokens are allowed without running them.</summary>
    bool InStringBody => _state.Phase == Phase.Arguments && _state.Json.InStringBody;

    bool Allows(int token)
    {
        if ((uint)token >= (uint)_vocab.Count) return false;
        FillFirstBytes();
        return Test(token);
    }

    void FillFirstBytes()
    {
        for (int b = 0; b < 256; b++)
        {
            _trial.CopyFrom(_state);
            _firstByte[b] = _trial.Push((byte)b);
        }
    }

    /// <summary>Whether token <paramref name="id"/> fits; leaves the state after it in <see cref="_trial"/> when it does.</summary>
    bool Test(int id)
    {
        var bytes = _vocab.Bytes(id);
        if (bytes.IsEmpty || !_firstByte[bytes[0]]) return false;
        if (_vocab.IsAdded(id) && _state.Phase == Phase.Arguments) return false;
        _trial.CopyFrom(_state);
        foreach (byte b in bytes) if (!_trial.Push(b)) return false;
        return true;
    }

    sealed class ByteOrder : IComparer<byte[]>
    {
        public static readonly ByteOrder Instance = new();
        public int Compare(byte[]? x, byte[]? y) => x.AsSpan().SequenceCompareTo(y);
    }
}
