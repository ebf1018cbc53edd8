using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Dense Qwen3 (model_type qwen3) on the device path: the dense SwiGLU MLP launches (GEMV / GEMM + swiglu.cu, not the MoE
/// kernels) and tied embeddings (lm_head reads the embedding tensor; one copy in the weight arena).
/// </summary>
[NonParallelizable]
public class DenseModelDeviceTests
{
    public static readonly SyntheticOptions TinyDenseTiedOptions = DeviceCheckpoints.TinyOptions with { Dense = true, TieWordEmbeddings = true };

    /// <summary>
    /// Tiny shapes, every layer dense, tied embeddings: chunked prefill (a 16-row chunk through the GEMMs, then 4 rows
    /// through the GEMVs) and 16 greedy steps against the CPU reference at the suite's tolerance (DeviceModelTests).
    /// </summary>
    [Test]
    public void TinyDenseTied_ChunkedPrefillAndDecode_MatchReference()
    {
        DeviceModelTests.RunGreedy(Model.TestCheckpoints.Get(TinyDenseTiedOptions),
            new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 4 }, promptLength: 20, steps: 16);
    }

    [Test]
    public void DenseModel_LaunchesNoMoeKernel()
    {
        using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, Model.TestCheckpoints.Get(TinyDenseTiedOptions),
            new DeviceModelOptions { ContextLength = 32, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, UseGraphs = false });
        device.ClearLaunches();
        dm.ForwardGreedy(0, [1, 2, 3]);
        var launches = device.Launches.Select(r => r.Kernel).ToList();
        Assert.That(launches, Has.Some.EqualTo("swiglu_bf16"));
        Assert.That(launches.Where(k => k.StartsWith("moe_", StringComparison.Ordinal)), Is.Empty);
        Assert.That(launches.Count(k => k == "swiglu_bf16"), Is.EqualTo(dm.Config.NumHiddenLayers));
    }

    /// <summary>
    /// docs/timing-model.md, "Graph nodes of a decode step": a decode step of one row per sequence is 6 kernels per MoE layer
    /// (qkv GEMV, attn_decode_fused, o_proj GEMV, router, gate|up, down) + 3 (embedding, lm_head, argmax), here on the tiny
    /// MoE checkpoint, eagerly (the graph holds the same launches); a run of 2 rows of one sequence keeps the separate KV
    /// write and split + combine (its rows attend to each other's new keys).
    /// </summary>
    [Test]
    public void DecodeStep_IsSixKernelsPerMoeLayer()
    {
        using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice();
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(),
            new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, UseGraphs = false });
        Assume.That(Enumerable.Range(0, dm.Config.NumHiddenLayers).All(dm.Config.IsMoeLayer), "the tiny checkpoint is all MoE");
        int token = dm.ForwardGreedy(0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);   // 10 rows: a flash prefill segment
        device.ClearLaunches();
        dm.ForwardGreedy(0, [token]);
        var launches = device.Launches.Select(r => r.Kernel).ToList();
        int layers = dm.Config.NumHiddenLayers;
        Assert.That(launches, Has.Count.EqualTo(5 * layers + 3), string.Join(", ", launches));
        Assert.That(launches.Skip(1).Take(5), Is.EqualTo(new[] { "gemv_bf16_t1", "attn_decode_fused", "gemv_bf16_t1", "moe_router_norm_topk", "moe_experts_gemv" }));

        device.ClearLaunches();
        dm.ForwardGreedy(0, [token, 5]);   // a 2-row run of one sequence: decode attention rows, not singles
        launches = device.Launches.Select(r => r.Kernel).ToList();
        Assert.That(launches.Count(k => k == "qk_norm_rope_kv_write"), Is.EqualTo(layers));
        Assert.That(launches.Count(k => k == "attn_decode_split"), Is.EqualTo(layers));
        Assert.That(launches, Has.None.EqualTo("attn_decode_fused"));
    }

    /// <summary>
    /// The decode step's o_proj GEMV and router fetch the first bytes of the next weight stream ahead (docs/timing-model.md,
    /// "Weights fetched ahead"): of min(FetchAheadBytes, the tensor) of the next layer's qkv weight (the lm_head after the
    /// last layer), each layer's o_proj prefetches the first OProjFetchAheadBytes, its moe_experts_gemv the last
    /// ExpertsFetchAheadBytes (before its wait) and its moe_router_norm_topk the rest, with evict_last, and that GEMV then
    /// finds them all L2-resident; 0 turns it off. The tiny model's tensors are small, so a 1 KiB budget (384 bytes of it
    /// o_proj's, 256 the experts') shows the bounds. The logits do not change.
    /// </summary>
    [Test]
    public void DecodeOProjAndRouter_FetchTheNextWeightsAhead()
    {
        int[] Step(long fetchAhead, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> launches)
        {
            using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice();
            using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(),
                new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, UseGraphs = false, FetchAheadBytes = fetchAhead, OProjFetchAheadBytes = 384,
                    ExpertsFetchAheadBytes = 256 });
            int token = dm.ForwardGreedy(0, [1, 2, 3, 4, 5]);
            device.ClearLaunches();
            int next = dm.ForwardGreedy(0, [token]);
            launches = [.. device.Launches];
            return [token, next];
        }
        var on = Step(1024, out var withFetch);
        var off = Step(0, out var without);
        Assert.That(on, Is.EqualTo(off), "a cache hint: the tokens do not depend on it");
        var routers = withFetch.Where(r => r.Kernel == "moe_router_norm_topk").ToList();
        Assert.That(routers, Is.Not.Empty);
        Assert.That(routers.Select(r => r.PersistingSectors), Is.All.EqualTo((1024 - 384 - 256) / 32), "the rest of 1 KiB of each next tensor, each sector once");
        var experts = withFetch.Where(r => r.Kernel == "moe_experts_gemv").ToList();
        Assert.That(experts, Has.Count.EqualTo(routers.Count));
        Assert.That(experts.Select(r => r.PersistingSectors), Is.All.EqualTo(256 / 32), "the experts: the last 256 bytes");
        Assert.That(experts.Select(r => r.PreWaitSectors), Is.All.EqualTo(256 / 32), "before their wait, and nothing else before it");
        var oProjs = withFetch.Where((r, i) => i > 0 && withFetch[i - 1].Kernel == "attn_decode_fused").ToList();
        Assert.That(oProjs, Has.Count.EqualTo(routers.Count), "one o_proj GEMV per layer");
        Assert.That(oProjs.Select(r => r.PersistingSectors), Is.All.EqualTo(384 / 32), "o_proj: the first 384 bytes");
        Assert.That(without.Select(r => r.PersistingSectors), Is.All.Zero);
        // the qkv GEMVs after the first layer's: what the router before them fetched is resident
        var qkvWith = withFetch.Where((r, i) => i > 0 && withFetch[i - 1].Kernel == "moe_experts_gemv" && r.Kernel.StartsWith("gemv", StringComparison.Ordinal)).ToList();
        var qkvWithout = without.Where((r, i) => i > 0 && without[i - 1].Kernel == "moe_experts_gemv" && r.Kernel.StartsWith("gemv", StringComparison.Ordinal)).ToList();
        Assert.That(qkvWith, Has.Count.EqualTo(routers.Count), "every layer after the first, and the lm_head");
        for (int i = 0; i < qkvWith.Count; i++)
            Assert.That(qkvWith[i].L2ResidentSectors - qkvWithout[i].L2ResidentSectors, Is.EqualTo(1024 / 32), $"GEMV after layer {i}'s experts");
    }

    /// <summary>
    /// The small checkpoint on 10 SMs with <paramref name="options"/> (graphs off unless they say so): the logits of a
    /// 10-token prompt, of one decode row (its launches recorded), of the next decode row and of a run of 3 rows.
    /// </summary>
    static float[][] SmallDecodeLogits(Func<DeviceModelOptions, DeviceModelOptions> options, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> decodeLaunches)
    {
        using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice(new Qwen3Cuda.Runtime.Emulation.EmulatorOptions { MultiprocessorCount = 10 });
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(),
            options(new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 4, UseGraphs = false }));
        int V = dm.VocabSize;
        var prompt = new float[V];
        dm.Forward(0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10], prompt);
        int token = Array.IndexOf(prompt, prompt.Max());
        device.ClearLaunches();
        var one = new float[V];
        dm.Forward(0, [token], one);
        decodeLaunches = [.. device.Launches];
        var second = new float[V];
        dm.Forward(0, [Array.IndexOf(one, one.Max())], second);
        var three = new float[V];
        dm.Forward(0, [token, 7, 9], three);
        return [prompt, one, second, three];
    }

    static readonly string[] SmallDecodeSteps = ["the prompt", "one decode row", "the next decode row", "a run of 3 rows"];

    /// <summary>
    /// FusedArgmax (docs/kernels.md, "Fusions"): a greedy decode step's lm_head takes each row's argmax in its own launch
    /// (gemv_bf16_mma_argmax) and no sampling kernel runs after it. The small checkpoint on 10 SMs decodes two sequences
    /// greedily for 6 steps: the same tokens with the fusion on and off, each with graphs on and off (the argmax of the
    /// same bf16 logits, ties to the lowest index either way, so exact equality holds even at a near-tie); with it on the
    /// step has one launch less. A sampled step keeps sample_reduce_bf16.
    /// </summary>
    [Test]
    public void FusedArgmax_GreedyDecode_SameTokens_OneLaunchLess()
    {
        int[][] Run(bool fused, bool graphs, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> stepLaunches)
        {
            using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice(new Qwen3Cuda.Runtime.Emulation.EmulatorOptions { MultiprocessorCount = 10 });
            using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(),
                new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, MaxSequences = 2, UseGraphs = graphs, FusedArgmax = fused });
            var logits = new float[dm.VocabSize];
            dm.Forward(0, [1, 2, 3, 4, 5], logits);
            dm.Forward(1, [9, 8, 7], logits);
            int[] next = [3, 4];
            var steps = new List<int[]>();
            stepLaunches = [];
            for (int step = 0; step < 6; step++)
            {
                device.ClearLaunches();
                var ids = new int[2];
                dm.DecodeBatchGreedy([0, 1], next, ids);
                if (step == 0) stepLaunches = [.. device.Launches];
                steps.Add(ids);
                next = ids;
            }
            return [.. steps];
        }
        var on = Run(fused: true, graphs: false, out var onLaunches);
        var off = Run(fused: false, graphs: false, out var offLaunches);
        Assert.That(on, Is.EqualTo(off), "the same tokens, step by step");
        Assert.That(Run(fused: true, graphs: true, out _), Is.EqualTo(off), "with the decode steps replayed as captured graphs");
        Assert.That(Run(fused: false, graphs: true, out _), Is.EqualTo(off), "and without the fusion");
        Assert.That(onLaunches.Select(l => l.Kernel), Does.Contain(GemvLaunchers.TensorCoreArgmaxKernel).And.Not.Contain("sample_reduce_bf16"), "on: the lm_head takes the argmax");
        Assert.That(offLaunches.Select(l => l.Kernel), Does.Contain("sample_reduce_bf16").And.Not.Contain(GemvLaunchers.TensorCoreArgmaxKernel), "off: the sampling kernel does");
        Assert.That(offLaunches.Count - onLaunches.Count, Is.EqualTo(1), "one launch less");
        Assert.That(new DeviceModelOptions().FusedArgmax, Is.EqualTo(DeviceModelOptions.FusedArgmaxFromEnvironment()), "on unless QWEN3CUDA_FUSED_ARGMAX says off");
    }

    /// <summary>
    /// FusedSample (docs/kernels.md, "Fusions"): a sampled decode step of one row runs sample_reduce_bf16's work in the
    /// lm_head's launch (gemv_bf16_mma_sample), then sample_draw_bf16. The small checkpoint on 10 SMs decodes one sequence
    /// for 6 steps at temperature 0.8, top-k 20, top-p 0.9 (seed 11): the same tokens with the fusion on and off, each with
    /// graphs on and off. The row state is the same but for the fp32 order of the masses, which could move the top-p bucket
    /// only where the mass reaches top_p within that rounding (the kernel test compares the states exactly); with it on
    /// the step has one launch less. Two rows keep sample_reduce_bf16 (the fusion takes one row).
    /// </summary>
    [Test]
    public void FusedSample_SampledDecode_SameTokens_OneLaunchLess()
    {
        var settings = new SamplingSettings(0.8f, 20, 0.9f, 0f, Seed: 11);
        int[] Run(bool fused, bool graphs, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> stepLaunches, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> twoRowLaunches)
        {
            using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice(new Qwen3Cuda.Runtime.Emulation.EmulatorOptions { MultiprocessorCount = 10 });
            using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Small(),
                new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, MaxSequences = 2, UseGraphs = graphs, FusedSample = fused });
            int token = dm.ForwardSampled(0, [1, 2, 3, 4, 5], settings);
            var tokens = new List<int> { token };
            stepLaunches = [];
            var next = new int[1];
            for (int step = 0; step < 6; step++)
            {
                device.ClearLaunches();
                dm.DecodeBatchSampled([0], [token], settings, next);
                if (step == 0) stepLaunches = [.. device.Launches];
                token = next[0];
                tokens.Add(token);
            }
            dm.ForwardSampled(1, [9, 8, 7], settings);
            device.ClearLaunches();
            dm.DecodeBatchSampled([0, 1], [token, 3], [settings, settings with { Seed = 12 }], new int[2]);
            twoRowLaunches = [.. device.Launches];
            return [.. tokens];
        }
        var on = Run(fused: true, graphs: false, out var onLaunches, out var onTwo);
        var off = Run(fused: false, graphs: false, out var offLaunches, out _);
        Assert.That(on, Is.EqualTo(off), "the same tokens, step by step");
        Assert.That(Run(fused: true, graphs: true, out _, out _), Is.EqualTo(off), "with the decode steps replayed as captured graphs");
        Assert.That(Run(fused: false, graphs: true, out _, out _), Is.EqualTo(off), "and without the fusion");
        Assert.That(onLaunches.Select(l => l.Kernel), Does.Contain(GemvLaunchers.TensorCoreSampleKernel).And.Contain("sample_draw_bf16").And.Not.Contain("sample_reduce_bf16"),
            "on: the lm_head runs the reduce");
        Assert.That(offLaunches.Select(l => l.Kernel), Does.Contain("sample_reduce_bf16").And.Not.Contain(GemvLaunchers.TensorCoreSampleKernel), "off: the sampling kernel does");
        Assert.That(offLaunches.Count - onLaunches.Count, Is.EqualTo(1), "one launch less");
        Assert.That(onTwo.Select(l => l.Kernel), Does.Contain("sample_reduce_bf16").And.Not.Contain(GemvLaunchers.TensorCoreSampleKernel), "two rows: the sampling kernels");
        Assert.That(on.Distinct().Count(), Is.GreaterThan(1), "the draws are not all one token");
        Assert.That(new DeviceModelOptions().FusedSample, Is.EqualTo(DeviceModelOptions.FusedSampleFromEnvironment()), "on unless QWEN3CUDA_FUSED_SAMPLE says off");
    }

    /// <summary>
    /// ExpertsFollowOnQkv (docs/kernels.md, "Persistent launches"): on a MoE decode step each layer's experts launch also
    /// runs the next layer's qkv projection, so that layer has no qkv launch of its own. The small checkpoint on 10 SMs
    /// qualifies (qkv 384 x 256: 2 row groups of 4 warps in the standalone plan, MoeLaunchers.CanFollowOn). The decode
    /// steps' logits, for two single rows and for a run of 3 rows, are the same bits with the follow-on on and off (off by default:
    /// docs/timing-model.md, section 7); the same with the decode steps replayed as captured graphs. Graphs off elsewhere, so the launches are
    /// recorded as run.
    /// </summary>
    [Test]
    public void ExpertsFollowOnQkv_RemovesALaunchPerLayer_SameLogits()
    {
        float[][] Run(bool followOn, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> decodeLaunches, bool graphs = false) =>
            SmallDecodeLogits(o => o with { UseGraphs = graphs, ExpertsFollowOnQkv = followOn, PersistentAttentionBlock = false }, out decodeLaunches);
        var on = Run(true, out var fused);
        var off = Run(false, out var separate);
        var replayed = Run(true, out _, graphs: true);
        Assert.That(new DeviceModelOptions().ExpertsFollowOnQkv, Is.EqualTo(DeviceModelOptions.ExpertsFollowOnFromEnvironment()), "off unless QWEN3CUDA_EXPERTS_FOLLOW_ON says on");
        for (int i = 0; i < on.Length; i++)
        {
            string what = SmallDecodeSteps[i];
            Assert.That(on[i], Is.EqualTo(off[i]), $"{what}: the same bits");
            Assert.That(replayed[i], Is.EqualTo(off[i]), $"{what}, decode steps as captured graphs: the same bits");
        }
        var config = Qwen3Cuda.Model.Checkpoint.SyntheticCheckpoint.BuildConfig(DeviceCheckpoints.SmallOptions);
        int layers = config.NumHiddenLayers;
        Assert.That(Enumerable.Range(0, layers).All(config.IsMoeLayer), Is.True, "the small checkpoint is all MoE");
        Assert.That(MoeLaunchers.CanFollowOn(10, 1, (config.NumAttentionHeads + 2 * config.NumKeyValueHeads) * config.HeadDim, config.HiddenSize), Is.True);
        Assert.That(separate.Count - fused.Count, Is.EqualTo(layers - 1), "one qkv launch less per layer after the first");
        var qkv = fused.Where((r, i) => i > 0 && fused[i - 1].Kernel == "embedding_gather_bf16").Single();
        Assert.That(qkv.Kernel, Is.EqualTo(GemvLaunchers.TensorCoreKernel), "the first layer's qkv is its own launch");
        Assert.That(fused.Where((r, i) => i > 0 && fused[i - 1].Kernel == "moe_experts_gemv").Select(r => r.Kernel),
            Is.All.EqualTo("attn_decode_fused").Or.EqualTo(GemvLaunchers.TensorCoreKernel).Or.EqualTo(GemvLaunchers.TensorCoreArgmaxKernel),
            "after an experts launch: the next layer's attention (or the lm_head, with the greedy argmax)");
        Assert.That(fused.Count(r => r.Kernel == "attn_decode_fused"), Is.EqualTo(layers));
    }

    /// <summary>
    /// PersistentAttentionBlock (docs/kernels.md, "Persistent launches"): on a decode step of one row per sequence each
    /// layer's qkv projection, attention and o_proj run as one launch (persistent_attn_block). The small checkpoint on 10
    /// SMs qualifies (qkv 384 x 256 and o_proj 256 x 256 take the tensor-core plan: PersistentDecodeLaunchers.CanRun). The
    /// logits of the prompt, of two decode rows and of a run of 3 rows (which keeps the separate launches) are the same
    /// bits with it on (the default) and off, also with the decode steps replayed as captured graphs and with its stages as
    /// launches apart; the one-row step has two launches fewer per layer (the router in its own launch here: the next test
    /// takes it into the block).
    /// </summary>
    [Test]
    public void PersistentAttentionBlock_RemovesTwoLaunchesPerLayer_SameLogits()
    {
        float[][] Run(bool persistent, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> decodeLaunches, bool graphs = false, bool apart = false) =>
            SmallDecodeLogits(o => o with { UseGraphs = graphs, PersistentAttentionBlock = persistent, PersistentStagesApart = apart, ExpertsFollowOnQkv = false, PersistentRouter = false }, out decodeLaunches);
        var on = Run(true, out var fused);
        var off = Run(false, out var separate);
        var replayed = Run(true, out _, graphs: true);
        var apart = Run(true, out var stageLaunches, apart: true);
        Assert.That(new DeviceModelOptions().PersistentAttentionBlock, Is.EqualTo(DeviceModelOptions.PersistentAttentionFromEnvironment()), "on unless QWEN3CUDA_PERSISTENT_ATTN says off");
        for (int i = 0; i < on.Length; i++)
        {
            string what = SmallDecodeSteps[i];
            Assert.That(on[i], Is.EqualTo(off[i]), $"{what}: the same bits");
            Assert.That(replayed[i], Is.EqualTo(off[i]), $"{what}, decode steps as captured graphs: the same bits");
            Assert.That(apart[i], Is.EqualTo(off[i]), $"{what}, the block's stages as launches apart (the timing model's measurement): the same bits");
        }
        var config = Qwen3Cuda.Model.Checkpoint.SyntheticCheckpoint.BuildConfig(DeviceCheckpoints.SmallOptions);
        int layers = config.NumHiddenLayers;
        Assert.That(separate.Count - fused.Count, Is.EqualTo(2 * layers), "two launches fewer per layer");
        Assert.That(stageLaunches.Count(r => r.Stage is not null), Is.EqualTo(3 * layers), "stages apart: three launches per block, each marked with its stage");
        Assert.That(fused.Count(r => r.Kernel == "persistent_attn_block"), Is.EqualTo(layers), "one attention block launch per layer");
        Assert.That(fused.Any(r => r.Kernel == "attn_decode_fused"), Is.False, "no separate attention launch");
    }

    /// <summary>
    /// With the attention block as one launch, its o_proj tiles take o_proj's share of the bytes fetched ahead (docs/timing-model.md,
    /// "Weights fetched ahead"): on the small checkpoint with a 1 KiB budget, 384 bytes of it o_proj's and 256 the
    /// experts', each block launch prefetches the first 384 bytes of the next weights with evict_last, the experts launch
    /// the last 256, the router the rest, and the next layer's block (or the lm_head GEMV) finds all 1 KiB L2-resident.
    /// The logits do not change.
    /// </summary>
    [Test]
    public void PersistentAttentionBlock_OProjTiles_FetchTheNextWeightsAhead()
    {
        float[][] Run(long fetchAhead, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> decodeLaunches) =>
            SmallDecodeLogits(o => o with { PersistentAttentionBlock = true, ExpertsFollowOnQkv = false, FetchAheadBytes = fetchAhead, OProjFetchAheadBytes = 384, ExpertsFetchAheadBytes = 256, PersistentRouter = false, OProjEarlyFetchBytes = 0 }, out decodeLaunches);
        var on = Run(1024, out var with);
        var off = Run(0, out var without);
        for (int i = 0; i < on.Length; i++) Assert.That(on[i], Is.EqualTo(off[i]), $"{SmallDecodeSteps[i]}: a cache hint, the same bits");
        var blocks = with.Where(r => r.Kernel == "persistent_attn_block").ToList();
        var routers = with.Where(r => r.Kernel == "moe_router_norm_topk").ToList();
        Assert.That(blocks, Has.Count.EqualTo(routers.Count).And.Count.GreaterThan(1));
        Assert.That(blocks.Select(r => r.PersistingSectors), Is.All.EqualTo(384 / 32), "the o_proj tiles: the first 384 bytes, each sector once");
        Assert.That(routers.Select(r => r.PersistingSectors), Is.All.EqualTo((1024 - 384 - 256) / 32), "the router: the rest");
        Assert.That(with.Where(r => r.Kernel == "moe_experts_gemv").Select(r => r.PersistingSectors), Is.All.EqualTo(256 / 32), "the experts: the last 256 bytes");
        Assert.That(without.Select(r => r.PersistingSectors), Is.All.Zero);
        // the launch after each layer's experts (the next block, or the lm_head GEMV) finds the 1 KiB resident
        List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> AfterExperts(List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> l) =>
            l.Where((r, i) => i > 0 && l[i - 1].Kernel == "moe_experts_gemv").ToList();
        var nextWith = AfterExperts(with);
        var nextWithout = AfterExperts(without);
        Assert.That(nextWith, Has.Count.EqualTo(blocks.Count));
        for (int i = 0; i < nextWith.Count; i++)
            Assert.That(nextWith[i].L2ResidentSectors - nextWithout[i].L2ResidentSectors, Is.EqualTo(1024 / 32), $"{nextWith[i].Kernel} after layer {i}'s experts");
    }

    /// <summary>
    /// EarlyRouting (docs/kernels.md, "Early routing"): the folded routers made at load, the block's early tiles and the
    /// router tiles' prefetch of the chosen experts' first 1 KiB (with evict_last). A hint: the logits of the prompt, of two
    /// decode rows and of a run of 3 rows (which keeps the separate launches) are the same bits with it on and off, also as
    /// captured graphs and with the stages apart. In the recorded one-row step each block launch prefetches k KiB more
    /// (k distinct experts). (Whether the experts' launch finds them is not compared across the two runs here: the folded
    /// routers move the weight arena's addresses, and with them the emulator's whole L2 history of this small model.)
    /// </summary>
    [Test]
    public void EarlyRouting_PrefetchesTheChosenExperts_SameLogits()
    {
        float[][] Run(bool early, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> decodeLaunches, bool graphs = false, bool apart = false) =>
            SmallDecodeLogits(o => o with { UseGraphs = graphs, PersistentAttentionBlock = true, PersistentRouter = true, PersistentStagesApart = apart,
                ExpertsFollowOnQkv = false, EarlyRouting = early, EarlyRoutingPrefetchBytes = 1024 }, out decodeLaunches);
        var on = Run(true, out var with);
        var off = Run(false, out var without);
        var replayed = Run(true, out _, graphs: true);
        var apart = Run(true, out _, apart: true);
        Assert.That(new DeviceModelOptions().EarlyRouting, Is.EqualTo(Environment.GetEnvironmentVariable(DeviceModelOptions.EarlyRoutingEnvironmentVariable) is "1" or "true"),
            "off unless QWEN3CUDA_EARLY_ROUTING says on");
        for (int i = 0; i < on.Length; i++)
        {
            string what = SmallDecodeSteps[i];
            Assert.That(on[i], Is.EqualTo(off[i]), $"{what}: the same bits");
            Assert.That(replayed[i], Is.EqualTo(off[i]), $"{what}, decode steps as captured graphs: the same bits");
            Assert.That(apart[i], Is.EqualTo(off[i]), $"{what}, the block's stages as launches apart: the same bits");
        }
        var config = Qwen3Cuda.Model.Checkpoint.SyntheticCheckpoint.BuildConfig(DeviceCheckpoints.SmallOptions);
        int k = config.NumExpertsPerTok;
        var blocksWith = with.Where(r => r.Kernel == "persistent_attn_block").ToList();
        var blocksWithout = without.Where(r => r.Kernel == "persistent_attn_block").ToList();
        Assert.That(blocksWith, Has.Count.EqualTo(config.NumHiddenLayers).And.Count.EqualTo(blocksWithout.Count));
        for (int l = 0; l < blocksWith.Count; l++)
            Assert.That(blocksWith[l].PersistingSectors - blocksWithout[l].PersistingSectors, Is.EqualTo(k * 1024 / 32), $"layer {l}: the block prefetches k chosen experts' first KiB");
    }

    /// <summary>
    /// PersistentRouter (docs/kernels.md, "Persistent launches"): with the attention block as one launch, each MoE layer's
    /// router runs as its fourth stage. The logits of the prompt, of two decode rows and of a run of 3 rows (which keeps the
    /// separate launches) are the same bits with it on (the default) and off, also as captured graphs and with the stages
    /// as launches apart (four per block); the recorded one-row step has one launch fewer per layer, no router launch. With a 1 KiB
    /// fetch-ahead, 384 bytes of it o_proj's and 256 the experts', each block launch now prefetches all but the experts'
    /// share (the router tiles the rest, before their wait), and the next layer's block (or the lm_head GEMV) finds all of
    /// it L2-resident.
    /// </summary>
    [Test]
    public void PersistentRouter_RunsTheRouterInTheAttentionBlock_SameLogits()
    {
        float[][] Run(bool router, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> decodeLaunches, bool graphs = false, bool apart = false, long fetchAhead = 1024) =>
            SmallDecodeLogits(o => o with { UseGraphs = graphs, PersistentAttentionBlock = true, PersistentRouter = router, PersistentStagesApart = apart,
                ExpertsFollowOnQkv = false, FetchAheadBytes = fetchAhead, OProjFetchAheadBytes = 384, ExpertsFetchAheadBytes = 256, OProjEarlyFetchBytes = 0 },
                out decodeLaunches);
        var on = Run(true, out var fused);
        var off = Run(false, out var separate);
        var replayed = Run(true, out _, graphs: true);
        var apart = Run(true, out var stageLaunches, apart: true);
        var noAhead = Run(true, out var without, fetchAhead: 0);
        Assert.That(new DeviceModelOptions().PersistentRouter, Is.EqualTo(DeviceModelOptions.PersistentRouterFromEnvironment()), "on unless QWEN3CUDA_PERSISTENT_ROUTER says off");
        for (int i = 0; i < on.Length; i++)
        {
            string what = SmallDecodeSteps[i];
            Assert.That(on[i], Is.EqualTo(off[i]), $"{what}: the same bits");
            Assert.That(replayed[i], Is.EqualTo(off[i]), $"{what}, decode steps as captured graphs: the same bits");
            Assert.That(apart[i], Is.EqualTo(off[i]), $"{what}, the block's stages as launches apart: the same bits");
            Assert.That(noAhead[i], Is.EqualTo(off[i]), $"{what}, no fetch-ahead: the same bits");
        }
        var config = Qwen3Cuda.Model.Checkpoint.SyntheticCheckpoint.BuildConfig(DeviceCheckpoints.SmallOptions);
        int layers = config.NumHiddenLayers;
        var blocks = fused.Where(r => r.Kernel == "persistent_attn_block").ToList();
        Assert.That(blocks, Has.Count.EqualTo(layers), "the recorded one-row decode step: one block per layer");
        Assert.That(separate.Count - fused.Count, Is.EqualTo(layers), "one launch fewer per layer: its router");
        Assert.That(fused.Any(r => r.Kernel == "moe_router_norm_topk"), Is.False, "no router launch");
        Assert.That(stageLaunches.Count(r => r.Stage is { Count: 4 }), Is.EqualTo(4 * blocks.Count), "stages apart: four launches per block");
        Assert.That(blocks.Select(r => r.PersistingSectors), Is.All.EqualTo((1024 - 256) / 32), "the o_proj tiles' 384 bytes and the router tiles' rest, each sector once");
        Assert.That(fused.Where(r => r.Kernel == "moe_experts_gemv").Select(r => r.PersistingSectors), Is.All.EqualTo(256 / 32), "the experts: the last 256 bytes");
        var afterExperts = fused.Where((r, i) => i > 0 && fused[i - 1].Kernel == "moe_experts_gemv").ToList();
        var afterExpertsWithout = without.Where((r, i) => i > 0 && without[i - 1].Kernel == "moe_experts_gemv").ToList();
        Assert.That(afterExperts, Has.Count.EqualTo(afterExpertsWithout.Count).And.Count.EqualTo(blocks.Count), "the next layers' blocks and the lm_head GEMV");
        for (int i = 0; i < blocks.Count; i++)
            Assert.That(afterExperts[i].L2ResidentSectors - afterExpertsWithout[i].L2ResidentSectors, Is.EqualTo(1024 / 32), $"{afterExperts[i].Kernel} after experts launch {i}");
    }

    /// <summary>
    /// The fetch-ahead budget's defaults follow the router's path (docs/timing-model.md, "Weights fetched ahead"): 12 MiB,
    /// 2 of them o_proj's, when the router runs in the attention block (its tiles fetch before their wait); 8 MiB, 4 of them
    /// o_proj's, when it is its own launch; the experts' share, the last 2 MiB, on both. A value set is used on both paths; a
    /// negative one is refused, named.
    /// </summary>
    [Test]
    public void FetchAhead_DefaultsFollowTheRoutersPath_AndNegativeBytesAreRefused()
    {
        var d = new DeviceModelOptions();
        Assert.That((d.FetchAheadBytesFor(true), d.OProjFetchAheadBytesFor(true)), Is.EqualTo((12L << 20, 2L << 20)), "router in the block");
        Assert.That((d.FetchAheadBytesFor(false), d.OProjFetchAheadBytesFor(false)), Is.EqualTo((8L << 20, 4L << 20)), "router as its own launch");
        Assert.That(d.ExpertsFetchAheadBytesOrDefault, Is.EqualTo(4L << 20), "the experts' share");
        var set = new DeviceModelOptions { FetchAheadBytes = 1024, OProjFetchAheadBytes = 0, ExpertsFetchAheadBytes = 0 };
        Assert.That((set.FetchAheadBytesFor(true), set.OProjFetchAheadBytesFor(false), set.ExpertsFetchAheadBytesOrDefault), Is.EqualTo((1024L, 0L, 0L)));
        Assert.That(() => new DeviceModelOptions { ExpertsFetchAheadBytes = -1 }.Validate(),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("ExpertsFetchAheadBytes").And.Message.Contains("must not be negative"));
        Assert.That(() => new DeviceModelOptions { FetchAheadBytes = -1 }.Validate(),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("FetchAheadBytes").And.Message.Contains("must not be negative"));
        Assert.That(() => new DeviceModelOptions { OProjFetchAheadBytes = -1 }.Validate(),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("OProjFetchAheadBytes").And.Message.Contains("must not be negative"));
        Assert.That(d.OProjEarlyFetchBytes, Is.EqualTo(DeviceModelOptions.OProjEarlyFetchFromEnvironment()), "o_proj's first bytes from the block's qkv tiles");
        if (Environment.GetEnvironmentVariable(DeviceModelOptions.OProjEarlyFetchEnvironmentVariable) is null)
            Assert.That(d.OProjEarlyFetchBytes, Is.EqualTo(4L << 20), "4 MiB unless QWEN3CUDA_OPROJ_EARLY_FETCH says otherwise");
        Assert.That(() => new DeviceModelOptions { OProjEarlyFetchBytes = -1 }.Validate(),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("OProjEarlyFetchBytes").And.Message.Contains("must not be negative"));
        Assert.That((DeviceModelOptions.ParseOProjEarlyFetch(null), DeviceModelOptions.ParseOProjEarlyFetch(" "), DeviceModelOptions.ParseOProjEarlyFetch("0"),
            DeviceModelOptions.ParseOProjEarlyFetch(" 1048576 ")), Is.EqualTo((4L << 20, 4L << 20, 0L, 1L << 20)));
        Assert.That(() => DeviceModelOptions.ParseOProjEarlyFetch("4MiB"),
            Throws.ArgumentException.With.Message.Contains("QWEN3CUDA_OPROJ_EARLY_FETCH=4MiB").And.Message.Contains("not a byte count"));
        // early routing's prefetch per chosen expert: QWEN3CUDA_EARLY_PREFETCH, 768 KiB unless set
        Assert.That((DeviceModelOptions.ParseEarlyPrefetch(null), DeviceModelOptions.ParseEarlyPrefetch(" "), DeviceModelOptions.ParseEarlyPrefetch(" 4096 ")),
            Is.EqualTo(((long?)null, (long?)null, (long?)4096)));
        Assert.That(new DeviceModelOptions { EarlyRoutingPrefetchBytes = null }.EarlyRoutingPrefetchBytesOrDefault, Is.EqualTo(768L << 10));
        Assert.That(() => DeviceModelOptions.ParseEarlyPrefetch("1MiB"),
            Throws.ArgumentException.With.Message.Contains("QWEN3CUDA_EARLY_PREFETCH=1MiB").And.Message.Contains("not a byte count"));
        Assert.That(() => new DeviceModelOptions { EarlyRoutingPrefetchBytes = -1 }.Validate(),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("EarlyRoutingPrefetchBytes").And.Message.Contains("must not be negative"));
    }

    /// <summary>
    /// The attention block's qkv tiles prefetch the first <see cref="DeviceModelOptions.OProjEarlyFetchBytes"/> of the
    /// layer's o_proj weight (evict_last, before their wait; docs/kernels.md, "Persistent launches"): the same bits with and
    /// without, as one launch and as stages apart; apart, the qkv stage's launch prefetches those sectors and the o_proj
    /// stage's finds them L2-resident, which is what the timing model hands to the o_proj stage (docs/timing-model.md,
    /// "A stage-ordered launch").
    /// </summary>
    [Test]
    public void PersistentBlock_QkvTilesPrefetchTheFirstBytesOfOProj_SameLogits()
    {
        float[][] Run(long early, bool apart, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> decodeLaunches) =>
            SmallDecodeLogits(o => o with { UseGraphs = false, PersistentAttentionBlock = true, PersistentRouter = true, PersistentStagesApart = apart,
                ExpertsFollowOnQkv = false, FetchAheadBytes = 0, OProjEarlyFetchBytes = early }, out decodeLaunches);
        var with = Run(1024, apart: true, out var withLaunches);
        var without = Run(0, apart: true, out var withoutLaunches);
        var whole = Run(1024, apart: false, out var wholeLaunches);
        for (int i = 0; i < with.Length; i++)
        {
            Assert.That(with[i], Is.EqualTo(without[i]), $"{SmallDecodeSteps[i]}: the same bits");
            Assert.That(whole[i], Is.EqualTo(without[i]), $"{SmallDecodeSteps[i]}, as one launch: the same bits");
        }
        List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> Stage(List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> l, int k) =>
            l.Where(r => r.Kernel == "persistent_attn_block" && r.Stage?.Index == k).ToList();
        var qkvWith = Stage(withLaunches, 0);
        Assert.That(qkvWith, Is.Not.Empty);
        Assert.That(qkvWith.Select(r => r.PersistingSectors), Is.All.EqualTo(1024 / 32), "the qkv stage prefetches 1024 bytes, each sector once");
        Assert.That(Stage(withoutLaunches, 0).Select(r => r.PersistingSectors), Is.All.Zero);
        var oWith = Stage(withLaunches, 2);
        var oWithout = Stage(withoutLaunches, 2);
        Assert.That(oWith, Has.Count.EqualTo(oWithout.Count).And.Count.EqualTo(qkvWith.Count));
        for (int i = 0; i < oWith.Count; i++)
            Assert.That(oWith[i].L2ResidentSectors - oWithout[i].L2ResidentSectors, Is.EqualTo(1024 / 32), $"o_proj stage {i}: found them in L2");
        Assert.That(wholeLaunches.Where(r => r.Kernel == "persistent_attn_block").Select(r => r.PersistingSectors), Is.All.EqualTo(1024 / 32), "one launch: the same prefetch");
    }

    /// <summary>Qwen3-0.6B's plan: the tied lm_head is the embedding tensor (counted once), every layer's MLP is a dense [2I, H] + [H, I] pair.</summary>
    [Test]
    public void Qwen3_06B_Plan_CountsTheTiedEmbeddingOnce()
    {
        var tied = SyntheticCheckpoint.BuildConfig(new SyntheticOptions { Preset = SyntheticPreset.Qwen3_0_6B });
        Assert.That((tied.ModelType, tied.TieWordEmbeddings, tied.NumHiddenLayers, tied.HiddenSize, tied.IntermediateSize, tied.NumAttentionHeads, tied.NumKeyValueHeads, tied.HeadDim),
            Is.EqualTo(("qwen3", true, 28, 1024, 3072, 16, 8, 128)));
        var layout = new WeightLayout(tied);
        Assert.That(layout.LmHead, Is.SameAs(layout.Embedding));
        Assert.That(layout.Tensors.Count(t => t.Name is "embed_tokens" or "lm_head"), Is.EqualTo(1));
        Assert.That(layout.Layers.All(l => !l.IsMoe && l.Router is null && l.GateUp.Shape.SequenceEqual(new long[] { 1, 6144, 1024 })), Is.True);
        var untied = new WeightLayout(tied with { TieWordEmbeddings = false });
        long table = (long)tied.VocabSize * tied.HiddenSize * 2;   // 311 MB, a multiple of the 256-byte alignment
        Assert.That(untied.TotalBytes - layout.TotalBytes, Is.EqualTo(table));
        // ~0.6 B parameters (embedding once): 1.2 GB of bf16, within the alignment padding of the parameter bytes
        Assert.That(layout.ParameterCount, Is.InRange(590_000_000L, 600_000_000L));
        Assert.That(layout.TotalBytes - 2 * layout.ParameterCount, Is.InRange(0L, 256L * layout.Tensors.Count));
    }
}
