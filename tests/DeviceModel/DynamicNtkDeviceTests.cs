using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Device;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Dynamic NTK RoPE on the device model (emulator) against the CPU reference, past max_position_embeddings: each step's
/// rows get the table of their sequence's length (a per-row inv_freq input of rope.cu).
/// </summary>
[NonParallelizable]
public class DynamicNtkDeviceTests
{
    /// <summary>
    /// Tiny preset with max_position_embeddings 16 and dynamic factor 4: a 20-token prompt in ONE chunk (the reference
    /// also runs it as one forward, so both use the table of length 20), then 12 greedy steps, each with its own table
    /// (lengths 21..32). The suite's tolerance (DeviceModelTests: bf16 roundings in different fp32 orders).
    /// </summary>
    [Test]
    public void Tiny_PastMaxPositions_MatchesReference()
    {
        string dir = Model.TestCheckpoints.Get(DeviceCheckpoints.TinyOptions with
        {
            MaxPositionEmbeddings = 16, RopeScaling = new RopeScalingConfig { RopeType = "dynamic", Factor = 4 },
        });
        DeviceModelTests.RunGreedy(dir, new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 32, MaxBatch = 4 },
            promptLength: 20, steps: 12);
    }
}
