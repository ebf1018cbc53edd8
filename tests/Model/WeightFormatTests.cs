using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Model;

/// <summary>
/// The one table of tensor names (ModelTensors), the typed device layout, and the detection of a checkpoint's weight
/// format from config.json's quantization_config and the tensors' dtypes (anything unsupported refused by name).
/// </summary>
public class WeightFormatTests
{
    static ModelConfig Tiny(bool denseLayer = false, bool tied = false) =>
        SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = SyntheticPreset.Tiny, MlpOnlyLayers = denseLayer ? [1] : null, TieWordEmbeddings = tied });

    [TestCase(false, false)]
    [TestCase(true, false)]
    [TestCase(false, true)]
    public void TheNameTable_IsWhatTheWriterWritesAndTheReferenceBinds(bool denseLayer, bool tied)
    {
        var c = Tiny(denseLayer, tied);
        var table = new ModelTensors(c).All.ToList();
        Assert.That(table.Select(t => t.Name), Is.Unique);
        Assert.That(SyntheticCheckpoint.TensorPlan(c).Select(t => (t.Name, t.Shape)), Is.EqualTo(table.Select(t => (t.Name, t.Shape))), "synthetic writer");
        Assert.That(new WeightLayout(c).SourceNames.Order(), Is.EqualTo(table.Select(t => t.Name).Order()), "device layout");

        string dir = TestCheckpoints.Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7, MlpOnlyLayers = denseLayer ? [1] : null, TieWordEmbeddings = tied });
        using var w = ModelWeights.Load(dir);
        var bound = new List<string> { w.EmbedTokens.Name, w.FinalNorm.Name, w.LmHead.Name };
        foreach (var l in w.Layers)
        {
            var a = l.Attention;
            bound.AddRange([l.InputNorm.Name, l.PostAttentionNorm.Name, a.QProj.Name, a.KProj.Name, a.VProj.Name, a.OProj.Name, a.QNorm.Name, a.KNorm.Name]);
            if (l.Moe is { } moe) bound.Add(moe.Router.Name);
            foreach (var m in l.Moe?.Experts ?? [l.Mlp!]) bound.AddRange([m.GateProj.Name, m.UpProj.Name, m.DownProj.Name]);
        }
        Assert.That(bound.Distinct().Order(), Is.EqualTo(table.Select(t => t.Name).Order()), "reference binding");
        Assert.That(w.Format, Is.SameAs(CheckpointFormat.Bf16));
    }

    [Test]
    public void RealShapes_ComeFromTheTable()
    {
        var c = SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = SyntheticPreset.RealShapeSlice });
        var t = new ModelTensors(c);
        Assert.That(t.Layers[1].QProj.Name, Is.EqualTo("model.layers.1.self_attn.q_proj.weight"));
        Assert.That(t.Layers[1].QProj.Shape, Is.EqualTo(new long[] { 4096, 2048 }));
        Assert.That(t.Layers[0].Experts![127].Down.Module, Is.EqualTo("model.layers.0.mlp.experts.127.down_proj"));
        Assert.That(t.Layers[0].Experts![127].Down.Shape, Is.EqualTo(new long[] { 2048, 768 }));
        Assert.That(t.Layers[0].Router!.Name, Is.EqualTo("model.layers.0.mlp.gate.weight"));
        Assert.That((t.Layers[0].Router!.IsLinear, t.Layers[0].QNorm.IsLinear, t.Embedding.IsLinear), Is.EqualTo((true, false, false)));
        Assert.That(t.LmHead!.Name, Is.EqualTo("lm_head.weight"));
    }

    /// <summary>Every arena tensor carries dtype and shape consistent with its bytes; bf16 matrices have no scale tensors.</summary>
    [TestCase(SyntheticPreset.Tiny, false)]
    [TestCase(SyntheticPreset.Tiny, true)]
    [TestCase(SyntheticPreset.RealShapeSlice, false)]
    public void DeviceTensors_AreTyped(SyntheticPreset preset, bool denseLayer)
    {
        var c = SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = preset, MlpOnlyLayers = denseLayer ? [1] : null });
        var layout = new WeightLayout(c);
        Assert.That(layout.Format.Name, Is.EqualTo("bf16"));
        foreach (var t in layout.Tensors)
        {
            Assert.That(t.Bytes, Is.EqualTo(t.Shape.Aggregate(1L, (a, b) => a * b) * t.DType.SizeInBytes()), $"{t.Name} {t.ShapeText} {t.DType}");
            Assert.That(t.Scales, Is.Empty, t.Name);
            Assert.That(t.Format, Is.EqualTo(WeightFormat.Bf16), t.Name);
        }
        var l0 = layout.Layers[0];
        long H = c.HiddenSize;
        Assert.That(l0.Qkv.Shape, Is.EqualTo(new[] { c.QueryDim + 2L * c.KeyValueDim, H }));
        Assert.That(layout.Layers[^1].GateUp.Shape, Is.EqualTo(denseLayer ? new[] { 1, 2L * c.IntermediateSize, H } : new[] { c.NumExperts, 2L * c.MoeIntermediateSize, H }));
        Assert.That(layout.InvFreq.DType, Is.EqualTo(SafetensorsDType.F32));
        Assert.That((layout.DenseFormats, layout.ExpertFormats), Is.EqualTo((new[] { WeightFormat.Bf16 }, new[] { WeightFormat.Bf16 })));
    }

    const string QwenFp8 = """{"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}""";
    const string QwenGptq = """{"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": false, "sym": true, "checkpoint_format": "gptq", "damp_percent": 0.01}""";

    static string WithQuantization(string quantizationJson) =>
        Tiny().ToJson().TrimEnd().TrimEnd('}') + ",\n  \"quantization_config\": " + quantizationJson + "\n}";

    [Test]
    public void QuantizationConfig_IsParsedAndWrittenBack()
    {
        var c = ModelConfig.Parse(WithQuantization(QwenFp8));
        var q = c.Quantization!;
        Assert.That((q.QuantMethod, q.Fmt, q.ActivationScheme), Is.EqualTo(("fp8", "e4m3", "dynamic")));
        Assert.That(q.WeightBlockSize, Is.EqualTo(new[] { 128, 128 }));
        var g = ModelConfig.Parse(WithQuantization(QwenGptq)).Quantization!;
        Assert.That((g.QuantMethod, g.Bits, g.GroupSize, g.DescAct, g.Sym, g.CheckpointFormat), Is.EqualTo(("gptq", 4, 128, false, true, "gptq")));
        var again = ModelConfig.Parse(ModelConfig.Parse(WithQuantization(QwenGptq)).ToJson()).Quantization!;
        Assert.That((again.QuantMethod, again.Bits, again.GroupSize, again.DescAct, again.Sym, again.CheckpointFormat), Is.EqualTo(("gptq", 4, 128, false, true, "gptq")));
        Assert.That(Tiny().Quantization, Is.Null);
    }

    [TestCase("[1, 2]", "quantization_config must be an object")]
    [TestCase("""{"bits": 4}""", "quantization_config has no quant_method")]
    [TestCase("""{"quant_method": "fp8", "weight_block_size": [128, "x"]}""", "quantization_config.weight_block_size must be a list of integers")]
    [TestCase("""{"quant_method": "gptq", "desc_act": "no"}""", "quantization_config.desc_act must be true or false")]
    public void QuantizationConfig_BadFields_AreNamed(string json, string message) =>
        Assert.That(() => ModelConfig.Parse(WithQuantization(json)), Throws.InstanceOf<ConfigException>().With.Message.EqualTo("config.json: " + message));

    [TestCase("""{"quant_method": "awq", "bits": 4}""", "awq")]
    [TestCase("""{"quant_method": "compressed-tensors"}""", "compressed-tensors")]
    public void UnsupportedQuantization_IsRefusedByName(string json, string method)
    {
        var c = ModelConfig.Parse(WithQuantization(json));
        Assert.That(() => CheckpointFormat.FromConfig(c), Throws.InstanceOf<ConfigException>().With.Message.StartsWith(
            $"config.json: quantization_config.quant_method '{method}' is not supported (supported: "));
        Assert.That(() => new WeightLayout(c), Throws.InstanceOf<ConfigException>().With.Message.Contains($"'{method}'"));
    }

    [TestCase("""{"quant_method": "int8", "bits": 8, "group_size": -1, "sym": true}""", null)]
    [TestCase("""{"quant_method": "int8", "bits": 4}""", "quantization_config.bits 4 is not supported (quant_method int8 loads bits 8)")]
    [TestCase("""{"quant_method": "int8", "group_size": 128}""", "quantization_config.group_size 128 is not supported (quant_method int8 loads group_size -1: one scale per output channel)")]
    [TestCase("""{"quant_method": "int8", "sym": false}""", "quantization_config.sym false is not supported (quant_method int8 is symmetric: no zero points)")]
    public void Int8Config_IsDetected_OrRefusedByField(string json, string? message)
    {
        var c = ModelConfig.Parse(WithQuantization(json));
        if (message is null)
        {
            Assert.That(CheckpointFormat.FromConfig(c).LinearFormat, Is.EqualTo(WeightFormat.Int8Channel));
            var l = new WeightLayout(c).Layers[0];
            Assert.That((l.Qkv.DType, l.Qkv.Scales[0].Shape, l.Down.Scales[0].Shape), Is.EqualTo((SafetensorsDType.I8, new long[] { c.QueryDim + 2L * c.KeyValueDim, 1 }, new long[] { c.NumExperts * (long)c.HiddenSize, 1 })));
        }
        else Assert.That(() => CheckpointFormat.FromConfig(c), Throws.InstanceOf<ConfigException>().With.Message.EqualTo("config.json: " + message));
    }

    [Test]
    public void UnsupportedQuantization_ThroughTheCli_IsOneClearLine()
    {
        string dir = TestCheckpoints.NewDir("awq-config");
        File.WriteAllText(Path.Combine(dir, "config.json"), WithQuantization("""{"quant_method": "awq", "bits": 4}"""));
        var (exit, _, err) = Support.CliRunner.Run(["info", "--model", dir, "--gpu-memory", "1GiB"]);
        Assert.That(exit, Is.EqualTo(1));
        Assert.That(err, Does.StartWith("error: ").And.Contain("config.json: quantization_config.quant_method 'awq' is not supported (supported: fp8 (").And.Contain("gptq ("));
        Assert.That(err.TrimEnd('\n'), Does.Not.Contain("\n"), "one line");
    }

    /// <summary>A tiny bf16 checkpoint with one tensor replaced (dtype and/or name), the rest as the synthetic writer writes them.</summary>
    static string Doctored(string hint, Func<TensorSpec, IEnumerable<TensorSpec>> edit)
    {
        string dir = TestCheckpoints.NewDir(hint);
        var c = Tiny();
        File.WriteAllText(Path.Combine(dir, "config.json"), c.ToJson());
        var plan = SyntheticCheckpoint.TensorPlan(c).SelectMany(edit).ToList();
        SafetensorsWriter.Write(Path.Combine(dir, SafetensorsCheckpoint.SingleFileName), plan, (_, _, chunk) => chunk.Clear());
        return dir;
    }

    const string QProj = "model.layers.1.self_attn.q_proj";

    [Test]
    public void Fp8Tensor_InABf16Checkpoint_IsNamedWithItsFile()
    {
        string dir = Doctored("fp8-tensor", t => t.Name == QProj + ".weight" ? [t with { DType = SafetensorsDType.F8_E4M3 }] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{Path.Combine(dir, "model.safetensors")}: tensor '{QProj}.weight' has dtype F8_E4M3, but config.json declares a bf16 checkpoint " +
            "(no quantization_config), which stores it as BF16 (an FP8 checkpoint needs its quantization_config)"));
    }

    [Test]
    public void ScaleTensor_InABf16Checkpoint_IsMixedFormats()
    {
        string dir = Doctored("fp8-scale", t => t.Name == QProj + ".weight"
            ? [t, new TensorSpec(QProj + ".weight_scale_inv", SafetensorsDType.F32, [1, 1])] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.Contains(
            $"tensor '{QProj}.weight_scale_inv' is a quantization scale, but config.json declares a bf16 checkpoint (no quantization_config) (mixed formats"));
    }

    [Test]
    public void GptqPackedTensor_InABf16Checkpoint_IsNamed()
    {
        string dir = Doctored("gptq-tensor", t => t.Name == QProj + ".weight"
            ? [new TensorSpec(QProj + ".qweight", SafetensorsDType.I32, [t.Shape[1] / 8, t.Shape[0]])] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.Contains(
            $"tensor '{QProj}.qweight' is GPTQ-packed, but config.json declares a bf16 checkpoint"));
    }

    [Test]
    public void MissingTensor_StillNamesTheFile()
    {
        string dir = Doctored("missing-tensor", t => t.Name == QProj + ".weight" ? [] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.Contains($"tensor '{QProj}.weight' not found"));
    }

    [Test]
    public void KernelTables_RefuseAFormatWithoutAVariant_ByName()
    {
        var unknown = (WeightFormat)42;
        Assert.That(() => WeightFormats.Select(GemvLaunchers.Variants, unknown, "gemv"),
            Throws.InstanceOf<NotSupportedException>().With.Message.EqualTo("gemv: no kernel for weight format #42 (supported: bf16, fp8, int8, int4)"));
        Assert.That(() => WeightFormats.Select(GemmLaunchers.Variants, unknown, "gemm"), Throws.InstanceOf<NotSupportedException>().With.Message.Contains("(supported: bf16, fp8, int8, int4)"));
        Assert.That(() => WeightFormats.Select(MoeLaunchers.Variants, unknown, "MoE experts"), Throws.InstanceOf<NotSupportedException>().With.Message.Contains("(supported: bf16, fp8, int8, int4)"));
        using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice();
        using var loader = new Qwen3Cuda.Runtime.KernelLoader(device);
        Assert.That(() => new GemvLaunchers(loader, [unknown]), Throws.InstanceOf<NotSupportedException>().With.Message.StartWith("gemv: no kernel for weight format #42"));
        Assert.That(GemvLaunchers.Variants[WeightFormat.Bf16], Is.EqualTo("gemv_bf16_t"));
    }
}
