using System.CommandLine;
using System.Text.Json;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda tokenize -m MODEL --text TEXT | --text-file F [--ids-only | --json]`: the text (a file's whole content; -
/// for stdin) encoded with the model's tokenizer, added tokens such as &lt;|im_end|&gt; recognised. Prints one line per token
/// (id and piece: its text as JSON string, or its bytes in hex when they are not whole UTF-8 characters), then the
/// count; --ids-only prints the JSON array of ids; --json an array of {id, piece}.
/// </summary>
public static class TokenizeCommand
{
    /// <summary>JSON strings as people read them: only quotes, backslashes and control characters escaped.</summary>
    static readonly JsonSerializerOptions Readable = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    public static Command Create()
    {
        var model = CliOptions.Model();
        var text = new Option<string?>("--text", "-p") { Description = "Text to encode (- reads stdin)", HelpName = "TEXT" };
        var file = new Option<string?>("--text-file", "-f") { Description = "UTF-8 text file to encode, whole content (- is stdin)", HelpName = "FILE" };
        var idsOnly = new Option<bool>("--ids-only") { Description = "Print only the JSON array of token ids" };
        var json = new Option<bool>("--json") { Description = "Print a JSON array of {\"id\": N, \"piece\": TEXT}" };
        var cmd = new Command("tokenize", "Encode text with the model's tokenizer; prints each token's id and piece") { model, text, file, idsOnly, json };
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            string input = (parse.GetValue(text), parse.GetValue(file)) switch
            {
                ("-", null) => Console.In.ReadToEnd(),
                (string t, null) => t,
                (null, string f) => TextCliSupport.ReadText(f, "--text-file"),
                (null, null) => throw new UsageException("give the text with --text TEXT or --text-file FILE (- reads stdin)"),
                _ => throw new UsageException("give either --text or --text-file, not both"),
            };
            if (parse.GetValue(idsOnly) && parse.GetValue(json)) throw new UsageException("give either --ids-only or --json, not both");
            var tokenizer = Qwen3Tokenizer.FromModelDirectory(ModelOpener.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error));
            var ids = tokenizer.Encode(input);
            if (parse.GetValue(idsOnly)) stdout.WriteLine("[" + string.Join(",", ids) + "]");
            else if (parse.GetValue(json))
                stdout.WriteLine(JsonSerializer.Serialize(ids.Select(id => new { id, piece = TextCliSupport.Piece(tokenizer, id) }), Readable));
            else
            {
                foreach (int id in ids) stdout.WriteLine($"{id,7}  {JsonSerializer.Serialize(TextCliSupport.Piece(tokenizer, id), Readable)}");
                stdout.WriteLine($"{ids.Length} tokens");
            }
            return 0;
        });
        return cmd;
    }
}
