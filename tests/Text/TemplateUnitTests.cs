using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Tests.Text;

/// <summary>Behaviour the reference comparison does not cover: clear errors and Python strip semantics.</summary>
public class TemplateUnitTests
{
    static string Render(string source, params (string Name, object? Value)[] vars)
    {
        var globals = JinjaInterpreter.CreateGlobals();
        var env = new JinjaEnvironment(globals);
        foreach (var (n, v) in vars) env.Set(n, JinjaValue.From(v));
        return new JinjaInterpreter().Render(JinjaParser.Parse(source), env);
    }

    [Test]
    public void UnsupportedStatementNamesConstructAndPosition()
    {
        var e = Assert.Throws<JinjaException>(() => JinjaParser.Parse("line one\n  {% include 'other.jinja' %}"))!;
        Assert.That(e.Message, Does.Contain("unsupported statement 'include'"));
        Assert.That((e.Line, e.Column), Is.EqualTo((2, 6)));
    }

    [Test]
    public void UnsupportedFilterAndTestAreNamed()
    {
        var e = Assert.Throws<JinjaException>(() => Render("\n\n{{ x | frobnicate }}", ("x", "a")))!;
        Assert.That(e.Message, Does.Contain("unsupported filter 'frobnicate'"));
        Assert.That(e.Line, Is.EqualTo(3));
        var t = Assert.Throws<JinjaException>(() => Render("{{ x is prime }}", ("x", 3)))!;
        Assert.That(t.Message, Does.Contain("unsupported test 'prime'"));
    }

    [Test]
    public void UnclosedBlockIsAnError()
    {
        var e = Assert.Throws<JinjaException>(() => JinjaParser.Parse("{% if x %}never closed"))!;
        Assert.That(e.Message, Does.Contain("unexpected end of template"));
    }

    [Test]
    public void StripWithCharactersFollowsPython()
    {
        // Python: ' \nx\n '.strip('\n') keeps the spaces; only '\n' characters are removed from the ends.
        Assert.That(Render("[{{ s.strip('\\n') }}][{{ s.lstrip(' ') }}][{{ s.rstrip(' \\n') }}]", ("s", "\n x \n")),
            Is.EqualTo("[ x ][\n x \n][\n x]"));
        Assert.That(Render("[{{ s.strip() }}]", ("s", " \t x \n")), Is.EqualTo("[x]"));
    }

    [Test]
    public void NamespaceSurvivesLoopScopeButPlainSetDoesNot()
    {
        const string t = "{% set ns = namespace(n=0) %}{% set plain = 0 %}{% for i in [1,2,3] %}{% set ns.n = ns.n + i %}{% set plain = plain + i %}{% endfor %}{{ ns.n }} {{ plain }}";
        Assert.That(Render(t), Is.EqualTo("6 0"));
    }

    [Test]
    public void JsNumberFormatting()
    {
        Assert.That(JinjaValue.FormatJsNumber(1e21), Is.EqualTo("1e+21"));
        Assert.That(JinjaValue.FormatJsNumber(1e-7), Is.EqualTo("1e-7"));
        Assert.That(JinjaValue.FormatJsNumber(0.000001), Is.EqualTo("0.000001"));
        Assert.That(JinjaValue.FormatJsNumber(123.456), Is.EqualTo("123.456"));
        Assert.That(JinjaValue.FormatJsNumber(-2.5e-10), Is.EqualTo("-2.5e-10"));
        Assert.That(JinjaValue.FormatJsNumber(1e20), Is.EqualTo("100000000000000000000"));
    }
}
