using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Qwen3Cuda.Runtime;
using Spectre.Console;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>`qwen3cuda kernels --arch sm_90 [--json]`: compiles every kernel (no GPU needed) and prints the ptxas report.</summary>
public static class KernelsCommand
{
    public static Command Create()
    {
        var arch = new Option<string>("--arch") { Description = "target architecture: sm_80, sm_86, sm_89, sm_90, ...", DefaultValueFactory = _ => "sm_90", HelpName = "sm_XX" };
        var json = new Option<bool>("--json") { Description = "print JSON instead of a table" };
        var noCache = new Option<bool>("--no-cache") { Description = "compile even when the disk cache has the result" };
        var cmd = new Command("kernels", "Compile every kernel with NVRTC and print registers, spills, shared memory and compile time") { arch, json, noCache };
        cmd.SetAction(parse => Run(parse.GetValue(arch)!, parse.GetValue(json), parse.GetValue(noCache)));
        return cmd;
    }

    public sealed record Row(string File, string Kernel, string Arch, int Registers, int SpillStoreBytes, int SpillLoadBytes,
        int StackFrameBytes, int StaticSharedBytes, bool UsesMma, double CompileMilliseconds, bool Cached);

    public static IReadOnlyList<Row> CompileAll(string arch, bool useCache)
    {
        var compiler = new KernelCompiler(useCache: useCache);
        var rows = new List<Row>();
        foreach (string file in KernelSources.KernelFiles)
        {
            CompiledModule m = compiler.Compile(new KernelBuild(file, arch, CompileTarget.Cubin) { LineInfo = false });
            if (m.PtxasInfo.Count == 0)
                throw new UsageException($"--arch {arch}: NVRTC built no CUBIN for {file}, so there is no ptxas report (NVRTC knows: sm_{string.Join(", sm_", Qwen3Cuda.Runtime.Native.NvrtcLibrary.SupportedArchs())})");
            foreach (PtxasKernelInfo k in m.PtxasInfo)
                rows.Add(new Row(file, k.Kernel, k.Arch, k.Registers, k.SpillStoreBytes, k.SpillLoadBytes, k.StackFrameBytes,
                    k.StaticSharedBytes, PtxUsesMma(m.Ptx, k.Kernel), m.CompileMilliseconds, m.FromCache));
        }
        return rows;
    }

    /// <summary>True when the kernel's PTX body contains an mma.sync instruction.</summary>
    public static bool PtxUsesMma(string ptx, string kernel)
    {
        int start = ptx.IndexOf($".entry {kernel}(", StringComparison.Ordinal);
        if (start < 0) return false;
        int end = ptx.IndexOf(".entry ", start + 7, StringComparison.Ordinal);
        string body = end < 0 ? ptx[start..] : ptx[start..end];
        return body.Contains("mma.sync", StringComparison.Ordinal);
    }

    private static int Run(string arch, bool json, bool noCache)
    {
        EmulateCommand.ParseArch(arch);
        var rows = CompileAll(arch, !noCache);
        if (json)
        {
            Console.WriteLine(JsonSerializer.Serialize(rows, new JsonSerializerOptions { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.CamelCase }));
            return 0;
        }
        var table = new Table().AddColumns("file", "kernel", "arch", "regs", "spill st B", "spill ld B", "stack B", "smem B", "mma", "compile ms");
        foreach (var r in rows)
            table.AddRow(r.File, r.Kernel, r.Arch, N(r.Registers), N(r.SpillStoreBytes), N(r.SpillLoadBytes), N(r.StackFrameBytes),
                N(r.StaticSharedBytes), r.UsesMma ? "yes" : "", r.Cached ? "cached" : r.CompileMilliseconds.ToString("F0", CultureInfo.InvariantCulture));
        AnsiConsole.Write(table);
        int spilling = rows.Count(r => r.SpillLoadBytes + r.SpillStoreBytes > 0);
        Console.WriteLine($"{rows.Count} kernels in {rows.Select(r => r.File).Distinct().Count()} files for {arch}; {spilling} spill.");
        return 0;
    }

    private static string N(int v) => v.ToString(CultureInfo.InvariantCulture);
}
