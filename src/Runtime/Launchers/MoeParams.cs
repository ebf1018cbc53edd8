using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

// C# mirrors of the params structs of kernels/moe_*.cu (layouts checked by tests/Moe/MoeParamsLayoutTests.cs).

/// <summary>Mirror of <c>MoeRouterParams</c> (kernels/moe_router.cu).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeRouterParams
{
    public DevicePtr Hidden;        // [T, H] bf16
    public DevicePtr WGate;         // [E, H] bf16
    public DevicePtr Logits;        // [T, E] fp32
    public DevicePtr Counters;      // [ceil(T/8)] int, zero
    public DevicePtr TopkIds;       // [T, k] int
    public DevicePtr TopkWeights;   // [T, k] fp32
    public DevicePtr HOut;          // [T, H] bf16 (moe_router_norm_topk)
    public DevicePtr NormWeight;    // [H] bf16 (moe_router_norm_topk)
    public DevicePtr FetchAhead;    // moe_router_norm_topk: a later kernel's weights, prefetched into L2 with evict_last
    public long FetchAheadBytes;
    public int Tokens;
    public int HiddenSize;
    public int Experts;
    public int TopK;
    public int NormTopkProb;
    public float Eps;               // moe_router_norm_topk
    public int TopkByConsumer;      // persistent_attn_block's router tiles: 1 = logits only, the experts' launch runs the top-k
}

/// <summary>Mirror of <c>MoeAlignParams</c> (kernels/moe_align.cu).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeAlignParams
{
    public DevicePtr TopkIds;       // [slots] int
    public DevicePtr Counts;        // [E] int
    public DevicePtr Offsets;       // [E+1] int
    public DevicePtr SortedSlots;   // [padded rows] int
    public DevicePtr TileExpert;    // [tiles] int
    public DevicePtr NumTiles;      // [1] int
    public int Slots;
    public int Experts;
    public int BlockM;
}

/// <summary>Mirror of <c>MoeGateUpGemvParams</c> (kernels/moe_decode.cu).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeGateUpGemvParams
{
    public DevicePtr Hidden;        // [T, H] bf16
    public DevicePtr GateUp;        // [E, 2I, H] bf16
    public DevicePtr TopkIds;       // [T*k] int
    public DevicePtr Inter;         // [T*k, I] bf16
    public int Slots;
    public int TopK;
    public int HiddenSize;
    public int InterSize;
    public WeightScales Ws;         // quantized variants only
}

/// <summary>Mirror of <c>MoeDownGemvParams</c> (kernels/moe_decode.cu).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeDownGemvParams
{
    public DevicePtr Inter;         // [T*k, I] bf16
    public DevicePtr Down;          // [E, H, I] bf16
    public DevicePtr TopkIds;       // [T*k] int
    public DevicePtr Y;             // [T*k, H] bf16
    public DevicePtr TopkWeights;   // [T, k] fp32 (the fused combine)
    public DevicePtr Residual;      // [T, H] bf16 or null
    public DevicePtr Out;           // [T, H] bf16
    public DevicePtr Tickets;       // [T, ceil(H/16)] int, zero
    public int Slots;
    public int HiddenSize;
    public int InterSize;
    public int TopK;
    public WeightScales Ws;         // quantized variants only
}

/// <summary>Mirror of <c>MoeExpertsGemvParams</c> (kernels/moe_decode.cu): both GEMVs' params and the tile counters.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeExpertsGemvParams
{
    public MoeGateUpGemvParams GateUp;
    public MoeDownGemvParams Down;
    public DevicePtr Sync;          // [3 + T*k] int: next tile, exit ticket, gate_up tiles done per slot, down tiles done; zero, left zero
    public int TilesPerCta;         // tickets each CTA takes (grid * TilesPerCta >= the tiles)
    public int NextTiles;           // follow-on GEMV tiles (8 rows each), 0 for none
    public GemvParams Next;         // the follow-on GEMV (gemv_bf16_mma's parameters), unused when NextTiles is 0
    public DevicePtr FetchAhead;    // a later kernel's weights, prefetched into L2 with evict_last before the wait, or null
    public long FetchAheadBytes;
    public DevicePtr RouterLogits;  // [T, E] fp32 or null: each CTA runs the router's softmax + top-k from these logits
    public int RouterExperts;       // E
    public int RouterNormTopkProb;
}

/// <summary>Mirror of <c>MoeGateUpGemmParams</c> (kernels/moe_gemm.cu).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeGateUpGemmParams
{
    public DevicePtr Hidden;        // [T, H] bf16
    public DevicePtr GateUp;        // [E, 2I, H] bf16
    public DevicePtr SortedSlots;   // [padded rows] int
    public DevicePtr TileExpert;    // [tiles] int
    public DevicePtr NumTiles;      // [1] int
    public DevicePtr Inter;         // [padded rows, I] bf16
    public int TopK;
    public int HiddenSize;
    public int InterSize;
    public WeightScales Ws;         // quantized variants only
}

/// <summary>Mirror of <c>MoeDownGemmParams</c> (kernels/moe_gemm.cu).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeDownGemmParams
{
    public DevicePtr Inter;         // [padded rows, I] bf16
    public DevicePtr Down;          // [E, H, I] bf16
    public DevicePtr SortedSlots;
    public DevicePtr TileExpert;
    public DevicePtr NumTiles;
    public DevicePtr Y;             // [T*k, H] bf16
    public int HiddenSize;
    public int InterSize;
    public WeightScales Ws;         // quantized variants only
}

/// <summary>Mirror of <c>MoeCombineParams</c> (kernels/moe_combine.cu).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MoeCombineParams
{
    public DevicePtr Y;             // [T*k, H] bf16
    public DevicePtr TopkWeights;   // [T, k] fp32
    public DevicePtr Residual;      // [T, H] bf16 or null
    public DevicePtr Out;           // [T, H] bf16
    public int Tokens;
    public int TopK;
    public int HiddenSize;
}
