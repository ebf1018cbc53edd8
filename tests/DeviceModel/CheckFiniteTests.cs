using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// The forward's debug check for non-finite activations (DeviceModelOptions.CheckFinite, QWEN3CUDA_DEBUG_FINITE=1, issue 12):
/// a NaN planted in one weight of the tiny checkpoint must be reported with the stage (embedding or layer), the token row,
/// its position and the column; without the check the same model returns NaN logits and says nothing.
/// </summary>
[NonParallelizable]
public class CheckFiniteTests
{
    static readonly DeviceModelOptions Options = new() { ContextLength = 32, PageSize = 4, PrefillChunkTokens = 8, MaxBatch = 2, CheckFinite = true };

    [Test]
    public void NaNInALayerNormWeight_IsReportedAfterThatLayer()
    {
        string dir = DeviceCheckpoints.TinyPatched("model.layers.1.input_layernorm.weight", 5, 0x7fc0);
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, Options);
        var logits = new float[dm.VocabSize];
        var e = Assert.Throws<InvalidOperationException>(() => dm.Forward(0, [3, 1, 4, 1, 5, 9], logits));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.StartWith("non-finite hidden state (NaN or inf) after layer 1: token row 0 of the step (position 0), column "));

        using var quiet = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, Options with { CheckFinite = false });
        quiet.Forward(0, [3, 1, 4, 1, 5, 9], logits);
        Assert.That(logits, Has.Some.NaN, "without the check the NaN reaches the logits silently");
    }

    /// <summary>A NaN in token 7's embedding row: prefill reports its row and position; the record resets after a report; the
    /// decode graph (which captured the check) reports a decode step's row.</summary>
    [Test]
    public void NaNEmbeddingRow_IsReportedWithRowAndPosition_InPrefillAndInTheDecodeGraph()
    {
        using var weights = Qwen3Cuda.Model.Reference.ModelWeights.Load(DeviceCheckpoints.Tiny());
        int H = weights.Config.HiddenSize;
        string dir = DeviceCheckpoints.TinyPatched("model.embed_tokens.weight", 7L * H + 3, 0xff80);   // -inf
        using var device = new EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, Options);
        Assert.That(dm.GraphBuckets, Is.Not.Empty);
        var logits = new float[dm.VocabSize];
        var e = Assert.Throws<InvalidOperationException>(() => dm.Forward(0, [1, 2, 7, 4], logits));
        Assert.That(e!.Message, Does.StartWith("non-finite hidden state (NaN or inf) in the embedding output: token row 2 of the step (position 2), column 3;"));

        dm.ResetSequence(0);
        dm.Forward(0, [1, 2, 3], logits);                     // finite: the record was reset after the report
        Assert.That(logits, Has.None.NaN);
        e = Assert.Throws<InvalidOperationException>(() => dm.Forward(0, [7], logits));   // a decode step: the bucket's graph
        Assert.That(e!.Message, Does.StartWith("non-finite hidden state (NaN or inf) in the embedding output: token row 0 of the step (position 3), column 3;"));
    }

    [Test]
    public void EnvironmentVariable_TurnsTheCheckOn()
    {
        string? before = Environment.GetEnvironmentVariable(DeviceModelOptions.CheckFiniteEnvironmentVariable);
        try
        {
            Environment.SetEnvironmentVariable(DeviceModelOptions.CheckFiniteEnvironmentVariable, "1");
            Assert.That(new DeviceModelOptions().CheckFinite, Is.True);
            Environment.SetEnvironmentVariable(DeviceModelOptions.CheckFiniteEnvironmentVariable, "0");
            Assert.That(new DeviceModelOptions().CheckFinite, Is.False);
        }
        finally { Environment.SetEnvironmentVariable(DeviceModelOptions.CheckFiniteEnvironmentVariable, before); }
    }
}
