using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Model.Speculative;

/// <summary>Checks that a draft model can propose tokens for a target: the same token ids must mean the same text.</summary>
public static class DraftCompatibility
{
    /// <summary>
    /// Refuses two tokenizers that map some id to different bytes (or have different sizes), naming the first
    /// difference. Qwen3 models of every size share one tokenizer, so a Qwen3 draft passes.
    /// </summary>
    public static void CheckTokenizers(Qwen3Tokenizer target, Qwen3Tokenizer draft, string draftName = "the draft model")
    {
        if (target.VocabSize != draft.VocabSize)
            throw new SpeculativeDecodingException($"{draftName}'s tokenizer has {draft.VocabSize} tokens, the target's {target.VocabSize}: a draft must share the target's tokenizer", ErrorKind.InvalidInput);
        for (int id = 0; id < target.VocabSize; id++)
            if (!target.TokenBytes(id).SequenceEqual(draft.TokenBytes(id)))
                throw new SpeculativeDecodingException($"{draftName}'s tokenizer differs from the target's at token id {id}: a draft must share the target's tokenizer", ErrorKind.InvalidInput);
    }
}
