using System.CommandLine;
using System.Text.Json;
using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda template --model DIR --messages FILE.json [--enable-thinking true|false] [--tools FILE.json]
/// [--add-generation-prompt]`: prints the rendered chat prompt exactly (no trailing newline added).
/// </summary>
public static class TemplateCommand
{
    public static Command Create()
    {
        var model = TextCliSupport.ModelOption();
        var messages = new Option<string>("--messages") { Description = "JSON file with the messages array ([{\"role\":..,\"content\":..}, ..])", Required = true };
        var thinking = new Option<bool?>("--enable-thinking") { Description = "Pass enable_thinking to the template (omitted: not defined)" };
        var tools = new Option<string?>("--tools") { Description = "JSON file with the tools array" };
        var agp = new Option<bool>("--add-generation-prompt") { Description = "End with the assistant turn header" };
        var cmd = new Command("template", "Render the model's chat template") { model, messages, thinking, tools, agp };
        cmd.SetAction(parse => TextCliSupport.Guard(parse, (stdout, _) =>
        {
            var template = ChatTemplate.FromModelDirectory(parse.GetValue(model)!);
            var msgs = TextCliSupport.ReadJson(parse.GetValue(messages)!, "--messages");
            if (msgs.ValueKind != JsonValueKind.Array) throw new InvalidDataException("--messages: the file must hold a JSON array of messages");
            JsonElement? toolsJson = parse.GetValue(tools) is string t ? TextCliSupport.ReadJson(t, "--tools") : null;
            stdout.Write(template.Render(msgs, parse.GetValue(agp), parse.GetValue(thinking), toolsJson));
            stdout.Flush();
            return 0;
        }));
        return cmd;
    }
}
