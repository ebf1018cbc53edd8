using System.Text;
using System.Text.RegularExpressions;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.Compiler;

/// <summary>
/// Every inline PTX statement in kernels/*.cu and *.cuh that reads or writes memory (ld, st, cp.async and its
/// commit/wait, ldmatrix, atom, red, fences, barriers) declares the "memory" clobber (issue 12, fault 6). Without it
/// the compiler may keep a shared-memory value in a register across cp.async.wait_group, or move an ordinary load or
/// store across the asm: fine on the emulator, which runs the PTX as written, wrong on a GPU after NVRTC reorders.
/// </summary>
[TestFixture]
public sealed class InlineAsmClobberTests
{
    /// <summary>Instructions that touch memory or order it (a template containing one needs the clobber).</summary>
    static readonly Regex MemoryInstruction = new(
        @"(^|[\s;{])(ld|st|cp\.async|ldmatrix|stmatrix|atom|red|fence|membar|bar|barrier|mbarrier|prefetch)(\.|\s|;|$)",
        RegexOptions.Compiled);

    internal sealed record AsmStatement(string File, int Line, string Template, string? Clobbers)
    {
        public override string ToString() => $"{File}:{Line}: {Template}";
    }

    /// <summary>The asm(...) statements of one source: template (string literals joined) and clobber list, if any.</summary>
    internal static List<AsmStatement> AsmStatements(string file, string source)
    {
        var found = new List<AsmStatement>();
        foreach (Match m in Regex.Matches(source, @"\basm\s*(volatile\s*)?\("))
        {
            int start = m.Index + m.Length, depth = 1, i = start;
            var sections = new List<StringBuilder> { new() };
            for (; i < source.Length && depth > 0; i++)
            {
                char ch = source[i];
                if (ch == '"')
                {
                    int end = i + 1;
                    while (source[end] != '"') end += source[end] == '\\' ? 2 : 1;
                    sections[^1].Append(source, i, end - i + 1);
                    i = end;
                    continue;
                }
                if (ch == '(') depth++;
                else if (ch == ')' && --depth == 0) break;
                if (ch == ':' && depth == 1) { sections.Add(new StringBuilder()); continue; }
                sections[^1].Append(ch);
            }
            string template = string.Concat(Regex.Matches(sections[0].ToString(), "\"((?:[^\"\\\\]|\\\\.)*)\"").Select(s => s.Groups[1].Value));
            int line = source.AsSpan(0, m.Index).Count('\n') + 1;
            found.Add(new AsmStatement(file, line, template, sections.Count >= 4 ? sections[3].ToString() : null));
        }
        return found;
    }

    static IEnumerable<(string File, string Source)> Sources() =>
        KernelSources.KernelFiles.Select(f => (f, KernelSources.Read(f))).Concat(KernelSources.Headers.Select(h => (h.Key, h.Value)));

    [Test]
    public void EveryInlineAsmThatTouchesMemory_DeclaresTheMemoryClobber()
    {
        var all = Sources().SelectMany(s => AsmStatements(s.File, s.Source)).ToList();
        var touching = all.Where(a => MemoryInstruction.IsMatch(a.Template)).ToList();
        TestContext.Out.WriteLine($"{all.Count} inline asm statements, {touching.Count} touch memory:");
        foreach (var a in touching) TestContext.Out.WriteLine($"  {a}  clobbers: {a.Clobbers?.Trim() ?? "(none)"}");
        // The scan itself: it must find the statements this test exists for.
        Assert.That(touching.Select(a => a.Template), Has.Some.Contains("cp.async.cg.shared.global").And.Some.Contains("ldmatrix")
            .And.Some.Contains("cp.async.wait_group").And.Some.Contains("ld.global"));
        var missing = touching.Where(a => a.Clobbers is null || !a.Clobbers.Contains("\"memory\"", StringComparison.Ordinal)).ToList();
        Assert.That(missing, Is.Empty, "inline asm touching memory without the \"memory\" clobber:\n  " + string.Join("\n  ", missing));
    }

    [Test]
    public void TheScanner_ReadsTemplatesAndClobbers()
    {
        const string src = """
            x; asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(a), "l"(f(b, c)));
            asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
            asm volatile("ld.global.nc.v4.u32 {%0, %1}, [%2];" : "=r"(x), "=r"(y) : "l"(p) : "memory");
            asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
            """;
        var a = AsmStatements("t.cu", src);
        Assert.That(a.Select(s => s.Template), Is.EqualTo(new[]
        {
            "cp.async.cg.shared.global [%0], [%1], 16;", "cvt.rn.bf16.f32 %0, %1;", "ld.global.nc.v4.u32 {%0, %1}, [%2];", "cp.async.wait_group %0;",
        }));
        Assert.That(a.Select(s => s.Clobbers?.Trim()), Is.EqualTo(new[] { null, null, "\"memory\"", "\"memory\"" }));
        Assert.That(a.Select(s => MemoryInstruction.IsMatch(s.Template)), Is.EqualTo(new[] { true, false, true, true }));
        Assert.That(a.Select(s => s.Line), Is.EqualTo(new[] { 1, 2, 3, 4 }));
    }
}
