using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Quantized checkpoints end to end on the emulator (docs/formats.md): `synth --weight-format F` of the tiny preset, the
/// device model against the CPU reference model, which computes with the dequantized bf16 weights the kernels compute
/// with (the same rounding points otherwise). Same tolerance and near-tie handling as the bf16 suite (DeviceModelTests:
/// max|d| within 3% of the largest reference logit, NMSE 2e-4, greedy tokens equal where the reference's top-2 margin is
/// not a near-tie): the quantized kernels differ from the bf16 ones only in how a weight is fetched.
/// </summary>
public class QuantizedModelTests
{
    public static string TinyIn(WeightFormat format, bool denseLayer = false) =>
        Model.TestCheckpoints.Get((denseLayer ? DeviceCheckpoints.TinyDenseLayerOptions : DeviceCheckpoints.TinyOptions) with { WeightFormat = format });

    /// <summary>
    /// Chunked prefill (16 + 4 tokens: the quantized GEMM and grouped expert GEMMs, then the GEMVs) and greedy decode: 16
    /// steps, 8 with the dense layer (as the bf16 dense-layer test: past step 8 one fp32 rounding-order difference kept in
    /// the KV cache grows to NMSE ~1.3e-4). Measured: fp8 and int8 MoE-only 16 steps and dense 8 steps bit-exact (NMSE 0;
    /// int8 MoE-only NMSE 3.8e-5 with one router near-tie skipped); GPTQ int4 (group 32) NMSE 3.3e-5 and 6.9e-5.
    /// </summary>
    [TestCase(WeightFormat.Fp8Block, false)]
    [TestCase(WeightFormat.Fp8Block, true)]
    [TestCase(WeightFormat.Int8Channel, false)]
    [TestCase(WeightFormat.Int8Channel, true)]
    [TestCase(WeightFormat.Int4Gptq, false)]
    [TestCase(WeightFormat.Int4Gptq, true)]
    public void Tiny_PrefillAndGreedyDecode_MatchReference(WeightFormat format, bool denseLayer)
    {
        string dir = TinyIn(format, denseLayer);
        using (var w = Qwen3Cuda.Model.Reference.ModelWeights.Load(dir))
        {
            Assert.That(w.Format.LinearFormat, Is.EqualTo(format));
            Assert.That(w.Layers[0].Attention.QProj.IsDequantized, Is.True);
            Assert.That(w.LmHead.IsDequantized, Is.False, "lm_head stays bf16");
        }
        DeviceModelTests.RunGreedy(dir, new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 4 }, promptLength: 20, steps: denseLayer ? 8 : 16);
    }

    /// <summary>
    /// GPTQ checkpoints keep their unquantized tensors in fp16 (torch_dtype float16): the tiny int4 checkpoint rewritten
    /// with its embedding, norms, routers and lm_head as F16 loads (converted to bf16, nearest even) and runs on the device
    /// as its reference does (8 greedy steps, the suite's tolerance).
    /// </summary>
    [Test]
    public void GptqWithFp16Tensors_LoadsAndMatchesReference()
    {
        string src = TinyIn(WeightFormat.Int4Gptq);
        string dir = Model.TestCheckpoints.NewDir("tiny-int4-f16");
        File.Copy(Path.Combine(src, "config.json"), Path.Combine(dir, "config.json"));
        using (var ckpt = SafetensorsCheckpoint.Open(src))
        {
            var names = ckpt.TensorNames.ToList();
            var specs = names.Select(n => ckpt.Info(n)).Select(i => new TensorSpec(i.Name, i.DType == SafetensorsDType.BF16 ? SafetensorsDType.F16 : i.DType, i.Shape)).ToList();
            SafetensorsWriter.Write(Path.Combine(dir, SafetensorsCheckpoint.SingleFileName), specs, (i, off, chunk) =>
            {
                var view = ckpt.Get(names[i]);
                if (view.DType != SafetensorsDType.BF16) { view.Bytes.Slice((int)off, chunk.Length).CopyTo(chunk); return; }
                var bf = view.AsBf16();
                var dst = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(chunk);
                for (int j = 0; j < dst.Length; j++) dst[j] = (Half)Qwen3Cuda.Model.Bf16.ToFloat(bf[(int)(off / 2) + j]);
            });
        }
        using (var w = Qwen3Cuda.Model.Reference.ModelWeights.Load(dir))
        {
            Assert.That(w.Checkpoint.Info("model.embed_tokens.weight").DType, Is.EqualTo(SafetensorsDType.F16));
            Assert.That(w.EmbedTokens.IsDequantized && w.Layers[0].InputNorm.IsDequantized, "fp16 tensors are converted on first use");
        }
        DeviceModelTests.RunGreedy(dir, new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 4 }, promptLength: 20, steps: 8);
        // a bf16 checkpoint with an fp16 tensor is still refused (only GPTQ stores them so)
        Assert.That(CheckpointFormat.Bf16.AcceptsF16, Is.False);
    }

    /// <summary>
    /// The FP8 KV cache (DeviceModelOptions.KvCacheDtype, --kv-cache-dtype fp8; docs/formats.md): rope.cu writes E4M3 codes
    /// of the bf16 K and V, both attention kernels decode them exactly, and the reference stores the same E4M3 values, so
    /// the suite's tolerance holds (max|d| 3% of the largest logit, NMSE 2e-4, greedy tokens without near-ties), on a bf16
    /// and an FP8-weight tiny model: prefill chunks of 16 + 4 (flash prefill kernel) and 16 decode steps (decode kernel).
    /// The cache is half the bytes.
    /// </summary>
    [TestCase(WeightFormat.Bf16)]
    [TestCase(WeightFormat.Fp8Block)]
    public void Fp8KvCache_MatchesTheReferenceWithFp8Kv(WeightFormat weights)
    {
        string dir = TinyIn(weights);
        var options = new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 4, KvCacheDtype = Qwen3Cuda.Runtime.Memory.KvCacheDtype.Fp8 };
        var c = Qwen3Cuda.Model.Config.ModelConfig.Load(dir);
        var fp8 = MemoryPlan.Compute(c, options, 1L << 30);
        var bf16 = MemoryPlan.Compute(c, options with { KvCacheDtype = Qwen3Cuda.Runtime.Memory.KvCacheDtype.Bf16 }, 1L << 30);
        Assert.That((fp8.KvBytes * 2, fp8.KvBytesPerToken * 2), Is.EqualTo((bf16.KvBytes, bf16.KvBytesPerToken)));
        DeviceModelTests.RunGreedy(dir, options, promptLength: 20, steps: 16);
    }
}
