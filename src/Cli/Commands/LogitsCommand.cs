using Qwen3Cuda.Model;
using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda logits -m MODEL --ids 1,2,3 [--device cpu] [--out FILE.bin | --top K [--json]]`:
/// one prefill of the token ids; writes the logits of every position, either as raw little-endian
/// float32 [tokens, vocab] to a file, or the top K ids per position (text, or JSON with --json).
/// </summary>
public static class LogitsCommand
{
    public static Command Create()
    {
        var model = CliOptions.Model();
        var ids = new Option<string>("--ids", "--tokens") { Description = "Comma-separated token ids, e.g. 1,2,3", Required = true, HelpName = "IDS" };
        var device = CliOptions.Device("cpu", "cpu (default: the C# reference) | emulator (PTX emulator, slow) | cuda | auto (cuda when a GPU opens, else the emulator)",
            "cpu", "emulator", "cuda", "auto");
        var output = new Option<string?>("--out") { Description = "Write float32 little-endian logits [tokens, vocab] to this file", HelpName = "FILE" };
        var top = CliOptions.NullableInt("--top", [], "Print the K largest logits of every position (default 5 when --out is absent)", 1, int.MaxValue, "K");
        var json = new Option<bool>("--json") { Description = "Print --top results as JSON" };
        var util = CliOptions.GpuMemoryUtilization();
        var cmd = new Command("logits", "Logits of every position of one forward over the given token ids") { model, ids, device, output, top, json, util };
        cmd.SetAction(parse => Run(parse.GetValue(model)!, parse.GetValue(ids)!, parse.GetResult(ids)?.IdentifierToken?.Value ?? "--ids", parse.GetValue(device)!, parse.GetValue(output), parse.GetValue(top),
            parse.GetValue(json), parse.GetValue(util), parse.InvocationConfiguration.Output, parse.InvocationConfiguration.Error));
        return cmd;
    }

    static int Run(string modelSpec, string idText, string idOption, string device, string? outFile, int? top, bool json, double? utilization, TextWriter stdout, TextWriter stderr)
    {
        int[] ids = DetokenizeCommand.ParseIds(idText, idOption);
        string modelDir = ModelOpener.Resolve(modelSpec, stderr);
        var backend = ModelOpener.ChooseBackend(device, stderr, autoFallback: BackendKind.Emulator);
        var config = ModelConfig.Load(modelDir);
        foreach (int id in ids)
            if (id >= config.VocabSize) throw new UsageException($"{idOption}: token id {id} is outside the vocabulary (0..{config.VocabSize - 1})");
        float[] logits;
        int vocab = config.VocabSize;
        if (backend == BackendKind.Cpu)
        {
            if (utilization is not null) throw new UsageException("--gpu-memory-utilization plans device memory; --device cpu has none (drop it, or use --device cuda or emulator)");
            using var m = ReferenceModel.Load(modelDir, maxSequences: 1, contextLength: Math.Max(ids.Length, 1));
            logits = m.ForwardAllLogits(0, ids);
        }
        else
        {
            // Device backends: one decode step per token gives every position's logits (the device model keeps only the last).
            using var m = ModelOpener.Open(modelDir, backend, maxSequences: 1, contextLength: Math.Max(ids.Length, 16), gpuMemoryBytes: null, stderr, utilization);
            logits = new float[(long)ids.Length * vocab];
            for (int i = 0; i < ids.Length; i++) m.Model.Forward(0, ids.AsSpan(i, 1), logits.AsSpan(i * vocab, vocab));
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
