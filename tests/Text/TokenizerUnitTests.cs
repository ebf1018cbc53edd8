using System.Text;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Tests.Text;

/// <summary>Tokenizer parts on their own (no JS reference needed): NFC, the split rules, streaming decode, load errors.</summary>
public class TokenizerUnitTests
{
    static readonly Lazy<Qwen3Tokenizer> Tiny = new(() =>
        Qwen3Tokenizer.FromModelDirectory(Path.Combine(TextTestSupport.TextTestsDir, "Data", "tiny-model")));

    [Test]
    public void NfcComposesDecomposedText()
    {
        Assert.That(Nfc.Normalize("e\u0301"), Is.EqualTo("\u00e9"));
        Assert.That(Nfc.Normalize("\u1100\u1161\u11a8"), Is.EqualTo("\uac01"), "Hangul L V T jamo compose to one syllable");
        Assert.That(Nfc.Normalize("\u212b"), Is.EqualTo("\u00c5"), "Angstrom sign is a singleton decomposition");
        Assert.That(Nfc.Normalize("a\u0323\u0302"), Is.EqualTo("\u1ead"), "marks reordered by combining class, then composed");
        Assert.That(Nfc.Normalize("q\u0307\u0323"), Is.EqualTo("q\u0323\u0307"), "no precomposed q: canonical order only");
        const string plain = "plain ASCII and 中文 and 🚀";
        Assert.That(Nfc.Normalize(plain), Is.SameAs(plain), "already-NFC text is returned without copying");
    }

    [TestCase("Hello  world", new[] { "Hello", " ", " world" })]
    [TestCase("it's 'S 'Ve", new[] { "it", "'s", " '", "S", " '", "Ve" })]
    [TestCase("a\n\n  b", new[] { "a", "\n\n", " ", " b" })]
    [TestCase("x   ", new[] { "x", "   " })]
    [TestCase("12345", new[] { "1", "2", "3", "4", "5" })]
    [TestCase("(hello ((world", new[] { "(hello", " ((", "world" })]
    [TestCase("𝕳𝖊𝖑 x", new[] { "𝕳𝖊𝖑", " x" })]
    [TestCase("foo();\n\tbar", new[] { "foo", "();\n", "\tbar" })]
    public void SplitFollowsThePattern(string text, string[] pieces) =>
        Assert.That(QwenPreTokenizer.Split(text), Is.EqualTo(pieces));

    [Test]
    public void StreamingDecodeEqualsFullDecodeAndNeverSplitsCharacters()
    {
        var tok = Tiny.Value;
        // Byte-level tokens of valid text followed by invalid bytes (a lone 0xFF and a truncated 3-byte sequence).
        var bytes = Encoding.UTF8.GetBytes("é中🚀 ok").Concat(new byte[] { 0xFF, (byte)'a', 0xE4, 0xBD }).ToArray();
        var ids = bytes.Select(b => tok.TokenToId(Qwen3Tokenizer.ByteToChar[b].ToString())!.Value).ToArray();
        var decoder = tok.CreateStreamingDecoder();
        var pieces = ids.Select(decoder.Push).Where(p => p.Length > 0).ToList();
        pieces.Add(decoder.Flush());
        Assert.That(string.Concat(pieces), Is.EqualTo(tok.Decode(ids)));
        Assert.That(string.Concat(pieces), Is.EqualTo("é中🚀 ok\uFFFDa\uFFFD"));
        Assert.That(pieces.Take(3), Is.EqualTo(new[] { "é", "中", "🚀" }));
    }

    [TestCase(new byte[] { 0xE4, 0xBD }, 2)]
    [TestCase(new byte[] { 0x41, 0xF0, 0x9F, 0x98 }, 3)]
    [TestCase(new byte[] { 0xE0, 0x80 }, 0)]   // E0 80 can never be valid: emit now as U+FFFD
    [TestCase(new byte[] { 0xED, 0xA0 }, 0)]   // surrogate range
    [TestCase(new byte[] { 0xC3, 0xA9 }, 0)]   // complete
    [TestCase(new byte[] { 0xFF }, 0)]
    [TestCase(new byte[] { 0xF4, 0x8F }, 2)]
    public void IncompleteTailLength(byte[] bytes, int expected) =>
        Assert.That(StreamingDecoder.IncompleteTailLength(bytes), Is.EqualTo(expected));

    [Test]
    public void AddedTokensAreMatchedLongestFirstAndCanBeDisabled()
    {
        var tok = Tiny.Value;
        int imEnd = tok.TokenToId("<|im_end|>")!.Value, think = tok.TokenToId("<think>")!.Value;
        Assert.That(tok.Encode("a<|im_end|><think>"), Is.EqualTo(new[] { tok.Encode("a")[0], imEnd, think }));
        Assert.That(tok.Encode("<|im_end|>", parseAddedTokens: false), Does.Not.Contain(imEnd));
        Assert.That(tok.Decode(tok.Encode("x<|im_end|>y"), skipSpecialTokens: true), Is.EqualTo("xy"));
        Assert.That(tok.Decode(tok.Encode("x<think>y"), skipSpecialTokens: true), Is.EqualTo("x<think>y"), "<think> is not special");
    }

    [Test]
    public void UnsupportedTokenizerJsonIsAClearError()
    {
        var dir = Directory.CreateTempSubdirectory("q3tok").FullName;
        try
        {
            var json = File.ReadAllText(Path.Combine(TextTestSupport.TextTestsDir, "Data", "tiny-model", "tokenizer.json"));
            File.WriteAllText(Path.Combine(dir, "tokenizer.json"), json.Replace("\\\\p{N}|", "\\\\p{N}{1,3}|"));
            var e = Assert.Throws<InvalidDataException>(() => Qwen3Tokenizer.FromModelDirectory(dir))!;
            Assert.That(e.Message, Does.Contain("pre_tokenizer Split pattern").And.Contain("not supported"));
            Assert.Throws<FileNotFoundException>(() => Qwen3Tokenizer.FromModelDirectory(Path.Combine(dir, "missing")));
        }
        finally { Directory.Delete(dir, true); }
    }
}

/// <summary>The heap merge (long pieces) must give exactly the scan merge's ids.</summary>
public class BytePairMergerTests
{
    [Test]
    public void HeapAndScanMergesAgreeOnRandomPieces()
    {
        var tok = TextTestSupport.RealTokenizer();
        var rnd = new Random(17);
        string[] alphabet = ["a", "b", "e", "t", "h", "n", " ", "中", "文", "ก", "า", "ร", "é", "🚀", "\n", "0"];
        for (int trial = 0; trial < 300; trial++)
        {
            var sb = new StringBuilder();
            int len = rnd.Next(1, 300);
            for (int i = 0; i < len; i++) sb.Append(alphabet[rnd.Next(alphabet.Length)]);
            var bytes = Encoding.UTF8.GetBytes(sb.ToString());
            var scan = new List<int>();
            var heap = new List<int>();
            tok.Merger.Encode(bytes, scan, useHeap: false);
            tok.Merger.Encode(bytes, heap, useHeap: true);
            Assert.That(heap, Is.EqualTo(scan), $"trial {trial}: {sb}");
        }
    }
}
