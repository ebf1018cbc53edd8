using System.CommandLine;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda generate -m MODEL -p TEXT|-f FILE [--chat] [--system TEXT] [--tools F.json] [--stop TEXT] [--no-think]
/// [sampling options] [-n N] [-c N] [--device auto|cuda|cpu|emulator] [--draft-model DIR | --draft ngram] [--num-draft-tokens K]`: streams the completion to stdout, then prompt/eval
/// token counts, time to first token, tokens/s, load time and seed to stderr (with speculation: its acceptance stats). - for TEXT or FILE reads stdin. Ctrl+C
/// stops the answer (exit code 130 after the stats).
/// </summary>
public static class GenerateCommand
{
    public static Command Create()
    {
        var model = CliOptions.Model();
        var prompt = new Option<string?>("--prompt", "-p") { Description = "Prompt text (- reads it from stdin)", HelpName = "TEXT" };
        var promptFile = new Option<string?>("--prompt-file", "-f") { Description = "File holding the prompt text, UTF-8 (- is stdin)", HelpName = "FILE" };
        var chat = new Option<bool>("--chat") { Description = "Wrap the prompt as a user message in the model's chat template" };
        var system = new Option<string?>("--system") { Description = "System prompt (implies --chat)", HelpName = "TEXT" };
        var tools = new Option<string?>("--tools") { Description = "JSON file with an array of tool definitions for the chat template (implies --chat)", HelpName = "FILE" };
        var printIds = new Option<bool>("--print-token-ids") { Description = "Also print the generated token ids (JSON) to stderr" };
        var s = new SamplingCliOptions();
        var spec = new SpeculativeCliOptions();
        var cmd = new Command("generate", "Generate text from a prompt") { model, prompt, promptFile, chat, system, tools, printIds };
        s.AddTo(cmd);
        spec.AddTo(cmd);
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var stderr = parse.InvocationConfiguration.Error;
            var text = (parse.GetValue(prompt), parse.GetValue(promptFile)) switch
            {
                ("-", null) => Console.In.ReadToEnd(),
                (string p, null) => p,
                (null, string f) => TextCliSupport.ReadText(f, "--prompt-file"),
                (null, null) => throw new UsageException("give the prompt with -p TEXT (--prompt) or -f FILE (--prompt-file); - reads stdin"),
                _ => throw new UsageException("give either --prompt or --prompt-file, not both"),
            };
            var toolsJson = TextCliSupport.ReadTools(parse.GetValue(tools));
            string? systemText = parse.GetValue(system);
            bool asChat = parse.GetValue(chat) || systemText is not null || toolsJson is not null;
            var dir = ModelOpener.Resolve(parse.GetValue(model)!, stderr);
            bool thinking = !parse.GetValue(s.NoThink);
            ulong seed = s.ChooseSeed(parse);
            var sampling = s.Sampling(parse, dir, thinking, seed);
            var tokenizer = Qwen3Tokenizer.FromModelDirectory(dir);
            if (asChat)
            {
                var messages = new List<ChatMessage>();
                if (systemText is not null) messages.Add(new ChatMessage("system", systemText));
                messages.Add(new ChatMessage("user", text));
                text = ChatTemplate.FromModelDirectory(dir).Render(messages, addGenerationPrompt: true, enableThinking: thinking, toolsJson);
            }
            var ids = tokenizer.Encode(text);
            var backend = ModelOpener.ChooseBackend(parse.GetValue(s.Device)!, stderr);
            var (drafter, lm) = spec.OpenWithTarget(parse, s, dir, tokenizer, backend, stderr);
            using var ownedDrafter = drafter;
            var engine = TextCliSupport.StartEngine(lm, tokenizer, null, parse.GetValue(s.MaxNumBatchedTokens) ?? lm.Model.MaxStepRows);
            try
            {
                var writer = new PieceWriter(stdout, ansi: ReferenceEquals(stdout, Console.Out) && !Console.IsOutputRedirected);
                using var cts = new CancellationTokenSource();
                ConsoleCancelEventHandler onCancel = (_, e) => { e.Cancel = true; cts.Cancel(); };
                Console.CancelKeyPress += onCancel;
                RequestResult result;
                var options = spec.Apply(parse, s.RequestOptions(parse, sampling, thinking), drafter);
                try { result = writer.Run(engine, ids, options, cts.Token); }
                finally { Console.CancelKeyPress -= onCancel; }
                writer.End();
                stdout.WriteLine();
                stdout.Flush();
                stderr.WriteLine(PieceWriter.Stats(result, sampling.IsGreedy ? null : seed, lm.LoadTime));
                if (result.Speculation is { } st) stderr.WriteLine(st);
                if (parse.GetValue(printIds)) stderr.WriteLine("token ids: [" + string.Join(",", result.Tokens) + "]");
                return result.FinishReason == FinishReason.Cancelled ? ExitCodes.Interrupted : ExitCodes.Ok;
            }
            finally { engine.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
        });
        return cmd;
    }
}
