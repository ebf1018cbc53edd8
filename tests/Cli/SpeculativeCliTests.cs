using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Tests.Model;
using Qwen3Cuda.Tests.Support;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>`generate` and `chat` with `--draft-model DIR | --draft ngram --num-draft-tokens K` (docs/speculative.md).</summary>
[NonParallelizable]
public class SpeculativeCliTests
{
    static string Tiny => CliModels.TinyText();

    /// <summary>A synthetic checkpoint with the tiny test tokenizer copied in.</summary>
    [Test]
    public void GreedyWithDraftModelOrPromptLookup_PrintsTheSameTokensAndStats()
    {
        string[] common = ["generate", "-m", Tiny, "-p", "the cat sat on the mat, the cat sat", "-n", "16", "--temperature", "0", "--device", "cpu", "--print-token-ids"];
        var plain = CliRunner.Run(common);
        var draft = CliRunner.Run([.. common, "--draft-model", CliModels.DenseDraft(), "--num-draft-tokens", "3"]);
        var ngram = CliRunner.Run([.. common, "--draft", "ngram"]);
        Assert.That(plain.Exit, Is.Zero, plain.Err);
        Assert.That(draft.Exit, Is.Zero, draft.Err);
        Assert.That(ngram.Exit, Is.Zero, ngram.Err);
        string Ids(string err) => err.Split('\n').Single(l => l.StartsWith("token ids:", StringComparison.Ordinal));
        Assert.That(Ids(draft.Err), Is.EqualTo(Ids(plain.Err)));
        Assert.That(Ids(ngram.Err), Is.EqualTo(Ids(plain.Err)));
        Assert.That(draft.Out, Is.EqualTo(plain.Out));
        Assert.That(draft.Err, Does.Contain("speculation: ").And.Contain("drafted tokens accepted"));
        Assert.That(ngram.Err, Does.Contain("speculation: "));
        Assert.That(plain.Err, Does.Not.Contain("speculation: "));
    }

    [Test]
    public void Chat_WithPromptLookupOrDraftModel_AnswersAsWithout_AndPrintsStatsPerTurn()
    {
        const string input = "the cat sat on the mat, the cat sat\nand then the cat sat\n/exit\n";
        string[] common = ["chat", "-m", Tiny, "-n", "12", "--temperature", "0", "--device", "cpu", "--no-think"];
        var plain = CliRunner.RunWithInput(input, common);
        var ngram = CliRunner.RunWithInput(input, [.. common, "--draft", "ngram", "--num-draft-tokens", "3"]);
        var draft = CliRunner.RunWithInput(input, [.. common, "--draft-model", CliModels.DenseDraft()]);
        Assert.That(plain.Exit, Is.Zero, plain.Err);
        Assert.That(ngram.Exit, Is.Zero, ngram.Err);
        Assert.That(draft.Exit, Is.Zero, draft.Err);
        Assert.That(ngram.Out, Is.EqualTo(plain.Out), "greedy answers are the same turn for turn");
        Assert.That(draft.Out, Is.EqualTo(plain.Out));
        int Turns(string err) => err.Split('\n').Count(l => l.StartsWith("speculation: ", StringComparison.Ordinal));
        Assert.That(Turns(ngram.Err), Is.EqualTo(2), ngram.Err);
        Assert.That(Turns(draft.Err), Is.EqualTo(2), draft.Err);
        Assert.That(Turns(plain.Err), Is.Zero);
    }

    [Test]
    public void Chat_NumDraftTokensWithoutADrafter_IsAUsageError()
    {
        var (exit, _, err) = CliRunner.RunWithInput("/exit\n", "chat", "-m", Tiny, "--device", "cpu", "--num-draft-tokens", "3");
        Assert.That(exit, Is.EqualTo(2));
        Assert.That(err, Does.Contain("--num-draft-tokens needs --draft-model DIR or --draft ngram"));
    }

    [TestCase("0", "--num-draft-tokens: 0 is out of range (1 to 16)")]
    [TestCase("17", "--num-draft-tokens: 17 is out of range (1 to 16)")]
    public void DraftLengthOutOfRange_IsAUsageError(string k, string message)
    {
        var (exit, _, err) = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "-n", "2", "--device", "cpu", "--draft", "ngram", "--num-draft-tokens", k);
        Assert.That(exit, Is.EqualTo(2));
        Assert.That(err, Does.Contain(message));
    }

    [Test]
    public void DraftModelWithAnotherVocabulary_IsRefused()
    {
        string other = CliModels.WithTokenizer(new SyntheticOptions { Preset = SyntheticPreset.Small, Seed = 1, Layers = 1 }, "other-vocab");   // vocab 2048
        var (exit, _, err) = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "-n", "2", "--device", "cpu", "--draft-model", other);
        Assert.That(exit, Is.EqualTo(1));
        Assert.That(err, Does.Contain("the draft model's vocabulary (2048 tokens) differs from the target's (512)"));
    }

    [Test]
    public void DraftOptionsThatContradict_AreUsageErrors()
    {
        var both = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "-n", "2", "--device", "cpu", "--draft", "ngram", "--draft-model", CliModels.DenseDraft());
        Assert.That(both.Exit, Is.EqualTo(2));
        Assert.That(both.Err, Does.Contain("give either --draft-model DIR or --draft ngram, not both"));
        var alone = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "-n", "2", "--device", "cpu", "--num-draft-tokens", "3");
        Assert.That(alone.Exit, Is.EqualTo(2));
        Assert.That(alone.Err, Does.Contain("--num-draft-tokens needs --draft-model DIR or --draft ngram"));
        var kind = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "-n", "2", "--device", "cpu", "--draft", "eagle");
        Assert.That(kind.Exit, Is.EqualTo(2));
        Assert.That(kind.Err, Does.Contain("--draft: 'eagle' is not one of ngram"));
    }
}

/// <summary>`bench` with speculation: a measured tg row on cpu, the timing model's prediction on the emulator.</summary>
[NonParallelizable]
public class SpeculativeBenchCliTests
{
    [Test]
    public void Cpu_AddsASpeculativeTgRow_AndPrintsAcceptance()
    {
        var (exit, output, err) = CliRunner.Run("bench", "-m", CliModels.TinyText(), "--device", "cpu", "-p", "8", "-n", "8", "-r", "1", "-o", "csv", "--draft", "ngram", "--num-draft-tokens", "3");
        Assert.That(exit, Is.Zero, err);
        Assert.That(output, Does.Contain(",tg8+spec3,8,"));
        Assert.That(err, Does.Contain("bench tg8 with prompt lookup, k 3: speculation: "));
    }

    [Test]
    public void Emulator_PrintsThePredictedSpeedup()
    {
        var (exit, output, err) = CliRunner.Run("bench", "-m", CliModels.TinyText(), "--device", "emulator", "-p", "8", "-n", "8", "--draft", "ngram", "--num-draft-tokens", "2");
        Assert.That(exit, Is.Zero, err);
        Assert.That(output, Does.Contain("speculative decoding, predicted on NVIDIA H100 SXM5 80GB by the timing model"));
        Assert.That(output, Does.Match(@"verification step of 3 rows [0-9.]+ us"));
        Assert.That(output, Does.Match(@"tg without speculation [0-9.]+ t/s; with it [0-9.]+ t/s \([0-9.]+x\)"));
    }
}
