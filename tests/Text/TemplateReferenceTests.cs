using System.Text.Json;
using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Tests.Text;

/// <summary>Chat templates must render byte-identically to @huggingface/jinja (run in node).</summary>
public class TemplateReferenceTests
{
    static string CasesPath => Path.Combine(TextTestSupport.TextTestsDir, "Data", "template-cases.json");

    static string TemplateSource(JsonElement c)
    {
        if (c.TryGetProperty("template", out var t)) return t.GetString()!;
        var file = c.GetProperty("templateFile").GetString()!;
        var path = file == "@qwen3"
            ? Path.Combine(TextTestSupport.RequireQwenTokenizerDir(), "tokenizer_config.json")
            : Path.Combine(Path.GetDirectoryName(CasesPath)!, file);
        var text = File.ReadAllText(path);
        return path.EndsWith(".json", StringComparison.Ordinal)
            ? JsonDocument.Parse(text).RootElement.GetProperty("chat_template").GetString()!
            : text;
    }

    static (string? Output, string? Error) RenderOurs(JsonElement c)
    {
        try
        {
            var template = new ChatTemplate(TemplateSource(c));
            var messages = c.TryGetProperty("messages", out var m) ? JinjaValue.FromJson(m) : new JinjaList([]);
            bool agp = c.TryGetProperty("add_generation_prompt", out var a) && a.GetBoolean();
            bool? thinking = c.TryGetProperty("enable_thinking", out var e) ? e.GetBoolean() : null;
            JinjaValue? tools = c.TryGetProperty("tools", out var t) ? JinjaValue.FromJson(t) : null;
            return (template.Render(messages, agp, thinking, tools), null);
        }
        catch (JinjaException ex)
        {
            return (null, ex.Message);
        }
    }

    [Test]
    public void RenderingMatchesHuggingFaceJinja()
    {
        var cases = JsonDocument.Parse(File.ReadAllText(CasesPath)).RootElement.EnumerateArray().ToList();
        var reference = JsonDocument.Parse(TextTestSupport.RunNode(
            Path.Combine(TextTestSupport.TextTestsDir, "Reference", "render-template.cjs"), TimeSpan.FromSeconds(60),
            TextTestSupport.NodeModules, CasesPath)).RootElement.EnumerateArray().ToList();
        Assert.That(reference, Has.Count.EqualTo(cases.Count));
        var failures = new List<string>();
        for (int i = 0; i < cases.Count; i++)
        {
            var name = cases[i].GetProperty("name").GetString();
            var (ours, error) = RenderOurs(cases[i]);
            if (reference[i].TryGetProperty("error", out var jsError))
            {
                // Both must fail; raise_exception's message must come through.
                if (error == null) failures.Add($"{name}: reference failed ({jsError}) but ours rendered {JsonSerializer.Serialize(ours)}");
                else if (!error.Contains(jsError.GetString()!, StringComparison.Ordinal))
                    failures.Add($"{name}: error text differs: ours '{error}', reference '{jsError}'");
                continue;
            }
            var expected = reference[i].GetProperty("output").GetString();
            if (error != null) failures.Add($"{name}: ours failed: {error}");
            else if (ours != expected)
            {
                int k = 0;
                while (k < Math.Min(ours!.Length, expected!.Length) && ours[k] == expected[k]) k++;
                failures.Add($"{name}: first difference at char {k}:\n  ours {JsonSerializer.Serialize(ours[Math.Max(0, k - 40)..Math.Min(ours.Length, k + 40)])}\n  ref  {JsonSerializer.Serialize(expected[Math.Max(0, k - 40)..Math.Min(expected.Length, k + 40)])}");
            }
        }
        Assert.That(failures, Is.Empty, string.Join("\n", failures));
    }
}
