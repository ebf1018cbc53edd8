using Qwen3Cuda.Model.Checkpoint;

namespace Qwen3Cuda.Tests.Model;

/// <summary>Synthetic checkpoints written once per test run into a temp folder (deleted at the end).</summary>
[SetUpFixture]
public sealed class TestCheckpoints
{
    static readonly object Gate = new();
    static readonly Dictionary<SyntheticOptions, string> Cache = new();
    static string? _root;

    public static string Root
    {
        get
        {
            lock (Gate)
            {
                _root ??= Directory.CreateTempSubdirectory("qwen3cuda-model-tests-").FullName;
                return _root;
            }
        }
    }

    /// <summary>A fresh empty directory under the run's temp root.</summary>
    public static string NewDir(string hint)
    {
        string d = Path.Combine(Root, hint + "-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(d);
        return d;
    }

    /// <summary>The checkpoint for these options (written on first use; options are a record, so equal options share it).</summary>
    public static string Get(SyntheticOptions options)
    {
        lock (Gate)
        {
            if (Cache.TryGetValue(options, out var dir)) return dir;
            dir = NewDir(options.Preset.ToString().ToLowerInvariant());
            SyntheticCheckpoint.Write(options, dir);
            Cache[options] = dir;
            return dir;
        }
    }

    public static string Tiny(ulong seed = 7) => Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = seed });

    [OneTimeTearDown]
    public void DeleteAll()
    {
        lock (Gate)
        {
            if (_root is not null && Directory.Exists(_root)) Directory.Delete(_root, recursive: true);
            _root = null;
            Cache.Clear();
        }
    }
}
