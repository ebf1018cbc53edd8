using Qwen3Cuda.Cli;
using Qwen3Cuda.Cli.Commands;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// The prefill chunk chosen from the memory budget (PrefillChunkSizing, docs/memory.md): the largest of 2048, 1024, 512
/// whose workspace fits next to the weights and the KV cache the smallest chunk leaves room for; an explicit chunk is kept;
/// --max-num-batched-tokens / --prefill-chunk on profile and the loader are checked with errors that name the option.
/// </summary>
[NonParallelizable]
public class PrefillChunkSizingTests
{
    /// <summary>Qwen3-30B-A3B's config.json.</summary>
    const string Qwen3_30B_A3B = MemoryPlanTests.Qwen3_30B_A3B;

    static readonly ModelConfig Config = ModelConfig.Parse(Qwen3_30B_A3B);
    const int Sms = 132;

    static DeviceModelOptions Auto(int? context, long budget) => new()
    {
        ContextLength = context, GpuMemoryBytes = budget, MaxBatch = 8, PrefillChunkTokens = PrefillChunkSizing.DefaultMaxChunkTokens, AutoPrefillChunk = true,
    };

    static long TotalBytes(int chunk, int context) =>
        MemoryPlan.Compute(Config, new DeviceModelOptions { ContextLength = context, MaxBatch = 8, PrefillChunkTokens = chunk }, 1L << 40, Sms).TotalBytes;

    static int Chosen(DeviceModelOptions o) => PrefillChunkSizing.Choose(Config, o, (o.GpuMemoryBytes!.Value, o.GpuMemoryBytes.Value), Sms, false).PrefillChunkTokens;

    [Test]
    public void RoomyBudget_Takes2048()
    {
        Assert.That(TotalBytes(2048, 32768), Is.GreaterThan(TotalBytes(512, 32768)), "a larger chunk needs a larger workspace");
        Assert.That(Chosen(Auto(32768, 80L << 30)), Is.EqualTo(2048));
    }

    /// <summary>Budgets between the plans' totals: the largest chunk whose plan fits, exactly at the byte.</summary>
    [Test]
    public void TightBudget_HalvesTheChunk_UntilItFits()
    {
        long t512 = TotalBytes(512, 32768), t1024 = TotalBytes(1024, 32768), t2048 = TotalBytes(2048, 32768);
        Assert.That(Chosen(Auto(32768, t2048)), Is.EqualTo(2048));
        Assert.That(Chosen(Auto(32768, t2048 - 1)), Is.EqualTo(1024));
        Assert.That(Chosen(Auto(32768, t1024)), Is.EqualTo(1024));
        Assert.That(Chosen(Auto(32768, t1024 - 1)), Is.EqualTo(512));
        Assert.That(Chosen(Auto(32768, t512 - 1)), Is.EqualTo(512), "nothing fits: the smallest, and the plan says what is missing");
        Assert.That(MemoryPlan.Compute(Config, Auto(32768, t512 - 1) with { PrefillChunkTokens = 512 }, 0, Sms).Fits, Is.False);
    }

    /// <summary>Without --ctx-size the context fills the memory: a larger chunk is taken only when it costs no context.</summary>
    [Test]
    public void AutoContext_LargerChunkNeverShortensTheContext()
    {
        Assert.That(Chosen(Auto(null, 80L << 30)), Is.EqualTo(2048), "80 GiB holds the full 40960-token context with any chunk");
        long budget = TotalBytes(512, 20000);   // room for about 20000 tokens with 512-token chunks: every byte of a larger workspace is context lost
        var smallest = MemoryPlan.Compute(Config, Auto(null, budget) with { PrefillChunkTokens = 512 }, 0, Sms);
        var chosen = PrefillChunkSizing.Choose(Config, Auto(null, budget), (budget, budget), Sms, false);
        Assert.That(chosen.PrefillChunkTokens, Is.EqualTo(512));
        Assert.That(MemoryPlan.Compute(Config, chosen, 0, Sms).ContextLength, Is.EqualTo(smallest.ContextLength));
    }

    [Test]
    public void ExplicitChunk_IsKept_AndTheFloorIsTheDecodeBatchAndOutputRows()
    {
        var fixedChunk = Auto(32768, 1L << 30) with { AutoPrefillChunk = false };
        Assert.That(Chosen(fixedChunk), Is.EqualTo(2048), "not automatic: kept even where it does not fit");
        var wide = Auto(32768, TotalBytes(512, 32768)) with { MaxBatch = 8, MaxOutputRows = 700 };
        Assert.That(Chosen(wide), Is.EqualTo(700), "never below the step's 700 output rows (that does not fit either: the plan reports it)");
    }

    [Test]
    public void Profile_DefaultChunk_IsThePrompt_AndAnExplicitOneSplitsIt()
    {
        var r = ProfileCommand.Measure(DeviceCheckpoints.Tiny(), BackendKind.Emulator, tokens: 6);
        Assert.That(r.Plan.Options.PrefillChunkTokens, Is.EqualTo(6), "a prompt under 2048 tokens is one chunk");
        var split = ProfileCommand.Measure(DeviceCheckpoints.Tiny(), BackendKind.Emulator, tokens: 6, prefillChunk: 4);
        Assert.That(split.Plan.Options.PrefillChunkTokens, Is.EqualTo(4));
        Assert.That(split.Prefill.Launches, Is.GreaterThan(r.Prefill.Launches), "two chunks launch every layer twice");
    }

    [Test]
    public void Cli_PrefillChunk_BadValues_AreOneLineErrors()
    {
        string tiny = DeviceCheckpoints.Tiny();
        var zero = Support.CliRunner.Run("profile", "-m", tiny, "--max-num-batched-tokens", "0");
        Assert.That(zero.Exit, Is.EqualTo(ExitCodes.Usage));
        Assert.That(zero.Err, Does.Contain("--max-num-batched-tokens"));
        var huge = Support.CliRunner.Run("profile", "-m", tiny, "--prefill-chunk", "9000");
        Assert.That(huge.Exit, Is.EqualTo(ExitCodes.Usage));
        Assert.That(huge.Err, Does.Contain("--prefill-chunk").Or.Contain("--max-num-batched-tokens"));
        var scaled = Support.CliRunner.Run("profile", "-m", tiny, "-p", "8", "--prefill-chunk", "4", "--predict", "h100", "--scale-layers", "4");
        Assert.That(scaled.Exit, Is.EqualTo(ExitCodes.Usage));
        Assert.That(scaled.Err, Does.Contain("--scale-layers predicts a prefill of one chunk: -p 8 runs in chunks of 4"));
        foreach (var r in new[] { zero, huge, scaled })
            Assert.That(r.Err.Trim().Split('\n'), Has.Length.EqualTo(1), r.Err);
    }

    [Test]
    public void Loader_StepTokensBeyondTheDeviceLimit_NamesTheOption()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            ModelLoader.Open(DeviceCheckpoints.Tiny(), BackendKind.Emulator, new ModelLoadOptions { MaxStepTokens = 9000 }));
        Assert.That(e!.Message, Does.StartWith("--max-num-batched-tokens 9000: a device step holds 1 to 8192 token rows"));
    }

    /// <summary>`info` plans the chunk a GPU load would take: 2048 on 80 GiB, 512 where only that fits.</summary>
    [Test]
    public void Info_ShowsTheChosenChunk()
    {
        string dir = Model.TestCheckpoints.NewDir("qwen3-30b-a3b-config-chunk");
        File.WriteAllText(Path.Combine(dir, "config.json"), Qwen3_30B_A3B);
        var roomy = Support.CliRunner.Run("info", "--model", dir, "--gpu-memory", "80GiB", "--ctx-size", "32768");
        Assert.That(roomy.Exit, Is.EqualTo(0), roomy.Err);
        Assert.That(roomy.Out, Does.Contain("(prefill chunk 2048 tokens"));
        // one byte short of the 1024-row plan with info's own options (one sequence: decode batch 1, one output row)
        long tight = MemoryPlan.Compute(Config, new DeviceModelOptions { ContextLength = 32768, MaxBatch = 1, MaxOutputRows = 1, PrefillChunkTokens = 1024 }, 1L << 40, Sms).TotalBytes - 1;
        var small = Support.CliRunner.Run("info", "--model", dir, "--gpu-memory", tight.ToString(System.Globalization.CultureInfo.InvariantCulture), "--ctx-size", "32768");
        Assert.That(small.Exit, Is.EqualTo(0), small.Err);
        Assert.That(small.Out, Does.Contain("(prefill chunk 512 tokens"));
        TestContext.Out.WriteLine($"workspace 512 rows: {TotalBytes(512, 32768) - TotalBytes(1, 32768)} B over 8 rows; 2048 rows: {TotalBytes(2048, 32768) - TotalBytes(1, 32768)} B");
    }
}
