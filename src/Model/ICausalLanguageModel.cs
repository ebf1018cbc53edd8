namespace Qwen3Cuda.Model;

/// <summary>
/// What the generator needs from a model, whichever backend computes it (the CPU reference, or the
/// device model on CUDA or the emulator). A model holds the KV cache of several sequences, each
/// identified by a small integer; positions of a sequence continue from its current length.
/// </summary>
public interface ICausalLanguageModel : IDisposable
{
    int VocabSize { get; }
    /// <summary>Longest sequence (prompt + generated tokens) the model accepts.</summary>
    int ContextLength { get; }
    /// <summary>Sequences that can be held at once (ids 0 .. MaxSequences-1).</summary>
    int MaxSequences { get; }

    /// <summary>Tokens already in sequence <paramref name="sequence"/>'s KV cache.</summary>
    int SequenceLength(int sequence);

    /// <summary>Empties a sequence's KV cache.</summary>
    void ResetSequence(int sequence);

    /// <summary>
    /// Keeps the first <paramref name="length"/> tokens of a sequence's KV cache and drops the rest. The
    /// generator uses it to keep the prefix a new chat prompt shares with the cache (the Qwen3 template
    /// re-renders earlier turns without their reasoning, so prompts diverge inside the last answer).
    /// </summary>
    void TruncateSequence(int sequence, int length);

    /// <summary>
    /// Appends <paramref name="tokens"/> to the sequence (prefill when many, decode when one) and writes the
    /// logits of the last appended token into <paramref name="lastLogits"/> (length <see cref="VocabSize"/>).
    /// Throws <see cref="ArgumentException"/> when the sequence would exceed <see cref="ContextLength"/>.
    /// </summary>
    void Forward(int sequence, ReadOnlySpan<int> tokens, Span<float> lastLogits);
}
