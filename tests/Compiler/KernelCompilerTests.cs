using Qwen3Cuda.Cli.Commands;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Native;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.Compiler;

[TestFixture]
public class KernelCompilerTests
{
    private string _cache = null!;

    [SetUp]
    public void NewCache() => _cache = Path.Combine(Path.GetTempPath(), "qwen3cuda-cache-" + Guid.NewGuid().ToString("N"));

    [TearDown]
    public void DropCache()
    {
        if (Directory.Exists(_cache)) Directory.Delete(_cache, recursive: true);
    }

    [Test]
    public void EveryKernelFileIsEmbeddedWithItsHeaders()
    {
        string[] onDisk = Directory.GetFiles(Path.Combine(RepoPaths.Root, "kernels"), "*.cu").Select(Path.GetFileName).Order(StringComparer.Ordinal).ToArray()!;
        Assert.That(KernelSources.KernelFiles, Is.EqualTo(onDisk));
        Assert.That(KernelSources.Headers.Keys, Does.Contain("common.cuh"));
    }

    [Test]
    public void CubinBuildHasPtxCubinAndPtxasReport()
    {
        var m = new KernelCompiler(_cache).Compile(new KernelBuild("rmsnorm.cu", "sm_90", CompileTarget.Cubin));
        Assert.That(m.Ptx, Does.Contain(".target sm_90").And.Contain(".entry add_rmsnorm_bf16("));
        Assert.That(m.CubinArch, Is.EqualTo("sm_90"));
        Assert.That(m.Cubin, Is.Not.Null.And.Not.Empty);
        Assert.That(m.Cubin![..4], Is.EqualTo(new byte[] { 0x7f, (byte)'E', (byte)'L', (byte)'F' }), "a CUBIN is an ELF file");
        Assert.That(m.PtxasInfo.Select(k => k.Kernel), Is.EquivalentTo(CudaPtxEntries(m.Ptx)), "one report per kernel");
        var info = m.PtxasInfo.Single(k => k.Kernel == "add_rmsnorm_bf16");
        Assert.That(info.Registers, Is.InRange(1, 255));
        Assert.That(info.StaticSharedBytes, Is.EqualTo(128), "the 32-float block-reduction scratch");
        Assert.That(m.Options, Does.Contain("-std=c++17"));
    }

    private static IEnumerable<string> CudaPtxEntries(string ptx) =>
        System.Text.RegularExpressions.Regex.Matches(ptx, @"\.entry (\w+)\(").Select(x => x.Groups[1].Value);

    [Test]
    public void PtxBuildForTheEmulatorHasNoCubin()
    {
        var m = new KernelCompiler(_cache).Compile(new KernelBuild("rmsnorm.cu", "sm_80", CompileTarget.Ptx));
        Assert.That(m.Cubin, Is.Null);
        Assert.That(m.PtxArch, Is.EqualTo("compute_80"));
        Assert.That(m.Ptx, Does.Contain(".target sm_80"));
        Assert.That(m.Ptx, Does.Contain(".loc"), "line info is on by default, so the emulator can name source lines");
    }

    [Test]
    public void SecondCompileComesFromTheDiskCacheAndDefinesChangeTheKey()
    {
        var compiler = new KernelCompiler(_cache);
        var build = new KernelBuild("rmsnorm.cu", "sm_90", CompileTarget.Cubin);
        var first = compiler.Compile(build);
        var second = new KernelCompiler(_cache).Compile(build);
        Assert.That(first.FromCache, Is.False);
        Assert.That(second.FromCache, Is.True);
        Assert.That(second.Ptx, Is.EqualTo(first.Ptx));
        Assert.That(second.Cubin, Is.EqualTo(first.Cubin));
        Assert.That(second.PtxasInfo, Is.EqualTo(first.PtxasInfo));
        var defined = compiler.Compile(build with { Defines = new Dictionary<string, string> { ["HEAD_DIM"] = "128" } });
        Assert.That(defined.FromCache, Is.False);
        Assert.That(defined.Options, Does.Contain("-DHEAD_DIM=128"));
    }

    [Test]
    public void CompileErrorReportsTheNvrtcLogWithFileAndLine()
    {
        const string source = "#include \"common.cuh\"\nextern \"C\" __global__ void broken(float* x)\n{\n    x[0] = undefined_name;\n}\n";
        var e = Assert.Throws<NvrtcException>(() =>
            new KernelCompiler(_cache).CompileSource("broken.cu", source, new KernelBuild("broken.cu", "sm_90", CompileTarget.Ptx)));
        Assert.That(e!.Message, Does.Contain("broken.cu(4)").And.Contain("undefined_name"));
        Assert.That(e.Log, Does.Contain("error"));
    }

    /// <summary>
    /// Issue 12, fault 6: a GPU newer than NVRTC (NVRTC 11.8 knows sm_35..sm_90; a B200 is sm_100). The compiler used to
    /// pass --gpu-architecture=compute_100, which NVRTC 11.8 rejects; it now builds PTX for the newest architecture NVRTC
    /// knows that is not newer than the device (compute_90), which the driver JIT-compiles forward.
    /// </summary>
    [Test]
    public void NewerGpuThanNvrtc_GetsPtxOfTheNewestArchNvrtcKnows()
    {
        var supported = NvrtcLibrary.SupportedArchs();
        int newest = supported.Max();
        int device = newest + 10;   // 100 with NVRTC 11.8
        var m = new KernelCompiler(_cache).Compile(new KernelBuild("rmsnorm.cu", $"sm_{device}", CompileTarget.Cubin));
        Assert.That(m.Cubin, Is.Null, "no CUBIN for an architecture NVRTC does not know");
        Assert.That(m.CubinArch, Is.Null);
        Assert.That(m.PtxArch, Is.EqualTo($"compute_{newest}"));
        Assert.That(m.Ptx, Does.Contain($".target sm_{newest}").And.Contain(".entry add_rmsnorm_bf16("));
    }

    /// <summary>An older NVRTC (its arch list given to the compiler): sm_89 and sm_90 devices get compute_86 PTX.</summary>
    [Test]
    public void OlderNvrtcArchList_FallsBackToItsNewestArchBelowTheDevice()
    {
        IReadOnlyList<int> nvrtc111 = NvrtcLibrary.ArchsOfVersion(11, 1);
        var m = new KernelCompiler(_cache, supportedArchs: () => nvrtc111).Compile(new KernelBuild("rmsnorm.cu", "sm_90", CompileTarget.Cubin));
        Assert.That((m.PtxArch, m.CubinArch), Is.EqualTo(("compute_86", (string?)null)));
        Assert.That(m.Ptx, Does.Contain(".target sm_86"));
        Assert.That(m.Options, Does.Contain("--gpu-architecture=compute_86"));
    }

    [Test]
    public void ChooseTarget_Table()
    {
        int[] v118 = [35, 37, 50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90];
        Assert.That(KernelCompiler.ChooseTarget(90, CompileTarget.Cubin, v118), Is.EqualTo((90, true)), "known: CUBIN");
        Assert.That(KernelCompiler.ChooseTarget(90, CompileTarget.Ptx, v118), Is.EqualTo((90, false)), "the emulator: PTX");
        Assert.That(KernelCompiler.ChooseTarget(100, CompileTarget.Cubin, v118), Is.EqualTo((90, false)), "Blackwell on NVRTC 11.8");
        Assert.That(KernelCompiler.ChooseTarget(120, CompileTarget.Ptx, v118), Is.EqualTo((90, false)));
        Assert.That(KernelCompiler.ChooseTarget(88, CompileTarget.Cubin, v118), Is.EqualTo((87, false)), "never newer than the device");
        var e = Assert.Throws<NotSupportedException>(() => KernelCompiler.ChooseTarget(90, CompileTarget.Cubin, [35, 50, 75]));
        Assert.That(e!.Message, Does.Contain("sm_80").And.Contain("sm_90").And.Contain(NativeLibraries.NvrtcEnvironmentVariable));
        Assert.That(() => NvrtcLibrary.ArchsOfVersion(10, 2), Throws.InstanceOf<NotSupportedException>().With.Message.Contains("11.2"));
    }

    [Test]
    public void ArchBelowSm80IsRejectedClearly()
    {
        var e = Assert.Throws<ArgumentException>(() => KernelCompiler.ParseArch("sm_75"));
        Assert.That(e!.Message, Does.Contain("sm_75").And.Contain("sm_80"));
        Assert.That(KernelCompiler.ParseArch("compute_90"), Is.EqualTo(90));
    }

    [Test]
    public void PtxasReportParsesEveryField()
    {
        const string log = """
            ptxas info    : 0 bytes gmem
            ptxas info    : Compiling entry function 'k1' for 'sm_80'
            ptxas info    : Function properties for k1
                16 bytes stack frame, 8 bytes spill stores, 4 bytes spill loads
            ptxas info    : Used 96 registers, 4096 bytes smem, 380 bytes cmem[0]
            ptxas info    : Compiling entry function 'k2' for 'sm_80'
            ptxas info    : Function properties for k2
                0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
            ptxas info    : Used 12 registers, 360 bytes cmem[0]
            """;
        Assert.That(PtxasReport.Parse(log), Is.EqualTo(new[]
        {
            new PtxasKernelInfo("k1", "sm_80", 96, 8, 4, 16, 4096, 380),
            new PtxasKernelInfo("k2", "sm_80", 12, 0, 0, 0, 0, 360),
        }));
    }

    [TestCase("sm_80")]
    [TestCase("sm_90")]
    public void KernelsVerbListsEveryKernelWithoutSpills(string arch)
    {
        var rows = KernelsCommand.CompileAll(arch, useCache: true);
        var files = rows.Select(r => r.File).Distinct().Order(StringComparer.Ordinal);
        Assert.That(files, Is.EqualTo(KernelSources.KernelFiles), "every kernel file has at least one kernel in the report");
        foreach (var r in rows)
            Assert.That(r.SpillStoreBytes + r.SpillLoadBytes, Is.Zero, $"{r.File}:{r.Kernel} spills at {arch}");
    }

    [Test]
    public void MissingNvrtcIsOneClearSentence()
    {
        var r = ChildProcess.Run(ChildProcess.DotnetHost, [Path.Combine(AppContext.BaseDirectory, "qwen3cuda.dll"), "kernels", "--arch", "sm_90", "--no-cache"],
            new Dictionary<string, string> { [NativeLibraries.NvrtcEnvironmentVariable] = "/nonexistent/libnvrtc.so.12" });
        Assert.That(r.ExitCode, Is.EqualTo(Qwen3Cuda.Cli.ExitCodes.Unavailable));
        Assert.That(r.Stderr.Trim(), Does.StartWith("error: No NVRTC library found (tried /nonexistent/libnvrtc.so.12)"));
        Assert.That(r.Stderr, Does.Not.Contain("DllNotFoundException").And.Not.Contain("   at "));
    }

    [Test]
    public void MissingDriverIsReportedByInfo()
    {
        var r = ChildProcess.Run(ChildProcess.DotnetHost, [Path.Combine(AppContext.BaseDirectory, "qwen3cuda.dll"), "info"],
            new Dictionary<string, string> { [NativeLibraries.CudaEnvironmentVariable] = "/nonexistent/libcuda.so.1" });
        Assert.That(r.ExitCode, Is.Zero, r.Stderr);
        Assert.That(r.Stdout, Does.Contain("no CUDA driver found (tried /nonexistent/libcuda.so.1)"));
        Assert.That(r.Stdout, Does.Contain("NVRTC: "));
    }
}
