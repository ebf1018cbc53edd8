#!/usr/bin/env python3
"""Writes tokenizer-corpus.txt: varied lines for the tokenizer-vs-JS-reference test (bytes, may be invalid UTF-8)."""
import random

rnd = random.Random(1234)
lines = []
english = [
    "The quick brown fox jumps over the lazy dog.",
    "It's a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.",
    "I'M SURE THEY'LL COME, WE'VE TOLD THEM; HE'D KNOW. She's here, isn't she? You're right, I'd say.",
    "Don't stop believin' — hold on to that feelin'.",
    "  Leading spaces, and trailing spaces   ",
    "Tabs\tbetween\t\twords\t",
    "Multiple     spaces      here.",
    "A line with a carriage return\r in the middle",
    "Email: someone@example.com, URL: https://example.org/path?q=1&r=2#frag",
    "Prices: $1,234.56, €99, £0.99, ¥1000; 50% off!!!",
    "Hyphen-ated words, under_scores, camelCaseWords and PascalCase.",
    "Quotes: \"double\", 'single', «guillemets», „German“, ‘curly’ “quotes”.",
    "Ellipsis… and em—dash – en-dash.",
    "ALL CAPS SENTENCE WITH NUMBERS 123 AND SYMBOLS #@!",
    "Mr. O'Neil's dog's toys' colours weren't the ones they'd've chosen.",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'VE 'M 'LL 'D 'x 'Re 'lL",
    "''''   '''s  ' s",
    "a",
    "I",
    "?",
    "...",
    "Supercalifragilisticexpialidocious antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis",
]
chinese = [
    "你好，世界！今天天气很好。",
    "机器学习是人工智能的一个分支，它使计算机能够从数据中学习。",
    "大语言模型（LLM）在自然语言处理任务中表现出色。",
    "我爱北京天安门，天安门上太阳升。",
    "《红楼梦》是中国古典四大名著之一。",
    "这是一个测试：１２３４５，ＡＢＣ，全角字符。",
    "混合English和中文的句子，with numbers 42 和标点。",
    "“引号”和‘单引号’以及【方括号】、……省略号",
    "繁體中文：臺灣、香港、澳門。",
    "𠀀𠀁𪚥 are CJK Extension B characters outside the BMP.",
]
other_scripts = [
    "日本語のテキスト：ひらがな、カタカナ、漢字を含みます。",
    "東京は日本の首都です。ｶﾀｶﾅ半角",
    "한국어 문장입니다. 안녕하세요!",
    "Привет, мир! Как дела? Ёжик в тумане.",
    "Ελληνικά: Γειά σου Κόσμε, αβγδε ΑΒΓΔΕ.",
    "مرحبا بالعالم! هذه جملة عربية.",
    "שלום עולם, זה משפט בעברית.",
    "नमस्ते दुनिया, यह हिंदी वाक्य है।",
    "สวัสดีชาวโลก นี่คือภาษาไทย",
    "Tiếng Việt có nhiều dấu: ả ã ạ ằ ẳ ẵ ặ ơ ư đ.",
    "Ünïcödé àccénts: naïve café, résumé, jalapeño, Zürich, Ærøskøbing, İstanbul, ß.",
    "Georgian: ქართული ენა; Armenian: Հայերեն; Amharic: አማርኛ",
    "Mixed: English 中文 日本語 한국어 Русский العربية עברית हिन्दी 123",
    "Math: ∀x∈ℝ, ∃y: x²+y²≥0; ∑ᵢ aᵢ = ∫₀^∞ f(x)dx ≈ π/2 ± ε",
    "Symbols: ©®™ ←↑→↓ ♠♣♥♦ ★☆ ✓✗ ☺ ♪♫ °C ℃ № §¶ †‡ •",
    "Box drawing: ┌──┐ │  │ └──┘ ░▒▓█",
]
emoji = [
    "Emoji: 😀😃😄😁 🎉🎊 👍👎 ❤️ 💯",
    "ZWJ family: 👨‍👩‍👧‍👦 and 👩🏽‍💻 and 🏳️‍🌈",
    "Flags: 🇺🇸🇬🇧🇨🇳🇯🇵🇩🇪🇫🇷",
    "Skin tones: 👋🏻👋🏼👋🏽👋🏾👋🏿",
    "Emoji in text: I love 🍕 and 🍣! 🚀 to the 🌙.",
    "Keycaps: 1️⃣ 2️⃣ #️⃣ *️⃣ and variation ☀︎ ☀️",
    "Rare plane: 𝕳𝖊𝖑𝖑𝖔 𝓦𝓸𝓻𝓵𝓭 𝟙𝟚𝟛 𝐀𝐁𝐂",
    "Ancient: 𓀀𓀁 𐍈 𒀀 𝄞",
]
code = [
    "def fibonacci(n: int) -> int:",
    "    if n < 2:",
    "        return n",
    "    return fibonacci(n - 1) + fibonacci(n - 2)",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "public static async Task<int> MainAsync(string[] args) => await RunAsync(args).ConfigureAwait(false);",
    "const x = {a: 1, \"b\": [1, 2, 3], c: null}; // comment",
    "SELECT id, name FROM users WHERE age >= 18 AND name LIKE '%son' ORDER BY id DESC;",
    "<div class=\"container\"><p>Hello &amp; welcome</p></div>",
    "#include <stdio.h>",
    "int main(void) { printf(\"%d\\n\", 42); return 0; }",
    "x = [i**2 for i in range(10) if i % 2 == 0]",
    "git commit -m \"Fix bug #123\" && git push origin main",
    "$ ls -la /usr/local/bin | grep -E '^-rwx' > out.txt 2>&1",
    "{\"name\": \"get_weather\", \"arguments\": {\"location\": \"Paris\", \"unit\": \"celsius\"}}",
    "fn main() { let v: Vec<u8> = vec![0xFF, 0x00]; println!(\"{:?}\", v); }",
    "__global__ void add(float* __restrict__ y, const float* x, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; }",
    "\t\tindented with tabs();",
    "        deeply    indented    code    ;;",
    "a=b+c-d*e/f%g^h|i&j~k!l<m>n?o:p",
    "regex: ^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@\\w+\\.\\w{2,}$",
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>",
    "-----BEGIN CERTIFICATE-----",
    "====  ****  ####  ----  ____  ~~~~",
    "base64: SGVsbG8gV29ybGQhIFRoaXMgaXMgYmFzZTY0IGVuY29kZWQ=",
    "hex: 0xDEADBEEF 0x7fffffff deadbeefcafebabe",
    "UUID: 123e4567-e89b-12d3-a456-426614174000",
]
numbers = [
    "1234567890",
    "3.14159265358979323846264338327950288419716939937510",
    "-42, +17, 1e-9, 6.022e23, 0.000001, 1_000_000",
    "Phone: +1 (555) 123-4567; ISBN 978-3-16-148410-0",
    "Dates: 2024-01-15T10:30:00Z, 15/01/2024, Jan 15th 2024",
    "Version 2.0.1-beta.3+build.456",
    "١٢٣٤٥ ٦٧٨٩٠ (Arabic-Indic) ०१२३ (Devanagari) ௧௨௩ (Tamil)",
    "Roman: Ⅰ Ⅱ Ⅲ Ⅳ ⅻ; fractions ½ ¼ ¾ ⅓; superscripts ¹²³ ⁴⁵",
    "100% 99.9% 0.1% 12:34:56 1:2 3/4",
    "ⅠⅡⅢ 〇一二三 壹贰叁",
]
special = [
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>",
    "<|im_start|>user\nHello!<|im_end|>\n<|im_start|>assistant\n",
    "<think>\nLet me think about this.\n</think>\n\nThe answer is 42.",
    "<tool_call>\n{\"name\": \"f\", \"arguments\": {}}\n</tool_call>",
    "<tool_response>\n{\"ok\": true}\n</tool_response>",
    "<|endoftext|><|endoftext|>text after",
    "<|im_start|><|im_end|><think></think>",
    "Special inside words: abc<|im_end|>def and <|im_start|x> partial and <|im_end| broken",
    "<|fim_prefix|>def f():<|fim_suffix|>    return 1<|fim_middle|>",
    "<|vision_start|><|image_pad|><|vision_end|>",
    "<|object_ref_start|>the cat<|object_ref_end|><|box_start|>(1,2),(3,4)<|box_end|>",
    "<<|im_start|>> <thinking> <think >< think> </ think>",
    "<|repo_name|>qwen<|file_sep|>main.py",
]
whitespace = [
    " ",
    "  ",
    "                ",
    "\t",
    "\t \t \t",
    " \t\r",
    "word\r",
    "trailing space ",
    "trailing spaces    ",
    "x  y   z    w",
    "\u00a0non-breaking\u00a0space\u2003em space\u3000ideographic space\u200bzero-width",
    "\u2028line separator\u2029paragraph separator",
    "\ufeffBOM at start",
    "\u000bvertical tab\u000cform feed",
    "soft\u00adhyphen and zero\u200dwidth\u200cjoiners",
]
nfc = [
    "Combining: e\u0301 a\u0300 o\u0308 n\u0303 c\u0327 (decomposed forms)",
    "Precomposed: é à ö ñ ç",
    "Stacked: a\u0323\u0302 q\u0307\u0323 o\u031b\u0301",
    "Hangul jamo: \u1100\u1161\u11a8 \u1112\u1161\u11ab\u1100\u1173\u11af",
    "Angstrom \u212b Ohm \u2126 Kelvin \u212a",
    "CJK compatibility: \uf900\uf901\ufa10",
    "Ligatures (compat, unchanged by NFC): ﬁ ﬂ ﬀ",
    "Greek tonos: \u03ac \u03b1\u0301 \u1f71",
    "Devanagari nukta: \u0915\u093c \u0958",
]
lines += english + chinese + other_scripts + emoji + code + numbers + special + whitespace + nfc

# Random mixtures for breadth.
pool = [w for l in english + chinese + other_scripts + emoji + code + numbers for w in l.split(' ') if w]
for i in range(60):
    k = rnd.randint(1, 14)
    seps = [' ', ' ', ' ', '  ', '\t', '', ', ', ' \t ']
    lines.append(''.join(rnd.choice(pool) + rnd.choice(seps) for _ in range(k)))
# Random code points from many ranges.
ranges = [(0x20, 0x7e), (0xa0, 0x24f), (0x370, 0x3ff), (0x400, 0x4ff), (0x590, 0x6ff), (0x900, 0x97f),
          (0x3040, 0x30ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3), (0x1f300, 0x1f6ff), (0x2000, 0x206f),
          (0x300, 0x36f), (0x1d400, 0x1d7ff), (0x20000, 0x2a6df)]
for i in range(40):
    s = ''
    for _ in range(rnd.randint(1, 30)):
        a, b = rnd.choice(ranges)
        s += chr(rnd.randint(a, b))
    lines.append(s)

data = b'\n'.join(l.encode('utf-8', 'surrogatepass') for l in lines)
# Invalid UTF-8 lines (both sides see U+FFFD per maximal invalid subpart).
invalid = [
    b'invalid byte \xff here',
    b'truncated \xe4\xbd end',
    b'truncated at end \xe4',
    b'lone continuation \x80\x81\xbf bytes',
    b'overlong \xc0\xaf and \xe0\x80\xaf',
    b'surrogate \xed\xa0\x80 encoded',
    b'too big \xf4\x90\x80\x80 and \xf5\x80',
    b'mixed \xe4\xbd\xa0\xff\xe5\xa5\xbd valid-invalid-valid',
    b'\xfe\xfe\xff\xff',
    b'4-byte truncated \xf0\x9f\x98 then ascii',
]
data += b'\n' + b'\n'.join(invalid) + b'\n'
data += b'Paragraph one.\n\nParagraph two after blank line.\n\n\n\nFour newlines above.\r\nCRLF line\r\n'
open('tokenizer-corpus.txt', 'wb').write(data)
print(data.count(b'\n'), 'lines', len(data), 'bytes')
