using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Model;

/// <summary>
/// GPTQ 4-bit checkpoints (Qwen3-30B-A3B-GPTQ-Int4's format, docs/formats.md): the config fields that are refused by name,
/// the packing (qweight nibbles along K, zeros stored minus one), the device layout, and bad tensors named with their file.
/// </summary>
public class GptqFormatTests
{
    static SyntheticOptions TinyInt4 => new() { Preset = SyntheticPreset.Tiny, Seed = 7, WeightFormat = WeightFormat.Int4Gptq };
    static ModelConfig Config => SyntheticCheckpoint.BuildConfig(TinyInt4);

    [TestCase("bits", 8, "bits 8")]
    [TestCase("desc_act", true, "desc_act true (act-order: g_idx not monotone)")]
    [TestCase("sym", false, "sym false (zero points other than 8)")]
    [TestCase("group_size", 96, "group_size 96")]
    [TestCase("group_size", -1, "group_size -1")]
    [TestCase("checkpoint_format", "gptq_v2", "checkpoint_format 'gptq_v2'")]
    public void UnsupportedGptqFields_AreRefusedByName(string field, object value, string shown)
    {
        var q = Config.Quantization!;
        q = field switch
        {
            "bits" => q with { Bits = (int)value },
            "desc_act" => q with { DescAct = (bool)value },
            "sym" => q with { Sym = (bool)value },
            "group_size" => q with { GroupSize = (int)value },
            _ => q with { CheckpointFormat = (string)value },
        };
        Assert.That(() => CheckpointFormat.FromConfig(Config with { Quantization = q }), Throws.InstanceOf<ConfigException>().With.Message.EqualTo(
            $"config.json: quantization_config.{shown} is not supported (quant_method gptq loads bits 4, sym true, desc_act false, group_size a power of two >= 32, checkpoint_format gptq)"));
    }

    [Test]
    public void GroupSizeNotDividingK_IsNamedWithTheModule()
    {
        var c = Config with { Quantization = Config.Quantization! with { GroupSize = 128 } };   // H 64
        Assert.That(() => new WeightLayout(c), Throws.InstanceOf<ConfigException>().With.Message.EqualTo(
            "model.layers.0.self_attn.q_proj: quantization_config.group_size 128 does not divide its K 64"));
    }

    /// <summary>The writer's packing, decoded by hand for one weight: nibble k % 8 of qweight[k / 8, n]; zeros 0x77777777 (8 - 1).</summary>
    [Test]
    public void Packing_IsGptqV1()
    {
        var w = new ushort[16 * 64];
        for (int i = 0; i < w.Length; i++) w[i] = Bf16.FromFloat(((i * 37) % 15 - 7) / 7f);
        var (qw, qz, sc, gi) = WeightQuantization.QuantizeGptq(w, 16, 64, 32);
        Assert.That((qw.Length, qz.Length, sc.Length, gi.Length), Is.EqualTo((64 / 8 * 16, 2 * 2, 2 * 16, 64)));
        Assert.That(qz, Is.All.EqualTo(0x77777777));
        Assert.That(gi[31..33], Is.EqualTo(new[] { 0, 1 }));
        int n = 5, k = 43;
        float scale = (float)BitConverter.UInt16BitsToHalf(sc[1 * 16 + n]);
        int q = (qw[k / 8 * 16 + n] >> (4 * (k % 8))) & 0xF;
        Assert.That((q - 8) * scale, Is.EqualTo(Bf16.ToFloat(w[n * 64 + k])).Within(scale / 2), "w ~ (q - 8) x scale");
        var deq = WeightQuantization.DequantizeGptq(qw, qz, sc.Select(h => (float)BitConverter.UInt16BitsToHalf(h)).ToArray(), 16, 64, 32);
        Assert.That(deq[n * 64 + k], Is.EqualTo(Bf16.FromFloat((q - 8) * scale)));
        var packed = new byte[16 * 32];
        WeightQuantization.RepackGptq(qw, 16, 64, packed);
        Assert.That((packed[n * 32 + k / 2] >> 4) & 0xF, Is.EqualTo(q), "device bytes: k odd in the high nibble");
    }

    [Test]
    public void Layout_RepacksTwoCodesPerByte_WithFp16GroupScales()
    {
        var c = SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = SyntheticPreset.RealShapeSlice, WeightFormat = WeightFormat.Int4Gptq });
        Assert.That(c.Quantization!.GroupSize, Is.EqualTo(128));
        var l = new WeightLayout(c).Layers[0];
        Assert.That((l.GateUp.Format, l.GateUp.Bytes), Is.EqualTo((WeightFormat.Int4Gptq, 128L * 1536 * 2048 / 2)));
        Assert.That((l.GateUp.Scales[0].DType, l.GateUp.Scales[0].Shape), Is.EqualTo((SafetensorsDType.F16, new long[] { 128 * 1536, 2048 / 128 })));
        Assert.That((l.Down.ScaleKShift, l.Down.ScaleCols), Is.EqualTo((7, 6)));
    }

    /// <summary>A tiny GPTQ checkpoint written by the synthetic writer, with one tensor's bytes or spec changed.</summary>
    static string Doctored(string hint, Func<TensorSpec, IEnumerable<TensorSpec>> edit, Action<string, Span<byte>>? patch = null)
    {
        string dir = TestCheckpoints.NewDir(hint);
        var c = Config;
        File.WriteAllText(Path.Combine(dir, "config.json"), c.ToJson());
        var plan = QuantizedWriter.Plan(c);
        var writer = new QuantizedWriter(plan, i => Enumerable.Repeat(Bf16.FromFloat(0.25f), (int)plan[i].Source.Elements).ToArray());
        var specs = plan.SelectMany(p => edit(p.Spec).Select(s => (s, p))).ToList();
        SafetensorsWriter.Write(Path.Combine(dir, SafetensorsCheckpoint.SingleFileName), specs.Select(x => x.s).ToList(), (i, off, chunk) =>
        {
            var (spec, p) = specs[i];
            if (spec.ByteLength != p.Spec.ByteLength || p.Part == QuantizedPart.Bf16) chunk.Fill(0x3E);   // bf16 0x3E3E ~ 0.19
            else writer.Fill(plan.ToList().IndexOf(p), off, chunk);
            patch?.Invoke(spec.Name, chunk);
        });
        return dir;
    }

    const string Down = "model.layers.1.mlp.experts.3.down_proj";
    static string File0(string dir) => Path.Combine(dir, "model.safetensors");

    [Test]
    public void GoodDoctoredCheckpoint_Loads_AndDequantizes()
    {
        using var w = ModelWeights.Load(Doctored("gptq-ok", t => [t]));
        Assert.That(w.Format.LinearFormat, Is.EqualTo(WeightFormat.Int4Gptq));
        Assert.That(Bf16.ToFloat(w.Layers[1].Moe!.Experts[3].DownProj.Span[5]), Is.EqualTo(0.25f).Within(0.25f * 2 / 15 / 2 + 1e-3));
    }

    [Test]
    public void AsymmetricZeros_AreNamed()
    {
        string dir = Doctored("gptq-zeros", t => [t], (name, chunk) => { if (name == Down + ".qzeros") chunk[0] = 0x76; });
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{Down}.qzeros' holds zero points other than 8 (int32 0 is 0x77777776; stored minus one, symmetric GPTQ has 0x77777777): asymmetric GPTQ is not supported"));
    }

    [Test]
    public void ActOrderGIdx_IsRefusedByName()
    {
        string dir = Doctored("gptq-gidx", t => [t], (name, chunk) => { if (name == Down + ".g_idx") { chunk[4 * 31] = 1; } });
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{Down}.g_idx' has g_idx[31] = 1, expected 0: groups must be consecutive runs of group_size 32"));
        dir = Doctored("gptq-gidx-order", t => [t], (name, chunk) => { if (name == Down + ".g_idx") { chunk[4 * 31] = 0; chunk[4 * 30] = 1; } });
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{Down}.g_idx' is not monotone (g_idx[30] = 1, g_idx[31] = 0): act-order (desc_act) GPTQ is not supported"));
    }

    [Test]
    public void WrongQweightShape_ZeroScale_AndBf16Weight_AreNamed()
    {
        string dir = Doctored("gptq-shape", t => t.Name == Down + ".qweight" ? [t with { Shape = [8, 64] }] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{Down}.qweight' has shape [8, 64], expected [4, 64] for {Down} [N 64, K 32] with group size 32"));
        dir = Doctored("gptq-scale", t => [t], (name, chunk) => { if (name == Down + ".scales") { chunk[0] = 0; chunk[1] = 0; } });
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.EqualTo(
            $"{File0(dir)}: tensor '{Down}.scales' has scale 0 at element 0 (scales must be non-zero and finite)"));
        dir = Doctored("gptq-bf16", t => t.Name == Down + ".qweight" ? [new TensorSpec(Down + ".weight", SafetensorsDType.BF16, [64, 32]), t] : [t]);
        Assert.That(() => ModelWeights.Load(dir), Throws.InstanceOf<CheckpointException>().With.Message.Contains(
            $"tensor '{Down}.weight' is stored unquantized (BF16), but config.json declares quantization_config.quant_method 'gptq'"));
    }
}
