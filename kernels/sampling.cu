// sampling.cu: next-token choice on the device over the whole vocabulary with many CTAs per logits row; the token
// id (int32) stays on the device. Semantics (docs/kernels.md "sampling"): transformers' warper order on
// x = logit / temperature (computed as logit * inv_temperature in fp32):
//   top-k  keep x >= the k-th largest x            (ties at the threshold are all kept)
//   top-p  keep the largest x whose softmax mass (over the top-k survivors) reaches top_p
//          (the smallest such set, as HF's TopPLogitsWarper; ties at the threshold kept)
//   min-p  keep x >= max + ln(min_p)               (prob >= min_p * max prob)
//   then draw the first token in index order whose cumulative kept mass exp(x_i - max) exceeds
//   u = uniform24(Philox4x32-10(key = seed, counter = (step, row word))) * kept mass.
//   Greedy (inv_temperature <= 0 or top_k 1, or an argmax launch): the largest logit, ties to the lower index.
//
// Thread mapping: both kernels run grid (ctas, rows), 512 threads; CTA c owns the vocabulary slice
// [c * 4096, (c + 1) * 4096) and thread t its 8 consecutive tokens (one 16-byte load when the row allows it).
//
// sample_reduce_bf16: each CTA reduces its slice to (max logit, its lowest index, sum of exp(x - slice max),
//   smallest 16-bit key) and, when top-k or top-p is on, adds every token to the row's histogram of bf16 values:
//   hist[key16(logit)] += 1 (integer atomics, so the result does not depend on their order). A bf16 logit has
//   65,536 possible values and every token of one bucket has the same x, so the histogram is the exact sorted
//   multiset of the row: a bucket's mass is count * exp(x(bucket) - max), and a threshold is a bucket, with no
//   sort and no repeated passes over the logits. The CTA stores its partial, fences and takes a ticket; the CTA
//   that takes the row's last ticket resets the ticket, merges the partials (argmax: greedy rows end here), then
//   scans the histogram from the maximum's bucket downward, 512 buckets per step (a block scan of counts and
//   masses): the top-k bucket is the first where the count reaches k, the top-p bucket the first where the mass
//   reaches top_p * (mass of the top-k survivors; the row's total when top-k is off). It writes the row state:
//   max x, the kept threshold on x (with min-p, never above the max), the argmax, the histogram's key range.
// sample_draw_bf16: each CTA zeroes its share of the row's histogram range (no memset node: the histogram is
//   left zero for the next launch), sums the kept mass of its slice, stores it, fences and takes the second
//   ticket; the last CTA scans the slice masses in index order, picks the slice holding u and redraws inside it:
//   an inclusive block scan of the threads' 8-token masses, then the owning thread walks its tokens. The owner
//   of u (slice or thread) is named by one reduction: the lowest one with kept mass whose inclusive prefix
//   exceeds u, else (u at or past every prefix through fp32 rounding) the highest one with kept mass, so
//   rounding at a scan boundary can never leave no owner or two.
// Bytes moved per row: vocab * 2 twice (once per kernel; the second read is L2-resident), 4 bytes per touched
// histogram bucket (atomics, the scan's reads, the zeroing), 16 + 4 bytes per CTA of partials. Dependent round
// trips: the slice load, the ticket, the partials and one per 512-bucket step of the scan (typically one or two),
// then the same for the draw.
// Workspace (SamplingLaunchers.ScratchBytes): histogram and tickets must be zero before the first launch; both
// kernels leave them zero.
#include "common.cuh"

#define SAMPLE_THREADS 512
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)
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

// Loads of what other CTAs of this launch wrote (after the ticket): from L2, never from a stale L1 line.
__device__ __forceinline__ int ld_cg_s32(const int* p)
{
    int v;
    asm volatile("ld.global.cg.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ unsigned int ld_cg_u32(const unsigned int* p)
{
    unsigned int v;
    asm volatile("ld.global.cg.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ float bits_value(unsigned int b) { return __uint_as_float(b << 16); }

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
    __syncthreads();
    if (lane == 0) { sv[warp] = v; si[warp] = i; }
    __syncthreads();
    v = lane < SAMPLE_WARPS ? sv[lane] : -QC_INF;
    i = lane < SAMPLE_WARPS ? si[lane] : SAMPLE_NONE;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, v, o);
        const int oi = __shfl_xor_sync(0xffffffffu, i, o);
        if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
    }
}

// Block sum in a fixed order (deterministic). Every thread gets the result.
__device__ __forceinline__ float block_total(float v, float* sv)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) sv[warp] = v;
    __syncthreads();
    v = lane < SAMPLE_WARPS ? sv[lane] : 0.f;
    return warp_sum(v);
}

__device__ __forceinline__ int block_min_int(int v, int* si)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) si[warp] = v;
    __syncthreads();
    v = lane < SAMPLE_WARPS ? si[lane] : SAMPLE_NONE;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = min(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Inclusive block scan of (count, mass) in thread order; *total_c / *total_m get the block totals.
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
        int wc = lane < SAMPLE_WARPS ? sc[lane] : 0;
        float wm = lane < SAMPLE_WARPS ? sm[lane] : 0.f;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            const int nc = __shfl_up_sync(0xffffffffu, wc, o);
            const float nm = __shfl_up_sync(0xffffffffu, wm, o);
            if (lane >= o) { wc += nc; wm += nm; }
        }
        if (lane < SAMPLE_WARPS) { sc[lane] = wc; sm[lane] = wm; }
    }
    __syncthreads();
    if (warp > 0) { c += sc[warp - 1]; m += sm[warp - 1]; }
    *total_c = sc[SAMPLE_WARPS - 1];
    *total_m = sm[SAMPLE_WARPS - 1];
}

// The owner of a draw among the threads (one candidate per thread): the lowest thread with mass > 0 and u < incl,
// else the highest thread with mass > 0; -1 when no thread has mass.
__device__ __forceinline__ int block_owner(float mass, float incl, float u, int* claim)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (threadIdx.x == 0) { claim[0] = SAMPLE_THREADS; claim[1] = -1; }
    __syncthreads();
    const unsigned int kept_w = __ballot_sync(0xffffffffu, mass > 0.f);
    const unsigned int over_w = __ballot_sync(0xffffffffu, mass > 0.f && u < incl);
    if (lane == 0) {
        if (over_w) atomicMin(&claim[0], warp * 32 + __ffs(over_w) - 1);
        if (kept_w) atomicMax(&claim[1], warp * 32 + 31 - __clz(kept_w));
    }
    __syncthreads();
    return claim[0] < SAMPLE_THREADS ? claim[0] : claim[1];
}

// The first thread whose running total (carry + inclusive prefix) reaches `need`, or SAMPLE_THREADS if none.
__device__ __forceinline__ int block_first_reaching(bool reached, int* claim)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (threadIdx.x == 0) claim[2] = SAMPLE_THREADS;
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

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_reduce_bf16(SampleRowsParams p)
{
    __shared__ float sf[32];
    __shared__ int si[32];
    __shared__ int claim[4];
    __shared__ int last_s;
    __shared__ float found_m;
    const int c = blockIdx.x, row = blockIdx.y, tid = threadIdx.x;
    pdl_wait();                      // the logits are the lm_head's (docs/kernels.md, "Programmatic dependent launch")
    const SampleRowSettings s = row_settings(p, row);
    const bool greedy = row_greedy(p, s), hist = row_uses_hist(p, s);
    const float it = s.inv_temperature;
    const bf16* logits = p.logits + (size_t)row * p.ld;
    unsigned int* h = p.hist + (size_t)row * SAMPLE_BUCKETS;

    unsigned int bits[SAMPLE_PER_THREAD];
    int first;
    const int n = load_tokens(logits, p.vocab, row_vec(p), c, bits, &first);
    pdl_launch_dependents();         // after the slice load, not right after the wait: there NVRTC 11.8's ptxas capped
                                     // this kernel at 32 registers and spilled 76 bytes at sm_90
    float best = -QC_INF;
    int best_i = SAMPLE_NONE, lo = SAMPLE_NONE;
#pragma unroll
    for (int e = 0; e < SAMPLE_PER_THREAD; e++) {
        if (e >= n) continue;
        const float v = bits_value(bits[e]);
        if (v > best) { best = v; best_i = first + e; }
        if (v == v) {
            const unsigned int k = key16(bits[e]);
            lo = min(lo, (int)k);
            if (hist) atomicAdd(&h[k], 1u);
        }
    }
    block_argmax(best, best_i, sf, si);
    float z = 0.f;
    if (!greedy && best > -QC_INF) {
        const float m = best * it;
#pragma unroll
        for (int e = 0; e < SAMPLE_PER_THREAD; e++)
            if (e < n) z += exp2f((bits_value(bits[e]) * it - m) * SAMPLE_LOG2E);
    }
    z = block_total(z, sf);
    lo = block_min_int(lo, si);
    if (tid == 0) p.parts[(size_t)row * p.ctas + c] = SamplePart{best, best_i, z, lo};

    // Ticket: the last CTA of the row merges the partials and finds the thresholds.
    __threadfence();
    __syncthreads();
    if (tid == 0) last_s = atomicAdd(&p.tickets[row * 2], 1u) == (unsigned int)p.ctas - 1;
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    if (tid == 0) p.tickets[row * 2] = 0;

    best = -QC_INF;
    best_i = SAMPLE_NONE;
    lo = SAMPLE_NONE;
    for (int i = tid; i < p.ctas; i += SAMPLE_THREADS) {
        const SamplePart* q = p.parts + (size_t)row * p.ctas + i;
        const float qb = ld_cg_f32(&q->best);
        const int qi = ld_cg_s32(&q->best_i), ql = ld_cg_s32(&q->lo);
        if (qb > best || (qb == best && qi < best_i)) { best = qb; best_i = qi; }
        lo = min(lo, ql);
    }
    block_argmax(best, best_i, sf, si);
    lo = block_min_int(lo, si);
    const float xmax = best * it;
    SampleRowState st = {xmax, -QC_INF, best_i == SAMPLE_NONE ? 0 : best_i, lo, 0, 0, 0, 0};
    if (greedy) {
        if (tid == 0) {
            p.out_ids[row] = st.best_i;
            p.state[row] = st;   // mode 0: sample_draw_bf16 skips the row
        }
        return;
    }
    const int hi = (int)key16(__float_as_uint(best) >> 16);
    st.hi = hi;
    st.mode = hist ? 1 : 2;
    if (!(xmax > -QC_INF)) {   // every logit -inf (or NaN): nothing has mass; the draw falls back to the argmax
        st.thr = QC_INF;
        if (tid == 0) p.state[row] = st;
        return;
    }
    float zt = 0.f;
    for (int i = tid; i < p.ctas; i += SAMPLE_THREADS) {
        const SamplePart* q = p.parts + (size_t)row * p.ctas + i;
        const float qb = ld_cg_f32(&q->best), qz = ld_cg_f32(&q->z);
        if (qb > -QC_INF) zt += qz * exp2f((qb * it - xmax) * SAMPLE_LOG2E);
    }
    zt = block_total(zt, sf);

    if (hist) {
        int thr_key = lo;          // keep everything
        float kept = zt;           // mass of the top-k survivors
        if (s.top_k > 0 && s.top_k < p.vocab) {
            int carry_c = 0;
            float carry_m = 0.f;
            for (int top = hi; top >= lo; top -= SAMPLE_THREADS) {
                const int key = top - tid;
                const unsigned int cnt = key >= lo ? ld_cg_u32(&h[key]) : 0u;
                int ic = (int)cnt;
                float im = cnt ? (float)cnt * exp2f((key16_value(key) * it - xmax) * SAMPLE_LOG2E) : 0.f;
                int tc;
                float tm;
                block_scan(ic, im, si, sf, &tc, &tm);
                const int f = block_first_reaching(carry_c + ic >= s.top_k, claim);
                if (f < SAMPLE_THREADS) {
                    if (tid == f) found_m = carry_m + im;
                    __syncthreads();
                    thr_key = top - f;
                    kept = found_m;
                    break;
                }
                carry_c += tc;
                carry_m += tm;
            }
        }
        if (s.top_p < 1.f) {
            const float need = s.top_p * kept;
            float carry_m = 0.f;
            for (int top = hi; top >= thr_key; top -= SAMPLE_THREADS) {
                const int key = top - tid;
                const unsigned int cnt = key >= thr_key ? ld_cg_u32(&h[key]) : 0u;
                int ic = (int)cnt;
                float im = cnt ? (float)cnt * exp2f((key16_value(key) * it - xmax) * SAMPLE_LOG2E) : 0.f;
                int tc;
                float tm;
                block_scan(ic, im, si, sf, &tc, &tm);
                const int f = block_first_reaching(cnt > 0 && carry_m + im >= need, claim);
                if (f < SAMPLE_THREADS) { thr_key = top - f; break; }
                carry_m += tm;
            }
        }
        st.thr = key16_value(thr_key) * it;
    }
    if (s.min_p > 0.f) st.thr = fmaxf(st.thr, xmax + __logf(s.min_p));
    st.thr = fminf(st.thr, xmax);   // the best token always survives
    if (tid == 0) p.state[row] = st;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_draw_bf16(SampleRowsParams p)
{
    __shared__ float sf[32];
    __shared__ int si[32];
    __shared__ int claim[4];
    __shared__ float incl_s[SAMPLE_THREADS];
    __shared__ int last_s;
    __shared__ int pick_s;
    const int c = blockIdx.x, row = blockIdx.y, tid = threadIdx.x;
    pdl_wait();                      // the row state is sample_reduce_bf16's
    pdl_launch_dependents();
    const SampleRowState st = p.state[row];
    if (p.argmax_only || st.mode == 0) return;
    const SampleRowSettings s = row_settings(p, row);
    const float it = s.inv_temperature, xmax = st.xmax, thr = st.thr;
    const bf16* logits = p.logits + (size_t)row * p.ld;
    const bool vec = row_vec(p);

    if (st.mode == 1) {   // leave the histogram zero for the next launch: CTA c zeroes its share of [lo, hi]
        unsigned int* h = p.hist + (size_t)row * SAMPLE_BUCKETS;
        for (int k = st.lo + c * SAMPLE_THREADS + tid; k <= st.hi; k += p.ctas * SAMPLE_THREADS) h[k] = 0u;
    }

    unsigned int bits[SAMPLE_PER_THREAD];
    int first;
    int n = load_tokens(logits, p.vocab, vec, c, bits, &first);
    float mine = 0.f;
#pragma unroll
    for (int e = 0; e < SAMPLE_PER_THREAD; e++) {
        if (e >= n) continue;
        const float x = bits_value(bits[e]) * it;
        if (x >= thr) mine += exp2f((x - xmax) * SAMPLE_LOG2E);
    }
    const float slice = block_total(mine, sf);
    if (tid == 0) p.slice_mass[(size_t)row * p.ctas + c] = slice;

    __threadfence();
    __syncthreads();
    if (tid == 0) last_s = atomicAdd(&p.tickets[row * 2 + 1], 1u) == (unsigned int)p.ctas - 1;
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    if (tid == 0) p.tickets[row * 2 + 1] = 0;

    // The slice holding u (slices in index order; ctas <= 512: one per thread).
    const float m = tid < p.ctas ? ld_cg_f32(&p.slice_mass[(size_t)row * p.ctas + tid]) : 0.f;
    int ic = 0, tc;
    float incl = m, total;
    block_scan(ic, incl, si, sf, &tc, &total);
    const uint4 r = philox4x32_10(make_uint4((unsigned int)s.step, (unsigned int)(s.step >> 32), p.settings ? 0u : (unsigned int)row, 0u),
                                  make_uint2((unsigned int)s.seed, (unsigned int)(s.seed >> 32)));
    const float u = (float)(r.x >> 8) * (1.f / 16777216.f) * total;
    incl_s[tid] = incl;
    const int owner = block_owner(m, incl, u, claim);
    if (owner < 0) {
        if (tid == 0) p.out_ids[row] = st.best_i;
        return;
    }
    const float u2 = u - (owner > 0 ? incl_s[owner - 1] : 0.f);

    // Redraw inside that slice: threads' 8-token masses, inclusive scan, one owner walks its tokens.
    n = load_tokens(logits, p.vocab, vec, owner, bits, &first);
    mine = 0.f;
#pragma unroll
    for (int e = 0; e < SAMPLE_PER_THREAD; e++) {
        if (e >= n) continue;
        const float x = bits_value(bits[e]) * it;
        if (x >= thr) mine += exp2f((x - xmax) * SAMPLE_LOG2E);
    }
    float tincl = mine, ttotal;
    ic = 0;
    block_scan(ic, tincl, si, sf, &tc, &ttotal);
    if (tid == 0) pick_s = -1;
    const int t_owner = block_owner(mine, tincl, u2, claim);
    if (tid == t_owner) {
        float cum = tincl - mine;
        int pick = -1, last = -1;
#pragma unroll
        for (int e = 0; e < SAMPLE_PER_THREAD; e++) {
            if (e >= n || pick >= 0) continue;
            const float x = bits_value(bits[e]) * it;
            if (x < thr) continue;
            last = first + e;
            cum += exp2f((x - xmax) * SAMPLE_LOG2E);
            if (cum > u2) pick = first + e;
        }
        pick_s = pick >= 0 ? pick : last;   // fp32 rounding at the segment end: its last kept token
    }
    __syncthreads();
    if (tid == 0) p.out_ids[row] = pick_s >= 0 ? pick_s : st.best_i;
}
