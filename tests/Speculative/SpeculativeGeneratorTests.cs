using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Speculative;

/// <summary>The engine with a drafter (what `generate --draft ...` runs): the same tokens, text and stop as without, the pages all freed.</summary>
public class SpeculativeGeneratorTests
{
    static readonly Lazy<Qwen3Tokenizer> Tok = new(() => Qwen3Tokenizer.FromModelDirectory(Path.Combine(TextTestSupport.TextTestsDir, "Data", "tiny-model")));

    static RequestResult Run(string scriptText, RequestOptions options, IDrafter? drafter)
    {
        var tok = Tok.Value;
        var prompt = tok.Encode("<|im_start|>user\nthe cat the cat<|im_end|>\n<|im_start|>assistant\n");
        var script = new List<int>(tok.Encode(scriptText)) { tok.TokenToId("<|im_end|>")!.Value };
        var model = FakeModel.Scripted(tok.VocabSize, 256, prompt.Length, script);
        var engine = new Engine(model, tok, null, Engine.DefaultEosTokenIds(tok, null), new EngineOptions { MaxNumSeqs = 1 });
        try
        {
            var r = engine.CompleteAsync(prompt, options with { Drafter = drafter, NumDraftTokens = 4 }).GetAwaiter().GetResult();
            Assert.That(engine.Metrics.KvPagesUsed, Is.Zero, "the request's pages are freed (rolled-back rows included)");
            return r;
        }
        finally { engine.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
    }

    [TestCase(0f)]
    [TestCase(0.8f)]
    public void SameOutputWithPromptLookup(float temperature)
    {
        // The scripted model is deterministic (logit 10 on its choice), so sampled output equals greedy here too.
        const string text = "the cat the cat the cat sat on the mat the cat sat on the mat";
        var options = new RequestOptions { Sampling = Qwen3Cuda.Model.Sampling.SamplingOptions.Greedy with { Temperature = temperature, Seed = 3 } };
        var plain = Run(text, options, null);
        var spec = Run(text, options, new NgramDrafter());
        Assert.That(spec.Tokens, Is.EqualTo(plain.Tokens));
        Assert.That(spec.Content, Is.EqualTo(text));
        Assert.That(spec.FinishReason, Is.EqualTo(FinishReason.Stop));
        Assert.That(plain.Speculation, Is.Null);
        var st = spec.Speculation!;
        TestContext.Out.WriteLine(st);
        Assert.That(st.AcceptedTokens, Is.GreaterThan(0), "the repeated text is found by prompt lookup");
        Assert.That(st.EmittedTokens, Is.EqualTo(spec.Tokens.Count - 1), "every token after the first came from a speculative round");
    }

    [Test]
    public void StopsMidRoundAtAStopStringOrTheTokenBudget()
    {
        const string text = "the cat the cat the cat sat on the mat";
        var stop = new RequestOptions { Stop = ["sat"] };
        var plainStop = Run(text, stop, null);
        var specStop = Run(text, stop, new NgramDrafter());
        Assert.That((specStop.Content, specStop.FinishReason, specStop.Tokens), Is.EqualTo((plainStop.Content, plainStop.FinishReason, plainStop.Tokens)));
        var budget = new RequestOptions { MaxNewTokens = 6 };
        var specBudget = Run(text, budget, new NgramDrafter());
        var plainBudget = Run(text, budget, null);
        Assert.That(specBudget.Tokens, Is.EqualTo(plainBudget.Tokens));
        Assert.That(specBudget.FinishReason, Is.EqualTo(FinishReason.Length));
    }

    /// <summary>
    /// Penalties apply to every verification row with that row's context: a model with flat logits, where the presence and
    /// repetition penalties alone decide the argmax (the lowest id not yet seen), gives the same tokens with speculation.
    /// </summary>
    [TestCase(0.5f, 1f)]
    [TestCase(0.5f, 1.3f)]   // the repetition penalty scales logits (0 here: no change), the presence penalty still decides
    public void PenaltiesWithSpeculation_GiveTheSameGreedyTokens(float presence, float repetition)
    {
        var tok = Tok.Value;
        var prompt = tok.Encode("<|im_start|>user\nab ab ab<|im_end|>\n<|im_start|>assistant\n");
        var options = new RequestOptions { MaxNewTokens = 12, PresencePenalty = presence, RepetitionPenalty = repetition };
        List<int> Generate(IDrafter? drafter)
        {
            var model = new FakeModel(tok.VocabSize, 256, _ => -1);   // flat logits (all 0)
            var engine = new Engine(model, tok, null, [tok.TokenToId("<|im_end|>")!.Value], new EngineOptions { MaxNumSeqs = 1 });
            try { return [.. engine.CompleteAsync(prompt, options with { Drafter = drafter, NumDraftTokens = 3 }).GetAwaiter().GetResult().Tokens]; }
            finally { engine.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
        }
        var plain = Generate(null);
        var spec = Generate(new NgramDrafter(maxNgram: 2));
        TestContext.Out.WriteLine(string.Join(",", plain));
        Assert.That(spec, Is.EqualTo(plain));
        Assert.That(plain.Distinct().Count(), Is.GreaterThan(1), "the penalties change the choice between steps");
    }
}
