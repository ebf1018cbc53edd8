using System.CommandLine;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Serving;
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
    /// <summary>The draft model's context without --ctx-size.</summary>
    public const int DefaultDraftContext = ModelDraftSource.DefaultContextTokens;
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

    /// <summary>Refuses contradicting options (both drafters; --num-draft-tokens alone); false when no speculation is asked for.</summary>
    public bool Check(ParseResult parse)
    {
        string? modelSpec = parse.GetValue(DraftModel);
        string? kind = parse.GetValue(Draft);
        if (modelSpec is not null && kind is not null)
            throw new UsageException("give either --draft-model DIR or --draft ngram, not both");
        if (modelSpec is { Length: 0 }) throw new UsageException("--draft-model is empty: give a model folder or Hugging Face id");
        if (modelSpec is null && kind is null)
        {
            if (parse.GetResult(NumDraftTokens) is { Implicit: false })
                throw new UsageException("--num-draft-tokens needs --draft-model DIR or --draft ngram");
            return false;
        }
        return true;
    }

    /// <summary>The engine options of `serve` with the speculation these options ask for (every request speculates).</summary>
    public EngineOptions ApplyTo(ParseResult parse, EngineOptions options) => Check(parse)
        ? options with { DraftModel = parse.GetValue(DraftModel), Draft = parse.GetValue(Draft), NumDraftTokens = parse.GetValue(NumDraftTokens) }
        : options;

    /// <summary>
    /// The drafter the options ask for (null: none). A draft model is loaded on <paramref name="backend"/> after its config
    /// and tokenizer are checked against the target's (vocab_size, every token's bytes).
    /// </summary>
    public IDrafter? Open(ParseResult parse, ModelConfig target, Qwen3Tokenizer targetTokenizer, BackendKind backend, int? contextLength, TextWriter stderr)
    {
        if (!Check(parse)) return null;
        string? modelSpec = parse.GetValue(DraftModel);
        if (modelSpec is null) return new NgramDrafter();
        string dir = ModelOpener.Resolve(modelSpec, stderr, "--draft-model");
        var config = DraftCompatibility.CheckDraftModel(dir, $"--draft-model {modelSpec}", target, targetTokenizer);
        stderr.Write("draft model: ");
        // The draft's KV cache: --ctx-size, else at most DefaultDraftContext tokens (past its context the draft proposes
        // nothing and decoding continues without speculation), so that the target keeps the memory for its own.
        int draftContext = contextLength ?? Math.Min(DefaultDraftContext, Math.Min(config.MaxPositionEmbeddings, target.MaxPositionEmbeddings));
        var loaded = ModelOpener.Open(dir, backend, maxSequences: 1, draftContext, null, stderr);
        return new ModelDrafter(loaded.Model, 0, ownsModel: true);
    }

    /// <summary>
    /// The drafter and the target for `generate` and `chat`: a draft model loads first (its KV cache sized to the
    /// context), the target then plans the memory left, with k + 1 output rows per step when speculating. Dispose both.
    /// </summary>
    public (IDrafter? Drafter, LoadedModel Target) OpenWithTarget(ParseResult parse, SamplingCliOptions s, string dir, Qwen3Tokenizer tokenizer, BackendKind backend, TextWriter stderr)
    {
        var drafter = Open(parse, ModelConfig.Load(dir), tokenizer, backend, parse.GetValue(s.Context), stderr);
        try { return (drafter, ModelOpener.Open(dir, backend, s.LoadOptions(parse) with { MaxOutputRows = TargetOutputRows(parse) }, stderr)); }
        catch { drafter?.Dispose(); throw; }
    }

    /// <summary><paramref name="options"/> with <paramref name="drafter"/> and the options' k (unchanged without a drafter).</summary>
    public RequestOptions Apply(ParseResult parse, RequestOptions options, IDrafter? drafter) =>
        drafter is null ? options : options with { Drafter = drafter, NumDraftTokens = parse.GetValue(NumDraftTokens) };
}
