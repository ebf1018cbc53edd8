using System.CommandLine;
using System.Text.Json;
using Qwen3Cuda.Model.Templates;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda template -m MODEL --messages FILE.json [--enable-thinking true|false] [--tools FILE.json]
/// [--add-generation-prompt]`: prints the rendered chat prompt exactly (no trailing newline added).
/// </summary>
public static class TemplateCommand
{
    public static Command Create()
    {
        var model = CliOptions.Model();
        var messages = new Option<string>("--messages") { Description = "JSON file with the messages array ([{\"role\":..,\"content\":..}, ..]; - is stdin)", Required = true, HelpName = "FILE" };
        var thinking = new Option<bool?>("--enable-thinking")
        {
            Description = "Pass enable_thinking to the template (omitted: not defined)",
            HelpName = "true|false",
        };
        var tools = new Option<string?>("--tools") { Description = "JSON file with the tools array", HelpName = "FILE" };
        var agp = new Option<bool>("--add-generation-prompt") { Description = "End with the assistant turn header" };
        var cmd = new Command("template", "Render the model's chat template") { model, messages, thinking, tools, agp };
        cmd.SetAction(parse =>
        {
            var stdout = parse.InvocationConfiguration.Output;
            var template = ChatTemplate.FromModelDirectory(ModelOpener.Resolve(parse.GetValue(model)!, parse.InvocationConfiguration.Error));
            var msgs = TextCliSupport.ReadJson(parse.GetValue(messages)!, "--messages");
            if (msgs.ValueKind != JsonValueKind.Array) throw new InvalidDataException("--messages: the file must hold a JSON array of messages");
            stdout.Write(template.Render(msgs, parse.GetValue(agp), parse.GetValue(thinking), TextCliSupport.ReadTools(parse.GetValue(tools))));
            stdout.Flush();
            return 0;
        });
        return cmd;
    }
}
