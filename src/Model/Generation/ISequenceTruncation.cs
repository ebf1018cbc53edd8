namespace Qwen3Cuda.Model.Generation;

/// <summary>
/// Optional capability of an <see cref="ICausalLanguageModel"/>: drop the tail of a sequence's KV cache,
/// keeping its first <c>length</c> tokens. With it, the generator keeps the prefix a new chat prompt shares
/// with the cache (the Qwen3 template re-renders earlier turns without their reasoning, so prompts diverge
/// inside the last answer); without it, a diverging prompt resets the sequence and prefills everything.
/// </summary>
public interface ISequenceTruncation
{
    void TruncateSequence(int sequence, int length);
}
