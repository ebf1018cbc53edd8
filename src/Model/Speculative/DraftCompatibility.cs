using Qwen3Cuda.Model.Config;
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

    /// <summary>
    /// Checks a draft model folder against the target before it loads: vocab_size (config.json) and every token's bytes
    /// (tokenizer.json, which must be there); returns the draft's config. <paramref name="label"/> names the draft in
    /// messages ("--draft-model DIR").
    /// </summary>
    public static ModelConfig CheckDraftModel(string draftDirectory, string label, ModelConfig target, Qwen3Tokenizer targetTokenizer)
    {
        var config = ModelConfig.Load(draftDirectory);
        SpeculativeDecoder.CheckVocabulary(target.VocabSize, config.VocabSize);
        string tokenizerPath = Path.Combine(draftDirectory, "tokenizer.json");
        if (!File.Exists(tokenizerPath))
            throw new SpeculativeDecodingException($"{label}: {tokenizerPath} not found; the draft's tokenizer must be checked against the target's", ErrorKind.InvalidInput);
        CheckTokenizers(targetTokenizer, Qwen3Tokenizer.FromModelDirectory(draftDirectory), label);
        return config;
    }
}
