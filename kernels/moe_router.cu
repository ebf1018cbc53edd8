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
//   one is loaded before the norm, so the router weight's DRAM trip overlaps the x reads (L2). Logits reduce per CTA by a
//   fixed tree (warp shuffles, then the 8 warp sums in order), then the ticket on counters[0] elects the last CTA, whose
//   warp t runs the softmax + top-k of token t and resets the ticket. After its wait it also prefetches fetch_ahead_bytes
//   of fetch_ahead (the next layer's qkv weight) into L2 with evict_last, spread over the grid (docs/timing-model.md,
//   "Weights fetched ahead"). Bytes: E*H*2 (router weight, once) + E*T*H*2 (x,
//   from L2) + E*H*2 (norm weight, from L2) + T*H*2 (h) + T*E*4 + T*k*8.
#include "common.cuh"

#define ROUTER_WARPS 4
#define ROUTER_TOKENS 8
#define ROUTER_MAX_E_PER_LANE 8

struct MoeRouterParams {
    const bf16* hidden;      // [T, H]
    const bf16* w_gate;      // [E, H] (mlp.gate.weight)
    float* logits;           // [T, E] workspace: bf16-rounded logits as fp32
    int* counters;           // [ceil(T / 8)] workspace tickets, zero on entry, left zero on exit
    int* topk_ids;           // [T, k] expert ids, rank order (descending weight)
    float* topk_weights;     // [T, k] routing weights (fp32)
    bf16* h_out;             // [T, H] moe_router_norm_topk: the normalised rows, for the experts
    const bf16* norm_weight; // [H] moe_router_norm_topk: the post-attention RMSNorm weight
    const void* fetch_ahead; // moe_router_norm_topk: weights of a later kernel (the next layer's qkv GEMV) fetched into L2
    long long fetch_ahead_bytes; //   with evict_last while this latency-bound kernel leaves the DRAM idle; null / 0: none
    int tokens;              // T
    int hidden_size;         // H, multiple of 8
    int experts;             // E <= 256
    int top_k;               // k <= 16
    int norm_topk_prob;      // 1: renormalise the k weights to sum 1
    float eps;               // moe_router_norm_topk: RMSNorm epsilon
};

#define ROUTER_NORM_THREADS 256
#define ROUTER_NORM_WARPS (ROUTER_NORM_THREADS / 32)

__device__ __forceinline__ float ld_cg_f32(const float* p)
{
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}

// Softmax + top-k of one token, run by one warp. Lane l holds experts l, l+32, ..., (< E).
__device__ void router_topk_token(const MoeRouterParams& p, int t)
{
    const int lane = threadIdx.x & 31;
    float v[ROUTER_MAX_E_PER_LANE];
    float mx = -QC_INF;
#pragma unroll
    for (int i = 0; i < ROUTER_MAX_E_PER_LANE; i++) {
        const int e = lane + 32 * i;
        const float x = e < p.experts ? ld_cg_f32(p.logits + (size_t)t * p.experts + e) : -QC_INF;
        v[i] = x == x ? x : -QC_INF;   // NaN: -inf
        mx = fmaxf(mx, v[i]);
    }
    mx = warp_max(mx);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < ROUTER_MAX_E_PER_LANE; i++) {
        const int e = lane + 32 * i;
        v[i] = e < p.experts ? expf(v[i] - mx) : 0.f;
        sum += v[i];
    }
    sum = warp_sum(sum);
#pragma unroll
    for (int i = 0; i < ROUTER_MAX_E_PER_LANE; i++) {
        const float pr = v[i] / sum;
        v[i] = lane + 32 * i < p.experts ? (pr >= 0.f ? pr : 0.f) : -1.f;   // NaN probability: 0, still above -1 (taken / no expert)
    }

    // Lane j keeps the rank-j choice (no local-memory arrays); wsum adds the weights in rank order.
    float my_w = 0.f;
    int my_e = 0;
    float wsum = 0.f;
    for (int j = 0; j < p.top_k; j++) {
        // Lane-local best (lowest index wins ties since i ascends), then a warp arg-max on (value, -index).
        float bv = -2.f;
        int be = 0x7fffffff;
#pragma unroll
        for (int i = 0; i < ROUTER_MAX_E_PER_LANE; i++)
            if (v[i] > bv) { bv = v[i]; be = lane + 32 * i; }
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, off);
            const int oe = __shfl_xor_sync(0xffffffffu, be, off);
            if (ov > bv || (ov == bv && oe < be)) { bv = ov; be = oe; }
        }
        if (lane == j) { my_w = bv; my_e = be; }
        wsum += bv;
#pragma unroll
        for (int i = 0; i < ROUTER_MAX_E_PER_LANE; i++)
            if (lane + 32 * i == be) v[i] = -1.f;   // taken
    }
    if (lane < p.top_k) {
        // Every candidate now holds a probability >= 0 > -1, so be < E always; the clamp keeps even a future
        // mistake from indexing past the stacked expert weights.
        p.topk_ids[(size_t)t * p.top_k + lane] = min(max(my_e, 0), p.experts - 1);
        p.topk_weights[(size_t)t * p.top_k + lane] = p.norm_topk_prob ? my_w / wsum : my_w;
    }
}

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
    __shared__ float red_s[ROUTER_TOKENS][32];
    __shared__ float inv_s[ROUTER_TOKENS];
    __shared__ int is_last;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int e = blockIdx.x, nt = p.tokens;                 // nt <= ROUTER_TOKENS (the launcher checks)
    const int chunks = p.hidden_size >> 3;
    const uint4* wrow = reinterpret_cast<const uint4*>(p.w_gate + (size_t)e * p.hidden_size);
    const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
    const uint4 zero = make_uint4(0, 0, 0, 0);
    // Before pdl_wait() only weights (docs/kernels.md, "Programmatic dependent launch"): the expert's router row into L2,
    // and the first chunk of it and of the norm weight into registers; x, the logits and the ticket come after.
    prefetch_l2_rows(p.w_gate, e, e + 1, (size_t)p.hidden_size * 2, 0, (size_t)p.hidden_size * 2);
    const uint4 w0 = tid < chunks ? __ldg(&wrow[tid]) : zero;     // issued first: overlaps the norm below
    const uint4 n0 = tid < chunks ? __ldg(&nw[tid]) : zero;
    pdl_wait();
    pdl_launch_dependents();
    prefetch_l2_evict_last_range(p.fetch_ahead, p.fetch_ahead_bytes);   // docs/timing-model.md, "Weights fetched ahead"

    // Inverse RMS of each token's row in add_rmsnorm_bf16's layout (bitwise its h).
    rms_inv_rows<ROUTER_TOKENS, ROUTER_NORM_WARPS>(p.hidden, (size_t)p.hidden_size, nt, p.hidden_size, p.eps, red_s, inv_s);

    // Logits: h chunk by chunk (CTA 0 stores it), dotted with the expert's row.
    float acc[ROUTER_TOKENS];
#pragma unroll
    for (int t = 0; t < ROUTER_TOKENS; t++) acc[t] = 0.f;
    for (int c = tid; c < chunks; c += ROUTER_NORM_THREADS) {
        const uint4 wc = c == tid ? w0 : __ldg(&wrow[c]);
        const uint4 nc = c == tid ? n0 : __ldg(&nw[c]);
#pragma unroll
        for (int t = 0; t < ROUTER_TOKENS; t++) {
            if (t < nt) {
                const uint4 x = reinterpret_cast<const uint4*>(p.hidden + (size_t)t * p.hidden_size)[c];
                const float inv = inv_s[t];
                uint4 h;
                h.x = norm_bf16x2(x.x, nc.x, inv);
                h.y = norm_bf16x2(x.y, nc.y, inv);
                h.z = norm_bf16x2(x.z, nc.z, inv);
                h.w = norm_bf16x2(x.w, nc.w, inv);
                if (e == 0) reinterpret_cast<uint4*>(p.h_out + (size_t)t * p.hidden_size)[c] = h;
                acc[t] += dot_bf16x8(wc, h);
            }
        }
    }
    __syncthreads();                                          // red_s is reused
#pragma unroll
    for (int t = 0; t < ROUTER_TOKENS; t++) {
        const float v = warp_sum(acc[t]);
        if (lane == 0 && t < nt) red_s[t][warp] = v;
    }
    __syncthreads();
    if (warp < nt) {
        float v = lane < ROUTER_NORM_WARPS ? red_s[warp][lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) p.logits[(size_t)warp * p.experts + e] = round_bf16(v);
    }

    // Ticket: the last CTA does the softmax + top-k of every token.
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(&p.counters[0], 1) == (int)gridDim.x - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    if (warp < nt) router_topk_token(p, warp);
    if (tid == 0) p.counters[0] = 0;
}
