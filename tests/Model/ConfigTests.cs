using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Tests.Model;

public class ConfigTests
{
    // The config.json of Qwen/Qwen3-30B-A3B as published (fields this runtime reads, plus some it ignores).
    const string Qwen3_30B_A3B = """
    {
      "architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0,
      "bos_token_id": 151643, "decoder_sparse_step": 1, "eos_token_id": 151645, "head_dim": 128,
      "hidden_act": "silu", "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 6144,
      "max_position_embeddings": 40960, "max_window_layers": 48, "mlp_only_layers": [], "model_type": "qwen3_moe",
      "moe_intermediate_size": 768, "norm_topk_prob": true, "num_attention_heads": 32, "num_experts": 128,
      "num_experts_per_tok": 8, "num_hidden_layers": 48, "num_key_value_heads": 4, "output_router_logits": false,
      "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
      "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0",
      "use_cache": true, "use_sliding_window": false, "vocab_size": 151936
    }
    """;

    static string With(string json, string field, string value)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(json)!.AsObject();
        node[field] = value == "<remove>" ? null : System.Text.Json.Nodes.JsonNode.Parse(value);
        if (value == "<remove>") node.Remove(field);
        return node.ToJsonString();
    }

    [Test]
    public void ParsesTheReal30BA3BConfig()
    {
        var c = ModelConfig.Parse(Qwen3_30B_A3B);
        Assert.Multiple(() =>
        {
            Assert.That(c.ModelType, Is.EqualTo("qwen3_moe"));
            Assert.That((c.HiddenSize, c.NumHiddenLayers, c.NumAttentionHeads, c.NumKeyValueHeads, c.HeadDim), Is.EqualTo((2048, 48, 32, 4, 128)));
            Assert.That((c.NumExperts, c.NumExpertsPerTok, c.MoeIntermediateSize, c.IntermediateSize), Is.EqualTo((128, 8, 768, 6144)));
            Assert.That(c.QueryDim, Is.EqualTo(4096), "head_dim 128 is read, not 2048/32");
            Assert.That(c.NormTopkProb, Is.True);
            Assert.That(c.RopeTheta, Is.EqualTo(1e6));
            Assert.That(c.RmsNormEps, Is.EqualTo(1e-6));
            Assert.That(c.RopeScaling, Is.Null);
            Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 151645 }));
            Assert.That(c.BosTokenId, Is.EqualTo(151643));
            Assert.That(c.TorchDtype, Is.EqualTo("bfloat16"));
            Assert.That(Enumerable.Range(0, 48).All(c.IsMoeLayer), Is.True);
        });
    }

    [Test]
    public void DefaultsHeadDimAndNormTopkProbAndAcceptsEosList()
    {
        var json = With(With(With(Qwen3_30B_A3B, "head_dim", "<remove>"), "norm_topk_prob", "<remove>"), "eos_token_id", "[151645, 151643]");
        var c = ModelConfig.Parse(json);
        Assert.That(c.HeadDim, Is.EqualTo(64), "hidden 2048 / 32 heads");
        Assert.That(c.NormTopkProb, Is.False, "transformers' default");
        Assert.That(c.EosTokenIds, Is.EqualTo(new[] { 151645, 151643 }));
    }

    [Test]
    public void IsMoeLayerFollowsMlpOnlyLayersAndSparseStep()
    {
        var c = ModelConfig.Parse(With(With(With(Qwen3_30B_A3B, "num_hidden_layers", "6"), "mlp_only_layers", "[0, 3]"), "decoder_sparse_step", "2"));
        // MoE iff l not in [0,3] and (l+1) % 2 == 0: layers 1 and 5 (3 is listed as dense).
        Assert.That(Enumerable.Range(0, 6).Select(c.IsMoeLayer), Is.EqualTo(new[] { false, true, false, false, false, true }));
    }

    [Test]
    public void DenseQwen3HasNoMoeLayers()
    {
        var json = """
        {"model_type":"qwen3","hidden_size":64,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,
         "intermediate_size":128,"max_position_embeddings":512,"vocab_size":100,"rms_norm_eps":1e-6,"rope_theta":10000}
        """;
        var c = ModelConfig.Parse(json);
        Assert.That(c.NumExperts, Is.EqualTo(0));
        Assert.That(c.IsMoeLayer(0) || c.IsMoeLayer(1), Is.False);
        Assert.That(c.HeadDim, Is.EqualTo(16));
    }

    [Test]
    public void ParsesYarnRopeScalingUnderEitherKey()
    {
        var c = ModelConfig.Parse(With(Qwen3_30B_A3B, "rope_scaling", """{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"""));
        Assert.That(c.RopeScaling, Is.Not.Null);
        Assert.That((c.RopeScaling!.Factor, c.RopeScaling.OriginalMaxPositionEmbeddings, c.RopeScaling.BetaFast, c.RopeScaling.BetaSlow), Is.EqualTo((4.0, (int?)32768, 32.0, 1.0)));
        var legacy = ModelConfig.Parse(With(Qwen3_30B_A3B, "rope_scaling", """{"type":"yarn","factor":2,"beta_fast":16}"""));
        Assert.That((legacy.RopeScaling!.Factor, legacy.RopeScaling.BetaFast), Is.EqualTo((2.0, 16.0)));
        Assert.That(ModelConfig.Parse(With(Qwen3_30B_A3B, "rope_scaling", """{"rope_type":"default"}""")).RopeScaling, Is.Null);
    }

    [TestCase("num_key_value_heads", "5", "config.json: num_attention_heads (32) must be a multiple of num_key_value_heads (5)")]
    [TestCase("rope_scaling", """{"rope_type":"linear","factor":2}""", "config.json: rope_scaling type 'linear' is not supported (supported: default, yarn, dynamic)")]
    [TestCase("rope_scaling", """{"factor":2}""", "config.json: rope_scaling has neither rope_type nor type")]
    [TestCase("rope_scaling", """{"rope_type":"yarn"}""", "config.json: required field rope_scaling.factor is missing")]
    [TestCase("hidden_size", "\"2048\"", "config.json: hidden_size must be an integer, got string \"2048\"")]
    [TestCase("hidden_size", "<remove>", "config.json: required field hidden_size is missing")]
    [TestCase("hidden_size", "0", "config.json: hidden_size (0) must be in [1, 65536]")]
    [TestCase("head_dim", "127", "config.json: head_dim (127) must be even")]
    [TestCase("num_experts_per_tok", "129", "config.json: num_experts_per_tok (129) must be in [1, 128]")]
    [TestCase("mlp_only_layers", "[48]", "config.json: mlp_only_layers entry 48 is not a layer index in [0, 47]")]
    [TestCase("rms_norm_eps", "-1", "config.json: rms_norm_eps (-1) must be in (0, 1)")]
    [TestCase("norm_topk_prob", "1", "config.json: norm_topk_prob must be true or false, got number 1")]
    [TestCase("eos_token_id", "[151645, 999999]", "config.json: eos_token_id (999999) must be in [0, 151935]")]
    [TestCase("model_type", "\"llama\"", "config.json: model_type 'llama' is not supported (supported: qwen3_moe, qwen3)")]
    [TestCase("torch_dtype", "\"int8\"", "config.json: torch_dtype 'int8' is not supported")]
    [TestCase("decoder_sparse_step", "0", "config.json: decoder_sparse_step (0) must be in [1, 1024]")]
    [TestCase("attention_bias", "true", "config.json: attention_bias true is not supported")]
    public void RejectsBadFieldsNamingThem(string field, string value, string expectedMessageStart)
    {
        var ex = Assert.Throws<ConfigException>(() => ModelConfig.Parse(With(Qwen3_30B_A3B, field, value)));
        Assert.That(ex!.Message, Does.StartWith(expectedMessageStart));
    }

    [Test]
    public void RejectsInvalidJsonAndMissingFile()
    {
        var ex = Assert.Throws<ConfigException>(() => ModelConfig.Parse("{\"hidden_size\": 64,"));
        Assert.That(ex!.Message, Does.StartWith("config.json: not valid JSON"));
        Assert.That(Assert.Throws<ConfigException>(() => ModelConfig.Parse("[1,2]"))!.Message, Does.Contain("top level must be a JSON object"));
        string dir = TestCheckpoints.NewDir("noconfig");
        Assert.That(Assert.Throws<ConfigException>(() => ModelConfig.Load(dir))!.Message, Does.Contain("config.json: file not found"));
    }

    [Test]
    public void ToJsonRoundTrips()
    {
        var c = ModelConfig.Parse(With(With(Qwen3_30B_A3B, "mlp_only_layers", "[1, 2]"), "rope_scaling", """{"rope_type":"yarn","factor":4.0,"original_max_position_embeddings":32768}"""));
        var back = ModelConfig.Parse(c.ToJson());
        Assert.That(back with { MlpOnlyLayers = c.MlpOnlyLayers, EosTokenIds = c.EosTokenIds }, Is.EqualTo(c));
        Assert.That(back.MlpOnlyLayers, Is.EqualTo(c.MlpOnlyLayers));
        Assert.That(back.EosTokenIds, Is.EqualTo(c.EosTokenIds));
    }
}
