using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Model;

/// <summary>
/// FP8 block-128 checkpoints (Qwen3-30B-A3B-FP8's format, docs/formats.md): detection from quantization_config, the E4M3
/// codec, the device layout of weights and scales, and the reader's refusals of bad tensors by tensor and file name.
/// </summary>
public class Fp8FormatTests
{
    static SyntheticOptions TinyFp8 => new() { Preset = SyntheticPreset.Tiny, Seed = 7, WeightFormat = WeightFormat.Fp8Block };

    [Test]
    public void E4M3_EveryFiniteCode_DecodesAndEncodesBack()
    {
        for (int b = 0; b < 256; b++)
        {
            if ((b & 0x7F) == 0x7F) { Assert.That(float.IsNaN(Fp8E4M3.ToFloat((byte)b)), $"0x{b:X2} is NaN"); continue; }
            Assert.That(Fp8E4M3.FromFloat(Fp8E4M3.ToFloat((byte)b)), Is.EqualTo((byte)b), $"0x{b:X2} = {Fp8E4M3.ToFloat((byte)b)}");
        }
        Assert.That((Fp8E4M3.ToFloat(0x7E), Fp8E4M3.ToFloat(0x01), Fp8E4M3.ToFloat(0x08), Fp8E4M3.ToFloat(0xB8)), Is.EqualTo((448f, 1f / 512, 1f / 64, -1f)));
        // round to nearest, ties to even: 1 + 1/16 lies halfway between 1 (0x38, even) and 1.125 (0x39); 1000 saturates to 448
        Assert.That((Fp8E4M3.FromFloat(1.0625f), Fp8E4M3.FromFloat(1.0626f), Fp8E4M3.FromFloat(1000f), Fp8E4M3.FromFloat(-1000f)), Is.EqualTo(((byte)0x38, (byte)0x39, (byte)0x7E, (byte)0xFE)));
    }

    [Test]
    public void Config_IsDetected_AndOtherFp8VariantsAreRefusedByField()
    {
        var c = SyntheticCheckpoint.BuildConfig(TinyFp8);
        var f = CheckpointFormat.FromConfig(c);
        Assert.That((f.LinearFormat, f.Name), Is.EqualTo((WeightFormat.Fp8Block, "fp8 e4m3 block 128x128")));
        var t = new ModelTensors(c);
        Assert.That((f.FormatOf(t.Layers[0].QProj), f.FormatOf(t.Layers[0].Experts![3].Down)), Is.EqualTo((WeightFormat.Fp8Block, WeightFormat.Fp8Block)));
        Assert.That((f.FormatOf(t.Layers[0].Router!), f.FormatOf(t.Embedding), f.FormatOf(t.LmHead!), f.FormatOf(t.Layers[0].QNorm)), Is.EqualTo((WeightFormat.Bf16, WeightFormat.Bf16, WeightFormat.Bf16, WeightFormat.Bf16)));
        var e5 = c with { Quantization = c.Quantization! with { Fmt = "e5m2" } };
        Assert.That(() => CheckpointFormat.FromConfig(e5), Throws.InstanceOf<ConfigException>().With.Message.EqualTo(
            "config.json: quantization_config.fmt 'e5m2' is not supported (quant_method fp8 loads fmt e4m3)"));
        var perTensor = c with { Quantization = c.Quantization! with { WeightBlockSize = null } };
        Assert.That(() => CheckpointFormat.FromConfig(perTensor), Throws.InstanceOf<ConfigException>().With.Message.Contains("weight_block_size is absent"));
        var b64 = c with { Quantization = c.Quantization! with { WeightBlockSize = [64, 64] } };
        Assert.That(() => CheckpointFormat.FromConfig(b64), Throws.InstanceOf<ConfigException>().With.Message.Contains("weight_block_size [64, 64] is not supported"));
    }

    /// <summary>Real shapes: every part 128-row aligned, so one scale row per 128 weight rows; weights one byte each.</summary>
    [Test]
    public void Layout_RealShapes_OneByteWeightsAndBlockScales()
    {
        var c = SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = SyntheticPreset.RealShapeSlice, WeightFormat = WeightFormat.Fp8Block });
        var layout = new WeightLayout(c);
        var bf16 = new WeightLayout(SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = SyntheticPreset.RealShapeSlice }));
        var l = layout.Layers[0];
        Assert.That((l.Qkv.DType, l.Qkv.Format, l.Qkv.Bytes), Is.EqualTo((SafetensorsDType.F8_E4M3, WeightFormat.Fp8Block, 5120L * 2048)));
        Assert.That(l.Qkv.Scales.Single().Shape, Is.EqualTo(new long[] { 5120 / 128, 2048 / 128 }));
        Assert.That((l.Qkv.ScaleRowShift, l.Qkv.ScaleKShift, l.Qkv.ScaleCols), Is.EqualTo((7, 7, 16)));
        Assert.That(l.GateUp.Scales.Single().Shape, Is.EqualTo(new long[] { 128 * 2 * 768 / 128, 16 }));
        Assert.That(l.Down.Scales.Single().Shape, Is.EqualTo(new long[] { 128 * 2048 / 128, 6 }));
        Assert.That((l.Router!.DType, layout.LmHead.DType), Is.EqualTo((SafetensorsDType.BF16, SafetensorsDType.BF16)));
        Assert.That((layout.DenseFormats.Order(), layout.ExpertFormats), Is.EqualTo((new[] { WeightFormat.Bf16, WeightFormat.Fp8Block }, new[] { WeightFormat.Fp8Block })));
        Assert.That(layout.Format.IsQuantized && layout.TotalBytes < bf16.TotalBytes * 0.75, $"fp8 {layout.TotalBytes} vs bf16 {bf16.TotalBytes}");
    }

    /// <summary>Tiny shapes (q 64 rows, k/v 32, experts I 32): not 128-row aligned, so the device keeps a scale row per weight row.</summary>
    [Test]
    public void Layout_UnalignedParts_OneScaleRowPerWeightRow()
    {
        var layout = new WeightLayout(SyntheticCheckpoint.BuildConfig(TinyFp8));
        var qkv = layout.Layers[0].Qkv;
        Assert.That((qkv.ScaleRowShift, qkv.ScaleCols), Is.EqualTo((0, 1)));
        Assert.That(qkv.Scales[0].Shape, Is.EqualTo(new long[] { 128, 1 }));
        Assert.That(qkv.Scales[0].Sources.Select(s => s.CheckpointName), Is.EqualTo(new[]
        {
            "model.layers.0.self_attn.q_proj.weight_scale_inv", "model.layers.0.self_attn.k_proj.weight_scale_inv", "model.layers.0.self_attn.v_proj.weight_scale_inv",
        }));
    }

    /// <summary>The synthetic writer's FP8 tensors dequantize to within E4M3's rounding (half a step: 2^-4 relative) of the bf16 values they came from.</summary>
    [Test]
    public void SyntheticFp8_DequantizesCloseToItsBf16Source()
    {
        using var q = ModelWeights.Load(TestCheckpoints.Get(TinyFp8));
        using var b = ModelWeights.Load(TestCheckpoints.Get(TinyFp8 with { WeightFormat = WeightFormat.Bf16 }));
        foreach (var (wq, wb) in new[] { (q.Layers[1].Attention.OProj, b.Layers[1].Attention.OProj), (q.Layers[0].Moe!.Experts[5].DownProj, b.Layers[0].Moe!.Experts[5].DownProj) })
        {
            float amax = 0;
            foreach (var v in wb.Span) amax = MathF.Max(amax, MathF.Abs(Bf16.ToFloat(v)));
            int exactCount = 0;
            for (int i = 0; i < wb.Span.Length; i++)
            {
                float x = Bf16.ToFloat(wb.Span[i]), y = Bf16.ToFloat(wq.Span[i]);
                // relative 2^-4 (E4M3 half step) + 2^-8 (bf16 rounding of the product), or the subnormal step 2^-10 x scale
                Assert.That(Math.Abs(y - x), Is.LessThanOrEqualTo(Math.Abs(x) * (1.0 / 16 + 1.0 / 256) + amax / 448 / 1024 * 1.01), $"{wq.Name}[{i}]");
                if (x == y) exactCount++;
            }
            Assert.That(exactCount, Is.LessThan(wb.Span.Length), "quantization changed something");
        }
        Assert.That(q.Layers[0].Moe!.Router.Span.SequenceEqual(b.Layers[0].Moe!.Router.Span), "the router stays bf16");
    }

    /// <summary>A tiny FP8 checkpoint with its tensor list edited and every byte set by <paramref name="fill"/> (default 0x3C: fp8 1.5, F32 scales 0.0115).</summary>
    static string Doctored(string hint, Func<TensorSpec, IEnumerable<TensorSpec>> edit, Func<TensorSpec, byte>? fill = null)
    {
        string dir = TestCheckpoints.NewDir(hint);
        var c = SyntheticCheckpoint.BuildConfig(TinyFp8);
        File.WriteAllText(Path.Combine(dir, "config.json"), c.ToJson());
        var plan = SyntheticCheckpoint.TensorPlan(c).SelectMany(edit).ToList();
        SafetensorsWriter.Write(Path.Combine(dir, SafetensorsCheckpoint.SingleFileName), plan, (i, _, chunk) => chunk.Fill(fill?.Invoke(plan[i]) ?? 0x3C));
        return dir;
    }

    const string OProj = "model.layers.1.self_attn.o_proj";
    static string File0(string dir) => Path.Combine(dir, "model.safetensors");

    [Test]
    public void GoodDoctoredCheckpoint_Loads()
    {
        using var w = ModelWeights.Load(Doctored("fp8-ok", t => [t]));
        Assert.That(Bf16.ToFloat(w.Layers[1].Attention.OProj.Span[0]), Is.EqualTo(Bf16.Round(1.5f * BitConverter.ToSingle(new byte[] { 0x3C, 0x3C, 0x3C, 0x3C }))));
    }

    [Test]
    public void WrongScaleShape_IsNamed()
    {
        string dir = Doctored("fp8-scale-shape", t => t.Name == OProj + ".weight_scale_inv" ? [t with { Shape = [2, 1] }] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{OProj}.weight_scale_inv' has shape [2, 1], expected [1, 1] for '{OProj}.weight' [64, 64] (one scale per 128 x 128 block, partial edge blocks included)"));
    }

    [TestCase(0x00, "0")]
    [TestCase(0xFF, "NaN")]
    public void ZeroOrNonFiniteScale_IsNamed(int b, string shown)
    {
        string dir = Doctored("fp8-scale-value", t => [t], t => t.Name.EndsWith("_scale_inv", StringComparison.Ordinal) ? (byte)b : (byte)0x3C);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor 'model.layers.0.self_attn.q_proj.weight_scale_inv' has scale {shown} at element 0 (scales must be non-zero and finite)"));
    }

    [Test]
    public void Bf16Weight_WhereFp8IsDeclared_IsMixedFormats()
    {
        string dir = Doctored("fp8-mixed", t => t.Name == OProj + ".weight" ? [t with { DType = SafetensorsDType.BF16 }] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{OProj}.weight' has dtype BF16, but config.json declares quantization_config.quant_method 'fp8' (fp8 e4m3 block 128x128), " +
            "which stores it as F8_E4M3 (mixed formats: list the module in quantization_config.modules_to_not_convert if it is meant to stay bf16)"));
    }

    [Test]
    public void MissingScale_AndWrongWeightShape_AreNamed()
    {
        string dir = Doctored("fp8-no-scale", t => t.Name == OProj + ".weight_scale_inv" ? [] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{OProj}.weight' is F8_E4M3 but its scale tensor '{OProj}.weight_scale_inv' is missing"));
        dir = Doctored("fp8-weight-shape", t => t.Name == OProj + ".weight" ? [t with { Shape = [64, 32] }] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{OProj}.weight' has shape [64, 32], expected [64, 64] from config.json"));
    }

    [Test]
    public void GptqTensor_InAnFp8Checkpoint_IsMixedFormats()
    {
        string dir = Doctored("fp8-gptq", t => t.Name == OProj + ".weight" ? [t, new TensorSpec(OProj + ".qweight", SafetensorsDType.I32, [8, 64])] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.Contains(
            $"tensor '{OProj}.qweight' is GPTQ-packed, but config.json declares quantization_config.quant_method 'fp8' (fp8 e4m3 block 128x128) (mixed formats)"));
    }
}
