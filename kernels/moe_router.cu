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

__device__ __forceinline__ unsigned redux_max_u32(unsigned v)
{
    unsigned r;
    asm volatile("redux.sync.max.u32 %0, %1, 0xffffffff;" : "=r"(r) : "r"(v));
    return r;
}

// A 64-bit key from its halves, and back (one mov each).
__device__ __forceinline__ u64 router_key(unsigned lo, unsigned hi)
{
    u64 r;
    asm("mov.b64 %0, {%1, %2};" : "=l"(r) : "r"(lo), "r"(hi));
    return r;
}

__device__ __forceinline__ void router_key_halves(u64 k, unsigned& lo, unsigned& hi)
{
    asm("mov.b64 {%0, %1}, %2;" : "=r"(lo), "=r"(hi) : "l"(k));
}

// Orders a and b descending (a = the larger).
__device__ __forceinline__ void router_cmpx(u64& a, u64& b)
{
    const u64 hi = max(a, b), lo = min(a, b);
    a = hi;
    b = lo;
}

// Softmax + top-k of one token, run by one warp. Lane l holds experts l, l+32, ..., (< E): PL of them, 4 when E <= 128
// (Qwen3-30B-A3B: half the loads, exps and keys of 8, on the router's critical warp), else 8. The keys a lane would hold
// past E are 0, which sort last and never win a round, so both widths give the same bits for E <= 128.
// The top-k works on 64-bit keys (probability bits + 1) << 32 | ~expert, 0 for no expert: with every probability >= +0,
// unsigned key order is the order (value descending, index ascending on exact ties), so the arg-max of a round is the
// largest key. Each lane sorts its PL keys once (a 5- or 19-comparator network); a round takes the warp maximum of the lanes'
// heads in two redux.sync steps (the value bits, then among the lanes holding that value the largest ~expert, i.e. the
// lowest expert) and the winning lane shifts its keys up. Keys are distinct, so every round picks exactly one expert.
template <int PL>
__device__ void router_topk_token_n(const MoeRouterParams& p, int t)
{
    static_assert(PL == 4 || PL == ROUTER_MAX_E_PER_LANE, "4 or 8 experts per lane");
    const int lane = threadIdx.x & 31;
    float v[PL];
    float mx = -QC_INF;
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        const float x = e < p.experts ? ld_cg_f32(p.logits + (size_t)t * p.experts + e) : -QC_INF;
        v[i] = x == x ? x : -QC_INF;   // NaN: -inf
        mx = fmaxf(mx, v[i]);
    }
    mx = warp_max(mx);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        v[i] = e < p.experts ? expf(v[i] - mx) : 0.f;
        sum += v[i];
    }
    sum = warp_sum(sum);
    u64 key[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        const float pr = v[i] / sum;
        const unsigned bits = __float_as_uint(pr > 0.f ? pr : 0.f);   // NaN probability: 0 (still a candidate)
        key[i] = e < p.experts ? router_key((unsigned)~e, bits + 1) : 0ull;
    }
    if constexpr (PL == 4) {
        router_cmpx(key[0], key[1]); router_cmpx(key[2], key[3]);
        router_cmpx(key[0], key[2]); router_cmpx(key[1], key[3]);
        router_cmpx(key[1], key[2]);
    } else {
        router_cmpx(key[0], key[2]); router_cmpx(key[1], key[3]); router_cmpx(key[4], key[6]); router_cmpx(key[5], key[7]);
        router_cmpx(key[0], key[4]); router_cmpx(key[1], key[5]); router_cmpx(key[2], key[6]); router_cmpx(key[3], key[7]);
        router_cmpx(key[0], key[1]); router_cmpx(key[2], key[3]); router_cmpx(key[4], key[5]); router_cmpx(key[6], key[7]);
        router_cmpx(key[2], key[4]); router_cmpx(key[3], key[5]);
        router_cmpx(key[1], key[4]); router_cmpx(key[3], key[6]);
        router_cmpx(key[1], key[2]); router_cmpx(key[3], key[4]); router_cmpx(key[5], key[6]);
    }

    // Lane j keeps the rank-j choice (no local-memory arrays); wsum adds the weights in rank order.
    float my_w = 0.f;
    int my_e = 0;
    float wsum = 0.f;
    for (int j = 0; j < p.top_k; j++) {
        unsigned lo, hv;
        router_key_halves(key[0], lo, hv);
        const unsigned m = redux_max_u32(hv);                     // >= 1: k <= E leaves a candidate every round
        const unsigned m2 = redux_max_u32(hv == m ? lo : 0u);     // ~(the lowest expert holding that value)
        const float bv = __uint_as_float(m - 1);
        if (lane == j) { my_w = bv; my_e = (int)~m2; }
        wsum += bv;
        if (lo == m2) {                                           // this lane's head won: the next key moves up
#pragma unroll
            for (int i = 0; i < PL - 1; i++) key[i] = key[i + 1];
            key[PL - 1] = 0ull;
        }
    }
    if (lane < p.top_k) {
        // Every candidate holds a probability >= 0, so my_e < E always; the clamp keeps even a future mistake from
        // indexing past the stacked expert weights.
        p.topk_ids[(size_t)t * p.top_k + lane] = min(max(my_e, 0), p.experts - 1);
        p.topk_weights[(size_t)t * p.top_k + lane] = p.norm_topk_prob ? my_w / wsum : my_w;
    }
}

// One token's softmax + top-k at the narrowest width E allows (warp-uniform: E is the launch's).
__device__ void router_topk_token(const MoeRouterParams& p, int t)
{
    if (p.experts <= 4 * 32) router_topk_token_n<4>(p, t);
    else router_topk_token_n<ROUTER_MAX_E_PER_LANE>(p, t);
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

// The body of moe_router_norm_topk for NT tokens (a compile-time count: no guarded loops over absent tokens).
// The shared arrays are the kernel's (one set for all instantiations).
template <int NT>
__device__ __forceinline__ void router_norm_topk_body(const MoeRouterParams& p, uint4 w0, uint4 n0, float (*red_s)[32],
                                                      float (*logit_s)[ROUTER_NORM_WARPS], float* inv_s, int& is_last)
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int e = blockIdx.x;
    const int chunks = p.hidden_size >> 3;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float acc[NT];
    if (chunks <= ROUTER_NORM_THREADS) {
        // One chunk per thread (H <= 2048): add_rmsnorm_bf16's virtual thread tid sums exactly chunk tid, the same chunk this
        // thread dots with the router row, so x is loaded once (all NT rows in one round trip) and kept in registers.
        // A thread's sum is then its chunk's squares (0 + s == s: sums of squares are never -0), bitwise that kernel's.
        const int rwarps = (chunks + 31) >> 5;
        uint4 xv[NT];
#pragma unroll
        for (int t = 0; t < NT; t++) xv[t] = tid < chunks ? reinterpret_cast<const uint4*>(p.hidden + (size_t)t * p.hidden_size)[tid] : zero;
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float sq = warp_sum(sumsq_bf16x2(xv[t].x) + sumsq_bf16x2(xv[t].y) + sumsq_bf16x2(xv[t].z) + sumsq_bf16x2(xv[t].w));
            if (lane == 0 && warp < rwarps) red_s[t][warp] = sq;
        }
        __syncthreads();
        if (warp < NT) {
            float v = lane < rwarps ? red_s[warp][lane] : 0.f;
            v = warp_sum(v);
            if (lane == 0) inv_s[warp] = rsqrtf(v / (float)p.hidden_size + p.eps);
        }
        __syncthreads();
#pragma unroll
        for (int t = 0; t < NT; t++) {
            acc[t] = 0.f;
            if (tid < chunks) {
                const uint4 h = norm_bf16x8(xv[t], n0, inv_s[t]);
                if (e == 0) reinterpret_cast<uint4*>(p.h_out + (size_t)t * p.hidden_size)[tid] = h;
                acc[t] += dot_bf16x8(w0, h);
            }
        }
    } else {
        // Inverse RMS of each token's row in add_rmsnorm_bf16's layout (bitwise its h), then h chunk by chunk.
        rms_inv_rows<NT, ROUTER_NORM_WARPS>(p.hidden, (size_t)p.hidden_size, NT, p.hidden_size, p.eps, red_s, inv_s);
        const uint4* wrow = reinterpret_cast<const uint4*>(p.w_gate + (size_t)e * p.hidden_size);
        const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
#pragma unroll
        for (int t = 0; t < NT; t++) acc[t] = 0.f;
        for (int c = tid; c < chunks; c += ROUTER_NORM_THREADS) {
            const uint4 wc = c == tid ? w0 : __ldg(&wrow[c]);
            const uint4 nc = c == tid ? n0 : __ldg(&nw[c]);
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const uint4 x = reinterpret_cast<const uint4*>(p.hidden + (size_t)t * p.hidden_size)[c];
                const uint4 h = norm_bf16x8(x, nc, inv_s[t]);
                if (e == 0) reinterpret_cast<uint4*>(p.h_out + (size_t)t * p.hidden_size)[c] = h;
                acc[t] += dot_bf16x8(wc, h);
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) {
        const float v = warp_sum(acc[t]);
        if (lane == 0) logit_s[t][warp] = v;
    }
    __syncthreads();
    if (warp < NT) {
        float v = lane < ROUTER_NORM_WARPS ? logit_s[warp][lane] : 0.f;
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
    if (warp < NT) router_topk_token(p, warp);
    if (tid == 0) p.counters[0] = 0;
}

extern "C" __global__ void __launch_bounds__(ROUTER_NORM_THREADS) moe_router_norm_topk(MoeRouterParams p)
{
    const int tid = threadIdx.x;
    const int e = blockIdx.x;
    const int chunks = p.hidden_size >> 3;
    const uint4* wrow = reinterpret_cast<const uint4*>(p.w_gate + (size_t)e * p.hidden_size);
    const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
    const uint4 zero = make_uint4(0, 0, 0, 0);
    __shared__ float red_s[ROUTER_TOKENS][32];
    __shared__ float logit_s[ROUTER_TOKENS][ROUTER_NORM_WARPS];
    __shared__ float inv_s[ROUTER_TOKENS];
    __shared__ int is_last;
    // Before pdl_wait() only weights (docs/kernels.md, "Programmatic dependent launch"): the expert's router row into L2,
    // and the first chunk of it and of the norm weight into registers; x, the logits and the ticket come after.
    prefetch_l2_rows(p.w_gate, e, e + 1, (size_t)p.hidden_size * 2, 0, (size_t)p.hidden_size * 2);
    const uint4 w0 = tid < chunks ? __ldg(&wrow[tid]) : zero;     // issued first: overlaps the norm below
    const uint4 n0 = tid < chunks ? __ldg(&nw[tid]) : zero;
    pdl_wait();
    pdl_launch_dependents();
    prefetch_l2_evict_last_range(p.fetch_ahead, p.fetch_ahead_bytes);   // docs/timing-model.md, "Weights fetched ahead"
    switch (p.tokens) {                                        // 1 <= T <= ROUTER_TOKENS (the launcher checks)
    case 1: router_norm_topk_body<1>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    case 2: router_norm_topk_body<2>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    case 3: router_norm_topk_body<3>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    case 4: router_norm_topk_body<4>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    case 5: router_norm_topk_body<5>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    case 6: router_norm_topk_body<6>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    case 7: router_norm_topk_body<7>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    default: router_norm_topk_body<8>(p, w0, n0, red_s, logit_s, inv_s, is_last); break;
    }
}
