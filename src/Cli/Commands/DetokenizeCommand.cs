using System.CommandLine;
using System.Globalization;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>`qwen3cuda detokenize -m MODEL --ids 1,2,3 [--skip-special-tokens]`: prints the decoded text exactly (no newline added).</summary>
public static class DetokenizeCommand
{
    public static Command Create()
    {
        var model = CliOptions.Model();
        var ids = new Option<string>("--ids") { Description = "Comma-separated token ids, e.g. 9707,1879 (a JSON array also works)", Required = true, HelpName = "IDS" };
        var skip = new Option<bool>("--skip-special-tokens") { Description = "Leave out special tokens such as <|im_end|>" };
        var cmd = new Command("detokenize", "Decode token ids to text with the model's tokenizer") { model, ids, skip };
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var tokenizer = Qwen3Tokenizer.FromModelDirectory(ModelOpener.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error));
            var parsed = ParseIds(parse.GetValue(ids)!, "--ids", tokenizer.VocabSize);
            stdout.Write(tokenizer.Decode(parsed, parse.GetValue(skip)));
            stdout.Flush();
            return 0;
        });
        return cmd;
    }

    /// <summary>Token ids from "1,2,3" or "[1, 2, 3]", each checked against the vocabulary when <paramref name="vocabSize"/> is given.</summary>
    internal static int[] ParseIds(string text, string option, int? vocabSize = null)
    {
        var parts = text.Trim().TrimStart('[').TrimEnd(']').Split(',', StringSplitOptions.TrimEntries);
        if (parts.All(p => p.Length == 0)) throw new UsageException($"{option} is empty: give token ids such as 9707,1879");
        var result = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out result[i]))
                throw new UsageException($"{option}: '{parts[i]}' is not a non-negative integer token id");
            if (vocabSize is int v && result[i] >= v) throw new UsageException($"{option}: token id {result[i]} is outside the vocabulary (0..{v - 1})");
        }
        return result;
    }
}
