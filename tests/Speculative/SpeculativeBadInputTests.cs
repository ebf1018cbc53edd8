using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.Speculative;

/// <summary>Settings that cannot work are refused before anything runs, with a message naming the problem.</summary>
public class SpeculativeBadInputTests
{
    [Test]
    public void DraftWithAnotherVocabulary_IsRefused()
    {
        var target = new ToyModel(ToyModel.RandomTable(5, 1));
        using var drafter = new ModelDrafter(new ToyModel(ToyModel.RandomTable(6, 2)));
        var e = Assert.Throws<SpeculativeDecodingException>(() => new SpeculativeDecoder(target, 0, drafter, 3));
        Assert.That(e!.Message, Is.EqualTo("the draft model's vocabulary (6 tokens) differs from the target's (5): a draft must share the target's tokenizer and vocab_size"));
        Assert.That(e.Kind, Is.EqualTo(ErrorKind.InvalidInput));
    }

    [TestCase(0)]
    [TestCase(-1)]
    [TestCase(17)]
    public void DraftLengthOutOfRange_IsRefused(int k)
    {
        var target = new ToyModel(ToyModel.RandomTable(5, 1));
        var e = Assert.Throws<SpeculativeDecodingException>(() => new SpeculativeDecoder(target, 0, new NgramDrafter(), k));
        Assert.That(e!.Message, Does.StartWith($"--num-draft-tokens {k} is out of range: give 1 to 16"));
        Assert.That(e.Kind, Is.EqualTo(ErrorKind.InvalidArgument));
    }

    [Test]
    public void DraftLongerThanTheTargetsStep_IsRefused()
    {
        var target = new ToyModel(ToyModel.RandomTable(5, 1), maxRows: 4);   // 4 output rows: k at most 3
        Assert.DoesNotThrow(() => new SpeculativeDecoder(target, 0, new NgramDrafter(), 3).Dispose());
        var e = Assert.Throws<SpeculativeDecodingException>(() => new SpeculativeDecoder(target, 0, new NgramDrafter(), 4));
        Assert.That(e!.Message, Does.StartWith("--num-draft-tokens 4 is out of range: give 1 to 3"));
    }

    [Test]
    public void StepWithACacheOutOfStep_IsRefused()
    {
        var target = new ToyModel(ToyModel.RandomTable(5, 1));
        using var decoder = new SpeculativeDecoder(target, 0, new NgramDrafter(), 2);
        var e = Assert.Throws<InvalidOperationException>(() => decoder.Step([1, 2, 3], new(Temperature: 0f), 4, []));
        Assert.That(e!.Message, Does.Contain("holds 0 tokens; a speculative step needs all 2 history tokens but the last"));
    }

    [Test]
    public void TokenizersThatDiffer_AreRefused()
    {
        string dir = Path.Combine(Qwen3Cuda.Tests.Text.TextTestSupport.TextTestsDir, "Data", "tiny-model");
        var target = Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer.FromModelDirectory(dir);
        Assert.DoesNotThrow(() => DraftCompatibility.CheckTokenizers(target, Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer.FromModelDirectory(dir)));
        // the same tokenizer with two ids' strings swapped: same size, other text for ids 0 and 1
        var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(dir, "tokenizer.json")))!;
        var vocab = json["model"]!["vocab"]!.AsObject();
        vocab["\u0100"] = 1;
        vocab["\u0101"] = 0;
        string other = Qwen3Cuda.Tests.Model.TestCheckpoints.NewDir("other-tokenizer");
        File.WriteAllText(Path.Combine(other, "tokenizer.json"), json.ToJsonString());
        File.Copy(Path.Combine(dir, "tokenizer_config.json"), Path.Combine(other, "tokenizer_config.json"));
        var e = Assert.Throws<SpeculativeDecodingException>(() =>
            DraftCompatibility.CheckTokenizers(target, Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer.FromModelDirectory(other), "--draft-model X"));
        Assert.That(e!.Message, Is.EqualTo("--draft-model X's tokenizer differs from the target's at token id 0: a draft must share the target's tokenizer"));
    }
}
