using System.Text.Json;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>
/// A Hugging Face checkpoint directory: either one <c>model.safetensors</c>, or shards listed in
/// <c>model.safetensors.index.json</c> ({"metadata": {...}, "weight_map": {tensor: shard file}}).
/// Every shard is opened (memory-mapped, header validated) at <see cref="Open"/>, and every tensor the
/// index names is checked to be in its shard, so a missing shard or tensor fails early with both names.
/// </summary>
public sealed class SafetensorsCheckpoint : IDisposable
{
    public const string SingleFileName = "model.safetensors";
    public const string IndexFileName = "model.safetensors.index.json";

    readonly Dictionary<string, SafetensorsFile> _byTensor = new(StringComparer.Ordinal);
    readonly List<SafetensorsFile> _files = new();

    public string Directory { get; }
    /// <summary>The index file when sharded, else model.safetensors.</summary>
    public string SourceFile { get; }
    public bool IsSharded { get; }
    public IReadOnlyList<SafetensorsFile> Files => _files;
    public IEnumerable<string> TensorNames => _byTensor.Keys;

    SafetensorsCheckpoint(string directory, string sourceFile, bool sharded)
    {
        Directory = directory; SourceFile = sourceFile; IsSharded = sharded;
    }

    public static SafetensorsCheckpoint Open(string directory)
    {
        if (!System.IO.Directory.Exists(directory)) throw new CheckpointException($"{directory}: checkpoint directory not found");
        string index = Path.Combine(directory, IndexFileName);
        string single = Path.Combine(directory, SingleFileName);
        if (File.Exists(index)) return OpenSharded(directory, index);
        if (File.Exists(single))
        {
            var ckpt = new SafetensorsCheckpoint(directory, single, false);
            var file = SafetensorsFile.Open(single);
            ckpt._files.Add(file);
            foreach (var name in file.Tensors.Keys) ckpt._byTensor[name] = file;
            return ckpt;
        }
        throw new CheckpointException($"{directory}: neither {SingleFileName} nor {IndexFileName} found");
    }

    static SafetensorsCheckpoint OpenSharded(string directory, string indexPath)
    {
        var weightMap = ReadWeightMap(indexPath);
        var ckpt = new SafetensorsCheckpoint(directory, indexPath, true);
        try
        {
            var shards = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
            foreach (var group in weightMap.GroupBy(kv => kv.Value, StringComparer.Ordinal))
            {
                string shardPath = Path.Combine(directory, group.Key);
                if (!File.Exists(shardPath))
                    throw new CheckpointException(
                        $"{indexPath}: shard '{group.Key}' (holding {group.Count()} tensors, e.g. '{group.First().Key}') not found in {directory}");
                var file = SafetensorsFile.Open(shardPath);
                ckpt._files.Add(file);
                shards[group.Key] = file;
            }
            foreach (var (tensor, shard) in weightMap)
            {
                var file = shards[shard];
                if (!file.Contains(tensor))
                    throw new CheckpointException($"{indexPath}: tensor '{tensor}' is mapped to shard '{shard}', which does not contain it");
                ckpt._byTensor[tensor] = file;
            }
            return ckpt;
        }
        catch
        {
            ckpt.Dispose();
            throw;
        }
    }

    static Dictionary<string, string> ReadWeightMap(string indexPath)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllText(indexPath)); }
        catch (JsonException e) { throw new CheckpointException($"{indexPath}: not valid JSON: {e.Message}", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new CheckpointException($"{indexPath}: missing \"weight_map\" object");
            var result = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var p in map.EnumerateObject())
            {
                if (p.Value.ValueKind != JsonValueKind.String) throw new CheckpointException($"{indexPath}: weight_map entry '{p.Name}' must be a file name string");
                string shard = p.Value.GetString()!;
                if (shard.Length == 0 || shard.Contains('/') || shard.Contains('\\') || shard == "." || shard == ".." || Path.IsPathRooted(shard))
                    throw new CheckpointException($"{indexPath}: weight_map entry '{p.Name}' names shard '{shard}', which is not a plain file name");
                result[p.Name] = shard;
            }
            if (result.Count == 0) throw new CheckpointException($"{indexPath}: weight_map is empty");
            return result;
        }
    }

    public bool Contains(string name) => _byTensor.ContainsKey(name);

    public TensorInfo Info(string name) => FileOf(name).Tensors[name];

    public TensorView Get(string name) => FileOf(name).Get(name);

    /// <summary>The tensor, checked to have <paramref name="dtype"/> and <paramref name="shape"/>; errors name file and tensor.</summary>
    public TensorView Get(string name, SafetensorsDType dtype, params long[] shape) => FileOf(name).Get(name, dtype, shape);

    /// <summary>
    /// An FP8 (E4M3) weight [out, in] and its block-scale companion <c>&lt;name&gt;_scale_inv</c>
    /// (F32 or BF16, [ceil(out/block), ceil(in/block)]). Only parsed and shape-checked here.
    /// </summary>
    public (TensorView Weight, TensorView ScaleInv) GetFp8(string name, long outDim, long inDim, int block = 128)
    {
        var w = Get(name, SafetensorsDType.F8_E4M3, outDim, inDim);
        string scaleName = name + "_scale_inv";
        var s = Get(scaleName);
        if (s.DType is not (SafetensorsDType.F32 or SafetensorsDType.BF16))
            throw new CheckpointException($"{s.Info.FilePath}: tensor '{scaleName}' has dtype {s.DType.Name()}, expected F32 or BF16");
        long[] expected = { (outDim + block - 1) / block, (inDim + block - 1) / block };
        SafetensorsFile.CheckTensor(s.Info, s.DType, expected);
        return (w, s);
    }

    SafetensorsFile FileOf(string name)
    {
        if (_byTensor.TryGetValue(name, out var file)) return file;
        string where = IsSharded ? $"not listed in {IndexFileName}" : $"not in {SingleFileName}";
        throw new CheckpointException($"{SourceFile}: tensor '{name}' not found ({where})");
    }

    public void Dispose()
    {
        foreach (var f in _files) f.Dispose();
        _files.Clear();
        _byTensor.Clear();
    }
}
