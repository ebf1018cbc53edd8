using System.Runtime.InteropServices;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Synthetic checkpoints for the device model. The model helper's presets "tiny" (head_dim 16) and "small"
/// (head_dim 32) do not fit kern1's rope.cu (head_dim 64/128/256 only) and the grouped expert GEMM (H % 128 == 0),
/// so these keep their spirit at kernel-legal shapes: DeviceTiny (H 128, 2 layers with the second dense,
/// heads 4/2 x 64, 8 experts top-2, I 64, vocab 512) and DeviceSmall (H 256, 4 layers, heads 8/2 x 64, 32 experts
/// top-4, I 128, vocab 2048). Weights: the same scales as SyntheticCheckpoint (uniform std 1/sqrt(fan_in),
/// router and lm_head twice that, norms 1 +- 0.2, embeddings in [-1, 1]), from a fixed-seed generator.
/// </summary>
public static class DeviceCheckpoints
{
    static readonly object Gate = new();
    static readonly Dictionary<string, string> Cache = [];

    public static ModelConfig TinyConfig => new()
    {
        ModelType = "qwen3_moe", HiddenSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 64,
        NumExperts = 8, NumExpertsPerTok = 2, MoeIntermediateSize = 64, IntermediateSize = 128, MlpOnlyLayers = [1],
        NormTopkProb = true, RmsNormEps = 1e-6, RopeTheta = 1_000_000, VocabSize = 512, MaxPositionEmbeddings = 2048,
        BosTokenId = 1, EosTokenIds = [2], TorchDtype = "bfloat16",
    };

    public static ModelConfig SmallConfig => TinyConfig with
    {
        HiddenSize = 256, NumHiddenLayers = 4, NumAttentionHeads = 8, NumKeyValueHeads = 2, HeadDim = 64,
        NumExperts = 32, NumExpertsPerTok = 4, MoeIntermediateSize = 128, IntermediateSize = 512, MlpOnlyLayers = [],
        VocabSize = 2048, MaxPositionEmbeddings = 4096,
    };

    public static string Tiny() => Get("device-tiny", TinyConfig);
    public static string Small() => Get("device-small", SmallConfig);

    public static string Get(string name, ModelConfig config)
    {
        lock (Gate)
        {
            if (Cache.TryGetValue(name, out var dir)) return dir;
            dir = Path.Combine(Model.TestCheckpoints.Root, name);
            Write(config, dir);
            Cache[name] = dir;
            return dir;
        }
    }

    public static void Write(ModelConfig config, string dir)
    {
        config.Validate("device test config");
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, ModelConfig.FileName), config.ToJson());
        var plan = SyntheticCheckpoint.TensorPlan(config);
        SafetensorsWriter.WriteCheckpoint(dir, plan, (i, byteOffset, chunk) =>
        {
            var t = plan[i];
            bool norm = t.Name.EndsWith("norm.weight", StringComparison.Ordinal);
            float scale = norm ? 0.2f : t.Name == "model.embed_tokens.weight" ? 1f : MathF.Sqrt(3f / t.Shape[^1]);
            if (t.Name == "lm_head.weight" || t.Name.EndsWith("mlp.gate.weight", StringComparison.Ordinal)) scale *= 2;
            float offset = norm ? 1f : 0f;
            ulong seed = 0x9E3779B97F4A7C15UL * (ulong)(i + 1);
            var dest = MemoryMarshal.Cast<byte, ushort>(chunk);
            long first = byteOffset / 2;
            for (int j = 0; j < dest.Length; j++)
            {
                ulong z = seed + (ulong)(first + j) * 0xD1B54A32D192ED03UL;
                z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
                z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
                z ^= z >> 31;
                float u = (z >> 40) * (1.0f / (1 << 24));
                dest[j] = Bf16.FromFloat(offset + (2 * u - 1) * scale);
            }
        }, long.MaxValue);
    }
}
