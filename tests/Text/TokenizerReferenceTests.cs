using System.Text;
using System.Text.Json;
using Qwen3Cuda.Model.Tokenization;

namespace Qwen3Cuda.Tests.Text;

/// <summary>Token ids must equal the JS reference tokenizer's exactly on a varied corpus.</summary>
public class TokenizerReferenceTests
{
    static List<string> CorpusTexts(byte[] corpus)
    {
        // Same split as tests/Text/Reference/tokenize.cjs: lines on '\n' bytes (empty ones dropped), then the whole file.
        var texts = new List<string>();
        int start = 0;
        for (int i = 0; i <= corpus.Length; i++)
        {
            if (i == corpus.Length || corpus[i] == (byte)'\n')
            {
                if (i > start) texts.Add(Encoding.UTF8.GetString(corpus, start, i - start));
                start = i + 1;
            }
        }
        texts.Add(Encoding.UTF8.GetString(corpus));
        return texts;
    }

    [Test]
    public void IdsAndDecodedTextMatchJsReferenceOnCorpus()
    {
        var tokenizer = TextTestSupport.RealTokenizer();
        var corpusPath = Path.Combine(TextTestSupport.TextTestsDir, "Data", "tokenizer-corpus.txt");
        var output = TextTestSupport.RunNode(Path.Combine(TextTestSupport.TextTestsDir, "Reference", "tokenize.cjs"),
            TimeSpan.FromSeconds(60), TextTestSupport.NodeModules, corpusPath, "decode");
        var outLines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var expectedIds = JsonSerializer.Deserialize<int[][]>(outLines[0])!;
        var expectedText = JsonSerializer.Deserialize<string[]>(outLines[1])!;
        var texts = CorpusTexts(File.ReadAllBytes(corpusPath));
        Assert.That(texts, Has.Count.GreaterThanOrEqualTo(200), "corpus must have at least 200 lines");
        Assert.That(expectedIds, Has.Length.EqualTo(texts.Count), "reference and test split the corpus differently");

        var failures = new List<string>();
        for (int i = 0; i < texts.Count; i++)
        {
            var ids = tokenizer.Encode(texts[i]);
            if (!ids.SequenceEqual(expectedIds[i]))
                failures.Add($"line {i + 1} {JsonSerializer.Serialize(texts[i])}:\n  ours {JsonSerializer.Serialize(ids)}\n  js   {JsonSerializer.Serialize(expectedIds[i])}");
            var decoded = tokenizer.Decode(expectedIds[i]);
            if (decoded != expectedText[i])
                failures.Add($"decode of line {i + 1}: ours {JsonSerializer.Serialize(decoded)} js {JsonSerializer.Serialize(expectedText[i])}");
        }
        Assert.That(failures, Is.Empty, $"{failures.Count} mismatches:\n" + string.Join("\n", failures.Take(10)));
    }
}
