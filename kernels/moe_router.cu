// moe_router.cu: the MoE router of Qwen3-MoE, fused into one kernel (docs/architecture.md, "A decode step": the MoE router).
//
//   logits[t, e] = bf16(sum_h hidden[t, h] * w_gate[e, h])     fp32 accumulate, bf16 round (nn.Linear output)
//   p[t, :]      = softmax_fp32(logits[t, :]) over all E        stable (max subtracted)
//   (w, idx)     = top-k of p[t, :], values descending; exact ties go to the LOWER expert index
//                  (deterministic: the arg-max key is (value, -index), compared exactly)
//   w           /= sum(w) in fp32                               only when norm_topk_prob
//   Non-finite logits never make an invalid id: a NaN logit counts as -inf (never chosen over a number), a NaN
//   probability (all logits -inf/NaN, or an +inf logit: inf - inf) counts as 0, so the k ids are always k distinct
//   experts in [0, E) (with garbage weights, NaN after renormalisation, which the forward's debug check reports).
//
// Thread mapping: grid (ceil(E / 4), ceil(T / 8)), 128 threads = 4 warps. Warp w of block (bx, by) owns
// expert row e = bx*4 + w and the <= 8 tokens of token block by: the lane streams its 16-byte chunks of
// the router row once and multiplies each by the same chunk of every token (hidden rows are re-read from
// L1/L2), lane partials are summed by a fixed shuffle tree, so every logit is bit-reproducible.
// Fusion of the top-k: each block stores its logits, fences, and takes a ticket (an integer atomic on
// counters[by]); the block that takes the last ticket of its token block runs softmax + top-k for those
// tokens (one warp per token) and resets the counter to 0. The integer ticket only decides WHICH block
// does the top-k, never the values, so results are deterministic. counters[] must be zero before the
// first launch (cleared once with the workspace, MoeLaunchers.ClearTickets; no memset per launch). Bytes moved: E*H*2 (router weight, once per token block)
// + T*H*2 (hidden, once per expert block from cache) + T*E*4 (logits) + T*k*8 (outputs).
// Limits: E <= 256 (8 probabilities per lane), 1 <= k <= min(16, E), H a multiple of 8.
// Variants: moe_router_topk (prefill, and the oracle of the next one);
// moe_router_norm_topk (decode, T <= 8; docs/kernels.md, "Fusions"): the post-attention RMSNorm, the router and the
//   top-k in one kernel spread over E CTAs of 256 threads (one expert row each, every SM busy). hidden is then the
//   residual stream x; every CTA normalises the T rows itself, h = bf16(norm_weight * bf16(x * rsqrt(mean(x^2) + eps))),
//   summing the squares in add_rmsnorm_bf16's thread layout and tree (so h is bitwise that kernel's output); CTA 0 also
//   writes h for the experts. Each thread owns 16-byte chunks tid, tid + 256, ... of the expert's router row; the first
//   one is loaded before the norm, so the router weight's DRAM trip overlaps the x reads (L2). The kernel branches once on
//   T to a body compiled for that many tokens; with H <= 2048 a thread's norm chunk is its logit chunk, so x is loaded
//   once (every row in one round trip) and kept in registers. Logits reduce per CTA by a fixed tree (warp shuffles, then a
//   shuffle tree over the 8 warp sums), then the ticket on counters[0] elects the last CTA, whose warp t runs the
//   softmax + top-k of token t (64-bit keys, a sorted head per lane, two redux.sync a round: router_topk_token) and resets
//   the ticket. After its wait it also prefetches fetch_ahead_bytes of fetch_ahead (the next layer's qkv weight) into L2
//   with evict_last, spread over the grid (docs/timing-model.md, "Weights fetched ahead"). Bytes: E*H*2 (router weight,
//   once) + E*T*H*2 (x,
//   from L2) + E*H*2 (norm weight, from L2) + T*H*2 (h) + T*E*4 + T*k*8.
#include "moe_router.cuh"

extern "C" __global__ void __launch_bounds__(ROUTER_WARPS * 32) moe_router_topk(MoeRouterParams p)
{
    __shared__ int is_last;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int e = blockIdx.x * ROUTER_WARPS + warp;
    const int t0 = blockIdx.y * ROUTER_TOKENS;
    const int nt = min(ROUTER_TOKENS, p.tokens - t0);

    if (e < p.experts) {
        float acc[ROUTER_TOKENS];
#pragma unroll
        for (int i = 0; i < ROUTER_TOKENS; i++) acc[i] = 0.f;
        const uint4* w = reinterpret_cast<const uint4*>(p.w_gate + (size_t)e * p.hidden_size);
        const int chunks = p.hidden_size >> 3;
        for (int c = lane; c < chunks; c += 32) {
            const uint4 wc = __ldg(&w[c]);
#pragma unroll
            for (int i = 0; i < ROUTER_TOKENS; i++)
                if (i < nt) acc[i] += dot_bf16x8(wc, __ldg(reinterpret_cast<const uint4*>(p.hidden + (size_t)(t0 + i) * p.hidden_size) + c));
        }
#pragma unroll
        for (int i = 0; i < ROUTER_TOKENS; i++) {
            const float s = warp_sum(acc[i]);
            if (lane == 0 && i < nt) p.logits[(size_t)(t0 + i) * p.experts + e] = round_bf16(s);
        }
    }

    // Ticket: the last block of this token block does the softmax + top-k.
    tail_begin();
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(&p.counters[blockIdx.y], 1) == (int)gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    for (int i = warp; i < nt; i += ROUTER_WARPS) router_topk_token(p, t0 + i);
    if (threadIdx.x == 0) p.counters[blockIdx.y] = 0;
}

extern "C" __global__ void __launch_bounds__(ROUTER_NORM_THREADS) moe_router_norm_topk(MoeRouterParams p)
{
    const int e = blockIdx.x;
    __shared__ float red_s[ROUTER_TOKENS][32];
    __shared__ float logit_s[ROUTER_TOKENS][ROUTER_NORM_WARPS];
    __shared__ float inv_s[ROUTER_TOKENS];
    __shared__ int is_last;
    // Before pdl_wait() only weights (docs/kernels.md, "Programmatic dependent launch"): the expert's router row into L2,
    // and the first chunk of it and of the norm weight into registers; x, the logits and the ticket come after.
    prefetch_l2_rows(p.w_gate, e, e + 1, (size_t)p.hidden_size * 2, 0, (size_t)p.hidden_size * 2);
    uint4 w0[1], n0[1];
    router_norm_hold<ROUTER_NORM_THREADS>(p, e, w0, n0);
    pdl_wait();
    pdl_launch_dependents();
    prefetch_l2_evict_last_range(p.fetch_ahead, p.fetch_ahead_bytes);   // docs/timing-model.md, "Weights fetched ahead"
    switch (p.tokens) {                                        // 1 <= T <= ROUTER_TOKENS (the launcher checks)
#define ROUTER_CASE(n) router_norm_tile<n, ROUTER_NORM_THREADS, false>(p, e, w0, n0, red_s, logit_s, inv_s, is_last, p.counters, gridDim.x)
    case 1: ROUTER_CASE(1); break;
    case 2: ROUTER_CASE(2); break;
    case 3: ROUTER_CASE(3); break;
    case 4: ROUTER_CASE(4); break;
    case 5: ROUTER_CASE(5); break;
    case 6: ROUTER_CASE(6); break;
    case 7: ROUTER_CASE(7); break;
    default: ROUTER_CASE(8); break;
#undef ROUTER_CASE
    }
}
