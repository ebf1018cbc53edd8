namespace Qwen3Cuda.Tests.Support;

/// <summary>Paths of the repository the tests run from (found by walking up to Qwen3Cuda.sln).</summary>
public static class RepoPaths
{
    public static string Root { get; } = FindRoot();

    /// <summary>The npm cache that .ci/setup fills (real tokenizer files, reference JS packages).</summary>
    public static string NpmModules => Path.Combine(Root, ".cache", "npm", "node_modules");

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "Qwen3Cuda.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException($"no Qwen3Cuda.sln above {AppContext.BaseDirectory}");
    }
}
