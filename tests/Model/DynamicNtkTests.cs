using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Tests.Model;

/// <summary>Dynamic NTK rope_scaling (docs/model-formats.md, "RoPE scaling"): config, the inv_freq formula, the reference model.</summary>
public class DynamicNtkTests
{
    [Test]
    public void ConfigParsesDynamicUnderEitherKey()
    {
        const string baseJson = """
            {"model_type":"qwen3","hidden_size":64,"num_hidden_layers":1,"num_attention_heads":4,"num_key_value_heads":2,"head_dim":16,
             "intermediate_size":128,"max_position_embeddings":512,"vocab_size":100,"rope_theta":10000,"rope_scaling":ROPE}
            """;
        var c = ModelConfig.Parse(baseJson.Replace("ROPE", """{"rope_type":"dynamic","factor":2.0}"""));
        Assert.That((c.RopeScaling!.IsDynamic, c.RopeScaling.Factor), Is.EqualTo((true, 2.0)));
        var legacy = ModelConfig.Parse(baseJson.Replace("ROPE", """{"type":"dynamic","factor":4}"""));
        Assert.That((legacy.RopeScaling!.IsDynamic, legacy.RopeScaling.Factor), Is.EqualTo((true, 4.0)));
        var e = Assert.Throws<ConfigException>(() => ModelConfig.Parse(baseJson.Replace("ROPE", """{"rope_type":"dynamic"}""")));
        Assert.That(e!.Message, Is.EqualTo("config.json: required field rope_scaling.factor is missing"));
        // written back by ToJson and read again the same
        Assert.That(ModelConfig.Parse(c.ToJson()).RopeScaling, Is.EqualTo(c.RopeScaling));
    }

    [Test]
    public void InvFreqFollowsTheSequenceLengthPastMaxPositions()
    {
        // D 4, theta 1e4, factor 2, max_position_embeddings 100: inv = [1, base^-1/2].
        // length <= 100: base 1e4 -> inv[1] = 1/100. length 150: base = 1e4 (2*150/100 - 1)^(4/2) = 4e4 -> 1/200.
        // length 101: base = 1e4 * 1.02^2 = 10404 -> 1/102.
        var inv = new float[2];
        Assert.That(ReferenceOps.DynamicNtkInvFreq(4, 1e4, 2, 100, 100, inv), Is.False);
        Assert.That(inv, Is.EqualTo(new[] { 1f, 0.01f }));
        Assert.That(ReferenceOps.DynamicNtkInvFreq(4, 1e4, 2, 100, 150, inv), Is.True);
        // fp32 pow of an fp32 base: within 2 fp32 ulps (1.2e-7 relative each) of the exact value
        Assert.That(inv[0], Is.EqualTo(1f));
        Assert.That(inv[1], Is.EqualTo(1.0 / 200).Within(2.5e-7 / 200));
        ReferenceOps.DynamicNtkInvFreq(4, 1e4, 2, 100, 101, inv);
        Assert.That(inv[1], Is.EqualTo(1.0 / 102).Within(2.5e-7 / 102));
        // the model's starting table is the default one (factor has no effect below the limit)
        var (start, scale) = ReferenceOps.RopeParameters(4, 1e4, new RopeScalingConfig { RopeType = "dynamic", Factor = 2 }, 100);
        Assert.That((start, scale), Is.EqualTo((new[] { 1f, 0.01f }, 1f)));
    }

    [Test]
    public void ReferenceModelChangesOnlyPastMaxPositionEmbeddings()
    {
        // max_position_embeddings 16: a 12-token prompt is below it (bitwise the unscaled model), 24 tokens are past it.
        var plainOptions = new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7, MaxPositionEmbeddings = 16 };
        string plainDir = TestCheckpoints.Get(plainOptions);
        string ntkDir = TestCheckpoints.Get(plainOptions with { RopeScaling = new RopeScalingConfig { RopeType = "dynamic", Factor = 4 } });
        using var plain = ReferenceModel.Load(plainDir, 1, 64);
        using var ntk = ReferenceModel.Load(ntkDir, 1, 64);
        int[] prompt = Enumerable.Range(0, 24).Select(i => (i * 37 + 3) % 512).ToArray();
        var a = new float[512];
        var b = new float[512];
        plain.Forward(0, prompt.AsSpan(0, 12), a);
        ntk.Forward(0, prompt.AsSpan(0, 12), b);
        Assert.That(b, Is.EqualTo(a), "below max_position_embeddings dynamic NTK is the default RoPE");
        plain.ResetSequence(0); ntk.ResetSequence(0);
        plain.Forward(0, prompt, a);
        ntk.Forward(0, prompt, b);
        Assert.That(b.All(float.IsFinite), Is.True);
        Assert.That(b, Is.Not.EqualTo(a), "past it the base grows");
    }
}
