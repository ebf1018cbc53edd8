using System.Text.Json;

namespace Qwen3Cuda.Model.Config;

/// <summary>
/// config.json "quantization_config" as written by transformers-compatible quantizers, parsed but not judged:
/// which of these the runtime can load is decided by <see cref="Checkpoint.CheckpointFormat"/> (its table of formats).
/// Fields absent from the file are null.
/// </summary>
public sealed record QuantizationConfig
{
    /// <summary>"fp8", "gptq", "awq", "compressed-tensors", ...</summary>
    public string QuantMethod { get; init; } = "";
    /// <summary>fp8: "e4m3" or "e5m2".</summary>
    public string? Fmt { get; init; }
    /// <summary>fp8: [block rows, block cols] of one weight_scale_inv entry (e.g. [128, 128]); null: per tensor.</summary>
    public IReadOnlyList<int>? WeightBlockSize { get; init; }
    /// <summary>fp8: "dynamic" or "static" activation scales (activations stay bf16 here either way).</summary>
    public string? ActivationScheme { get; init; }
    /// <summary>gptq: bits per weight (2, 3, 4, 8).</summary>
    public int? Bits { get; init; }
    /// <summary>gptq: weights per scale along K (-1: one group per column, i.e. per output channel).</summary>
    public int? GroupSize { get; init; }
    /// <summary>gptq: act-order (g_idx not monotone).</summary>
    public bool? DescAct { get; init; }
    /// <summary>gptq: symmetric quantization.</summary>
    public bool? Sym { get; init; }
    /// <summary>gptq: "gptq" (v1, zeros stored minus one) or "gptq_v2".</summary>
    public string? CheckpointFormat { get; init; }
    /// <summary>Module names (or name fragments) left unquantized.</summary>
    public IReadOnlyList<string>? ModulesToNotConvert { get; init; }

    internal static QuantizationConfig? Parse(JsonElement root, string fileName)
    {
        if (!root.TryGetProperty("quantization_config", out var q) || q.ValueKind == JsonValueKind.Null) return null;
        if (q.ValueKind != JsonValueKind.Object) throw new ConfigException($"{fileName}: quantization_config must be an object");
        ConfigException Wrong(string field, string expected) => new($"{fileName}: quantization_config.{field} must be {expected}");
        bool Has(string f, out JsonElement e) => q.TryGetProperty(f, out e) && e.ValueKind != JsonValueKind.Null;
        string? Str(string f) => !Has(f, out var e) ? null : e.ValueKind == JsonValueKind.String ? e.GetString() : throw Wrong(f, "a string");
        int? Int(string f) => !Has(f, out var e) ? null : e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int v) ? v : throw Wrong(f, "an integer");
        bool? Bool(string f) => !Has(f, out var e) ? null : e.ValueKind switch
        {
            JsonValueKind.True => true,
            JsonValueKind.False => false,
            _ => throw Wrong(f, "true or false"),
        };
        IReadOnlyList<T>? List<T>(string f, JsonValueKind kind, Func<JsonElement, T> read, string expected)
        {
            if (!Has(f, out var e)) return null;
            if (e.ValueKind != JsonValueKind.Array) throw Wrong(f, expected);
            var list = new List<T>();
            foreach (var item in e.EnumerateArray())
            {
                if (item.ValueKind != kind) throw Wrong(f, expected);
                list.Add(read(item));
            }
            return list;
        }
        return new QuantizationConfig
        {
            QuantMethod = Str("quant_method") ?? throw new ConfigException($"{fileName}: quantization_config has no quant_method"),
            Fmt = Str("fmt"),
            WeightBlockSize = List("weight_block_size", JsonValueKind.Number,
                e => e.TryGetInt32(out int v) ? v : throw Wrong("weight_block_size", "a list of integers"), "a list of integers"),
            ActivationScheme = Str("activation_scheme"),
            Bits = Int("bits"),
            GroupSize = Int("group_size"),
            DescAct = Bool("desc_act"),
            Sym = Bool("sym"),
            CheckpointFormat = Str("checkpoint_format"),
            ModulesToNotConvert = List("modules_to_not_convert", JsonValueKind.String, e => e.GetString()!, "a list of strings"),
        };
    }

    internal void Write(Utf8JsonWriter w)
    {
        w.WriteStartObject("quantization_config");
        w.WriteString("quant_method", QuantMethod);
        if (Fmt is not null) w.WriteString("fmt", Fmt);
        if (WeightBlockSize is not null) { w.WriteStartArray("weight_block_size"); foreach (int b in WeightBlockSize) w.WriteNumberValue(b); w.WriteEndArray(); }
        if (ActivationScheme is not null) w.WriteString("activation_scheme", ActivationScheme);
        if (Bits is int bits) w.WriteNumber("bits", bits);
        if (GroupSize is int g) w.WriteNumber("group_size", g);
        if (DescAct is bool d) w.WriteBoolean("desc_act", d);
        if (Sym is bool s) w.WriteBoolean("sym", s);
        if (CheckpointFormat is not null) w.WriteString("checkpoint_format", CheckpointFormat);
        if (ModulesToNotConvert is not null) { w.WriteStartArray("modules_to_not_convert"); foreach (var m in ModulesToNotConvert) w.WriteStringValue(m); w.WriteEndArray(); }
        w.WriteEndObject();
    }
}
