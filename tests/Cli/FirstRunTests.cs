using Qwen3Cuda.Cli;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Tests.Model;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>
/// A first run on a fresh machine: `--model demo` (made once into the model cache, here a folder of the test run),
/// `--device auto` without a GPU, and Hugging Face repo ids found in a (fake) local Hugging Face cache.
/// </summary>
[NonParallelizable]
public class FirstRunTests
{
    string? _oldCache, _oldHubCache, _oldHfHome, _oldTokenizer;

    [OneTimeSetUp]
    public void SaveEnvironment()
    {
        _oldCache = Environment.GetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable);
        _oldHubCache = Environment.GetEnvironmentVariable("HF_HUB_CACHE");
        _oldHfHome = Environment.GetEnvironmentVariable("HF_HOME");
        _oldTokenizer = Environment.GetEnvironmentVariable(SyntheticCheckpoint.TokenizerEnvironmentVariable);
    }

    [TearDown]
    public void RestoreEnvironment()
    {
        Environment.SetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable, _oldCache);
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", _oldHubCache);
        Environment.SetEnvironmentVariable("HF_HOME", _oldHfHome);
        Environment.SetEnvironmentVariable(SyntheticCheckpoint.TokenizerEnvironmentVariable, _oldTokenizer);
    }

    [Test]
    public void Demo_GeneratesText_AndSaysItIsMeaningless()
    {
        string cache = CliModels.UseTestModelCache();
        var (exit, output, err) = CliRunner.Run("generate", "-m", "demo", "-p", "Hello", "--device", "cpu", "-n", "8", "--temperature", "0");
        Assert.That(exit, Is.EqualTo(ExitCodes.Ok), err);
        Assert.That(output.Trim(), Is.Not.Empty);
        Assert.That(err, Does.Contain("demo model").And.Contain("meaningless"));
        string dir = Path.Combine(cache, ModelLocator.DemoFolderName);
        var config = ModelConfig.Load(dir);
        Assert.That(config.VocabSize, Is.EqualTo(SyntheticCheckpoint.RealVocabSize), "the real Qwen3 vocabulary");
        Assert.That(File.Exists(Path.Combine(dir, "tokenizer.json")), Is.True);
        Assert.That(Directory.GetDirectories(cache), Is.EqualTo(new[] { dir }), "no temporary folder left behind");
    }

    [Test]
    public void Demo_ChatAnswersScriptedTurns()
    {
        CliModels.UseTestModelCache();
        var (exit, output, err) = CliRunner.RunWithInput("Hello\n/no_think\nWhat is 2+2?\n/exit\n", "chat", "-m", "demo", "--device", "cpu", "-n", "6", "--temperature", "0");
        Assert.That(exit, Is.EqualTo(ExitCodes.Ok), err);
        Assert.That(output, Does.Contain("[thinking off]"));
        Assert.That(err.Split('\n').Count(l => l.StartsWith("prompt ", StringComparison.Ordinal)), Is.EqualTo(2), err);
    }

    [Test]
    public void DemoVerb_MakesOnceThenSaysCached()
    {
        string cache = Path.Combine(TestCheckpoints.NewDir("demo-verb"), "models");
        CliModels.UseTestModelCache();
        Environment.SetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable, cache);
        var first = CliRunner.Run("demo");
        Assert.That(first.Exit, Is.EqualTo(ExitCodes.Ok), first.Err);
        Assert.That(first.Out.Trim(), Is.EqualTo(Path.Combine(cache, ModelLocator.DemoFolderName)));
        Assert.That(first.Err, Does.Contain("made the demo model"));
        var second = CliRunner.Run("demo");
        Assert.That(second.Err, Does.Contain("the demo model is cached"));
    }

    [Test]
    public void Demo_WithoutTheTokenizer_SaysWhereToGetIt()
    {
        string cache = Path.Combine(TestCheckpoints.NewDir("demo-notok"), "models");
        Environment.SetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable, cache);
        Environment.SetEnvironmentVariable(SyntheticCheckpoint.TokenizerEnvironmentVariable, TestCheckpoints.NewDir("empty"));
        var (exit, _, err) = CliRunner.Run("generate", "-m", "demo", "-p", "hi");
        Assert.That(exit, Is.EqualTo(ExitCodes.Error), err);
        Assert.That(err, Does.Contain("error: the demo model needs the real Qwen3 tokenizer").And.Contain(SyntheticCheckpoint.TokenizerEnvironmentVariable));
        Assert.That(Directory.Exists(Path.Combine(cache, ModelLocator.DemoFolderName)), Is.False, "no half-made demo");
    }

    /// <summary>profile on the emulator refuses prompts it would take hours over, before running anything.</summary>
    [Test]
    public void Profile_LongPromptOnTheEmulator_IsRefusedAtOnce()
    {
        CliModels.UseTestModelCache();
        var (exit, _, err) = CliRunner.Run("profile", "-m", "demo", "-p", "5000", "--device", "emulator");
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage), err);
        Assert.That(err, Does.Contain("error: --n-prompt 5000: the emulator profiles at most 4096 prompt tokens"));
    }

    /// <summary>Without a GPU, --device auto runs generation on the CPU reference (not the 30-40x slower emulator) and says so in one line.</summary>
    [Test]
    public void AutoWithoutAGpu_GeneratesOnTheCpuReference()
    {
        var choice = DeviceFactory.ChooseAuto(BackendKind.Cpu);
        if (choice.Backend == BackendKind.Cuda) Assert.Ignore("a GPU is present: auto picks it");
        var (exit, _, err) = CliRunner.Run("generate", "-m", CliModels.TinyText(), "-p", "the cat", "-n", "2", "--temperature", "0");
        Assert.That(exit, Is.EqualTo(ExitCodes.Ok), err);
        var lines = err.Split('\n').Where(l => l.StartsWith("--device auto: ", StringComparison.Ordinal)).ToList();
        Assert.That(lines, Has.Count.EqualTo(1));
        Assert.That(lines[0], Does.Contain("running on the CPU reference").And.Contain("--device emulator"));
        Assert.That(err, Does.Contain("on the CPU reference in"));
    }

    /// <summary>A fake Hugging Face cache: models--ORG--NAME/refs/main names a snapshot folder holding the tiny model.</summary>
    static (string Hub, string Snapshot) FakeHub(string org, string name, string commit = "0123456789abcdef0123456789abcdef01234567")
    {
        string hub = TestCheckpoints.NewDir("hf-hub");
        string repo = Path.Combine(hub, $"models--{org}--{name}");
        string snapshot = Path.Combine(repo, "snapshots", commit);
        Directory.CreateDirectory(snapshot);
        Directory.CreateDirectory(Path.Combine(repo, "refs"));
        File.WriteAllText(Path.Combine(repo, "refs", "main"), commit);
        foreach (var f in Directory.GetFiles(CliModels.TinyText())) File.Copy(f, Path.Combine(snapshot, Path.GetFileName(f)));
        return (hub, snapshot);
    }

    [Test]
    public void HuggingFaceRepoId_ResolvesInTheLocalCache()
    {
        var (hub, snapshot) = FakeHub("TestOrg", "Tiny-MoE");
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", hub);
        var (exit, output, err) = CliRunner.Run("tokenize", "-m", "TestOrg/Tiny-MoE", "--text", "the cat", "--ids-only");
        Assert.That(exit, Is.EqualTo(ExitCodes.Ok), err);
        Assert.That(output.Trim(), Does.StartWith("["));
        Assert.That(ModelLocator.Resolve("TestOrg/Tiny-MoE"), Is.EqualTo(snapshot));
        Assert.That(ModelLocator.Resolve("TestOrg/Tiny-MoE@0123456789abcdef0123456789abcdef01234567"), Is.EqualTo(snapshot), "@commit");

        // HF_HOME/hub when HF_HUB_CACHE is not set (huggingface_hub's rule).
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", null);
        string home = TestCheckpoints.NewDir("hf-home");
        Directory.Move(hub, Path.Combine(home, "hub"));
        Environment.SetEnvironmentVariable("HF_HOME", home);
        var info = CliRunner.Run("info", "-m", "TestOrg/Tiny-MoE");
        Assert.That(info.Exit, Is.EqualTo(ExitCodes.Ok), info.Err);
        Assert.That(info.Out, Does.Contain("Memory plan"));
    }

    [Test]
    public void HuggingFaceRepoId_NotCached_NamesThePathTried()
    {
        string hub = TestCheckpoints.NewDir("hf-empty");
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", hub);
        var (exit, _, err) = CliRunner.Run("generate", "-m", "Qwen/Qwen3-30B-A3B", "-p", "hi");
        Assert.That(exit, Is.EqualTo(ExitCodes.Error), err);
        Assert.That(err, Does.StartWith("error: --model Qwen/Qwen3-30B-A3B: no folder of that name here, and not in the Hugging Face cache: ")
            .And.Contain(Path.Combine(hub, "models--Qwen--Qwen3-30B-A3B")).And.Contain("huggingface-cli download Qwen/Qwen3-30B-A3B"));

        var (hub2, snapshot) = FakeHub("TestOrg", "Broken");
        File.Delete(Path.Combine(snapshot, "config.json"));
        Environment.SetEnvironmentVariable("HF_HUB_CACHE", hub2);
        (exit, _, err) = CliRunner.Run("info", "-m", "TestOrg/Broken");
        Assert.That(exit, Is.EqualTo(ExitCodes.Error), err);
        Assert.That(err, Does.Contain($"the cached snapshot '{snapshot}' has no config.json"));
    }
}
