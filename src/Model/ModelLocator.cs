using System.Text.RegularExpressions;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Model;

/// <summary>A model that cannot be found: the message names every place looked at.</summary>
public sealed class ModelNotFoundException(string message) : Qwen3CudaException(message)
{
    public override ErrorKind Kind => ErrorKind.InvalidInput;
}

/// <summary>
/// Turns what a user calls a model into a folder: a folder path as is; <c>demo</c> (the <see cref="SyntheticPreset.Demo"/>
/// checkpoint, written on first use into the model cache); or a Hugging Face repo id such as <c>Qwen/Qwen3-30B-A3B</c>
/// (optionally <c>@revision</c>) found in the local Hugging Face cache. Nothing is downloaded. See docs/model-formats.md.
/// </summary>
public static partial class ModelLocator
{
    public const string DemoName = "demo";
    /// <summary>The demo's folder name in the cache; bump the version when the demo's preset or seed changes.</summary>
    public const string DemoFolderName = "demo-v1";
    public const ulong DemoSeed = 20250501;
    /// <summary>Overrides where cached models (the demo) live.</summary>
    public const string CacheEnvironmentVariable = "QWEN3CUDA_MODEL_CACHE";

    /// <summary>$QWEN3CUDA_MODEL_CACHE, else $XDG_CACHE_HOME/qwen3cuda/models, else ~/.cache/qwen3cuda/models.</summary>
    public static string ModelCacheDirectory()
    {
        if (Environment.GetEnvironmentVariable(CacheEnvironmentVariable) is { Length: > 0 } env) return env;
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string root = !string.IsNullOrWhiteSpace(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "qwen3cuda", "models");
    }

    public static string DemoDirectory() => Path.Combine(ModelCacheDirectory(), DemoFolderName);

    /// <summary>True for a complete demo folder (it is moved into place only when complete).</summary>
    public static bool IsDemoCached() => File.Exists(Path.Combine(DemoDirectory(), "config.json"));

    /// <summary>
    /// The folder for <paramref name="model"/>. <paramref name="log"/> hears about slow first-time work (writing the demo).
    /// Throws <see cref="ModelNotFoundException"/> naming the paths tried, and <paramref name="option"/> (--model, or
    /// --draft-model for a draft).
    /// </summary>
    public static string Resolve(string model, Action<string>? log = null, string option = "--model")
    {
        if (string.IsNullOrWhiteSpace(model)) throw new ModelNotFoundException($"{option} is empty: give a folder, a Hugging Face repo id or demo");
        if (model == DemoName) return EnsureDemo(log: log);
        if (Directory.Exists(model)) return model;
        if (File.Exists(model))
            throw new ModelNotFoundException($"{option} '{model}' is a file; give the folder that holds config.json and the *.safetensors files");
        if (RepoId().Match(model) is { Success: true } m && !model.StartsWith('.'))
            return HuggingFaceSnapshot(m.Groups["org"].Value, m.Groups["name"].Value, m.Groups["rev"].Success ? m.Groups["rev"].Value : "main", option);
        throw new ModelNotFoundException($"{option}: folder '{model}' does not exist (give a model folder, a Hugging Face repo id like Qwen/Qwen3-30B-A3B, or demo)");
    }

    [GeneratedRegex(@"^(?<org>[A-Za-z0-9][\w.-]*)/(?<name>[\w.-]+)(@(?<rev>[\w.-]+))?$")]
    private static partial Regex RepoId();

    /// <summary>$HF_HUB_CACHE, else $HF_HOME/hub, else $XDG_CACHE_HOME/huggingface/hub, else ~/.cache/huggingface/hub (huggingface_hub's rules).</summary>
    public static string HuggingFaceHubCache()
    {
        if (Environment.GetEnvironmentVariable("HF_HUB_CACHE") is { Length: > 0 } hub) return hub;
        if (Environment.GetEnvironmentVariable("HF_HOME") is { Length: > 0 } home) return Path.Combine(home, "hub");
        string? xdg = Environment.GetEnvironmentVariable("XDG_CACHE_HOME");
        string root = !string.IsNullOrWhiteSpace(xdg) ? xdg : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(root, "huggingface", "hub");
    }

    /// <summary>
    /// The snapshot folder of a repo in the Hugging Face cache: models--ORG--NAME/snapshots/COMMIT, COMMIT read from
    /// refs/REVISION (or REVISION itself when it names a snapshot).
    /// </summary>
    public static string HuggingFaceSnapshot(string org, string name, string revision = "main", string option = "--model")
    {
        string id = $"{org}/{name}";
        string hub = HuggingFaceHubCache();
        string repo = Path.Combine(hub, $"models--{org}--{name}");
        string download = $"download it with `huggingface-cli download {id}` (or `hf download {id}`), or set HF_HOME / HF_HUB_CACHE to the cache that has it";
        if (!Directory.Exists(repo))
            throw new ModelNotFoundException($"{option} {id}: no folder of that name here, and not in the Hugging Face cache: '{repo}' does not exist; {download}");
        string? snapshot = null;
        string refFile = Path.Combine(repo, "refs", revision);
        if (File.Exists(refFile)) snapshot = Path.Combine(repo, "snapshots", File.ReadAllText(refFile).Trim());
        else if (Directory.Exists(Path.Combine(repo, "snapshots", revision))) snapshot = Path.Combine(repo, "snapshots", revision);
        else
        {
            var all = Directory.Exists(Path.Combine(repo, "snapshots")) ? Directory.GetDirectories(Path.Combine(repo, "snapshots")) : [];
            if (all.Length == 1 && revision == "main") snapshot = all[0];
            else
                throw new ModelNotFoundException($"{option} {id}: '{refFile}' does not exist and {all.Length} snapshots are cached in '{Path.Combine(repo, "snapshots")}'" +
                    (all.Length > 1 ? $" (name one: {id}@{Path.GetFileName(all[0])})" : $"; {download}"));
        }
        if (!File.Exists(Path.Combine(snapshot, "config.json")))
            throw new ModelNotFoundException($"{option} {id}: the cached snapshot '{snapshot}' has no config.json (an interrupted download?); {download}");
        return snapshot;
    }

    /// <summary>
    /// The demo folder, written when absent (or when <paramref name="force"/>): <see cref="SyntheticPreset.Demo"/> with
    /// <see cref="DemoSeed"/>, its tokenizer from <paramref name="tokenizerDir"/> or found as <see cref="SyntheticCheckpoint.FindTokenizerDir"/>
    /// does. Written into a temporary folder and moved into place, so a half-written demo is never used.
    /// </summary>
    public static string EnsureDemo(string? tokenizerDir = null, bool force = false, Action<string>? log = null)
    {
        string dir = DemoDirectory();
        if (!force && IsDemoCached()) return dir;
        string cache = ModelCacheDirectory();
        Directory.CreateDirectory(cache);
        string tmp = Path.Combine(cache, $"{DemoFolderName}.tmp-{Environment.ProcessId}-{Guid.NewGuid():N}");
        log?.Invoke($"making the demo model in {dir} (once; random weights with the real Qwen3 tokenizer: its text is meaningless)");
        try
        {
            SyntheticCheckpoint.Write(new SyntheticOptions { Preset = SyntheticPreset.Demo, Seed = DemoSeed, TokenizerDir = tokenizerDir }, tmp);
            if (Directory.Exists(dir))
            {
                if (!force) return dir;   // another process finished first
                Directory.Delete(dir, recursive: true);
            }
            Directory.Move(tmp, dir);
            return dir;
        }
        finally
        {
            if (Directory.Exists(tmp)) Directory.Delete(tmp, recursive: true);
        }
    }
}
