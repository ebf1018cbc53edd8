using System.CommandLine;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda chat -m MODEL [--system TEXT] [--tools F.json] [--no-think] [--stop TEXT] [sampling options]
/// [--draft-model DIR | --draft ngram] [--num-draft-tokens K]`: a multi-turn
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
        var spec = new SpeculativeCliOptions();
        var cmd = new Command("chat", "Interactive multi-turn chat") { model, system, tools };
        s.AddTo(cmd);
        spec.AddTo(cmd);
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
            // One answer runs at a time, so the chat's one drafter serves every turn (it re-synchronises from the history).
            var (drafter, lm) = spec.OpenWithTarget(parse, s, dir, tokenizer, backend, stderr);
            using var ownedDrafter = drafter;
            var engine = TextCliSupport.StartEngine(lm, tokenizer, template, parse.GetValue(s.MaxNumBatchedTokens) ?? lm.Model.MaxStepRows);
            try
            {
                if (sampled) stderr.WriteLine($"sampling seed {seed} (--seed {seed} repeats this chat)");
                var session = new ChatSession(engine, thinking => spec.Apply(parse, s.RequestOptions(parse, s.Sampling(parse, dir, thinking, seed), thinking), drafter), parse.GetValue(system))
                {
                    Thinking = !parse.GetValue(s.NoThink),
                    Tools = toolsJson,
                };
                bool interactive = ReferenceEquals(stdout, Console.Out) && !Console.IsOutputRedirected && !Console.IsInputRedirected;
                return session.Run(Console.In, stdout, stderr, interactive);
            }
            finally { engine.DisposeAsync().AsTask().GetAwaiter().GetResult(); }
        });
        return cmd;
    }
}

/// <summary>
/// The chat REPL's state: history in the template's format and the thinking switch. Answers run on the engine, whose
/// prefix cache keeps the conversation's full KV pages, so a turn prefills little more than its new messages.
/// </summary>
public sealed class ChatSession(Engine engine, Func<bool, RequestOptions> options, string? systemPrompt)
{
    readonly List<ChatMessage> _history = InitialHistory(systemPrompt);
    CancellationTokenSource? _current;

    public bool Thinking { get; set; } = true;
    /// <summary>Tool definitions passed to the chat template (null: none).</summary>
    public System.Text.Json.JsonElement? Tools { get; init; }
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
        var request = options(Thinking) with { Tools = Tools };
        var ids = engine.RenderChat(_history, request);
        if (ids.Count >= engine.ContextLength)
        {
            _history.RemoveAt(_history.Count - 1);
            error.WriteLine($"error: the conversation has {ids.Count} tokens, the context holds {engine.ContextLength}; use /reset");
            return;
        }
        var writer = new PieceWriter(output, ansi);
        _current = new CancellationTokenSource();
        RequestResult result;
        try
        {
            result = writer.Run(engine, ids, request, _current.Token);
        }
        finally
        {
            _current.Dispose();
            _current = null;
        }
        writer.End();
        output.WriteLine();
        if (result.FinishReason == FinishReason.Cancelled) output.WriteLine("[cancelled]");
        output.Flush();
        error.WriteLine(PieceWriter.Stats(result));
        if (result.Speculation is { } speculation) error.WriteLine(speculation);
        // History keeps the answer; the template drops reasoning of earlier turns itself.
        _history.Add(new ChatMessage("assistant", result.Content, result.Reasoning.Length > 0 ? result.Reasoning : null));
    }
}
