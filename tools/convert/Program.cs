using Qwen3Cuda.Model.Checkpoint;

namespace Qwen3Cuda.ConvertTool;

/// <summary>
/// qwen3cuda-convert: checkpoint tooling. Verbs:
///   synth --preset tiny|small|real-shape-slice --seed N --out DIR [--layers L] [--mlp-only-layers 0,2] [--dense] [--max-shard-bytes B]
/// writes a deterministic random Hugging Face style checkpoint (see SyntheticCheckpoint).
/// </summary>
public static class Program
{
    const string Usage = "usage: qwen3cuda-convert synth --preset tiny|small|real-shape-slice --seed N --out DIR [--layers L] [--mlp-only-layers 0,2] [--dense] [--max-shard-bytes B]";

    public static int Main(string[] args)
    {
        try { return Run(args, Console.Out); }
        catch (Exception e) when (e is ArgumentException or IOException or UnauthorizedAccessException or CheckpointException or Qwen3Cuda.Model.Config.ConfigException)
        {
            Console.Error.WriteLine($"error: {e.Message}");
            return 1;
        }
    }

    public static int Run(string[] args, TextWriter stdout)
    {
        if (args.Length == 0 || args[0] is "-h" or "--help") { stdout.WriteLine(Usage); return args.Length == 0 ? 1 : 0; }
        if (args[0] != "synth") throw new ArgumentException($"unknown verb '{args[0]}'. {Usage}");
        var opts = new Dictionary<string, string?>();
        for (int i = 1; i < args.Length; i++)
        {
            string a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal)) throw new ArgumentException($"unexpected argument '{a}'. {Usage}");
            if (a == "--dense") { opts[a] = null; continue; }
            if (i + 1 >= args.Length) throw new ArgumentException($"{a} needs a value. {Usage}");
            opts[a] = args[++i];
        }
        foreach (var k in opts.Keys)
            if (k is not ("--preset" or "--seed" or "--out" or "--layers" or "--mlp-only-layers" or "--dense" or "--max-shard-bytes"))
                throw new ArgumentException($"unknown option {k}. {Usage}");
        string presetText = opts.GetValueOrDefault("--preset") ?? throw new ArgumentException($"--preset is required. {Usage}");
        if (!SyntheticCheckpoint.TryParsePreset(presetText, out var preset))
            throw new ArgumentException($"--preset '{presetText}' is not one of tiny, small, real-shape-slice");
        string outDir = opts.GetValueOrDefault("--out") ?? throw new ArgumentException($"--out is required. {Usage}");
        ulong seed = ParseULong(opts.GetValueOrDefault("--seed") ?? "1", "--seed");
        int? layers = opts.TryGetValue("--layers", out var l) ? (int)ParseULong(l!, "--layers", 1, 1024) : null;
        long? maxShard = opts.TryGetValue("--max-shard-bytes", out var ms) ? (long)ParseULong(ms!, "--max-shard-bytes", 1, long.MaxValue) : null;
        int[]? mlpOnly = opts.TryGetValue("--mlp-only-layers", out var mo)
            ? mo!.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(s => (int)ParseULong(s, "--mlp-only-layers", 0, 1023)).ToArray()
            : null;
        var result = SyntheticCheckpoint.Write(new SyntheticOptions
        {
            Preset = preset, Seed = seed, Layers = layers, MlpOnlyLayers = mlpOnly, Dense = opts.ContainsKey("--dense"), MaxShardBytes = maxShard,
        }, outDir);
        stdout.WriteLine($"wrote {presetText} (seed {seed}, {result.Config.NumHiddenLayers} layers) to {outDir}: {string.Join(", ", result.Files)}");
        stdout.WriteLine($"tokenizer: {result.TokenizerNote}");
        return 0;
    }

    static ulong ParseULong(string text, string name, ulong min = 0, ulong max = ulong.MaxValue)
    {
        if (!ulong.TryParse(text, out ulong v) || v < min || v > max) throw new ArgumentException($"{name} '{text}' must be an integer in [{min}, {max}]");
        return v;
    }
}
