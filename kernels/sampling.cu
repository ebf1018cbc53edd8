// sampling.cu: next-token choice on the device, one block (1024 threads) per logits row; the token id
// (int32) stays on the device.
//
// argmax_bf16: the largest logit, ties to the lower index (16-byte loads, block reduction of (value, index)).
// sample_bf16: transformers' warper order on x = logit / temperature:
//   top-k  keep x >= the k-th largest x            (ties at the threshold are all kept)
//   top-p  keep the largest x whose softmax mass (over the top-k survivors) reaches top_p
//          (the smallest such set, as HF's TopPLogitsWarper; ties at the threshold kept)
//   min-p  keep x >= max + ln(min_p)               (prob >= min_p * max prob)
//   then draw token i with probability exp(x_i - max) / sum over the kept set.
// Thresholds are found exactly by radix select over the order-preserving 32-bit key of x: 32 passes
// over the row (from L2) each for top-k and top-p (skipped when disabled), each pass a block count or
// block fp32 mass. The draw: u = uniform(Philox4x32-10(key = seed, counter = (step, row))) * kept mass;
// each thread owns a contiguous vocabulary segment, an inclusive block scan of the segments' masses
// picks the segment, and that thread walks it in index order. The segment is picked by a block reduction,
// not by each thread testing excl <= u < incl: adjacent warps' scan boundaries come from different fp32
// addition orders and may overlap or leave a gap of an ulp (two claimants, or none); the reduction names
// exactly one owner (the lowest thread with kept mass whose inclusive prefix exceeds u, else the highest
// thread with kept mass).
// Bytes moved: vocab * 2 per pass (L2-resident after the first).
// sample_rows_bf16: the same per row with settings read from device memory (graph-capturable); greedy rows argmax.
#include "common.cuh"

#define SAMPLE_THREADS 1024

struct ArgmaxParams {
    const bf16* logits;     // [rows, ld]
    int* out_ids;           // [rows]
    int rows;
    int vocab;
    int ld;                 // elements
};

struct SampleParams {
    const bf16* logits;     // [rows, ld]
    int* out_ids;           // [rows]
    unsigned long long seed;
    unsigned long long step; // counter: a new value per decode step
    int rows;
    int vocab;
    int ld;
    int top_k;              // <= 0 or >= vocab: off
    float inv_temperature;  // 1 / temperature (> 0)
    float top_p;            // >= 1: off
    float min_p;            // <= 0: off
};

__device__ __forceinline__ unsigned int order_key(float f)
{
    const unsigned int b = __float_as_uint(f);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Block argmax of (v, i): larger v wins, ties to the smaller i. Every thread gets the result.
__device__ __forceinline__ void block_argmax(float& v, int& i, float* sv, int* si)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
    if (lane == 0) { sv[warp] = v; si[warp] = i; }
    __syncthreads();
    v = sv[lane]; i = si[lane];
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
    __syncthreads();
}

__device__ __forceinline__ void row_argmax(const bf16* row, int vocab, float& best, int& best_i, float* sv, int* si)
{
    best = -QC_INF;
    best_i = 0x7fffffff;
    if ((vocab & 7) == 0 && ((size_t)row & 15) == 0) {
        const uint4* r4 = reinterpret_cast<const uint4*>(row);
        for (int c = threadIdx.x; c < (vocab >> 3); c += SAMPLE_THREADS) {
            const uint4 w = r4[c];
            const unsigned int ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int e = 0; e < 8; e++) {
                const float v = e & 1 ? bf16x2_hi(ws[e >> 1]) : bf16x2_lo(ws[e >> 1]);
                if (v > best) { best = v; best_i = c * 8 + e; }
            }
        }
    } else {
        for (int i = threadIdx.x; i < vocab; i += SAMPLE_THREADS) {
            const float v = bf16_to_f32(row[i]);
            if (v > best) { best = v; best_i = i; }
        }
    }
    block_argmax(best, best_i, sv, si);
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) argmax_bf16(ArgmaxParams p)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    float best;
    int best_i;
    row_argmax(p.logits + (size_t)blockIdx.x * p.ld, p.vocab, best, best_i, sv, si);
    if (threadIdx.x == 0) p.out_ids[blockIdx.x] = best_i == 0x7fffffff ? 0 : best_i;
}

// Philox4x32-10 (Salmon et al. 2011), the generator of cuRAND / PyTorch.
__device__ __forceinline__ uint4 philox4x32_10(uint4 ctr, uint2 key)
{
#pragma unroll
    for (int r = 0; r < 10; r++) {
        const unsigned int hi0 = __umulhi(0xD2511F53u, ctr.x), lo0 = 0xD2511F53u * ctr.x;
        const unsigned int hi1 = __umulhi(0xCD9E8D57u, ctr.z), lo1 = 0xCD9E8D57u * ctr.z;
        ctr = make_uint4(hi1 ^ ctr.y ^ key.x, lo1, hi0 ^ ctr.w ^ key.y, lo0);
        key.x += 0x9E3779B9u;
        key.y += 0xBB67AE85u;
    }
    return ctr;
}

// One row's draw (the whole block): writes the token to *out (thread 0). ctr_row: the third Philox counter word.
__device__ __forceinline__ void sample_row(const bf16* row, int* out, int vocab, float it, int top_k, float top_p, float min_p,
                                           unsigned long long seed, unsigned long long step, unsigned int ctr_row,
                                           float* sv, int* si, float* scan_s, int* claim_s, int& chosen_s)
{
    struct { int vocab; int top_k; float top_p; float min_p; unsigned long long seed, step; } p = {vocab, top_k, top_p, min_p, seed, step};
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    float best;
    int best_i;
    row_argmax(row, p.vocab, best, best_i, sv, si);
    const float xmax = best * it;

    // top-k threshold: the largest key K with count(key >= K) >= k
    unsigned int thr = 0;
    if (p.top_k > 0 && p.top_k < p.vocab) {
        for (int bit = 31; bit >= 0; bit--) {
            const unsigned int cand = thr | (1u << bit);
            float cnt = 0.f;
            for (int i = tid; i < p.vocab; i += SAMPLE_THREADS) cnt += order_key(bf16_to_f32(row[i]) * it) >= cand ? 1.f : 0.f;
            if (block_sum(cnt, sv) >= (float)p.top_k) thr = cand;
        }
    }
    // top-p threshold over the top-k survivors
    if (p.top_p < 1.f) {
        float kept = 0.f;
        for (int i = tid; i < p.vocab; i += SAMPLE_THREADS) {
            const float x = bf16_to_f32(row[i]) * it;
            if (order_key(x) >= thr) kept += exp2f((x - xmax) * 1.4426950408889634f);
        }
        const float need = block_sum(kept, sv) * p.top_p;
        // the largest K with mass(key >= max(K, thr)) >= need (true for every K <= thr)
        unsigned int t2 = 0;
        for (int bit = 31; bit >= 0; bit--) {
            const unsigned int cand = t2 | (1u << bit), lim = max(cand, thr);
            float mass = 0.f;
            for (int i = tid; i < p.vocab; i += SAMPLE_THREADS) {
                const float x = bf16_to_f32(row[i]) * it;
                if (order_key(x) >= lim) mass += exp2f((x - xmax) * 1.4426950408889634f);
            }
            if (block_sum(mass, sv) >= need) t2 = cand;
        }
        thr = max(thr, t2);
    }
    if (p.min_p > 0.f) {
        const unsigned int mk = order_key(xmax + __logf(p.min_p));
        thr = max(thr, mk);
    }
    thr = min(thr, order_key(xmax));   // the best token always survives

    // the draw: contiguous segments per thread, inclusive scan of kept mass
    const int seg = (p.vocab + SAMPLE_THREADS - 1) / SAMPLE_THREADS;
    const int b0 = min(p.vocab, tid * seg), b1 = min(p.vocab, b0 + seg);
    float mine = 0.f;
    for (int i = b0; i < b1; i++) {
        const float x = bf16_to_f32(row[i]) * it;
        if (order_key(x) >= thr) mine += exp2f((x - xmax) * 1.4426950408889634f);
    }
    float incl = mine;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const float n = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += n;
    }
    if (lane == 31) scan_s[warp] = incl;
    if (tid == 0) { chosen_s = -1; claim_s[0] = SAMPLE_THREADS; claim_s[1] = -1; }
    __syncthreads();
    if (warp == 0) {
        float w = scan_s[lane];
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const float n = __shfl_up_sync(0xffffffffu, w, o);
            if (lane >= o) w += n;
        }
        scan_s[lane] = w;
    }
    __syncthreads();
    if (warp > 0) incl += scan_s[warp - 1];
    const float total = scan_s[31];
    float excl = __shfl_up_sync(0xffffffffu, incl, 1);
    if (lane == 0) excl = warp > 0 ? scan_s[warp - 1] : 0.f;

    const uint4 r = philox4x32_10(make_uint4((unsigned int)p.step, (unsigned int)(p.step >> 32), ctr_row, 0u),
                                  make_uint2((unsigned int)p.seed, (unsigned int)(p.seed >> 32)));
    const float u = (float)(r.x >> 8) * (1.f / 16777216.f) * total;
    // One owner: the lowest thread with kept mass and u < incl; if none (u at or past every prefix through rounding),
    // the highest thread with kept mass. Per warp a ballot, then one shared atomic per warp.
    const unsigned int kept_w = __ballot_sync(0xffffffffu, mine > 0.f);
    const unsigned int over_w = __ballot_sync(0xffffffffu, mine > 0.f && u < incl);
    if (lane == 0) {
        if (over_w) atomicMin(&claim_s[0], warp * 32 + __ffs(over_w) - 1);
        if (kept_w) atomicMax(&claim_s[1], warp * 32 + 31 - __clz(kept_w));
    }
    __syncthreads();
    const int owner = claim_s[0] < SAMPLE_THREADS ? claim_s[0] : claim_s[1];
    if (tid == owner) {
        float cum = excl;
        int pick = -1, last = -1;
        for (int i = b0; i < b1; i++) {
            const float x = bf16_to_f32(row[i]) * it;
            if (order_key(x) < thr) continue;
            last = i;
            cum += exp2f((x - xmax) * 1.4426950408889634f);
            if (cum > u) { pick = i; break; }
        }
        chosen_s = pick >= 0 ? pick : last;   // fp32 rounding at the segment end: its last kept token
    }
    __syncthreads();
    if (tid == 0) *out = chosen_s >= 0 ? chosen_s : best_i;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_bf16(SampleParams p)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float scan_s[32];
    __shared__ int claim_s[2];
    __shared__ int chosen_s;
    sample_row(p.logits + (size_t)blockIdx.x * p.ld, p.out_ids + blockIdx.x, p.vocab, p.inv_temperature, p.top_k, p.top_p, p.min_p,
               p.seed, p.step, blockIdx.x, sv, si, scan_s, claim_s, chosen_s);
}

// Per-row settings read from device memory, so a captured graph picks up new seeds / steps / temperatures.
struct SampleRowSettings {
    unsigned long long seed;
    unsigned long long step;  // Philox counter (step, 0): a row's draw does not depend on its batch slot
    float inv_temperature;    // <= 0: greedy (argmax)
    int top_k;
    float top_p;
    float min_p;
};

struct SampleRowsParams {
    const bf16* logits;                    // [rows, ld]
    int* out_ids;                          // [rows]
    const SampleRowSettings* settings;     // [rows]
    int rows;
    int vocab;
    int ld;
};

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_rows_bf16(SampleRowsParams p)
{
    __shared__ float sv[32];
    __shared__ int si[32];
    __shared__ float scan_s[32];
    __shared__ int claim_s[2];
    __shared__ int chosen_s;
    const SampleRowSettings s = p.settings[blockIdx.x];
    const bf16* row = p.logits + (size_t)blockIdx.x * p.ld;
    if (s.inv_temperature <= 0.f || s.top_k == 1) {
        float best;
        int best_i;
        row_argmax(row, p.vocab, best, best_i, sv, si);
        if (threadIdx.x == 0) p.out_ids[blockIdx.x] = best_i == 0x7fffffff ? 0 : best_i;
        return;
    }
    sample_row(row, p.out_ids + blockIdx.x, p.vocab, s.inv_temperature, s.top_k, s.top_p, s.min_p, s.seed, s.step, 0u,
               sv, si, scan_s, claim_s, chosen_s);
}
