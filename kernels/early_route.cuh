// early_route.cuh: early routing's device code (early_route.cu has the math, the thread mapping and the traffic), shared
// by early_route.cu's moe_early_route and persistent_attn_block's early-routing tiles (persistent_decode.cu), so both
// compute the same bits.
#pragma once
#include "moe_router.cuh"   // redux_max_u32

#define EARLY_THREADS 128
#define EARLY_WARPS (EARLY_THREADS / 32)
#define EARLY_MAX_TOKENS 4
#define EARLY_MAX_E_PER_LANE 8
#define EARLY_MAX_TOPK 16

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

// Token t's top-k by u, run by one warp with the router's selection (keys_topk, moe_router.cuh): lane l holds experts l,
// l + 32, ... (PL of them: 4 when E <= 128, else 8), each as the 64-bit key (u's orderable bits) << 32 | ~expert, 0 for
// no expert; u's bits of a real expert are >= 0x007fffff (-inf), so its key is never 0, and on exact ties the lower expert
// (the larger ~expert) wins. Lane j < k returns the rank-j expert (clamped to 0 .. E - 1).
template <int PL>
__device__ __forceinline__ int early_topk_select_n(const MoeEarlyRouteParams& p, int t)
{
    const int lane = threadIdx.x & 31;
    u64 key[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        key[i] = e < p.experts ? router_key((unsigned)~e, early_order_bits(ld_cg_f32(p.logits + (size_t)t * p.experts + e))) : 0ull;
    }
    int my_e = 0;
    keys_topk<PL>(key, p.top_k, [&](int j, unsigned, unsigned m2) { if (lane == j) my_e = (int)~m2; });
    return min(max(my_e, 0), p.experts - 1);
}

// Lane j < k of the calling warp gets token t's rank-j expert by u (u read through L2: other CTAs wrote it).
__device__ __forceinline__ int early_topk_select(const MoeEarlyRouteParams& p, int t)
{
    return p.experts <= 128 ? early_topk_select_n<4>(p, t)     // warp-uniform: E is the launch's
                            : early_topk_select_n<EARLY_MAX_E_PER_LANE>(p, t);
}

// Token t's top-k into topk_ids, by one warp.
__device__ __forceinline__ void early_topk_token(const MoeEarlyRouteParams& p, int t)
{
    const int e = early_topk_select(p, t), lane = threadIdx.x & 31;
    if (lane < p.top_k) p.topk_ids[(size_t)t * p.top_k + lane] = e;
}

// One row per warp: row block rb is rows rb * 4 .. + 3, warp w's row rb * 4 + w. Before the attention is done each warp
// copies the first `held` 16-byte chunks of its folded row into shared memory (m_s, `held` chunks per warp: 512, all of
// Qwen3-30B-A3B's Q = 4096, in moe_early_route; as many as the attention's tile buffer holds in persistent_attn_block),
// so that after the wait only the attention output's loads are round trips; chunks past `held` come from L2 then.
#define EARLY_ROWS_PER_CTA EARLY_WARPS
#define EARLY_HELD_CHUNKS 512
#define EARLY_UNROLL 8     // chunks of a lane's loads in flight at once

// Warp w's folded row, its first `held` chunks, into m_s[w * held ..]: lane l stores chunks l, l + 32, ... and later reads
// back only those, so no barrier is needed. Weights: they depend on nothing the step writes.
__device__ __forceinline__ void early_route_hold(const MoeEarlyRouteParams& p, int rb, uint4* m_s, int held)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, e = rb * EARLY_ROWS_PER_CTA + warp;
    if (e >= p.experts) return;                            // warp-uniform
    const int n = min(p.q_dim >> 3, held);
    const uint4* m = reinterpret_cast<const uint4*>(p.folded + (size_t)e * p.q_dim);
    uint4* dst = m_s + (size_t)warp * held;
#pragma unroll EARLY_UNROLL
    for (int c = lane; c < n; c += 32) dst[c] = m[c];
}

// An x tile's router rows (row block rb: rows rb * 4 .. + 3) into L2 before its wait (sm_90; weights: nothing the step
// writes), so that after it only x's loads reach past L2.
__device__ __forceinline__ void early_route_prefetch_x(const MoeEarlyRouteParams& p, int rb)
{
    const size_t row = (size_t)p.hidden_size * 2, r0 = (size_t)rb * EARLY_ROWS_PER_CTA;
    prefetch_l2_rows(p.w_router, r0, min((size_t)p.experts, r0 + EARLY_ROWS_PER_CTA), row, 0, row);
}

// The x part of u, W_r (g * x), into acc[t]: x is the layer's input, so in persistent_attn_block this runs in x tiles
// beside the qkv tiles and its round trips are off the step's chain.
__device__ __forceinline__ void early_route_xpart(const MoeEarlyRouteParams& p, int rb, float (&acc)[EARLY_MAX_TOKENS])
{
    const int lane = threadIdx.x & 31, e = rb * EARLY_ROWS_PER_CTA + (threadIdx.x >> 5);
#pragma unroll
    for (int t = 0; t < EARLY_MAX_TOKENS; t++) acc[t] = 0.f;
    if (e >= p.experts) return;                            // warp-uniform
    const int hc = p.hidden_size >> 3;
    const uint4* wr = reinterpret_cast<const uint4*>(p.w_router + (size_t)e * p.hidden_size);
    const uint4* g = reinterpret_cast<const uint4*>(p.norm_weight);
#pragma unroll 4
    for (int c = lane; c < hc; c += 32) {
        const uint4 w = wr[c], gw = g[c];
#pragma unroll
        for (int t = 0; t < EARLY_MAX_TOKENS; t++)
            if (t < p.tokens)
                acc[t] = dot_scaled_bf16x8(w, gw, reinterpret_cast<const uint4*>(p.x + (size_t)t * p.hidden_size)[c], acc[t]);
    }
}

// The x part summed over the warp's lanes (a fixed shuffle tree): v[t] in every lane.
__device__ __forceinline__ void early_route_sum_x(const float (&acc)[EARLY_MAX_TOKENS], float (&v)[EARLY_MAX_TOKENS])
{
#pragma unroll
    for (int t = 0; t < EARLY_MAX_TOKENS; t++) v[t] = warp_sum(acc[t]);
}

// persistent_attn_block's x tile: the summed x part of warp w's row into logits[t, e], where its early tile reads it back.
__device__ __forceinline__ void early_route_store_x(const MoeEarlyRouteParams& p, int rb, const float (&acc)[EARLY_MAX_TOKENS])
{
    const int lane = threadIdx.x & 31, e = rb * EARLY_ROWS_PER_CTA + (threadIdx.x >> 5);
    if (e >= p.experts) return;                            // warp-uniform
    float v[EARLY_MAX_TOKENS];
    early_route_sum_x(acc, v);
#pragma unroll
    for (int t = 0; t < EARLY_MAX_TOKENS; t++)
        if (t < p.tokens && lane == 0) p.logits[(size_t)t * p.experts + e] = v[t];
}

// persistent_attn_block's early tile, after its wait: the x part its x tile stored (through L2: another CTA wrote it).
__device__ __forceinline__ void early_route_load_x(const MoeEarlyRouteParams& p, int rb, float (&v)[EARLY_MAX_TOKENS])
{
    const int e = rb * EARLY_ROWS_PER_CTA + (threadIdx.x >> 5);
#pragma unroll
    for (int t = 0; t < EARLY_MAX_TOKENS; t++)
        v[t] = e < p.experts && t < p.tokens ? ld_cg_f32(p.logits + (size_t)t * p.experts + e) : 0.f;
}

// Once the attention's output is ready: for each token its M a part (the held chunks from shared memory, any past them
// from L2) summed over the lanes by a fixed shuffle tree, plus the summed x part v[t]; lane 0 stores u. The attention's
// output comes through L2 (other CTAs of the launch wrote it).
__device__ __forceinline__ void early_route_rows(const MoeEarlyRouteParams& p, int rb, const uint4* m_s, int held, const float (&v)[EARLY_MAX_TOKENS])
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, e = rb * EARLY_ROWS_PER_CTA + warp;
    if (e >= p.experts) return;                            // warp-uniform
    const int qc = p.q_dim >> 3;
    const uint4* m = reinterpret_cast<const uint4*>(p.folded + (size_t)e * p.q_dim);
    const uint4* mrow_s = m_s + (size_t)warp * held;
#pragma unroll
    for (int t = 0; t < EARLY_MAX_TOKENS; t++) {          // unrolled, so acc stays in registers
        if (t >= p.tokens) break;
        const uint4* a = reinterpret_cast<const uint4*>(p.attn + (size_t)t * p.q_dim);
        float s = 0.f;
#pragma unroll EARLY_UNROLL
        for (int c = lane; c < qc; c += 32) s += dot_bf16x8(c < held ? mrow_s[c] : m[c], __ldcg(a + c));
        const float u = v[t] + warp_sum(s);
        if (lane == 0) p.logits[(size_t)t * p.experts + e] = u;
    }
}

// After a CTA's rows (every thread calls it): the ticket on *p.counter over `ctas` row blocks; the CTA that takes the last
// one runs each token's top-k (warp t: token t) and resets the counter. Ends with the top-k's stores made (no barrier
// after them).
__device__ __forceinline__ void early_route_finish(const MoeEarlyRouteParams& p, int ctas, int& is_last_s)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        is_last_s = atomicAdd(p.counter, 1) == ctas - 1;
    }
    __syncthreads();
    if (!is_last_s) return;
    __threadfence();
    const int warp = threadIdx.x >> 5;
    if (warp < p.tokens) early_topk_token(p, warp);
    if (threadIdx.x == 0) *p.counter = 0;
}
