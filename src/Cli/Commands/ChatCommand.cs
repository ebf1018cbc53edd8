using System.CommandLine;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Generation;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda chat -m MODEL [--system TEXT] [--tools F.json] [--no-think] [--stop TEXT] [sampling options]`: a multi-turn
/// REPL on stdin. /think and /no_think switch thinking, /reset clears the conversation, /exit (or end of input) quits,
/// Ctrl+C cancels the answer being generated, and at the prompt ends the chat (saying so; exit code 130). Thinking is
/// shown dimmed (or between [thinking] markers when output is redirected) and kept out of the history, as the chat
/// template does.
/// </summary>
public static class ChatCommand
{
    public static Command Create()
    {
        var model = CliOptions.Model();
        var system = new Option<string?>("--system") { Description = "System prompt", HelpName = "TEXT" };
        var tools = new Option<string?>("--tools") { Description = "JSON file with an array of tool definitions for the chat template", HelpName = "FILE" };
        var s = new SamplingCliOptions();
        var cmd = new Command("chat", "Interactive multi-turn chat") { model, system, tools };
        s.AddTo(cmd);
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var stderr = parse.InvocationConfiguration.Error;
            var toolsJson = TextCliSupport.ReadTools(parse.GetValue(tools));
            var dir = ModelOpener.Resolve(parse.GetValue(model)!, stderr);
            ulong seed = s.ChooseSeed(parse);
            // Check the sampling options against the model's defaults up front (both modes), before the model loads.
            bool sampled = !s.Sampling(parse, dir, thinking: true, seed).IsGreedy | !s.Sampling(parse, dir, thinking: false, seed).IsGreedy;
            var tokenizer = Qwen3Tokenizer.FromModelDirectory(dir);
            var template = ChatTemplate.FromModelDirectory(dir);
            var backend = ModelOpener.ChooseBackend(parse.GetValue(s.Device)!, stderr);
            using var lm = ModelOpener.Open(dir, backend, maxSequences: 1, parse.GetValue(s.Context), parse.GetValue(s.GpuMemory), stderr, parse.GetValue(s.GpuMemoryUtilization),
                CliOptions.ParseKvCacheDtype(parse.GetValue(s.KvCacheDtype)));
            if (sampled) stderr.WriteLine($"sampling seed {seed} (--seed {seed} repeats this chat)");
            var session = new ChatSession(lm.Model, tokenizer, template, Generator.DefaultEosTokenIds(tokenizer, dir),
                thinking => s.Sampling(parse, dir, thinking, seed), parse.GetValue(s.MaxNewTokens), parse.GetValue(system))
            {
                Thinking = !parse.GetValue(s.NoThink),
                Tools = toolsJson,
                StopStrings = s.StopStrings(parse),
            };
            bool interactive = ReferenceEquals(stdout, Console.Out) && !Console.IsOutputRedirected && !Console.IsInputRedirected;
            return session.Run(Console.In, stdout, stderr, interactive);
        });
        return cmd;
    }
}

/// <summary>The chat REPL's state: history in the template's format, thinking switch, the generator with its KV cache.</summary>
public sealed class ChatSession(ICausalLanguageModel model, Qwen3Tokenizer tokenizer, ChatTemplate template, IEnumerable<int> eosIds,
    Func<bool, SamplingOptions> sampling, int maxNewTokens, string? systemPrompt)
{
    readonly Generator _generator = new(model, tokenizer, eosIds);
    readonly List<ChatMessage> _history = InitialHistory(systemPrompt);
    CancellationTokenSource? _current;

    public bool Thinking { get; set; } = true;
    /// <summary>Tool definitions passed to the chat template (null: none).</summary>
    public System.Text.Json.JsonElement? Tools { get; init; }
    public IReadOnlyList<string> StopStrings { get; init; } = [];
    public IReadOnlyList<ChatMessage> History => _history;

    static List<ChatMessage> InitialHistory(string? system) => system is null ? [] : [new ChatMessage("system", system)];

    public int Run(TextReader input, TextWriter output, TextWriter error, bool interactive)
    {
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            var cts = _current;
            if (cts is null)
            {
                // At the prompt: Ctrl+C ends the chat, with a word rather than silently (the default handler then ends the process: exit code 130).
                output.Flush();
                error.WriteLine();
                error.WriteLine("[Ctrl+C] chat ended (use /exit next time; Ctrl+C during an answer stops only the answer)");
                error.Flush();
                return;
            }
            e.Cancel = true;
            cts.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            if (interactive) output.WriteLine("Chat: /think, /no_think, /reset, /exit. Ctrl+C stops an answer.");
            while (true)
            {
                if (interactive) output.Write(Thinking ? "> " : "(no think) > ");
                output.Flush();
                var line = input.ReadLine();
                if (line is null) break;
                var text = line.Trim();
                if (text.Length == 0) continue;
                switch (text)
                {
                    case "/exit" or "/quit": return 0;
                    case "/think": Thinking = true; output.WriteLine("[thinking on]"); continue;
                    case "/no_think": Thinking = false; output.WriteLine("[thinking off]"); continue;
                    case "/reset":
                        _history.Clear();
                        _history.AddRange(InitialHistory(systemPrompt));
                        _generator.Reset();
                        output.WriteLine("[conversation reset]");
                        continue;
                }
                if (text.StartsWith('/')) { error.WriteLine($"unknown command {text} (use /think, /no_think, /reset, /exit)"); continue; }
                Answer(line, output, error, interactive);
            }
            return 0;
        }
        finally { Console.CancelKeyPress -= onCancel; }
    }

    void Answer(string userText, TextWriter output, TextWriter error, bool ansi)
    {
        _history.Add(new ChatMessage("user", userText));
        var prompt = template.Render(_history, addGenerationPrompt: true, enableThinking: Thinking, Tools);
        var ids = tokenizer.Encode(prompt);
        if (ids.Length >= model.ContextLength)
        {
            _history.RemoveAt(_history.Count - 1);
            error.WriteLine($"error: the conversation has {ids.Length} tokens, the context holds {model.ContextLength}; use /reset");
            return;
        }
        var writer = new PieceWriter(output, ansi);
        _current = new CancellationTokenSource();
        GenerationResult result;
        try
        {
            result = _generator.Generate(ids, new GenerationOptions { Sampling = sampling(Thinking), MaxNewTokens = maxNewTokens, StopStrings = StopStrings },
                writer.Write, _current.Token);
        }
        finally
        {
            _current.Dispose();
            _current = null;
        }
        writer.End();
        output.WriteLine();
        if (result.StopReason == StopReason.Cancelled) output.WriteLine("[cancelled]");
        output.Flush();
        error.WriteLine(PieceWriter.Stats(result));
        // History keeps the answer; the template drops reasoning of earlier turns itself.
        _history.Add(new ChatMessage("assistant", result.Content, result.Thinking.Length > 0 ? result.Thinking : null));
    }
}
