// early_route.cu: early routing (docs/kernels.md, "Early routing"; why, and what the timing model says it buys, in
// docs/timing-model.md, section 7): a MoE layer's experts' ids from the attention's output, before o_proj, the residual
// add and the router's norm have run, as a hint for prefetching the experts' weights. It never replaces the router.
//
//   The router's logits are W_r (g * x') / rms(x') with x' = x + W_o a (x: the layer's input, a: the attention's output,
//   g: the post-attention norm weight). Up to the positive factor 1 / rms(x') of each token, which the top-k ignores,
//   they are   u = W_r (g * x) + M a   with the folded router   M = W_r diag(g) W_o   ([E, Q], made once at load).
//   u does not see the model's bf16 roundings of x' and of the normed row (nor M's own): at a near tie its ids may differ
//   from the router's (then a prefetch is wasted; the step's results never change). The host reference:
//   src/Model/Reference/EarlyRouting.cs.
//
// moe_router_fold (load time, once per MoE layer): M[e, j] = bf16(sum_i (W_r[e, i] * g[i]) * W_o[i, j]), the product of two
//   bf16 exact in fp32, then fp32 fmas in i order. Grid (ceil(Q / 128), ceil(E / FOLD_ROWS)), 128 threads: thread x of
//   block (bx, by) owns column j = bx * 128 + x of the FOLD_ROWS rows by * FOLD_ROWS ..; per i it reads W_o[i, j] once
//   for all its rows (a warp: 64 contiguous bytes) and the rows' coefficients W_r[e, i] * g[i] from shared memory (staged
//   FOLD_CHUNK values of i at a time). Bytes: W_o once per row block (ceil(E / FOLD_ROWS) x H x Q x 2, from L2 after the
//   first), W_r and g once per column block, M once. A load-time kernel: plain and exact to read, not tuned.
// moe_early_route (decode, 1 <= T <= 4 tokens): u[t, e] for every expert, then each token's top-k ids.
//   Grid ceil(E / 8), 128 threads = 4 warps: warp w owns rows e = bx * 8 + 2w and + 1. For each row the lane streams its
//   16-byte chunks lane, lane + 32, ... of W_r's row with the same chunks of g and of x[t] (sum of (W_r * g) * x: the
//   product W_r * g exact in fp32), then of M's row with a[t]; a fixed shuffle tree sums the lanes, so u is
//   bit-reproducible. Lane 0 stores u (fp32) in logits[t, e]. Then the ticket of moe_router_topk: the CTA fences, thread
//   0 adds 1 to *counter, and the CTA that takes the last ticket runs the top-k (warp t: token t) and resets the counter
//   to 0 (zero before the first launch, left zero). The top-k is on u's values (no softmax: u is the logit times rms(x'),
//   so exp would underflow where the router's does not): 64-bit keys (orderable value bits) << 32 | ~e, a NaN counted
//   as -inf, so ties go to the lower expert, as the router's; lane l holds experts l, l + 32, ..., k rounds of a warp
//   arg-max (two redux.sync, as router_topk_select), the winner's key cleared. Bytes: W_r, g and M once (E x (H + Q) x 2
//   + H x 2), x and a once per CTA from L2, u once (T x E x 4), the ids (T x k x 4).
// Limits (the launcher checks them): H and Q multiples of 8, E <= 256, 1 <= k <= min(16, E), 1 <= T <= 4.
#include "moe_router.cuh"   // redux_max_u32

#define FOLD_THREADS 128
#define FOLD_ROWS 8
#define FOLD_CHUNK 256

struct MoeRouterFoldParams {
    const bf16* w_router;    // [E, H] (mlp.gate.weight)
    const bf16* norm_weight; // [H] (post_attention_layernorm.weight)
    const bf16* o_proj;      // [H, Q] (self_attn.o_proj.weight)
    bf16* folded;            // [E, Q] out: M
    int experts;             // E
    int hidden_size;         // H
    int q_dim;               // Q
};

extern "C" __global__ void __launch_bounds__(FOLD_THREADS) moe_router_fold(MoeRouterFoldParams p)
{
    __shared__ float coef_s[FOLD_ROWS][FOLD_CHUNK];
    const int j = blockIdx.x * FOLD_THREADS + threadIdx.x;
    const int e0 = blockIdx.y * FOLD_ROWS;
    float acc[FOLD_ROWS];
#pragma unroll
    for (int r = 0; r < FOLD_ROWS; r++) acc[r] = 0.f;
    for (int i0 = 0; i0 < p.hidden_size; i0 += FOLD_CHUNK) {
        const int n = min(FOLD_CHUNK, p.hidden_size - i0);
        __syncthreads();                                   // the chunk before is read by every thread
        for (int idx = threadIdx.x; idx < FOLD_ROWS * FOLD_CHUNK; idx += FOLD_THREADS) {
            const int r = idx / FOLD_CHUNK, i = idx - r * FOLD_CHUNK;
            coef_s[r][i] = e0 + r < p.experts && i < n
                ? bf16_to_f32(p.w_router[(size_t)(e0 + r) * p.hidden_size + i0 + i]) * bf16_to_f32(p.norm_weight[i0 + i])
                : 0.f;
        }
        __syncthreads();
        if (j < p.q_dim)
            for (int i = 0; i < n; i++) {
                const float w = bf16_to_f32(p.o_proj[(size_t)(i0 + i) * p.q_dim + j]);
#pragma unroll
                for (int r = 0; r < FOLD_ROWS; r++) acc[r] = fmaf(coef_s[r][i], w, acc[r]);
            }
    }
    if (j < p.q_dim)
#pragma unroll
        for (int r = 0; r < FOLD_ROWS; r++)
            if (e0 + r < p.experts) p.folded[(size_t)(e0 + r) * p.q_dim + j] = f32_to_bf16(acc[r]);
}

#define EARLY_THREADS 128
#define EARLY_WARPS (EARLY_THREADS / 32)
#define EARLY_ROWS_PER_WARP 2
#define EARLY_MAX_TOKENS 4
#define EARLY_MAX_E_PER_LANE 8

struct MoeEarlyRouteParams {
    const bf16* x;           // [T, H] the layer's input (the residual stream before the attention)
    const bf16* attn;        // [T, Q] the attention's output (o_proj's input)
    const bf16* w_router;    // [E, H]
    const bf16* norm_weight; // [H] the post-attention norm weight g
    const bf16* folded;      // [E, Q] M (moe_router_fold)
    float* logits;           // [T, E] out: u
    int* topk_ids;           // [T, k] out: each token's k experts by u, descending (ties: the lower expert)
    int* counter;            // [1] ticket, zero on entry, left zero
    int tokens;              // T
    int hidden_size;         // H
    int q_dim;               // Q
    int experts;             // E
    int top_k;               // k
};

// sum over the 8 elements of (w * g) * x, in element order (w * g exact in fp32)
__device__ __forceinline__ float dot_scaled_bf16x8(uint4 w, uint4 g, uint4 x, float s)
{
    const unsigned wv[4] = {w.x, w.y, w.z, w.w}, gv[4] = {g.x, g.y, g.z, g.w}, xv[4] = {x.x, x.y, x.z, x.w};
#pragma unroll
    for (int q = 0; q < 4; q++) {
        s = fmaf(bf16x2_lo(wv[q]) * bf16x2_lo(gv[q]), bf16x2_lo(xv[q]), s);
        s = fmaf(bf16x2_hi(wv[q]) * bf16x2_hi(gv[q]), bf16x2_hi(xv[q]), s);
    }
    return s;
}

// The orderable bits of a float (unsigned order = value order); NaN as -inf.
__device__ __forceinline__ unsigned early_order_bits(float v)
{
    const unsigned b = __float_as_uint(v == v ? v : -QC_INF);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Token t's top-k by u, run by one warp: lane j < k ends with the rank-j expert, which lane 0 stores.
__device__ void early_topk_token(const MoeEarlyRouteParams& p, int t)
{
    const int lane = threadIdx.x & 31;
    unsigned hi[EARLY_MAX_E_PER_LANE], lo[EARLY_MAX_E_PER_LANE];   // key = hi << 32 | lo; 0 = no expert
#pragma unroll
    for (int i = 0; i < EARLY_MAX_E_PER_LANE; i++) {
        const int e = lane + 32 * i;
        const bool real = e < p.experts;
        hi[i] = real ? early_order_bits(ld_cg_f32(p.logits + (size_t)t * p.experts + e)) : 0u;   // >= 0x007fffff when real
        lo[i] = real ? ~(unsigned)e : 0u;
    }
    for (int j = 0; j < p.top_k; j++) {
        // this lane's largest key
        unsigned bh = 0, bl = 0;
#pragma unroll
        for (int i = 0; i < EARLY_MAX_E_PER_LANE; i++)
            if (hi[i] > bh || (hi[i] == bh && lo[i] > bl)) { bh = hi[i]; bl = lo[i]; }
        const unsigned m = redux_max_u32(bh);                  // >= 1: k <= E leaves a candidate every round
        const unsigned m2 = redux_max_u32(bh == m ? bl : 0u);  // ~(the lowest expert holding that value)
        if (lane == 0) p.topk_ids[(size_t)t * p.top_k + j] = min((int)~m2, p.experts - 1);
#pragma unroll
        for (int i = 0; i < EARLY_MAX_E_PER_LANE; i++)
            if (lo[i] == m2 && hi[i] == m) { hi[i] = 0u; lo[i] = 0u; }   // keys are distinct: one lane clears one
    }
}

extern "C" __global__ void __launch_bounds__(EARLY_THREADS) moe_early_route(MoeEarlyRouteParams p)
{
    __shared__ int is_last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int hc = p.hidden_size >> 3, qc = p.q_dim >> 3;   // 16-byte chunks per row
#pragma unroll 1
    for (int r = 0; r < EARLY_ROWS_PER_WARP; r++) {
        const int e = blockIdx.x * (EARLY_WARPS * EARLY_ROWS_PER_WARP) + warp * EARLY_ROWS_PER_WARP + r;
        if (e >= p.experts) break;                          // warp-uniform
        float acc[EARLY_MAX_TOKENS] = {0.f, 0.f, 0.f, 0.f};
        const uint4* wr = reinterpret_cast<const uint4*>(p.w_router + (size_t)e * p.hidden_size);
        const uint4* g = reinterpret_cast<const uint4*>(p.norm_weight);
        for (int c = lane; c < hc; c += 32) {
            const uint4 w = wr[c], gw = g[c];
#pragma unroll
            for (int t = 0; t < EARLY_MAX_TOKENS; t++)
                if (t < p.tokens)
                    acc[t] = dot_scaled_bf16x8(w, gw, reinterpret_cast<const uint4*>(p.x + (size_t)t * p.hidden_size)[c], acc[t]);
        }
        const uint4* m = reinterpret_cast<const uint4*>(p.folded + (size_t)e * p.q_dim);
        for (int c = lane; c < qc; c += 32) {
            const uint4 w = m[c];
#pragma unroll
            for (int t = 0; t < EARLY_MAX_TOKENS; t++)
                if (t < p.tokens) acc[t] += dot_bf16x8(w, reinterpret_cast<const uint4*>(p.attn + (size_t)t * p.q_dim)[c]);
        }
#pragma unroll
        for (int t = 0; t < EARLY_MAX_TOKENS; t++)
            if (t < p.tokens) {
                const float u = warp_sum(acc[t]);
                if (lane == 0) p.logits[(size_t)t * p.experts + e] = u;
            }
    }
    // the ticket: the CTA that takes the last one sees every CTA's u (each fenced before its ticket)
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        is_last = atomicAdd(p.counter, 1) == (int)gridDim.x - 1;
    }
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    if (warp < p.tokens) early_topk_token(p, warp);
    if (threadIdx.x == 0) *p.counter = 0;
}
