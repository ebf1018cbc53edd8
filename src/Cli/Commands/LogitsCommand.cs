using Qwen3Cuda.Model;
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda logits --model DIR --tokens 1,2,3 [--device cpu] [--out FILE.bin | --top K [--json]]`:
/// one prefill of the token ids; writes the logits of every position, either as raw little-endian
/// float32 [tokens, vocab] to a file, or the top K ids per position (text, or JSON with --json).
/// </summary>
public static class LogitsCommand
{
    public static Command Create()
    {
        var model = new Option<string>("--model") { Description = "Checkpoint directory (config.json + safetensors)", Required = true };
        var tokens = new Option<string>("--tokens") { Description = "Comma-separated token ids, e.g. 1,2,3", Required = true };
        var device = new Option<string>("--device") { Description = "Backend: cpu (the C# reference), emulator (PTX emulator, slow), cuda, or auto (cuda when a GPU opens, else the emulator)", DefaultValueFactory = _ => "cpu" };
        var output = new Option<string?>("--out") { Description = "Write float32 little-endian logits [tokens, vocab] to this file" };
        var top = new Option<int?>("--top") { Description = "Print the K largest logits of every position (default 5 when --out is absent)" };
        var json = new Option<bool>("--json") { Description = "Print --top results as JSON" };
        var util = GpuMemoryCliOption.Create();
        var cmd = new Command("logits", "Logits of every position of one forward over the given token ids") { model, tokens, device, output, top, json, util };
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var stderr = parse.InvocationConfiguration.Error;
            try
            {
                return Run(parse.GetValue(model)!, parse.GetValue(tokens)!, parse.GetValue(device) ?? "cpu",
                    parse.GetValue(output), parse.GetValue(top), parse.GetValue(json), GpuMemoryCliOption.Parse(parse.GetValue(util)), stdout, stderr);
            }
            catch (Exception e) when (e is ConfigException or CheckpointException or ArgumentException or IOException or UnauthorizedAccessException
                                          or Model.Device.ModelDoesNotFitException)
            {
                stderr.WriteLine($"error: {CliErrors.Message(e)}");
                return 1;
            }
        });
        return cmd;
    }

    static int Run(string modelDir, string tokenText, string device, string? outFile, int? top, bool json, double? utilization, TextWriter stdout, TextWriter stderr)
    {
        int[] ids = ParseTokens(tokenText);
        if (top is int k && k < 1) throw new ArgumentException($"--top must be at least 1, got {k}");
        float[] logits;
        int vocab;
        if (device == "cpu")
        {
            using var m = ReferenceModel.Load(modelDir, maxSequences: 1, contextLength: Math.Max(ids.Length, 1));
            logits = m.ForwardAllLogits(0, ids);
            vocab = m.VocabSize;
        }
        else
        {
            // Device backends: one decode step per token gives every position's logits (the device model keeps only the last).
            using var m = ModelOpener.Open(modelDir, device, maxSequences: 1, contextLength: Math.Max(ids.Length, 16), stderr, utilization);
            vocab = m.VocabSize;
            logits = new float[(long)ids.Length * vocab];
            for (int i = 0; i < ids.Length; i++) m.Forward(0, ids.AsSpan(i, 1), logits.AsSpan(i * vocab, vocab));
        }
        if (outFile is not null)
        {
            using var fs = File.Create(outFile);
            fs.Write(System.Runtime.InteropServices.MemoryMarshal.AsBytes(logits.AsSpan()));
            if (top is null) { stdout.WriteLine($"wrote {ids.Length} x {vocab} float32 logits to {outFile}"); return 0; }
        }
        WriteTop(ids, logits, vocab, top ?? 5, json, stdout);
        return 0;
    }

    static int[] ParseTokens(string text)
    {
        var parts = text.Split(',', StringSplitOptions.TrimEntries);
        if (parts.Length == 0 || parts.All(p => p.Length == 0)) throw new ArgumentException("--tokens is empty");
        var ids = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out ids[i]))
                throw new ArgumentException($"--tokens: '{parts[i]}' is not a non-negative integer token id");
        return ids;
    }

    static void WriteTop(int[] ids, float[] logits, int vocab, int k, bool json, TextWriter stdout)
    {
        k = Math.Min(k, vocab);
        var positions = new List<object>();
        for (int t = 0; t < ids.Length; t++)
        {
            var rowCopy = logits.AsSpan(t * vocab, vocab).ToArray();
            var best = Enumerable.Range(0, vocab).OrderByDescending(i => rowCopy[i]).ThenBy(i => i).Take(k).ToArray();
            if (json) positions.Add(new { position = t, token = ids[t], top = best.Select(i => new { id = i, logit = rowCopy[i] }).ToArray() });
            else stdout.WriteLine($"{t,5} token {ids[t],7}: " + string.Join("  ", best.Select(i => $"{i}:{rowCopy[i].ToString("G6", CultureInfo.InvariantCulture)}")));
        }
        if (json) stdout.WriteLine(JsonSerializer.Serialize(positions, new JsonSerializerOptions { WriteIndented = false }));
    }
}
