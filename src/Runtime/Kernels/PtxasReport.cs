using System.Globalization;
using System.Text.RegularExpressions;

namespace Qwen3Cuda.Runtime;

/// <summary>
/// Parses the ptxas verbose report that NVRTC puts in the program log for CUBIN builds
/// (option --ptxas-options=-v). One kernel's block looks like:
/// <code>
/// ptxas info    : Compiling entry function 'add_rmsnorm_bf16' for 'sm_90'
/// ptxas info    : Function properties for add_rmsnorm_bf16
///     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
/// ptxas info    : Used 18 registers, 128 bytes smem, 400 bytes cmem[0]
/// </code>
/// </summary>
public static partial class PtxasReport
{
    [GeneratedRegex(@"Compiling entry function '(?<name>[^']+)' for '(?<arch>[^']+)'")]
    private static partial Regex EntryRegex();
    [GeneratedRegex(@"(?<stack>\d+) bytes stack frame, (?<st>\d+) bytes spill stores, (?<ld>\d+) bytes spill loads")]
    private static partial Regex FrameRegex();
    [GeneratedRegex(@"Used (?<regs>\d+) registers(?<rest>.*)")]
    private static partial Regex UsedRegex();
    [GeneratedRegex(@"(?<n>\d+) bytes smem")]
    private static partial Regex SmemRegex();
    [GeneratedRegex(@"(?<n>\d+) bytes cmem\[0\]")]
    private static partial Regex CmemRegex();

    public static IReadOnlyList<PtxasKernelInfo> Parse(string log)
    {
        var result = new List<PtxasKernelInfo>();
        string? name = null, arch = null;
        int stack = 0, spillSt = 0, spillLd = 0;
        foreach (string raw in log.Split('\n'))
        {
            string line = raw.Trim();
            Match m;
            if ((m = EntryRegex().Match(line)).Success)
            {
                name = m.Groups["name"].Value;
                arch = m.Groups["arch"].Value;
                stack = spillSt = spillLd = 0;
            }
            else if (name != null && (m = FrameRegex().Match(line)).Success)
            {
                stack = Int(m, "stack");
                spillSt = Int(m, "st");
                spillLd = Int(m, "ld");
            }
            else if (name != null && (m = UsedRegex().Match(line)).Success)
            {
                string rest = m.Groups["rest"].Value;
                Match smem = SmemRegex().Match(rest), cmem = CmemRegex().Match(rest);
                result.Add(new PtxasKernelInfo(name, arch!, Int(m, "regs"), spillSt, spillLd, stack,
                    smem.Success ? Int(smem, "n") : 0, cmem.Success ? Int(cmem, "n") : 0));
                name = null;
            }
        }
        return result;
    }

    private static int Int(Match m, string group) => int.Parse(m.Groups[group].Value, CultureInfo.InvariantCulture);
}
