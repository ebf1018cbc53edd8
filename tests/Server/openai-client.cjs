// Drives `qwen3cuda serve` with the official OpenAI client (the openai npm package that .ci/setup installs).
// Usage: node openai-client.cjs <npm node_modules dir> <base url, e.g. http://127.0.0.1:PORT/v1> <api key> <scripted|real|statuses>
// (statuses: the base URL argument is a comma-separated list name=url of servers set up to answer 413, 429 and 503)
// Prints one JSON object with what each scenario saw; the C# test (OpenAiClientTests) checks it.
const path = require("path");
const [, , modules, baseURL, apiKey, scenario] = process.argv;
const OpenAI = require(path.join(modules, "openai")).default;
// No retries: a 429/5xx must reach the test as it was answered.
const client = new OpenAI({ baseURL, apiKey, maxRetries: 0, timeout: 60_000 });
const tools = [{ type: "function", function: { name: "get_weather", description: "Weather of a city",
  parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] } } }];

async function error(promise) {
  try { await promise; return { status: 200 }; }
  catch (e) {
    return { status: e.status, type: e.type ?? e.error?.type, param: e.param ?? e.error?.param, code: e.code ?? e.error?.code,
             message: e.message, retryAfter: e.headers?.get?.("retry-after") ?? null };
  }
}

async function stream(params) {
  const s = await client.chat.completions.create({ ...params, stream: true, stream_options: { include_usage: true } });
  const out = { content: "", reasoning: "", toolCalls: [], finish: null, usage: null, chunks: 0, role: null };
  for await (const chunk of s) {
    out.chunks++;
    if (chunk.usage) out.usage = chunk.usage;
    for (const c of chunk.choices) {
      const d = c.delta ?? {};
      if (d.role) out.role = d.role;
      if (d.content) out.content += d.content;
      if (d.reasoning_content) out.reasoning += d.reasoning_content;
      for (const t of d.tool_calls ?? []) {
        const call = (out.toolCalls[t.index] ??= { id: "", name: "", arguments: "" });
        if (t.id) call.id = t.id;
        if (t.function?.name) call.name = t.function.name;
        if (t.function?.arguments) call.arguments += t.function.arguments;
      }
      if (c.finish_reason) out.finish = c.finish_reason;
    }
  }
  return out;
}

async function scripted() {
  const r = {};
  const messages = [{ role: "user", content: "Weather in Paris?" }];
  const whole = await client.chat.completions.create({ model: "scripted", messages, tools });
  r.whole = { message: whole.choices[0].message, finish: whole.choices[0].finish_reason, usage: whole.usage };
  r.stream = await stream({ model: "scripted", messages, tools });
  // The round trip: the call goes back as the assistant's tool_calls, the result as a tool message.
  const call = whole.choices[0].message.tool_calls[0];
  const second = await client.chat.completions.create({ model: "scripted", tools, messages: [
    ...messages,
    { role: "assistant", content: null, tool_calls: [call] },
    { role: "tool", tool_call_id: call.id, content: JSON.stringify({ temperature_c: 21 }) },
  ] });
  r.second = { finish: second.choices[0].finish_reason };
  r.models = (await client.models.list()).data.map(m => m.id);
  r.badTopP = await error(client.chat.completions.create({ model: "scripted", messages, top_p: 2 }));
  r.badRole = await error(client.chat.completions.create({ model: "scripted", messages: [{ role: "wizard", content: "x" }] }));
  r.unknownModel = await error(client.chat.completions.create({ model: "gpt-4o", messages }));
  r.noKey = await error(new OpenAI({ baseURL, apiKey: "wrong", maxRetries: 0 }).models.list());
  return r;
}

async function real() {
  const r = {};
  const messages = [{ role: "system", content: "You are terse." }, { role: "user", content: "Name three colours." }];
  const params = { model: "demo", messages, max_tokens: 8, temperature: 0, chat_template_kwargs: { enable_thinking: false } };
  const whole = await client.chat.completions.create(params);
  r.whole = { content: whole.choices[0].message.content, finish: whole.choices[0].finish_reason, usage: whole.usage };
  r.stream = await stream(params);
  const completion = await client.completions.create({ model: "demo", prompt: "Once upon a time", max_tokens: 5, temperature: 0 });
  r.completion = { text: completion.choices[0].text, finish: completion.choices[0].finish_reason, usage: completion.usage };
  const forced = await client.chat.completions.create({ model: "demo", messages: [{ role: "user", content: "Weather in Paris?" }],
    tools, tool_choice: { type: "function", function: { name: "get_weather" } }, max_tokens: 6, temperature: 0 });
  r.forced = { message: forced.choices[0].message, finish: forced.choices[0].finish_reason, usage: forced.usage };
  r.tooLong = await error(client.chat.completions.create({ model: "demo", messages: [{ role: "user", content: "word ".repeat(600) }] }));
  // A client that goes away mid-stream: abort after the second chunk.
  const controller = new AbortController();
  let seen = 0;
  try {
    const s = await client.chat.completions.create({ ...params, max_tokens: 400, stream: true }, { signal: controller.signal });
    // Chunks already parsed may still arrive after abort(): count only up to the abort.
    for await (const _ of s) { if (seen < 2 && ++seen === 2) controller.abort(); }
  } catch (e) { r.abortError = e.name; }
  r.abortedAfter = seen;
  return r;
}

async function statuses() {
  const r = {};
  for (const pair of baseURL.split(",")) {
    const [name, url] = pair.split("=");
    const c = new OpenAI({ baseURL: url, apiKey, maxRetries: 0 });
    const content = name === "tooLarge" ? "x".repeat(5000) : "hi";
    r[name] = await error(c.chat.completions.create({ model: "scripted", messages: [{ role: "user", content }] }));
  }
  return r;
}

({ scripted, real, statuses })[scenario]().then(
  r => { process.stdout.write(JSON.stringify(r)); },
  e => { console.error(e); process.exit(1); });
