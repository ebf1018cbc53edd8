using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>
/// `qwen3cuda-convert quantize`: a bf16 Qwen3 / Qwen3-MoE checkpoint rewritten with its Linear weights quantized (round
/// to nearest; docs/formats.md), in the on-disk format the loader reads: config.json with the format's
/// quantization_config, the tensors of <see cref="QuantizedWriter.Plan"/>, an index when sharded, and every other file of
/// the input folder (tokenizer, generation config) copied. The output is written into a temporary folder next to
/// <c>outDir</c> and renamed into place when complete, so an interrupted run leaves no half-written checkpoint.
/// </summary>
public static class CheckpointQuantizer
{
    /// <summary>Progress: tensors done of the total, and the tensor being written.</summary>
    public readonly record struct Progress(int Done, int Total, string Tensor);

    public static IReadOnlyList<string> Quantize(string inDir, string outDir, WeightFormat format, long maxShardBytes = 4L << 30, int groupSize = 128, Action<Progress>? progress = null)
    {
        if (format == WeightFormat.Bf16) throw new ArgumentException("--to: the target must be a quantized format (fp8, int8, int4)");
        QuantizedWriter.ConfigFor(format, groupSize);   // throws for formats the writer does not have
        string outFull = Path.GetFullPath(outDir);
        if (Directory.Exists(outFull) || File.Exists(outFull))
            throw new IOException($"--out '{outDir}' already exists; choose a new folder (the quantized checkpoint is written to a temporary folder and renamed into place)");
        var config = ModelConfig.Load(inDir);
        if (config.Quantization is { } q)
            throw new ConfigException($"{Path.Combine(inDir, ModelConfig.FileName)}: the checkpoint is already quantized (quant_method '{q.QuantMethod}'); quantize reads a bf16 checkpoint");
        string parent = Path.GetDirectoryName(outFull.TrimEnd(Path.DirectorySeparatorChar)) ?? ".";
        Directory.CreateDirectory(parent);
        string temp = Path.Combine(parent, $".{Path.GetFileName(outFull.TrimEnd(Path.DirectorySeparatorChar))}.partial-{Guid.NewGuid():N}");
        try
        {
            using var ckpt = SafetensorsCheckpoint.Open(inDir);
            var outConfig = config with { Quantization = QuantizedWriter.ConfigFor(format, groupSize) };
            new Device.WeightLayout(outConfig);   // the format must fit the model (e.g. the group size must divide every K)
            var plan = QuantizedWriter.Plan(outConfig);
            // the input must hold every tensor as bf16 (named errors from the reference's binding)
            CheckpointFormat.Bf16.CheckTensors(new ModelTensors(config, hasLmHead: !config.TieWordEmbeddings || ckpt.Contains("lm_head.weight")), ckpt);
            if (config.TieWordEmbeddings && ckpt.Contains("lm_head.weight"))
                throw new CheckpointException($"{inDir}: tie_word_embeddings with a separate lm_head.weight is not supported by quantize");
            Directory.CreateDirectory(temp);
            File.WriteAllText(Path.Combine(temp, ModelConfig.FileName), outConfig.ToJson());
            ushort[] Values(int i) => ckpt.Get(plan[i].Source.Name, SafetensorsDType.BF16, plan[i].Source.Shape).AsBf16().ToArray();
            var writer = new QuantizedWriter(plan, Values);
            int done = 0, last = -1;
            var files = SafetensorsWriter.WriteCheckpoint(temp, plan.Select(p => p.Spec).ToList(), (i, offset, chunk) =>
            {
                if (i != last) { last = i; progress?.Invoke(new Progress(done++, plan.Count, plan[i].Spec.Name)); }
                if (plan[i].Part == QuantizedPart.Bf16)
                {
                    var view = ckpt.Get(plan[i].Source.Name);
                    unsafe { new ReadOnlySpan<byte>((byte*)view.Pointer + offset, chunk.Length).CopyTo(chunk); }
                }
                else writer.Fill(i, offset, chunk);
            }, maxShardBytes).ToList();
            progress?.Invoke(new Progress(plan.Count, plan.Count, ""));
            foreach (var f in Directory.GetFiles(inDir))
            {
                string name = Path.GetFileName(f);
                if (name == ModelConfig.FileName || name.EndsWith(".safetensors", StringComparison.Ordinal) || name == SafetensorsCheckpoint.IndexFileName) continue;
                File.Copy(f, Path.Combine(temp, name));
                files.Add(name);
            }
            files.Insert(0, ModelConfig.FileName);
            Directory.Move(temp, outFull);
            return files;
        }
        catch
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
            throw;
        }
    }
}
