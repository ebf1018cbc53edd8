using System.CommandLine;
using System.Globalization;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>`qwen3cuda detokenize --model DIR --ids 1,2,3 [--skip-special-tokens]`: prints the decoded text exactly (no newline added).</summary>
public static class DetokenizeCommand
{
    public static Command Create()
    {
        var model = TextCliSupport.ModelOption();
        var ids = new Option<string>("--ids") { Description = "Comma-separated token ids, e.g. 9707,1879 (a JSON array also works)", Required = true };
        var skip = new Option<bool>("--skip-special-tokens") { Description = "Leave out special tokens such as <|im_end|>" };
        var cmd = new Command("detokenize", "Decode token ids to text with the model's tokenizer") { model, ids, skip };
        cmd.SetAction(parse => TextCliSupport.Guard(parse, (stdout, _) =>
        {
            var tokenizer = Qwen3Tokenizer.FromModelDirectory(parse.GetValue(model)!);
            var parsed = ParseIds(parse.GetValue(ids)!, tokenizer.VocabSize);
            stdout.Write(tokenizer.Decode(parsed, parse.GetValue(skip)));
            stdout.Flush();
            return 0;
        }));
        return cmd;
    }

    internal static int[] ParseIds(string text, int vocabSize)
    {
        var parts = text.Trim().TrimStart('[').TrimEnd(']').Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);
        var result = new int[parts.Length];
        for (int i = 0; i < parts.Length; i++)
        {
            if (!int.TryParse(parts[i], NumberStyles.None, CultureInfo.InvariantCulture, out result[i]))
                throw new ArgumentException($"--ids: '{parts[i]}' is not a non-negative integer token id");
            if (result[i] >= vocabSize) throw new ArgumentException($"--ids: token id {result[i]} is outside the vocabulary (0..{vocabSize - 1})");
        }
        return result;
    }
}
