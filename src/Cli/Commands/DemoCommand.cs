using System.CommandLine;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda demo [--tokenizer DIR] [--force]`: makes (or with --force remakes) the demo model that `--model demo` uses
/// and prints its folder. The demo is <see cref="SyntheticPreset.Demo"/>: random weights on a small MoE body with the
/// real Qwen3 vocabulary and tokenizer, so every verb runs end to end; its text is meaningless. It lives in
/// $QWEN3CUDA_MODEL_CACHE, else $XDG_CACHE_HOME/qwen3cuda/models, else ~/.cache/qwen3cuda/models (about 50 MB).
/// </summary>
public static class DemoCommand
{
    public static Command Create()
    {
        var tokenizer = new Option<string?>("--tokenizer")
        {
            Description = $"Folder with the real Qwen3 tokenizer.json and tokenizer_config.json (any Qwen3 checkpoint folder has them; default: " +
                $"${SyntheticCheckpoint.TokenizerEnvironmentVariable}, else {SyntheticCheckpoint.TokenizerRelativeDir} above the working directory, as .ci/setup installs it)",
            HelpName = "DIR",
        };
        var force = new Option<bool>("--force") { Description = "Write the demo again even when it is cached" };
        var cmd = new Command("demo", "Make the demo model (--model demo: a small random Qwen3-MoE with the real tokenizer) and print where it is") { tokenizer, force };
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var stderr = parse.InvocationConfiguration.Error;
            string? dir = parse.GetValue(tokenizer);
            if (dir is not null && !Directory.Exists(dir)) throw new UsageException($"--tokenizer: folder '{dir}' does not exist");
            bool cached = ModelLocator.IsDemoCached() && !parse.GetValue(force);
            string path = ModelLocator.EnsureDemo(dir, parse.GetValue(force), line => { stderr.WriteLine(line); stderr.Flush(); });
            stdout.WriteLine(path);
            stderr.WriteLine((cached ? "the demo model is cached" : "made the demo model") +
                ": random weights with the real Qwen3 tokenizer; its text is meaningless. Try: qwen3cuda generate -m demo -p \"Hello\"");
            return 0;
        });
        return cmd;
    }
}
