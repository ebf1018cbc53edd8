using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;

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
        Assert.That(launches, Has.Count.EqualTo(6 * layers + 3), string.Join(", ", launches));
        Assert.That(launches.Skip(1).Take(6), Is.EqualTo(new[] { "gemv_bf16_t1", "attn_decode_fused", "gemv_bf16_t1", "moe_router_norm_topk", "moe_gate_up_gemv", "moe_down_gemv" }));

        device.ClearLaunches();
        dm.ForwardGreedy(0, [token, 5]);   // a 2-row run of one sequence: decode attention rows, not singles
        launches = device.Launches.Select(r => r.Kernel).ToList();
        Assert.That(launches.Count(k => k == "qk_norm_rope_kv_write"), Is.EqualTo(layers));
        Assert.That(launches.Count(k => k == "attn_decode_split"), Is.EqualTo(layers));
        Assert.That(launches, Has.None.EqualTo("attn_decode_fused"));
    }

    /// <summary>
    /// The decode step's router and o_proj GEMV fetch the first bytes of the next weight stream ahead (docs/timing-model.md,
    /// "Weights fetched ahead"): each layer's moe_router_norm_topk prefetches min(FetchAheadBytes, the tensor) of the next
    /// layer's qkv weight (the lm_head after the last layer) with evict_last, the o_proj GEMV before it the
    /// OProjFetchAheadBytes after those, and the next GEMV then finds both L2-resident; 0 turns either off. The tiny model's
    /// tensors are small, so budgets of 1 KiB and 512 bytes show the bounds. The logits do not change.
    /// </summary>
    [Test]
    public void DecodeRouterAndOProj_FetchTheNextWeightsAhead()
    {
        int[] Step(long router, long oProj, out List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> launches)
        {
            using var device = new Qwen3Cuda.Runtime.Emulation.EmulatedDevice();
            using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, DeviceCheckpoints.Tiny(),
                new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, UseGraphs = false, FetchAheadBytes = router, OProjFetchAheadBytes = oProj });
            int token = dm.ForwardGreedy(0, [1, 2, 3, 4, 5]);
            device.ClearLaunches();
            int next = dm.ForwardGreedy(0, [token]);
            launches = [.. device.Launches];
            return [token, next];
        }
        var both = Step(1024, 512, out var withBoth);
        var routerOnly = Step(1024, 0, out var withRouter);
        var off = Step(0, 0, out var without);
        Assert.That(both, Is.EqualTo(off), "a cache hint: the tokens do not depend on it");
        Assert.That(routerOnly, Is.EqualTo(off));
        Assert.That(without.Select(r => r.PersistingSectors), Is.All.Zero);
        static List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> Before(List<Qwen3Cuda.Runtime.Emulation.LaunchRecord> l, string kernel) =>
            l.Where((r, i) => i + 1 < l.Count && l[i + 1].Kernel == kernel).ToList();
        foreach (var (launches, oProj) in new[] { (withBoth, 512), (withRouter, 0) })
        {
            var routers = launches.Where(r => r.Kernel == "moe_router_norm_topk").ToList();
            Assert.That(routers, Is.Not.Empty);
            Assert.That(routers.Select(r => r.PersistingSectors), Is.All.EqualTo(1024 / 32), "1 KiB of each next tensor, each sector once");
            var oProjs = Before(launches, "moe_router_norm_topk");
            Assert.That(oProjs.Select(r => r.Kernel), Is.All.StartWith("gemv"), "the o_proj GEMV runs right before each router");
            Assert.That(oProjs.Select(r => r.PersistingSectors), Is.All.EqualTo(oProj / 32), $"o_proj fetches {oProj} bytes after the router's");
            // the qkv GEMVs after the first layer's and the lm_head: what the o_proj and router before them fetched is resident
            var gemvs = launches.Where((r, i) => i > 0 && launches[i - 1].Kernel == "moe_down_gemv" && r.Kernel.StartsWith("gemv", StringComparison.Ordinal)).ToList();
            var gemvsWithout = without.Where((r, i) => i > 0 && without[i - 1].Kernel == "moe_down_gemv" && r.Kernel.StartsWith("gemv", StringComparison.Ordinal)).ToList();
            Assert.That(gemvs, Has.Count.EqualTo(routers.Count), "every layer after the first, and the lm_head");
            for (int i = 0; i < gemvs.Count; i++)
                Assert.That(gemvs[i].L2ResidentSectors - gemvsWithout[i].L2ResidentSectors, Is.EqualTo((1024 + oProj) / 32), $"GEMV after layer {i}'s experts");
        }
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
