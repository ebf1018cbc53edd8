// sampling.cuh: the sampler's row state, settings and block helpers (sampling.cu's kernels, whose header comment has the
// semantics), and the row's merge and threshold search (sample_finish_row), shared by sample_reduce_bf16 and the lm_head
// launch that takes the sampled step's reduce into its own tail (gemv_bf16_mma_sample in gemv.cu; docs/kernels.md,
// "Fusions"). The block helpers take the CTA's thread count as a template argument (512 in sampling.cu, 256 in gemv.cu).
#pragma once
#include "common.cuh"

#define SAMPLE_THREADS 512
#define SAMPLE_PER_THREAD 8
#define SAMPLE_SLICE (SAMPLE_THREADS * SAMPLE_PER_THREAD)
#define SAMPLE_BUCKETS 65536
#define SAMPLE_LOG2E 1.4426950408889634f
#define SAMPLE_NONE 0x7fffffff

// Per-row settings read from device memory, so a captured graph picks up new seeds / steps / temperatures.
struct SampleRowSettings {
    unsigned long long seed;
    unsigned long long step;  // Philox counter (step, row word): a row's draw does not depend on its batch slot
    float inv_temperature;    // <= 0: greedy (argmax)
    int top_k;                // <= 0 or >= vocab: off
    float top_p;              // >= 1: off
    float min_p;              // <= 0: off
};

struct SamplePart {           // one CTA's slice summary
    float best;               // largest logit (raw), -inf when none
    int best_i;               // its lowest index, SAMPLE_NONE when none
    float z;                  // sum of exp(x - best * inv_temperature) over the slice (sampled rows)
    int lo;                   // smallest 16-bit key of the slice (non-NaN tokens)
};

struct SampleRowState {       // written by the last CTA of sample_reduce_bf16, read by sample_draw_bf16
    float xmax;
    float thr;                // keep x >= thr
    int best_i;
    int lo, hi;               // histogram keys to zero
    int mode;                 // 0: done (greedy), 1: sample, histogram used, 2: sample, histogram unused
    int pad0, pad1;
};

struct SampleRowsParams {
    const bf16* logits;                    // [rows, ld]
    int* out_ids;                          // [rows]
    const SampleRowSettings* settings;     // [rows], or null: `fixed` for every row, Philox row word = row
    unsigned int* hist;                    // [rows, 65536] workspace, zero on entry and exit
    unsigned int* tickets;                 // [rows, 2] workspace, zero on entry and exit
    SamplePart* parts;                     // [rows, ctas]
    float* slice_mass;                     // [rows, ctas]
    SampleRowState* state;                 // [rows]
    SampleRowSettings fixed;
    int rows;
    int vocab;
    int ld;                                // elements
    int ctas;                              // CTAs per row: ceil(vocab / 4096), at most 512
    int argmax_only;                       // 1: every row greedy
};

// Order-preserving 16-bit key of a bf16 bit pattern, and back to the value.
__device__ __forceinline__ unsigned int key16(unsigned int b) { return (b & 0x8000u) ? (~b & 0xffffu) : (b | 0x8000u); }
__device__ __forceinline__ float key16_value(unsigned int k)
{
    const unsigned int b = (k & 0x8000u) ? (k & 0x7fffu) : (~k & 0xffffu);
    return __uint_as_float(b << 16);
}

// This thread's up to 8 tokens of slice c: bits[e] (bf16 pattern), returns how many exist; *first = index of the first.
__device__ __forceinline__ int load_tokens(const bf16* row, int vocab, bool vec, int c, unsigned int bits[SAMPLE_PER_THREAD], int* first)
{
    const int i0 = c * SAMPLE_SLICE + threadIdx.x * SAMPLE_PER_THREAD;
    *first = i0;
    const int n = max(0, min(SAMPLE_PER_THREAD, vocab - i0));
    if (vec && n == SAMPLE_PER_THREAD) {
        const uint4 w = *reinterpret_cast<const uint4*>(row + i0);
        const unsigned int ws[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int e = 0; e < SAMPLE_PER_THREAD; e++) bits[e] = (ws[e >> 1] >> (16 * (e & 1))) & 0xffffu;
    } else {
#pragma unroll
        for (int e = 0; e < SAMPLE_PER_THREAD; e++) bits[e] = e < n ? (unsigned int)row[i0 + e] : 0u;
    }
    return n;
}

// Loads of what other CTAs of this launch wrote (after the ticket): from L2, never from a stale L1 line (as ld_cg_f32 in
// common.cuh).
__device__ __forceinline__ unsigned int ld_cg_u32(const unsigned int* p)
{
    unsigned int v;
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ float bits_value(unsigned int b) { return __uint_as_float(b << 16); }

// Warp argmax of (v, i): larger v wins, ties to the smaller i (NaN never wins). Every lane gets the result.
__device__ __forceinline__ void warp_argmax(float& v, int& i)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

// Warp minimum of v. Every lane gets the result.
__device__ __forceinline__ int warp_min_int(int v)
{
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Block argmax of (v, i): larger v wins, ties to the smaller i. Every thread gets the result.
template <int THREADS = SAMPLE_THREADS>
__device__ __forceinline__ void block_argmax(float& v, int& i, float* sv, int* si)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    warp_argmax(v, i);
    __syncthreads();
    if (lane == 0) { sv[warp] = v; si[warp] = i; }
    __syncthreads();
    v = lane < (THREADS / 32) ? sv[lane] : -QC_INF;
    i = lane < (THREADS / 32) ? si[lane] : SAMPLE_NONE;
    warp_argmax(v, i);
}

// Block sum in a fixed order (deterministic). Every thread gets the result.
template <int THREADS = SAMPLE_THREADS>
__device__ __forceinline__ float block_total(float v, float* sv)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sv[warp] = v;
    __syncthreads();
    v = lane < (THREADS / 32) ? sv[lane] : 0.f;
    return warp_sum(v);
}

template <int THREADS = SAMPLE_THREADS>
__device__ __forceinline__ int block_min_int(int v, int* si)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_min_int(v);
    __syncthreads();
    if (lane == 0) si[warp] = v;
    __syncthreads();
    v = lane < (THREADS / 32) ? si[lane] : SAMPLE_NONE;
    return warp_min_int(v);
}

// Inclusive block scan of (count, mass) in thread order; *total_c / *total_m get the block totals.
template <int THREADS = SAMPLE_THREADS>
__device__ __forceinline__ void block_scan(int& c, float& m, int* sc, float* sm, int* total_c, float* total_m)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
        const int nc = __shfl_up_sync(0xffffffffu, c, o);
        const float nm = __shfl_up_sync(0xffffffffu, m, o);
        if (lane >= o) { c += nc; m += nm; }
    }
    __syncthreads();
    if (lane == 31) { sc[warp] = c; sm[warp] = m; }
    __syncthreads();
    if (warp == 0) {
        int wc = lane < (THREADS / 32) ? sc[lane] : 0;
        float wm = lane < (THREADS / 32) ? sm[lane] : 0.f;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int nc = __shfl_up_sync(0xffffffffu, wc, o);
            const float nm = __shfl_up_sync(0xffffffffu, wm, o);
            if (lane >= o) { wc += nc; wm += nm; }
        }
        if (lane < (THREADS / 32)) { sc[lane] = wc; sm[lane] = wm; }
    }
    __syncthreads();
    if (warp > 0) { c += sc[warp - 1]; m += sm[warp - 1]; }
    *total_c = sc[(THREADS / 32) - 1];
    *total_m = sm[(THREADS / 32) - 1];
}

// The owner of a draw among the threads (one candidate per thread): the lowest thread with mass > 0 and u < incl,
// else the highest thread with mass > 0; -1 when no thread has mass.
template <int THREADS = SAMPLE_THREADS>
__device__ __forceinline__ int block_owner(float mass, float incl, float u, int* claim)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (threadIdx.x == 0) { claim[0] = THREADS; claim[1] = -1; }
    __syncthreads();
    const unsigned int kept_w = __ballot_sync(0xffffffffu, mass > 0.f);
    const unsigned int over_w = __ballot_sync(0xffffffffu, mass > 0.f && u < incl);
    if (lane == 0) {
        if (over_w) atomicMin(&claim[0], warp * 32 + __ffs(over_w) - 1);
        if (kept_w) atomicMax(&claim[1], warp * 32 + 31 - __clz(kept_w));
    }
    __syncthreads();
    return claim[0] < THREADS ? claim[0] : claim[1];
}

// The first thread whose running total (carry + inclusive prefix) reaches `need`, or THREADS if none.
template <int THREADS = SAMPLE_THREADS>
__device__ __forceinline__ int block_first_reaching(bool reached, int* claim)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (threadIdx.x == 0) claim[2] = THREADS;
    __syncthreads();
    const unsigned int w = __ballot_sync(0xffffffffu, reached);
    if (lane == 0 && w) atomicMin(&claim[2], warp * 32 + __ffs(w) - 1);
    __syncthreads();
    return claim[2];
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

__device__ __forceinline__ SampleRowSettings row_settings(const SampleRowsParams& p, int row)
{
    return p.settings ? p.settings[row] : p.fixed;
}

__device__ __forceinline__ bool row_greedy(const SampleRowsParams& p, const SampleRowSettings& s)
{
    return p.argmax_only || s.inv_temperature <= 0.f || s.top_k == 1;
}

__device__ __forceinline__ bool row_uses_hist(const SampleRowsParams& p, const SampleRowSettings& s)
{
    return !row_greedy(p, s) && ((s.top_k > 0 && s.top_k < p.vocab) || s.top_p < 1.f);
}

__device__ __forceinline__ bool row_vec(const SampleRowsParams& p)
{
    return (p.vocab & 7) == 0 && (p.ld & 7) == 0 && ((size_t)p.logits & 15) == 0;
}

// A partial through L2 in one 16-byte load (ld.global.cg): another CTA of the launch wrote it before its ticket.
__device__ __forceinline__ SamplePart ld_cg_part(const SamplePart* q)
{
    unsigned int b, i, z, l;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(b), "=r"(i), "=r"(z), "=r"(l) : "l"(q) : "memory");
    return SamplePart{__uint_as_float(b), (int)i, __uint_as_float(z), (int)l};
}

// Folds partial q into (best, best_i, lo): the larger logit wins, ties to the lower index (an order on (value, index), so
// the fold's order does not matter); NaN never wins.
__device__ __forceinline__ void fold_part(const SamplePart& q, float& best, int& best_i, int& lo)
{
    if (q.best > best || (q.best == best && q.best_i < best_i)) { best = q.best; best_i = q.best_i; }
    lo = min(lo, q.lo);
}

// Row `row`'s merge and thresholds, run by one CTA of THREADS threads once every partial of the row is in (after the
// ticket and a fence): parts[0 .. nparts - 1], each a slice's (best, best_i, z relative to that best, lo), nparts <= HELD *
// THREADS (the caller's bound), are read through L2 in one pass, HELD per thread in flight together, and kept in registers
// for the second sum; greedy rows end at the argmax (out_ids[row], state mode 0). Then the histogram scan from the
// maximum's bucket down, THREADS buckets per step: the top-k bucket is the first where the count reaches k, the top-p
// bucket the first where the mass reaches top_p * (mass of the top-k survivors); when the top-k bucket is in the first
// step, so is the top-p bucket, found on the same registers (one pass over the buckets, not two). Writes state[row].
// sf, si: 32 floats / ints of shared memory; claim: 4 ints; found_m: one float. Every thread of the CTA calls it.
template <int THREADS, int HELD>
__device__ __forceinline__ void sample_finish_row(const SampleRowsParams& p, int row, const SamplePart* parts, int nparts,
                                                  float* sf, int* si, int* claim, float* found_m)
{
    const int tid = threadIdx.x;
    const SampleRowSettings s = row_settings(p, row);
    const bool greedy = row_greedy(p, s), hist = row_uses_hist(p, s);
    const float it = s.inv_temperature;
    unsigned int* h = p.hist + (size_t)row * SAMPLE_BUCKETS;

    SamplePart q[HELD];
#pragma unroll
    for (int u = 0; u < HELD; u++) {
        const int i = tid + u * THREADS;
        q[u] = i < nparts ? ld_cg_part(parts + i) : SamplePart{-QC_INF, SAMPLE_NONE, 0.f, SAMPLE_NONE};
    }
    float best = -QC_INF;
    int best_i = SAMPLE_NONE, lo = SAMPLE_NONE;
#pragma unroll
    for (int u = 0; u < HELD; u++) fold_part(q[u], best, best_i, lo);
    block_argmax<THREADS>(best, best_i, sf, si);
    lo = block_min_int<THREADS>(lo, si);
    const float xmax = best * it;
    if (best_i == SAMPLE_NONE) best_i = 0;
    if (greedy) {
        if (tid == 0) {
            p.out_ids[row] = best_i;
            p.state[row] = SampleRowState{xmax, -QC_INF, best_i, lo, 0, 0, 0, 0};   // mode 0: sample_draw_bf16 skips the row
        }
        return;
    }
    const int hi = (int)key16(__float_as_uint(best) >> 16);
    if (!(xmax > -QC_INF)) {   // every logit -inf (or NaN): nothing has mass; the draw falls back to the argmax
        if (tid == 0) p.state[row] = SampleRowState{xmax, QC_INF, best_i, lo, hi, hist ? 1 : 2, 0, 0};
        return;
    }
    // the row's total mass relative to its maximum: each partial's sum rescaled from its own maximum, in index order per thread
    float zt = 0.f;
#pragma unroll
    for (int u = 0; u < HELD; u++)
        if (q[u].best > -QC_INF) zt += q[u].z * exp2f((q[u].best * it - xmax) * SAMPLE_LOG2E);
    zt = block_total<THREADS>(zt, sf);

    float thr = -QC_INF;
    if (hist) {
        int thr_key = lo;          // keep everything
        float kept = zt;           // mass of the top-k survivors
        bool top_p_done = false;   // the top-p bucket found in the top-k scan's first step
        if (s.top_k > 0 && s.top_k < p.vocab) {
            int carry_c = 0;
            float carry_m = 0.f;
            for (int top = hi; top >= lo; top -= THREADS) {
                const int key = top - tid;
                const unsigned int cnt = key >= lo ? ld_cg_u32(&h[key]) : 0u;
                int ic = (int)cnt;
                float im = cnt ? (float)cnt * exp2f((key16_value(key) * it - xmax) * SAMPLE_LOG2E) : 0.f;
                int tc;
                float tm;
                block_scan<THREADS>(ic, im, si, sf, &tc, &tm);
                const int f = block_first_reaching<THREADS>(carry_c + ic >= s.top_k, claim);
                if (f < THREADS) {
                    if (tid == f) *found_m = carry_m + im;
                    __syncthreads();
                    thr_key = top - f;
                    kept = *found_m;
                    if (s.top_p < 1.f && top == hi) {
                        // Found in the first step: the top-p bucket is in this step too, at or above thr_key (thread f's
                        // running mass is `kept`, which reaches top_p * kept), and the top-p scan's first step would
                        // compute the same prefixes for threads 0..f (a thread's inclusive prefix depends on the threads
                        // before it only). So its search runs on these registers: no second pass over the buckets.
                        const float need = s.top_p * kept;
                        thr_key = top - block_first_reaching<THREADS>(cnt > 0 && carry_m + im >= need, claim);
                        top_p_done = true;
                    }
                    break;
                }
                carry_c += tc;
                carry_m += tm;
            }
        }
        if (s.top_p < 1.f && !top_p_done) {
            const float need = s.top_p * kept;
            float carry_m = 0.f;
            for (int top = hi; top >= thr_key; top -= THREADS) {
                const int key = top - tid;
                const unsigned int cnt = key >= thr_key ? ld_cg_u32(&h[key]) : 0u;
                int ic = (int)cnt;
                float im = cnt ? (float)cnt * exp2f((key16_value(key) * it - xmax) * SAMPLE_LOG2E) : 0.f;
                int tc;
                float tm;
                block_scan<THREADS>(ic, im, si, sf, &tc, &tm);
                const int f = block_first_reaching<THREADS>(cnt > 0 && carry_m + im >= need, claim);
                if (f < THREADS) { thr_key = top - f; break; }
                carry_m += tm;
            }
        }
        thr = key16_value(thr_key) * it;
    }
    if (s.min_p > 0.f) thr = fmaxf(thr, xmax + __logf(s.min_p));
    thr = fminf(thr, xmax);   // the best token always survives
    if (tid == 0) p.state[row] = SampleRowState{xmax, thr, best_i, lo, hi, hist ? 1 : 2, 0, 0};
}
