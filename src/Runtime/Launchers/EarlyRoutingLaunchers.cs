using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>MoeRouterFoldParams</c> in kernels/early_route.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeRouterFoldParams
{
    public DevicePtr WRouter;      // [E, H] bf16
    public DevicePtr NormWeight;   // [H] bf16
    public DevicePtr OProj;        // [H, Q] bf16
    public DevicePtr Folded;       // [E, Q] bf16 out
    public int Experts;
    public int HiddenSize;
    public int QDim;
}

/// <summary>Mirror of <c>MoeEarlyRouteParams</c> in kernels/early_route.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeEarlyRouteParams
{
    public DevicePtr X;            // [T, H] bf16
    public DevicePtr Attn;         // [T, Q] bf16
    public DevicePtr WRouter;      // [E, H] bf16
    public DevicePtr NormWeight;   // [H] bf16
    public DevicePtr Folded;       // [E, Q] bf16
    public DevicePtr Logits;       // [T, E] fp32 out
    public DevicePtr TopkIds;      // [T, k] int out
    public DevicePtr Counter;      // [1] int, zero on entry, left zero
    public int Tokens;
    public int HiddenSize;
    public int QDim;
    public int Experts;
    public int TopK;
}

/// <summary>
/// Launchers for kernels/early_route.cu, early routing (docs/kernels.md, "Early routing"): the experts' ids of a MoE layer
/// from the attention's output through the folded router <c>M = W_r diag(g) W_o</c>, a hint for prefetching the experts'
/// weights before the router has run (never the router's result: at a near tie the ids may differ). The host reference is
/// <c>Qwen3Cuda.Model.Reference.EarlyRouting</c>. Nothing here allocates or synchronises.
/// </summary>
public sealed class EarlyRoutingLaunchers(KernelLoader loader)
{
    public const string File = "early_route.cu";
    /// <summary>The kernels' limits: tokens per launch, experts, top-k (kernels/early_route.cu).</summary>
    public const int MaxTokens = 4, MaxExperts = 256, MaxTopK = 16;
    const int FoldThreads = 128, FoldRows = 8, RouteThreads = 128, RouteRowsPerCta = 4;
    private readonly DeviceKernel _fold = loader.Get(File, "moe_router_fold");
    private readonly DeviceKernel _route = loader.Get(File, "moe_early_route");
    private readonly IDevice _device = loader.Device;

    /// <summary>Bytes of the folded router of one layer: [E, Q] bf16.</summary>
    public static long FoldedBytes(int experts, int qDim) => (long)experts * qDim * 2;

    /// <summary>
    /// <c>moe_router_fold</c>, once per MoE layer at load: <paramref name="folded"/> [E, Q] bf16 =
    /// bf16(<paramref name="routerWeight"/> [E, H] diag(<paramref name="normWeight"/> [H]) <paramref name="oProjWeight"/> [H, Q]),
    /// fp32 accumulation.
    /// </summary>
    public void Fold(DeviceStream stream, int experts, int hiddenSize, int qDim, DevicePtr routerWeight, DevicePtr normWeight,
        DevicePtr oProjWeight, DevicePtr folded)
    {
        CheckShape("moe_router_fold", experts, hiddenSize, qDim);
        if (routerWeight.IsNull || normWeight.IsNull || oProjWeight.IsNull || folded.IsNull)
            throw new ArgumentException("moe_router_fold: the router, norm and o_proj weights and the folded output must be device buffers");
        var p = new MoeRouterFoldParams
        {
            WRouter = routerWeight, NormWeight = normWeight, OProj = oProjWeight, Folded = folded,
            Experts = experts, HiddenSize = hiddenSize, QDim = qDim,
        };
        Launch(_fold, new LaunchConfig(new Dim3((uint)((qDim + FoldThreads - 1) / FoldThreads), (uint)((experts + FoldRows - 1) / FoldRows)), FoldThreads), stream, p);
    }

    /// <summary>
    /// <c>moe_early_route</c>: for <paramref name="tokens"/> (1..<see cref="MaxTokens"/>) rows of the layer input
    /// <paramref name="x"/> [T, H] and the attention output <paramref name="attention"/> [T, Q], the unscaled logits
    /// <paramref name="logits"/> [T, E] fp32 <c>u = W_r (g * x) + M a</c> and each token's <paramref name="topK"/> experts by
    /// u, descending, ties to the lower expert, in <paramref name="topkIds"/> [T, k]. <paramref name="counter"/>: one int,
    /// zero on entry and left zero.
    /// </summary>
    public void Route(DeviceStream stream, int tokens, int experts, int topK, int hiddenSize, int qDim, DevicePtr x, DevicePtr attention,
        DevicePtr routerWeight, DevicePtr normWeight, DevicePtr folded, DevicePtr logits, DevicePtr topkIds, DevicePtr counter)
    {
        CheckShape("moe_early_route", experts, hiddenSize, qDim);
        if (tokens < 1 || tokens > MaxTokens)
            throw new ArgumentOutOfRangeException(nameof(tokens), tokens, $"moe_early_route: 1 to {MaxTokens} tokens");
        if (topK < 1 || topK > Math.Min(MaxTopK, experts))
            throw new ArgumentOutOfRangeException(nameof(topK), topK, $"moe_early_route: top-k must be 1..{Math.Min(MaxTopK, experts)} for {experts} experts");
        if (x.IsNull || attention.IsNull || routerWeight.IsNull || normWeight.IsNull || folded.IsNull || logits.IsNull || topkIds.IsNull || counter.IsNull)
            throw new ArgumentException("moe_early_route: every buffer (x, attention, router, norm, folded, logits, ids, counter) must be a device buffer");
        var p = new MoeEarlyRouteParams
        {
            X = x, Attn = attention, WRouter = routerWeight, NormWeight = normWeight, Folded = folded, Logits = logits, TopkIds = topkIds,
            Counter = counter, Tokens = tokens, HiddenSize = hiddenSize, QDim = qDim, Experts = experts, TopK = topK,
        };
        Launch(_route, new LaunchConfig(new Dim3((uint)((experts + RouteRowsPerCta - 1) / RouteRowsPerCta)), RouteThreads), stream, p);
    }

    static void CheckShape(string kernel, int experts, int hiddenSize, int qDim)
    {
        if (experts < 1 || experts > MaxExperts)
            throw new ArgumentOutOfRangeException(nameof(experts), experts, $"{kernel}: 1 to {MaxExperts} experts");
        if (hiddenSize < 8 || hiddenSize % 8 != 0)
            throw new ArgumentOutOfRangeException(nameof(hiddenSize), hiddenSize, $"{kernel}: the hidden size must be a positive multiple of 8");
        if (qDim < 8 || qDim % 8 != 0)
            throw new ArgumentOutOfRangeException(nameof(qDim), qDim, $"{kernel}: the query dimension (heads x head_dim) must be a positive multiple of 8");
    }

    private void Launch<T>(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, T p) where T : unmanaged
    {
        var args = new KernelArgs(stackalloc byte[128], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(kernel, config, stream, args);
    }
}
