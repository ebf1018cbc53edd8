using System.CommandLine;
using System.Text.Json;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Tests.Model;

public class LogitsCommandTests
{
    static (int Exit, string Out, string Err) Cli(params string[] args) => Support.CliRunner.Run(args);

    [Test]
    public void WritesFloat32LogitsOfEveryPosition()
    {
        string model = TestCheckpoints.Tiny();
        string file = Path.Combine(TestCheckpoints.NewDir("logits"), "l.bin");
        var (exit, _, err) = Cli("logits", "--model", model, "--tokens", "1,2,3", "--out", file);
        Assert.That(exit, Is.EqualTo(0), err);
        var bytes = File.ReadAllBytes(file);
        Assert.That(bytes, Has.Length.EqualTo(3 * 512 * 4));
        var fromFile = new float[3 * 512];
        Buffer.BlockCopy(bytes, 0, fromFile, 0, bytes.Length);
        using var m = ReferenceModel.Load(model);
        Assert.That(fromFile, Is.EqualTo(m.ForwardAllLogits(0, new[] { 1, 2, 3 })), "same reference, same math: exact");
    }

    [Test]
    public void PrintsTopKAsJson()
    {
        var (exit, stdout, err) = Cli("logits", "--model", TestCheckpoints.Tiny(), "--tokens", "4, 5", "--top", "3", "--json");
        Assert.That(exit, Is.EqualTo(0), err);
        using var doc = JsonDocument.Parse(stdout);
        Assert.That(doc.RootElement.GetArrayLength(), Is.EqualTo(2));
        var second = doc.RootElement[1];
        Assert.That(second.GetProperty("token").GetInt32(), Is.EqualTo(5));
        var top = second.GetProperty("top").EnumerateArray().Select(e => e.GetProperty("logit").GetSingle()).ToArray();
        Assert.That(top, Has.Length.EqualTo(3));
        Assert.That(top, Is.Ordered.Descending);
    }

    [TestCase("--device", "tpu", "--device: 'tpu' is not one of cpu, emulator, cuda, auto")]   // (the emulator runs the tiny preset: tests/DeviceModel/ProfileTests)
    [TestCase("--tokens", "1,x", "--tokens: 'x' is not a non-negative integer token id")]
    [TestCase("--tokens", "1,600", "--tokens: token id 600 is outside the vocabulary (0..511)")]
    [TestCase("--top", "0", "--top: 0 is out of range (at least 1)")]
    public void BadArgumentsGiveClearErrors(string option, string value, string expected)
    {
        var args = new List<string> { "logits", "--model", TestCheckpoints.Tiny(), "--tokens", "1,2" };
        int i = args.IndexOf(option);
        if (i >= 0) args[i + 1] = value; else args.AddRange(new[] { option, value });
        var (exit, _, err) = Cli(args.ToArray());
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage));
        Assert.That(err, Does.Contain(expected));
        Assert.That(err, Does.Not.Contain("   at "), "no stack trace");
        Assert.That(err, Does.Not.Contain("(Parameter '"), "no .NET parameter suffix");
    }

    [Test]
    public void MissingModelDirectoryIsNamed()
    {
        string dir = Path.Combine(TestCheckpoints.Root, "does-not-exist");
        var (exit, _, err) = Cli("logits", "--model", dir, "--tokens", "1");
        Assert.That(exit, Is.EqualTo(ExitCodes.Error));
        Assert.That(err, Does.Contain($"error: --model: folder '{dir}' does not exist"));
    }

    [Test]
    public void ConvertSynthWritesALoadableCheckpoint()
    {
        string dir = TestCheckpoints.NewDir("convert");
        var output = new StringWriter();
        int exit = Qwen3Cuda.ConvertTool.Program.Run(new[] { "synth", "--preset", "tiny", "--seed", "7", "--out", dir, "--layers", "1", "--mlp-only-layers", "0" }, output);
        Assert.That(exit, Is.EqualTo(0));
        Assert.That(output.ToString(), Does.Contain("tokenizer: none"));
        using var m = ReferenceModel.Load(dir);
        Assert.That(m.Config.NumHiddenLayers, Is.EqualTo(1));
        Assert.That(m.Config.IsMoeLayer(0), Is.False);
        Assert.That(Assert.Throws<ArgumentException>(() => Qwen3Cuda.ConvertTool.Program.Run(new[] { "synth", "--preset", "huge", "--out", dir }, output))!.Message,
            Does.Contain("--preset 'huge' is not one of tiny, small, real-shape-slice"));
        Assert.That(SyntheticCheckpoint.TryParsePreset("real-shape-slice", out var p) && p == SyntheticPreset.RealShapeSlice, Is.True);
    }
}
