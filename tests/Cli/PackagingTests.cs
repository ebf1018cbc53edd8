using System.IO.Compression;
using System.Reflection;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using Qwen3Cuda.Tests.Model;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>
/// A library people can take: the packages carry real metadata and XML docs, the CLI installs as a .NET tool and
/// runs, and the README's embedding example compiles against the packages and generates text. The packs reuse the
/// build the tests run from (--no-build); NuGet's caches are redirected into a temp folder, so nothing is
/// downloaded and nothing stale is reused.
/// </summary>
[NonParallelizable]
public class PackagingTests
{
    static string Configuration => AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Debug{Path.DirectorySeparatorChar}") ? "Debug" : "Release";

    /// <summary>Environment for child dotnet calls: an empty global packages folder of our own, no telemetry or first-run banner.</summary>
    static Dictionary<string, string> IsolatedNuget(string root) => new()
    {
        ["NUGET_PACKAGES"] = Path.Combine(root, "nuget-packages"),
        ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        ["DOTNET_NOLOGO"] = "1",
        ["DOTNET_SKIP_FIRST_TIME_EXPERIENCE"] = "1",
    };

    /// <summary>The machine's own global packages folder, used as a read-only package source for third-party dependencies.</summary>
    static string UserPackages => Environment.GetEnvironmentVariable("NUGET_PACKAGES") is { Length: > 0 } p
        ? p : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages");

    static ChildProcess.Result Dotnet(string root, string workingDirectory, params string[] args)
    {
        var r = ChildProcess.Run(ChildProcess.DotnetHost, args, IsolatedNuget(root), timeoutMs: 300_000, workingDirectory: workingDirectory);
        Assert.That(r.ExitCode, Is.Zero, $"dotnet {string.Join(' ', args)}\n{r.Stdout}\n{r.Stderr}");
        return r;
    }

    [Test]
    public void PacksInstallsTheToolAndBuildsTheReadmeExample()
    {
        string root = TestCheckpoints.NewDir("packaging");
        string feed = Path.Combine(root, "feed");
        Dotnet(root, RepoPaths.Root, "pack", "Qwen3Cuda.sln", "-c", Configuration, "--no-build", "-o", feed, "-v", "q");

        // The libraries: real metadata, the README, the XML docs.
        foreach (var id in new[] { "Qwen3Cuda.Runtime", "Qwen3Cuda.Model" })
        {
            string nupkg = Directory.GetFiles(feed, $"{id}.*.nupkg").Single();
            using var zip = ZipFile.OpenRead(nupkg);
            var names = zip.Entries.Select(e => e.FullName).ToList();
            Assert.That(names, Does.Contain($"lib/net10.0/{id}.dll").And.Contain($"lib/net10.0/{id}.xml").And.Contain("README.md"), id);
            using var nuspecStream = zip.GetEntry($"{id}.nuspec")!.Open();
            var nuspec = XDocument.Load(nuspecStream);
            XNamespace ns = nuspec.Root!.Name.Namespace;
            var meta = nuspec.Root.Element(ns + "metadata")!;
            Assert.That(meta.Element(ns + "description")!.Value, Has.Length.GreaterThan(100), id);
            Assert.That(meta.Element(ns + "license")?.Value, Is.EqualTo("MIT"), id);
            Assert.That(meta.Element(ns + "readme")?.Value, Is.EqualTo("README.md"), id);
            Assert.That(meta.Element(ns + "projectUrl"), Is.Null, "no placeholder project URL");
            Assert.That(nuspec.ToString(), Does.Not.Contain("example.com").And.Not.Contain("TODO"));
        }
        Assert.That(Directory.GetFiles(feed, "*.nupkg").Select(Path.GetFileName), Has.None.Contains("Tests").And.None.Contains("Bench"));

        // The CLI as a .NET tool, installed into a folder of its own and run.
        string tools = Path.Combine(root, "tools");
        Dotnet(root, root, "tool", "install", "--tool-path", tools, "--add-source", feed, "qwen3cuda", "--ignore-failed-sources");
        string exe = Path.Combine(tools, OperatingSystem.IsWindows() ? "qwen3cuda.exe" : "qwen3cuda");
        var help = ChildProcess.Run(exe, ["--help"], IsolatedNuget(root));
        Assert.That(help.ExitCode, Is.Zero, help.Stderr);
        Assert.That(help.Stdout, Does.Contain("generate").And.Contain("demo"));
        var tokenize = ChildProcess.Run(exe, ["tokenize", "-m", CliModels.TinyText(), "--text", "the cat", "--ids-only"], IsolatedNuget(root));
        Assert.That(tokenize.ExitCode, Is.Zero, tokenize.Stderr);
        Assert.That(tokenize.Stdout.Trim(), Does.Match(@"^\[\d+(,\d+)*\]$"));

        // The README's embedding example, compiled against the packages and run on the tiny model.
        string readme = File.ReadAllText(Path.Combine(RepoPaths.Root, "README.md"));
        var m = Regex.Match(readme, @"<!-- embedding-example -->\s*```csharp\n(?<code>.*?)```\s*<!-- /embedding-example -->", RegexOptions.Singleline);
        Assert.That(m.Success, Is.True, "README.md has the marked embedding example");
        string code = m.Groups["code"].Value;
        Assert.That(code.Split('\n', StringSplitOptions.RemoveEmptyEntries), Has.Length.LessThanOrEqualTo(16), "about 15 lines");
        string app = Path.Combine(root, "app");
        Directory.CreateDirectory(app);
        File.WriteAllText(Path.Combine(app, "Program.cs"), code);
        string version = Regex.Match(Path.GetFileName(Directory.GetFiles(feed, "Qwen3Cuda.Model.*.nupkg").Single()), @"Qwen3Cuda\.Model\.(.+)\.nupkg").Groups[1].Value;
        File.WriteAllText(Path.Combine(app, "app.csproj"), $"""
            <Project Sdk="Microsoft.NET.Sdk">
              <PropertyGroup>
                <OutputType>Exe</OutputType>
                <TargetFramework>net10.0</TargetFramework>
                <ImplicitUsings>enable</ImplicitUsings>
                <Nullable>enable</Nullable>
                <TreatWarningsAsErrors>true</TreatWarningsAsErrors>
              </PropertyGroup>
              <ItemGroup>
                <PackageReference Include="Qwen3Cuda.Model" Version="{version}" />
              </ItemGroup>
            </Project>
            """);
        File.WriteAllText(Path.Combine(app, "nuget.config"), $"""
            <?xml version="1.0" encoding="utf-8"?>
            <configuration>
              <packageSources>
                <clear />
                <add key="qwen3cuda" value="{feed}" />
                <add key="user-cache" value="{UserPackages}" />
              </packageSources>
            </configuration>
            """);
        // Directory.Build.props of the repo must not leak in: the app lives in the temp folder, outside the repo.
        Dotnet(root, app, "build", "-c", "Release", "-v", "q", "-nologo");
        var run = ChildProcess.Run(ChildProcess.DotnetHost, [Path.Combine(app, "bin", "Release", "net10.0", "app.dll"), CliModels.TinyText()], IsolatedNuget(root));
        Assert.That(run.ExitCode, Is.Zero, run.Stderr);
        Assert.That(run.Stdout, Is.Not.Empty, "the example generated text");
    }

    /// <summary>The public surface is deliberate: the template engine's syntax tree, values and parser, and the tokenizer's
    /// internals are not part of it; the emulator's interpreter is not either.</summary>
    [Test]
    public void JinjaAndTokenizerInternalsAreNotPublic()
    {
        var model = typeof(Qwen3Cuda.Model.Templates.ChatTemplate).Assembly.GetExportedTypes().Select(t => t.Name).ToList();
        Assert.That(model.Where(n => n.StartsWith("Jinja", StringComparison.Ordinal)), Is.EqualTo(new[] { "JinjaException" }));
        Assert.That(model, Has.None.EndsWith("Node").And.None.EqualTo("BytePairMerger").And.None.EqualTo("Nfc").And.None.EqualTo("QwenPreTokenizer"));
        Assert.That(model, Does.Contain("ChatTemplate").And.Contain("Qwen3Tokenizer").And.Contain("Engine").And.Contain("ModelLocator"));
        var runtime = typeof(Qwen3Cuda.Runtime.IDevice).Assembly.GetExportedTypes().Where(t => t.Namespace == "Qwen3Cuda.Runtime.Emulation").Select(t => t.Name);
        Assert.That(runtime.Where(n => n.StartsWith("Warp", StringComparison.Ordinal) || n is "Cta" or "InstrDecoder" or "PtxParser" or "PtxLexer"), Is.Empty);
        var exceptions = new[] { typeof(Qwen3Cuda.Model.Templates.ChatTemplate).Assembly, typeof(Qwen3Cuda.Runtime.IDevice).Assembly }
            .SelectMany(a => a.GetExportedTypes()).Where(t => typeof(Exception).IsAssignableFrom(t)).ToList();
        Assert.That(exceptions.Where(t => !typeof(Qwen3Cuda.Runtime.Qwen3CudaException).IsAssignableFrom(t)), Is.Empty,
            "every public exception is a Qwen3CudaException");
    }
}
