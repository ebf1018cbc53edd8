using System.Text;
using System.Text.Json;

namespace Qwen3Cuda.Model.Config;

/// <summary>
/// A typed, validated Hugging Face config.json for model_type "qwen3_moe" (mixture of experts) or
/// "qwen3" (dense: a SwiGLU MLP of intermediate_size in every layer). Build with <see cref="Load"/> or
/// <see cref="Parse"/>; every error names the file and field.
/// </summary>
public sealed record ModelConfig
{
    public const string FileName = "config.json";

    public string ModelType { get; init; } = "qwen3_moe";
    public int HiddenSize { get; init; }                 // H
    public int NumHiddenLayers { get; init; }            // L
    public int NumAttentionHeads { get; init; }          // nH
    public int NumKeyValueHeads { get; init; }           // nKV
    public int HeadDim { get; init; }                    // D (config.json head_dim; default H / nH)
    public int NumExperts { get; init; }                 // E (0 for dense models)
    public int NumExpertsPerTok { get; init; }           // K
    public int MoeIntermediateSize { get; init; }        // I (per expert)
    public int IntermediateSize { get; init; }           // dense-layer MLP width
    public IReadOnlyList<int> MlpOnlyLayers { get; init; } = Array.Empty<int>();
    public int DecoderSparseStep { get; init; } = 1;
    public bool NormTopkProb { get; init; }              // transformers default: false
    public double RmsNormEps { get; init; } = 1e-6;
    public double RopeTheta { get; init; } = 10000.0;
    public RopeScalingConfig? RopeScaling { get; init; }
    public int MaxPositionEmbeddings { get; init; }
    public int VocabSize { get; init; }                  // V
    public bool TieWordEmbeddings { get; init; }
    public int? BosTokenId { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = Array.Empty<int>();
    public string? TorchDtype { get; init; }
    /// <summary>config.json quantization_config (null: a plain bf16 checkpoint); see Checkpoint.CheckpointFormat.</summary>
    public QuantizationConfig? Quantization { get; init; }

    public bool IsMoeModel => ModelType == "qwen3_moe" && NumExperts > 0;
    public int QueryDim => NumAttentionHeads * HeadDim;       // nH*D
    public int KeyValueDim => NumKeyValueHeads * HeadDim;     // nKV*D
    public int QueriesPerKeyValueHead => NumAttentionHeads / NumKeyValueHeads;

    /// <summary>A layer is MoE iff it is not in mlp_only_layers, E &gt; 0 and (l + 1) % decoder_sparse_step == 0.</summary>
    public bool IsMoeLayer(int layer)
    {
        if ((uint)layer >= (uint)NumHiddenLayers) throw new ArgumentOutOfRangeException(nameof(layer));
        if (ModelType != "qwen3_moe" || NumExperts <= 0) return false;
        foreach (int l in MlpOnlyLayers) if (l == layer) return false;
        return (layer + 1) % DecoderSparseStep == 0;
    }

    public static ModelConfig Load(string modelDirOrFile)
    {
        if (!Directory.Exists(modelDirOrFile) && !File.Exists(modelDirOrFile))
            throw new ConfigException($"{modelDirOrFile}: model directory not found");
        string path = Directory.Exists(modelDirOrFile) ? Path.Combine(modelDirOrFile, FileName) : modelDirOrFile;
        if (!File.Exists(path))
            throw new ConfigException($"{path}: file not found (a model folder holds config.json, the *.safetensors weights, tokenizer.json and tokenizer_config.json)");
        string text;
        try { text = File.ReadAllText(path); }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException) { throw new ConfigException($"{path}: cannot read: {e.Message}", e); }
        if (string.IsNullOrWhiteSpace(text)) throw new ConfigException($"{path}: the file is empty");
        return Parse(text, path);
    }

    /// <summary>Parses and validates config.json text; <paramref name="fileName"/> prefixes error messages.</summary>
    public static ModelConfig Parse(string json, string fileName = FileName)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = false, MaxDepth = 32 }); }
        catch (JsonException e) { throw new ConfigException($"{fileName}: not valid JSON: {e.Message}", e); }
        using (doc)
        {
            var r = new Reader(doc.RootElement, fileName);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new ConfigException($"{fileName}: top level must be a JSON object");
            string modelType = r.String("model_type") ?? throw r.Missing("model_type");
            if (modelType != "qwen3_moe" && modelType != "qwen3")
                throw new ConfigException($"{fileName}: model_type '{modelType}' is not supported (supported: qwen3_moe, qwen3)");
            bool moe = modelType == "qwen3_moe";
            int hidden = r.RequiredInt("hidden_size");
            int heads = r.RequiredInt("num_attention_heads");
            int? headDim = r.Int("head_dim");
            if (headDim is null)
            {
                if (heads <= 0) throw new ConfigException($"{fileName}: num_attention_heads ({heads}) must be positive");
                if (hidden % heads != 0)
                    throw new ConfigException($"{fileName}: head_dim is absent and hidden_size ({hidden}) is not a multiple of num_attention_heads ({heads})");
                headDim = hidden / heads;
            }
            if (r.Bool("attention_bias") == true) throw new ConfigException($"{fileName}: attention_bias true is not supported");
            if (r.Bool("use_sliding_window") == true) throw new ConfigException($"{fileName}: use_sliding_window true is not supported");
            var cfg = new ModelConfig
            {
                ModelType = modelType,
                HiddenSize = hidden,
                NumHiddenLayers = r.RequiredInt("num_hidden_layers"),
                NumAttentionHeads = heads,
                NumKeyValueHeads = r.Int("num_key_value_heads") ?? heads,
                HeadDim = headDim.Value,
                NumExperts = moe ? r.RequiredInt("num_experts") : 0,
                NumExpertsPerTok = moe ? r.RequiredInt("num_experts_per_tok") : 0,
                MoeIntermediateSize = moe ? r.RequiredInt("moe_intermediate_size") : 0,
                IntermediateSize = r.Int("intermediate_size") ?? 0,
                MlpOnlyLayers = r.IntList("mlp_only_layers") ?? Array.Empty<int>(),
                DecoderSparseStep = r.Int("decoder_sparse_step") ?? 1,
                NormTopkProb = r.Bool("norm_topk_prob") ?? false,
                RmsNormEps = r.Double("rms_norm_eps") ?? 1e-6,
                RopeTheta = r.Double("rope_theta") ?? 10000.0,
                RopeScaling = ParseRopeScaling(doc.RootElement, fileName),
                MaxPositionEmbeddings = r.RequiredInt("max_position_embeddings"),
                VocabSize = r.RequiredInt("vocab_size"),
                TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false,
                BosTokenId = r.Int("bos_token_id"),
                EosTokenIds = r.IntOrIntList("eos_token_id") ?? Array.Empty<int>(),
                TorchDtype = r.String("torch_dtype") ?? r.String("dtype"),
                Quantization = QuantizationConfig.Parse(doc.RootElement, fileName),
            };
            cfg.Validate(fileName);
            return cfg;
        }
    }

    static RopeScalingConfig? ParseRopeScaling(JsonElement root, string fileName)
    {
        if (!root.TryGetProperty("rope_scaling", out var rs) || rs.ValueKind == JsonValueKind.Null) return null;
        if (rs.ValueKind != JsonValueKind.Object) throw new ConfigException($"{fileName}: rope_scaling must be null or an object");
        var r = new Reader(rs, fileName, "rope_scaling.");
        string? type = r.String("rope_type") ?? r.String("type");
        if (type is null) throw new ConfigException($"{fileName}: rope_scaling has neither rope_type nor type");
        if (type == "default") return null;
        if (type != "yarn" && type != "dynamic")
            throw new ConfigException($"{fileName}: rope_scaling type '{type}' is not supported (supported: default, yarn, dynamic)");
        return new RopeScalingConfig
        {
            RopeType = type,
            Factor = r.Double("factor") ?? throw r.Missing("factor"),
            OriginalMaxPositionEmbeddings = r.Int("original_max_position_embeddings"),
            BetaFast = r.Double("beta_fast") ?? 32.0,
            BetaSlow = r.Double("beta_slow") ?? 1.0,
            AttentionFactor = r.Double("attention_factor"),
            Mscale = r.Double("mscale"),
            MscaleAllDim = r.Double("mscale_all_dim"),
            Truncate = r.Bool("truncate") ?? true,
        };
    }

    /// <summary>Throws <see cref="ConfigException"/> naming the first invalid field.</summary>
    public void Validate(string fileName = FileName)
    {
        void Check(bool ok, string message) { if (!ok) throw new ConfigException($"{fileName}: {message}"); }
        void Range(string field, long value, long min, long max) =>
            Check(value >= min && value <= max, $"{field} ({value}) must be in [{min}, {max}]");
        Range("hidden_size", HiddenSize, 1, 1 << 16);
        Range("num_hidden_layers", NumHiddenLayers, 1, 1024);
        Range("num_attention_heads", NumAttentionHeads, 1, 1024);
        Range("num_key_value_heads", NumKeyValueHeads, 1, 1024);
        Check(NumAttentionHeads % NumKeyValueHeads == 0,
            $"num_attention_heads ({NumAttentionHeads}) must be a multiple of num_key_value_heads ({NumKeyValueHeads})");
        Range("head_dim", HeadDim, 2, 1024);
        Check(HeadDim % 2 == 0, $"head_dim ({HeadDim}) must be even (rotary embedding pairs i with i + head_dim/2)");
        Range("vocab_size", VocabSize, 1, 1 << 24);
        Range("max_position_embeddings", MaxPositionEmbeddings, 1, 1 << 24);
        Range("decoder_sparse_step", DecoderSparseStep, 1, 1024);
        Check(double.IsFinite(RmsNormEps) && RmsNormEps > 0 && RmsNormEps < 1, $"rms_norm_eps ({RmsNormEps}) must be in (0, 1)");
        Check(double.IsFinite(RopeTheta) && RopeTheta > 1, $"rope_theta ({RopeTheta}) must be a finite number > 1");
        if (ModelType == "qwen3_moe")
        {
            Range("num_experts", NumExperts, 0, 4096);
            if (NumExperts > 0)
            {
                Range("num_experts_per_tok", NumExpertsPerTok, 1, NumExperts);
                Range("moe_intermediate_size", MoeIntermediateSize, 1, 1 << 18);
            }
        }
        var seen = new HashSet<int>();
        foreach (int l in MlpOnlyLayers)
        {
            Check(l >= 0 && l < NumHiddenLayers, $"mlp_only_layers entry {l} is not a layer index in [0, {NumHiddenLayers - 1}]");
            Check(seen.Add(l), $"mlp_only_layers lists layer {l} twice");
        }
        bool anyDense = false;
        for (int l = 0; l < NumHiddenLayers; l++) anyDense |= !IsMoeLayer(l);
        if (anyDense) Range("intermediate_size", IntermediateSize, 1, 1 << 18);
        if (BosTokenId is int bos) Range("bos_token_id", bos, 0, VocabSize - 1);
        foreach (int eos in EosTokenIds) Range("eos_token_id", eos, 0, VocabSize - 1);
        if (TorchDtype is not null)
            Check(TorchDtype is "bfloat16" or "float16" or "float32",
                $"torch_dtype '{TorchDtype}' is not supported (supported: bfloat16, float16, float32)");
        if (RopeScaling is { } y)
        {
            Check(double.IsFinite(y.Factor) && y.Factor >= 1 && y.Factor <= 1024, $"rope_scaling.factor ({y.Factor}) must be in [1, 1024]");
            if (y.OriginalMaxPositionEmbeddings is int o) Range("rope_scaling.original_max_position_embeddings", o, 1, 1 << 24);
            Check(double.IsFinite(y.BetaFast) && y.BetaFast > 0, $"rope_scaling.beta_fast ({y.BetaFast}) must be positive");
            Check(double.IsFinite(y.BetaSlow) && y.BetaSlow > 0, $"rope_scaling.beta_slow ({y.BetaSlow}) must be positive");
            if (y.AttentionFactor is double af) Check(double.IsFinite(af) && af > 0, $"rope_scaling.attention_factor ({af}) must be positive");
        }
    }

    /// <summary>Writes this config as a Hugging Face style config.json (used by the synthetic checkpoints).</summary>
    public string ToJson()
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartArray("architectures");
            w.WriteStringValue(ModelType == "qwen3_moe" ? "Qwen3MoeForCausalLM" : "Qwen3ForCausalLM");
            w.WriteEndArray();
            w.WriteString("model_type", ModelType);
            w.WriteBoolean("attention_bias", false);
            w.WriteNumber("attention_dropout", 0.0);
            if (BosTokenId is int bos) w.WriteNumber("bos_token_id", bos);
            if (EosTokenIds.Count == 1) w.WriteNumber("eos_token_id", EosTokenIds[0]);
            else if (EosTokenIds.Count > 1) { w.WriteStartArray("eos_token_id"); foreach (int e in EosTokenIds) w.WriteNumberValue(e); w.WriteEndArray(); }
            w.WriteString("hidden_act", "silu");
            w.WriteNumber("hidden_size", HiddenSize);
            w.WriteNumber("head_dim", HeadDim);
            w.WriteNumber("initializer_range", 0.02);
            w.WriteNumber("intermediate_size", IntermediateSize);
            w.WriteNumber("max_position_embeddings", MaxPositionEmbeddings);
            w.WriteNumber("num_attention_heads", NumAttentionHeads);
            w.WriteNumber("num_hidden_layers", NumHiddenLayers);
            w.WriteNumber("num_key_value_heads", NumKeyValueHeads);
            if (ModelType == "qwen3_moe")
            {
                w.WriteNumber("decoder_sparse_step", DecoderSparseStep);
                w.WriteStartArray("mlp_only_layers"); foreach (int l in MlpOnlyLayers) w.WriteNumberValue(l); w.WriteEndArray();
                w.WriteNumber("moe_intermediate_size", MoeIntermediateSize);
                w.WriteBoolean("norm_topk_prob", NormTopkProb);
                w.WriteNumber("num_experts", NumExperts);
                w.WriteNumber("num_experts_per_tok", NumExpertsPerTok);
                w.WriteBoolean("output_router_logits", false);
                w.WriteNumber("router_aux_loss_coef", 0.001);
            }
            w.WriteNumber("rms_norm_eps", RmsNormEps);
            if (RopeScaling is { } y)
            {
                w.WriteStartObject("rope_scaling");
                w.WriteString("rope_type", y.RopeType);
                w.WriteNumber("factor", y.Factor);
                if (y.OriginalMaxPositionEmbeddings is int o) w.WriteNumber("original_max_position_embeddings", o);
                if (!y.IsDynamic)
                {
                    w.WriteNumber("beta_fast", y.BetaFast);
                    w.WriteNumber("beta_slow", y.BetaSlow);
                    if (y.AttentionFactor is double af) w.WriteNumber("attention_factor", af);
                }
                w.WriteEndObject();
            }
            else w.WriteNull("rope_scaling");
            w.WriteNumber("rope_theta", RopeTheta);
            w.WriteBoolean("tie_word_embeddings", TieWordEmbeddings);
            if (TorchDtype is not null) w.WriteString("torch_dtype", TorchDtype);
            Quantization?.Write(w);
            w.WriteBoolean("use_cache", true);
            w.WriteBoolean("use_sliding_window", false);
            w.WriteNumber("vocab_size", VocabSize);
            w.WriteEndObject();
        }
        return Encoding.UTF8.GetString(ms.ToArray());
    }

    /// <summary>Typed field access with error messages naming the file and field.</summary>
    readonly struct Reader(JsonElement obj, string file, string prefix = "")
    {
        public ConfigException Missing(string field) => new($"{file}: required field {prefix}{field} is missing");
        ConfigException Wrong(string field, string expected, JsonElement e) =>
            new($"{file}: {prefix}{field} must be {expected}, got {Describe(e)}");

        static string Describe(JsonElement e) => e.ValueKind switch
        {
            JsonValueKind.String => $"string \"{e.GetString()}\"",
            JsonValueKind.Number => $"number {e.GetRawText()}",
            _ => e.ValueKind.ToString().ToLowerInvariant(),
        };

        bool TryGet(string field, out JsonElement e) =>
            obj.TryGetProperty(field, out e) && e.ValueKind != JsonValueKind.Null;

        public int RequiredInt(string field) => Int(field) ?? throw Missing(field);

        public int? Int(string field) => TryGet(field, out var e) ? AsInt(field, e) : null;

        int AsInt(string field, JsonElement e)
        {
            if (e.ValueKind != JsonValueKind.Number) throw Wrong(field, "an integer", e);
            if (e.TryGetInt32(out int v)) return v;
            if (e.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue) return (int)d;
            throw Wrong(field, "an integer that fits in 32 bits", e);
        }

        public double? Double(string field)
        {
            if (!TryGet(field, out var e)) return null;
            if (e.ValueKind != JsonValueKind.Number || !e.TryGetDouble(out double d)) throw Wrong(field, "a number", e);
            return d;
        }

        public bool? Bool(string field)
        {
            if (!TryGet(field, out var e)) return null;
            return e.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Wrong(field, "true or false", e),
            };
        }

        public string? String(string field)
        {
            if (!TryGet(field, out var e)) return null;
            if (e.ValueKind != JsonValueKind.String) throw Wrong(field, "a string", e);
            return e.GetString();
        }

        public int[]? IntList(string field)
        {
            if (!TryGet(field, out var e)) return null;
            if (e.ValueKind != JsonValueKind.Array) throw Wrong(field, "a list of integers", e);
            var list = new List<int>();
            foreach (var item in e.EnumerateArray()) list.Add(AsInt(field, item));
            return list.ToArray();
        }

        public int[]? IntOrIntList(string field)
        {
            if (!TryGet(field, out var e)) return null;
            return e.ValueKind == JsonValueKind.Array ? IntList(field) : new[] { AsInt(field, e) };
        }
    }
}
