// moe_router.cuh: the MoE router's device code (moe_router.cu has the math, the thread mapping and the traffic), shared
// by moe_router.cu's kernels and persistent_attn_block's router tiles (persistent_decode.cu) so both compute the same bits.
#pragma once
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
    int topk_by_consumer;    // persistent_attn_block's router tiles: 1 = write the logits only (no ticket, no softmax +
                             //   top-k): the experts' launch after the block runs router_topk_select itself
};

#define ROUTER_NORM_THREADS 256
#define ROUTER_NORM_WARPS (ROUTER_NORM_THREADS / 32)

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

// The top-k of one warp's 64-bit keys, lane l holding PL of them (experts l, l+32, ...; 0 for no expert, which sorts last
// and never wins a round while k <= the experts). Unsigned key order is the selection order, so the arg-max of a round is
// the largest key. Each lane sorts its PL keys once (a 5- or 19-comparator network); a round takes the warp maximum of the
// lanes' heads in two redux.sync steps (the high halves, then among the lanes holding that high half the largest low half)
// and the winning lane shifts its keys up. Keys are distinct (the low half holds ~expert), so every round picks exactly one
// key. round(j, m, m2) is called in every lane with round j's winner: m its high half, m2 its low half. Shared by the
// router (router_topk_select) and early routing (early_route.cuh), so both select by the same steps.
template <int PL, class Round>
__device__ __forceinline__ void keys_topk(u64 (&key)[PL], int top_k, Round round)
{
    static_assert(PL == 4 || PL == 8, "4 or 8 keys per lane");
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
    for (int j = 0; j < top_k; j++) {
        unsigned lo, hv;
        router_key_halves(key[0], lo, hv);
        const unsigned m = redux_max_u32(hv);                     // >= 1: k <= E leaves a candidate every round
        const unsigned m2 = redux_max_u32(hv == m ? lo : 0u);     // the winner's low half
        round(j, m, m2);
        if (lo == m2) {                                           // this lane's head won: the next key moves up
#pragma unroll
            for (int i = 0; i < PL - 1; i++) key[i] = key[i + 1];
            key[PL - 1] = 0ull;
        }
    }
}

// Softmax + top-k of one token, run by one warp. Lane l holds experts l, l+32, ..., (< E): PL of them, 4 when E <= 128
// (Qwen3-30B-A3B: half the loads, exps and keys of 8, on the router's critical warp), else 8. The keys a lane would hold
// past E are 0, which sort last and never win a round, so both widths give the same bits for E <= 128.
// The top-k (keys_topk) works on 64-bit keys (probability bits + 1) << 32 | ~expert, 0 for no expert: with every
// probability >= +0, unsigned key order is the order (value descending, index ascending on exact ties), so a round's
// low half is ~(the lowest expert holding the round's value).
// router_topk_select: that work on one token's logits row (experts fp32 values, read through L2) for any caller: lane j <
// top_k ends with the rank-j expert in my_e (clamped to 0 .. experts - 1) and its weight in my_w (renormalised when
// norm_topk_prob). moe_router's last CTA stores them (router_topk_token_n); moe_experts_gemv's CTAs, when the router left
// the top-k to them, keep them in shared memory.
template <int PL>
__device__ void router_topk_select(const float* logits, int experts, int top_k, int norm_topk_prob, int& my_e_out, float& my_w_out)
{
    static_assert(PL == 4 || PL == ROUTER_MAX_E_PER_LANE, "4 or 8 experts per lane");
    const int lane = threadIdx.x & 31;
    float v[PL];
    float mx = -QC_INF;
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        const float x = e < experts ? ld_cg_f32(logits + e) : -QC_INF;
        v[i] = x == x ? x : -QC_INF;   // NaN: -inf
        mx = fmaxf(mx, v[i]);
    }
    mx = warp_max(mx);
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        v[i] = e < experts ? expf(v[i] - mx) : 0.f;
        sum += v[i];
    }
    sum = warp_sum(sum);
    u64 key[PL];
#pragma unroll
    for (int i = 0; i < PL; i++) {
        const int e = lane + 32 * i;
        const float pr = v[i] / sum;
        const unsigned bits = __float_as_uint(pr > 0.f ? pr : 0.f);   // NaN probability: 0 (still a candidate)
        key[i] = e < experts ? router_key((unsigned)~e, bits + 1) : 0ull;
    }
    // Lane j keeps the rank-j choice (no local-memory arrays); wsum adds the weights in rank order.
    float my_w = 0.f;
    int my_e = 0;
    float wsum = 0.f;
    keys_topk<PL>(key, top_k, [&](int j, unsigned m, unsigned m2) {
        const float bv = __uint_as_float(m - 1);
        if (lane == j) { my_w = bv; my_e = (int)~m2; }
        wsum += bv;
    });
    // Every candidate holds a probability >= 0, so my_e < E always; the clamp keeps even a future mistake from indexing
    // past the stacked expert weights.
    my_e_out = min(max(my_e, 0), experts - 1);
    my_w_out = norm_topk_prob ? my_w / wsum : my_w;
}

template <int PL>
__device__ void router_topk_token_n(const MoeRouterParams& p, int t)
{
    int e;
    float w;
    router_topk_select<PL>(p.logits + (size_t)t * p.experts, p.experts, p.top_k, p.norm_topk_prob, e, w);
    const int lane = threadIdx.x & 31;
    if (lane < p.top_k) {
        p.topk_ids[(size_t)t * p.top_k + lane] = e;
        p.topk_weights[(size_t)t * p.top_k + lane] = w;
    }
}

// One token's softmax + top-k at the narrowest width E allows (warp-uniform: E is the launch's).
__device__ void router_topk_token(const MoeRouterParams& p, int t)
{
    if (p.experts <= 4 * 32) router_topk_token_n<4>(p, t);
    else router_topk_token_n<ROUTER_MAX_E_PER_LANE>(p, t);
}

// router_topk_select at the narrowest width `experts` allows (warp-uniform).
__device__ __forceinline__ void router_topk_select_any(const float* logits, int experts, int top_k, int norm_topk_prob, int& e, float& w)
{
    if (experts <= 4 * 32) router_topk_select<4>(logits, experts, top_k, norm_topk_prob, e, w);
    else router_topk_select<ROUTER_MAX_E_PER_LANE>(logits, experts, top_k, norm_topk_prob, e, w);
}

// A CTA of THREADS threads (256 or 128) runs moe_router_norm_topk's work for router row e as that kernel's 256 threads
// would: virtual thread v = tid + j * THREADS (j < ROUTER_NORM_THREADS / THREADS) owns chunk v of the row, virtual warp
// v / 32 its partial sums, so every sum is taken in the same order and the logits, h and the top-k are the same bits at
// either width. The 128-thread form is persistent_attn_block's router tile (docs/kernels.md, "Persistent launches").
#define ROUTER_VT(THREADS) (ROUTER_NORM_THREADS / (THREADS))

// The loads of row e that need nothing of the step: each virtual thread's first chunk of the router row and of the norm
// weight (chunk v, zero past the row), into registers before the wait.
template <int THREADS>
__device__ __forceinline__ void router_norm_hold(const MoeRouterParams& p, int e, uint4 (&w0)[ROUTER_VT(THREADS)], uint4 (&n0)[ROUTER_VT(THREADS)])
{
    const int chunks = p.hidden_size >> 3;
    const uint4* wrow = reinterpret_cast<const uint4*>(p.w_gate + (size_t)e * p.hidden_size);
    const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
    const uint4 zero = make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int j = 0; j < ROUTER_VT(THREADS); j++) {
        const int v = threadIdx.x + j * THREADS;
        w0[j] = v < chunks ? __ldg(&wrow[v]) : zero;     // issued first: overlaps the norm
    }
#pragma unroll
    for (int j = 0; j < ROUTER_VT(THREADS); j++) {
        const int v = threadIdx.x + j * THREADS;
        n0[j] = v < chunks ? __ldg(&nw[v]) : zero;
    }
}

// x row t's 16-byte chunk c: through L2 when other CTAs of the launch wrote x (X_L2).
template <bool X_L2>
__device__ __forceinline__ uint4 router_x_chunk(const MoeRouterParams& p, int t, int c)
{
    const uint4* src = reinterpret_cast<const uint4*>(p.hidden + (size_t)t * p.hidden_size) + c;
    return X_L2 ? __ldcg(src) : *src;
}

// Router row e for NT tokens (a compile-time count: no guarded loops over absent tokens) after the wait: the norm, the
// logit, then a ticket on *counter among `tiles` CTAs; the last one runs the softmax + top-k of every token and resets
// the ticket. red_s [ROUTER_TOKENS][32], logit_s [ROUTER_TOKENS][ROUTER_NORM_WARPS], inv_s [ROUTER_TOKENS] and is_last
// are the caller's shared memory. Ends without a barrier.
template <int NT, int THREADS, bool X_L2>
__device__ __forceinline__ void router_norm_tile(const MoeRouterParams& p, int e, const uint4 (&w0)[ROUTER_VT(THREADS)],
                                                 const uint4 (&n0)[ROUTER_VT(THREADS)], float (*red_s)[32],
                                                 float (*logit_s)[ROUTER_NORM_WARPS], float* inv_s, int& is_last, int* counter, int tiles)
{
    constexpr int VT = ROUTER_VT(THREADS), WARPS = THREADS / 32;
    static_assert(VT * THREADS == ROUTER_NORM_THREADS && NT <= ROUTER_TOKENS, "256 virtual threads, at most 8 tokens");
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int chunks = p.hidden_size >> 3;
    const uint4 zero = make_uint4(0, 0, 0, 0);
    float acc[VT][NT];
    if (chunks <= ROUTER_NORM_THREADS) {
        // One chunk per virtual thread (H <= 2048): add_rmsnorm_bf16's virtual thread v sums exactly chunk v, the same chunk
        // it dots with the router row, so x is loaded once (all NT rows in one round trip) and kept in registers. A
        // virtual thread's sum is then its chunk's squares (0 + s == s: sums of squares are never -0), bitwise that kernel's.
        const int rwarps = (chunks + 31) >> 5;
        uint4 xv[VT][NT];
#pragma unroll
        for (int j = 0; j < VT; j++)
#pragma unroll
            for (int t = 0; t < NT; t++) xv[j][t] = tid + j * THREADS < chunks ? router_x_chunk<X_L2>(p, t, tid + j * THREADS) : zero;
#pragma unroll
        for (int j = 0; j < VT; j++)
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const float sq = warp_sum(sumsq_bf16x2(xv[j][t].x) + sumsq_bf16x2(xv[j][t].y) + sumsq_bf16x2(xv[j][t].z) + sumsq_bf16x2(xv[j][t].w));
                if (lane == 0 && warp + j * WARPS < rwarps) red_s[t][warp + j * WARPS] = sq;
            }
        __syncthreads();
        for (int t = warp; t < NT; t += WARPS) {
            float v = lane < rwarps ? red_s[t][lane] : 0.f;
            v = warp_sum(v);
            if (lane == 0) inv_s[t] = rsqrtf(v / (float)p.hidden_size + p.eps);
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < VT; j++) {
            const int v = tid + j * THREADS;
#pragma unroll
            for (int t = 0; t < NT; t++) {
                acc[j][t] = 0.f;
                if (v < chunks) {
                    const uint4 h = norm_bf16x8(xv[j][t], n0[j], inv_s[t]);
                    if (e == 0) reinterpret_cast<uint4*>(p.h_out + (size_t)t * p.hidden_size)[v] = h;
                    acc[j][t] += dot_bf16x8(w0[j], h);
                }
            }
        }
    } else {
        // Inverse RMS of each token's row in add_rmsnorm_bf16's layout (bitwise its h), then h chunk by chunk.
        static_assert(NT <= WARPS, "rms_inv_rows finishes a row per warp");
        rms_inv_rows<NT, WARPS, X_L2>(p.hidden, (size_t)p.hidden_size, NT, p.hidden_size, p.eps, red_s, inv_s);
        const uint4* wrow = reinterpret_cast<const uint4*>(p.w_gate + (size_t)e * p.hidden_size);
        const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
#pragma unroll
        for (int j = 0; j < VT; j++) {
            const int v = tid + j * THREADS;
#pragma unroll
            for (int t = 0; t < NT; t++) acc[j][t] = 0.f;
            for (int c = v; c < chunks; c += ROUTER_NORM_THREADS) {
                const uint4 wc = c == v ? w0[j] : __ldg(&wrow[c]);
                const uint4 nc = c == v ? n0[j] : __ldg(&nw[c]);
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const uint4 h = norm_bf16x8(router_x_chunk<X_L2>(p, t, c), nc, inv_s[t]);
                    if (e == 0) reinterpret_cast<uint4*>(p.h_out + (size_t)t * p.hidden_size)[c] = h;
                    acc[j][t] += dot_bf16x8(wc, h);
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < VT; j++)
#pragma unroll
        for (int t = 0; t < NT; t++) {
            const float v = warp_sum(acc[j][t]);
            if (lane == 0) logit_s[t][warp + j * WARPS] = v;
        }
    __syncthreads();
    for (int t = warp; t < NT; t += WARPS) {
        float v = lane < ROUTER_NORM_WARPS ? logit_s[t][lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) p.logits[(size_t)t * p.experts + e] = round_bf16(v);
    }

    if (p.topk_by_consumer) return;      // the experts' launch runs the softmax + top-k from these logits

    // Ticket: the last CTA does the softmax + top-k of every token.
    tail_begin();
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(counter, 1) == tiles - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    for (int t = warp; t < NT; t += WARPS) router_topk_token(p, t);
    if (tid == 0) *counter = 0;
}
