using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli;

/// <summary>
/// Every option of every verb is made here, so that one name means one thing everywhere and every value is
/// checked while parsing, with a one-line message that names the option as typed (never a .NET type).
/// The naming scheme (llama.cpp's where it has one; old spellings stay as aliases):
/// <list type="bullet">
/// <item>-m/--model: a model folder, a Hugging Face repo id in the local cache, or demo;</item>
/// <item>-c/--ctx-size (alias --context): tokens of context per sequence;</item>
/// <item>--ids (alias --tokens on logits): token ids as a list; -p/--n-prompt and -n/--n-gen (bench, profile): token counts;</item>
/// <item>-p/--prompt TEXT and -f/--prompt-file F (generate), - meaning stdin; -n/--max-new-tokens (alias --n-predict);</item>
/// <item>-s/--seed, --temperature (alias --temp) and the other sampling options; --device; --gpu-memory or --gpu-memory-utilization.</item>
/// </list>
/// </summary>
public static class CliOptions
{
    /// <summary>The largest --ctx-size accepted at all (16 M tokens); the model's own limit only warns (see <see cref="ContextCheck"/>).</summary>
    public const int MaxContextTokens = 1 << 24;

    public const string ModelDescription =
        "Model: a folder with config.json, *.safetensors, tokenizer.json and tokenizer_config.json; a Hugging Face repo id " +
        "found in the local Hugging Face cache (e.g. Qwen/Qwen3-30B-A3B); or demo (a small random model with the real Qwen3 " +
        "tokenizer, made on first use: its text is meaningless)";

    public static Option<string> Model(bool required = true) =>
        new("--model", "-m") { Description = ModelDescription, Required = required, HelpName = "DIR|ORG/NAME|demo" };

    /// <summary>--device with the backends a verb supports; auto's meaning is the verb's (see its description).</summary>
    public static Option<string> Device(string defaultValue, string description, params string[] allowed) =>
        new("--device")
        {
            Description = description,
            DefaultValueFactory = _ => defaultValue,
            HelpName = string.Join("|", allowed),
            CustomParser = r =>
            {
                string v = Token(r).Trim().ToLowerInvariant();
                v = v switch { "gpu" => "cuda", "emu" => "emulator", _ => v };
                if (!allowed.Contains(v)) r.AddError($"{Name(r)}: '{Token(r)}' is not one of {string.Join(", ", allowed)}");
                return v;
            },
        };

    /// <summary>--max-num-seqs (vLLM's): requests running at once on the engine.</summary>
    public static Option<int> MaxNumSeqs() => Int("--max-num-seqs", [], "Requests running at once (sequences with KV pages; decode rows per step)", 64, 1, 4096);

    /// <summary>--max-num-batched-tokens (vLLM's): token rows per engine step (decode rows plus prefill chunks). Null: the backend's step size.</summary>
    public static Option<int?> MaxNumBatchedTokens() => NullableInt("--max-num-batched-tokens", [],
        "Token rows per step: decode rows plus prefill chunks (default: 2048 for serving; for generate/chat the backend's prefill chunk: on a GPU the largest of 2048, 1024, 512 that fits next to the weights and the context's KV cache, 64 on the emulator)", 1, 1 << 20);

    /// <summary>--max-num-batched-tokens / --prefill-chunk for profile and bench: the prefill chunk (token rows of one
    /// device step). Null: the prompt, at most 2048, halved down to 512 while the memory does not allow it.</summary>
    public static Option<int?> PrefillChunk() => NullableInt("--max-num-batched-tokens", ["--prefill-chunk"],
        $"Prefill chunk: token rows of one device step, 1 to {Qwen3Cuda.Model.Device.PrefillChunkSizing.MaxChunkTokens} (default: the prompt, at most {Qwen3Cuda.Model.Device.PrefillChunkSizing.DefaultMaxChunkTokens}, halved down to {Qwen3Cuda.Model.Device.PrefillChunkSizing.MinAutoChunkTokens} while it does not fit next to the weights and the context's KV cache)",
        1, Qwen3Cuda.Model.Device.PrefillChunkSizing.MaxChunkTokens);

    public static Option<int?> CtxSize() => NullableInt("--ctx-size", ["-c", "--context", "--max-model-len"],
        "Tokens of context per sequence, the longest a request may be (default: the model's max_position_embeddings; 4096 at most on the emulator). " +
        "The KV cache is one pool of pages shared by the sequences, sized from the memory left (docs/memory.md)", 1, MaxContextTokens, "N");

    public static Option<long?> GpuMemory() => new("--gpu-memory")
    {
        Description = "Device memory to plan for, e.g. 24GiB (default: the device's free memory)",
        HelpName = "BYTES",
        CustomParser = r =>
        {
            try
            {
                long v = ByteSize.Parse(Token(r), Name(r));
                if (v <= 0) r.AddError($"{Name(r)}: must be positive, got '{Token(r)}'");
                return v;
            }
            catch (FormatException e) { r.AddError(e.Message); return null; }
        },
    };

    /// <summary>
    /// --gpu-memory-utilization U (vLLM's name and meaning): the fraction of the device's total memory in use once the model
    /// is loaded; (1 - U) x total stays free. Default: keep max(1 GiB, 3% of total) free.
    /// </summary>
    public static Option<double?> GpuMemoryUtilization() => new("--gpu-memory-utilization")
    {
        Description = "Fraction of the device's total memory the model may fill, in (0, 1] (memory already in use counts against it; " +
                      "default: keep max(1 GiB, 3%) free). Device backends only",
        HelpName = "U",
        CustomParser = r =>
        {
            if (!double.TryParse(Token(r), NumberStyles.Float, CultureInfo.InvariantCulture, out double u) || !(u > 0 && u <= 1))
            {
                r.AddError($"{Name(r)}: '{Token(r)}' is not a fraction of the device's memory in (0, 1], e.g. 0.9");
                return null;
            }
            return u;
        },
    };

    /// <summary>--kv-cache-dtype bf16|fp8: how the KV cache stores K and V (docs/formats.md).</summary>
    public static Option<string> KvCacheDtype() => Choice("--kv-cache-dtype", [],
        "KV cache storage: bf16 (default) or fp8 (E4M3 codes of the bf16 values, per-layer scale 1: half the KV bytes)", "bf16", "bf16", "fp8");

    /// <summary>The <see cref="Qwen3Cuda.Runtime.Memory.KvCacheDtype"/> of a parsed --kv-cache-dtype value.</summary>
    public static Qwen3Cuda.Runtime.Memory.KvCacheDtype ParseKvCacheDtype(string? value) =>
        value == "fp8" ? Qwen3Cuda.Runtime.Memory.KvCacheDtype.Fp8 : Qwen3Cuda.Runtime.Memory.KvCacheDtype.Bf16;

    /// <summary>An int option with a default, checked against [min, max].</summary>
    public static Option<int> Int(string name, string[] aliases, string description, int defaultValue, int min, int max, string helpName = "N") =>
        new(name, aliases)
        {
            Description = description,
            DefaultValueFactory = _ => defaultValue,
            HelpName = helpName,
            CustomParser = r => ParseInt(r, min, max) ?? defaultValue,
        };

    public static Option<int?> NullableInt(string name, string[] aliases, string description, int min, int max, string helpName = "N") =>
        new(name, aliases) { Description = description, HelpName = helpName, CustomParser = r => ParseInt(r, min, max) };

    public static Option<double> Seconds(string name, string description, double defaultValue) => new(name)
    {
        Description = description,
        DefaultValueFactory = _ => defaultValue,
        HelpName = "S",
        CustomParser = r =>
        {
            if (!double.TryParse(Token(r), NumberStyles.Float, CultureInfo.InvariantCulture, out double v) || !(v > 0) || double.IsInfinity(v))
            {
                r.AddError($"{Name(r)}: '{Token(r)}' is not a positive number of seconds");
                return defaultValue;
            }
            return v;
        },
    };

    /// <summary>A choice among fixed words.</summary>
    public static Option<string> Choice(string name, string[] aliases, string description, string defaultValue, params string[] allowed) =>
        new(name, aliases)
        {
            Description = description,
            DefaultValueFactory = _ => defaultValue,
            HelpName = string.Join("|", allowed),
            CustomParser = r =>
            {
                string v = Token(r).Trim().ToLowerInvariant();
                if (!allowed.Contains(v)) r.AddError($"{Name(r)}: '{Token(r)}' is not one of {string.Join(", ", allowed)}");
                return v;
            },
        };

    /// <summary>An optional choice among fixed words (null when absent).</summary>
    public static Option<string?> NullableChoice(string name, string[] aliases, string description, params string[] allowed) =>
        new(name, aliases)
        {
            Description = description,
            HelpName = string.Join("|", allowed),
            CustomParser = r =>
            {
                string v = Token(r).Trim().ToLowerInvariant();
                if (!allowed.Contains(v)) r.AddError($"{Name(r)}: '{Token(r)}' is not one of {string.Join(", ", allowed)}");
                return v;
            },
        };

    internal static int? ParseInt(ArgumentResult r, int min, int max)
    {
        string t = Token(r);
        if (!long.TryParse(t, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out long v))
        {
            r.AddError($"{Name(r)}: '{t}' is not a whole number{Range(min, max)}");
            return null;
        }
        if (v < min || v > max)
        {
            r.AddError($"{Name(r)}: {t} is out of range{Range(min, max)}");
            return null;
        }
        return (int)v;
    }

    static string Range(long min, long max) => max == int.MaxValue ? $" (at least {min})" : $" ({min} to {max})";

    internal static string Token(ArgumentResult r) => r.Tokens.Count > 0 ? r.Tokens[^1].Value : "";

    /// <summary>The option as the user typed it (an alias stays an alias).</summary>
    internal static string Name(ArgumentResult r) =>
        r.Parent is OptionResult o ? o.IdentifierToken?.Value ?? o.Option.Name : r.Argument.Name;

    /// <summary>
    /// The context length a verb will use, checked against the model: beyond max_position_embeddings (times the YaRN
    /// factor when config.json has rope_scaling) positions were never trained, so it warns and says how to extend the
    /// context with YaRN; it does not refuse (the kernels and the reference run any length).
    /// </summary>
    public static void ContextCheck(int? ctx, Model.Config.ModelConfig config, TextWriter stderr)
    {
        if (ctx is not int n) return;
        double limit = config.MaxPositionEmbeddings * (config.RopeScaling?.Factor ?? 1.0);
        if (n <= limit) return;
        string why = config.RopeScaling is null
            ? $"the model's max_position_embeddings is {config.MaxPositionEmbeddings}"
            : $"the model's max_position_embeddings {config.MaxPositionEmbeddings} x rope_scaling factor {config.RopeScaling.Factor} is {limit:F0}";
        string yarn = config.RopeScaling is null
            ? "; Qwen3 reaches 131072 tokens with YaRN: add \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0, \"original_max_position_embeddings\": 32768} to config.json (see docs/model-formats.md)"
            : "; raise rope_scaling.factor in config.json for a longer context (see docs/model-formats.md)";
        stderr.WriteLine($"warning: --ctx-size {n} is beyond what the model was trained for ({why}): output degrades past that position{yarn}");
    }
}

/// <summary>The sampling and generation options of generate and chat; unset values come from the model's defaults.</summary>
sealed class SamplingCliOptions
{
    public readonly Option<float?> Temperature = Float("--temperature", ["--temp"], "Sampling temperature (0 = greedy)", v => new SamplingOptions { Temperature = v });
    public readonly Option<int?> TopK = CliOptions.NullableInt("--top-k", [], "Keep the K most likely tokens (0 = off)", 0, int.MaxValue, "K");
    public readonly Option<float?> TopP = Float("--top-p", [], "Nucleus sampling mass in (0, 1]", v => new SamplingOptions { TopP = v });
    public readonly Option<float?> MinP = Float("--min-p", [], "Drop tokens below this fraction of the most likely one, in [0, 1]", v => new SamplingOptions { MinP = v });
    public readonly Option<float?> PresencePenalty = Float("--presence-penalty", [], "Subtracted from logits of generated tokens, in [-2, 2]", v => new SamplingOptions { PresencePenalty = v });
    public readonly Option<float?> FrequencyPenalty = Float("--frequency-penalty", [], "Subtracted from logits of generated tokens once per occurrence, in [-2, 2]",
        v => { if (!(v >= -2 && v <= 2)) throw new ArgumentException($"--frequency-penalty must be in [-2, 2], got {v.ToString(CultureInfo.InvariantCulture)}"); });
    public readonly Option<float?> RepetitionPenalty = Float("--repetition-penalty", [], "Repetition penalty (> 0, 1 = off)", v => new SamplingOptions { RepetitionPenalty = v });
    public readonly Option<ulong?> Seed = new("--seed", "-s")
    {
        Description = "Random seed (0 to 18446744073709551615); the seed used is printed with the stats, so a run can be repeated",
        HelpName = "N",
        CustomParser = r =>
        {
            if (ulong.TryParse(CliOptions.Token(r), NumberStyles.None, CultureInfo.InvariantCulture, out ulong v)) return v;
            r.AddError($"{CliOptions.Name(r)}: '{CliOptions.Token(r)}' is not a whole number from 0 to 18446744073709551615");
            return null;
        },
    };
    public readonly Option<int> MaxNewTokens = CliOptions.Int("--max-new-tokens", ["-n", "--n-predict"], "Most tokens to generate per answer", 512, 1, 1 << 24);
    public readonly Option<string> Device = CliOptions.Device("auto",
        "auto (default): cuda when a GPU opens, else the CPU reference (says which on stderr) | cuda | cpu (the C# reference) | emulator (the CUDA kernels on the PTX emulator: for testing, 30-40x slower than cpu)",
        "auto", "cuda", "cpu", "emulator");
    public readonly Option<int?> Context = CliOptions.CtxSize();
    public readonly Option<int?> MaxNumBatchedTokens = CliOptions.MaxNumBatchedTokens();
    public readonly Option<long?> GpuMemory = CliOptions.GpuMemory();
    public readonly Option<double?> GpuMemoryUtilization = CliOptions.GpuMemoryUtilization();
    public readonly Option<string> KvCacheDtype = CliOptions.KvCacheDtype();
    public readonly Option<bool> NoThink = new("--no-think") { Description = "Disable thinking (enable_thinking=false in the chat template)" };
    public readonly Option<string[]> Stop = new("--stop")
    {
        Description = "Stop when the answer contains this text (repeat for several); the stop text is not printed",
        HelpName = "TEXT",
        AllowMultipleArgumentsPerToken = false,
    };

    /// <summary>A float option whose range rule is <see cref="SamplingOptions.Validate"/>'s (one rule for the library and the CLI).</summary>
    static Option<float?> Float(string name, string[] aliases, string description, Func<float, SamplingOptions> probe) =>
        Float(name, aliases, description, v => probe(v).Validate());

    /// <summary>A float option checked by <paramref name="check"/> (an <see cref="ArgumentException"/> naming the option).</summary>
    static Option<float?> Float(string name, string[] aliases, string description, Action<float> check) => new(name, aliases)
    {
        Description = description,
        HelpName = "X",
        CustomParser = r =>
        {
            string t = CliOptions.Token(r);
            if (!float.TryParse(t, NumberStyles.Float, CultureInfo.InvariantCulture, out float v) || !float.IsFinite(v))
            {
                r.AddError($"{CliOptions.Name(r)}: '{t}' is not a number");
                return null;
            }
            try { check(v); }
            catch (ArgumentException e) { r.AddError(e.Message.Replace(name, CliOptions.Name(r), StringComparison.Ordinal)); return null; }
            return v;
        },
    };

    public void AddTo(Command cmd)
    {
        foreach (var o in new Option[] { Temperature, TopK, TopP, MinP, PresencePenalty, FrequencyPenalty, RepetitionPenalty, Seed, MaxNewTokens, Stop, Device, Context, MaxNumBatchedTokens, GpuMemory, GpuMemoryUtilization, KvCacheDtype, NoThink })
            cmd.Options.Add(o);
    }

    /// <summary>How generate and chat load their model: one sequence, --ctx-size, --max-num-batched-tokens, the memory options.</summary>
    public Model.ModelLoadOptions LoadOptions(ParseResult p) => new()
    {
        MaxSequences = 1,
        MaxStepTokens = p.GetValue(MaxNumBatchedTokens),
        ContextLength = p.GetValue(Context),
        GpuMemoryBytes = p.GetValue(GpuMemory),
        GpuMemoryUtilization = p.GetValue(GpuMemoryUtilization),
        KvCacheDtype = CliOptions.ParseKvCacheDtype(p.GetValue(KvCacheDtype)),
    };

    /// <summary>The request options of one answer (raw tool-call text: the CLI shows what the model wrote).</summary>
    public Model.Serving.RequestOptions RequestOptions(ParseResult p, SamplingOptions sampling, bool thinking) => new()
    {
        Sampling = sampling,
        MaxNewTokens = p.GetValue(MaxNewTokens),
        FrequencyPenalty = p.GetValue(FrequencyPenalty) ?? 0f,
        Stop = StopStrings(p),
        EnableThinking = thinking,
        ParseToolCalls = false,
    };

    /// <summary>The sampling options: the command line over the model's defaults, with a seed always chosen (and so printable).</summary>
    public SamplingOptions Sampling(ParseResult p, string modelDir, bool thinking, ulong seed)
    {
        var d = SamplingOptions.DefaultsFor(modelDir, thinking);
        var o = d with
        {
            Temperature = p.GetValue(Temperature) ?? d.Temperature,
            TopK = p.GetValue(TopK) ?? d.TopK,
            TopP = p.GetValue(TopP) ?? d.TopP,
            MinP = p.GetValue(MinP) ?? d.MinP,
            PresencePenalty = p.GetValue(PresencePenalty) ?? d.PresencePenalty,
            RepetitionPenalty = p.GetValue(RepetitionPenalty) ?? d.RepetitionPenalty,
            Seed = seed,
        };
        o.Validate();
        return o;
    }

    /// <summary>--seed, else a random one (printed with the stats so the run can be repeated).</summary>
    public ulong ChooseSeed(ParseResult p) => p.GetValue(Seed) ?? (ulong)Random.Shared.NextInt64(0, 1L << 53);

    public IReadOnlyList<string> StopStrings(ParseResult p) =>
        p.GetValue(Stop) is { } s ? s.Where(x => x.Length > 0).ToArray() : [];
}
