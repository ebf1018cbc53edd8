using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Tests.Model;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>Models for CLI tests: the tiny preset with the tiny test tokenizer (text in, text out, vocab 512), and the demo.</summary>
public static class CliModels
{
    static readonly object Gate = new();
    static string? _tinyText;

    /// <summary>
    /// The tiny preset (H 64, 2 layers, vocab 512, max_position_embeddings 2048) with a tokenizer and chat template. Made
    /// again when the folder is gone: <see cref="TestCheckpoints"/> deletes its temp root when the Model namespace's
    /// fixtures end, and tests of other namespaces (Serving) may run after that.
    /// </summary>
    public static string TinyText() =>
        Kept(ref _tinyText, () => WithTokenizer(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7 }, "tiny-text"));

    static string? _denseDraft;

    /// <summary>A one-layer dense draft of the tiny preset (same embedding seed) with the same tokenizer; made again when gone, as <see cref="TinyText"/>.</summary>
    public static string DenseDraft() =>
        Kept(ref _denseDraft, () => WithTokenizer(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 7, Dense = true, Layers = 1 }, "draft"));

    /// <summary>A synthetic checkpoint with the tiny test tokenizer, chat template and generation config.</summary>
    public static string WithTokenizer(SyntheticOptions options, string hint)
    {
        string dir = TestCheckpoints.NewDir(hint);
        SyntheticCheckpoint.Write(options, dir);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
            File.Copy(Path.Combine(TextTestSupport.TextTestsDir, "Data", "tiny-model", f), Path.Combine(dir, f), overwrite: true);
        return dir;
    }

    /// <summary>The model folder in <paramref name="field"/> while it exists, else a new one from <paramref name="make"/>.</summary>
    static string Kept(ref string? field, Func<string> make)
    {
        lock (Gate)
        {
            if (field is not null && File.Exists(Path.Combine(field, "tokenizer.json"))) return field;
            return field = make();
        }
    }

    /// <summary>
    /// Points <see cref="ModelLocator.CacheEnvironmentVariable"/> at a folder under the test run's temp root, so `--model demo`
    /// makes its demo there (once per run) instead of in the user's cache; Assert.Ignore without the real tokenizer.
    /// </summary>
    public static string UseTestModelCache()
    {
        TextTestSupport.RequireQwenTokenizerDir();
        string cache = Path.Combine(TestCheckpoints.Root, "model-cache");
        Environment.SetEnvironmentVariable(ModelLocator.CacheEnvironmentVariable, cache);
        return cache;
    }
}
