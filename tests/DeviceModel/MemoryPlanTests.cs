using System.CommandLine;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Tests.DeviceModel;

public class MemoryPlanTests
{
    /// <summary>Qwen3-30B-A3B's config.json, as published (docs/model-formats.md lists its facts).</summary>
    internal const string Qwen3_30B_A3B = """
        {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "hidden_size": 2048, "num_hidden_layers": 48,
         "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128, "num_experts": 128, "num_experts_per_tok": 8,
         "moe_intermediate_size": 768, "intermediate_size": 6144, "norm_topk_prob": true, "decoder_sparse_step": 1,
         "mlp_only_layers": [], "rope_theta": 1000000.0, "rms_norm_eps": 1e-06, "vocab_size": 151936,
         "max_position_embeddings": 40960, "tie_word_embeddings": false, "attention_bias": false, "use_sliding_window": false,
         "torch_dtype": "bfloat16", "bos_token_id": 151643, "eos_token_id": 151645}
        """;

    static string RealConfigDir()
    {
        string dir = Model.TestCheckpoints.NewDir("qwen3-30b-a3b-config");
        File.WriteAllText(Path.Combine(dir, "config.json"), Qwen3_30B_A3B);
        return dir;   // config.json ONLY: a plan that tried to read a weight would fail
    }

    static (int Exit, string Out, string Err) Cli(params string[] args) => Support.CliRunner.Run(args);

    [Test]
    public void RealConfig_Plan_MatchesTheArchitectureFigures()
    {
        var c = ModelConfig.Parse(Qwen3_30B_A3B);
        var plan = MemoryPlan.Compute(c, new DeviceModelOptions { ContextLength = 32768, GpuMemoryBytes = 80L << 30 }, 0);
        // Weights: 30.5 B bf16 parameters = 56.9 GiB (docs/architecture.md, memory plan); 256-byte alignment adds < 1 MiB.
        Assert.That(plan.Weights.ParameterCount, Is.EqualTo(30_532_122_624L));
        Assert.That(plan.Weights.TotalBytes - 2 * plan.Weights.ParameterCount, Is.InRange(0, 1L << 20));
        Assert.That(ByteSize.Format(plan.Weights.TotalBytes), Is.EqualTo("56.9 GiB"));
        Assert.That(plan.KvBytesPerToken, Is.EqualTo(96 * 1024), "48 layers x K,V x 4 heads x 128 x 2 bytes");
        Assert.That(plan.KvBytes, Is.EqualTo(96L * 1024 * (32768 + 16)), "32K tokens + the scratch page = 3 GiB");
        Assert.That(plan.Workspace.TotalBytes, Is.InRange(16L << 20, 1L << 30), "a 512-token chunk needs tens of MiB");
        Assert.That(plan.Fits, Is.True);
    }

    /// <summary>
    /// The KV cache is one pool sized from the budget (docs/memory.md): with 64 sequences on 80 GiB every sequence keeps the
    /// model's full 40960 tokens (the old plan cut each to 80 GiB / 64), and the pool takes what the weights and the
    /// workspace leave, to within one page.
    /// </summary>
    [Test]
    public void RealConfig_64Sequences_KeepTheFullContext_AndThePoolFillsTheBudget()
    {
        var c = ModelConfig.Parse(Qwen3_30B_A3B);
        var options = new DeviceModelOptions { MaxSequences = 64, MaxBatch = 64, PrefillChunkTokens = 2048, GpuMemoryBytes = 80L << 30 };
        var plan = MemoryPlan.Compute(c, options, 0);
        TestContext.Out.Write(plan.Describe());
        Assert.That(plan.ContextLength, Is.EqualTo(40960), "max_position_embeddings, whatever the sequence count");
        Assert.That(plan.PagesPerSequence, Is.EqualTo(40960 / 16));
        Assert.That(plan.KvBytesPerPage, Is.EqualTo(16 * 96 * 1024));
        Assert.That(plan.Fits, Is.True);
        Assert.That(plan.FreeBytes, Is.InRange(0, plan.KvBytesPerPage - 1), "the pool takes every whole page the budget leaves");
        Assert.That(plan.PoolIsCapped, Is.False);
        // 80 GiB - 56.9 GiB of weights - the workspace leaves ~22.6 GiB: ~6 sequences of 3.75 GiB at full context.
        Assert.That(plan.MaxConcurrencyAtFullContext, Is.EqualTo((double)plan.PoolTokens / 40960));
        Assert.That(plan.MaxConcurrencyAtFullContext, Is.InRange(5.5, 6.5));
        var one = MemoryPlan.Compute(c, options with { MaxSequences = 1 }, 0);
        Assert.That(one.ContextLength, Is.EqualTo(40960));
        Assert.That(one.KvPages, Is.EqualTo(2560 + 1), "one sequence never uses more than its full context + the scratch page");
        Assert.That(one.PoolIsCapped, Is.True);
    }

    /// <summary>The pool never exceeds what MaxSequences sequences at full context could use, however large the budget.</summary>
    [Test]
    public void Pool_IsCappedAtEverySequenceAtFullContext()
    {
        var c = ModelConfig.Parse(Qwen3_30B_A3B);
        var plan = MemoryPlan.Compute(c, new DeviceModelOptions { MaxSequences = 3, ContextLength = 4096, GpuMemoryBytes = 1L << 40 }, 0);
        Assert.That(plan.KvPages, Is.EqualTo(3 * 256 + 1));
        Assert.That(plan.PoolIsCapped, Is.True);
        Assert.That(plan.MaxConcurrencyAtFullContext, Is.EqualTo(3.0));
    }

    /// <summary>
    /// vLLM's rule: the plan fails only when the pool cannot hold ONE sequence at full context. A budget of exactly weights +
    /// workspace + one full sequence + the scratch page fits (with any number of sequences); one byte less does not, and the
    /// message names the context, where it came from, the options that change it and the numbers.
    /// </summary>
    [Test]
    public void DoesNotFit_OnlyWhenOneFullContextSequenceDoesNot()
    {
        var c = ModelConfig.Parse(Qwen3_30B_A3B);
        var o = new DeviceModelOptions { MaxSequences = 64, MaxBatch = 64, PrefillChunkTokens = 2048 };
        var probe = MemoryPlan.Compute(c, o, 1L << 40);
        long exact = probe.Weights.TotalBytes + probe.Workspace.TotalBytes + (2560 + 1) * probe.KvBytesPerPage;
        var fits = MemoryPlan.Compute(c, o, exact);
        Assert.That((fits.Fits, fits.KvPages, fits.ContextLength), Is.EqualTo((true, 2561, 40960)));
        Assert.That(fits.MaxConcurrencyAtFullContext, Is.EqualTo(1.0));
        Assert.That(fits.ThrowIfDoesNotFit, Throws.Nothing);
        var tight = MemoryPlan.Compute(c, o with { GpuMemoryUtilization = 0.9 }, (exact - 1 + (8L << 30), 80L << 30));   // 80 GiB device, 8 GiB reserve
        Assert.That(tight.Fits, Is.False);
        Assert.That(tight.FreeBytes, Is.EqualTo(-1).Within(1), "one byte (rounding of the reserve) short");
        var e = Assert.Throws<ModelDoesNotFitException>(tight.ThrowIfDoesNotFit);
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.Contain("KV 3.8 GiB for one sequence of 40960 tokens"));
        Assert.That(e.Message, Does.Contain("at least one sequence of the full context (max_position_embeddings 40960)"));
        Assert.That(e.Message, Does.Contain("--ctx-size (--max-model-len)").And.Contain("a higher --gpu-memory-utilization (now 0.9)"));
        Assert.That(e.Message, Does.Match(@"The largest context that fits is 409\d\d tokens \(--ctx-size 409\d\d\)"));
    }

    /// <summary>The block tables ([step rows, pages per sequence] int32) grow with the full context: at the serving defaults
    /// (2048 rows, 40960 tokens in pages of 16) 20 MiB, a small part of the workspace.</summary>
    [Test]
    public void BlockTables_AtServingDefaults_StaySmall()
    {
        var c = ModelConfig.Parse(Qwen3_30B_A3B);
        var plan = MemoryPlan.Compute(c, new DeviceModelOptions { MaxSequences = 64, MaxBatch = 64, PrefillChunkTokens = 2048, GpuMemoryBytes = 80L << 30 }, 0);
        Assert.That(plan.Workspace.BlockTableBytes, Is.EqualTo(2048L * 2560 * 4));
        Assert.That(plan.Workspace.Io.QStart - plan.Workspace.Io.BlockTables, Is.GreaterThanOrEqualTo(plan.Workspace.BlockTableBytes), "the arena holds them");
        Assert.That(plan.Workspace.TotalBytes, Is.LessThan(2L << 30));
    }

    [Test]
    public void InfoModel_MaxNumSeqs_ShowsThePoolAndTheConcurrency()
    {
        var (exit, stdout, err) = Cli("info", "--model", RealConfigDir(), "--gpu-memory", "80GiB", "--max-num-seqs", "64", "--max-model-len", "32768");
        TestContext.Out.WriteLine(stdout);
        Assert.That(exit, Is.EqualTo(0), err);
        Assert.That(stdout, Does.Match(@"KV cache +2\d\.\d GiB +\(one pool of \d+ pages of 16 = \d+ tokens \+ a scratch page\)"));
        Assert.That(stdout, Does.Match(@"context +32768 +tokens per sequence \(--ctx-size\), up to 64 sequence\(s\)"));
        Assert.That(stdout, Does.Match(@"max concurrency +7\.\d\dx +\(at 32768 tokens per sequence"));
    }

    [Test]
    public void InfoModel_RealConfig_PrintsThePlanFor80GiB_WithoutWeights()
    {
        var (exit, stdout, err) = Cli("info", "--model", RealConfigDir(), "--gpu-memory", "80GiB");
        TestContext.Out.WriteLine(stdout);
        Assert.That(exit, Is.EqualTo(0), err);
        Assert.That(stdout, Does.Contain("weights").And.Contain("56.9 GiB"));
        Assert.That(stdout, Does.Contain("KV per token").And.Contain("96.0 KiB"));
        Assert.That(stdout, Does.Contain("40960 tokens"), "without --ctx-size: max_position_embeddings when it fits");
        Assert.That(stdout, Does.Contain("workspace").And.Contain("free"));
    }

    [Test]
    public void InfoModel_TooSmall_SaysHowMuchIsMissing()
    {
        var (exit, stdout, err) = Cli("info", "--model", RealConfigDir(), "--gpu-memory", "40GiB", "--ctx-size", "32768");
        Assert.That(exit, Is.EqualTo(ExitCodes.OutOfMemory));
        Assert.That(err, Does.Match(@"error: model needs 59\.\d GiB \(weights 56\.9 GiB \+ KV 3\.0 GiB .*\) but --gpu-memory is 40\.0 GiB: 19\.\d GiB missing"));
        Assert.That(err, Does.Contain("No context fits: the bf16 weights alone are 56.9 GiB"));
        Assert.That(err, Does.Match(@"FP8 2\d\.\d GiB of weights \(fits with up to 40960 tokens of context\)"));
        Assert.That(err, Does.Match(@"GPTQ-Int4 1\d\.\d GiB of weights \(fits with up to 40960 tokens of context\)"));
        Assert.That(stdout, Does.Contain("MISSING"));
    }

    [Test]
    public void InfoModel_BadArguments_AreClearErrors()
    {
        var (exit, _, err) = Cli("info", "--model", RealConfigDir(), "--gpu-memory", "lots");
        Assert.That((exit, err), Is.EqualTo((ExitCodes.Usage, "error: --gpu-memory 'lots': expected a number with an optional unit, e.g. 80GiB (see qwen3cuda info --help)\n")));
        (exit, _, err) = Cli("info", "--model", "/nonexistent/model");
        Assert.That(exit, Is.EqualTo(1));
        Assert.That(err, Does.Contain("/nonexistent/model"));
    }

    /// <summary>Every tensor the checkpoint holds is read into the plan exactly once, and the plan reads nothing else.</summary>
    [TestCase(SyntheticPreset.Tiny, false, false)]
    [TestCase(SyntheticPreset.Small, false, false)]
    [TestCase(SyntheticPreset.RealShapeSlice, false, false)]
    [TestCase(SyntheticPreset.Tiny, true, false)]   // one dense layer (mlp_only_layers)
    [TestCase(SyntheticPreset.Tiny, false, true)]   // tied embeddings: no lm_head.weight
    public void EveryCheckpointTensor_IsInThePlan(SyntheticPreset preset, bool denseLayer, bool tied)
    {
        var c = SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = preset, MlpOnlyLayers = denseLayer ? [1] : null, TieWordEmbeddings = tied });
        var layout = new WeightLayout(c);
        var expected = SyntheticCheckpoint.TensorPlan(c).ToDictionary(t => t.Name, t => t.ByteLength);
        var read = layout.Tensors.SelectMany(t => t.Sources).ToList();
        var missing = expected.Keys.Except(read.Select(s => s.CheckpointName)).ToList();
        Assert.That(missing, Is.Empty, "checkpoint tensors missing from the plan");
        Assert.That(read.Select(s => s.CheckpointName), Is.Unique);
        Assert.That(read.Select(s => s.CheckpointName), Is.SubsetOf(expected.Keys));
        foreach (var s in read) Assert.That(s.Bytes, Is.EqualTo(expected[s.CheckpointName]), s.CheckpointName);
        foreach (var t in layout.Tensors)
        {
            Assert.That(t.Offset % 256, Is.Zero, $"{t.Name} alignment");
            Assert.That(t.Sources.Sum(s => s.Bytes), Is.LessThanOrEqualTo(t.Bytes), t.Name);
            foreach (var s in t.Sources) Assert.That(s.DeviceOffset + s.Bytes, Is.LessThanOrEqualTo(t.Bytes), $"{t.Name} <- {s.CheckpointName}");
        }
        var spans = layout.Tensors.OrderBy(t => t.Offset).ToList();
        for (int i = 1; i < spans.Count; i++) Assert.That(spans[i].Offset, Is.GreaterThanOrEqualTo(spans[i - 1].Offset + spans[i - 1].Bytes), "tensors overlap");
    }

    [Test]
    public void WrittenCheckpoint_TensorNames_AreAllInThePlan()
    {
        string dir = DeviceCheckpoints.Tiny();
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        var layout = new WeightLayout(ModelConfig.Load(dir), ckpt.Contains("lm_head.weight"));
        Assert.That(ckpt.TensorNames.Except(layout.SourceNames), Is.Empty);
    }

    [TestCase("80GiB", 80L << 30)]
    [TestCase("40 GB", 40L << 30)]
    [TestCase("512MiB", 512L << 20)]
    [TestCase("1.5G", 3L << 29)]
    [TestCase("4096", 4096L)]
    public void ByteSize_Parses(string text, long bytes) => Assert.That(ByteSize.Parse(text), Is.EqualTo(bytes));

    [Test]
    public void KvCache_PagesAreReservedReleasedAndMapped()
    {
        using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice();
        using var kv = new PagedKvCache(device, layers: 2, numKvHeads: 2, headDim: 64, pageSize: 4, pages: 5, maxSequences: 2, maxPagesPerSequence: 3);
        kv.Table.Reserve(0, 6);                          // 2 pages
        Assert.That(kv.Table.BlockTable(0), Has.Count.EqualTo(2).And.Not.Contains(0), "page 0 is the scratch page");
        Assert.That(kv.Table.Slot(0, 5), Is.EqualTo(kv.Table.BlockTable(0)[1] * 4 + 1));
        kv.Table.Advance(0, 6);
        kv.Table.Reserve(1, 8);                          // 2 more pages: all 4 usable pages taken
        Assert.That(() => kv.Table.Reserve(0, 3), Throws.InstanceOf<KvCacheFullException>().With.Message.Contains("KV cache full"));
        Assert.That(() => kv.Table.Reserve(1, 13), Throws.ArgumentException.With.Message.Contains("3 pages"));
        kv.Table.Reset(1);
        Assert.That(kv.Table.FreePages, Is.EqualTo(2));
        Assert.That((long)(kv.V(1).Address - kv.K(0).Address), Is.EqualTo(3 * kv.PoolBytes));
    }
}
