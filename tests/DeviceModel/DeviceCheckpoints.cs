using System.Buffers.Binary;
using System.Text.Json;
using Qwen3Cuda.Model.Checkpoint;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// The device model's test checkpoints: the `qwen3cuda-convert synth` presets themselves (SyntheticCheckpoint), written
/// once per run through the model tests' cache (tests/Model/TestCheckpoints). tiny: H 64, 2 layers, 8 experts top-2,
/// heads 4/2 x 16, I 32, vocab 512; small: H 256, 4 layers, 32 experts top-4, heads 8/2 x 32, I 128, vocab 2048.
/// </summary>
public static class DeviceCheckpoints
{
    public static readonly SyntheticOptions TinyOptions = new() { Preset = SyntheticPreset.Tiny, Seed = 7 };
    /// <summary>The tiny preset with layer 1 a dense SwiGLU MLP (`synth --mlp-only-layers 1`): a dense and a MoE layer.</summary>
    public static readonly SyntheticOptions TinyDenseLayerOptions = TinyOptions with { MlpOnlyLayers = [1] };
    public static readonly SyntheticOptions SmallOptions = new() { Preset = SyntheticPreset.Small, Seed = 7 };

    public static string Tiny() => Model.TestCheckpoints.Get(TinyOptions);
    public static string TinyWithDenseLayer() => Model.TestCheckpoints.Get(TinyDenseLayerOptions);
    public static string Small() => Model.TestCheckpoints.Get(SmallOptions);

    /// <summary>A copy of the tiny checkpoint (a new directory) with bf16 element <paramref name="element"/> of <paramref name="tensor"/> set to <paramref name="bits"/>.</summary>
    public static string TinyPatched(string tensor, long element, ushort bits)
    {
        string src = Tiny(), dir = Model.TestCheckpoints.NewDir("tiny-nan");
        foreach (var f in Directory.GetFiles(src)) File.Copy(f, Path.Combine(dir, Path.GetFileName(f)));
        string file = Path.Combine(dir, SafetensorsCheckpoint.SingleFileName);
        using var fs = new FileStream(file, FileMode.Open, FileAccess.ReadWrite);
        var len = new byte[8];
        fs.ReadExactly(len);
        long headerBytes = (long)BinaryPrimitives.ReadUInt64LittleEndian(len);
        var header = new byte[headerBytes];
        fs.ReadExactly(header);
        long begin = JsonDocument.Parse(header).RootElement.GetProperty(tensor).GetProperty("data_offsets")[0].GetInt64();
        fs.Position = 8 + headerBytes + begin + element * 2;
        fs.Write(BitConverter.GetBytes(bits));
        return dir;
    }
}
