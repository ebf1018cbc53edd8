using System.Globalization;
using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>PersistentAttnParams</c> in kernels/persistent_decode.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PersistentAttnParams
{
    public GemvParams Qkv;
    public AttnDecodeFusedParams Attn;
    public GemvParams OProj;
    public MoeRouterParams Router;
    public DevicePtr Counters;   // [6] int, zero on entry, left zero
    public int QkvGroups;
    public int QkvWpg;
    public int OGroups;
    public int OWpg;
    public int RouterTiles;      // 0: no router stage; E
    public int StageOnly;        // -1: the whole block; 0 .. 3: that stage's tiles alone
    public long OAheadBytes;     // the first bytes of o_proj's weight the qkv tiles prefetch (evict_last) before their wait
    public MoeEarlyRouteParams Early;   // early routing (EarlyTiles > 0)
    public DevicePtr EarlyExperts;      // the stacked gate_up weight [E, 2I, H]
    public long EarlyExpertStride;      // its bytes per expert
    public long EarlyPrefetchBytes;     // per chosen expert, the first bytes of its gate_up block the router tiles prefetch
    public int EarlyTiles;              // 0: none; ceil(E / 4)
}

/// <summary>
/// The bf16 weights and activations of one layer's attention block for <see cref="PersistentDecodeLaunchers.AttentionBlock"/>:
/// x ([rows, <paramref name="Ldx"/>] bf16, <paramref name="Hidden"/> wide) is read by the qkv projection through its input
/// RMSNorm (<paramref name="InputNorm"/>, <paramref name="Eps"/>) and gets o_proj's output added in place;
/// <paramref name="Wqkv"/> is [qkv dim, hidden], <paramref name="Wo"/> [hidden, q dim], rows contiguous. The o_proj tiles
/// also fetch the first <paramref name="FetchAheadBytes"/> of <paramref name="FetchAhead"/> (a later kernel's weights:
/// the next layer's qkv) into L2 with evict_last after their wait, as the o_proj GEMV does (docs/timing-model.md,
/// "Weights fetched ahead"); null / 0: none. The qkv tiles prefetch the first <paramref name="OProjAheadBytes"/> of
/// <paramref name="Wo"/> (at most all of it) into L2 with evict_last before their wait: they are resident from the launch's
/// start, the o_proj tiles only once earlier tiles have left (docs/timing-model.md, "A stage-ordered launch"); 0: none.
/// </summary>
public readonly record struct AttentionBlockWeights(DevicePtr X, int Ldx, int Hidden, DevicePtr InputNorm, float Eps, DevicePtr Wqkv, DevicePtr Wo,
    DevicePtr FetchAhead = default, long FetchAheadBytes = 0, long OProjAheadBytes = 0, DevicePtr XOut = default)
{
    /// <summary>Where o_proj writes <c>x + W_o attn</c>: <see cref="XOut"/> when set (early routing reads x unchanged), else x in place.</summary>
    public DevicePtr OProjOut => XOut.IsNull ? X : XOut;
}

/// <summary>
/// Early routing in the attention block (kernels/early_route.cu, docs/kernels.md "Early routing"): the folded router
/// <paramref name="Folded"/> [E, Q] bf16 of this layer, the buffers for the unscaled logits [T, E] fp32 and the ids [T, k],
/// and the experts' stacked gate_up weight <paramref name="GateUp"/> ([E, 2I, H], <paramref name="ExpertStrideBytes"/>
/// per expert), of which the router tiles prefetch the first <paramref name="PrefetchBytes"/> of each chosen expert. The
/// router tiles take the ids from the logits for that prefetch (the first tile also stores them in
/// <paramref name="TopkIds"/>): with <paramref name="PrefetchBytes"/> 0 no tile takes them and the ids are not written.
/// </summary>
public readonly record struct AttentionBlockEarlyRouting(DevicePtr Folded, DevicePtr Logits, DevicePtr TopkIds, DevicePtr GateUp,
    long ExpertStrideBytes, long PrefetchBytes);

/// <summary>
/// A MoE layer's router as the attention block's fourth stage (<see cref="PersistentDecodeLaunchers.AttentionBlock"/>):
/// what <see cref="MoeLaunchers.RouterNorm"/> computes from the block's x once o_proj has added to it, the same bits:
/// <paramref name="HOut"/> [rows, hidden] bf16 = RMSNorm(x) * <paramref name="PostNorm"/> (<paramref name="Eps"/>), the
/// logits [rows, E] fp32 in <paramref name="Logits"/>, the top-k ids (int) and weights (fp32) [rows, k]. One tile per
/// router row; the router tiles also fetch the first <paramref name="FetchAheadBytes"/> of <paramref name="FetchAhead"/>
/// (the next layer's qkv weight after o_proj's share) into L2 with evict_last before their wait (docs/timing-model.md,
/// "Weights fetched ahead"); null / 0: none. <paramref name="TopkByExperts"/>: the tiles write the logits only, with no
/// ticket and no softmax + top-k, which the experts' launch after the block runs itself (<see cref="MoeLaunchers.ExpertsGemv"/>'s
/// routerLogits): the router stage's chain ends at its logits (docs/kernels.md, "Persistent launches").
/// </summary>
public readonly record struct AttentionBlockRouter(MoeShape Shape, DevicePtr PostNorm, float Eps, DevicePtr RouterWeight, DevicePtr HOut,
    DevicePtr Logits, DevicePtr TopkIds, DevicePtr TopkWeights, DevicePtr FetchAhead = default, long FetchAheadBytes = 0, bool TopkByExperts = false,
    AttentionBlockEarlyRouting? Early = null);

/// <summary>
/// Launcher for kernels/persistent_decode.cu: a layer's attention block for decode rows, qkv projection (with its input
/// norm) -> attn_decode_fused's attention -> o_proj (+ residual) [-> a MoE layer's router], as one persistent launch whose CTAs pull the three
/// stages' tiles in order and wait on counters in global memory (docs/kernels.md, "Persistent launches"). Bitwise the
/// same as <see cref="GemvLaunchers.Gemv(DeviceStream, DevicePtr, int, DevicePtr, int, in WeightOperand, DevicePtr, int, int, int, DevicePtr, long, DevicePtr, float, DevicePtr, long, DevicePtr, DevicePtr, long)"/>
/// (tensor-core plan) -> <see cref="AttentionDecodeLaunchers.DecodeFused"/> -> the GEMV again, which are its oracle and
/// its fallback: <see cref="CanRun"/> says when the shapes allow it. Nothing here allocates or synchronises.
/// </summary>
public sealed class PersistentDecodeLaunchers
{
    public const string File = "persistent_decode.cu";
    /// <summary>The attention tile's 128 threads; <c>PDEC_MIN_CTAS_PER_SM</c>: the launch bounds' CTAs per SM.</summary>
    public const int Threads = 128, MinCtasPerSm = 4;
    /// <summary>Ints of the counter array: next ticket, exit ticket, tiles done per GEMV / attention stage, the router's ticket.</summary>
    public const int CounterInts = 6;
    /// <summary>The router stage's largest hidden size: one 8-element chunk per virtual thread of moe_router_norm_topk's 256.</summary>
    public const int MaxRouterHidden = 2048;
    /// <summary>Rows the qkv tiles' norm prologue can finish: one per warp of the 4.</summary>
    public const int MaxRows = 4;
    private readonly DeviceKernel _kernel;
    private readonly IDevice _device;

    /// <summary>The variant for <paramref name="headDim"/> (tensor-core attention: at most 128) and a bf16 or FP8 KV cache.</summary>
    public PersistentDecodeLaunchers(KernelLoader loader, int headDim = 128, bool kvFp8 = false)
    {
        if (!SupportsHeadDim(headDim))
            throw new ArgumentException($"{File}: head_dim {headDim} must be 16, 32, 64 or 128 (the tensor-core attention tile)", nameof(headDim));
        HeadDim = headDim;
        _device = loader.Device;
        var defines = new Dictionary<string, string> { ["HEAD_DIM"] = headDim.ToString(CultureInfo.InvariantCulture), ["KV_FP8"] = kvFp8 ? "1" : "0" };
        _kernel = loader.Get(File, "persistent_attn_block", defines);
    }

    public int HeadDim { get; }

    public static bool SupportsHeadDim(int headDim) => headDim is 16 or 32 or 64 or 128;

    /// <summary>Bytes of the counter array: zeroed once, each launch leaves it zero.</summary>
    public static long CounterBytes => CounterInts * sizeof(int);

    /// <summary>
    /// Bytes of the attention tile's K / V buffer (attention_decode.cuh's FUSED_SMEM_BYTES for the tensor-core split: two
    /// 64-key tiles of D + 8 bf16 per row), which also holds a GEMV tile's staged rows.
    /// </summary>
    public static int StagingBytes(int headDim) => Math.Max(2 * 64 * (headDim + 8) * 2, 8 * 64 * 4);

    /// <summary>
    /// Whether the block can run as one launch on a device of <paramref name="sms"/> SMs: both GEMVs take the tensor-core
    /// plan (whose K-slices the tiles reproduce), at most <see cref="MaxRows"/> rows, their staged rows fit the attention's
    /// tile buffer, and the attention combines in its last CTAs. Otherwise run the three launches.
    /// </summary>
    public static bool CanRun(int sms, int headDim, int rows, int hidden, int qkvDim, int qDim, int splits) =>
        SupportsHeadDim(headDim) && rows >= 1 && rows <= MaxRows && splits <= AttentionDecodeLaunchers.FusedMaxCombineSplits
        && GemvLaunchers.TensorCorePlan(sms, rows, qkvDim, hidden, WeightFormat.Bf16, normPrologue: true).TensorCores
        && GemvLaunchers.TensorCorePlan(sms, rows, hidden, qDim, WeightFormat.Bf16).TensorCores
        && (long)rows * (Math.Max(hidden, qDim) + GemvLaunchers.MmaPadElements) * 2 <= StagingBytes(headDim);

    /// <summary>
    /// The tile of a GEMV whose standalone plan has <paramref name="planGroups"/> row groups of 8 warps: that plan's
    /// K-slices per row group (wpg), and as many row groups as 4 warps run with <paramref name="slicesPerWarp"/> slices each
    /// (at least one: a plan with 8 slices runs them two per warp).
    /// </summary>
    public static (int Groups, int Wpg) GemvTile(int planGroups, int slicesPerWarp = 1)
    {
        int wpg = 8 / planGroups;
        return (Math.Max(1, 4 * slicesPerWarp / wpg), wpg);
    }

    /// <summary>
    /// The qkv projection's tile: the plan's K-slices per row group, and as many row groups as 4 warps run with two slices
    /// each (8 slices: twice <see cref="GemvTile"/>'s rows when a slice is a quarter of K or less). Every tile runs the
    /// input RMSNorm of x before its product, so fewer, larger tiles issue fewer instructions: Qwen3-30B-A3B's qkv at 1 row
    /// is 320 tiles of 16 rows, not 640 of 8 (about two thirds of the stage's instructions, which bound it on an H200 once
    /// its weights are fetched ahead; docs/timing-model.md, section 7). The bits depend only on the K-slices (wpg).
    /// </summary>
    public static (int Groups, int Wpg) QkvTile(int planGroups) => GemvTile(planGroups, slicesPerWarp: 2);

    /// <summary>
    /// Runs the block for <c>a.Seqs</c> decode rows: qkv = W_qkv RMSNorm(x) into <c>rope.Qkv</c>, the fused attention
    /// (<see cref="AttentionDecodeLaunchers.FusedParams"/>: q/k norm, RoPE, the KV write, splits, combine) into
    /// <c>a.Out</c>, then x += W_o <c>a.Out</c>. <paramref name="counters"/> has <see cref="CounterBytes"/> bytes, zero.
    /// The grid is one CTA per tile. <paramref name="cooperative"/> asks for a co-resident launch (the emulator's
    /// interleaved tests; on a GPU only where every tile's CTA fits at once). <paramref name="stagesApart"/>: the same
    /// tiles as three launches, one per stage (<see cref="LaunchConfig.Stage"/>), each waiting on the launch before
    /// instead of a counter: the same results, and the emulator's counters of each stage for the timing model
    /// (docs/timing-model.md, section 7). With <paramref name="router"/> (a MoE layer; x's row stride must be the hidden
    /// size) the router runs as a fourth stage after o_proj: one tile per router row (<see cref="AttentionBlockRouter"/>).
    /// Returns the attention's split count.
    /// </summary>
    public int AttentionBlock(DeviceStream stream, AttentionDecodeLaunchers attention, in AttentionBlockWeights w,
        in DecodeAttentionArgs a, in DecodeRopeArgs rope, DevicePtr counters, bool cooperative = false, bool stagesApart = false,
        AttentionBlockRouter? router = null)
    {
        if (attention.HeadDim != HeadDim) throw new ArgumentException($"{File}: the attention launchers are for head_dim {attention.HeadDim}, these for {HeadDim}", nameof(attention));
        if (counters.IsNull) throw new ArgumentException($"{File}: the counters must be a device buffer of {CounterBytes} bytes", nameof(counters));
        if (w.X.IsNull || w.InputNorm.IsNull || w.Wqkv.IsNull || w.Wo.IsNull) throw new ArgumentException($"{File}: x, the input norm and both weights must be device buffers", nameof(w));
        if (w.FetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(w), w.FetchAheadBytes, $"{File}: bytes to fetch ahead must not be negative");
        if (w.OProjAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(w), w.OProjAheadBytes, $"{File}: o_proj's bytes the qkv tiles prefetch must not be negative");
        if (router is { } r0)
        {
            MoeLaunchers.CheckShape(r0.Shape, decodeOnly: true);
            if (r0.Shape.Hidden > MaxRouterHidden)
                throw new NotSupportedException($"{File}: the router stage takes a hidden size of at most {MaxRouterHidden} (one 8-element chunk per virtual thread), got {r0.Shape.Hidden}; run moe_router_norm_topk");
            if (r0.Shape.Hidden != w.Hidden || w.Ldx != w.Hidden)
                throw new ArgumentException($"{File}: the router stage reads x at its hidden size {r0.Shape.Hidden}: x must be {w.Hidden} wide with row stride {w.Ldx} equal to it", nameof(router));
            if (r0.PostNorm.IsNull || r0.RouterWeight.IsNull || r0.HOut.IsNull || r0.Logits.IsNull || r0.TopkIds.IsNull || r0.TopkWeights.IsNull)
                throw new ArgumentException($"{File}: the router stage needs the post-attention norm, the router weight, and the h, logits, top-k ids and weights buffers", nameof(router));
            if (r0.FetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(router), r0.FetchAheadBytes, $"{File}: the router stage's bytes to fetch ahead must not be negative");
            if (r0.Early is { } e0)
            {
                if (e0.Folded.IsNull || e0.Logits.IsNull || e0.TopkIds.IsNull || e0.GateUp.IsNull)
                    throw new ArgumentException($"{File}: early routing needs the folded router, the logits and ids buffers and the experts' gate_up weight", nameof(router));
                if (e0.ExpertStrideBytes <= 0 || e0.PrefetchBytes < 0 || e0.PrefetchBytes > e0.ExpertStrideBytes)
                    throw new ArgumentOutOfRangeException(nameof(router), e0.PrefetchBytes, $"{File}: early routing prefetches 0 to {e0.ExpertStrideBytes} bytes (one expert's gate_up block) per chosen expert, got {e0.PrefetchBytes}");
                if (w.XOut.IsNull || w.XOut == w.X)
                    throw new ArgumentException($"{File}: early routing reads the layer's input x while o_proj runs: o_proj's output (XOut) must be another buffer", nameof(w));
            }
        }
        var attn = attention.FusedParams(a, rope, out bool combineInKernel);
        if (a.Seqs == 0) return 0;
        int rows = a.Seqs, sms = _device.Info.MultiprocessorCount, qDim = a.NumQHeads * HeadDim, qkvDim = (a.NumQHeads + 2 * a.NumKvHeads) * HeadDim;
        if (w.Hidden <= 0 || w.Hidden % 8 != 0 || w.Ldx < w.Hidden || w.Ldx % 8 != 0)
            throw new ArgumentException($"{File}: hidden {w.Hidden} must be a positive multiple of 8 and ldx {w.Ldx} a multiple of 8 at least that", nameof(w));
        if (a.OutStride < qDim || a.OutStride % 8 != 0)
            throw new ArgumentException($"{File}: the attention output stride {a.OutStride} is o_proj's input: a multiple of 8, at least {qDim}", nameof(a));
        if (!combineInKernel || !CanRun(sms, HeadDim, rows, w.Hidden, qkvDim, qDim, attn.Splits))
            throw new NotSupportedException($"{File}: {rows} rows, hidden {w.Hidden}, qkv {qkvDim}, q {qDim}, {attn.Splits} splits on {sms} SMs do not fit one launch (CanRun); run the three launches");
        var qkvPlan = GemvLaunchers.TensorCorePlan(sms, rows, qkvDim, w.Hidden, WeightFormat.Bf16, normPrologue: true);
        var oPlan = GemvLaunchers.TensorCorePlan(sms, rows, w.Hidden, qDim, WeightFormat.Bf16);
        var (qkvGroups, qkvWpg) = QkvTile(qkvPlan.RowsPerWarp);
        var (oGroups, oWpg) = GemvTile(oPlan.RowsPerWarp);
        var p = new PersistentAttnParams
        {
            Qkv = new GemvParams
            {
                Y = rope.Qkv, X = w.X, W = w.Wqkv, NormWeight = w.InputNorm, Eps = w.Eps, Tokens = rows, N = qkvDim, K = w.Hidden,
                Ldx = w.Ldx, Ldy = rope.QkvStride, RowsPerWarp = qkvPlan.RowsPerWarp, KSplit = w.Hidden, SplitK = 1,
            },
            Attn = attn,
            OProj = new GemvParams
            {
                Y = w.OProjOut, X = a.Out, W = w.Wo, Residual = w.X, Tokens = rows, N = w.Hidden, K = qDim, Ldx = a.OutStride, Ldy = w.Ldx,
                RowsPerWarp = oPlan.RowsPerWarp, KSplit = qDim, SplitK = 1,
                FetchAhead = w.FetchAhead, FetchAheadBytes = w.FetchAhead.IsNull ? 0 : w.FetchAheadBytes,
            },
            Counters = counters, QkvGroups = qkvGroups, QkvWpg = qkvWpg, OGroups = oGroups, OWpg = oWpg, StageOnly = -1,
            OAheadBytes = Math.Min(w.OProjAheadBytes, (long)w.Hidden * qDim * 2),
        };
        if (router is { } r)
        {
            p.Router = new MoeRouterParams
            {
                Hidden = w.OProjOut, WGate = r.RouterWeight, Logits = r.Logits, TopkIds = r.TopkIds, TopkWeights = r.TopkWeights, HOut = r.HOut,
                NormWeight = r.PostNorm, FetchAhead = r.FetchAhead, FetchAheadBytes = r.FetchAhead.IsNull ? 0 : r.FetchAheadBytes,
                Tokens = rows, HiddenSize = r.Shape.Hidden, Experts = r.Shape.Experts, TopK = r.Shape.TopK, NormTopkProb = r.Shape.NormTopkProb ? 1 : 0, Eps = r.Eps,
                TopkByConsumer = r.TopkByExperts ? 1 : 0,
            };
            p.RouterTiles = r.Shape.Experts;
            if (r.Early is { } e)
            {
                if (a.OutStride != qDim)
                    throw new ArgumentException($"{File}: early routing reads the attention output at row stride {qDim}, got {a.OutStride}", nameof(a));
                p.Early = new MoeEarlyRouteParams
                {
                    X = w.X, Attn = a.Out, WRouter = r.RouterWeight, NormWeight = r.PostNorm, Folded = e.Folded, Logits = e.Logits, TopkIds = e.TopkIds,
                    Counter = DevicePtr.Null, Tokens = rows, HiddenSize = w.Hidden, QDim = qDim, Experts = r.Shape.Experts, TopK = r.Shape.TopK,
                };
                p.EarlyExperts = e.GateUp;
                p.EarlyExpertStride = e.ExpertStrideBytes;
                p.EarlyPrefetchBytes = e.PrefetchBytes;
                p.EarlyTiles = (r.Shape.Experts + 3) / 4;
            }
        }
        Span<int> stageTiles = [(qkvDim + 8 * qkvGroups - 1) / (8 * qkvGroups) + p.EarlyTiles, attn.Splits * a.NumKvHeads * rows, p.EarlyTiles + (w.Hidden + 8 * oGroups - 1) / (8 * oGroups), p.RouterTiles];
        if (p.RouterTiles == 0) stageTiles = stageTiles[..3];
        if (!stagesApart)
        {
            int tiles = 0;
            foreach (int t in stageTiles) tiles += t;
            Launch(stream, p, new LaunchConfig(new Dim3((uint)tiles), Threads, 0, ProgrammaticDependentLaunch: !cooperative, Cooperative: cooperative) { TilesInOrder = true });
            return attn.Splits;
        }
        for (int stage = 0; stage < stageTiles.Length; stage++)
            Launch(stream, p with { StageOnly = stage }, new LaunchConfig(new Dim3((uint)stageTiles[stage]), Threads, 0, ProgrammaticDependentLaunch: true)
                { Stage = new LaunchStage(stage, stageTiles.Length) });
        return attn.Splits;
    }

    private void Launch(DeviceStream stream, in PersistentAttnParams p, in LaunchConfig config)
    {
        var args = new KernelArgs(stackalloc byte[1024], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(_kernel, config, stream, args);
    }
}
