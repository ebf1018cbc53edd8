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
//   max x, the kept threshold on x (with min-p, never above the max), the argmax, the histogram's key range. That last
//   CTA's work is sample_finish_row (sampling.cuh), which the sampled step's lm_head also runs (gemv_bf16_mma_sample).
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
#include "sampling.cuh"

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
    tail_begin();
    __threadfence();
    __syncthreads();
    if (tid == 0) last_s = atomicAdd(&p.tickets[row * 2], 1u) == (unsigned int)p.ctas - 1;
    __syncthreads();
    if (!last_s) return;
    __threadfence();
    if (tid == 0) p.tickets[row * 2] = 0;

    sample_finish_row<SAMPLE_THREADS, 1>(p, row, p.parts + (size_t)row * p.ctas, p.ctas, sf, si, claim, &found_m);
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
    if (p.argmax_only) return;
    // the slice's logits, the row state and settings in one round trip: none of the loads depends on another
    const bf16* logits = p.logits + (size_t)row * p.ld;
    const bool vec = row_vec(p);
    unsigned int bits[SAMPLE_PER_THREAD];
    int first;
    int n = load_tokens(logits, p.vocab, vec, c, bits, &first);
    const SampleRowState st = p.state[row];
    const SampleRowSettings s = row_settings(p, row);
    if (st.mode == 0) return;
    const float it = s.inv_temperature, xmax = st.xmax, thr = st.thr;

    if (st.mode == 1) {   // leave the histogram zero for the next launch: CTA c zeroes its share of [lo, hi]
        unsigned int* h = p.hist + (size_t)row * SAMPLE_BUCKETS;
        for (int k = st.lo + c * SAMPLE_THREADS + tid; k <= st.hi; k += p.ctas * SAMPLE_THREADS) h[k] = 0u;
    }

    float mine = 0.f;
#pragma unroll
    for (int e = 0; e < SAMPLE_PER_THREAD; e++) {
        if (e >= n) continue;
        const float x = bits_value(bits[e]) * it;
        if (x >= thr) mine += exp2f((x - xmax) * SAMPLE_LOG2E);
    }
    const float slice = block_total(mine, sf);
    if (tid == 0) p.slice_mass[(size_t)row * p.ctas + c] = slice;

    tail_begin();                    // the ticket: the last CTA picks the slice and redraws in it
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
