namespace Qwen3Cuda.Model.Serving.Constraints;

/// <summary>
/// An incremental JSON recogniser over UTF-8 bytes (RFC 8259): <see cref="Push(byte)"/> takes the next byte and says
/// whether the bytes so far are still the prefix of some valid JSON text; <see cref="IsComplete"/> says whether they are a
/// whole value. Objects, arrays, strings (escapes, \u with four hex digits, well-formed UTF-8, no raw control characters),
/// numbers, true/false/null and whitespace. Nesting deeper than <see cref="MaxDepth"/> is refused. After a refused byte
/// the state is undefined: trial bytes go to a copy (<see cref="CopyFrom"/>), which copies only the open containers.
/// Used by guided tool calls (docs/serving.md, tool_choice).
/// </summary>
public sealed class JsonPrefixValidator
{
    /// <summary>Open objects and arrays at most.</summary>
    public const int MaxDepth = 64;

    enum State : byte { Value, ValueOrEndArray, KeyOrEndObject, Key, Colon, AfterValue, String, Escape, Unicode, Literal, Number, Done }
    enum Num : byte { Minus, Zero, Int, Dot, Frac, Exp, ExpSign, ExpDigits }

    static readonly byte[][] Literals = ["true"u8.ToArray(), "false"u8.ToArray(), "null"u8.ToArray()];

    readonly bool _objectOnly;
    readonly byte[] _stack = new byte[MaxDepth];   // '{' or '[' per open container
    int _depth;
    State _state;
    Num _num;
    bool _key;                 // the open string is an object key
    byte _literal, _literalAt; // which of true/false/null, bytes of it matched
    byte _hexLeft;             // \u digits still expected
    byte _utf8Left, _utf8Lo = 0x80, _utf8Hi = 0xBF;   // continuation bytes still expected in a string, and the next one's range

    /// <param name="objectOnly">the top-level value must be an object (the arguments of a tool call)</param>
    public JsonPrefixValidator(bool objectOnly = false) => _objectOnly = objectOnly;

    /// <summary>True when the bytes so far are one whole JSON value (trailing whitespace allowed; a top-level number
    /// counts once it has a digit where it may end).</summary>
    public bool IsComplete => _state == State.Done || (_state == State.Number && _depth == 0 && _num is Num.Zero or Num.Int or Num.Frac or Num.ExpDigits);

    /// <summary>Open objects and arrays.</summary>
    public int Depth => _depth;

    /// <summary>True inside a string (key or value) at a character boundary with no escape open: any bytes without
    /// '"', '\' or control characters that are whole UTF-8 characters keep the state as it is.</summary>
    public bool InStringBody => _state == State.String && _utf8Left == 0;

    /// <summary>Makes this validator's state <paramref name="other"/>'s (same <c>objectOnly</c>).</summary>
    public void CopyFrom(JsonPrefixValidator other)
    {
        if (other._objectOnly != _objectOnly) throw new ArgumentException("the validators differ in objectOnly", nameof(other));
        _depth = other._depth;
        Array.Copy(other._stack, _stack, _depth);
        _state = other._state; _num = other._num; _key = other._key;
        _literal = other._literal; _literalAt = other._literalAt; _hexLeft = other._hexLeft;
        _utf8Left = other._utf8Left; _utf8Lo = other._utf8Lo; _utf8Hi = other._utf8Hi;
    }

    /// <summary>Takes <paramref name="bytes"/>; false at the first byte that no valid JSON text has there.</summary>
    public bool Push(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes) if (!Push(b)) return false;
        return true;
    }

    static bool IsWhitespace(byte b) => b is (byte)' ' or (byte)'\t' or (byte)'\n' or (byte)'\r';
    static bool IsDigit(byte b) => b is >= (byte)'0' and <= (byte)'9';

    /// <summary>Takes one byte; false when the bytes so far can no longer start a valid JSON text.</summary>
    public bool Push(byte b)
    {
        switch (_state)
        {
            case State.String: return InString(b);
            case State.Escape:
                if (b == (byte)'u') { _state = State.Unicode; _hexLeft = 4; return true; }
                if (b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t') { _state = State.String; return true; }
                return false;
            case State.Unicode:
                if (!char.IsAsciiHexDigit((char)b)) return false;
                if (--_hexLeft == 0) _state = State.String;
                return true;
            case State.Literal:
                if (Literals[_literal][_literalAt] != b) return false;
                if (++_literalAt == Literals[_literal].Length) EndValue();
                return true;
            case State.Number: return InNumber(b);
            case State.Value: return StartValue(b, endArray: false);
            case State.ValueOrEndArray: return StartValue(b, endArray: true);
            case State.KeyOrEndObject:
            case State.Key:
                if (IsWhitespace(b)) return true;
                if (b == (byte)'"') { _state = State.String; _key = true; return true; }
                if (b == (byte)'}' && _state == State.KeyOrEndObject) { _depth--; EndValue(); return true; }
                return false;
            case State.Colon:
                if (IsWhitespace(b)) return true;
                if (b != (byte)':') return false;
                _state = State.Value;
                return true;
            case State.AfterValue:
                if (IsWhitespace(b)) return true;
                byte open = _stack[_depth - 1];
                if (b == (byte)',') { _state = open == (byte)'{' ? State.Key : State.Value; return true; }
                if ((b == (byte)'}' && open == (byte)'{') || (b == (byte)']' && open == (byte)'['))
                {
                    _depth--;
                    EndValue();
                    return true;
                }
                return false;
            case State.Done: return IsWhitespace(b);
            default: return false;
        }
    }

    bool StartValue(byte b, bool endArray)
    {
        if (IsWhitespace(b)) return true;
        if (endArray && b == (byte)']') { _depth--; EndValue(); return true; }
        if (_objectOnly && _depth == 0 && b != (byte)'{') return false;
        switch (b)
        {
            case (byte)'{' or (byte)'[':
                if (_depth == MaxDepth) return false;
                _stack[_depth++] = b;
                _state = b == (byte)'{' ? State.KeyOrEndObject : State.ValueOrEndArray;
                return true;
            case (byte)'"': _state = State.String; _key = false; return true;
            case (byte)'-': _state = State.Number; _num = Num.Minus; return true;
            case (byte)'0': _state = State.Number; _num = Num.Zero; return true;
            case >= (byte)'1' and <= (byte)'9': _state = State.Number; _num = Num.Int; return true;
            case (byte)'t': _literal = 0; break;
            case (byte)'f': _literal = 1; break;
            case (byte)'n': _literal = 2; break;
            default: return false;
        }
        _state = State.Literal;
        _literalAt = 1;
        return true;
    }

    bool InString(byte b)
    {
        if (_utf8Left > 0)
        {
            if (b < _utf8Lo || b > _utf8Hi) return false;
            _utf8Left--;
            _utf8Lo = 0x80; _utf8Hi = 0xBF;
            return true;
        }
        if (b == (byte)'"')
        {
            if (_key) _state = State.Colon; else EndValue();
            return true;
        }
        if (b == (byte)'\\') { _state = State.Escape; return true; }
        if (b < 0x20) return false;
        if (b < 0x80) return true;
        // A lead byte: the continuation count, and the range of the next byte that rules out overlong forms,
        // surrogates and code points past U+10FFFF (RFC 3629).
        switch (b)
        {
            case >= 0xC2 and <= 0xDF: _utf8Left = 1; break;
            case 0xE0: _utf8Left = 2; _utf8Lo = 0xA0; break;
            case 0xED: _utf8Left = 2; _utf8Hi = 0x9F; break;
            case >= 0xE1 and <= 0xEF: _utf8Left = 2; break;
            case 0xF0: _utf8Left = 3; _utf8Lo = 0x90; break;
            case >= 0xF1 and <= 0xF3: _utf8Left = 3; break;
            case 0xF4: _utf8Left = 3; _utf8Hi = 0x8F; break;
            default: return false;
        }
        return true;
    }

    bool InNumber(byte b)
    {
        bool digit = IsDigit(b);
        switch (_num)
        {
            case Num.Minus:
                if (b == (byte)'0') { _num = Num.Zero; return true; }
                if (digit) { _num = Num.Int; return true; }
                return false;
            case Num.Zero:
            case Num.Int:
                if (digit && _num == Num.Int) return true;
                if (digit) return false;   // no leading zeros
                if (b == (byte)'.') { _num = Num.Dot; return true; }
                if (b is (byte)'e' or (byte)'E') { _num = Num.Exp; return true; }
                break;
            case Num.Dot:
                if (!digit) return false;
                _num = Num.Frac;
                return true;
            case Num.Frac:
                if (digit) return true;
                if (b is (byte)'e' or (byte)'E') { _num = Num.Exp; return true; }
                break;
            case Num.Exp:
                if (b is (byte)'+' or (byte)'-') { _num = Num.ExpSign; return true; }
                if (!digit) return false;
                _num = Num.ExpDigits;
                return true;
            case Num.ExpSign:
                if (!digit) return false;
                _num = Num.ExpDigits;
                return true;
            case Num.ExpDigits:
                if (digit) return true;
                break;
        }
        // The number ended at a complete form: the byte belongs to what follows it.
        EndValue();
        return Push(b);
    }

    void EndValue() => _state = _depth == 0 ? State.Done : State.AfterValue;
}
