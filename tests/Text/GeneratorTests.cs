using System.Text;
using Qwen3Cuda.Model.Generation;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Tests.Text;

public class GeneratorTests
{
    static Qwen3Tokenizer Tok => TinyTokenizer.Value;
    static readonly Lazy<Qwen3Tokenizer> TinyTokenizer = new(() =>
        Qwen3Tokenizer.FromModelDirectory(Path.Combine(TextTestSupport.TextTestsDir, "Data", "tiny-model")));
    static int Id(string s) => Tok.TokenToId(s) ?? throw new InvalidOperationException(s);
    static int ImEnd => Id("<|im_end|>");

    static (Generator Gen, FakeModel Model, int[] Prompt) Setup(string promptText, string scriptText, bool end = true, int context = 256,
        int[]? extraScript = null)
    {
        var prompt = Tok.Encode(promptText);
        var script = new List<int>(Tok.Encode(scriptText));
        if (extraScript != null) script.AddRange(extraScript);
        if (end) script.Add(ImEnd);
        var model = FakeModel.Scripted(Tok.VocabSize, context, prompt.Length, script);
        return (new Generator(model, Tok, Generator.DefaultEosTokenIds(Tok, null)), model, prompt);
    }

    [Test]
    public void StopsAtEndOfTurnTokenAndDecodesContent()
    {
        var (gen, _, prompt) = Setup("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "Hello world, the cat");
        var r = gen.Generate(prompt, new GenerationOptions());
        Assert.That(r.Content, Is.EqualTo("Hello world, the cat"));
        Assert.That(r.StopReason, Is.EqualTo(StopReason.EndOfSequence));
        Assert.That(r.Tokens[^1], Is.EqualTo(ImEnd));
        Assert.That(r.Stats.GeneratedTokens, Is.EqualTo(r.Tokens.Count));
        Assert.That(r.Stats.PromptTokens, Is.EqualTo(prompt.Length));
    }

    [Test]
    public void SplitsThinkingFromContentAtThinkTokens()
    {
        var (gen, _, prompt) = Setup("<|im_start|>assistant\n", "<think>\nthe reasoning\n</think>\n\nthe answer");
        var pieces = new List<GenerationPiece>();
        var r = gen.Generate(prompt, new GenerationOptions(), pieces.Add);
        Assert.That(r.Thinking, Is.EqualTo("the reasoning"));
        Assert.That(r.Content, Is.EqualTo("the answer"));
        Assert.That(string.Concat(pieces.Where(p => p.Kind == PieceKind.Thinking).Select(p => p.Text)), Is.EqualTo("\nthe reasoning\n"));
        Assert.That(string.Concat(pieces.Where(p => p.Kind == PieceKind.Content).Select(p => p.Text)), Is.EqualTo("\n\nthe answer"));
        Assert.That(pieces.Any(p => p.Text.Contains("think")), Is.False, "think tags are not emitted as text");
    }

    [Test]
    public void PromptWithOpenThinkBlockStartsInThinking()
    {
        var (gen, _, prompt) = Setup("<|im_start|>assistant\n<think>\n", "hmm</think>\n\nok");
        var r = gen.Generate(prompt, new GenerationOptions());
        Assert.That((r.Thinking, r.Content), Is.EqualTo(("hmm", "ok")));
        // A closed empty think block in the prompt (thinking disabled) means everything is content.
        var (gen2, _, prompt2) = Setup("<|im_start|>assistant\n<think>\n\n</think>\n\n", "direct");
        var r2 = gen2.Generate(prompt2, new GenerationOptions());
        Assert.That((r2.Thinking, r2.Content), Is.EqualTo(("", "direct")));
    }

    [Test]
    public void StopStringEndsGenerationAndIsNotReturned()
    {
        var (gen, _, prompt) = Setup("x", "the cat says STOP and more text");
        var pieces = new StringBuilder();
        var r = gen.Generate(prompt, new GenerationOptions { StopStrings = ["STOP"] }, p => pieces.Append(p.Text));
        Assert.That(r.Content, Is.EqualTo("the cat says "));
        Assert.That(pieces.ToString(), Is.EqualTo("the cat says "), "held-back text must not leak the stop string's start");
        Assert.That(r.StopReason, Is.EqualTo(StopReason.StopString));
    }

    [Test]
    public void MaxNewTokensLimitsGeneration()
    {
        var (gen, _, prompt) = Setup("x", "a b c d e f g h i j", end: false);
        var r = gen.Generate(prompt, new GenerationOptions { MaxNewTokens = 4 });
        Assert.That(r.Tokens, Has.Count.EqualTo(4));
        Assert.That(r.StopReason, Is.EqualTo(StopReason.MaxNewTokens));
    }

    [Test]
    public void ContextLimitStopsGenerationAndLongPromptIsRejectedBeforeAnyWork()
    {
        var (gen, model, prompt) = Setup("abcdefgh", "zzzzzzzzzzzzzzzzzz", end: false, context: 10);
        Assert.That(prompt, Has.Length.EqualTo(8));
        var r = gen.Generate(prompt, new GenerationOptions { MaxNewTokens = 100 });
        // 8 prompt tokens + 2 forwarded generated tokens fill the 10-token context; the third sampled token ends it.
        Assert.That(r.StopReason, Is.EqualTo(StopReason.ContextFull));
        Assert.That(r.Tokens, Has.Count.EqualTo(3));
        Assert.That(model.SequenceLength(0), Is.EqualTo(10));

        var (gen2, model2, _) = Setup("x", "y", context: 10);
        var longPrompt = Tok.Encode("abcdefghijk");
        var e = Assert.Throws<ArgumentException>(() => gen2.Generate(longPrompt, new GenerationOptions()))!;
        Assert.That(e.Message, Does.Contain("11 tokens").And.Contain("holds 10"));
        Assert.That(model2.ForwardSizes, Is.Empty);
    }

    [Test]
    public void StreamingNeverSplitsAMultiByteCharacter()
    {
        // Script the UTF-8 bytes one single-byte token at a time (byte-level tokens 0..255 in the tiny vocabulary).
        const string text = "é中🚀ü€";
        var byteTokens = Encoding.UTF8.GetBytes(text).Select(b => Tok.Encode(Encoding.Latin1.GetString([b])) is var _ ? ByteToken(b) : 0).ToArray();
        var (gen, _, prompt) = Setup("x", "", extraScript: byteTokens);
        var pieces = new List<string>();
        var r = gen.Generate(prompt, new GenerationOptions(), p => pieces.Add(p.Text));
        Assert.That(string.Concat(pieces), Is.EqualTo(text));
        Assert.That(r.Content, Is.EqualTo(text));
        foreach (var p in pieces)
        {
            Assert.That(p, Does.Not.Contain("\uFFFD"));
            Assert.That(Encoding.UTF8.GetString(Encoding.UTF8.GetBytes(p)), Is.EqualTo(p), "piece must be whole characters");
        }
        Assert.That(pieces, Has.Count.EqualTo(5), "one piece per completed character");
    }

    static int ByteToken(byte b) => Tok.TokenToId(Qwen3Tokenizer.ByteToChar[b].ToString())!.Value;

    [Test]
    public void CancellationStopsCleanlyAndTheNextTurnReusesTheCache()
    {
        var (gen, model, prompt) = Setup("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "a b c d e f g h i j k l", end: false);
        using var cts = new CancellationTokenSource();
        int count = 0;
        var r = gen.Generate(prompt, new GenerationOptions { MaxNewTokens = 1000 }, _ => { if (++count == 3) cts.Cancel(); }, cts.Token);
        Assert.That(r.StopReason, Is.EqualTo(StopReason.Cancelled));
        Assert.That(r.Tokens, Has.Count.EqualTo(3));

        // Next turn: the new prompt extends what is cached (prompt + forwarded answer), so only the new part is prefilled.
        var history = new List<int>(model.History(0));
        var next = history.Concat(Tok.Encode("<|im_end|>\n<|im_start|>user\nmore<|im_end|>\n")).ToArray();
        model.Next = _ => ImEnd;
        model.ForwardSizes.Clear();
        var r2 = gen.Generate(next, new GenerationOptions());
        Assert.That(r2.StopReason, Is.EqualTo(StopReason.EndOfSequence));
        Assert.That(model.ForwardSizes[0], Is.EqualTo(next.Length - history.Count));
        Assert.That(r2.Stats.PrefilledTokens, Is.EqualTo(next.Length - history.Count));

        // A prompt that diverges from the cache resets the sequence and prefills everything.
        model.ForwardSizes.Clear();
        var other = Tok.Encode("completely different");
        gen.Generate(other, new GenerationOptions());
        Assert.That(model.ForwardSizes[0], Is.EqualTo(other.Length));
        Assert.That(model.History(0).Take(other.Length), Is.EqualTo(other));
    }

    [Test]
    public void ChatPromptThatDropsEarlierReasoningKeepsTheSharedPrefix()
    {
        // Turn 1 answers with reasoning; turn 2's prompt re-renders that answer without it (as the Qwen3 template does).
        var (gen, model, prompt) = Setup("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\n", "<think>\nr\n</think>\n\nA1");
        var r1 = gen.Generate(prompt, new GenerationOptions());
        Assert.That(r1.Content, Is.EqualTo("A1"));
        var turn2 = Tok.Encode("<|im_start|>user\nQ1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n<|im_start|>user\nQ2<|im_end|>\n<|im_start|>assistant\n");
        model.Next = _ => ImEnd;
        model.ForwardSizes.Clear();
        gen.Generate(turn2, new GenerationOptions());
        // Only what follows the shared prefix (the original prompt) is prefilled, and the cache now holds turn 2's prompt.
        Assert.That(model.ForwardSizes[0], Is.EqualTo(turn2.Length - prompt.Length));
        Assert.That(model.History(0).Take(turn2.Length), Is.EqualTo(turn2));
    }

    [Test]
    public async Task AsyncStreamYieldsTheSamePiecesAsTheCallback()
    {
        var (gen, _, prompt) = Setup("x", "<think>\nr\n</think>\n\nhello world");
        var viaCallback = new List<GenerationPiece>();
        gen.Generate(prompt, new GenerationOptions(), viaCallback.Add);
        gen.Reset();
        var viaStream = new List<GenerationPiece>();
        GenerationResult? result = null;
        await foreach (var p in gen.GenerateStreamAsync(prompt, new GenerationOptions(), r => result = r)) viaStream.Add(p);
        Assert.That(viaStream, Is.EqualTo(viaCallback));
        Assert.That(result!.Content, Is.EqualTo("hello world"));
    }

    [Test]
    public void SeededSamplingIsReproducibleThroughTheGenerator()
    {
        // A model with flat logits: every token equally likely, so the seed alone decides the text.
        var model = new FakeModel(Tok.VocabSize, 512, _ => -1);
        var prompt = Tok.Encode("x");
        var gen = new Generator(model, Tok, []);
        var o = new GenerationOptions { MaxNewTokens = 20, Sampling = new SamplingOptions { Temperature = 1, TopK = 0, TopP = 1, Seed = 77 } };
        var a = gen.Generate(prompt, o).Tokens;
        var b = gen.Generate(prompt, o).Tokens;
        Assert.That(a, Is.EqualTo(b));
        Assert.That(a.Distinct().Count(), Is.GreaterThan(1));
    }
}
