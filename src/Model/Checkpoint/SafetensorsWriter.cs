using System.Buffers.Binary;
using System.Text;
using System.Text.Json;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>One tensor to write: name, dtype, shape.</summary>
public sealed record TensorSpec(string Name, SafetensorsDType DType, long[] Shape)
{
    public long ByteLength => Shape.Aggregate(1L, (a, b) => checked(a * b)) * DType.SizeInBytes();
}

/// <summary>
/// Writes safetensors files (tensors contiguous in the given order, header padded with spaces to a
/// multiple of 8 as the reference implementation does) and sharded checkpoints with an index.
/// Tensor bytes are produced in chunks by a callback so multi-GiB files stream through a small buffer.
/// </summary>
public static class SafetensorsWriter
{
    /// <summary>Fills <c>chunk</c> with the bytes of tensor <c>index</c> starting at <c>byteOffset</c>.</summary>
    public delegate void FillChunk(int index, long byteOffset, Span<byte> chunk);

    const int ChunkBytes = 4 << 20;

    public static void Write(string path, IReadOnlyList<TensorSpec> tensors, FillChunk fill,
        IReadOnlyDictionary<string, string>? metadata = null)
    {
        byte[] header = BuildHeader(tensors, metadata);
        using var fs = new FileStream(path, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(len, (ulong)header.Length);
        fs.Write(len);
        fs.Write(header);
        var buffer = new byte[ChunkBytes];
        for (int i = 0; i < tensors.Count; i++)
        {
            long total = tensors[i].ByteLength;
            for (long off = 0; off < total; off += ChunkBytes)
            {
                int n = (int)Math.Min(ChunkBytes, total - off);
                fill(i, off, buffer.AsSpan(0, n));
                fs.Write(buffer, 0, n);
            }
        }
    }

    static byte[] BuildHeader(IReadOnlyList<TensorSpec> tensors, IReadOnlyDictionary<string, string>? metadata)
    {
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            w.WriteStartObject("__metadata__");
            w.WriteString("format", "pt");
            if (metadata is not null) foreach (var (k, v) in metadata) w.WriteString(k, v);
            w.WriteEndObject();
            long offset = 0;
            foreach (var t in tensors)
            {
                w.WriteStartObject(t.Name);
                w.WriteString("dtype", t.DType.Name());
                w.WriteStartArray("shape"); foreach (long d in t.Shape) w.WriteNumberValue(d); w.WriteEndArray();
                w.WriteStartArray("data_offsets"); w.WriteNumberValue(offset); offset += t.ByteLength; w.WriteNumberValue(offset); w.WriteEndArray();
                w.WriteEndObject();
            }
            w.WriteEndObject();
        }
        int pad = (int)((8 - ms.Length % 8) % 8);
        for (int i = 0; i < pad; i++) ms.WriteByte((byte)' ');
        return ms.ToArray();
    }

    /// <summary>
    /// Writes a checkpoint into <paramref name="directory"/>: one model.safetensors when everything fits in
    /// <paramref name="maxShardBytes"/>, else model-0000i-of-0000n.safetensors shards plus
    /// model.safetensors.index.json. Returns the file names written.
    /// </summary>
    public static IReadOnlyList<string> WriteCheckpoint(string directory, IReadOnlyList<TensorSpec> tensors, FillChunk fill, long maxShardBytes)
    {
        System.IO.Directory.CreateDirectory(directory);
        var shards = new List<List<int>> { new() };
        long current = 0, total = 0;
        for (int i = 0; i < tensors.Count; i++)
        {
            long size = tensors[i].ByteLength;
            if (current > 0 && current + size > maxShardBytes) { shards.Add(new()); current = 0; }
            shards[^1].Add(i);
            current += size;
            total += size;
        }
        if (shards.Count == 1)
        {
            Write(Path.Combine(directory, SafetensorsCheckpoint.SingleFileName), tensors, fill);
            return new[] { SafetensorsCheckpoint.SingleFileName };
        }
        var names = new List<string>();
        var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
        for (int s = 0; s < shards.Count; s++)
        {
            string name = $"model-{s + 1:D5}-of-{shards.Count:D5}.safetensors";
            var indices = shards[s];
            var specs = indices.Select(i => tensors[i]).ToList();
            Write(Path.Combine(directory, name), specs, (i, off, chunk) => fill(indices[i], off, chunk));
            foreach (var t in specs) weightMap[t.Name] = name;
            names.Add(name);
        }
        using (var fs = File.Create(Path.Combine(directory, SafetensorsCheckpoint.IndexFileName)))
        using (var w = new Utf8JsonWriter(fs, new JsonWriterOptions { Indented = true }))
        {
            w.WriteStartObject();
            w.WriteStartObject("metadata"); w.WriteNumber("total_size", total); w.WriteEndObject();
            w.WriteStartObject("weight_map");
            foreach (var (k, v) in weightMap) w.WriteString(k, v);
            w.WriteEndObject();
            w.WriteEndObject();
        }
        names.Add(SafetensorsCheckpoint.IndexFileName);
        return names;
    }
}
