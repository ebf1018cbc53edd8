using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Tests.Model;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>`qwen3cuda-convert synth` through its Main: --help, the demo preset (real vocabulary and tokenizer), --tokenizer.</summary>
[NonParallelizable]
public class ConvertSynthTests
{
    static (int Exit, string Out, string Err) Convert(params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try { return (Qwen3Cuda.ConvertTool.Program.Main(args), stdout.ToString(), stderr.ToString()); }
        finally { Console.SetOut(o); Console.SetError(e); }
    }

    [Test]
    public void SynthHelpDescribesEveryOption()
    {
        var (exit, output, err) = Convert("synth", "--help");
        Assert.That(exit, Is.Zero, err);
        foreach (var option in new[] { "--preset", "--out", "--seed", "--layers", "--mlp-only-layers", "--dense", "--tied", "--max-shard-bytes", "--tokenizer", "demo", "qwen3-0.6b" })
            Assert.That(output, Does.Contain(option));
    }

    [Test]
    public void DenseTiedOptions_WriteADenseModelWithoutLmHead()
    {
        string dir = TestCheckpoints.NewDir("synth-dense-tied");
        var (exit, _, err) = Convert("synth", "--preset", "tiny", "--dense", "--tied", "--layers", "1", "--out", dir);
        Assert.That(exit, Is.Zero, err);
        var c = ModelConfig.Load(dir);
        Assert.That((c.ModelType, c.TieWordEmbeddings, c.NumExperts, c.NumHiddenLayers), Is.EqualTo(("qwen3", true, 0, 1)));
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        Assert.That(ckpt.Contains("lm_head.weight"), Is.False);
        Assert.That(ckpt.Contains("model.layers.0.mlp.gate_proj.weight"), Is.True);
        Assert.That(SyntheticCheckpoint.TryParsePreset("qwen3-0.6b", out var p) && p == SyntheticPreset.Qwen3_0_6B, Is.True);
    }

    [Test]
    public void DemoPresetHasTheRealVocabularyAndTokenizer()
    {
        string tokenizerDir = TextTestSupport.RequireQwenTokenizerDir();
        string dir = TestCheckpoints.NewDir("synth-demo");
        var (exit, output, err) = Convert("synth", "--preset", "demo", "--seed", "3", "--out", dir, "--tokenizer", tokenizerDir);
        Assert.That(exit, Is.Zero, err);
        Assert.That(output, Does.Contain("tokenizer: the real Qwen3 tokenizer"));
        var config = ModelConfig.Load(dir);
        Assert.That(config.VocabSize, Is.EqualTo(SyntheticCheckpoint.RealVocabSize));
        Assert.That(config.IsMoeModel, Is.True);
        var tokenizer = Qwen3Tokenizer.FromModelDirectory(dir);
        Assert.That(tokenizer.Decode(tokenizer.Encode("Hello, world")), Is.EqualTo("Hello, world"));
        Assert.That(tokenizer.TokenToId("<|im_end|>"), Is.EqualTo(151645));
        Assert.That(File.Exists(Path.Combine(dir, "generation_config.json")), Is.True);
        Assert.That(File.ReadAllText(Path.Combine(dir, "README.md")), Does.Contain("not a trained model"));
    }

    [TestCase(new[] { "synth", "--preset", "tiny", "--out", "{dir}", "--tokenizer", "{tok}" }, "vocab_size 512")]
    [TestCase(new[] { "synth", "--preset", "demo", "--out", "{dir}", "--tokenizer", "/nonexistent/tok" }, "--tokenizer: folder '/nonexistent/tok' does not exist")]
    [TestCase(new[] { "synth", "--preset", "huge", "--out", "{dir}" }, "--preset 'huge' is not one of tiny, small, real-shape-slice, demo")]
    [TestCase(new[] { "synth", "--preset", "tiny" }, "--out is required")]
    public void BadInputIsOneLineAndExitCodeTwo(string[] args, string message)
    {
        string tokenizerDir = TextTestSupport.RequireQwenTokenizerDir();
        string dir = TestCheckpoints.NewDir("synth-bad");
        var (exit, _, err) = Convert([.. args.Select(a => a.Replace("{dir}", dir).Replace("{tok}", tokenizerDir))]);
        Assert.That(exit, Is.EqualTo(2));
        Assert.That(err, Does.StartWith("error: ").And.Contain(message));
        Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1));
    }

    [Test]
    public void DemoWithoutAnyTokenizerSaysWhereToGetOne()
    {
        string dir = TestCheckpoints.NewDir("synth-notok");
        string? old = Environment.GetEnvironmentVariable(SyntheticCheckpoint.TokenizerEnvironmentVariable);
        Environment.SetEnvironmentVariable(SyntheticCheckpoint.TokenizerEnvironmentVariable, dir);   // an empty folder
        try
        {
            var (exit, _, err) = Convert("synth", "--preset", "demo", "--out", dir);
            Assert.That(exit, Is.EqualTo(1));
            Assert.That(err, Does.StartWith($"error: the demo model needs the real Qwen3 tokenizer").And.Contain(SyntheticCheckpoint.TokenizerEnvironmentVariable));
        }
        finally { Environment.SetEnvironmentVariable(SyntheticCheckpoint.TokenizerEnvironmentVariable, old); }
    }
}
