using System.Text.Json;
using Qwen3Cuda.Cli;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Tests.Support;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>The small things a newcomer expects, each through <see cref="Program.Run"/> on the tiny text model (CPU reference).</summary>
[NonParallelizable]
public class CliFeatureTests
{
    static string Tiny => CliModels.TinyText();

    static int[] PrintedIds(string stderr)
    {
        var line = stderr.Split('\n').Single(l => l.StartsWith("token ids: ", StringComparison.Ordinal));
        return JsonSerializer.Deserialize<int[]>(line["token ids: ".Length..])!;
    }

    static int PromptTokens(string stderr)
    {
        var line = stderr.Split('\n').Single(l => l.StartsWith("prompt ", StringComparison.Ordinal));
        return int.Parse(line.Split(' ')[1]);
    }

    [Test]
    public void ShortFlags_AndDashReadsStdin()
    {
        var a = CliRunner.Run("generate", "-m", Tiny, "-p", "the cat sat", "-n", "5", "--temperature", "0", "--device", "cpu", "--print-token-ids");
        var b = CliRunner.RunWithInput("the cat sat", "generate", "--model", Tiny, "--prompt", "-", "--max-new-tokens", "5", "--temperature", "0", "--device", "cpu", "--print-token-ids");
        var c = CliRunner.RunWithInput("the cat sat", "generate", "-m", Tiny, "-f", "-", "--n-predict", "5", "--temp", "0", "--device", "cpu", "--print-token-ids");
        Assert.That(a.Exit, Is.Zero, a.Err);
        Assert.That(b.Exit, Is.Zero, b.Err);
        Assert.That(c.Exit, Is.Zero, c.Err);
        Assert.That(PrintedIds(b.Err), Is.EqualTo(PrintedIds(a.Err)));
        Assert.That(PrintedIds(c.Err), Is.EqualTo(PrintedIds(a.Err)));
        Assert.That(PromptTokens(b.Err), Is.EqualTo(PromptTokens(a.Err)));
    }

    [Test]
    public void SystemAndTools_GoThroughTheChatTemplate()
    {
        string tools = Path.Combine(Model.TestCheckpoints.NewDir("tools"), "tools.json");
        File.WriteAllText(tools, """[{"type": "function", "function": {"name": "get_time", "description": "Current time", "parameters": {"type": "object", "properties": {}}}}]""");
        var (exit, _, err) = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "--system", "Be brief.", "--tools", tools, "-n", "1", "--temperature", "0", "--device", "cpu");
        Assert.That(exit, Is.Zero, err);
        var template = ChatTemplate.FromModelDirectory(Tiny);
        using var toolsDoc = JsonDocument.Parse(File.ReadAllText(tools));
        string rendered = template.Render([new ChatMessage("system", "Be brief."), new ChatMessage("user", "hi")], addGenerationPrompt: true, enableThinking: true, toolsDoc.RootElement);
        Assert.That(rendered, Does.Contain("get_time").And.Contain("Be brief."));
        Assert.That(PromptTokens(err), Is.EqualTo(Qwen3Tokenizer.FromModelDirectory(Tiny).Encode(rendered).Length));

        var bad = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "--tools", "/nonexistent/tools.json");
        Assert.That(bad.Exit, Is.EqualTo(ExitCodes.Error));
        Assert.That(bad.Err, Does.StartWith("error: --tools: file '/nonexistent/tools.json' does not exist"));
    }

    [Test]
    public void Stop_EndsTheAnswerBeforeTheStopText()
    {
        var free = CliRunner.Run("generate", "-m", Tiny, "-p", "the dog", "-n", "24", "--temperature", "0", "--device", "cpu");
        Assert.That(free.Exit, Is.Zero, free.Err);
        string text = free.Out.TrimEnd('\n');
        Assume.That(text.Length, Is.GreaterThan(6), "the greedy answer is long enough to cut");
        string stop = text.Substring(text.Length / 2, 2);
        int cut = text.IndexOf(stop, StringComparison.Ordinal);
        var stopped = CliRunner.Run("generate", "-m", Tiny, "-p", "the dog", "-n", "24", "--temperature", "0", "--device", "cpu", "--stop", stop, "--stop", "\u2603never");
        Assert.That(stopped.Exit, Is.Zero, stopped.Err);
        Assert.That(stopped.Out.TrimEnd('\n'), Is.EqualTo(text[..cut]));
        Assert.That(stopped.Err, Does.Contain("stop: stop string"));
    }

    /// <summary>
    /// --frequency-penalty reaches the engine: the greedy answer with it is the library engine's answer with
    /// RequestOptions.FrequencyPenalty (same prompt, CPU), and it differs from the answer without it (which repeats tokens).
    /// </summary>
    [Test]
    public async Task FrequencyPenalty_ReachesTheEngine()
    {
        string[] common = ["generate", "-m", Tiny, "-p", "the dog", "-n", "24", "--temperature", "0", "--presence-penalty", "0", "--repetition-penalty", "1", "--device", "cpu", "--print-token-ids"];
        var plain = CliRunner.Run(common);
        var penalized = CliRunner.Run([.. common, "--frequency-penalty", "2"]);
        Assert.That(plain.Exit, Is.Zero, plain.Err);
        Assert.That(penalized.Exit, Is.Zero, penalized.Err);
        var plainIds = PrintedIds(plain.Err);
        Assume.That(plainIds.Distinct().Count(), Is.LessThan(plainIds.Length), "the unpenalized greedy answer repeats a token");

        await using var engine = await Qwen3Cuda.Model.Serving.Engine.LoadAsync(Tiny, new Qwen3Cuda.Model.Serving.EngineOptions { Device = "cpu", MaxNumSeqs = 1 });
        var prompt = Qwen3Tokenizer.FromModelDirectory(Tiny).Encode("the dog");
        var expected = await engine.CompleteAsync(prompt, new Qwen3Cuda.Model.Serving.RequestOptions
        {
            Sampling = Qwen3Cuda.Model.Sampling.SamplingOptions.Greedy, MaxNewTokens = 24, FrequencyPenalty = 2,
        });
        Assert.That(PrintedIds(penalized.Err), Is.EqualTo(expected.Tokens));
        Assert.That(PrintedIds(penalized.Err), Is.Not.EqualTo(plainIds));
    }

    [Test]
    public void Seed_IsPrintedWhenSampling_AndRepeatsTheRun()
    {
        var first = CliRunner.Run("generate", "-m", Tiny, "-p", "the dog", "-n", "12", "--temperature", "1.2", "--top-k", "0", "--top-p", "1", "--device", "cpu", "--print-token-ids");
        Assert.That(first.Exit, Is.Zero, first.Err);
        var m = System.Text.RegularExpressions.Regex.Match(first.Err, @", seed (\d+)");
        Assert.That(m.Success, Is.True, first.Err);
        var again = CliRunner.Run("generate", "-m", Tiny, "-p", "the dog", "-n", "12", "--temperature", "1.2", "--top-k", "0", "--top-p", "1", "--device", "cpu", "--print-token-ids", "-s", m.Groups[1].Value);
        Assert.That(PrintedIds(again.Err), Is.EqualTo(PrintedIds(first.Err)));
        var greedy = CliRunner.Run("generate", "-m", Tiny, "-p", "the dog", "-n", "2", "--temperature", "0", "--device", "cpu");
        Assert.That(greedy.Err, Does.Not.Contain("seed"), "greedy decoding has no seed to print");
        Assert.That(greedy.Err, Does.Match(@"load \d+\.\d\d s"), "the load time is in the stats");
    }

    [Test]
    public void Tokenize_PrintsIdsAndPieces()
    {
        var tokenizer = TextTestSupport.RealTokenizer();
        string dir = Model.TestCheckpoints.NewDir("real-tok");
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" }) File.Copy(Path.Combine(TextTestSupport.QwenTokenizerDir, f), Path.Combine(dir, f));
        var (exit, output, err) = CliRunner.Run("tokenize", "-m", dir, "--text", "Hello world<|im_end|>\n你");
        Assert.That(exit, Is.Zero, err);
        var ids = tokenizer.Encode("Hello world<|im_end|>\n你");
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines, Has.Length.EqualTo(ids.Length + 1));
        Assert.That(lines[0].Trim(), Is.EqualTo($"{ids[0]}  \"Hello\""));
        Assert.That(lines[1].Trim(), Is.EqualTo($"{ids[1]}  \" world\""));
        Assert.That(lines[2].Trim(), Is.EqualTo($"{ids[2]}  \"<|im_end|>\""));
        Assert.That(lines[^1], Is.EqualTo($"{ids.Length} tokens"));
        var json = CliRunner.Run("tokenize", "-m", dir, "--text", "Hello", "--json");
        Assert.That(json.Out.Trim(), Is.EqualTo($"[{{\"id\":{tokenizer.Encode("Hello")[0]},\"piece\":\"Hello\"}}]"));
        var fromStdin = CliRunner.RunWithInput("Hello world", "tokenize", "-m", dir, "--text-file", "-", "--ids-only");
        Assert.That(fromStdin.Out.Trim(), Is.EqualTo("[" + string.Join(",", tokenizer.Encode("Hello world")) + "]"));
    }

    /// <summary>A token whose bytes are part of a UTF-8 character prints as hex bytes, not a replacement character.</summary>
    [Test]
    public void Tokenize_PartialUtf8Piece_IsHex()
    {
        var tokenizer = TextTestSupport.RealTokenizer();
        int partial = Enumerable.Range(0, tokenizer.VocabSize).First(id =>
        {
            var b = tokenizer.TokenBytes(id);
            return b.Length == 1 && b[0] >= 0x80;
        });
        string piece = TextCliSupport.Piece(tokenizer, partial);
        Assert.That(piece, Does.Match("^<0x[0-9A-F]{2}>$"));
    }

    [TestCase("md", "| model")]
    [TestCase("json", "\"avg_ts\"")]
    [TestCase("csv", "model,size_bytes,parameters,backend,test,tokens,avg_ts,stddev_ts,repetitions")]
    public void Bench_OnTheCpu_InEveryFormat(string format, string marker)
    {
        var (exit, output, err) = CliRunner.Run("bench", "-m", Tiny, "--device", "cpu", "-p", "8", "-n", "4", "-r", "1", "-o", format);
        Assert.That(exit, Is.Zero, err);
        Assert.That(output, Does.Contain(marker));
        Assert.That(output, Does.Contain("pp8").And.Contain("tg4").And.Contain("CPU"));
        if (format == "json")
        {
            using var doc = JsonDocument.Parse(output);
            Assert.That(doc.RootElement.GetArrayLength(), Is.EqualTo(2));
            Assert.That(doc.RootElement[0].GetProperty("avg_ts").GetDouble(), Is.GreaterThan(0));
        }
        if (format == "csv") Assert.That(output.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.EqualTo(3));
    }

    [Test]
    public void Bench_EmulatorRefusesTimedFormats()
    {
        var (exit, _, err) = CliRunner.Run("bench", "-m", Tiny, "--device", "emulator", "-o", "json");
        Assert.That(exit, Is.EqualTo(ExitCodes.Usage));
        Assert.That(err, Does.StartWith("error: -o json needs timings"));
    }

    [Test]
    public void EmulateHelp_DocumentsTheArgsFormat()
    {
        var (exit, output, _) = CliRunner.Run("emulate", "--help");
        Assert.That(exit, Is.Zero);
        Assert.That(output, Does.Contain("\"zeros\"").And.Contain("\"value\"").And.Contain("bf16").And.Contain("Example:"));
    }

    [Test]
    public void LoadProgress_BarAndCompileCount()
    {
        string bar = LoadProgress.Bar(512L << 20, 1L << 30, TimeSpan.FromSeconds(2), width: 10);
        Assert.That(bar, Is.EqualTo("loading weights  50% [#####     ] 512.0 MiB / 1.0 GiB  256.0 MiB/s  ETA 2 s"));
        Assert.That(LoadProgress.Bar(1L << 30, 1L << 30, TimeSpan.FromSeconds(4), width: 4), Is.EqualTo("loading weights 100% [####] 1.0 GiB / 1.0 GiB  256.0 MiB/s"));

        var log = new StringWriter();
        var redirected = new LoadProgress(log, terminal: false);
        redirected.CompileStarting("rmsnorm.cu");
        redirected.CompileStarting("gemv.cu");
        redirected.Finish();
        var lines = log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.That(lines[0], Does.StartWith("compiling kernels with NVRTC (cold cache"));
        Assert.That(lines[1], Does.Match(@"^compiled 2 kernel modules in \d+\.\d s \(cached for next time\)$"));

        var tty = new StringWriter();
        var terminal = new LoadProgress(tty, terminal: true);
        terminal.CompileStarting("rmsnorm.cu");
        terminal.Upload(new Qwen3Cuda.Runtime.Memory.UploadProgress(10, 10, "w"));
        terminal.Finish();
        Assert.That(tty.ToString(), Does.Contain("\rcompiling kernels: 1 (rmsnorm.cu)".Replace("\r", "\r\x1b[K")).And.Contain("loading weights 100%"));

        var warm = new StringWriter();
        new LoadProgress(warm, terminal: false).Finish();
        Assert.That(warm.ToString(), Is.Empty, "a warm cache prints nothing");
    }

    /// <summary>The memory summary after a device load names weights, the KV pool (pages, tokens, context, concurrency) and workspace.</summary>
    [Test]
    public void DeviceLoad_PrintsAMemorySummary()
    {
        var (exit, _, err) = CliRunner.Run("generate", "-m", Tiny, "-p", "hi", "-n", "1", "--temperature", "0", "--device", "emulator", "-c", "256");
        Assert.That(exit, Is.Zero, err);
        Assert.That(err, Does.Match(@"loaded qwen3_moe \(0\.2 M parameters\) on .*emulator.* in \d+\.\d\d s; memory: weights 372\.5 KiB, KV cache 6\d\.\d KiB \(a pool of 16 pages of 16 = 256 tokens for up to 1 sequence\(s\) of up to 256 tokens; max concurrency at full context 1\.00x\), workspace [\d.]+ KiB; device [\d.]+ GiB free of"));
    }
}
