using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Cli;

/// <summary>
/// Where `generate` and `chat` get their model: the one place to wire a device backend in.
/// cpu (and auto, for now) is the CPU reference; emulator and cuda are not wired yet.
/// </summary>
public static class ModelOpener
{
    public static readonly string[] Devices = ["cpu", "emulator", "cuda", "auto"];

    public static ICausalLanguageModel Open(string modelDir, string device, int maxSequences, int? contextLength)
    {
        if (!Directory.Exists(modelDir)) throw new DirectoryNotFoundException($"--model: directory '{modelDir}' does not exist");
        return device switch
        {
            "cpu" or "auto" => ReferenceModel.Load(modelDir, maxSequences, contextLength),
            "emulator" or "cuda" => throw new NotSupportedException($"--device {device} is not available yet for generate/chat (use --device cpu)"),
            _ => throw new ArgumentException($"--device must be one of {string.Join(", ", Devices)}, got '{device}'"),
        };
    }
}
