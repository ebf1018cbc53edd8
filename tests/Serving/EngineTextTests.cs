using System.Text;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Serving;

/// <summary>
/// The request state's per-token rules on a scripted model (tests/Text/FakeModel) with the tiny tokenizer: EOS, stop
/// strings, token budget, context, the reasoning split, tool-call parsing, UTF-8-safe streaming, cancellation, and the
/// prefix cache across chat turns.
/// </summary>
public class EngineTextTests
{
    static Qwen3Tokenizer Tok => ServingTestSupport.Tokenizer;
    static int Id(string s) => Tok.TokenToId(s) ?? throw new InvalidOperationException(s);
    static int ImEnd => Id("<|im_end|>");

    static (Engine Engine, FakeModel Model, int[] Prompt) Setup(string promptText, string scriptText, bool end = true, int context = 256, int[]? extraScript = null)
    {
        var prompt = Tok.Encode(promptText);
        var script = new List<int>(Tok.Encode(scriptText));
        if (extraScript != null) script.AddRange(extraScript);
        if (end) script.Add(ImEnd);
        var model = FakeModel.Scripted(Tok.VocabSize, context, prompt.Length, script);
        return (new Engine(model, Tok, null, Engine.DefaultEosTokenIds(Tok, null), new EngineOptions { MaxNumSeqs = 1 }), model, prompt);
    }

    static async Task<(RequestResult Result, List<EnginePiece> Pieces)> Run(Engine engine, IReadOnlyList<int> prompt, RequestOptions? options = null,
        Action<EnginePiece>? onPiece = null, CancellationToken ct = default)
    {
        var request = engine.Submit(prompt, options ?? new RequestOptions(), ct);
        var pieces = new List<EnginePiece>();
        await foreach (var p in request.Pieces) { pieces.Add(p); onPiece?.Invoke(p); }
        return (await request.Result, pieces);
    }

    [Test]
    public async Task StopsAtEndOfTurnTokenAndDecodesContent()
    {
        var (engine, _, prompt) = Setup("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "Hello world, the cat");
        await using var _e = engine;
        var (r, _) = await Run(engine, prompt);
        Assert.That(r.Content, Is.EqualTo("Hello world, the cat"));
        Assert.That(r.FinishReason, Is.EqualTo(FinishReason.Stop));
        Assert.That(r.StopTokenId, Is.EqualTo(ImEnd));
        Assert.That(r.Tokens[^1], Is.EqualTo(ImEnd));
        Assert.That(r.Usage.CompletionTokens, Is.EqualTo(r.Tokens.Count));
        Assert.That(r.Usage.PromptTokens, Is.EqualTo(prompt.Length));
    }

    [Test]
    public async Task SplitsReasoningFromContentAtThinkTokens()
    {
        var (engine, _, prompt) = Setup("<|im_start|>assistant\n", "<think>\nthe reasoning\n</think>\n\nthe answer");
        await using var _e = engine;
        var (r, pieces) = await Run(engine, prompt);
        Assert.That(r.Reasoning, Is.EqualTo("the reasoning"));
        Assert.That(r.Content, Is.EqualTo("the answer"));
        Assert.That(string.Concat(pieces.Where(p => p.Kind == PieceKind.Reasoning).Select(p => p.Text)), Is.EqualTo("\nthe reasoning\n"));
        Assert.That(string.Concat(pieces.Where(p => p.Kind == PieceKind.Content).Select(p => p.Text)), Is.EqualTo("\n\nthe answer"));
        Assert.That(pieces.Any(p => p.Text.Contains("think")), Is.False, "think tags are not emitted as text");
    }

    [Test]
    public async Task PromptWithOpenThinkBlockStartsInReasoning()
    {
        var (engine, _, prompt) = Setup("<|im_start|>assistant\n<think>\n", "hmm</think>\n\nok");
        await using (engine)
        {
            var (r, _) = await Run(engine, prompt);
            Assert.That((r.Reasoning, r.Content), Is.EqualTo(("hmm", "ok")));
        }
        // A closed empty think block in the prompt (thinking disabled) means everything is content.
        var (engine2, _, prompt2) = Setup("<|im_start|>assistant\n<think>\n\n</think>\n\n", "direct");
        await using (engine2)
        {
            var (r2, _) = await Run(engine2, prompt2);
            Assert.That((r2.Reasoning, r2.Content), Is.EqualTo(("", "direct")));
        }
    }

    [Test]
    public async Task StopStringEndsGenerationAndIsNotReturned()
    {
        var (engine, _, prompt) = Setup("x", "the cat says STOP and more text");
        await using var _e = engine;
        var (r, pieces) = await Run(engine, prompt, new RequestOptions { Stop = ["STOP", "never"] });
        Assert.That(r.Content, Is.EqualTo("the cat says "));
        Assert.That(string.Concat(pieces.Select(p => p.Text)), Is.EqualTo("the cat says "), "held-back text must not leak the stop string's start");
        Assert.That(r.FinishReason, Is.EqualTo(FinishReason.Stop));
        Assert.That(r.StopString, Is.EqualTo("STOP"));
    }

    [Test]
    public async Task StopTokenIds_AndIgnoreEos()
    {
        var (engine, _, prompt) = Setup("x", "a b c d", end: true);
        await using var _e = engine;
        int c = Tok.Encode(" c")[0];
        var (r, _) = await Run(engine, prompt, new RequestOptions { StopTokenIds = [c] });
        Assert.That((r.FinishReason, r.StopTokenId, r.Content), Is.EqualTo((FinishReason.Stop, (int?)c, "a b")));
        // Past EOS: the script repeats its last token (EOS) until the budget.
        var (all, _) = await Run(engine, prompt, new RequestOptions { IgnoreEos = true, MaxNewTokens = 7 });
        Assert.That(all.Tokens, Has.Count.EqualTo(7));
        Assert.That(all.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(all.Tokens.Count(t => t == ImEnd), Is.GreaterThan(1));
    }

    [Test]
    public async Task MaxNewTokensLimitsGeneration()
    {
        var (engine, _, prompt) = Setup("x", "a b c d e f g h i j", end: false);
        await using var _e = engine;
        var (r, _) = await Run(engine, prompt, new RequestOptions { MaxNewTokens = 4 });
        Assert.That(r.Tokens, Has.Count.EqualTo(4));
        Assert.That(r.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(r.ContextFull, Is.False);
    }

    [Test]
    public async Task ContextLimitStopsGenerationAndLongPromptIsRejectedBeforeAnyWork()
    {
        var (engine, model, prompt) = Setup("abcdefgh", "zzzzzzzzzzzzzzzzzz", end: false, context: 10);
        await using var _e = engine;
        Assert.That(prompt, Has.Length.EqualTo(8));
        var (r, _) = await Run(engine, prompt, new RequestOptions { MaxNewTokens = 100 });
        // Prompt and answer together fill the 10-token context: 2 answer tokens.
        Assert.That(r.FinishReason, Is.EqualTo(FinishReason.Length));
        Assert.That(r.ContextFull, Is.True);
        Assert.That(r.Tokens, Has.Count.EqualTo(2));

        model.ForwardSizes.Clear();
        var e = Assert.Throws<PromptTooLongException>(() => engine.Submit(Tok.Encode("abcdefghijk"), new RequestOptions()))!;
        Assert.That(e.Message, Does.Contain("11 tokens").And.Contain("holds 10"));
        Assert.That((e.PromptTokens, e.ContextLength), Is.EqualTo((11, 10)));
        Assert.That(model.ForwardSizes, Is.Empty);
    }

    [Test]
    public async Task StreamingNeverSplitsAMultiByteCharacter()
    {
        // Script the UTF-8 bytes one single-byte token at a time (byte-level tokens 0..255 in the tiny vocabulary).
        const string text = "é中🚀ü€";
        var byteTokens = Encoding.UTF8.GetBytes(text).Select(ByteToken).ToArray();
        var (engine, _, prompt) = Setup("x", "", extraScript: byteTokens);
        await using var _e = engine;
        var (r, pieces) = await Run(engine, prompt);
        Assert.That(string.Concat(pieces.Select(p => p.Text)), Is.EqualTo(text));
        Assert.That(r.Content, Is.EqualTo(text));
        foreach (var p in pieces)
        {
            Assert.That(p.Text, Does.Not.Contain("\uFFFD"));
            Assert.That(Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(p.Text)), Is.EqualTo(p.Text), "piece must be whole characters");
        }
        Assert.That(pieces, Has.Count.EqualTo(5), "one piece per completed character");
    }

    static int ByteToken(byte b) => Tok.TokenToId(Qwen3Tokenizer.ByteToChar[b].ToString())!.Value;

    [Test]
    public async Task ToolCallBlocks_BecomeToolCallPieces_WithIdsAndJsonArguments()
    {
        var (engine, _, prompt) = Setup("x", "Let me check.\n<tool_call>\n{\"name\": \"get_time\", \"arguments\": {\"tz\": \"UTC\"}}\n</tool_call>\n<tool_call>\nnot json\n</tool_call>");
        await using var _e = engine;
        var (r, pieces) = await Run(engine, prompt);
        Assert.That(r.FinishReason, Is.EqualTo(FinishReason.ToolCalls));
        Assert.That(r.ToolCalls, Has.Count.EqualTo(1));
        var call = r.ToolCalls[0];
        Assert.That((call.Name, call.ArgumentsJson), Is.EqualTo(("get_time", "{\"tz\": \"UTC\"}")));
        Assert.That(call.Id, Does.Match("^call_[0-9a-f]{24}$"));
        var callPieces = pieces.Where(p => p.Kind == PieceKind.ToolCall).ToList();
        Assert.That(callPieces, Has.Count.EqualTo(1));
        Assert.That(callPieces[0].ToolCall, Is.EqualTo(call));
        // Text around the blocks stays content; a block that is not a call stays text too.
        Assert.That(r.Content, Is.EqualTo("Let me check.\n\n<tool_call>\nnot json\n</tool_call>"));
        Assert.That(string.Concat(pieces.Where(p => p.Kind == PieceKind.Content).Select(p => p.Text)), Is.EqualTo(r.Content));
        // Without parsing, the raw text is the content.
        var (raw, _) = await Run(engine, prompt, new RequestOptions { ParseToolCalls = false });
        Assert.That(raw.ToolCalls, Is.Empty);
        Assert.That(raw.FinishReason, Is.EqualTo(FinishReason.Stop));
        Assert.That(raw.Content, Does.StartWith("Let me check.\n<tool_call>\n{\"name\": \"get_time\""));
    }

    [Test]
    public async Task CancellationStopsCleanlyAndTheNextTurnReusesTheCachedPages()
    {
        var (engine, model, prompt) = Setup("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "a b c d e f g h i j k l", end: false);
        await using var _e = engine;
        using var cts = new CancellationTokenSource();
        var script = model.Next;
        // Cancelled from inside the step that computes the fourth token (the scripted model is faster than any reader):
        // the request ends at the next step.
        model.Next = h => { if (h.Count == prompt.Length + 3) cts.Cancel(); return script(h); };
        var (r, _) = await Run(engine, prompt, new RequestOptions { MaxNewTokens = 200 }, ct: cts.Token);
        Assert.That(r.FinishReason, Is.EqualTo(FinishReason.Cancelled));
        Assert.That(r.Tokens, Has.Count.EqualTo(4));

        // Next turn: the new prompt extends the first (prompt + answer); the KV of all but the last answer token is in
        // committed pages (page size 1), so only the rest is prefilled.
        int cached = prompt.Length + r.Tokens.Count - 1;
        var next = prompt.Concat(r.Tokens).Concat(Tok.Encode("<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n")).ToArray();
        model.Next = _ => ImEnd;
        model.ForwardSizes.Clear();
        var (r2, _) = await Run(engine, next);
        Assert.That(r2.FinishReason, Is.EqualTo(FinishReason.Stop));
        Assert.That(r2.Usage.CachedPromptTokens, Is.EqualTo(cached));
        Assert.That(model.ForwardSizes[0], Is.EqualTo(next.Length - cached));
        Assert.That(r2.Usage.PrefilledTokens, Is.EqualTo(next.Length - cached));

        // A prompt that shares nothing prefills everything.
        model.ForwardSizes.Clear();
        var other = Tok.Encode("completely different");
        var (r3, _) = await Run(engine, other);
        Assert.That(model.ForwardSizes[0], Is.EqualTo(other.Length));
        Assert.That(r3.Usage.CachedPromptTokens, Is.Zero);
    }

    [Test]
    public async Task ChatPromptThatDropsEarlierReasoningKeepsTheSharedPrefix()
    {
        // Turn 1 answers with reasoning; turn 2's prompt re-renders that answer without it (as the Qwen3 template does).
        var (engine, model, prompt) = Setup("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n", "<think>\nr\n</think>\n\nA1");
        await using var _e = engine;
        var (r1, _) = await Run(engine, prompt);
        Assert.That(r1.Content, Is.EqualTo("A1"));
        var turn2 = Tok.Encode("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
        model.Next = _ => ImEnd;
        model.ForwardSizes.Clear();
        await Run(engine, turn2);
        // Only what follows the shared prefix (the original prompt) is prefilled.
        Assert.That(model.ForwardSizes[0], Is.EqualTo(turn2.Length - prompt.Length));
    }

    [Test]
    public async Task SeededSamplingIsReproducible()
    {
        // A model with flat logits: every token equally likely, so the seed alone decides the text.
        var model = new FakeModel(Tok.VocabSize, 512, _ => -1);
        await using var engine = new Engine(model, Tok, null, [], new EngineOptions { MaxNumSeqs = 2 });
        var prompt = Tok.Encode("x");
        var o = new RequestOptions { MaxNewTokens = 20, Sampling = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, Seed = 77 } };
        var a = (await engine.CompleteAsync(prompt, o)).Tokens;
        var b = (await engine.CompleteAsync(prompt, o)).Tokens;
        Assert.That(a, Is.EqualTo(b));
        Assert.That(a.Distinct().Count(), Is.GreaterThan(1));
        // Host sampling (logprobs ask for the logits) draws the same tokens with the same counter-based generator.
        var c = (await engine.CompleteAsync(prompt, o with { TopLogprobs = 0 })).Tokens;
        Assert.That(c, Is.EqualTo(a));
    }
}
