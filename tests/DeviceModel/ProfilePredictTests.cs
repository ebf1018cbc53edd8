using Qwen3Cuda.Cli.Commands;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Runtime;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// `profile --predict` on the tiny synthetic model (the emulator presenting itself as the GPU): predicted tables for the
/// prefill, the greedy and the sampled decode step, labelled predicted, with the roofline; layer scaling; --context; bad
/// input. The timing model's arithmetic is pinned in Performance/TimingModelTests.
/// </summary>
[NonParallelizable]
public class ProfilePredictTests
{
    static (int Exit, string Out, string Err) Cli(params string[] args) => Support.CliRunner.Run(args);

    [Test]
    public void Measure_AsH100_PredictsEveryLaunch_AndScalesLayers()
    {
        var gpu = GpuCatalog.Get("h100");
        var r = ProfileCommand.Measure(DeviceCheckpoints.Tiny(), BackendKind.Emulator, tokens: 4, context: 40, emulateAs: gpu);
        Assert.That(r.Context, Is.EqualTo(40));
        Assert.That(r.DeviceName, Does.Contain("H100"), "the emulator presents itself as the GPU");
        var p = ProfileCommand.Predict(r, gpu);
        Assert.That(p.Decode.Launches, Has.Count.EqualTo(r.Decode.Records.Count));
        Assert.That(p.Decode.Launches.All(l => l.Microseconds > 0 && l.Resources.RegistersPerThread > 0), "every launch has a time and its ptxas registers");
        Assert.That(p.SampledDecode.Launches.Select(l => l.Kernel), Does.Contain("sample_draw_bf16"));
        Assert.That(p.Decode.Launches.Select(l => l.Kernel), Does.Contain("sample_reduce_bf16").And.Not.Contain("sample_draw_bf16"), "greedy: the reduce kernel alone");
        Assert.That(p.Decode.GraphNodes, Is.GreaterThanOrEqualTo(p.Decode.Launches.Count), "the decode step is a graph replay");
        Assert.That(p.Prefill.GraphNodes, Is.EqualTo(0), "prefill launches on the stream");

        var split = StepPredictor.FindLayers(r.Decode.Records, 2);
        Assert.That(split, Is.Not.Null);
        var scaled = ProfileCommand.Predict(r, gpu, layers: 5);
        Assert.That(scaled.Decode.Launches, Has.Count.EqualTo(r.Decode.Records.Count + 3 * split!.Value.PerLayer));
        Assert.That(scaled.Decode.TotalUs, Is.GreaterThan(p.Decode.TotalUs));
        Assert.That(scaled.MinimumDecodeBytes, Is.EqualTo(DeviceProfiler.MinimumDecodeBytes(r.Plan, 40, 5)));
        Assert.That(scaled.MinimumDecodeBytes, Is.GreaterThan(p.MinimumDecodeBytes));
    }

    [Test]
    public void Cli_ProfilePredict_PrintsPredictedTables()
    {
        var (exit, stdout, stderr) = Cli("profile", "-m", DeviceCheckpoints.Tiny(), "--predict", "a100", "-p", "3", "-c", "20", "--scale-layers", "4", "--detail",
            "--assume", "graphNodeGapUs=1.0", "--what-if", "persistent", "--lines", "gemv_bf16_t1");
        Assert.That(exit, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("PREDICTED by the timing model (docs/timing-model.md), not measured; assumed: graphNodeGapUs 1 (gpus.json: 1.3)"), "--assume: named on each heading");
        Assert.That(stdout, Does.Contain("decode (1 token(s), context 20, greedy, 2 layer(s)) on NVIDIA A100-SXM4-80GB: PREDICTED"));
        Assert.That(stdout, Does.Contain("sampled decode (1 token(s), context 20, sampled"));
        Assert.That(stdout, Does.Contain("prefill (3 token(s), positions 16..18"));
        Assert.That(stdout, Does.Contain("tok/s predicted").And.Contain("roofline:").And.Contain("of the roofline"));
        Assert.That(stdout, Does.Contain("scaled from 2 to 4 layers").And.Contain("4 layer(s)) on NVIDIA A100"));
        Assert.That(stdout, Does.Contain("predicted sampled decode / greedy decode"));
        Assert.That(stdout, Does.Contain("decode: the model's terms per launch (PREDICTED us").And.Contain("warp instr"), "--detail: the terms tables");
        // --lines: the critical warp of the decode step's first GEMV, by source line (its loop is in gemv.cuh)
        Assert.That(stdout, Does.Contain("decode: gemv_bf16_t1 (grid ").And.Contain("its critical warp: ").And.Contain("by CUDA source line"));
        Assert.That(stdout, Does.Match(@"\n +\d+ +\d+\.\d% +gemv\.cuh:\d+\n"), "a line of the GEMV's inner product");
        // --what-if persistent: the greedy decode step composed as one launch, labelled as not built, for 2 and for 4 layers
        var whatIf = stdout.Split('\n').Where(l => l.StartsWith("WHAT-IF, NOT BUILT, PREDICTED by the timing model: the decode step's ", StringComparison.Ordinal)).ToList();
        Assert.That(whatIf, Has.Count.EqualTo(2), "one what-if per greedy decode prediction (the slice's and the scaled one)");
        Assert.That(whatIf, Has.All.Contain("as the stages of one persistent launch on NVIDIA A100-SXM4-80GB").And.Contain("lookahead 16.0 MiB (l2PersistingBytes)"));
        Assert.That(stdout, Does.Not.Contain("what-if stages:"), "the tiny model has no follow-on qkv: the step measured is the one composed");
        Assert.That(stdout, Does.Contain("what-if step: launch ").And.Contain("of the roofline (the multi-kernel step as predicted: "));
        Assert.That(stdout, Does.Contain("what-if as one kernel: every stage at one block size and register count"), "the composition at one kernel's occupancy");
        Assert.That(stdout, Does.Match(@"what-if with each stage's bytes fetched ahead staged in shared memory \(up to [0-9.]+ MiB: half of every SM's\) before it is ready: \d+\.\d% of the roofline"));
        Assert.That(stdout, Does.Match(@"\n +128 +64 +\d+ +\d+  [a-z ]+ +\d+\.\d%"), "a row of it: 128 threads, 64 registers");
        // early routing: the tiny model's folded router is 8 experts x 64 query dims x 2 bytes
        Assert.That(stdout, Does.Match(@"what-if with early routing \(the experts' ids from the attention's output through the router folded with the norm weight and o_proj, 1\.0 KiB more per MoE layer; their weights fetched ahead from o_proj's done\), by lookahead: 0 B \d+\.\d%"));
        // every table line that carries a time is under a heading that says predicted (and names the assumption)
        foreach (string heading in stdout.Split('\n').Where(l => l.Contains(" on NVIDIA ")))
            Assert.That(heading, Does.Contain("PREDICTED").And.Contain("assumed: graphNodeGapUs 1 "));
    }

    /// <summary>`--lines` of a kernel only the sampled step launches (its draw) reads the sampled step, not a usage error.</summary>
    [Test]
    public void Cli_ProfileLines_OfTheSampler_ReadsTheSampledStep()
    {
        var (exit, stdout, stderr) = Cli("profile", "-m", DeviceCheckpoints.Tiny(), "-p", "2", "--lines", "sample_draw_bf16");
        Assert.That(exit, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("sampled decode: sample_draw_bf16 (grid ").And.Contain("its critical warp: "));
        Assert.That(stdout, Does.Match(@"\n +\d+ +\d+\.\d% +sampling\.cuh?:\d+\n"), "a line of the sampler's source");
    }

    /// <summary>Runs `qwen3cuda profile ARGS`: a usage error (exit 2) whose message is one line containing every fragment.</summary>
    static string UsageError(string[] args, params string[] fragments)
    {
        var (exit, _, err) = Cli(["profile", .. args]);
        Assert.That(exit, Is.EqualTo(2), $"a usage error: {string.Join(" ", args)}");
        foreach (string f in fragments) Assert.That(err, Does.Contain(f));
        Assert.That(err.Trim().Split('\n'), Has.Length.EqualTo(1), err);
        return err;
    }

    [Test]
    public void Cli_ProfilePredict_BadInput_OneLineErrors()
    {
        string tiny = DeviceCheckpoints.Tiny();
        string bad = UsageError(["--model", tiny, "--predict", "v100"], "a100, h100, h200, rtx4090, l40s");
        Assert.That(bad.Trim(), Does.StartWith("error: --predict: 'v100' is not a described GPU"));
        UsageError(["--model", tiny, "--scale-layers", "48"], "--scale-layers", "--predict");
        UsageError(["--model", tiny, "-p", "8", "-c", "8"], "--ctx-size 8: must be at least --n-prompt + 1 = 9");
        UsageError(["--model", tiny, "--detail"], "--detail", "--predict");
        UsageError(["--model", tiny, "--predict", "h100", "--scale-layers", "0"], "--scale-layers: 0 is out of range");
        UsageError(["--model", tiny, "--assume", "pdlNodeGapUs=0.3"], "--assume changes the GPU description of a prediction: give --predict GPU too");
        UsageError(["--model", tiny, "--predict", "h100", "--assume", "pdlNodeGapUs"], "--assume 'pdlNodeGapUs': expected NAME=VALUE");
        UsageError(["--model", tiny, "--predict", "h100", "--assume", "gap=1"], "--assume gap: not a number of the GPU description; known: ");
        UsageError(["--model", tiny, "-p", "3", "-c", "20", "--max-model-len", "19"], "--max-model-len 19: must be at least the decode context --ctx-size 20");
        UsageError(["--model", tiny, "-p", "3", "--max-model-len", "16000000"], "--max-model-len 16000000: more than the model's context of", "(max_position_embeddings)");
        UsageError(["--model", tiny, "--what-if", "persistent"], "--what-if composes a predicted step: give --predict GPU too");
        UsageError(["--model", tiny, "--measure-only"], "--measure-only measures a GPU: give --device cuda");
        UsageError(["--model", tiny, "--measure-only", "--predict", "h100"], "--measure-only prints no prediction: leave out --predict");
        UsageError(["--model", tiny, "--measure-only", "--detail"], "--measure-only prints no prediction");
        UsageError(["--model", tiny, "--predict", "h100", "--what-if", "megakernel"], "--what-if: 'megakernel' is not a what-if; known: persistent");
        UsageError(["--model", tiny, "-p", "2", "--lines", "nosuch_kernel"], "--lines nosuch_kernel: the decode step launches no such kernel; it launches ", "gemv_bf16_t1");
        UsageError(["--model", tiny, "-p", "2", "--lines", "gemv_bf16_t1:x"], "--lines gemv_bf16_t1:x: the stage after ':' must be a number");
        UsageError(["--model", tiny, "-p", "2", "--lines", "gemv_bf16_t1:2"], "--lines gemv_bf16_t1:2: gemv_bf16_t1 has no stage 2 in the decode step; its stages: whole");
    }

    /// <summary>On a GPU: measured next to predicted per kernel (the GPU's description matched by name). Skipped without one.</summary>
    [Test]
    [Category(Kernels.KernelBackends.GpuCategory)]
    public void Cli_ProfileCuda_PrintsMeasuredNextToPredicted()
    {
        if (!Runtime.Cuda.CudaDriver.IsDeviceAvailable()) Assert.Ignore("no CUDA device: measured-vs-predicted needs a GPU");
        var (exit, stdout, stderr) = Cli("profile", "--model", DeviceCheckpoints.Tiny(), "--device", "cuda", "--tokens", "3", "--predict", "h100");
        Assert.That(exit, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("measured on the GPU vs PREDICTED").And.Contain("pred/meas"));
    }

    /// <summary>On a GPU, --measure-only: the measured tables and no prediction (the device check's variants; skipped without a GPU).</summary>
    [Test]
    [Category(Kernels.KernelBackends.GpuCategory)]
    public void Cli_ProfileCuda_MeasureOnly_PrintsNoPrediction()
    {
        if (!Runtime.Cuda.CudaDriver.IsDeviceAvailable()) Assert.Ignore("no CUDA device: --measure-only measures a GPU");
        var (exit, stdout, stderr) = Cli("profile", "--model", DeviceCheckpoints.Tiny(), "--device", "cuda", "--tokens", "3", "--measure-only");
        Assert.That(exit, Is.EqualTo(0), stderr);
        Assert.That(stdout, Does.Contain("predicted: skipped (--measure-only)").And.Not.Contain("PREDICTED"));
    }
}
