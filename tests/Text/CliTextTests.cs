using System.CommandLine;
using System.Text.Json;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Tests.Text;

/// <summary>
/// The text verbs end to end on a synthetic tiny model (vocab 512, random weights) that carries the tiny
/// test tokenizer (ids &lt; 321) and the real Qwen3 chat template.
/// </summary>
public class CliTextTests
{
    string _dir = "";

    [OneTimeSetUp]
    public void WriteModel()
    {
        _dir = Directory.CreateTempSubdirectory("q3text-cli").FullName;
        SyntheticCheckpoint.Write(SyntheticPreset.Tiny, seed: 7, _dir);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
            File.Copy(Path.Combine(TextTestSupport.TextTestsDir, "Data", "tiny-model", f), Path.Combine(_dir, f), overwrite: true);
    }

    [OneTimeTearDown]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = Program.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    static int[] PrintedIds(string stderr)
    {
        var line = stderr.Split('\n').Single(l => l.StartsWith("token ids: ", StringComparison.Ordinal));
        return JsonSerializer.Deserialize<int[]>(line["token ids: ".Length..])!;
    }

    [Test]
    public void GenerateAtTemperatureZeroEqualsGreedyDecodingThroughTheReferenceModel()
    {
        var (code, _, err) = Run("generate", "--model", _dir, "--device", "cpu", "--prompt", "Hello world, the cat", "--temperature", "0",
            "--max-new-tokens", "12", "--print-token-ids");
        Assert.That(code, Is.Zero, err);
        var cliIds = PrintedIds(err);

        var tokenizer = Qwen3Tokenizer.FromModelDirectory(_dir);
        var eos = Qwen3Cuda.Model.Serving.Engine.DefaultEosTokenIds(tokenizer, _dir).ToHashSet();
        using var model = ReferenceModel.Load(_dir);
        var logits = new float[model.VocabSize];
        model.Forward(0, tokenizer.Encode("Hello world, the cat"), logits);
        var expected = new List<int>();
        for (int i = 0; i < 12; i++)
        {
            int t = Qwen3Cuda.Model.Sampling.Sampler.ArgMax(logits);
            expected.Add(t);
            if (eos.Contains(t)) break;
            model.Forward(0, [t], logits);
        }
        Assert.That(cliIds, Is.EqualTo(expected));
        Assert.That(err, Does.Contain("TTFT").And.Contain("tok/s").And.Contain($"prompt {tokenizer.Encode("Hello world, the cat").Length} tokens"));
    }

    [Test]
    public void SeededSamplingIsReproducible()
    {
        string[] args = ["generate", "--model", _dir, "--device", "cpu", "--prompt", "the dog", "--chat", "--temperature", "1.5", "--top-k", "0",
            "--top-p", "1", "--seed", "1234", "--max-new-tokens", "16", "--print-token-ids"];
        var a = Run(args);
        var b = Run(args);
        Assert.That(a.Code, Is.Zero, a.Err);
        Assert.That(PrintedIds(b.Err), Is.EqualTo(PrintedIds(a.Err)));
        Assert.That(b.Out, Is.EqualTo(a.Out));
    }

    [Test]
    public void ChatReplRunsTwoTurnsWithNoThinkAndExit()
    {
        var oldIn = Console.In;
        try
        {
            Console.SetIn(new StringReader("Hello\n/no_think\nthe cat\n/exit\nnever read\n"));
            var (code, output, err) = Run("chat", "--model", _dir, "--device", "cpu", "--temperature", "0", "--max-new-tokens", "6");
            Assert.That(code, Is.Zero, err);
            Assert.That(output, Does.Contain("[thinking off]"));
            // One stats line per answered turn.
            Assert.That(err.Split('\n').Count(l => l.StartsWith("prompt ", StringComparison.Ordinal)), Is.EqualTo(2), err);
        }
        finally { Console.SetIn(oldIn); }
    }

    [Test]
    public void TokenizeDetokenizeAndTemplateVerbs()
    {
        var textFile = Path.Combine(_dir, "text.txt");
        File.WriteAllText(textFile, "Hello world<|im_end|>\n");
        var (code, output, err) = Run("tokenize", "--model", _dir, "--text-file", textFile, "--ids-only");
        Assert.That(code, Is.Zero, err);
        var ids = JsonSerializer.Deserialize<int[]>(output)!;
        var tokenizer = Qwen3Tokenizer.FromModelDirectory(_dir);
        Assert.That(ids, Is.EqualTo(tokenizer.Encode("Hello world<|im_end|>\n")));
        var detok = Run("detokenize", "--model", _dir, "--ids", string.Join(",", ids));
        Assert.That(detok.Out, Is.EqualTo("Hello world<|im_end|>\n"));

        var messages = Path.Combine(_dir, "messages.json");
        File.WriteAllText(messages, "[{\"role\": \"user\", \"content\": \"hi\"}]");
        var t = Run("template", "--model", _dir, "--messages", messages, "--add-generation-prompt", "--enable-thinking", "false");
        Assert.That(t.Out, Is.EqualTo("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"));
    }

    [TestCase(new[] { "generate", "--prompt", "x", "--top-p", "1.5" }, "--top-p must be in (0, 1], got 1.5", ExitCodes.Usage)]
    [TestCase(new[] { "generate", "--prompt", "x", "--device", "cuda" }, "--device cuda is not available", ExitCodes.Unavailable)]
    [TestCase(new[] { "generate" }, "-p TEXT (--prompt) or -f FILE (--prompt-file)", ExitCodes.Usage)]
    [TestCase(new[] { "detokenize", "--ids", "1,x" }, "--ids: 'x' is not", ExitCodes.Usage)]
    [TestCase(new[] { "template", "--messages", "/nonexistent/m.json" }, "--messages: file '/nonexistent/m.json' does not exist", ExitCodes.Error)]
    public void BadInputGivesOneClearErrorLine(string[] args, string message, int exitCode)
    {
        var (code, _, err) = Run([.. args.Take(1), "--model", _dir, .. args.Skip(1)]);
        Assert.That(code, Is.EqualTo(exitCode));
        Assert.That(err, Does.StartWith("error: ").And.Contain(message));
        Assert.That(err, Does.Not.Contain("   at "), "no stack trace");
    }

    /// <summary>Without --device, generate picks a backend itself (a GPU when one opens, else the CPU reference) and says which.</summary>
    [Test]
    public void GenerateDefaultsToAutoAndSaysWhichBackend()
    {
        var (code, _, err) = Run("generate", "--model", _dir, "--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "2");
        Assert.That(code, Is.EqualTo(0), err);
        Assert.That(err, Does.Contain("--device auto: "));
        Assert.That(err.Split('\n').Count(l => l.Contains("--device auto: ")), Is.EqualTo(1), "one line saying which backend");
        var expected = Qwen3Cuda.Runtime.DeviceFactory.ChooseAuto(Qwen3Cuda.Runtime.BackendKind.Cpu);
        Assert.That(err, Does.Contain("--device auto: " + expected.Reason));
        if (expected.Backend == Qwen3Cuda.Runtime.BackendKind.Cpu)
            Assert.That(err, Does.Contain("running on the CPU reference").And.Contain("on the CPU reference in"), "no GPU: the CPU reference, not the 30-40x slower emulator");
    }

    [Test]
    public void PromptLongerThanContextIsAnErrorBeforeGeneration()
    {
        var (code, _, err) = Run("generate", "--model", _dir, "--prompt", "one two three four five six seven", "--context", "4");
        Assert.That(code, Is.EqualTo(ExitCodes.Error));
        Assert.That(err, Does.Contain("the model's context holds 4"));
    }
}
