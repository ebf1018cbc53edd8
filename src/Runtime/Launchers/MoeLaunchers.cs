namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>
/// Launchers for the MoE kernels (kernels/moe_router.cu, moe_align.cu, moe_decode.cu, moe_gemm.cu,
/// moe_combine.cu) and the block-level entry point <c>MoeBlock</c>. Nothing here allocates or
/// synchronises; every launch goes to the given stream (graph-capturable).
/// </summary>
public sealed class MoeLaunchers
{
    /// <summary>At most this many tokens take the GEMV (decode) path; more take the grouped tensor-core GEMMs.</summary>
    public const int DecodeMaxTokens = 8;
    public const int MaxExperts = 256;
    public const int MaxTopK = 16;
    /// <summary>moe_gemm.cu: K step (GM_BK) and the N block of each GEMM (gate_up: 64 columns of I; down: 128 columns of H).</summary>
    public const int GemmKStep = 32, GateUpBlockN = 64, DownBlockN = 128;

    /// <summary>The expert kernels of one weight format: decode GEMVs (moe_decode.cu) and grouped GEMMs (moe_gemm.cu).</summary>
    public readonly record struct ExpertVariant(string GateUpGemv, string DownGemv, string GateUpGemm, string DownGemm, string ExpertsGemv);

    /// <summary>The supported expert weight formats and their kernels (the router always reads a bf16 [E, H] weight).</summary>
    public static readonly IReadOnlyDictionary<WeightFormat, ExpertVariant> Variants = new Dictionary<WeightFormat, ExpertVariant>
    {
        [WeightFormat.Bf16] = new("moe_gate_up_gemv", "moe_down_gemv", "moe_gate_up_gemm", "moe_down_gemm", "moe_experts_gemv"),
        [WeightFormat.Fp8Block] = new("moe_gate_up_gemv_fp8", "moe_down_gemv_fp8", "moe_gate_up_gemm_fp8", "moe_down_gemm_fp8", "moe_experts_gemv_fp8"),
        [WeightFormat.Int8Channel] = new("moe_gate_up_gemv_int8", "moe_down_gemv_int8", "moe_gate_up_gemm_int8", "moe_down_gemm_int8", "moe_experts_gemv_int8"),
        [WeightFormat.Int4Gptq] = new("moe_gate_up_gemv_int4", "moe_down_gemv_int4", "moe_gate_up_gemm_int4", "moe_down_gemm_int4", "moe_experts_gemv_int4"),
    };

    private sealed record ExpertKernels(DeviceKernel GateUpGemv, DeviceKernel DownGemv, DeviceKernel ExpertsGemv, DeviceKernel GateUpGemm,
        DeviceKernel DownGemm, DeviceKernel? GateUpGemmGuarded, DeviceKernel? DownGemmGuarded);

    private readonly IDevice _device;
    private readonly DeviceKernel _router, _routerNorm, _alignCount, _alignScatter, _combine;
    // moe_gemm.cu built with MOE_GEMM_GUARD_N=1: for I % 64 != 0 (gate_up) or H % 128 != 0 (down), small models only.
    private readonly Dictionary<WeightFormat, ExpertKernels> _experts = [];

    /// <summary>
    /// Loads the kernels. <paramref name="shapes"/>: the MoE shapes that will run; the guarded grouped-GEMM variant is
    /// compiled only when one of them needs it (null: always, e.g. for tests of many shapes). <paramref name="formats"/>:
    /// the expert weight formats to load (default: bf16 only).
    /// </summary>
    public MoeLaunchers(KernelLoader loader, IEnumerable<MoeShape>? shapes = null, IEnumerable<WeightFormat>? formats = null)
    {
        _device = loader.Device;
        _router = loader.Get("moe_router.cu", "moe_router_topk");
        _routerNorm = loader.Get("moe_router.cu", "moe_router_norm_topk");
        _alignCount = loader.Get("moe_align.cu", "moe_align_count");
        _alignScatter = loader.Get("moe_align.cu", "moe_align_scatter");
        bool guarded = shapes is null || shapes.Any(NeedsGuardedGemm);
        var guard = new Dictionary<string, string> { ["MOE_GEMM_GUARD_N"] = "1" };
        foreach (var f in (formats ?? [WeightFormat.Bf16]).Distinct())
        {
            var v = WeightFormats.Select(Variants, f, "MoE experts");
            _experts[f] = new ExpertKernels(
                loader.Get("moe_decode.cu", v.GateUpGemv), loader.Get("moe_decode.cu", v.DownGemv), loader.Get("moe_decode.cu", v.ExpertsGemv),
                loader.Get("moe_gemm.cu", v.GateUpGemm), loader.Get("moe_gemm.cu", v.DownGemm),
                guarded ? loader.Get("moe_gemm.cu", v.GateUpGemm, guard) : null,
                guarded ? loader.Get("moe_gemm.cu", v.DownGemm, guard) : null);
        }
        _combine = loader.Get("moe_combine.cu", "moe_combine");
    }

    /// <summary>
    /// The whole MoE block of <paramref name="tokens"/> tokens: router -> (token grouping) -> experts -> combine; decode
    /// runs the experts and the combine as one launch (<see cref="ExpertsGemv"/>).
    /// <c>output[t] = bf16(sum_j w[t,j] * Expert_{idx[t,j]}(hidden[t]))</c>, or <c>bf16(residual[t] + that)</c> when
    /// <paramref name="residual"/> is not null (residual may equal output). T &lt;= <see cref="DecodeMaxTokens"/>: GEMVs
    /// over the selected experts; otherwise grouped GEMMs. <paramref name="workspace"/> must hold
    /// <see cref="MoeWorkspace.Compute(int, in MoeShape)"/>.TotalBytes bytes; the layout's offsets name every intermediate.
    /// Its tickets must be zero before the first block (<see cref="ClearTickets"/> once after allocating it): the kernels that
    /// take a ticket leave it zero, so a step needs no memset (and a captured graph no memset node).
    /// </summary>
    public void MoeBlock(DeviceStream stream, in MoeShape shape, int tokens, DevicePtr hidden, DevicePtr routerWeight,
        DevicePtr gateUp, DevicePtr down, DevicePtr residual, DevicePtr output, DevicePtr workspace, long workspaceBytes) =>
        MoeBlock(stream, shape, tokens, hidden, routerWeight, WeightOperand.Bf16(gateUp), WeightOperand.Bf16(down), residual, output, workspace, workspaceBytes);

    /// <summary>
    /// The MoE block with the stacked expert weights in any loaded format (the variant from <see cref="Variants"/>). With a
    /// <paramref name="normWeight"/> (decode only, T &lt;= <see cref="DecodeMaxTokens"/>) <paramref name="hidden"/> is the
    /// residual stream x and the block runs on h = RMSNorm(x) * normWeight, which the router computes
    /// (<see cref="RouterNorm"/>) and writes to <paramref name="normOut"/> for the experts; the router then also fetches
    /// <paramref name="fetchAheadBytes"/> of <paramref name="fetchAhead"/> (a later kernel's weights) into L2.
    /// <paramref name="routed"/> (decode): an earlier launch ran that router (the attention block's router stage,
    /// <see cref="AttentionBlockRouter"/>): h is in <paramref name="normOut"/> and the top-k ids and weights in the
    /// workspace's places, so only the experts run; with <paramref name="topkByExperts"/> it wrote only the logits
    /// (<see cref="AttentionBlockRouter.TopkByExperts"/>) and the experts' CTAs run the top-k from them. The decode experts launch fetches <paramref name="expertsFetchAheadBytes"/>
    /// of <paramref name="expertsFetchAhead"/> into L2 before its wait (<see cref="ExpertsGemv"/>).
    /// </summary>
    public void MoeBlock(DeviceStream stream, in MoeShape shape, int tokens, DevicePtr hidden, DevicePtr routerWeight,
        in WeightOperand gateUp, in WeightOperand down, DevicePtr residual, DevicePtr output, DevicePtr workspace, long workspaceBytes,
        DevicePtr normWeight = default, float normEps = 0f, DevicePtr normOut = default, DevicePtr fetchAhead = default, long fetchAheadBytes = 0,
        ExpertsFollowOn? followOn = null, bool routed = false, DevicePtr expertsFetchAhead = default, long expertsFetchAheadBytes = 0,
        bool topkByExperts = false)
    {
        CheckShape(shape, decodeOnly: false);
        if (followOn is not null && tokens > DecodeMaxTokens)
            throw new ArgumentOutOfRangeException(nameof(tokens), $"MoeBlock: a follow-on GEMV runs in the decode experts launch (at most {DecodeMaxTokens} tokens), got {tokens}");
        if (tokens < 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"MoeBlock: token count {tokens} is negative");
        if (!normWeight.IsNull && tokens > DecodeMaxTokens)
            throw new ArgumentOutOfRangeException(nameof(tokens), $"MoeBlock: the fused RMSNorm takes at most {DecodeMaxTokens} tokens (decode), got {tokens}; run the norm kernel first");
        if (routed && (tokens > DecodeMaxTokens || normOut.IsNull))
            throw new ArgumentException($"MoeBlock: a block routed ahead is a decode step (at most {DecodeMaxTokens} tokens, got {tokens}) with h in normOut", nameof(routed));
        if (topkByExperts && !routed)
            throw new ArgumentException("MoeBlock: the experts run the top-k only after a router that wrote its logits alone (routed ahead)", nameof(topkByExperts));
        if (tokens == 0) return;
        var ws = MoeWorkspace.Compute(tokens, shape);
        if (workspaceBytes < ws.TotalBytes)
            throw new ArgumentException($"MoeBlock: workspace of {workspaceBytes} bytes is smaller than the {ws.TotalBytes} bytes needed for {tokens} tokens", nameof(workspaceBytes));
        DevicePtr ids = workspace + ws.TopkIds, weights = workspace + ws.TopkWeights, slotOut = workspace + ws.SlotOut, inter = workspace + ws.Inter;

        if (routed) hidden = normOut;
        else if (!normWeight.IsNull)
        {
            RouterNorm(stream, shape, tokens, hidden, normWeight, normEps, routerWeight, normOut, workspace + ws.Logits, workspace + ws.Counters, ids, weights,
                fetchAhead, fetchAheadBytes);
            hidden = normOut;
        }
        else Router(stream, shape, tokens, hidden, routerWeight, workspace + ws.Logits, workspace + ws.Counters, ids, weights);
        if (tokens <= DecodeMaxTokens)
        {
            ExpertsGemv(stream, shape, tokens, hidden, gateUp, down, ids, inter, slotOut, weights, residual, output,
                workspace + ws.ExpertsSync, followOn: followOn, fetchAhead: expertsFetchAhead, fetchAheadBytes: expertsFetchAheadBytes,
                routerLogits: topkByExperts ? workspace + ws.Logits : default);
            return;   // the combine ran in the down tiles
        }
        else
        {
            DevicePtr sorted = workspace + ws.SortedSlots, tileExpert = workspace + ws.TileExpert, numTiles = workspace + ws.NumTiles;
            Align(stream, shape.Experts, tokens * shape.TopK, ids, workspace + ws.Counts, workspace + ws.Offsets, sorted, tileExpert, numTiles);
            GateUpGemm(stream, shape, tokens, hidden, gateUp, sorted, tileExpert, numTiles, inter);
            DownGemm(stream, shape, tokens, inter, down, sorted, tileExpert, numTiles, slotOut);
        }
        Combine(stream, shape, tokens, slotOut, weights, residual, output);
    }

    /// <summary>
    /// Router logits (bf16-rounded, kept as fp32 in <paramref name="logits"/> [T, E]), softmax, top-k with ties to the
    /// lower expert index, optional renormalisation: <paramref name="topkIds"/> int [T, k], <paramref name="topkWeights"/>
    /// fp32 [T, k]. <paramref name="counters"/>: ceil(T/8) ints, zero on entry and left zero on exit (the last CTA of each
    /// token block resets its ticket), so only a new buffer needs clearing (<see cref="ClearTickets"/>).
    /// </summary>
    public void Router(DeviceStream stream, in MoeShape s, int tokens, DevicePtr hidden, DevicePtr routerWeight,
        DevicePtr logits, DevicePtr counters, DevicePtr topkIds, DevicePtr topkWeights)
    {
        CheckShape(s, decodeOnly: true);
        if (tokens <= 0) return;
        int tokenBlocks = (tokens + 7) / 8;
        var p = new MoeRouterParams
        {
            Hidden = hidden, WGate = routerWeight, Logits = logits, Counters = counters, TopkIds = topkIds, TopkWeights = topkWeights,
            Tokens = tokens, HiddenSize = s.Hidden, Experts = s.Experts, TopK = s.TopK, NormTopkProb = s.NormTopkProb ? 1 : 0,
        };
        Launch(_router, new LaunchConfig(new Dim3((uint)((s.Experts + 3) / 4), (uint)tokenBlocks), 128), stream, p);
    }

    /// <summary>
    /// Decode (T &lt;= <see cref="DecodeMaxTokens"/>): the post-attention RMSNorm, the router and the top-k in one kernel
    /// (<c>moe_router_norm_topk</c>) over E CTAs: <paramref name="hOut"/> = RMSNorm(<paramref name="x"/>) *
    /// <paramref name="normWeight"/> (bitwise <c>add_rmsnorm_bf16</c>'s output), then what <see cref="Router"/> computes from
    /// it. <paramref name="counters"/>: one int, zero on entry and left zero. <paramref name="fetchAhead"/>: the first
    /// <paramref name="fetchAheadBytes"/> of a later kernel's weights (the next layer's qkv), prefetched into L2 with
    /// evict_last while this latency-bound kernel leaves the DRAM idle (docs/timing-model.md, "Weights fetched ahead").
    /// </summary>
    public void RouterNorm(DeviceStream stream, in MoeShape s, int tokens, DevicePtr x, DevicePtr normWeight, float eps, DevicePtr routerWeight,
        DevicePtr hOut, DevicePtr logits, DevicePtr counters, DevicePtr topkIds, DevicePtr topkWeights, DevicePtr fetchAhead = default, long fetchAheadBytes = 0)
    {
        if (fetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(fetchAheadBytes), fetchAheadBytes, "moe_router_norm_topk: bytes to fetch ahead must not be negative");
        CheckShape(s, decodeOnly: true);
        if (tokens <= 0) return;
        if (tokens > DecodeMaxTokens) throw new ArgumentOutOfRangeException(nameof(tokens), $"moe_router_norm_topk: {tokens} tokens; it takes at most {DecodeMaxTokens} (decode)");
        if (normWeight.IsNull || hOut.IsNull) throw new ArgumentException("moe_router_norm_topk: needs the norm weight and the h output");
        var p = new MoeRouterParams
        {
            Hidden = x, WGate = routerWeight, Logits = logits, Counters = counters, TopkIds = topkIds, TopkWeights = topkWeights,
            HOut = hOut, NormWeight = normWeight, Tokens = tokens, HiddenSize = s.Hidden, Experts = s.Experts, TopK = s.TopK,
            NormTopkProb = s.NormTopkProb ? 1 : 0, Eps = eps, FetchAhead = fetchAhead, FetchAheadBytes = fetchAhead.IsNull ? 0 : fetchAheadBytes,
        };
        Launch(_routerNorm, new LaunchConfig(s.Experts, 256, ProgrammaticDependentLaunch: true), stream, p);
    }

    /// <summary>
    /// Zeroes the tickets at the start of a MoE workspace laid out by <paramref name="layout"/> (the layout of the most tokens it
    /// will serve: the tickets of fewer tokens are a prefix). Once after allocating the workspace, outside any graph.
    /// </summary>
    public void ClearTickets(DeviceStream stream, DevicePtr workspace, in MoeWorkspace layout) =>
        _device.MemsetAsync(workspace, 0, layout.TicketBytes, stream);

    /// <summary>Token grouping (moe_align_block_size): counts, padded offsets, expert-sorted slots, tile experts, tile count.</summary>
    public void Align(DeviceStream stream, int experts, int slots, DevicePtr topkIds, DevicePtr counts, DevicePtr offsets,
        DevicePtr sortedSlots, DevicePtr tileExpert, DevicePtr numTiles)
    {
        if (experts < 1 || experts > 1024) throw new ArgumentOutOfRangeException(nameof(experts), $"moe_align: {experts} experts; supported 1..1024");
        if (slots < 0) throw new ArgumentOutOfRangeException(nameof(slots), $"moe_align: slot count {slots} is negative");
        var p = new MoeAlignParams
        {
            TopkIds = topkIds, Counts = counts, Offsets = offsets, SortedSlots = sortedSlots, TileExpert = tileExpert, NumTiles = numTiles,
            Slots = slots, Experts = experts, BlockM = MoeWorkspace.TileRows,
        };
        Launch(_alignCount, new LaunchConfig(1, 1024), stream, p);
        Launch(_alignScatter, new LaunchConfig(experts, 256), stream, p);
    }

    /// <summary>Decode: <c>inter[s] = SwiGLU_e(hidden[s / k])</c> for every slot s = t*k + j, e = topk_ids[s].</summary>
    public void GateUpGemv(DeviceStream stream, in MoeShape s, int tokens, DevicePtr hidden, DevicePtr gateUp, DevicePtr topkIds, DevicePtr inter) =>
        GateUpGemv(stream, s, tokens, hidden, WeightOperand.Bf16(gateUp), topkIds, inter);

    /// <summary>Decode gate+up GEMV with the experts' weights in any loaded format.</summary>
    public void GateUpGemv(DeviceStream stream, in MoeShape s, int tokens, DevicePtr hidden, in WeightOperand gateUp, DevicePtr topkIds, DevicePtr inter)
    {
        var kernels = Experts(gateUp.Format);
        CheckShape(s, decodeOnly: true);
        WeightFormats.CheckQuantized(gateUp, s.Hidden, "MoE gate_up GEMV");
        int slots = tokens * s.TopK;
        if (slots <= 0) return;
        var p = GateUpGemvParams(s, slots, hidden, gateUp, topkIds, inter);
        int smem = gateUp.Format == WeightFormat.Bf16 ? 0 : s.Hidden * sizeof(ushort);   // quantized: the hidden row staged in shared memory
        Launch(kernels.GateUpGemv, new LaunchConfig(new Dim3((uint)GateUpGemvBlocks(s), (uint)slots), 128, smem, ProgrammaticDependentLaunch: true), stream, p);
    }

    /// <summary>The gate+up GEMV's CTAs per slot (8 intermediate columns each): its grid's x, its tiles in moe_experts_gemv.</summary>
    private static int GateUpGemvBlocks(in MoeShape s) => (s.Inter + 7) / 8;

    private static MoeGateUpGemvParams GateUpGemvParams(in MoeShape s, int slots, DevicePtr hidden, in WeightOperand gateUp, DevicePtr topkIds, DevicePtr inter) =>
        new() { Hidden = hidden, GateUp = gateUp.Data, TopkIds = topkIds, Inter = inter, Slots = slots, TopK = s.TopK, HiddenSize = s.Hidden, InterSize = s.Inter, Ws = gateUp.KernelScales };

    private static MoeDownGemvParams DownGemvParams(in MoeShape s, int slots, DevicePtr inter, in WeightOperand down, DevicePtr topkIds, DevicePtr slotOut,
        DevicePtr topkWeights, DevicePtr residual, DevicePtr output, DevicePtr tickets) => new()
    {
        Inter = inter, Down = down.Data, TopkIds = topkIds, Y = slotOut, TopkWeights = topkWeights, Residual = residual, Out = output, Tickets = tickets,
        Slots = slots, HiddenSize = s.Hidden, InterSize = s.Inter, TopK = s.TopK, Ws = down.KernelScales,
    };

    /// <summary>
    /// Decode: <c>y[s] = bf16(down_e inter[s])</c> for every slot, then the combine of <see cref="Combine"/> in the last CTA of
    /// each (token, 16-row block): <c>output[t] = bf16(sum_j w[t,j] y[t*k+j])</c> (+ residual). <paramref name="tickets"/>:
    /// <see cref="MoeWorkspace.DownTicketsPerToken"/> ints per token, zero on entry, left zero.
    /// </summary>
    public void DownGemv(DeviceStream stream, in MoeShape s, int tokens, DevicePtr inter, DevicePtr down, DevicePtr topkIds, DevicePtr slotOut,
        DevicePtr topkWeights, DevicePtr residual, DevicePtr output, DevicePtr tickets) =>
        DownGemv(stream, s, tokens, inter, WeightOperand.Bf16(down), topkIds, slotOut, topkWeights, residual, output, tickets);

    /// <summary>Decode down GEMV + combine with the experts' weights in any loaded format.</summary>
    public void DownGemv(DeviceStream stream, in MoeShape s, int tokens, DevicePtr inter, in WeightOperand down, DevicePtr topkIds, DevicePtr slotOut,
        DevicePtr topkWeights, DevicePtr residual, DevicePtr output, DevicePtr tickets)
    {
        if (tokens > DecodeMaxTokens) throw new ArgumentOutOfRangeException(nameof(tokens), $"MoE down GEMV: {tokens} tokens; the decode path takes at most {DecodeMaxTokens} (its tickets are sized for that)");
        if (tickets.IsNull || output.IsNull || topkWeights.IsNull) throw new ArgumentException("MoE down GEMV: the fused combine needs tickets, routing weights and an output");
        var kernels = Experts(down.Format);
        CheckShape(s, decodeOnly: true);
        WeightFormats.CheckQuantized(down, s.Inter, "MoE down GEMV");
        int slots = tokens * s.TopK;
        if (slots <= 0) return;
        var p = DownGemvParams(s, slots, inter, down, topkIds, slotOut, topkWeights, residual, output, tickets);
        int smem = down.Format == WeightFormat.Bf16 ? 0 : s.Inter * sizeof(ushort);
        int blocks = MoeWorkspace.DownTicketsPerToken(s.Hidden);   // 16 rows per CTA: one ticket per block
        Launch(kernels.DownGemv, new LaunchConfig(new Dim3((uint)blocks, (uint)slots), 128, smem, ProgrammaticDependentLaunch: true), stream, p);
    }

    /// <summary>
    /// Decode: <c>GateUpGemv</c> then <c>DownGemv</c> (its combine included) in ONE launch,
    /// <c>moe_experts_gemv</c>: its CTAs take the gate_up tiles, then the down tiles, in order, and a down tile (a few output
    /// rows of all k slots of one token, combined in the tile: <see cref="ExpertsDownRowsPerTile"/>) waits on a counter until
    /// its token's gate_up tiles are done (docs/kernels.md, "Persistent launches"); the output is the two kernels' bit for
    /// bit. <paramref name="sync"/>: <see cref="MoeWorkspace.ExpertsSyncInts"/> ints, zero on entry, left zero. <paramref name="cooperative"/> asks for a
    /// co-resident launch (tests: the emulator then runs the CTAs in turns). <paramref name="followOn"/>: a GEMV on the
    /// block's output run as the launch's last tiles (<see cref="ExpertsFollowOn"/>; <see cref="CanFollowOn"/> must hold).
    /// <paramref name="fetchAhead"/> (bf16 experts only): a later kernel's weights (the next layer's qkv), of which the first
    /// <paramref name="fetchAheadBytes"/> go into L2 with evict_last before the CTAs' wait, a share per CTA: they stream
    /// while the CTAs read their tickets and the expert ids, before their own weights' addresses are known
    /// (docs/timing-model.md, "The head"). <paramref name="routerLogits"/> ([T, E] fp32, or null): the router wrote only its
    /// logits (<see cref="AttentionBlockRouter.TopkByExperts"/>); every CTA then runs the router's softmax + top-k from them
    /// (the router's code: the same ids and weights), and CTA 0 stores the ids and weights in <paramref name="topkIds"/> /
    /// <paramref name="topkWeights"/> as the router would have.
    /// </summary>
    public void ExpertsGemv(DeviceStream stream, in MoeShape s, int tokens, DevicePtr hidden, in WeightOperand gateUp, in WeightOperand down,
        DevicePtr topkIds, DevicePtr inter, DevicePtr slotOut, DevicePtr topkWeights, DevicePtr residual, DevicePtr output,
        DevicePtr sync, bool cooperative = false, ExpertsFollowOn? followOn = null, DevicePtr fetchAhead = default, long fetchAheadBytes = 0,
        DevicePtr routerLogits = default)
    {
        if (fetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(fetchAheadBytes), fetchAheadBytes, "moe_experts_gemv: bytes to fetch ahead must not be negative");
        if (tokens > DecodeMaxTokens) throw new ArgumentOutOfRangeException(nameof(tokens), $"moe_experts_gemv: {tokens} tokens; the decode path takes at most {DecodeMaxTokens} (its counters are sized for that)");
        if (sync.IsNull || output.IsNull || topkWeights.IsNull || slotOut.IsNull || inter.IsNull)
            throw new ArgumentException("moe_experts_gemv: needs counters (sync), routing weights, inter, y and an output");
        if (gateUp.Format != down.Format)
            throw new ArgumentException($"moe_experts_gemv: gate_up is {gateUp.Format.Name()} but down is {down.Format.Name()}; one launch takes one format");
        if (followOn is not null && gateUp.Format != WeightFormat.Bf16)
            throw new ArgumentException($"moe_experts_gemv: a follow-on GEMV runs only with bf16 experts, these are {gateUp.Format.Name()}", nameof(followOn));
        if (!fetchAhead.IsNull && fetchAheadBytes > 0 && gateUp.Format != WeightFormat.Bf16)
            throw new ArgumentException($"moe_experts_gemv: a fetch-ahead runs only with bf16 experts, these are {gateUp.Format.Name()}", nameof(fetchAheadBytes));
        if (!routerLogits.IsNull && !CanRunTopK(s, gateUp.Format))
            throw new ArgumentException($"moe_experts_gemv: the experts run the router's top-k only with bf16 experts and at most {ExpertsTopKMaxExperts} experts; these are {gateUp.Format.Name()}, {s.Experts} experts", nameof(routerLogits));
        var kernels = Experts(gateUp.Format);
        CheckShape(s, decodeOnly: true);
        WeightFormats.CheckQuantized(gateUp, s.Hidden, "MoE gate_up GEMV");
        WeightFormats.CheckQuantized(down, s.Inter, "MoE down GEMV");
        if ((long)s.Experts * s.Hidden * s.Inter / 8 > uint.MaxValue)
            throw new ArgumentException($"moe_experts_gemv: the stacked down weight [{s.Experts}, {s.Hidden}, {s.Inter}] has more 16-byte chunks than its down tiles' 32-bit offsets reach");
        int slots = tokens * s.TopK;
        if (slots <= 0) return;
        int sms = _device.Info.MultiprocessorCount, nextTiles = 0;
        var next = default(GemvParams);
        if (followOn is { } f)
        {
            if (f.Y.IsNull || f.X.IsNull || f.W.IsNull || f.NormWeight.IsNull)
                throw new ArgumentException("moe_experts_gemv: the follow-on GEMV needs y, x, its weight and its norm weight", nameof(followOn));
            if (f.X != output || f.K != s.Hidden)
                throw new ArgumentException($"moe_experts_gemv: the follow-on GEMV reads the block's output (x must be the output pointer, K {f.K} the hidden size {s.Hidden})", nameof(followOn));
            if (f.Ldx < f.K || f.Ldy < f.N || f.Ldx % 8 != 0)
                throw new ArgumentException($"moe_experts_gemv: follow-on strides ldx {f.Ldx} (a multiple of 8, at least K {f.K}) and ldy {f.Ldy} (at least N {f.N})", nameof(followOn));
            if (!CanFollowOn(sms, tokens, f.N, f.K))
                throw new ArgumentException($"moe_experts_gemv: a follow-on GEMV of [{f.N}, {f.K}] for {tokens} token(s) on {sms} SMs does not qualify (CanFollowOn)", nameof(followOn));
            nextTiles = (f.N + 7) / 8;
            next = new GemvParams
            {
                Y = f.Y, X = f.X, W = f.W, NormWeight = f.NormWeight, Tokens = tokens, N = f.N, K = f.K, Ldx = f.Ldx, Ldy = f.Ldy,
                RowsPerWarp = 1, KSplit = f.K, SplitK = 1, Eps = f.Eps,
            };
        }
        (int grid, int tilesPerCta) = ExpertsGemvGrid(ExpertsGemvTiles(s, tokens) + nextTiles, sms, gateUp.Format);
        var p = new MoeExpertsGemvParams
        {
            GateUp = GateUpGemvParams(s, slots, hidden, gateUp, topkIds, inter),
            Down = DownGemvParams(s, slots, inter, down, topkIds, slotOut, topkWeights, residual, output, DevicePtr.Null),   // no tickets: each down tile combines its own rows
            Sync = sync,
            TilesPerCta = tilesPerCta,
            NextTiles = nextTiles,
            Next = next,
            FetchAhead = fetchAhead,
            FetchAheadBytes = fetchAhead.IsNull ? 0 : fetchAheadBytes,
            RouterLogits = routerLogits,
            RouterExperts = s.Experts,
            RouterNormTopkProb = s.NormTopkProb ? 1 : 0,
        };
        int smem = gateUp.Format != WeightFormat.Bf16 ? Math.Max(s.Hidden, s.TopK * s.Inter) * sizeof(ushort)   // quantized: the staged x row, or a token's k inter rows
            : nextTiles > 0 ? tokens * (followOn!.Value.K + GemvLaunchers.MmaPadElements) * sizeof(ushort) : 0;   // the follow-on's staged x
        var config = new LaunchConfig(new Dim3((uint)grid), 128, smem, ProgrammaticDependentLaunch: !cooperative, Cooperative: cooperative)
        {
            TilesInOrder = true,
        };
        Launch(kernels.ExpertsGemv, config, stream, p);
    }

    /// <summary>The most experts whose top-k <c>moe_experts_gemv</c> runs itself (four per lane of one warp: kernels/moe_decode.cu, experts_route).</summary>
    public const int ExpertsTopKMaxExperts = 128;

    /// <summary>
    /// Whether <c>moe_experts_gemv</c> can run the router's softmax + top-k itself (<see cref="ExpertsGemv"/>'s routerLogits):
    /// bf16 experts (the quantized variants' registers: int4 spilled) and at most <see cref="ExpertsTopKMaxExperts"/> experts.
    /// </summary>
    public static bool CanRunTopK(in MoeShape s, WeightFormat format) => format == WeightFormat.Bf16 && s.Experts <= ExpertsTopKMaxExperts;

    /// <summary>
    /// CTAs per SM of a bf16 moe_experts_gemv launch, with a follow-on GEMV or without (<see cref="ExpertsGemvGridCtasPerSm"/>):
    /// 5 (its launch bound is 8). Its CTAs take 64 registers x 128 threads each, so 5 leave 24 K of an SM's 64 K registers:
    /// room for one CTA of the attention that follows (attn_decode_fused: 128 threads x 168 registers; persistent_attn_block:
    /// 128) to run the part before its wait beside the launch's last CTAs.
    /// </summary>
    public const int FollowOnCtasPerSm = 5;

    /// <summary>Tokens a follow-on GEMV of moe_experts_gemv takes at most: its 4 warps finish one norm row each.</summary>
    public const int FollowOnMaxTokens = 4;

    /// <summary>
    /// Whether moe_experts_gemv can run a follow-on GEMV of <paramref name="n"/> x <paramref name="k"/> bf16 weights with its
    /// RMSNorm prologue for <paramref name="tokens"/> tokens on <paramref name="sms"/> SMs: at most
    /// <see cref="FollowOnMaxTokens"/> tokens, and the standalone launch of that GEMV (<see cref="GemvLaunchers.TensorCorePlan"/>
    /// with the norm prologue) is <c>gemv_bf16_mma</c> with 2 row groups per CTA, so 4 warps per group: the follow-on tile's
    /// split of K (one group on the CTA's 4 warps), hence its sums bit for bit. That plan also bounds the staged x (44 KiB).
    /// </summary>
    public static bool CanFollowOn(int sms, int tokens, int n, int k)
    {
        if (tokens < 1 || tokens > FollowOnMaxTokens || n < 1 || k < 1) return false;
        var plan = GemvLaunchers.TensorCorePlan(sms, tokens, n, k, WeightFormat.Bf16, normPrologue: true);
        return plan.TensorCores && plan.RowsPerWarp == 2;
    }

    /// <summary>moe_experts_gemv's tiles: ceil(I / 8) gate_up tiles per slot and ceil(H / <see cref="ExpertsDownRowsPerTile"/>)
    /// down tiles per token.</summary>
    public static int ExpertsGemvTiles(in MoeShape s, int tokens)
    {
        int rows = ExpertsDownRowsPerTile(s.TopK);
        return tokens * (s.TopK * GateUpGemvBlocks(s) + (s.Hidden + rows - 1) / rows);
    }

    /// <summary>
    /// The output rows of a moe_experts_gemv down tile: max(1, 16 / k) rows of each of the token's k slots (experts_down_rows
    /// in kernels/moe_decode.cu), so a tile runs k x rows &lt;= 16 row dot products, as a moe_down_gemv CTA does, and combines
    /// its rows itself; Qwen3-30B-A3B (k 8): 2 rows of 8 experts.
    /// </summary>
    public static int ExpertsDownRowsPerTile(int topK) =>
        topK is >= 1 and <= MaxTopK ? Math.Max(1, 16 / topK) : throw new ArgumentOutOfRangeException(nameof(topK), $"moe_experts_gemv: top-k {topK}; supported 1..{MaxTopK}");

    /// <summary>The CTAs per SM moe_experts_gemv's grid is sized for: its <c>__launch_bounds__</c> minimum
    /// (<c>EXPERTS_MIN_CTAS_PER_SM</c>, <c>EXPERTS_QUANT_MIN_CTAS_PER_SM</c> in kernels/moe_decode.cu), so that many fit.</summary>
    public static int ExpertsGemvCtasPerSm(WeightFormat format) => format == WeightFormat.Bf16 ? 8 : 5;

    /// <summary>
    /// The CTAs per SM moe_experts_gemv's grid is sized for (<see cref="ExpertsGemvGrid"/>): the quantized variants their
    /// launch bound, bf16 <see cref="FollowOnCtasPerSm"/> (5), below its launch bound of 8. At 64 registers x 128 threads its
    /// CTAs then leave an SM 24 K of its 64 K registers: room for one CTA of the attention block that follows
    /// (persistent_attn_block: 128 threads x 128 registers), which becomes resident while the experts still stream and
    /// fetches its tile's weights before its wait. At 8 per SM that block's CTAs waited for the experts' CTAs to retire; the
    /// timing model predicts the change at -7.4 us per step on H200 (the qkv stage's fetch-ahead in the experts' shadow)
    /// and no change on H100, whose DRAM is already busy there (docs/timing-model.md, section 7, "Stop 46").
    /// </summary>
    public static int ExpertsGemvGridCtasPerSm(WeightFormat format) => format == WeightFormat.Bf16 ? FollowOnCtasPerSm : ExpertsGemvCtasPerSm(format);

    /// <summary>
    /// moe_experts_gemv's grid and tickets per CTA for <paramref name="tiles"/> tiles on <paramref name="sms"/> SMs (its
    /// follow-on GEMV's tiles included: a launch with one is bf16, sized as every bf16 launch): one wave (at most
    /// <see cref="ExpertsGemvGridCtasPerSm"/> CTAs per SM), the fewest tickets per CTA that covers the tiles, and the grid
    /// shrunk to what that many tickets per CTA needs (so CTAs have equal shares; tickets past the tiles are no work).
    /// </summary>
    public static (int Grid, int TilesPerCta) ExpertsGemvGrid(int tiles, int sms, WeightFormat format)
    {
        if (tiles <= 0) throw new ArgumentOutOfRangeException(nameof(tiles), $"moe_experts_gemv: {tiles} tiles");
        if (sms <= 0) throw new ArgumentOutOfRangeException(nameof(sms), $"moe_experts_gemv: {sms} SMs");
        long resident = (long)sms * ExpertsGemvGridCtasPerSm(format);
        int perCta = (int)((tiles + resident - 1) / resident);
        return ((tiles + perCta - 1) / perCta, perCta);
    }

    /// <summary>Prefill: grouped gate+up GEMM with the SwiGLU epilogue over the sorted, padded rows (grid sized for the worst case).</summary>
    public void GateUpGemm(DeviceStream stream, in MoeShape s, int tokens, DevicePtr hidden, DevicePtr gateUp, DevicePtr sortedSlots,
        DevicePtr tileExpert, DevicePtr numTiles, DevicePtr inter) =>
        GateUpGemm(stream, s, tokens, hidden, WeightOperand.Bf16(gateUp), sortedSlots, tileExpert, numTiles, inter);

    /// <summary>Prefill grouped gate+up GEMM with the experts' weights in any loaded format.</summary>
    public void GateUpGemm(DeviceStream stream, in MoeShape s, int tokens, DevicePtr hidden, in WeightOperand gateUp, DevicePtr sortedSlots,
        DevicePtr tileExpert, DevicePtr numTiles, DevicePtr inter)
    {
        var kernels = Experts(gateUp.Format);
        CheckShape(s, decodeOnly: false);
        WeightFormats.CheckQuantized(gateUp, s.Hidden, "MoE gate_up GEMM");
        int maxTiles = MoeWorkspace.MaxTilesFor(tokens, s.Experts, s.TopK);
        if (maxTiles <= 0) return;
        var p = new MoeGateUpGemmParams
        {
            Hidden = hidden, GateUp = gateUp.Data, SortedSlots = sortedSlots, TileExpert = tileExpert, NumTiles = numTiles, Inter = inter,
            TopK = s.TopK, HiddenSize = s.Hidden, InterSize = s.Inter, Ws = gateUp.KernelScales,
        };
        bool exact = s.Inter % GateUpBlockN == 0;
        Launch(exact ? kernels.GateUpGemm : kernels.GateUpGemmGuarded ?? throw NotLoaded(s), new LaunchConfig(new Dim3((uint)maxTiles, (uint)((s.Inter + GateUpBlockN - 1) / GateUpBlockN)), 128), stream, p);
    }

    /// <summary>Prefill: grouped down GEMM, writing <c>y[slot]</c> for the real rows.</summary>
    public void DownGemm(DeviceStream stream, in MoeShape s, int tokens, DevicePtr inter, DevicePtr down, DevicePtr sortedSlots,
        DevicePtr tileExpert, DevicePtr numTiles, DevicePtr slotOut) =>
        DownGemm(stream, s, tokens, inter, WeightOperand.Bf16(down), sortedSlots, tileExpert, numTiles, slotOut);

    /// <summary>Prefill grouped down GEMM with the experts' weights in any loaded format.</summary>
    public void DownGemm(DeviceStream stream, in MoeShape s, int tokens, DevicePtr inter, in WeightOperand down, DevicePtr sortedSlots,
        DevicePtr tileExpert, DevicePtr numTiles, DevicePtr slotOut)
    {
        var kernels = Experts(down.Format);
        CheckShape(s, decodeOnly: false);
        WeightFormats.CheckQuantized(down, s.Inter, "MoE down GEMM");
        int maxTiles = MoeWorkspace.MaxTilesFor(tokens, s.Experts, s.TopK);
        if (maxTiles <= 0) return;
        var p = new MoeDownGemmParams
        {
            Inter = inter, Down = down.Data, SortedSlots = sortedSlots, TileExpert = tileExpert, NumTiles = numTiles, Y = slotOut,
            HiddenSize = s.Hidden, InterSize = s.Inter, Ws = down.KernelScales,
        };
        bool exact = s.Hidden % DownBlockN == 0;
        Launch(exact ? kernels.DownGemm : kernels.DownGemmGuarded ?? throw NotLoaded(s), new LaunchConfig(new Dim3((uint)maxTiles, (uint)((s.Hidden + DownBlockN - 1) / DownBlockN)), 128), stream, p);
    }

    /// <summary>Deterministic combine: <c>out[t] = bf16(sum_j w[t,j] y[t*k+j])</c> in rank order (+ residual, bf16 add).</summary>
    public void Combine(DeviceStream stream, in MoeShape s, int tokens, DevicePtr slotOut, DevicePtr topkWeights, DevicePtr residual, DevicePtr output)
    {
        CheckShape(s, decodeOnly: true);
        if (tokens <= 0) return;
        var p = new MoeCombineParams { Y = slotOut, TopkWeights = topkWeights, Residual = residual, Out = output, Tokens = tokens, TopK = s.TopK, HiddenSize = s.Hidden };
        int chunks = s.Hidden / 8;
        Launch(_combine, new LaunchConfig(new Dim3((uint)((chunks + 127) / 128), (uint)tokens), 128), stream, p);
    }

    /// <summary>
    /// Supported shapes: E 1..256, k 1..min(16, E); H and I multiples of 8 (decode), and for the grouped GEMMs multiples of
    /// <see cref="GemmKStep"/> (their K steps). I % 64 == 0 and H % 128 == 0 (the real shapes) run the exact-tile kernels;
    /// other shapes the guarded variant (MOE_GEMM_GUARD_N) that skips the part of the last N block past the end.
    /// </summary>
    public static void CheckShape(in MoeShape s, bool decodeOnly)
    {
        if (s.Experts < 1 || s.Experts > MaxExperts) throw new ArgumentException($"MoE: {s.Experts} experts; supported 1..{MaxExperts}");
        if (s.TopK < 1 || s.TopK > Math.Min(MaxTopK, s.Experts)) throw new ArgumentException($"MoE: top-k {s.TopK}; supported 1..{Math.Min(MaxTopK, s.Experts)} for {s.Experts} experts");
        if (s.Hidden <= 0 || s.Hidden % 8 != 0) throw new ArgumentException($"MoE: hidden size {s.Hidden} must be a positive multiple of 8");
        if (s.Inter <= 0 || s.Inter % 8 != 0) throw new ArgumentException($"MoE: expert intermediate size {s.Inter} must be a positive multiple of 8");
        if (!decodeOnly && (s.Hidden % GemmKStep != 0 || s.Inter % GemmKStep != 0))
            throw new ArgumentException($"MoE grouped GEMM: hidden size {s.Hidden} and intermediate size {s.Inter} must be multiples of {GemmKStep}");
    }

    /// <summary>True when a grouped GEMM of this shape runs the guarded variant (I % 64 != 0 or H % 128 != 0).</summary>
    public static bool NeedsGuardedGemm(MoeShape s) => s.Inter % GateUpBlockN != 0 || s.Hidden % DownBlockN != 0;

    private static InvalidOperationException NotLoaded(in MoeShape s) =>
        new($"MoE grouped GEMM: H {s.Hidden} / I {s.Inter} needs the guarded moe_gemm.cu variant, but these launchers were built for other shapes");

    private ExpertKernels Experts(WeightFormat f) =>
        _experts.TryGetValue(f, out var k) ? k
        : throw new InvalidOperationException($"MoE experts: {f.Name()} kernels were not loaded by these launchers (loaded: {string.Join(", ", _experts.Keys.Select(WeightFormats.Name))})");

    private void Launch<T>(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, T p) where T : unmanaged
    {
        var args = new KernelArgs(stackalloc byte[512], stackalloc nint[1]);   // moe_experts_gemv's params: 328 bytes (4 KiB allowed)
        args.Add(p);
        _device.Launch(kernel, config, stream, args);
    }
}

/// <summary>
/// The GEMV that <c>moe_experts_gemv</c> runs after a decode MoE block's experts, in the same launch (kernels/moe_decode.cu,
/// docs/kernels.md "Persistent launches"): <c>Y[T, N]</c> (row stride <see cref="Ldy"/>) = <c>W[N, K]</c> applied to
/// <c>RMSNorm(X) * NormWeight</c>, where <c>X[T, K]</c> (row stride <see cref="Ldx"/>) is the block's output: the next
/// layer's qkv projection with its input norm.
/// </summary>
public readonly record struct ExpertsFollowOn(DevicePtr Y, int Ldy, DevicePtr X, int Ldx, DevicePtr W, DevicePtr NormWeight, float Eps, int N, int K);
