using System.CommandLine;
using Qwen3Cuda.Model.Generation;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda generate --model DIR --prompt TEXT|--prompt-file F [--chat] [--no-think] [sampling options]
/// [--max-new-tokens N] [--device cpu|emulator|cuda|auto]`: streams the completion to stdout, then prints
/// prompt/eval token counts, time to first token and tokens/s to stderr. Ctrl+C stops the answer.
/// </summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = TextCliSupport.ModelOption();
        var prompt = new Option<string?>("--prompt") { Description = "Prompt text" };
        var promptFile = new Option<string?>("--prompt-file") { Description = "File holding the prompt text (UTF-8)" };
        var chat = new Option<bool>("--chat") { Description = "Wrap the prompt as a user message in the model's chat template" };
        var printIds = new Option<bool>("--print-token-ids") { Description = "Also print the generated token ids (JSON) to stderr" };
        var s = new SamplingCliOptions();
        var cmd = new Command("generate", "Generate text from a prompt") { model, prompt, promptFile, chat, printIds };
        s.AddTo(cmd);
        cmd.SetAction(parse => TextCliSupport.Guard(parse, (stdout, stderr) =>
        {
            var dir = parse.GetValue(model)!;
            var text = (parse.GetValue(prompt), parse.GetValue(promptFile)) switch
            {
                (string p, null) => p,
                (null, string f) => TextCliSupport.ReadText(f, "--prompt-file"),
                (null, null) => throw new ArgumentException("give the prompt with --prompt TEXT or --prompt-file FILE"),
                _ => throw new ArgumentException("give either --prompt or --prompt-file, not both"),
            };
            bool thinking = !parse.GetValue(s.NoThink);
            var sampling = s.Sampling(parse, dir, thinking);
            int maxNew = s.CheckedMaxNewTokens(parse);
            int? context = s.CheckedContext(parse);
            double? utilization = s.CheckedGpuMemoryUtilization(parse);
            var tokenizer = Qwen3Tokenizer.FromModelDirectory(dir);
            if (parse.GetValue(chat))
                text = ChatTemplate.FromModelDirectory(dir).Render([new ChatMessage("user", text)], addGenerationPrompt: true, enableThinking: thinking);
            var ids = tokenizer.Encode(text);
            using var lm = ModelOpener.Open(dir, parse.GetValue(s.Device)!, maxSequences: 1, contextLength: context, stderr, utilization);
            var generator = new Generator(lm, tokenizer, Generator.DefaultEosTokenIds(tokenizer, dir));
            var writer = new PieceWriter(stdout, ansi: ReferenceEquals(stdout, Console.Out) && !Console.IsOutputRedirected);
            using var cts = new CancellationTokenSource();
            ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
            Console.CancelKeyPress += onCancel;
            GenerationResult result;
            try
            {
                result = generator.Generate(ids, new GenerationOptions { Sampling = sampling, MaxNewTokens = maxNew }, writer.Write, cts.Token);
            }
            finally { Console.CancelKeyPress -= onCancel; }
            writer.End();
            stdout.WriteLine();
            stdout.Flush();
            stderr.WriteLine(PieceWriter.Stats(result));
            if (parse.GetValue(printIds)) stderr.WriteLine("token ids: [" + string.Join(",", result.Tokens) + "]");
            return 0;
        }));
        return cmd;
    }
}
