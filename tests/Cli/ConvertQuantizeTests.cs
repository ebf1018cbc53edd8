using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Tests.Model;

namespace Qwen3Cuda.Tests.Cli;

/// <summary>
/// `qwen3cuda-convert quantize` (docs/formats.md): the round trip (quantize the tiny bf16 checkpoint, load it, and the
/// weights the loader dequantizes are exactly the quantizer's codes times its scales, within the format's rounding of
/// the originals), the atomic output, and bad command lines.
/// </summary>
[NonParallelizable]
public class ConvertQuantizeTests
{
    static (int Exit, string Out, string Err) Convert(params string[] args)
    {
        var (o, e) = (Console.Out, Console.Error);
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try { return (Qwen3Cuda.ConvertTool.Program.Main(args), stdout.ToString(), stderr.ToString()); }
        finally { Console.SetOut(o); Console.SetError(e); }
    }

    [TestCase("int8", WeightFormat.Int8Channel)]
    [TestCase("fp8", WeightFormat.Fp8Block)]
    [TestCase("int4", WeightFormat.Int4Gptq)]
    public void RoundTrip_LoadedWeightsAreWhatWasWritten(string to, WeightFormat format)
    {
        string src = TestCheckpoints.Tiny();
        string dst = Path.Combine(TestCheckpoints.NewDir("quantize-" + to), "out");
        var (exit, output, err) = format == WeightFormat.Int4Gptq
            ? Convert("quantize", "--to", to, "--in", src, "--out", dst, "--group-size", "32")
            : Convert("quantize", "--to", to, "--in", src, "--out", dst);
        Assert.That(exit, Is.Zero, err);
        Assert.That(output, Does.StartWith($"wrote {dst} ({to})"));
        Assert.That(err, Does.Contain("] ").And.Contain("/"), "a progress bar on stderr");
        Assert.That(Directory.GetDirectories(Path.GetDirectoryName(dst)!), Is.EqualTo(new[] { dst }), "no temporary folder left");

        using var original = ModelWeights.Load(src);
        using var quantized = ModelWeights.Load(dst);
        Assert.That(quantized.Format.LinearFormat, Is.EqualTo(format));
        var names = new ModelTensors(quantized.Config);
        if (format == WeightFormat.Int4Gptq)
        {
            // what was written: the GPTQ tensors of the original values; dequantized = (q - 8) x scale in bf16
            foreach (var (t, wq, wb) in new[] { (names.Layers[0].QProj, quantized.Layers[0].Attention.QProj, original.Layers[0].Attention.QProj) })
            {
                var parts = QuantizedWriter.QuantizeParts(wb.Span.ToArray(), t, format, 32);
                foreach (var (part, name) in new[] { (QuantizedPart.Weight, "qweight"), (QuantizedPart.Zeros, "qzeros"), (QuantizedPart.Scale, "scales"), (QuantizedPart.GIdx, "g_idx") })
                    Assert.That(quantized.Checkpoint.Get(CheckpointFormat.GptqName(t, name)).Bytes.SequenceEqual(parts[part]), $"{t.Module}.{name} as written");
                var qw = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, int>(parts[QuantizedPart.Weight]);
                var sc = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, Half>(parts[QuantizedPart.Scale]);
                int n = (int)t.Rows, k = (int)t.Cols;
                for (int i = 0; i < wq.Span.Length; i++)
                {
                    int r = i / k, kk = i % k;
                    int code = (qw[kk / 8 * n + r] >> (4 * (kk % 8))) & 0xF;
                    float scale = (float)sc[kk / 32 * n + r];
                    Assert.That(wq.Span[i], Is.EqualTo(Bf16.FromFloat((code - 8) * scale)), $"{t.Name}[{i}]");
                    float x = Bf16.ToFloat(wb.Span[i]), y = Bf16.ToFloat(wq.Span[i]);
                    Assert.That(Math.Abs(x - y), Is.LessThanOrEqualTo(scale / 2 + Math.Abs(y) / 256 + Math.Abs(x) / 1024 + 1e-12), $"{t.Name}[{i}] {x} -> {y}");
                }
            }
            return;
        }
        foreach (var (t, wq, wb) in new[]
        {
            (names.Layers[0].QProj, quantized.Layers[0].Attention.QProj, original.Layers[0].Attention.QProj),
            (names.Layers[1].Experts![6].Down, quantized.Layers[1].Moe!.Experts[6].DownProj, original.Layers[1].Moe!.Experts[6].DownProj),
        })
        {
            // what was written: the quantizer's codes and scales of the original values
            var (q, s) = QuantizedWriter.Quantize(wb.Span.ToArray(), t, format);
            var stored = quantized.Checkpoint.Get(t.Name);
            var storedScale = quantized.Checkpoint.Get(CheckpointFormat.ScaleName(t, format));
            Assert.That(stored.Bytes.SequenceEqual(q), $"{t.Name}: the codes written");
            Assert.That(storedScale.Bytes.SequenceEqual(s), $"{t.Name}: the scales written");
            // dequantized = code x scale, rounded to bf16 (the kernels' values)
            var sc = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(s);
            int cols = (int)t.Cols;
            for (int i = 0; i < wq.Span.Length; i++)
            {
                int r = i / cols, k = i % cols;
                float scale = format == WeightFormat.Int8Channel ? sc[r] : sc[r / 128 * WeightQuantization.Blocks(cols) + k / 128];
                float code = format == WeightFormat.Int8Channel ? (sbyte)q[i] : Fp8E4M3.ToFloat(q[i]);
                Assert.That(wq.Span[i], Is.EqualTo(Bf16.FromFloat(code * scale)), $"{t.Name}[{i}]");
                // within half a quantization step of the original (+ the bf16 rounding of the product)
                float x = Bf16.ToFloat(wb.Span[i]), y = Bf16.ToFloat(wq.Span[i]);
                double step = format == WeightFormat.Int8Channel ? scale : Math.Max(Math.Abs(x) / 8, scale / 512);
                Assert.That(Math.Abs(x - y), Is.LessThanOrEqualTo(step / 2 + Math.Abs(y) / 256 + 1e-12), $"{t.Name}[{i}] {x} -> {y}");
            }
        }
        Assert.That(quantized.LmHead.Span.SequenceEqual(original.LmHead.Span) && quantized.Layers[0].Moe!.Router.Span.SequenceEqual(original.Layers[0].Moe!.Router.Span),
            "lm_head and routers copied as bf16");
    }

    [Test]
    public void ExistingOutput_IsRefused_AndNothingIsLeftBehind()
    {
        string parent = TestCheckpoints.NewDir("quantize-exists");
        string dst = Path.Combine(parent, "out");
        Directory.CreateDirectory(dst);
        var (exit, _, err) = Convert("quantize", "--to", "int8", "--in", TestCheckpoints.Tiny(), "--out", dst);
        Assert.That(exit, Is.EqualTo(1));
        Assert.That(err, Does.StartWith($"error: --out '{dst}' already exists"));
        Assert.That(Directory.GetFileSystemEntries(parent), Is.EqualTo(new[] { dst }));
    }

    [Test]
    public void QuantizedInput_FailsAndLeavesNoTemporaryFolder()
    {
        string src = Path.Combine(TestCheckpoints.NewDir("quantize-twice"), "fp8");
        Assert.That(Convert("quantize", "--to", "fp8", "--in", TestCheckpoints.Tiny(), "--out", src).Exit, Is.Zero);
        string parent = TestCheckpoints.NewDir("quantize-twice-out");
        var (exit, _, err) = Convert("quantize", "--to", "int8", "--in", src, "--out", Path.Combine(parent, "x"));
        Assert.That(exit, Is.EqualTo(1));
        Assert.That(err, Does.Contain("config.json: the checkpoint is already quantized (quant_method 'fp8')"));
        Assert.That(Directory.GetFileSystemEntries(parent), Is.Empty);
    }

    [TestCase("--to int2 --in X --out Y", "--to 'int2' is not one of fp8, int8, int4")]
    [TestCase("--to int4 --in X --out Y --group-size 96", "--group-size 96 must be a power of two")]
    [TestCase("--to fp8 --out Y", "--in is required")]
    [TestCase("--to fp8 --in /nonexistent/q --out Y", "--in: folder '/nonexistent/q' does not exist")]
    [TestCase("--to fp8 --in X --out Y --bits 3", "unknown option --bits")]
    public void BadCommandLines_AreOneUsageError(string args, string message)
    {
        var (exit, _, err) = Convert(["quantize", .. args.Split(' ')]);
        Assert.That(exit, Is.EqualTo(2));
        Assert.That(err, Does.StartWith("error: ").And.Contain(message));
    }
}
