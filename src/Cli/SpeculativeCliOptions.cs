using System.CommandLine;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Cli;

/// <summary>
/// Speculative decoding options (docs/speculative.md): `--draft-model DIR` (a smaller model with the same tokenizer) or
/// `--draft ngram` (prompt lookup), and `--num-draft-tokens K`.
/// </summary>
sealed class SpeculativeCliOptions
{
    public const int DefaultDraftTokens = 4;
    /// <summary>The draft model's context without --ctx-size (Qwen3-0.6B: 112 KiB of KV per token, 1.75 GiB at 16384).</summary>
    public const int DefaultDraftContext = 16384;
    public readonly Option<string?> DraftModel = new("--draft-model")
    {
        Description = "Speculative decoding with this draft model (a folder or Hugging Face id of a smaller model with the same tokenizer, e.g. Qwen3-0.6B)",
        HelpName = "DIR",
    };
    public readonly Option<string?> Draft = CliOptions.NullableChoice("--draft", [], "Speculative decoding without a draft model: ngram (prompt lookup: proposes what followed the last tokens' earlier occurrence)", "ngram");
    public readonly Option<int> NumDraftTokens = CliOptions.Int("--num-draft-tokens", [], $"Tokens proposed per verification step with --draft or --draft-model (1 to {SpeculativeDecoder.MaxDraftTokens})",
        DefaultDraftTokens, 1, SpeculativeDecoder.MaxDraftTokens, "K");

    public void AddTo(Command cmd)
    {
        cmd.Add(DraftModel);
        cmd.Add(Draft);
        cmd.Add(NumDraftTokens);
    }

    /// <summary>True when the command asked for speculation.</summary>
    public bool Enabled(ParseResult parse) => parse.GetValue(DraftModel) is not null || parse.GetValue(Draft) is not null;

    /// <summary>Output rows the target must take in one step (k + 1 with speculation; null: the model's default).</summary>
    public int? TargetOutputRows(ParseResult parse) => Enabled(parse) ? parse.GetValue(NumDraftTokens) + 1 : null;

    /// <summary>
    /// The drafter the options ask for (null: none). A draft model is loaded on <paramref name="backend"/> after its config
    /// and tokenizer are checked against the target's (vocab_size, every token's bytes).
    /// </summary>
    public IDrafter? Open(ParseResult parse, ModelConfig target, Qwen3Tokenizer targetTokenizer, BackendKind backend, int? contextLength, TextWriter stderr)
    {
        string? modelSpec = parse.GetValue(DraftModel);
        string? kind = parse.GetValue(Draft);
        if (modelSpec is not null && kind is not null)
            throw new UsageException("give either --draft-model DIR or --draft ngram, not both");
        if (modelSpec is null && kind is null)
        {
            if (parse.GetResult(NumDraftTokens) is { Implicit: false })
                throw new UsageException("--num-draft-tokens needs --draft-model DIR or --draft ngram");
            return null;
        }
        if (kind == "ngram") return new NgramDrafter();
        string dir = ModelOpener.Resolve(modelSpec!, stderr);
        var config = ModelConfig.Load(dir);
        SpeculativeDecoder.CheckVocabulary(target.VocabSize, config.VocabSize);
        if (File.Exists(Path.Combine(dir, "tokenizer.json")))
            DraftCompatibility.CheckTokenizers(targetTokenizer, Qwen3Tokenizer.FromModelDirectory(dir), $"--draft-model {modelSpec}");
        else
            throw new SpeculativeDecodingException($"--draft-model {modelSpec}: {Path.Combine(dir, "tokenizer.json")} not found; the draft's tokenizer must be checked against the target's", ErrorKind.InvalidInput);
        stderr.Write("draft model: ");
        // The draft's KV cache: --ctx-size, else at most DefaultDraftContext tokens (past its context the draft proposes
        // nothing and decoding continues without speculation), so that the target keeps the memory for its own.
        int draftContext = contextLength ?? Math.Min(DefaultDraftContext, Math.Min(config.MaxPositionEmbeddings, target.MaxPositionEmbeddings));
        var loaded = ModelOpener.Open(dir, backend, maxSequences: 1, draftContext, null, stderr);
        return new ModelDrafter(loaded.Model, 0, ownsModel: true);
    }
}
