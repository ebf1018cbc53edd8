using System.CommandLine;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>`qwen3cuda tokenize --model DIR --text-file F`: the file's whole text as one string; prints one JSON array of ids.</summary>
public static class TokenizeCommand
{
    public static Command Create()
    {
        var model = TextCliSupport.ModelOption();
        var file = new Option<string>("--text-file") { Description = "UTF-8 text file to encode (whole content, added tokens recognised)", Required = true };
        var cmd = new Command("tokenize", "Encode a text file with the model's tokenizer; prints a JSON array of token ids") { model, file };
        cmd.SetAction(parse => TextCliSupport.Guard(parse, (stdout, _) =>
        {
            var tokenizer = Qwen3Tokenizer.FromModelDirectory(parse.GetValue(model)!);
            var ids = tokenizer.Encode(TextCliSupport.ReadText(parse.GetValue(file)!, "--text-file"));
            stdout.WriteLine("[" + string.Join(",", ids) + "]");
            return 0;
        }));
        return cmd;
    }
}
