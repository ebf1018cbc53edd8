using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Tests.Model;

/// <summary>
/// Whole-model behaviour of the CPU reference on synthetic tiny checkpoints. Prefill/decode and batched
/// comparisons are exact: every op computes each token row independently with the same fp32 reduction order
/// whatever the number of rows, and the MoE grouping only changes which rows run together, not the math.
/// </summary>
public class ReferenceModelTests
{
    static readonly int[] Prompt = { 5, 17, 300, 42, 42, 9, 511, 0, 128, 77, 3 };

    static float[] Last(ReferenceModel m, int seq, ReadOnlySpan<int> tokens)
    {
        var logits = new float[m.VocabSize];
        m.Forward(seq, tokens, logits);
        return logits;
    }

    [Test]
    public void DecodeAfterPrefillEqualsOnePrefill()
    {
        using var whole = ReferenceModel.Load(TestCheckpoints.Tiny());
        float[] all = whole.ForwardAllLogits(0, Prompt);

        using var stepwise = ReferenceModel.Load(TestCheckpoints.Tiny());
        var first = stepwise.ForwardAllLogits(0, Prompt.AsSpan(0, 4));
        Assert.That(first, Is.EqualTo(all.AsSpan(0, 4 * whole.VocabSize).ToArray()), "prefill of a prefix = prefix of the prefill (exact)");
        for (int t = 4; t < Prompt.Length; t++)
        {
            var logits = Last(stepwise, 0, Prompt.AsSpan(t, 1));
            Assert.That(logits, Is.EqualTo(all.AsSpan(t * whole.VocabSize, whole.VocabSize).ToArray()), $"decode step at position {t} (exact)");
        }
        Assert.That(stepwise.SequenceLength(0), Is.EqualTo(Prompt.Length));
        // Forward's last-token logits equal the last row of ForwardAllLogits.
        whole.ResetSequence(0);
        Assert.That(Last(whole, 0, Prompt), Is.EqualTo(all.AsSpan((Prompt.Length - 1) * whole.VocabSize).ToArray()));
    }

    [Test]
    public void SeveralSequencesEqualSeparateRuns()
    {
        int[] a = Prompt, b = { 1, 2, 3, 4, 5, 6, 7 }, c = { 400, 401 };
        using var single = ReferenceModel.Load(TestCheckpoints.Tiny());
        float[] Solo(int[] toks) { single.ResetSequence(0); return Last(single, 0, toks); }
        var (ea, eb, ec) = (Solo(a), Solo(b), Solo(c));

        using var multi = ReferenceModel.Load(TestCheckpoints.Tiny(), maxSequences: 3);
        // Interleave: prefill halves of a and b, all of c, then the rest of a and b one token at a time.
        multi.Forward(0, a.AsSpan(0, 5), new float[multi.VocabSize]);
        multi.Forward(1, b.AsSpan(0, 3), new float[multi.VocabSize]);
        var gc = Last(multi, 2, c);
        float[] ga = Array.Empty<float>(), gb = Array.Empty<float>();
        for (int t = 5; t < a.Length; t++) ga = Last(multi, 0, a.AsSpan(t, 1));
        for (int t = 3; t < b.Length; t++) gb = Last(multi, 1, b.AsSpan(t, 1));
        Assert.That(ga, Is.EqualTo(ea));
        Assert.That(gb, Is.EqualTo(eb));
        Assert.That(gc, Is.EqualTo(ec));
        Assert.That((multi.SequenceLength(0), multi.SequenceLength(1), multi.SequenceLength(2)), Is.EqualTo((a.Length, b.Length, c.Length)));
        multi.ResetSequence(1);
        Assert.That(multi.SequenceLength(1), Is.EqualTo(0));
    }

    [Test]
    public void LogitsAreNotDegenerateAndRoutingSpreads()
    {
        using var m = ReferenceModel.Load(TestCheckpoints.Tiny());
        var trace = new ReferenceTrace();
        m.Trace = trace;
        var tokens = Enumerable.Range(0, 48).Select(i => (i * 37 + 11) % 512).ToArray();
        var logits = m.ForwardAllLogits(0, tokens);
        Assert.That(logits.All(float.IsFinite), Is.True);
        double mean = logits.Average(), std = Math.Sqrt(logits.Average(v => (v - mean) * (v - mean)));
        Assert.That(std, Is.InRange(0.5, 10), "synthetic scales aim at logits of std ~2");
        var argmax = Enumerable.Range(0, tokens.Length).Select(t => Array.IndexOf(logits, logits.AsSpan(t * 512, 512).ToArray().Max(), t * 512) - t * 512).Distinct().Count();
        Assert.That(argmax, Is.GreaterThan(10), "top-1 differs across positions");
        for (int l = 0; l < 2; l++)
        {
            var used = trace.Experts[$"layers.{l}"].Distinct().Count();
            Assert.That(used, Is.GreaterThanOrEqualTo(6), $"layer {l} routes 48 tokens x top-2 over at least 6 of 8 experts");
            var w = trace.ExpertWeights[$"layers.{l}"];
            for (int t = 0; t < tokens.Length; t++)
                Assert.That(w[2 * t] + w[2 * t + 1], Is.EqualTo(1f).Within(1e-6f), "norm_topk_prob true: weights renormalised");
        }
        Assert.That(trace.Tensors.Keys, Does.Contain("layers.1.router_logits").And.Contain("final_norm").And.Contain("layers.0.q"));
        Assert.That(trace["logits"], Is.EqualTo(logits));
        var (keys, values) = m.KvCache(0, 1);
        Assert.That(keys.ToArray(), Is.EqualTo(trace["layers.1.k"]), "the cache holds K after norm and RoPE");
        Assert.That(values.ToArray(), Is.EqualTo(trace["layers.1.v"]));
    }

    [Test]
    public void DenseLayersAndDenseModelsRun()
    {
        string mixed = TestCheckpoints.Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7, MlpOnlyLayers = new[] { 0 } });
        using (var m = ReferenceModel.Load(mixed))
        {
            Assert.That(m.Weights.Layers[0].Moe, Is.Null);
            Assert.That(m.Weights.Layers[0].Mlp, Is.Not.Null);
            Assert.That(m.Weights.Layers[1].Moe, Is.Not.Null);
            Assert.That(m.Weights.Layers[0].Mlp!.GateProj.Rows, Is.EqualTo(128), "intermediate_size of the tiny preset");
            var logits = Last(m, 0, Prompt);
            Assert.That(logits.All(float.IsFinite), Is.True);
            // Same seed, same tensor names for layer 1 and the attention: only layer 0's MLP differs from the MoE model.
            using var moe = ReferenceModel.Load(TestCheckpoints.Tiny());
            Assert.That(Last(moe, 0, Prompt), Is.Not.EqualTo(logits));
        }
        string dense = TestCheckpoints.Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7, Dense = true });
        using (var m = ReferenceModel.Load(dense))
        {
            Assert.That(m.Config.ModelType, Is.EqualTo("qwen3"));
            Assert.That(m.Weights.Layers.All(l => l.Mlp is not null && l.Moe is null), Is.True);
            Assert.That(Last(m, 0, Prompt).All(float.IsFinite), Is.True);
        }
    }

    [Test]
    public void ShardedAndTiedCheckpointsLoad()
    {
        // Same seed, written with 64 KiB shards: same bytes, so exactly the same logits as the single-file checkpoint.
        string sharded = TestCheckpoints.Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7, MaxShardBytes = 64 << 10 });
        Assert.That(File.Exists(Path.Combine(sharded, "model.safetensors.index.json")), Is.True);
        Assert.That(Directory.GetFiles(sharded, "model-*-of-*.safetensors"), Has.Length.GreaterThan(2));
        using var a = ReferenceModel.Load(sharded);
        using var b = ReferenceModel.Load(TestCheckpoints.Tiny());
        Assert.That(a.Weights.Checkpoint.IsSharded, Is.True);
        Assert.That(Last(a, 0, Prompt), Is.EqualTo(Last(b, 0, Prompt)));

        string tied = TestCheckpoints.Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7, TieWordEmbeddings = true });
        using var t = ReferenceModel.Load(tied);
        Assert.That(t.Weights.LmHead.Name, Is.EqualTo("model.embed_tokens.weight"));
        Assert.That(Last(t, 0, Prompt).All(float.IsFinite), Is.True);
    }

    [Test]
    public void YarnConfiguredModelRuns()
    {
        string yarn = TestCheckpoints.Get(new SyntheticOptions
        {
            Preset = SyntheticPreset.Tiny, Seed = 7, RopeScaling = new RopeScalingConfig { Factor = 4, OriginalMaxPositionEmbeddings = 512 },
        });
        using var m = ReferenceModel.Load(yarn);
        using var plain = ReferenceModel.Load(TestCheckpoints.Tiny());
        Assert.That(m.Config.RopeScaling!.Factor, Is.EqualTo(4));
        var l = Last(m, 0, Prompt);
        Assert.That(l.All(float.IsFinite), Is.True);
        Assert.That(l, Is.Not.EqualTo(Last(plain, 0, Prompt)), "attention scaling 1.139 changes q and k");
    }

    [Test]
    public void BadForwardArgumentsAreRejected()
    {
        using var m = ReferenceModel.Load(TestCheckpoints.Tiny(), maxSequences: 2, contextLength: 8);
        var logits = new float[m.VocabSize];
        Assert.That(Assert.Throws<ArgumentException>(() => m.Forward(0, new int[9], logits))!.Message, Does.Contain("more than the context length 8"));
        Assert.That(Assert.Throws<ArgumentException>(() => m.Forward(0, new[] { 512 }, logits))!.Message, Does.Contain("token id 512 is outside the vocabulary"));
        Assert.That(Assert.Throws<ArgumentException>(() => m.Forward(0, new[] { 1 }, new float[3]))!.Message, Does.Contain("expected vocab size 512"));
        Assert.Throws<ArgumentOutOfRangeException>(() => m.Forward(2, new[] { 1 }, logits));
        Assert.Throws<ArgumentException>(() => m.Forward(0, Array.Empty<int>(), logits));
        Assert.That(m.SequenceLength(0), Is.EqualTo(0), "failed calls leave the cache untouched");
        m.Forward(0, new int[8], logits);
        Assert.Throws<ArgumentException>(() => m.Forward(0, new[] { 1 }, logits));
    }

    [Test]
    public void CorruptCheckpointsGiveSpecificErrors()
    {
        // Wrong shape: config says hidden 64 but we claim 32 -> the first tensor looked up names the mismatch.
        string dir = TestCheckpoints.NewDir("badcfg");
        foreach (var f in Directory.GetFiles(TestCheckpoints.Tiny())) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        string cfg = File.ReadAllText(Path.Combine(dir, "config.json"));
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.Replace("\"vocab_size\": 512", "\"vocab_size\": 500"));
        var ex = Assert.Throws<CheckpointException>(() => ReferenceModel.Load(dir).Dispose());
        Assert.That(ex!.Message, Does.EndWith("tensor 'model.embed_tokens.weight' has shape [512, 64], expected [500, 64]"));
        // Missing tensor: a config with more experts than the file holds.
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.Replace("\"num_experts\": 8", "\"num_experts\": 9"));
        ex = Assert.Throws<CheckpointException>(() => ReferenceModel.Load(dir).Dispose());
        Assert.That(ex!.Message, Does.Contain("tensor 'model.layers.0.mlp.experts.8.gate_proj.weight' not found"));
        // Bad config value.
        File.WriteAllText(Path.Combine(dir, "config.json"), cfg.Replace("\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3"));
        Assert.That(Assert.Throws<ConfigException>(() => ReferenceModel.Load(dir).Dispose())!.Message,
            Does.EndWith("config.json: num_attention_heads (4) must be a multiple of num_key_value_heads (3)"));
    }

    [Test]
    public void SyntheticWeightsAreDeterministicInTheSeed()
    {
        string again = TestCheckpoints.NewDir("again");
        SyntheticCheckpoint.Write(SyntheticPreset.Tiny, 7, again);
        Assert.That(File.ReadAllBytes(Path.Combine(again, "model.safetensors")), Is.EqualTo(File.ReadAllBytes(Path.Combine(TestCheckpoints.Tiny(), "model.safetensors"))));
        Assert.That(File.ReadAllBytes(Path.Combine(TestCheckpoints.Tiny(8), "model.safetensors")), Is.Not.EqualTo(File.ReadAllBytes(Path.Combine(again, "model.safetensors"))));
        Assert.That(File.ReadAllText(Path.Combine(again, "README.md")), Does.Contain("tokenizer: none"));
    }

    [Test]
    public void RealShapeSlicePlanHasTheRealDimensionsAndShards()
    {
        // Only the plan is checked here (writing 3.7 GB is for the convert tool, not unit tests).
        var c = SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = SyntheticPreset.RealShapeSlice });
        Assert.That((c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim, c.NumExperts, c.NumExpertsPerTok, c.MoeIntermediateSize, c.VocabSize),
            Is.EqualTo((2048, 2, 32, 4, 128, 128, 8, 768, 151936)));
        var plan = SyntheticCheckpoint.TensorPlan(c);
        var byName = plan.ToDictionary(t => t.Name);
        Assert.That(byName["model.layers.1.self_attn.q_proj.weight"].Shape, Is.EqualTo(new long[] { 4096, 2048 }));
        Assert.That(byName["model.layers.1.self_attn.k_proj.weight"].Shape, Is.EqualTo(new long[] { 512, 2048 }));
        Assert.That(byName["model.layers.0.mlp.experts.127.down_proj.weight"].Shape, Is.EqualTo(new long[] { 2048, 768 }));
        Assert.That(byName["lm_head.weight"].Shape, Is.EqualTo(new long[] { 151936, 2048 }));
        long total = plan.Sum(t => t.ByteLength);
        Assert.That(total, Is.GreaterThan(1L << 30), "more than the 1 GiB shard limit, so it is written sharded with an index");
    }

    [Test]
    public void FindsTheRealTokenizerFromTheTestAssembly()
    {
        // .ci/setup installs it under the repo's .cache; the search walks up from the assembly directory.
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Qwen3Cuda.sln"))) root = root.Parent;
        Assert.That(root, Is.Not.Null, "repo root (Qwen3Cuda.sln) above the test assembly");
        if (!File.Exists(Path.Combine(root!.FullName, SyntheticCheckpoint.TokenizerRelativeDir, "tokenizer.json")))
            Assert.Ignore("the tokenizer files are not installed in this checkout's .cache (run .ci/setup)");
        string? dir = SyntheticCheckpoint.FindTokenizerDir();
        Assert.That(dir, Is.Not.Null);
        Assert.That(File.Exists(Path.Combine(dir!, "tokenizer.json")), Is.True);
    }
}
