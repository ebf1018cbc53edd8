// moe_decode.cu: the experts of a MoE block for a few tokens (decode, T <= 8): GEMVs over only the
// selected experts, reading the stacked expert weights (see MoeWeightPacking.cs for the layout):
//   gate_up [E, 2I, H] bf16: rows 0..I-1 are gate_proj, rows I..2I-1 are up_proj (concatenated, not interleaved)
//   down    [E, H, I]  bf16: down_proj as stored
// Slot s = t*k + j is token t's rank-j choice, expert topk_ids[s].
//
// moe_gate_up_gemv: inter[s, i] = bf16( bf16(silu(bf16(g))) * bf16(u) ),
//     g = hidden[t] . gate_up[e, i],  u = hidden[t] . gate_up[e, I + i]   (fp32 accumulate)
//   Grid (ceil(I / 8), T*k), 128 threads: warp w owns i = bx*8 + 2w + {0, 1}, i.e. 4 weight rows (2 gate,
//   2 up); each lane streams 16-byte chunks lane, lane+32, ... of those rows and of hidden[t]; lane partial
//   sums reduce by a fixed shuffle tree (deterministic). Bytes: T*k*2I*H*2 weights (each read once) + hidden.
// moe_down_gemv: y[s, h] = bf16( inter[s] . down[e, h] ), then the combine of kernels/moe_combine.cu fused into the
//   last CTA (docs/kernels.md, "Fusions"): out[t, h] = bf16(sum_j w[t, j] * y[t*k + j, h]) in rank order (fp32, every
//   product and sum rounded separately), or bf16(residual[t, h] + bf16(that)) (residual may alias out).
//   Grid (ceil(H / 16), T*k), 128 threads: warp w owns rows h = bx*16 + 4w .. +3. Bytes: T*k*H*I*2 + inter.
//   Ticket: after writing its 16 values of y, a CTA fences and adds 1 to tickets[t * gridDim.x + bx]; the k-th CTA of
//   token t and row block bx (the last of its k slots) reads the k rows of y for those 16 columns back (ld.global.cg,
//   L2), combines them and resets the ticket to 0. The ticket decides only which CTA combines, never the order, so the
//   output is deterministic and bitwise the separate kernel's. tickets[] are zero before the first launch (cleared once
//   with the workspace). Extra bytes: T*k*4 (weights) + T*H*2 (out) [+ T*H*2 residual] + T*ceil(H/16)*4 (tickets).
// Variants: these GEMVs (decode), and moe_experts_gemv (below): both in one launch, the decode step's, whose down tiles
// take a few rows of all k slots of a token and combine them without a ticket; kernels/moe_gemm.cu is
// the tensor-core path for many tokens.
// Quantized experts (quant.cuh, docs/formats.md): moe_gate_up_gemv_fp8 / _int8 and moe_down_gemv_fp8 / _int8 read one
// byte per weight, 16 per lane per load (one scale: 16 divides the 128-wide blocks), dequantize in registers to the
// reference's bf16 weights and accumulate like the bf16 kernels. The scale row of a weight row is that of the stacked
// matrix: gate_up row e*2I + r, down row e*H + h. Bytes: T*k*2I*H (+ scales) and T*k*H*I (+ scales); H / I % 16 == 0.
// moe_*_gemv_int4 (GPTQ): 32 weights per 16-byte load, fp16 group scales; H / I % 32 == 0.
// The slot's activation row (H or I bf16) is staged in dynamic shared memory first (coalesced 16-byte loads), since a
// lane's 16 weights need 32 bytes of it.
#include "quant.cuh"
#include "gemv_mma.cuh"   // the follow-on GEMV tiles of moe_experts_gemv (gemv_bf16_mma's tile)
#include "moe_router.cuh" // router_topk_select: moe_experts_gemv's own top-k when the router left it to the experts

#define GEMV_THREADS 128
#define GATE_UP_I_PER_WARP 2
#define DOWN_ROWS_PER_WARP 4

struct MoeGateUpGemvParams {
    const bf16* hidden;      // [T, H]
    const bf16* gate_up;     // [E, 2I, H]
    const int* topk_ids;     // [T*k]
    bf16* inter;             // [T*k, I] SwiGLU activations per slot
    int slots;               // T*k
    int top_k;
    int hidden_size;         // H, multiple of 8
    int inter_size;          // I
    WeightScales ws;         // quantized variants only
};

struct MoeDownGemvParams {
    const bf16* inter;       // [T*k, I]
    const bf16* down;        // [E, H, I]
    const int* topk_ids;     // [T*k]
    bf16* y;                 // [T*k, H] expert outputs per slot (bf16, the Linear's output)
    const float* topk_weights; // [T, k] routing weights (the fused combine)
    const bf16* residual;    // [T, H] or null (may alias out)
    bf16* out;               // [T, H] combined output
    int* tickets;            // [T, ceil(H / 16)] zero on entry, left zero on exit
    int slots;
    int hidden_size;         // H
    int inter_size;          // I, multiple of 8
    int top_k;
    WeightScales ws;         // quantized variants only
};

#define DOWN_ROWS_PER_CTA (DOWN_ROWS_PER_WARP * GEMV_THREADS / 32)
#define DOWN_MAX_TOPK 16

__device__ __forceinline__ float ld_cg_bf16(const bf16* p)
{
    unsigned short v;
    asm volatile("ld.global.cg.u16 %0, [%1];" : "=h"(v) : "l"(p) : "memory");
    return bf16_to_f32(v);
}

// The fused combine of moe_down_gemv, run by every CTA after it wrote its rows of y (all threads reach it: no early return
// before), for row block bx (16 rows) of slot s; a token's tickets are ceil(H / 16) ints. The ticket and the combine are
// the launch's tail (tail_begin).
__device__ __forceinline__ void down_combine_tail(const MoeDownGemvParams& p, int s, int bx)
{
    __shared__ int is_last;
    const int t = s / p.top_k, k = p.top_k;
    int* ticket = p.tickets + (size_t)t * ((p.hidden_size + DOWN_ROWS_PER_CTA - 1) / DOWN_ROWS_PER_CTA) + bx;
    tail_begin();
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(ticket, 1) == k - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    const int h = bx * DOWN_ROWS_PER_CTA + threadIdx.x;
    if (threadIdx.x < DOWN_ROWS_PER_CTA && h < p.hidden_size) {
        float v[DOWN_MAX_TOPK], w[DOWN_MAX_TOPK];
#pragma unroll
        for (int j = 0; j < DOWN_MAX_TOPK; j++) {   // all k loads first: one L2 round trip
            v[j] = j < k ? ld_cg_bf16(p.y + ((size_t)t * k + j) * p.hidden_size + h) : 0.f;
            w[j] = j < k ? p.topk_weights[(size_t)t * k + j] : 0.f;
        }
        float acc = 0.f;
#pragma unroll
        for (int j = 0; j < DOWN_MAX_TOPK; j++)
            if (j < k) acc = __fadd_rn(acc, __fmul_rn(w[j], v[j]));
        if (p.residual) acc = round_bf16(acc) + bf16_to_f32(p.residual[(size_t)t * p.hidden_size + h]);
        p.out[(size_t)t * p.hidden_size + h] = f32_to_bf16(acc);
    }
    if (threadIdx.x == 0) *ticket = 0;
}

// silu then the product, with the reference's rounding points (gate, up already bf16).
__device__ __forceinline__ float swiglu_bf16(float gate, float up)
{
    const float s = round_bf16(gate / (1.f + expf(-gate)));
    return round_bf16(s * up);
}

// One CTA's work of moe_gate_up_gemv: slot s, block bx of 8 intermediate columns (moe_gate_up_gemv: (blockIdx.y,
// blockIdx.x); moe_experts_gemv: a tile). Reads only what earlier kernels wrote. last_tile: the CTA streams nothing after
// it, so what follows the dot products is its tail (tail_begin).
__device__ __forceinline__ void gate_up_tile(const MoeGateUpGemvParams& p, int e, int s, int bx, bool last_tile = false)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int t = s / p.top_k;
    const int i0 = (bx * (GEMV_THREADS / 32) + warp) * GATE_UP_I_PER_WARP;
    if (i0 >= p.inter_size) return;
    const bool two = i0 + 1 < p.inter_size;
    const int chunks = p.hidden_size >> 3;
    const uint4* x = reinterpret_cast<const uint4*>(p.hidden + (size_t)t * p.hidden_size);
    const size_t row_chunks = (size_t)chunks;
    const uint4* wg = reinterpret_cast<const uint4*>(p.gate_up + ((size_t)e * 2 * p.inter_size + i0) * p.hidden_size);
    const uint4* wu = wg + (size_t)p.inter_size * row_chunks;
    float g0 = 0.f, g1 = 0.f, u0 = 0.f, u1 = 0.f;
#pragma unroll 2
    for (int c = lane; c < chunks; c += 32) {
        const uint4 xc = __ldg(&x[c]);
        g0 += dot_bf16x8(__ldg(&wg[c]), xc);
        u0 += dot_bf16x8(__ldg(&wu[c]), xc);
        if (two) {
            g1 += dot_bf16x8(__ldg(&wg[row_chunks + c]), xc);
            u1 += dot_bf16x8(__ldg(&wu[row_chunks + c]), xc);
        }
    }
    if (last_tile) tail_begin();
    g0 = round_bf16(warp_sum(g0));
    u0 = round_bf16(warp_sum(u0));
    g1 = round_bf16(warp_sum(g1));
    u1 = round_bf16(warp_sum(u1));
    if (lane == 0) {
        bf16* out = p.inter + (size_t)s * p.inter_size + i0;
        out[0] = f32_to_bf16(swiglu_bf16(g0, u0));
        if (two) out[1] = f32_to_bf16(swiglu_bf16(g1, u1));
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_gate_up_gemv(MoeGateUpGemvParams p)
{
    pdl_wait();                                            // the expert ids and x are the previous kernels' (no prefetch: ids unknown)
    pdl_launch_dependents();
    const int e = p.topk_ids[blockIdx.y];
    stream_begin();                                        // the weights' addresses are known from here on
    gate_up_tile(p, e, blockIdx.y, blockIdx.x);
}

// One CTA's work of moe_down_gemv, its combine included: slot s, block bx of 16 rows.
__device__ __forceinline__ void down_tile(const MoeDownGemvParams& p, int s, int bx)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int e = p.topk_ids[s];
    stream_begin();                                        // the weights' addresses are known from here on
    const int h0 = (bx * (GEMV_THREADS / 32) + warp) * DOWN_ROWS_PER_WARP;
    if (h0 < p.hidden_size) {
        const int chunks = p.inter_size >> 3;
        const uint4* x = reinterpret_cast<const uint4*>(p.inter + (size_t)s * p.inter_size);
        const uint4* w = reinterpret_cast<const uint4*>(p.down + ((size_t)e * p.hidden_size + h0) * p.inter_size);
        float acc[DOWN_ROWS_PER_WARP];
#pragma unroll
        for (int r = 0; r < DOWN_ROWS_PER_WARP; r++) acc[r] = 0.f;
        for (int c = lane; c < chunks; c += 32) {
            const uint4 xc = x[c];
#pragma unroll
            for (int r = 0; r < DOWN_ROWS_PER_WARP; r++)
                if (h0 + r < p.hidden_size) acc[r] += dot_bf16x8(__ldg(&w[(size_t)r * chunks + c]), xc);
        }
#pragma unroll
        for (int r = 0; r < DOWN_ROWS_PER_WARP; r++) {
            const float v = warp_sum(acc[r]);
            if (lane == r && h0 + r < p.hidden_size) p.y[(size_t)s * p.hidden_size + h0 + r] = f32_to_bf16(v);
        }
    }
    down_combine_tail(p, s, bx);
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_down_gemv(MoeDownGemvParams p)
{
    pdl_wait();                                            // the expert ids and x are the previous kernels' (no prefetch: ids unknown)
    pdl_launch_dependents();
    down_tile(p, blockIdx.y, blockIdx.x);
}

// Quantized gate+up: the mapping of moe_gate_up_gemv with 16-weight chunks (two 8-element chunks of hidden).
template <int QF>
__device__ __forceinline__ void gate_up_tile_quant(const MoeGateUpGemvParams& p, int e, int s, int bx, bool last_tile = false)
{
    extern __shared__ uint4 x_s[];                         // [H / 8]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int t = s / p.top_k;
    const int H = p.hidden_size, I = p.inter_size;
    const uint4* xg = reinterpret_cast<const uint4*>(p.hidden + (size_t)t * H);
    for (int i = threadIdx.x; i < (H >> 3); i += GEMV_THREADS) x_s[i] = __ldg(&xg[i]);
    __syncthreads();
    const int i0 = (bx * (GEMV_THREADS / 32) + warp) * GATE_UP_I_PER_WARP;
    if (i0 >= I) return;
    const bool two = i0 + 1 < I;
    constexpr int WPB = QF_WPB(QF), WPL = 16 * WPB;        // weights per byte, per 16-byte load
    const int qchunks = H / WPL, row_bytes = H / WPB;
    const int grow = e * 2 * I + i0;                       // stacked row of gate row i0 (its up row: + I)
    const unsigned char* wg = reinterpret_cast<const unsigned char*>(p.gate_up) + (size_t)grow * row_bytes;
    const unsigned char* wu = wg + (size_t)I * row_bytes;
    float g0 = 0.f, g1 = 0.f, u0 = 0.f, u1 = 0.f;
    auto dot = [&](const unsigned char* w, int row, int c) {
        uint4 w8[2 * WPB];
        dequant_load16<QF>(__ldg(reinterpret_cast<const uint4*>(w + c * 16)), weight_scale_q<QF>(p.ws, row, c * WPL), w8);
        float acc = 0.f;
#pragma unroll
        for (int h = 0; h < 2 * WPB; h++) acc += dot_bf16x8(w8[h], x_s[2 * WPB * c + h]);
        return acc;
    };
    for (int c = lane; c < qchunks; c += 32) {
        g0 += dot(wg, grow, c);
        u0 += dot(wu, grow + I, c);
        if (two) {
            g1 += dot(wg + row_bytes, grow + 1, c);
            u1 += dot(wu + row_bytes, grow + I + 1, c);
        }
    }
    if (last_tile) tail_begin();
    g0 = round_bf16(warp_sum(g0));
    u0 = round_bf16(warp_sum(u0));
    g1 = round_bf16(warp_sum(g1));
    u1 = round_bf16(warp_sum(u1));
    if (lane == 0) {
        bf16* out = p.inter + (size_t)s * I + i0;
        out[0] = f32_to_bf16(swiglu_bf16(g0, u0));
        if (two) out[1] = f32_to_bf16(swiglu_bf16(g1, u1));
    }
}

template <int QF>
__device__ __forceinline__ void moe_gate_up_gemv_quant(const MoeGateUpGemvParams& p)
{
    pdl_wait();                                            // the expert ids and x are the previous kernels' (no prefetch: ids unknown)
    pdl_launch_dependents();
    const int e = p.topk_ids[blockIdx.y];
    stream_begin();                                        // the weights' addresses are known from here on
    gate_up_tile_quant<QF>(p, e, blockIdx.y, blockIdx.x);
}

// Quantized down: the mapping of moe_down_gemv with 16-weight chunks.
template <int QF>
__device__ __forceinline__ void down_tile_quant(const MoeDownGemvParams& p, int s, int bx)
{
    extern __shared__ uint4 x_s[];                         // [I / 8]
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int e = p.topk_ids[s];
    stream_begin();                                        // the weights' addresses are known from here on
    const int H = p.hidden_size, I = p.inter_size;
    const uint4* xg = reinterpret_cast<const uint4*>(p.inter + (size_t)s * I);
    for (int i = threadIdx.x; i < (I >> 3); i += GEMV_THREADS) x_s[i] = xg[i];
    __syncthreads();
    const int h0 = (bx * (GEMV_THREADS / 32) + warp) * DOWN_ROWS_PER_WARP;
    if (h0 < H) {
        constexpr int WPB = QF_WPB(QF), WPL = 16 * WPB;
        const int qchunks = I / WPL, row_bytes = I / WPB;
        const int grow = e * H + h0;
        const unsigned char* w = reinterpret_cast<const unsigned char*>(p.down) + (size_t)grow * row_bytes;
        float acc[DOWN_ROWS_PER_WARP];
#pragma unroll
        for (int r = 0; r < DOWN_ROWS_PER_WARP; r++) acc[r] = 0.f;
        for (int c = lane; c < qchunks; c += 32) {
#pragma unroll
            for (int r = 0; r < DOWN_ROWS_PER_WARP; r++)
                if (h0 + r < H) {
                    uint4 w8[2 * WPB];
                    dequant_load16<QF>(__ldg(reinterpret_cast<const uint4*>(w + (size_t)r * row_bytes + c * 16)), weight_scale_q<QF>(p.ws, grow + r, c * WPL), w8);
                    float d = 0.f;
#pragma unroll
                    for (int h = 0; h < 2 * WPB; h++) d += dot_bf16x8(w8[h], x_s[2 * WPB * c + h]);
                    acc[r] += d;
                }
        }
#pragma unroll
        for (int r = 0; r < DOWN_ROWS_PER_WARP; r++) {
            const float v = warp_sum(acc[r]);
            if (lane == r && h0 + r < H) p.y[(size_t)s * H + h0 + r] = f32_to_bf16(v);
        }
    }
    down_combine_tail(p, s, bx);
}

template <int QF>
__device__ __forceinline__ void moe_down_gemv_quant(const MoeDownGemvParams& p)
{
    pdl_wait();                                            // the expert ids and x are the previous kernels' (no prefetch: ids unknown)
    pdl_launch_dependents();
    down_tile_quant<QF>(p, blockIdx.y, blockIdx.x);
}

// moe_experts_gemv's down tile: R = experts_down_rows(k) output rows h0 .. h0 + R - 1 of ALL k slots of token t (k * R <= 16
// row dot products, as many as a moe_down_gemv CTA's 16), so the tile combines its own rows: no ticket, no read-back of
// the other slots' rows from L2, no fence between the stream and the combine. Row dot d = j * R + r (slot j, row r) is
// warp d / 4's dot d % 4, each computed as down_tile's (a lane's chunks in order, the same shuffle tree), so y is the
// separate kernel's bit for bit; the combine sums the k slots in rank order, as down_combine_tail does. The routing
// weights and the residual rows are loaded first, into shared memory, so the combine after the dot products needs no
// global load.
__device__ __forceinline__ int experts_down_rows(int top_k) { return max(1, DOWN_ROWS_PER_CTA / top_k); }

struct DownTokenSmem {
    float y[DOWN_ROWS_PER_CTA];          // [k][R] the tile's y values (bf16 values)
    float w[DOWN_MAX_TOPK];              // token t's routing weights
    float res[DOWN_ROWS_PER_CTA];        // residual rows h0 .. h0 + R - 1
};

// weights: token t's routing weights at weights[t * k ..]: moe_experts_gemv's copy in shared memory (read from
// p.topk_weights with the ids, or its own top-k's)
__device__ __forceinline__ void down_token_operands(const MoeDownGemvParams& p, const float* weights, int t, int h0, int R, DownTokenSmem& sm)
{
    const int k = p.top_k, H = p.hidden_size;
    if (threadIdx.x < k) sm.w[threadIdx.x] = weights[(size_t)t * k + threadIdx.x];
    const int r = threadIdx.x - 32;      // another warp loads the residual
    if (p.residual && r >= 0 && r < R && h0 + r < H) sm.res[r] = bf16_to_f32(p.residual[(size_t)t * H + h0 + r]);
}

// After the barrier that follows the dot products: thread r < R combines row h0 + r.
__device__ __forceinline__ void down_token_combine(const MoeDownGemvParams& p, int t, int h0, int R, const DownTokenSmem& sm)
{
    const int r = threadIdx.x, H = p.hidden_size;
    if (r >= R || h0 + r >= H) return;
    const float* y = sm.y + r;
    float acc = 0.f;
#pragma unroll 8
    for (int j = 0; j < p.top_k; j++) acc = __fadd_rn(acc, __fmul_rn(sm.w[j], y[j * R]));
    if (p.residual) acc = round_bf16(acc) + sm.res[r];
    p.out[(size_t)t * H + h0 + r] = f32_to_bf16(acc);
}

// Row dot d = j * R + r of a down tile: its slot j, or -1 when it has none (j past k, or row h0 + r past H).
__device__ __forceinline__ int down_token_slot(int d, int R, int k, int h0, int H)
{
    const int j = d / R;
    return j < k && h0 + d - j * R < H ? j : -1;
}

// After a warp's row dots: lane i writes row dot i's sum to y (bf16) and its value to sm.y, for the combine.
__device__ __forceinline__ void down_token_sums(const MoeDownGemvParams& p, int t, int h0, int R, const float (&acc)[DOWN_ROWS_PER_WARP],
                                                const int (&slot)[DOWN_ROWS_PER_WARP], DownTokenSmem& sm)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, H = p.hidden_size;
    bf16* y = p.y + (size_t)t * p.top_k * H + h0;          // the token's k rows of y, at row h0
#pragma unroll
    for (int i = 0; i < DOWN_ROWS_PER_WARP; i++) {
        const float v = warp_sum(acc[i]);
        if (lane == i && slot[i] >= 0) {
            const int d = warp * DOWN_ROWS_PER_WARP + i, r = d - slot[i] * R;
            const bf16 b = f32_to_bf16(v);
            y[(unsigned)(slot[i] * H + r)] = b;
            sm.y[d] = bf16_to_f32(b);
        }
    }
}

__device__ __forceinline__ void down_tile_token(const MoeDownGemvParams& p, const int* ids, const float* weights, int t, int bx, bool last_tile)
{
    __shared__ DownTokenSmem sm;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k = p.top_k, H = p.hidden_size, R = experts_down_rows(k), h0 = bx * R;
    down_token_operands(p, weights, t, h0, R, sm);
    const int chunks = p.inter_size >> 3;
    const uint4* down = reinterpret_cast<const uint4*>(p.down);
    const uint4* inter = reinterpret_cast<const uint4*>(p.inter + (size_t)t * k * p.inter_size);   // the token's k rows
    unsigned woff[DOWN_ROWS_PER_WARP];                      // in 16-byte chunks: fewer registers than pointers
    int slot[DOWN_ROWS_PER_WARP];                          // j of row dot i, -1 for none (past k or past H)
    bool same[DOWN_ROWS_PER_WARP];
    float acc[DOWN_ROWS_PER_WARP];
#pragma unroll
    for (int i = 0; i < DOWN_ROWS_PER_WARP; i++) {
        const int d = warp * DOWN_ROWS_PER_WARP + i, j = d / R, r = d - j * R;
        slot[i] = down_token_slot(d, R, k, h0, H);
        same[i] = i > 0 && (d - 1) / R == j;                // the row dot before reads the same slot's inter row
        const unsigned e = slot[i] >= 0 ? ids[t * k + j] : 0;
        woff[i] = (e * H + h0 + r) * (unsigned)chunks;
        acc[i] = 0.f;
    }
    for (int c = lane; c < chunks; c += 32) {
        uint4 xc = make_uint4(0, 0, 0, 0);
#pragma unroll
        for (int i = 0; i < DOWN_ROWS_PER_WARP; i++)
            if (slot[i] >= 0) {
                if (!same[i]) xc = __ldcg(&inter[slot[i] * chunks + c]);   // inter: other CTAs' writes of this launch, from L2
                acc[i] += dot_bf16x8(__ldg(&down[woff[i] + c]), xc);
            }
    }
    if (last_tile) tail_begin();                           // the CTA's share of the stream is done: the sums and the combine follow
    down_token_sums(p, t, h0, R, acc, slot, sm);
    __syncthreads();
    down_token_combine(p, t, h0, R, sm);
}

// The quantized down tile of moe_experts_gemv: down_tile_token's rows with down_tile_quant's 16-weight chunks; the k slots'
// inter rows are staged in shared memory first ([k][I / 8], read from L2).
template <int QF>
__device__ __forceinline__ void down_tile_token_quant(const MoeDownGemvParams& p, const int* ids, const float* weights, int t, int bx, bool last_tile)
{
    extern __shared__ uint4 x_s[];                         // [k][I / 8]
    __shared__ DownTokenSmem sm;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int k = p.top_k, H = p.hidden_size, I = p.inter_size, R = experts_down_rows(k), h0 = bx * R;
    down_token_operands(p, weights, t, h0, R, sm);
    const uint4* xg = reinterpret_cast<const uint4*>(p.inter + (size_t)t * k * I);
    for (int i = threadIdx.x; i < k * (I >> 3); i += GEMV_THREADS) x_s[i] = __ldcg(&xg[i]);
    __syncthreads();
    constexpr int WPB = QF_WPB(QF), WPL = 16 * WPB;
    const int qchunks = I / WPL, row_bytes = I / WPB;
    int grow[DOWN_ROWS_PER_WARP], slot[DOWN_ROWS_PER_WARP];
    float acc[DOWN_ROWS_PER_WARP];
#pragma unroll
    for (int i = 0; i < DOWN_ROWS_PER_WARP; i++) {
        const int d = warp * DOWN_ROWS_PER_WARP + i, j = d / R, r = d - j * R;
        slot[i] = down_token_slot(d, R, k, h0, H);
        grow[i] = slot[i] >= 0 ? ids[t * k + j] * H + h0 + r : 0;
        acc[i] = 0.f;
    }
    const unsigned char* w = reinterpret_cast<const unsigned char*>(p.down);
    for (int c = lane; c < qchunks; c += 32) {
#pragma unroll
        for (int i = 0; i < DOWN_ROWS_PER_WARP; i++)
            if (slot[i] >= 0) {
                uint4 w8[2 * WPB];
                dequant_load16<QF>(__ldg(reinterpret_cast<const uint4*>(w + (size_t)grow[i] * row_bytes + c * 16)), weight_scale_q<QF>(p.ws, grow[i], c * WPL), w8);
                float dd = 0.f;
#pragma unroll
                for (int h = 0; h < 2 * WPB; h++) dd += dot_bf16x8(w8[h], x_s[slot[i] * (I >> 3) + 2 * WPB * c + h]);
                acc[i] += dd;
            }
    }
    if (last_tile) tail_begin();
    down_token_sums(p, t, h0, R, acc, slot, sm);
    __syncthreads();
    down_token_combine(p, t, h0, R, sm);
}

// moe_experts_gemv: moe_gate_up_gemv and moe_down_gemv (the combine included) in ONE launch, the decode step's single
// expert node (docs/kernels.md, "Persistent launches"). Tiles, in the order CTAs take them with an atomic on sync[0]:
// first every gate_up tile (slot-major: tile s * gu_blocks + bx is moe_gate_up_gemv's CTA (bx, s)), then every down
// tile (token-major: down_tile_token's R = experts_down_rows(k) rows of the token's k slots, block bx). Each CTA takes
// tiles_per_cta consecutive tickets with one atomic, in the round trip that also brings the slots' expert ids into
// shared memory (stream_begin() marks where its weight stream can begin), and before it runs a tile it prefetches the
// next one's weight rows into L2, so its DRAM stream does not stop at a tile's end. The launcher sizes the grid to one
// wave (at most 5 CTAs per SM, which __launch_bounds__ makes fit, leaving bf16 launches room for an attention block CTA
// beside them; docs/kernels.md): a second wave would start every CTA's first loads one DRAM latency after the first
// wave's end. A gate_up tile runs gate_up_tile, then releases (barrier, fence, sync[2 + t] += 1, t its token). A down
// tile (its k x R weight rows prefetched, by the tile before or first thing) waits until sync[2 + t] says the token's
// k * gu_blocks gate_up tiles are done (one thread polls, backing off, then fences; the barrier hands that on), then runs
// its row dots reading inter from L2 and combines its own rows: the combine needs no ticket, no fence and no read-back of
// y after the stream (moe_down_gemv's last-CTA combine did). The down weights' DRAM stream needs no kernel boundary.
// Progress needs no co-residency: a tile waits only on tiles of lower tickets, all taken by CTAs that are running (the
// lowest unfinished tile is a CTA's current one, since the CTA's earlier tickets are lower, and its inputs are done);
// gate_up tiles wait on nothing. Exit: each CTA takes a ticket on sync[1] after its last counter access (a CTA whose last
// tile is a down tile, with no follow-on tiles: right after that tile's wait, so the ticket's round trip overlaps the
// tile), and the CTA with the last one resets sync[] to zero for the next launch: zero before the first. A CTA whose last
// tile is a gate_up tile takes its ticket just before that tile's release instead: the down tiles of its token wait for
// the release and take theirs after it, so that ticket is never the last, and nothing waits for its result. Every row is
// computed by the two kernels' code (the same lanes' chunks, the same trees, the combine in rank order), so the output is
// theirs bit for bit.
// Follow-on GEMV (bf16 only; next_tiles > 0): the GEMV that consumes the block's output, the next layer's qkv projection
// with its RMSNorm prologue, as tiles after the down tiles, so its weight stream starts while the experts' last tiles run
// (each such tile's 8 weight rows are prefetched when a CTA takes its ticket, as the experts' are) and the step has one
// kernel boundary less. Next tile j computes rows 8j .. 8j + 7 of next.y with gemv_bf16_mma's tile on the CTA's 4 warps
// (one row group of 8 rows, K in 4 slices: bitwise gemv_bf16_mma with 2 row groups of 4 warps each). It waits until
// sync[2 + slots] counts every down tile done (each down tile releases it when next_tiles > 0, after its combine wrote
// its output rows, which x is read from, through L2). Its tickets are the last, so progress holds as above.
// Routing in the launch (router_logits set; bf16, E <= 128): the router before it wrote only its logits (the attention
// block's router tiles, topk_by_consumer), and every CTA runs the router's softmax + top-k itself (router_topk_select,
// the router's code: the same ids and weights) after its wait, one warp per token, in the round trip of its tile ticket;
// CTA 0 also stores the ids and weights where the router would have. That work is the CTA's head, before stream_begin();
// it takes the router's ticket, its last CTA's loads of the logits and its softmax + top-k off the attention block's
// chain (docs/kernels.md, "Persistent launches").
// Memory traffic: the two kernels' (each weight once; the prefetch of a tile's rows is the same sectors; a down tile
// reads its token's k inter rows from L2) + one atomic per ticket, one per gate_up release (and per down tile with a
// follow-on GEMV), polling by one thread per waiting tile; a follow-on tile reads x (T * K * 2 bytes) from L2; before its
// wait each CTA prefetches its share of fetch_ahead_bytes of a later kernel's weights (evict_last), which stream during
// the head (docs/timing-model.md, "The head").
struct MoeExpertsGemvParams {
    MoeGateUpGemvParams gate_up;
    MoeDownGemvParams down;
    int* sync;               // [3 + slots]: next tile, exit ticket, gate_up tiles done per token ([2 + t]), down tiles done
                             // ([2 + slots]); zero on entry, left zero
    int tiles_per_cta;       // consecutive tickets each CTA takes (grid * tiles_per_cta >= the tiles; past them: no work)
    int next_tiles;          // follow-on GEMV tiles (8 rows each), 0 for none; bf16 only, tokens <= 4
    GemvParams next;         // the follow-on GEMV (split_k 1; its norm_weight set for the prologue); unused when next_tiles is 0
    const void* fetch_ahead; // bf16 only: weights of a later kernel (the next layer's qkv) fetched into L2 with evict_last
    long long fetch_ahead_bytes; //   before the wait, so the DRAM streams them during the head; null / 0: none
    const float* router_logits;  // [T, router_experts] or null: the router wrote only its logits (the attention block's
                             //   router tiles, topk_by_consumer); each CTA runs the softmax + top-k itself
                             //   (router_topk_select), and CTA 0 also stores the ids and weights in gate_up.topk_ids /
                             //   down.topk_weights as the router would have
    int router_experts;      // E
    int router_norm_topk_prob;
};

// The CTAs per SM __launch_bounds__ makes ptxas fit (bf16: at most 64 registers). The launcher's grid is one wave of at most
// 5 per SM (MoeLaunchers.ExpertsGemvGridCtasPerSm): bf16's 64 registers then leave room for the next block's CTA.
#define EXPERTS_MIN_CTAS_PER_SM 8
#define EXPERTS_QUANT_MIN_CTAS_PER_SM 5
// The most slots (tokens x k) a launch takes: the launcher's 8 tokens of top-16, one id per thread.
#define EXPERTS_MAX_SLOTS 128
static_assert(EXPERTS_MAX_SLOTS <= GEMV_THREADS, "one slot's id per thread");

// The counts of moe_experts_gemv's tiles: gate_up tiles per slot (moe_gate_up_gemv's grid x) and down tiles per slot
// (moe_down_gemv's).
__device__ __forceinline__ int experts_gu_blocks(const MoeExpertsGemvParams& p) { return (p.gate_up.inter_size + 7) / 8; }
__device__ __forceinline__ int experts_dn_blocks(const MoeExpertsGemvParams& p)
{
    const int R = experts_down_rows(p.down.top_k);
    return (p.down.hidden_size + R - 1) / R;
}
__device__ __forceinline__ int experts_tokens(const MoeExpertsGemvParams& p) { return p.gate_up.slots / p.gate_up.top_k; }

// Ticket `tile` of moe_experts_gemv decoded once: a gate_up tile (slot, block of 8 intermediate columns), a down tile
// (token, block of experts_down_rows(k) rows of its k slots), a follow-on GEMV tile (block of 8 rows) or a ticket past the
// last tile.
enum ExpertsTileKind { EXPERTS_GATE_UP, EXPERTS_DOWN, EXPERTS_NEXT, EXPERTS_NONE };
struct ExpertsTile {
    int kind;                // ExpertsTileKind
    int unit;                // the slot of a gate_up tile, the token of a down tile
    int block;
};
__device__ __forceinline__ ExpertsTile experts_tile(const MoeExpertsGemvParams& p, int tile)
{
    const int gu_blocks = experts_gu_blocks(p), dn_blocks = experts_dn_blocks(p), gu_tiles = gu_blocks * p.gate_up.slots;
    const int dn_tiles = dn_blocks * experts_tokens(p);
    ExpertsTile t;
    if (tile < gu_tiles) {
        t.kind = EXPERTS_GATE_UP;
        t.unit = tile / gu_blocks;
        t.block = tile - t.unit * gu_blocks;
    } else if (tile < gu_tiles + dn_tiles) {
        const int d = tile - gu_tiles;
        t.kind = EXPERTS_DOWN;
        t.unit = d / dn_blocks;
        t.block = d - t.unit * dn_blocks;
    } else if (tile < gu_tiles + dn_tiles + p.next_tiles) {
        t.kind = EXPERTS_NEXT;
        t.unit = 0;
        t.block = tile - gu_tiles - dn_tiles;
    } else {
        t.kind = EXPERTS_NONE;
        t.unit = t.block = 0;
    }
    return t;
}

// L2 prefetch of a tile's weight rows (its expert is known: the router ran before; ids: the slots' expert ids, staged in
// shared memory): a gate_up tile's 8 gate and 8 up rows, a down tile's experts_down_rows(k) rows of each of its token's
// k experts, a follow-on tile's 8 rows. Scales are left to the loads (a few bytes per row).
template <int QF>
__device__ __forceinline__ void experts_prefetch_tile(const MoeExpertsGemvParams& p, const int* ids, ExpertsTile t)
{
    if (t.kind == EXPERTS_GATE_UP) {
        const int H = p.gate_up.hidden_size, I = p.gate_up.inter_size;
        const size_t row_bytes = QF == 0 ? (size_t)H * 2 : (size_t)H / QF_WPB(QF);
        const size_t r0 = (size_t)ids[t.unit] * 2 * I + (size_t)t.block * 8, n = (size_t)min(8, I - t.block * 8);
        prefetch_l2_rows(p.gate_up.gate_up, r0, r0 + n, row_bytes, 0, row_bytes);
        prefetch_l2_rows(p.gate_up.gate_up, r0 + I, r0 + I + n, row_bytes, 0, row_bytes);
    } else if (t.kind == EXPERTS_DOWN) {
        const int H = p.down.hidden_size, I = p.down.inter_size, k = p.down.top_k, R = experts_down_rows(k);
        const size_t row_bytes = QF == 0 ? (size_t)I * 2 : (size_t)I / QF_WPB(QF);
        const int h0 = t.block * R, h1 = min(H, h0 + R);
        for (int j = 0; j < k; j++) {
            const size_t e = (size_t)ids[t.unit * k + j];
            prefetch_l2_rows(p.down.down, e * H + h0, e * H + h1, row_bytes, 0, row_bytes);
        }
    } else if (QF == 0 && t.kind == EXPERTS_NEXT) {
        const size_t row_bytes = (size_t)p.next.k * 2, r0 = (size_t)t.block * 8;
        prefetch_l2_rows(p.next.w, r0, min(r0 + 8, (size_t)p.next.n), row_bytes, 0, row_bytes);
    }
}

// The exit ticket is take_exit_ticket(&p.sync[1]) (common.cuh); the CTA that takes the last one has also taken its tiles.
__device__ __forceinline__ void experts_exit_reset(const MoeExpertsGemvParams& p, int ticket)
{
    if (ticket != (int)gridDim.x - 1) return;
    p.sync[0] = 0;
    for (int t = 0; t < experts_tokens(p); t++) p.sync[2 + t] = 0;   // the tokens' gate_up counters
    p.sync[2 + p.gate_up.slots] = 0;                               // the down tiles' (a follow-on GEMV's wait)
    __threadfence();
    p.sync[1] = 0;
}

// The router's softmax + top-k of every token from its logits (p.router_logits), warp w taking tokens w, w + 4, ...:
// ids_s / w_s get the slots' expert ids and weights; CTA 0 also stores them in the workspace's places.
// E <= 128 (four experts per lane): the eight-per-lane sort's 64-bit keys spilled 12 bytes at sm_90 under the launch's
// 64-register bound, so the launcher refuses more.
__device__ __forceinline__ void experts_route(const MoeExpertsGemvParams& p, int* ids_s, float* w_s)
{
    const int lane = threadIdx.x & 31, k = p.gate_up.top_k, E = p.router_experts;
    for (int t = threadIdx.x >> 5; t < experts_tokens(p); t += GEMV_THREADS / 32) {
        int e;
        float w;
        router_topk_select<4>(p.router_logits + (size_t)t * E, E, k, p.router_norm_topk_prob, e, w);   // E <= 128 (the launcher's check)
        if (lane < k) {
            ids_s[t * k + lane] = e;
            w_s[t * k + lane] = w;
            if (blockIdx.x == 0) {                         // the workspace's ids and weights, as the router would store them
                const_cast<int*>(p.gate_up.topk_ids)[t * k + lane] = e;
                const_cast<float*>(p.down.topk_weights)[t * k + lane] = w;
            }
        }
    }
}

template <int QF>   // 0: bf16; QF_FP8 / QF_INT8 / QF_INT4: the quantized tiles
__device__ __forceinline__ void moe_experts_gemv_body(const MoeExpertsGemvParams& p)
{
    __shared__ int first_tile_s;
    __shared__ int ids_s[EXPERTS_MAX_SLOTS];                // the slots' expert ids, read once
    __shared__ float w_s[EXPERTS_MAX_SLOTS];                // their routing weights (the down tiles' combine), read once
    // A later kernel's weights (its addresses known before the router ran), the grid's share each: in flight while the
    // CTA waits and takes its tickets and ids, the head in which its own stream cannot begin (docs/timing-model.md, "The
    // head"). Weights only: nothing of the step writes them. bf16 only: the loop's registers made the int4 variant spill
    // at sm_90 (the launcher refuses a fetch-ahead for the quantized ones).
    if constexpr (QF == 0) prefetch_l2_evict_last_range(p.fetch_ahead, p.fetch_ahead_bytes);
    pdl_wait();                                            // the expert ids and x are the previous kernels'
    pdl_launch_dependents();
    // The CTA's tiles and the expert ids in one round trip: one atomic takes tiles_per_cta consecutive tickets (a tile
    // waits only on lower ones, so taking them together keeps the order progress needs), and the ids' loads are issued
    // before it, their results stored after it.
    // bf16 only (the launcher refuses router_logits otherwise): inlined into the int4 variant, the top-k spilled 8 bytes
    // at sm_90
    if (QF == 0 && p.router_logits) {
        // The router left the softmax + top-k to the experts (the attention block's router tiles): warp w runs tokens w,
        // w + 4, ... from their logits, in the round trip of the ticket's atomic; router_topk_select is the router's own
        // code, so the ids and weights are its bits. This is the CTA's head (before stream_begin()).
        if (threadIdx.x == 0) first_tile_s = atomicAdd(&p.sync[0], p.tiles_per_cta);
        experts_route(p, ids_s, w_s);
    } else {
        const bool slot = threadIdx.x < p.gate_up.slots;
        const int id = slot ? p.gate_up.topk_ids[threadIdx.x] : 0;
        const float w = slot ? p.down.topk_weights[threadIdx.x] : 0.f;
        if (threadIdx.x == 0) first_tile_s = atomicAdd(&p.sync[0], p.tiles_per_cta);
        if (slot) {
            ids_s[threadIdx.x] = id;
            w_s[threadIdx.x] = w;
        }
    }
    __syncthreads();
    stream_begin();                                        // the weights' addresses are known from here on
    ExpertsTile cur = experts_tile(p, first_tile_s);
    bool exited = false;                                   // the exit ticket taken (take_exit_ticket: thread 0's)
    int exit_ticket = -1;
    for (int k = 0; k < p.tiles_per_cta; k++) {
        // the next tile's weights go towards L2 now, so the DRAM stream does not wait for this tile's end (a CTA past the
        // last tile has none; its ticket is read again from shared memory, so no register holds it across the tiles)
        ExpertsTile next;
        next.kind = EXPERTS_NONE;
        if (k + 1 < p.tiles_per_cta && cur.kind != EXPERTS_NONE) next = experts_tile(p, first_tile_s + k + 1);
        if (k == 0 && cur.kind == EXPERTS_DOWN) experts_prefetch_tile<QF>(p, ids_s, cur);   // a later tile's came with the tile before
        experts_prefetch_tile<QF>(p, ids_s, next);
        if (cur.kind == EXPERTS_GATE_UP) {
            const bool last = next.kind == EXPERTS_NONE;
            if constexpr (QF == 0) gate_up_tile(p.gate_up, ids_s[cur.unit], cur.unit, cur.block, last);
            else gate_up_tile_quant<QF>(p.gate_up, ids_s[cur.unit], cur.unit, cur.block, last);
            // The CTA's last tile: its exit ticket before the release (whose fence orders the two). A down tile of this
            // token waits for the release and takes its own exit ticket after that, so this one is never the last and
            // nothing waits for its result (exit_ticket stays -1).
            if (last && threadIdx.x == 0) atomicAdd(&p.sync[1], 1);
            exited |= last;
            counter_release(&p.sync[2 + cur.unit / p.gate_up.top_k]);   // its barrier: every column of the tile written
        } else if (cur.kind == EXPERTS_DOWN) {
            counter_wait(&p.sync[2 + cur.unit], experts_gu_blocks(p) * p.gate_up.top_k);   // the token's k slots' gate_up tiles
            // The CTA's last tile, and no follow-on tiles to release for: that wait was its last counter access, so it takes
            // its exit ticket now and the ticket's round trip runs beside the tile's stream instead of after it.
            const bool last = next.kind == EXPERTS_NONE;
            if (last && p.next_tiles == 0) {
                if (threadIdx.x == 0) exit_ticket = take_exit_ticket(&p.sync[1]);
                exited = true;
            }
            if constexpr (QF == 0) down_tile_token(p.down, ids_s, w_s, cur.unit, cur.block, last);
            else down_tile_token_quant<QF>(p.down, ids_s, w_s, cur.unit, cur.block, last);
            // release for the follow-on tiles: every row of the tile, its combine included, written
            if (p.next_tiles > 0) counter_release(&p.sync[2 + p.gate_up.slots]);
        } else if (cur.kind == EXPERTS_NEXT) {
            if constexpr (QF == 0) {
                extern __shared__ uint4 next_x_s[];        // [T][K + GEMV_MMA_PAD] bf16: the staged, normalised x
                __shared__ float next_red_s[4][8][8], next_nred_s[GEMV_MMA_MAX_TOKENS][32], next_inv_s[GEMV_MMA_MAX_TOKENS];
                counter_wait(&p.sync[2 + p.gate_up.slots], experts_dn_blocks(p) * experts_tokens(p));
                gemv_mma_tile<GEMV_THREADS / 32, true>(p.next, cur.block * 8, 1, GEMV_THREADS / 32, next_x_s, next_red_s, next_nred_s, next_inv_s);
            }
        }
        __syncthreads();                                   // the tile's shared memory (staged row) is free
        cur = next;
    }
    if (threadIdx.x == 0) {
        if (!exited) {
            tail_begin();                                  // the CTA's share of the stream is done
            exit_ticket = take_exit_ticket(&p.sync[1]);
        }
        experts_exit_reset(p, exit_ticket);
    }
}

// The launch bounds' minimum CTAs per SM is what the launcher sizes the one-wave grid by (MoeLaunchers.ExpertsGemvGrid).
// bf16: 8 (at most 64 registers; ptxas takes 56 on sm_90 either way). The quantized variants: 5 (at most 102 registers):
// without a minimum, ptxas kept them near the separate kernels' 64-80 registers and spilled a few bytes (sm_80 int4,
// sm_90 int8); 5 CTAs of 4 warps per SM, each with its next tile's rows prefetched, still keep far more bytes in flight
// than the DRAM's latency needs.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, EXPERTS_MIN_CTAS_PER_SM) moe_experts_gemv(MoeExpertsGemvParams p) { moe_experts_gemv_body<0>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, EXPERTS_QUANT_MIN_CTAS_PER_SM) moe_experts_gemv_fp8(MoeExpertsGemvParams p) { moe_experts_gemv_body<QF_FP8>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, EXPERTS_QUANT_MIN_CTAS_PER_SM) moe_experts_gemv_int8(MoeExpertsGemvParams p) { moe_experts_gemv_body<QF_INT8>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, EXPERTS_QUANT_MIN_CTAS_PER_SM) moe_experts_gemv_int4(MoeExpertsGemvParams p) { moe_experts_gemv_body<QF_INT4>(p); }

extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_gate_up_gemv_fp8(MoeGateUpGemvParams p) { moe_gate_up_gemv_quant<QF_FP8>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_gate_up_gemv_int8(MoeGateUpGemvParams p) { moe_gate_up_gemv_quant<QF_INT8>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_down_gemv_fp8(MoeDownGemvParams p) { moe_down_gemv_quant<QF_FP8>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_down_gemv_int8(MoeDownGemvParams p) { moe_down_gemv_quant<QF_INT8>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_gate_up_gemv_int4(MoeGateUpGemvParams p) { moe_gate_up_gemv_quant<QF_INT4>(p); }
extern "C" __global__ void __launch_bounds__(GEMV_THREADS) moe_down_gemv_int4(MoeDownGemvParams p) { moe_down_gemv_quant<QF_INT4>(p); }
