using System.Buffers.Binary;
using System.Text;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;

namespace Qwen3Cuda.Tests.Model;

public class SafetensorsTests
{
    /// <summary>Writes a safetensors file byte by byte: 8-byte length (or <paramref name="headerLength"/>), header text, data.</summary>
    static string Raw(string header, int dataBytes, ulong? headerLength = null, string name = "model.safetensors", string? dir = null)
    {
        dir ??= TestCheckpoints.NewDir("raw");
        string path = Path.Combine(dir, name);
        var h = Encoding.UTF8.GetBytes(header);
        var bytes = new byte[8 + h.Length + dataBytes];
        BinaryPrimitives.WriteUInt64LittleEndian(bytes, headerLength ?? (ulong)h.Length);
        h.CopyTo(bytes, 8);
        for (int i = 0; i < dataBytes; i++) bytes[8 + h.Length + i] = (byte)i;
        File.WriteAllBytes(path, bytes);
        return path;
    }

    static string OpenError(string path) => Assert.Throws<CheckpointException>(() => SafetensorsFile.Open(path).Dispose())!.Message;

    [Test]
    public void WriterRoundTripsAndReaderChecksDTypeAndShape()
    {
        string dir = TestCheckpoints.NewDir("rt");
        var specs = new[]
        {
            new TensorSpec("a", SafetensorsDType.BF16, new long[] { 2, 3 }),
            new TensorSpec("b", SafetensorsDType.F32, new long[] { 4 }),
            new TensorSpec("empty", SafetensorsDType.F16, new long[] { 0, 5 }),
        };
        SafetensorsWriter.Write(Path.Combine(dir, "model.safetensors"), specs, (i, off, chunk) =>
        {
            for (int j = 0; j < chunk.Length; j++) chunk[j] = (byte)(i * 16 + off + j);
        });
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        var a = ckpt.Get("a", SafetensorsDType.BF16, 2, 3);
        Assert.That(a.AsBf16().Length, Is.EqualTo(6));
        Assert.That(a.Bytes[1], Is.EqualTo(1));
        var b = ckpt.Get("b", SafetensorsDType.F32, 4);
        Assert.That(b.Bytes[0], Is.EqualTo(16));
        Assert.That(ckpt.Get("empty").ByteLength, Is.EqualTo(0));
        Assert.That(ckpt.TensorNames.Order(), Is.EqualTo(new[] { "a", "b", "empty" }));

        string file = Path.Combine(dir, "model.safetensors");
        Assert.That(Assert.Throws<CheckpointException>(() => ckpt.Get("a", SafetensorsDType.BF16, 3, 2))!.Message,
            Is.EqualTo($"{file}: tensor 'a' has shape [2, 3], expected [3, 2]"));
        Assert.That(Assert.Throws<CheckpointException>(() => ckpt.Get("b", SafetensorsDType.BF16, 4))!.Message,
            Is.EqualTo($"{file}: tensor 'b' has dtype F32, expected BF16"));
        Assert.That(Assert.Throws<CheckpointException>(() => ckpt.Get("nope"))!.Message,
            Is.EqualTo($"{file}: tensor 'nope' not found (not in model.safetensors)"));
    }

    [Test]
    public void TruncatedFileIsRejected()
    {
        string p = Raw("""{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}""", 16);
        var all = File.ReadAllBytes(p);
        File.WriteAllBytes(p, all[..^5]);
        Assert.That(OpenError(p), Does.Contain("tensor 'a': data_offsets [0,16] run past the end of the data section (11 bytes"));
        File.WriteAllBytes(p, all[..5]);
        Assert.That(OpenError(p), Does.Contain("file is 5 bytes, too short for the 8-byte header length"));
    }

    [Test]
    public void HeaderLengthPastEndIsRejected()
    {
        string p = Raw("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}""", 4, headerLength: 1_000_000);
        Assert.That(OpenError(p), Does.Contain("header length 1000000 runs past the end of the file"));
        p = Raw("{}", 4, headerLength: ulong.MaxValue);
        Assert.That(OpenError(p), Does.Contain("runs past the end of the file"));
    }

    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}""", "header is not valid JSON")]
    [TestCase("""[1]""", "header must be a JSON object")]
    [TestCase("""{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,12]}}""", "tensor 'a': data_offsets [0,12] run past the end of the data section (8 bytes")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[4,0]}}""", "tensor 'a': data_offsets [4,0] has begin > end")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}}""", "tensor 'a': data_offsets [0,8] span 8 bytes but shape [1] of F32 needs 4")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[2,6]}}""", "tensors 'a' [0, 4) and 'b' [2, 6) overlap")]
    [TestCase("""{"a":{"dtype":"Q4_K","shape":[1],"data_offsets":[0,4]}}""", "tensor 'a': unsupported dtype 'Q4_K'")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,4]}}""", "tensor 'a': rank 9 exceeds 8")]
    [TestCase("""{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,4]}}""", "tensor 'a': shape [4294967296,4294967296] overflows")]
    [TestCase("""{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}""", "tensor 'a': shape [-1] has a dimension that is not a non-negative integer")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0]}}""", "tensor 'a': data_offsets must be a [begin, end] pair")]
    [TestCase("""{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}""", "tensor 'a' appears twice")]
    [TestCase("""{"__metadata__":{"format":1}}""", "__metadata__.format must be a string")]
    public void CorruptHeadersAreRejectedNamingFileAndTensor(string header, string expected)
    {
        string p = Raw(header, 8);
        string msg = OpenError(p);
        Assert.That(msg, Does.StartWith(p + ": "));
        Assert.That(msg, Does.Contain(expected));
    }

    static string ShardedDir(out string shard2)
    {
        string dir = TestCheckpoints.NewDir("sharded");
        Raw("""{"x":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}""", 4, name: "s1.safetensors", dir: dir);
        shard2 = Raw("""{"y":{"dtype":"BF16","shape":[1],"data_offsets":[0,2]}}""", 2, name: "s2.safetensors", dir: dir);
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"),
            """{"metadata":{"total_size":6},"weight_map":{"x":"s1.safetensors","y":"s2.safetensors"}}""");
        return dir;
    }

    [Test]
    public void ShardedCheckpointResolvesTensorsAcrossShards()
    {
        string dir = ShardedDir(out _);
        using var ckpt = SafetensorsCheckpoint.Open(dir);
        Assert.That(ckpt.IsSharded, Is.True);
        Assert.That(ckpt.Get("x", SafetensorsDType.BF16, 2).Bytes.ToArray(), Is.EqualTo(new byte[] { 0, 1, 2, 3 }));
        Assert.That(ckpt.Get("y", SafetensorsDType.BF16, 1).Info.FilePath, Does.EndWith("s2.safetensors"));
        Assert.That(Assert.Throws<CheckpointException>(() => ckpt.Get("z"))!.Message, Does.EndWith("tensor 'z' not found (not listed in model.safetensors.index.json)"));
    }

    [Test]
    public void MissingShardIsNamedWithItsIndex()
    {
        string dir = ShardedDir(out string shard2);
        File.Delete(shard2);
        var msg = Assert.Throws<CheckpointException>(() => SafetensorsCheckpoint.Open(dir))!.Message;
        Assert.That(msg, Is.EqualTo($"{Path.Combine(dir, "model.safetensors.index.json")}: shard 's2.safetensors' (holding 1 tensors, e.g. 'y') not found in {dir}"));
    }

    [Test]
    public void IndexPointingToAShardWithoutTheTensorIsRejected()
    {
        string dir = ShardedDir(out _);
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), """{"weight_map":{"x":"s1.safetensors","y":"s1.safetensors"}}""");
        var msg = Assert.Throws<CheckpointException>(() => SafetensorsCheckpoint.Open(dir))!.Message;
        Assert.That(msg, Does.EndWith("tensor 'y' is mapped to shard 's1.safetensors', which does not contain it"));
    }

    [TestCase("""{"weight_map":{"x":"../s1.safetensors"}}""", "names shard '../s1.safetensors', which is not a plain file name")]
    [TestCase("""{"weight_map":{}}""", "weight_map is empty")]
    [TestCase("""{"metadata":{}}""", "missing \"weight_map\" object")]
    [TestCase("""{"weight_map":""", "not valid JSON")]
    public void BadIndexIsRejected(string index, string expected)
    {
        string dir = ShardedDir(out _);
        File.WriteAllText(Path.Combine(dir, "model.safetensors.index.json"), index);
        Assert.That(Assert.Throws<CheckpointException>(() => SafetensorsCheckpoint.Open(dir))!.Message, Does.Contain(expected));
    }

    [Test]
    public void EmptyDirectoryNamesBothExpectedFiles()
    {
        string dir = TestCheckpoints.NewDir("empty");
        Assert.That(Assert.Throws<CheckpointException>(() => SafetensorsCheckpoint.Open(dir))!.Message,
            Is.EqualTo($"{dir}: neither model.safetensors nor model.safetensors.index.json found"));
    }

    [Test]
    public void Fp8WeightAndScaleInvAreParsed()
    {
        // w: F8_E4M3 [130, 256] -> scale_inv [ceil(130/128), 256/128] = [2, 2] F32.
        string header = """{"w":{"dtype":"F8_E4M3","shape":[130,256],"data_offsets":[0,33280]},"w_scale_inv":{"dtype":"F32","shape":[2,2],"data_offsets":[33280,33296]}}""";
        string p = Raw(header, 33296);
        using var ckpt = SafetensorsCheckpoint.Open(Path.GetDirectoryName(p)!);
        var (w, s) = ckpt.GetFp8("w", 130, 256);
        Assert.That(w.AsF8E4M3().Length, Is.EqualTo(130 * 256));
        Assert.That(s.AsF32().Length, Is.EqualTo(4));
        Assert.That(Assert.Throws<CheckpointException>(() => ckpt.GetFp8("w", 130, 256, block: 64))!.Message,
            Does.Contain("tensor 'w_scale_inv' has shape [2, 2], expected [3, 4]"));
    }

    [Test]
    public void Bf16RoundsToNearestEven()
    {
        // 1 + 2^-8 is exactly halfway between bf16 1 and 1 + 2^-7: ties to the even mantissa (1).
        Assert.That(Bf16.Round(1f + 1f / 256), Is.EqualTo(1f));
        // 1 + 3*2^-8 is halfway between 1 + 2^-7 (odd mantissa) and 1 + 2^-6 (even): goes up.
        Assert.That(Bf16.Round(1f + 3f / 256), Is.EqualTo(1f + 1f / 64));
        Assert.That(Bf16.Round(1f + 1.01f / 256), Is.EqualTo(1f + 1f / 128));
        Assert.That(float.IsNaN(Bf16.Round(float.NaN)), Is.True);
        Assert.That(Bf16.Round(float.PositiveInfinity), Is.EqualTo(float.PositiveInfinity));
        var values = new[] { 1f + 1f / 256, 1f + 3f / 256, -2.7182817f, 3.4e38f, float.NaN, 1e-40f, 0.1f, 123.456f, 7f };
        var vectorised = values.ToArray();
        Bf16.RoundInPlace(vectorised);
        for (int i = 0; i < values.Length; i++)
            Assert.That(BitConverter.SingleToUInt32Bits(vectorised[i]), Is.EqualTo(BitConverter.SingleToUInt32Bits(Bf16.Round(values[i]))), $"element {i}");
    }
}
