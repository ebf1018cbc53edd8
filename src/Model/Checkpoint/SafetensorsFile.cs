using System.Buffers.Binary;
using System.IO.MemoryMappedFiles;
using System.Text.Json;

namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>
/// One memory-mapped .safetensors file: an 8-byte little-endian header length N, N bytes of JSON
/// ({name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}), then the data section.
/// The header is untrusted: its length, JSON, dtypes, ranks, sizes and offsets are all checked at
/// <see cref="Open"/> (offsets within the data section, size == product(shape) * dtype size with
/// overflow checks, no two tensors overlapping), so later lookups cannot read outside the mapping.
/// </summary>
public sealed unsafe class SafetensorsFile : IDisposable
{
    /// <summary>Headers larger than this are rejected as absurd (real ones are a few hundred KiB).</summary>
    public const long MaxHeaderBytes = 100L << 20;
    public const int MaxRank = 8;

    readonly Dictionary<string, TensorInfo> _tensors;
    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    byte* _base;      // start of the mapping
    readonly long _dataStart;

    public string Path { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public IReadOnlyDictionary<string, TensorInfo> Tensors => _tensors;

    SafetensorsFile(string path, long fileLength, long dataStart, Dictionary<string, TensorInfo> tensors,
        Dictionary<string, string> metadata, MemoryMappedFile map, MemoryMappedViewAccessor view)
    {
        Path = path; FileLength = fileLength; _dataStart = dataStart; _tensors = tensors; Metadata = metadata;
        _map = map; _view = view;
        byte* p = null;
        _view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
        _base = p + _view.PointerOffset;
    }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path)) throw new CheckpointException($"{path}: file not found");
        long fileLength = new FileInfo(path).Length;
        var (dataStart, tensors, metadata) = ReadHeader(path, fileLength);
        MemoryMappedFile? map = null;
        try
        {
            map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
            var view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            return new SafetensorsFile(path, fileLength, dataStart, tensors, metadata, map, view);
        }
        catch (IOException e)
        {
            map?.Dispose();
            throw new CheckpointException($"{path}: cannot memory-map: {e.Message}", e);
        }
    }

    static (long DataStart, Dictionary<string, TensorInfo> Tensors, Dictionary<string, string> Metadata) ReadHeader(string path, long fileLength)
    {
        if (fileLength < 8) throw new CheckpointException($"{path}: file is {fileLength} bytes, too short for the 8-byte header length (truncated?)");
        byte[] header;
        long headerLength;
        using (var fs = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read))
        {
            Span<byte> len = stackalloc byte[8];
            fs.ReadExactly(len);
            ulong n = BinaryPrimitives.ReadUInt64LittleEndian(len);
            if (n > (ulong)(fileLength - 8))
                throw new CheckpointException($"{path}: header length {n} runs past the end of the file ({fileLength} bytes; truncated or not a safetensors file)");
            if (n > MaxHeaderBytes) throw new CheckpointException($"{path}: header length {n} is absurd (limit {MaxHeaderBytes})");
            if (n < 2) throw new CheckpointException($"{path}: header length {n} is too small for a JSON object");
            headerLength = (long)n;
            header = new byte[headerLength];
            fs.ReadExactly(header);
        }
        long dataStart = 8 + headerLength;
        long dataLength = fileLength - dataStart;

        JsonDocument doc;
        try { doc = JsonDocument.Parse(header.AsMemory().TrimEnd((byte)' '), new JsonDocumentOptions { MaxDepth = 16 }); }
        catch (JsonException e) { throw new CheckpointException($"{path}: header is not valid JSON: {e.Message}", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new CheckpointException($"{path}: header must be a JSON object");
            var tensors = new Dictionary<string, TensorInfo>(StringComparer.Ordinal);
            var metadata = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var prop in doc.RootElement.EnumerateObject())
            {
                if (prop.Name == "__metadata__")
                {
                    if (prop.Value.ValueKind != JsonValueKind.Object) throw new CheckpointException($"{path}: __metadata__ must be an object of strings");
                    foreach (var m in prop.Value.EnumerateObject())
                    {
                        if (m.Value.ValueKind != JsonValueKind.String) throw new CheckpointException($"{path}: __metadata__.{m.Name} must be a string");
                        metadata[m.Name] = m.Value.GetString()!;
                    }
                    continue;
                }
                var info = ParseEntry(path, prop.Name, prop.Value, dataLength);
                if (!tensors.TryAdd(prop.Name, info)) throw new CheckpointException($"{path}: tensor '{prop.Name}' appears twice in the header");
            }
            CheckNoOverlap(path, tensors.Values);
            return (dataStart, tensors, metadata);
        }
    }

    static TensorInfo ParseEntry(string path, string name, JsonElement e, long dataLength)
    {
        CheckpointException Bad(string what) => new($"{path}: tensor '{name}': {what}");
        if (e.ValueKind != JsonValueKind.Object) throw Bad("header entry must be an object with dtype, shape, data_offsets");
        if (!e.TryGetProperty("dtype", out var dt) || dt.ValueKind != JsonValueKind.String) throw Bad("missing or non-string dtype");
        if (!SafetensorsDTypes.TryParse(dt.GetString()!, out var dtype)) throw Bad($"unsupported dtype '{dt.GetString()}'");
        if (!e.TryGetProperty("shape", out var sh) || sh.ValueKind != JsonValueKind.Array) throw Bad("missing or non-array shape");
        int rank = sh.GetArrayLength();
        if (rank > MaxRank) throw Bad($"rank {rank} exceeds {MaxRank}");
        var shape = new long[rank];
        long elements = 1;
        int i = 0;
        foreach (var d in sh.EnumerateArray())
        {
            if (d.ValueKind != JsonValueKind.Number || !d.TryGetInt64(out long v) || v < 0) throw Bad($"shape {sh.GetRawText()} has a dimension that is not a non-negative integer");
            shape[i++] = v;
            try { elements = checked(elements * v); }
            catch (OverflowException) { throw Bad($"shape {sh.GetRawText()} overflows"); }
        }
        long byteSize;
        try { byteSize = checked(elements * dtype.SizeInBytes()); }
        catch (OverflowException) { throw Bad($"shape {sh.GetRawText()} x {dtype.SizeInBytes()} bytes overflows"); }
        if (!e.TryGetProperty("data_offsets", out var off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
            throw Bad("data_offsets must be a [begin, end] pair");
        long begin = ReadOffset(off[0]), end = ReadOffset(off[1]);
        if (begin < 0 || end < 0) throw Bad($"data_offsets {off.GetRawText()} must be non-negative integers");
        if (begin > end) throw Bad($"data_offsets {off.GetRawText()} has begin > end");
        if (end > dataLength) throw Bad($"data_offsets {off.GetRawText()} run past the end of the data section ({dataLength} bytes; file truncated?)");
        if (end - begin != byteSize)
            throw Bad($"data_offsets {off.GetRawText()} span {end - begin} bytes but shape {TensorInfo.FormatShape(shape)} of {dtype.Name()} needs {byteSize}");
        return new TensorInfo(name, path, dtype, shape, begin, end);

        static long ReadOffset(JsonElement x) => x.ValueKind == JsonValueKind.Number && x.TryGetInt64(out long v) ? v : -1;
    }

    static void CheckNoOverlap(string path, IEnumerable<TensorInfo> tensors)
    {
        var sorted = tensors.Where(t => t.ByteLength > 0).OrderBy(t => t.DataBegin).ToList();
        for (int i = 1; i < sorted.Count; i++)
            if (sorted[i].DataBegin < sorted[i - 1].DataEnd)
                throw new CheckpointException(
                    $"{path}: tensors '{sorted[i - 1].Name}' [{sorted[i - 1].DataBegin}, {sorted[i - 1].DataEnd}) and '{sorted[i].Name}' [{sorted[i].DataBegin}, {sorted[i].DataEnd}) overlap");
    }

    public bool Contains(string name) => _tensors.ContainsKey(name);

    /// <summary>The tensor, whatever its dtype and shape.</summary>
    public TensorView Get(string name)
    {
        ObjectDisposedException.ThrowIf(_base == null, this);
        if (!_tensors.TryGetValue(name, out var info)) throw new CheckpointException($"{Path}: tensor '{name}' not found");
        return new TensorView(info, _base + _dataStart + info.DataBegin);
    }

    /// <summary>The tensor, checked to have <paramref name="dtype"/> and <paramref name="shape"/>.</summary>
    public TensorView Get(string name, SafetensorsDType dtype, params long[] shape)
    {
        var view = Get(name);
        CheckTensor(view.Info, dtype, shape);
        return view;
    }

    internal static void CheckTensor(TensorInfo info, SafetensorsDType dtype, long[] shape)
    {
        if (info.DType != dtype)
            throw new CheckpointException($"{info.FilePath}: tensor '{info.Name}' has dtype {info.DType.Name()}, expected {dtype.Name()}");
        if (!info.Shape.AsSpan().SequenceEqual(shape))
            throw new CheckpointException($"{info.FilePath}: tensor '{info.Name}' has shape {info.ShapeText}, expected {TensorInfo.FormatShape(shape)}");
    }

    public void Dispose()
    {
        if (_base == null) return;
        _base = null;
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
