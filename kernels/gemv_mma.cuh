// gemv_mma.cuh: the tensor-core decode GEMV's tile (gemv_bf16_mma in gemv.cu: its header comment has the operand layout
// and the order of the sums), shared with moe_experts_gemv's follow-on GEMV tiles (moe_decode.cu) so both compute the same
// rows bit for bit. GemvParams is the parameter block of every gemv.cu entry (mirrored in C#: GemvParams).
#pragma once
#include "quant.cuh"
#include "gemv.cuh"
#include "mma.cuh"

struct GemvParams {
    bf16* y;                  // [T, ldy] bf16
    const bf16* x;            // [T, ldx] bf16
    const bf16* w;            // [N, K] bf16, rows contiguous
    const bf16* residual;     // [T, ldy] bf16 or null
    float* partial;           // [split_k, T, N] fp32 (split_k > 1)
    const bf16* norm_weight;  // [K] RMSNorm weight, or null (no prologue)
    int* tickets;             // [gridDim.x] split-K tickets (split_k > 1), zero on entry, left zero
    const void* fetch_ahead;  // weights of a later kernel fetched into L2 with evict_last after the wait, or null
    long long fetch_ahead_bytes;
    int tokens;               // T, must equal the kernel's template T
    int n;
    int k;                    // multiple of 8
    int ldx;                  // elements, multiple of 8
    int ldy;                  // elements
    int rows_per_warp;        // 1 .. 8
    int k_split;              // elements per K-slice, multiple of 8
    int split_k;
    float eps;                // RMSNorm epsilon (norm_weight != null)
    WeightScales ws;          // quantized variants only (docs/formats.md)
    int* argmax_ids;          // [T] each token's argmax over its N outputs (the greedy token): gemv_bf16_mma_argmax only
    unsigned long long* argmax_keys;    // [T] the best key (argmax_key) of the CTAs so far, zero on entry, left zero
    int* argmax_ticket;       // one int, zero on entry, left zero
};

#define GEMV_MMA_PAD 32           // bf16 elements of padding per staged token row (bank-conflict-free 16-byte reads)
#define GEMV_MMA_MAX_TOKENS 8
#define GEMV_MMA_STAGE_BATCH 4    // 16-byte chunks of x per thread per round trip while staging

// The fused argmax's order (gemv_bf16_mma_argmax): a key per output, larger for a larger value and, between equal
// values, for the lower index, so that the largest key is sample_reduce_bf16's greedy choice (the largest logit, ties to
// the lowest index); NaN and -inf get 0, which never wins (nothing chosen: id 0, as there).
__device__ __forceinline__ unsigned long long argmax_key(float v, int i)
{
    if (!(v > -QC_INF)) return 0ull;                       // NaN and -inf never win
    unsigned int b = __float_as_uint(v == 0.f ? 0.f : v);  // -0 as +0: equal values tie to the lower index
    b = (b & 0x80000000u) ? ~b : (b | 0x80000000u);        // the float order as an unsigned one
    return ((unsigned long long)b << 32) | (0xffffffffu - (unsigned int)i);
}

// Weight steps a GEMV tile loaded into registers before its inputs were ready (gemv_mma_hold<WARPS, HS, HN>): N = HS *
// HN 16-byte chunks per lane, the first HN steps of the lane's slices j = 0 .. HS - 1 (slice v = warp + j * WARPS) in
// held.w[j * HN + s]. One N serves several shapes (2 x 8, 1 x 16).
template <int N> struct GemvHeld { uint4 w[N]; };
template <> struct GemvHeld<0> {};

// The loads gemv_mma_tile<WARPS, X_L2, SLICES, HS, HN> would make first for the tile at row_base, made now: they depend
// on nothing the step writes, so a tile issues them before it waits for its inputs and they arrive during the wait
// (docs/kernels.md, "Persistent launches"). Needs HN <= the slice's steps (K / wpg / 32). Every index is a compile-time
// one: `held` stays in registers.
// Lane (g, t4)'s first weight element of K-slice wi (kslice elements each) of row group gi in the tile at row_base: a row
// past N reads row 0 (its sums are never stored). Shared by the loads before a wait and the tile's own.
__device__ __forceinline__ const bf16* gemv_mma_slice_w(const GemvParams& p, int row_base, int gi, int wi, int kslice, int g, int t4)
{
    const int row = row_base + gi * 8 + g;
    return p.w + (size_t)(row < p.n ? row : 0) * p.k + wi * kslice + 8 * t4;
}

template <int WARPS, int HS, int HN>
__device__ __forceinline__ void gemv_mma_hold(const GemvParams& p, int row_base, int groups, int wpg, GemvHeld<HS * HN>& held)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int j = 0; j < HS; j++) {
        const int v = warp + j * WARPS;
        const bool active = v < groups * wpg;
        const int gi = active ? v / wpg : 0, wi = active ? v - gi * wpg : 0;
        const bf16* wrow = gemv_mma_slice_w(p, row_base, gi, wi, p.k / wpg, g, t4);
#pragma unroll
        for (int s = 0; s < HN; s++) held.w[j * HN + s] = active ? ldg_stream_v4(wrow + 32 * s) : make_uint4(0u, 0u, 0u, 0u);
    }
}

// Rows row_base .. row_base + 8 * groups - 1 of y = W x (x, or h = RMSNorm(x) * norm_weight when p.norm_weight is set) for
// p.tokens tokens: row group gi (8 rows) is summed over wpg equal K-slices of whole 32-wide steps, and the slices'
// partials are added in slice order. Slice v = gi * wpg + wi (groups * wpg <= 8, at most SLICES * WARPS) runs on warp
// v % WARPS of the CTA's threads 0 .. 32 * WARPS - 1: with SLICES 2 a warp may run two slices one after the other. The
// bits depend only on wpg: gemv_bf16_mma's 8 warps with 2 groups (wpg 4) equal 4 warps with 1 group and wpg 4; its 8
// warps with 1 group (wpg 8) equal 4 warps running two slices each. X_L2: x was written by other CTAs of the same
// launch (after a counter said so), so it is read through L2 (ld.global.cg) rather than a path that may hold older
// lines. Needs tokens <= WARPS with the norm (one warp finishes each row's sum). Shared memory: xm_s [T][K +
// GEMV_MMA_PAD] bf16 (dynamic), red_s [groups * wpg][8][8], nred_s [8][32], inv_s [8]. Starts by staging x (the
// caller's barrier before it, if its shared memory was in use) and ends after the epilogue's stores, without a barrier.
// HS > 0: the first HN weight steps of the lane's first HS slices were loaded before (gemv_mma_hold, into `held`); the sums
// are the same bits, step for step. stage_x false: xm_s holds x (or h) already, staged by an earlier tile of the same CTA
// (gemv_bf16_mma's tiles after its first): the tile starts at its weights, and the caller's barrier comes before it (red_s).
// best_s (or null): the epilogue also folds each output as stored (bf16) into best_s[token] with a shared atomicMax of its
// argmax_key (gemv_bf16_mma_argmax; best_s zero, or a key, before the tile's first barrier). out_s (or null): the epilogue
// also keeps each output as stored in out_s[token * 64 + its row in the tile] (gemv_bf16_mma_sample; rows past N are not
// written).
template <int WARPS, bool X_L2, int SLICES = 1, int HS = 0, int HN = 0, bool ONE_TRIP = true>
__device__ __forceinline__ void gemv_mma_tile(const GemvParams& p, int row_base, int groups, int wpg, uint4* xm_s, float (*red_s)[8][8],
                                              float (*nred_s)[32], float* inv_s, const GemvHeld<HS * HN>& held = GemvHeld<HS * HN>{},
                                              bool stage_x = true, unsigned long long* best_s = nullptr, bf16* out_s = nullptr)
{
    static_assert(HS <= SLICES, "held slices are slices the warp runs");
    constexpr int THREADS = WARPS * 32;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int T = p.tokens, K = p.k;

    // stage x (or the normalised h) as bf16 rows of K + GEMV_MMA_PAD, GEMV_MMA_STAGE_BATCH chunks per thread per round trip;
    // the first batch also brings the residual of the thread's first output (the epilogue's i = tid)
    const int kchunks = K >> 3, xstride = (K + GEMV_MMA_PAD) >> 3, total = T * kchunks, outputs = groups * T * 8;
    float res0 = 0.f;
    // With the norm, x in one batch of two chunks per thread and whole 32-chunk warps per row (K a multiple of 256,
    // T * K / 8 <= 2 * THREADS: the decode qkv tile at K 2048, T 1 on 4 warps, T <= 2 on 8): one round trip for x. Thread tid's chunks are i = u * THREADS + tid,
    // so a warp's 32 lanes hold chunks 32 vw .. 32 vw + 31 of one row: exactly rms_inv_rows' virtual warp vw, whose
    // virtual threads own one chunk each (K / 8 <= its 32 .. 1024 virtual threads). The squares are summed from the staged
    // registers in that layout and the same expression, so inv_s and h are rms_inv_rows' bits; the norm then applies to the
    // same registers (docs/kernels.md, "Fusions"). ONE_TRIP false: always the batched staging (the same bits; for a kernel
    // whose register budget the held batch would overflow).
    constexpr int OB = 2;                                      // chunks of x per thread in that one batch
    const bool one_trip = ONE_TRIP && p.norm_weight && total <= OB * THREADS && (kchunks & 31) == 0 && kchunks <= 1024 && T <= WARPS;
    if (stage_x && one_trip) {
        const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
        uint4 v[OB], nv[OB];   // x and its norm weights, in one round trip
#pragma unroll
        for (int u = 0; u < OB; u++) {
            const int i = u * THREADS + tid, t = T == 1 ? 0 : i / kchunks, c = i - t * kchunks;
            const uint4* src = reinterpret_cast<const uint4*>(p.x + (size_t)t * p.ldx + c * 8);
            v[u] = i >= total ? make_uint4(0, 0, 0, 0) : X_L2 ? __ldcg(src) : *src;
            nv[u] = i >= total ? make_uint4(0, 0, 0, 0) : __ldg(&nw[c]);
        }
        if (p.residual && tid < outputs) {
            const int grp = tid / (T * 8), rest = tid - grp * T * 8, out_row = row_base + grp * 8 + (rest & 7);
            if (out_row < p.n) res0 = bf16_to_f32(p.residual[(size_t)(rest >> 3) * p.ldy + out_row]);
        }
#pragma unroll
        for (int u = 0; u < OB; u++) {
            const int i0 = u * THREADS + warp * 32;                // warp-uniform: the warp's whole row segment exists or not
            if (i0 >= total) continue;
            float sumsq = 0.f;
            sumsq += sumsq_bf16x2(v[u].x) + sumsq_bf16x2(v[u].y) + sumsq_bf16x2(v[u].z) + sumsq_bf16x2(v[u].w);
            sumsq = warp_sum(sumsq);
            const int t = T == 1 ? 0 : i0 / kchunks;
            if (lane == 0) nred_s[t][(i0 - t * kchunks) >> 5] = sumsq;
        }
        __syncthreads();
        rms_inv_finish(T, kchunks >> 5, K, p.eps, nred_s, inv_s);
#pragma unroll
        for (int u = 0; u < OB; u++) {
            const int i = u * THREADS + tid, t = T == 1 ? 0 : i / kchunks, c = i - t * kchunks;
            if (i >= total) continue;
            xm_s[t * xstride + c] = norm_bf16x8(v[u], nv[u], inv_s[t]);
        }
        __syncthreads();
    } else if (stage_x) {
        if (p.norm_weight) rms_inv_rows<GEMV_MMA_MAX_TOKENS, WARPS, X_L2>(p.x, (size_t)p.ldx, T, K, p.eps, nred_s, inv_s);
        const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight);
        for (int b = 0; b < total; b += GEMV_MMA_STAGE_BATCH * THREADS) {
            uint4 v[GEMV_MMA_STAGE_BATCH];
#pragma unroll
            for (int u = 0; u < GEMV_MMA_STAGE_BATCH; u++) {
                const int i = b + u * THREADS + tid, t = T == 1 ? 0 : i / kchunks, c = i - t * kchunks;
                const uint4* src = reinterpret_cast<const uint4*>(p.x + (size_t)t * p.ldx + c * 8);
                v[u] = i >= total ? make_uint4(0, 0, 0, 0) : X_L2 ? __ldcg(src) : *src;
            }
            if (b == 0 && p.residual && tid < outputs) {
                const int grp = tid / (T * 8), rest = tid - grp * T * 8, out_row = row_base + grp * 8 + (rest & 7);
                if (out_row < p.n) res0 = bf16_to_f32(p.residual[(size_t)(rest >> 3) * p.ldy + out_row]);
            }
#pragma unroll
            for (int u = 0; u < GEMV_MMA_STAGE_BATCH; u++) {
                const int i = b + u * THREADS + tid, t = T == 1 ? 0 : i / kchunks, c = i - t * kchunks;
                if (i >= total) continue;
                uint4 h = v[u];
                if (p.norm_weight) h = norm_bf16x8(h, __ldg(&nw[c]), inv_s[t]);
                xm_s[t * xstride + c] = h;
            }
        }
        __syncthreads();
    }
    const int g = lane >> 2, t4 = lane & 3;
    const int kslice = K / wpg;
    float acc0[4] = {0.f, 0.f, 0.f, 0.f}, acc1[4] = {0.f, 0.f, 0.f, 0.f};
    auto step = [&](uint4 wv, uint4 xv) {
        const unsigned int a0[4] = {xv.x, 0u, xv.y, 0u}, a1[4] = {xv.z, 0u, xv.w, 0u};
        mma_bf16_16816(acc0, a0, wv.x, wv.y);
        mma_bf16_16816(acc1, a1, wv.z, wv.w);
    };
    // red_s[v][token g][2t4 + j]: slice v's partial of token g, row 2t4 + j of its group
    auto finish_slice = [&](int v) {
        red_s[v][g][2 * t4] = acc0[0] + acc1[0];
        red_s[v][g][2 * t4 + 1] = acc0[1] + acc1[1];
#pragma unroll
        for (int e = 0; e < 4; e++) acc0[e] = acc1[e] = 0.f;
    };
    constexpr int U = 8;                                       // steps per batch: 8 weight loads in flight per lane
    // lane (g, t4)'s first x chunk of K-slice wi: a token past T reads token 0 (its sums are never stored; A's rows 8..15
    // are zero)
    auto slice_x = [&](int wi) { return xm_s + (g < T ? g : 0) * xstride + ((wi * kslice) >> 3) + t4; };
    // steps s0 .. of slice v from memory, then the slice's partial
    auto stream_slice = [&](int v, int s0) {
        const int gi = v / wpg, wi = v - gi * wpg;
        const bf16* wrow = gemv_mma_slice_w(p, row_base, gi, wi, kslice, g, t4);
        const uint4* xrow = slice_x(wi);
        for (; s0 + 32 * U <= kslice; s0 += 32 * U) {
            uint4 wv[U], xv[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                wv[u] = ldg_stream_v4(wrow + s0 + 32 * u);
                xv[u] = xrow[(s0 >> 3) + 4 * u];
            }
#pragma unroll
            for (int u = 0; u < U; u++) step(wv[u], xv[u]);
        }
        for (; s0 < kslice; s0 += 32) step(ldg_stream_v4(wrow + s0), xrow[s0 >> 3]);   // the last steps of a short slice
        finish_slice(v);
    };
    // the held slices: their first HN steps from registers, the rest from memory
    if constexpr (HS > 0) {
#pragma unroll
        for (int j = 0; j < HS; j++) {
            const int v = warp + j * WARPS;
            if (v < groups * wpg) {
                const uint4* xrow = slice_x(v - (v / wpg) * wpg);
#pragma unroll
                for (int s = 0; s < HN; s++) step(held.w[j * HN + s], xrow[4 * s]);
                stream_slice(v, 32 * HN);
            }
        }
    }
#pragma unroll 1
    for (int j = HS; j < SLICES; j++) {                        // slices warp, warp + WARPS, ...: SLICES of them at most
        const int v = warp + j * WARPS;
        if (v >= groups * wpg) break;
        stream_slice(v, 0);
    }
    __syncthreads();
    for (int i = tid; i < outputs; i += THREADS) {
        const int grp = i / (T * 8), rest = i - grp * T * 8, t = rest >> 3, r = rest & 7;
        const int out_row = row_base + grp * 8 + r;
        if (out_row >= p.n) continue;
        float v = 0.f;
        for (int w = 0; w < wpg; w++) v += red_s[grp * wpg + w][t][r];
        float out = round_bf16(v);
        if (p.residual) out = (i == tid && stage_x ? res0 : bf16_to_f32(p.residual[(size_t)t * p.ldy + out_row])) + out;
        const bf16 stored = f32_to_bf16(out);
        p.y[(size_t)t * p.ldy + out_row] = stored;
        if (best_s) {
            const unsigned long long key = argmax_key(bf16_to_f32(stored), out_row);
            if (key != 0ull) atomicMax(&best_s[t], key);
        }
        if (out_s) out_s[t * 64 + grp * 8 + r] = stored;
    }
}
