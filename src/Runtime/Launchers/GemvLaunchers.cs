using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>GemvParams</c> in kernels/gemv.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct GemvParams
{
    public DevicePtr Y;          // [T, Ldy] bf16
    public DevicePtr X;          // [T, Ldx] bf16
    public DevicePtr W;          // [N, K] bf16
    public DevicePtr Residual;   // [T, Ldy] bf16 or null
    public DevicePtr Partial;    // [SplitK, T, N] fp32 when SplitK > 1
    public DevicePtr NormWeight; // [K] bf16 RMSNorm weight of the prologue, or null
    public DevicePtr Tickets;    // [GridX] int split-K tickets, zero
    public DevicePtr FetchAhead; // a later kernel's weights, prefetched into L2 with evict_last after the wait, or null
    public long FetchAheadBytes;
    public int Tokens;
    public int N;
    public int K;
    public int Ldx;
    public int Ldy;
    public int RowsPerWarp;
    public int KSplit;
    public int SplitK;
    public float Eps;            // RMSNorm epsilon (NormWeight not null)
    public WeightScales Ws;      // quantized variants only
    public DevicePtr ArgmaxIds;  // [T] int: each token's argmax over its N outputs (gemv_bf16_mma_argmax only)
    public DevicePtr ArgmaxKeys; // [T] u64: the best key so far, zero on entry, left zero
    public DevicePtr ArgmaxTicket;  // int, zero on entry, left zero
}

/// <summary>Mirror of <c>GemvSampleParams</c> in kernels/gemv.cu: <c>gemv_bf16_mma_sample</c>'s GEMV and its rows' sampling.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct GemvSampleParams
{
    public GemvParams G;         // ArgmaxTicket is the launch's ticket
    public SampleRowsParams S;   // Parts holds [T, GridX] per-CTA partials here
}

/// <summary>
/// The launch shape the GEMV launcher picked (exposed for tests and benchmarks). <see cref="TensorCores"/>: the launch is
/// <c>gemv_bf16_mma</c> (<see cref="RowsPerWarp"/> is then its row groups of 8 rows per CTA, the same CTA rows).
/// </summary>
public readonly record struct GemvPlan(int RowsPerWarp, int SplitK, int KSplit, int GridX, bool TensorCores = false)
{
    public int Ctas => GridX * SplitK;
    /// <summary>
    /// Workspace the plan needs, in bytes (0 when SplitK is 1): the split-K tickets (<see cref="GemvLaunchers.TicketBytes"/>,
    /// first, the same place for every plan) and the fp32 partials.
    /// </summary>
    public long PartialBytes(int tokens, int n) => SplitK > 1 ? GemvLaunchers.TicketBytes + (long)SplitK * tokens * n * sizeof(float) : 0;
}

/// <summary>
/// Launchers for kernels/gemv.cu: y[T, N] = x[T, K] W[N, K]^T for decode (T = 1..8), optionally + residual.
/// The launcher picks rows per warp and split-K so the grid covers the multiprocessors several times and the staged
/// x slice (fp32) fits in 44 KiB of shared memory. The kernel variant comes from <see cref="Variants"/>, keyed by the weight format.
/// Nothing here allocates or synchronises.
/// </summary>
public sealed class GemvLaunchers
{
    public const string File = "gemv.cu";
    public const int MaxTokens = 8;
    private const int Warps = 8, MaxRowsPerWarp = 8, MaxSliceBytes = 44 * 1024;   // x as fp32; with the kernel's static arrays under the 48 KiB a launch gets without opting in
    /// <summary>
    /// The split-K tickets at the start of a GEMV workspace: one int per row block (grid x) of a split GEMV, zero between
    /// launches (the last CTA of a row block resets its ticket), so they are cleared once (<see cref="ClearTickets"/>).
    /// </summary>
    public const int TicketBytes = 64 * 1024;
    /// <summary>The supported weight formats and the kernel name prefix of each (the kernel of T tokens is prefix + T).</summary>
    public static readonly IReadOnlyDictionary<WeightFormat, string> Variants = new Dictionary<WeightFormat, string>
    {
        [WeightFormat.Bf16] = "gemv_bf16_t",
        [WeightFormat.Fp8Block] = "gemv_fp8_t",
        [WeightFormat.Int8Channel] = "gemv_int8_t",
        [WeightFormat.Int4Gptq] = "gemv_int4_t",
    };

    /// <summary>The tensor-core bf16 kernel (<see cref="TensorCorePlan"/>): 1..8 tokens in one kernel.</summary>
    public const string TensorCoreKernel = "gemv_bf16_mma";
    /// <summary>The same with the fused argmax (<c>Gemv</c>'s argmaxIds: the greedy decode step's lm_head).</summary>
    public const string TensorCoreArgmaxKernel = "gemv_bf16_mma_argmax";
    /// <summary>The same with <c>sample_reduce_bf16</c>'s work in its launch (<see cref="GemvSample"/>: the sampled decode step's lm_head).</summary>
    public const string TensorCoreSampleKernel = "gemv_bf16_mma_sample";
    /// <summary>gemv_mma.cuh's GEMV_MMA_PAD: the staged x rows are K + 32 bf16.</summary>
    public const int MmaPadElements = 32;

    private readonly Dictionary<WeightFormat, DeviceKernel[]> _kernels = [];
    private readonly DeviceKernel? _mma, _mmaArgmax, _mmaSample;
    private readonly IDevice _device;

    /// <summary>
    /// Loads the kernels of <paramref name="formats"/> (default: bf16 only). <paramref name="tensorCores"/> (default on):
    /// bf16 products whose shape allows it run <c>gemv_bf16_mma</c> (<see cref="TensorCorePlan"/>); off, every product
    /// runs <c>gemv_bf16_t*</c> (the oracle of <c>persistent_gemv</c>, which shares that kernel's sums).
    /// </summary>
    public GemvLaunchers(KernelLoader loader, IEnumerable<WeightFormat>? formats = null, bool tensorCores = true)
    {
        _device = loader.Device;
        foreach (var f in (formats ?? [WeightFormat.Bf16]).Distinct())
        {
            string prefix = WeightFormats.Select(Variants, f, "gemv");
            var byTokens = new DeviceKernel[MaxTokens + 1];
            for (int t = 1; t <= MaxTokens; t++) byTokens[t] = loader.Get(File, prefix + t);
            _kernels[f] = byTokens;
        }
        if (tensorCores && _kernels.ContainsKey(WeightFormat.Bf16))
        {
            _mma = loader.Get(File, TensorCoreKernel);
            _mmaArgmax = loader.Get(File, TensorCoreArgmaxKernel);
            _mmaSample = loader.Get(File, TensorCoreSampleKernel);
        }
    }

    /// <summary>
    /// The plan for a device of <paramref name="sms"/> SMs when the tensor-core kernel is loaded: <c>gemv_bf16_mma</c> where
    /// the shape allows it, else <see cref="Plan(int, int, int, int, int, bool)"/>'s. It takes the rows per CTA of the
    /// CUDA-core plan with the norm prologue (rows per warp = its row groups of 8 rows: 1, 2, 4 or 8), with or without the
    /// prologue: the row groups decide how a row's K is split over warps, so a launch with the prologue adds its products
    /// in the order of the unfused norm + GEMV pair (bitwise, as the tests check). It never splits K: bf16 weights, a grid
    /// of at least one CTA per SM (fewer rows keep the CUDA-core kernel, which splits K to fill the SMs), each group's
    /// 8 / groups warps taking equal K slices of whole 32-wide steps, and the staged x ([T][K + 32] bf16) within the same
    /// 44 KiB as the fp32 slice (so 8 tokens at K 2048 run here, where the fp32 slice had to split K; docs/kernels.md,
    /// "Decode GEMV on tensor cores").
    /// </summary>
    public static GemvPlan TensorCorePlan(int sms, int tokens, int n, int k, WeightFormat format, bool normPrologue = false)
    {
        var core = Plan(sms, tokens, n, k, SliceAlign(format), normPrologue);
        var rows = normPrologue ? core : Plan(sms, tokens, n, k, SliceAlign(format), normPrologue: true);
        int groups = rows.RowsPerWarp;
        bool fits = format == WeightFormat.Bf16 && rows.GridX >= sms && groups is 1 or 2 or 4 or 8
            && k % (32 * (Warps / groups)) == 0 && (long)tokens * (k + MmaPadElements) * 2 <= MaxSliceBytes;
        return fits ? new GemvPlan(groups, 1, k, rows.GridX, TensorCores: true) : core;
    }

    /// <summary>CTAs per SM a <c>gemv_bf16_mma</c> launch is sized for when its row tiles are more (its __launch_bounds__ minimum: at most 64 registers).</summary>
    public const int MmaCtasPerSm = 4;
    /// <summary>The same for <c>gemv_bf16_mma_sample</c> (at most 64 registers too: 3 until its last CTA's top-p search
    /// reused the top-k step's registers, before which it spilled at 64 at sm_90).</summary>
    public const int MmaSampleCtasPerSm = 4;
    /// <summary><c>gemv_bf16_mma</c>'s static shared memory and the 1 KiB the hardware reserves per block, for <see cref="MmaGridX"/> (its red_s, nred_s and inv_s, and the fused argmax's keys: 3.2 KiB).</summary>
    private const int MmaStaticAndReservedBytes = 5 * 1024;

    /// <summary>
    /// The grid of a <c>gemv_bf16_mma</c> launch of <paramref name="tiles"/> row tiles (<see cref="GemvPlan.GridX"/>): one CTA
    /// per tile while they fit on the GPU at once, else one wave of the CTAs that do (<see cref="MmaCtasPerSm"/> per SM, fewer
    /// when the staged x leaves less shared memory), each running its tiles one after the other (gemv.cu; the lm_head's 2374
    /// tiles on 528 CTAs of an H100). The grid does not change the rows: each tile's sums are a CTA's own.
    /// </summary>
    public static int MmaGridX(int tiles, int sms, int sharedPerSm, int dynamicSharedBytes, int ctasPerSm = MmaCtasPerSm)
    {
        if (tiles <= 0) throw new ArgumentOutOfRangeException(nameof(tiles), tiles, "gemv_bf16_mma: the row tiles must be positive");
        if (sms <= 0) throw new ArgumentOutOfRangeException(nameof(sms), sms, "gemv_bf16_mma: the SMs must be positive");
        int bySmem = sharedPerSm / (dynamicSharedBytes + MmaStaticAndReservedBytes);
        long resident = (long)sms * Math.Clamp(bySmem, 1, ctasPerSm);
        return (int)Math.Min(tiles, resident);
    }

    /// <summary>
    /// Workspace of the fused argmax (<c>Gemv</c>'s argmaxIds) for up to <paramref name="tokens"/> tokens: its ticket (8
    /// bytes) and a key per token (8 bytes each), zero before the first launch (each launch leaves them zero).
    /// </summary>
    public static long ArgmaxScratchBytes(int tokens) => 8 + 8L * tokens;

    /// <summary>Rows per warp so that the grid is at least ~4 waves (2 with the norm prologue), then split-K when rows alone cannot fill the SMs
    /// (e.g. the router, N = 128) or when the x slice would not fit in shared memory.</summary>
    public GemvPlan Plan(int tokens, int n, int k) => Plan(tokens, n, k, WeightFormat.Bf16);

    /// <summary>The plan for a weight of <paramref name="format"/>: quantized variants load 16 weights per lane, so their K-slices are multiples of 16.</summary>
    /// <param name="normPrologue">The launch computes RMSNorm(x) first (every CTA sums the squares of the whole row): fewer,
    /// larger CTAs pay for it less often.</param>
    /// <remarks>With the tensor-core kernel loaded this is <see cref="TensorCorePlan"/>'s plan: the one <c>Gemv</c> launches.</remarks>
    public GemvPlan Plan(int tokens, int n, int k, WeightFormat format, bool normPrologue = false) => _mma is not null
        ? TensorCorePlan(_device.Info.MultiprocessorCount, tokens, n, k, format, normPrologue)
        : Plan(_device.Info.MultiprocessorCount, tokens, n, k, SliceAlign(format), normPrologue);

    /// <summary>A K-slice's alignment in elements: a lane's 16-byte load holds 8 bf16, 16 fp8 / int8 or 32 int4 weights.</summary>
    private static int SliceAlign(WeightFormat format) => format switch { WeightFormat.Bf16 => 8, WeightFormat.Int4Gptq => 32, _ => 16 };

    /// <summary>The same rule for a device of <paramref name="sms"/> multiprocessors, for planning workspace before any launch
    /// (the device model's workspace plan sizes its split-K partials with it). The grid covers the SMs about 4 times, 2 with
    /// the norm prologue (its per-CTA row statistics and staging would otherwise cost more issue slots than the weight
    /// stream; docs/kernels.md, "Fusions"); a grid of 2 waves or more never splits K for occupancy, so the partial workspace
    /// does not depend on <paramref name="normPrologue"/>.</summary>
    public static GemvPlan Plan(int sms, int tokens, int n, int k, int sliceAlign = 8, bool normPrologue = false)
    {
        int rpw = Math.Clamp(n / (Warps * sms * (normPrologue ? 2 : 4)), 1, MaxRowsPerWarp);
        int gridX = (n + Warps * rpw - 1) / (Warps * rpw);
        int maxSlice = MaxSliceBytes / (4 * tokens) / 256 * 256;        // elements, whole warp passes
        int split = Math.Max((k + maxSlice - 1) / maxSlice, 1);
        if (gridX * split < sms) split = Math.Max(split, Math.Min((sms + gridX - 1) / gridX, Math.Max(1, k / 256)));
        int kSplit = ((k + split - 1) / split + sliceAlign - 1) / sliceAlign * sliceAlign;
        split = (k + kSplit - 1) / kSplit;
        return new GemvPlan(rpw, split, kSplit, gridX);
    }

    /// <summary>
    /// y = x W^T (+ residual), bf16, fp32 accumulation. <paramref name="partial"/> is workspace of
    /// <see cref="GemvPlan.PartialBytes"/> bytes for the plan <c>Plan</c> returns (may be null when that is 0), its tickets
    /// zeroed once (<see cref="ClearTickets"/>).
    /// </summary>
    public GemvPlan Gemv(DeviceStream stream, DevicePtr y, int ldy, DevicePtr x, int ldx, DevicePtr w, DevicePtr residual,
        int tokens, int n, int k, DevicePtr partial, long partialBytes) =>
        Gemv(stream, y, ldy, x, ldx, WeightOperand.Bf16(w), residual, tokens, n, k, partial, partialBytes);

    /// <summary>
    /// y = x W^T (+ residual) with W in any loaded format (the variant from <see cref="Variants"/>). <paramref name="partial"/>
    /// is fp32 workspace of <see cref="GemvPlan.PartialBytes"/> bytes for the plan <c>Plan</c> returns. With a
    /// <paramref name="normWeight"/> ([K] bf16) the product takes RMSNorm(x) * normWeight instead of x (the prologue of
    /// gemv.cu, bitwise <c>add_rmsnorm_bf16</c>'s output; docs/kernels.md, "Fusions"). With a <paramref name="fetchAhead"/>
    /// its CTAs also prefetch <paramref name="fetchAheadBytes"/> of it (a later kernel's weights) into L2 with evict_last
    /// after their wait (docs/timing-model.md, "Weights fetched ahead"); the results do not depend on it.
    /// </summary>
    /// <remarks>With <paramref name="argmaxIds"/> ([T] int) the launch also writes each token's argmax over its N outputs as
    /// stored (bf16): <c>sample_reduce_bf16</c>'s greedy choice, the largest value, ties to the lowest index, NaN and -inf
    /// never chosen, 0 when nothing is (gemv.cu, the fused argmax). Only on <c>gemv_bf16_mma</c> (<see cref="CanFuseArgmax"/>);
    /// <paramref name="argmaxScratch"/> holds <see cref="ArgmaxScratchBytes"/>, its ticket zeroed once.</remarks>
    public GemvPlan Gemv(DeviceStream stream, DevicePtr y, int ldy, DevicePtr x, int ldx, in WeightOperand w, DevicePtr residual,
        int tokens, int n, int k, DevicePtr partial, long partialBytes, DevicePtr normWeight = default, float normEps = 0f,
        DevicePtr fetchAhead = default, long fetchAheadBytes = 0, DevicePtr argmaxIds = default, DevicePtr argmaxScratch = default, long argmaxScratchBytes = 0)
    {
        var (plan, p, gridX, smem, kernels) = Prepare(y, ldy, x, ldx, w, residual, tokens, n, k, partial, partialBytes, normWeight, normEps, fetchAhead, fetchAheadBytes);
        if (!argmaxIds.IsNull)
        {
            if (!CanFuseArgmax(plan)) throw new ArgumentException($"gemv: N {n} K {k} T {tokens} runs {(plan.TensorCores ? "split" : "on CUDA cores")}; the fused argmax runs only on gemv_bf16_mma (CanFuseArgmax)", nameof(argmaxIds));
            CheckArgmaxScratch(tokens, argmaxScratch, argmaxScratchBytes, "fused argmax");
            p.ArgmaxIds = argmaxIds;
            p.ArgmaxTicket = argmaxScratch;
            p.ArgmaxKeys = argmaxScratch + 8;
        }
        var args = new KernelArgs(stackalloc byte[224], stackalloc nint[1]);
        args.Add(p);
        var kernel = !argmaxIds.IsNull ? _mmaArgmax! : plan.TensorCores ? _mma! : kernels[tokens];
        _device.Launch(kernel, new LaunchConfig(new Dim3((uint)gridX, (uint)plan.SplitK), 256, smem, ProgrammaticDependentLaunch: true), stream, args);
        return plan;   // split-K: the last CTA of each row block combined the partials (no second launch)
    }

    /// <summary>
    /// The sampled decode step's lm_head with <c>sample_reduce_bf16</c>'s work in the same launch (<c>gemv_bf16_mma_sample</c>,
    /// gemv.cu): logits = RMSNorm(x) * normWeight W^T as <c>Gemv</c> computes them (the same bits), and for each of the
    /// <paramref name="tokens"/> rows the state <c>sample_reduce_bf16</c> leaves (the argmax, the histogram, the top-k / top-p /
    /// min-p threshold; a greedy row's token), so that <see cref="SamplingLaunchers.Draw"/> comes next. <paramref name="sample"/>
    /// comes from <see cref="SamplingLaunchers.RowsParams"/> for the logits <paramref name="y"/> ([tokens, ldy], vocabulary
    /// <paramref name="n"/>); its scratch holds a partial per CTA and row. <paramref name="ticketScratch"/> holds
    /// <see cref="ArgmaxScratchBytes"/> (the launch's ticket: zero before the first launch, left zero). Only where
    /// <see cref="CanFuseSample"/> holds.
    /// </summary>
    public GemvPlan GemvSample(DeviceStream stream, DevicePtr y, int ldy, DevicePtr x, int ldx, in WeightOperand w, int tokens, int n, int k,
        DevicePtr normWeight, float normEps, in SampleRowsParams sample, DevicePtr ticketScratch, long ticketScratchBytes)
    {
        var (plan, p, gridX, smem, _) = Prepare(y, ldy, x, ldx, w, DevicePtr.Null, tokens, n, k, DevicePtr.Null, 0, normWeight, normEps, DevicePtr.Null, 0,
            MmaSampleCtasPerSm);
        if (!CanFuseSample(plan, gridX))
            throw new ArgumentException($"gemv: N {n} K {k} T {tokens} runs {(plan.TensorCores ? $"on {gridX} CTAs" : "on CUDA cores")}; the fused reduce runs only on gemv_bf16_mma with at most {SamplingScratch.FusedPartsPerRow} CTAs (CanFuseSample)");
        CheckArgmaxScratch(tokens, ticketScratch, ticketScratchBytes, "fused reduce");
        if (sample.Logits != y || sample.Ld != ldy || sample.Rows != tokens || sample.Vocab != n || sample.ArgmaxOnly != 0)
            throw new ArgumentException($"gemv: the sampling rows (logits {sample.Logits}, ld {sample.Ld}, rows {sample.Rows}, vocab {sample.Vocab}) are not this product's (y {y}, ldy {ldy}, {tokens} x {n})", nameof(sample));
        p.ArgmaxTicket = ticketScratch;
        var args = new KernelArgs(stackalloc byte[384], stackalloc nint[1]);
        args.Add(new GemvSampleParams { G = p, S = sample });
        _device.Launch(_mmaSample!, new LaunchConfig(new Dim3((uint)gridX), 256, smem, ProgrammaticDependentLaunch: true), stream, args);
        return plan;
    }

    /// <summary>
    /// Checks the arguments, plans the launch and fills the GEMV's parameters (no argmax or sampling fields); the grid of a
    /// <c>gemv_bf16_mma</c> launch is one wave at <paramref name="ctasPerSm"/> (<see cref="MmaGridX"/>). Also returns the
    /// CUDA-core kernels of the weight's format, by tokens.
    /// </summary>
    private (GemvPlan Plan, GemvParams Params, int GridX, int Smem, DeviceKernel[] Kernels) Prepare(DevicePtr y, int ldy, DevicePtr x, int ldx, in WeightOperand w,
        DevicePtr residual, int tokens, int n, int k, DevicePtr partial, long partialBytes, DevicePtr normWeight, float normEps, DevicePtr fetchAhead,
        long fetchAheadBytes, int ctasPerSm = MmaCtasPerSm)
    {
        if (fetchAheadBytes < 0) throw new ArgumentOutOfRangeException(nameof(fetchAheadBytes), fetchAheadBytes, "gemv: bytes to fetch ahead must not be negative");
        var kernels = Kernels(w.Format);
        if (tokens < 1 || tokens > MaxTokens) throw new ArgumentOutOfRangeException(nameof(tokens), $"gemv: {tokens} tokens; the decode GEMV takes 1..{MaxTokens} (use the GEMM for more)");
        if (n <= 0 || k <= 0 || k % 8 != 0) throw new ArgumentException($"gemv: N {n} must be positive and K {k} a positive multiple of 8");
        if (ldx < k || ldx % 8 != 0) throw new ArgumentException($"gemv: ldx {ldx} must be >= K {k} and a multiple of 8", nameof(ldx));
        if (ldy < n) throw new ArgumentException($"gemv: ldy {ldy} must be >= N {n}", nameof(ldy));
        WeightFormats.CheckQuantized(w, k, "gemv");
        GemvPlan plan = Plan(tokens, n, k, w.Format, !normWeight.IsNull);
        long need = plan.PartialBytes(tokens, n);
        if (need > 0 && (partial.IsNull || partialBytes < need))
            throw new ArgumentException($"gemv: N {n} K {k} T {tokens} splits K {plan.SplitK} ways and needs {need} bytes of fp32 workspace, got {partialBytes}", nameof(partial));
        if (need > 0 && plan.GridX > TicketBytes / sizeof(int))
            throw new ArgumentException($"gemv: N {n} K {k} T {tokens} splits K over {plan.GridX} row blocks; the split-K tickets cover {TicketBytes / sizeof(int)}");
        int smem = plan.TensorCores ? tokens * (k + MmaPadElements) * 2   // x as bf16 rows (gemv.cu, gemv_bf16_mma)
            : tokens * plan.KSplit * 4;                                        // x slice as fp32 (gemv.cu, stage_chunk)
        int gridX = plan.TensorCores ? MmaGridX(plan.GridX, _device.Info.MultiprocessorCount, _device.Info.SharedMemoryPerMultiprocessor, smem, ctasPerSm) : plan.GridX;
        var p = new GemvParams
        {
            Y = y, X = x, W = w.Data, Residual = residual, Tokens = tokens, N = n, K = k, Ldx = ldx, Ldy = ldy,
            RowsPerWarp = plan.RowsPerWarp, KSplit = plan.KSplit, SplitK = plan.SplitK, Ws = w.KernelScales,
            NormWeight = normWeight, Eps = normEps, Tickets = partial, Partial = need > 0 ? partial + TicketBytes : DevicePtr.Null,
            FetchAhead = fetchAhead, FetchAheadBytes = fetchAhead.IsNull ? 0 : fetchAheadBytes,
        };
        return (plan, p, gridX, smem, kernels);
    }

    private static void CheckArgmaxScratch(int tokens, DevicePtr scratch, long scratchBytes, string what)
    {
        long need = ArgmaxScratchBytes(tokens);
        if (scratch.IsNull || scratchBytes < need)
            throw new ArgumentException($"gemv: the {what} of {tokens} token(s) needs {need} bytes of scratch, got {scratchBytes}", nameof(scratch));
    }

    /// <summary>Whether a launch of <paramref name="plan"/> can fuse the argmax: it runs <c>gemv_bf16_mma</c> (tensor cores, no split).</summary>
    public static bool CanFuseArgmax(in GemvPlan plan) => plan.TensorCores && plan.SplitK == 1;

    /// <summary>
    /// Whether a launch of <paramref name="plan"/> on <paramref name="gridX"/> CTAs (<see cref="MmaGridX"/>) can fuse the
    /// sampled step's reduce: it runs <c>gemv_bf16_mma</c>, and its CTAs' partials fit the last CTA's one pass
    /// (<see cref="SamplingScratch.FusedPartsPerRow"/>: 768, against 528 on an H100: <see cref="SampleGridX(int, int, int, bool)"/>).
    /// </summary>
    public static bool CanFuseSample(in GemvPlan plan, int gridX) => CanFuseArgmax(plan) && gridX <= SamplingScratch.FusedPartsPerRow;

    /// <summary>The grid a <see cref="GemvSample"/> launch of <paramref name="tokens"/> x <paramref name="n"/> x <paramref name="k"/> takes on this device (<see cref="MmaGridX"/> at <see cref="MmaSampleCtasPerSm"/>; 0 when the plan is not <c>gemv_bf16_mma</c>).</summary>
    public int SampleGridX(int tokens, int n, int k, bool normPrologue)
    {
        GemvPlan plan = Plan(tokens, n, k, WeightFormat.Bf16, normPrologue);
        return plan.TensorCores
            ? MmaGridX(plan.GridX, _device.Info.MultiprocessorCount, _device.Info.SharedMemoryPerMultiprocessor, tokens * (k + MmaPadElements) * 2, MmaSampleCtasPerSm)
            : 0;
    }

    /// <summary>Zeroes the split-K tickets at the start of a GEMV workspace: once after allocating it, outside any graph.</summary>
    public void ClearTickets(DeviceStream stream, DevicePtr partial, long partialBytes)
    {
        if (partialBytes > 0) _device.MemsetAsync(partial, 0, Math.Min(partialBytes, TicketBytes), stream);
    }

    private DeviceKernel[] Kernels(WeightFormat f) =>
        _kernels.TryGetValue(f, out var k) ? k
        : throw new InvalidOperationException($"gemv: {f.Name()} kernels were not loaded by these launchers (loaded: {string.Join(", ", _kernels.Keys.Select(WeightFormats.Name))})");
}
