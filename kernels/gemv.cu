// gemv.cu: decode-shape matrix products, y[T, N] = x[T, K] . W[N, K]^T for T = 1..8 tokens.
//
//   y = bf16(acc)                               (residual == null)
//   y = bf16(residual + bf16(acc))              (residual != null: o_proj / down_proj + residual add)
//
// acc in fp32. Weights are streamed exactly once with 16-byte ld.global.nc (8 bf16 per lane, 512
// contiguous bytes per warp instruction, four loads in flight per lane); the K-slice of x is
// staged in shared memory as fp32 (stage_chunk: T * k_split * 4 bytes <= 44 KiB; at T = 1 four chunks per thread in flight,
// with the residual of the thread's first output) and read back as conflict-free 16-byte rows, so the inner product
// converts only the weights. A lane adds its chunks c = lane, lane + 32,
// ... of a row in ascending order whatever the loads in flight (the sum's order, docs/kernels.md).
// Thread mapping: 256 threads = 8 warps; a CTA owns 8 * rows_per_warp consecutive rows of W (warp w:
// rows base + w * rows_per_warp ...), and one K-slice (blockIdx.y) of k_split elements. Each warp
// reduces a row with shuffles; the CTA's results are staged in shared memory and written row-
// contiguously. grid = (ceil(N / (8 * rows_per_warp)), split_k).
// split_k == 1: the CTA writes bf16 y (with the residual epilogue). split_k > 1: fp32 partials
// [split_k, T, N]; the last CTA of each row block (an integer ticket on tickets[blockIdx.x] after a fence; it resets the
// ticket to 0) sums them in split order and applies the epilogue, the same sum in the same order as the
// separate combine kernel it replaces; tickets[] are zero before the first launch (docs/kernels.md, "Fusions").
// Bytes moved: N*K*2 (W, once) + T*K*2 (x) + T*N*2 (y) [+ T*N*2 residual] [+ 2 * split_k*T*N*4 partials]
//   [+ fetch_ahead_bytes of a later kernel's weights into L2 with evict_last, after the wait (the decode step's o_proj:
//   the next layer's qkv; docs/timing-model.md, "Weights fetched ahead")].
// Variants: gemv_bf16_t1 .. gemv_bf16_t8 (T is a template parameter: T accumulators per lane); gemv_bf16_mma (below: tensor
// cores, T = 1..8 at run time, no split-K), which the launcher picks for bf16 weights where the shape allows it.
// Quantized weights (quant.cuh, docs/formats.md): gemv_fp8_t1..8 (E4M3, block scales) and gemv_int8_t1..8 (per-channel
// scales) stream one byte per weight, 16 bytes per lane per load (16 weights, one scale, since 16 divides the 128-wide
// scale blocks), dequantize in registers to the bf16 the reference uses and then accumulate as the bf16 variant does.
// Bytes moved: N*K (W) + the scales (N/128 * K/128 * 4, or N * 4) + the same x / y / partial traffic; K and k_split
// must be multiples of 16. gemv_int4_t1..8 (GPTQ, two codes per byte, fp16 group scales): 32 weights per 16-byte load,
// K and k_split multiples of 32, N*K/2 weight bytes.
// RMSNorm prologue (norm_weight != null; docs/kernels.md, "Fusions"): x is the residual stream and the product takes
// h = bf16(norm_weight * bf16(x * rsqrt(mean(x^2) + eps))) instead (K = the norm width). Every CTA first sums the squares
// of each of its T full rows of x (L2-resident: the previous kernel wrote them) with the thread layout and reduction tree
// of add_rmsnorm_bf16 (virtual threads: ceil32(K / 8) of them, clamped to 32..1024, mapped onto the 8 warps), so the
// staged h is bitwise that kernel's output; then it stages its normalised K-slice. Extra bytes: T*K*2 (x, from L2) per
// CTA + the slice of the norm weight; the separate norm kernel and its h round trip are gone.
#include "gemv_mma.cuh"                // GemvParams, gemv_mma_tile (and gemv.cuh, quant.cuh, mma.cuh)
#include "sampling.cuh"               // the fused reduce of gemv_bf16_mma_sample: SampleRowsParams, sample_finish_row

#define GEMV_THREADS 256
#define GEMV_WARPS 8
#define GEMV_MAX_RPW 8


__device__ __forceinline__ float ld_cg_partial(const float* p)
{
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}

// y = epilogue(sum over splits of partial[s, t, row]), in split order from 0 (deterministic).
__device__ __forceinline__ void gemv_combine_one(const GemvParams& p, int t, int row)
{
    float acc = 0.f;
    for (int s = 0; s < p.split_k; s++) acc += ld_cg_partial(p.partial + ((size_t)s * p.tokens + t) * p.n + row);
    float out = round_bf16(acc);
    if (p.residual) out = bf16_to_f32(p.residual[(size_t)t * p.ldy + row]) + out;
    p.y[(size_t)t * p.ldy + row] = f32_to_bf16(out);
}

// Split-K: after the CTA wrote its partials, the last CTA of the row block combines all splits of its rows.
__device__ __forceinline__ void gemv_splitk_tail(const GemvParams& p, int row_base, int rows_here, int T)
{
    __shared__ int is_last;
    tail_begin();
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) is_last = atomicAdd(&p.tickets[blockIdx.x], 1) == p.split_k - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    for (int i = threadIdx.x; i < T * rows_here; i += GEMV_THREADS) {
        const int t = i / rows_here, local = i - t * rows_here;
        gemv_combine_one(p, t, row_base + local);
    }
    if (threadIdx.x == 0) p.tickets[blockIdx.x] = 0;
}

// Stages the CTA's K-slice of x (or of RMSNorm(x), see the header) into x_s as [T][slice_chunks] 16-byte chunks, zero
// past the end of K; ends with a barrier.
// Without the norm at T = 1, a thread's chunks c = tid, tid + 256, ... are loaded GEMV_STAGE_BATCH at a time, all in flight
// together (one dependent round trip per batch, docs/timing-model.md section 1), and `res0` gets, in the same round trip,
// the residual of the thread's first output (row_base + tid) when it has one (else 0: T > 1 and the norm prologue read
// the residual in the epilogue, where the batch's registers would cost occupancy).
#define GEMV_STAGE_BATCH 4
template <int T>
__device__ __forceinline__ void gemv_stage_x(const GemvParams& p, float4* x_s, int k0, int kchunks, int slice_chunks,
                                             int row_base, int rows_here, float& res0)
{
    const int tid = threadIdx.x;
    res0 = 0.f;
    if (!p.norm_weight && T > 1) {
        for (int i = tid; i < T * slice_chunks; i += GEMV_THREADS) {
            const int t = i / slice_chunks, c = i - t * slice_chunks;
            stage_chunk(x_s, t, c, slice_chunks, c < kchunks ? *reinterpret_cast<const uint4*>(p.x + (size_t)t * p.ldx + k0 + c * 8) : make_uint4(0, 0, 0, 0));
        }
        __syncthreads();
        return;
    }
    if (!p.norm_weight) {                                   // T = 1: x_s is [slice_chunks]
        for (int b = 0; b < slice_chunks; b += GEMV_STAGE_BATCH * GEMV_THREADS) {
            uint4 v[GEMV_STAGE_BATCH];
#pragma unroll
            for (int u = 0; u < GEMV_STAGE_BATCH; u++) {
                const int c = b + u * GEMV_THREADS + tid;
                v[u] = c < kchunks ? *reinterpret_cast<const uint4*>(p.x + k0 + c * 8) : make_uint4(0, 0, 0, 0);
            }
            if (b == 0 && p.residual && p.split_k == 1 && tid < rows_here) res0 = bf16_to_f32(p.residual[row_base + tid]);
#pragma unroll
            for (int u = 0; u < GEMV_STAGE_BATCH; u++) {
                const int c = b + u * GEMV_THREADS + tid;
                if (c < slice_chunks) stage_chunk(x_s, 0, c, slice_chunks, v[u]);
            }
        }
        __syncthreads();
        return;
    }
    __shared__ float red_s[T][32];
    __shared__ float inv_s[T];
    rms_inv_rows<T, GEMV_WARPS>(p.x, (size_t)p.ldx, T, p.k, p.eps, red_s, inv_s);   // T <= 8 warps
    const uint4* nw = reinterpret_cast<const uint4*>(p.norm_weight + k0);
    for (int i = tid; i < T * slice_chunks; i += GEMV_THREADS) {
        const int t = i / slice_chunks, c = i - t * slice_chunks;
        uint4 o = make_uint4(0, 0, 0, 0);
        if (c < kchunks) {
            const uint4 h = *reinterpret_cast<const uint4*>(p.x + (size_t)t * p.ldx + k0 + c * 8);
            const uint4 w = __ldg(&nw[c]);
            o = norm_bf16x8(h, w, inv_s[t]);
        }
        stage_chunk(x_s, t, c, slice_chunks, o);
    }
    __syncthreads();
}

// Programmatic dependent launch (docs/kernels.md): before pdl_wait() the CTA only prefetches its weight slice (rows
// [row_base, row_base + rows_here), bytes [k0, k0 + klen) x bytes per weight of each row) and, for quantized formats, the
// scales those weights use into L2; x, the residual, the partials and the tickets are the previous kernels' and are read
// after it. Then it lets the next kernel start its own prologue, and issues its share of the fetch-ahead (if any).
template <int QF>
__device__ __forceinline__ void gemv_prologue(const GemvParams& p, int row_base, int k0, int klen)
{
    const int rows_here = min(GEMV_WARPS * p.rows_per_warp, p.n - row_base);
    if constexpr (QF == 0) {
        prefetch_l2_rows(p.w, row_base, row_base + rows_here, (size_t)p.k * 2, (size_t)k0 * 2, (size_t)klen * 2);
    } else {
        constexpr int WPB = QF_WPB(QF);
        prefetch_l2_rows(p.w, row_base, row_base + rows_here, (size_t)p.k / WPB, (size_t)k0 / WPB, (size_t)klen / WPB);
        const size_t ssz = QF == QF_INT4 ? 2 : 4, c0 = (size_t)(k0 >> p.ws.k_shift), c1 = (size_t)((k0 + klen - 1) >> p.ws.k_shift);
        prefetch_l2_rows(p.ws.scales, row_base >> p.ws.row_shift, ((row_base + rows_here - 1) >> p.ws.row_shift) + 1,
                         (size_t)p.ws.cols * ssz, c0 * ssz, (c1 - c0 + 1) * ssz);
    }
    pdl_wait();
    pdl_launch_dependents();
    prefetch_l2_evict_last_range(p.fetch_ahead, p.fetch_ahead_bytes);   // docs/timing-model.md, "Weights fetched ahead"
}

template <int T>
__device__ __forceinline__ void gemv_body(const GemvParams& p)
{
    extern __shared__ float4 x_s[];                         // [T][2][k_split / 8] (stage_chunk)
    __shared__ float y_s[T][GEMV_WARPS * GEMV_MAX_RPW];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int k0 = blockIdx.y * p.k_split;
    const int klen = min(p.k_split, p.k - k0);
    const int kchunks = klen >> 3, slice_chunks = p.k_split >> 3;
    const int rows_cta = GEMV_WARPS * p.rows_per_warp;
    const int row_base = blockIdx.x * rows_cta;
    const int rows_here = min(rows_cta, p.n - row_base);
    gemv_prologue<0>(p, row_base, k0, klen);
    float res0;
    gemv_stage_x<T>(p, x_s, k0, kchunks, slice_chunks, row_base, rows_here, res0);
    for (int r = 0; r < p.rows_per_warp; r++) {
        const int local = warp * p.rows_per_warp + r;
        const int row = row_base + local;
        if (row >= p.n) break;
        const bf16* wrow = p.w + (size_t)row * p.k + k0;
        float acc[T];
        gemv_row_dot<T>(wrow, x_s, kchunks, slice_chunks, lane, acc);
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float v = warp_sum(acc[t]);
            if (lane == t) y_s[t][local] = v;
        }
    }
    __syncthreads();

    // row-contiguous writes of the CTA's results (the first pass's residual came with x)
    for (int i = tid; i < T * rows_here; i += GEMV_THREADS) {
        const int t = i / rows_here, local = i - t * rows_here, row = row_base + local;
        const float v = y_s[t][local];
        if (p.split_k > 1) {
            p.partial[((size_t)blockIdx.y * T + t) * p.n + row] = v;
        } else {
            float out = round_bf16(v);
            if (p.residual) out = (T == 1 && i == tid && !p.norm_weight ? res0 : bf16_to_f32(p.residual[(size_t)t * p.ldy + row])) + out;
            p.y[(size_t)t * p.ldy + row] = f32_to_bf16(out);
        }
    }
    if (p.split_k > 1) gemv_splitk_tail(p, row_base, rows_here, T);
}

// The quantized body: the same CTA mapping, x staging and epilogue as gemv_body; a lane's chunk is 16 weights.
template <int T, int QF>
__device__ __forceinline__ void gemv_quant_body(const GemvParams& p)
{
    extern __shared__ float4 x_s[];                         // [T][2][k_split / 8] (stage_chunk)
    __shared__ float y_s[T][GEMV_WARPS * GEMV_MAX_RPW];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int k0 = blockIdx.y * p.k_split;
    const int klen = min(p.k_split, p.k - k0);
    const int kchunks = klen >> 3, slice_chunks = p.k_split >> 3;
    const int rows_cta = GEMV_WARPS * p.rows_per_warp;
    const int row_base = blockIdx.x * rows_cta;
    const int rows_here = min(rows_cta, p.n - row_base);
    gemv_prologue<QF>(p, row_base, k0, klen);
    float res0;
    gemv_stage_x<T>(p, x_s, k0, kchunks, slice_chunks, row_base, rows_here, res0);

    constexpr int WPB = QF_WPB(QF), WPL = 16 * WPB;         // weights per byte, per 16-byte load
    const int qchunks = klen / WPL;                         // 16-byte chunks of this slice
    const int row_bytes = p.k / WPB;
    const unsigned char* wq = reinterpret_cast<const unsigned char*>(p.w);
    for (int r = 0; r < p.rows_per_warp; r++) {
        const int local = warp * p.rows_per_warp + r;
        const int row = row_base + local;
        if (row >= p.n) break;
        const unsigned char* wrow = wq + (size_t)row * row_bytes + k0 / WPB;
        float acc[T];
#pragma unroll
        for (int t = 0; t < T; t++) acc[t] = 0.f;
        constexpr int LIF = (WPB == 2 || T > 4) ? 2 : 4;     // 16-byte loads in flight per lane (fewer where registers are short)
        for (int c0 = 0; c0 < qchunks; c0 += 32 * LIF) {
            uint4 wv[LIF];
#pragma unroll
            for (int u = 0; u < LIF; u++) {
                const int c = c0 + u * 32 + lane;
                wv[u] = c < qchunks ? ldg_stream_v4(wrow + c * 16) : make_uint4(0, 0, 0, 0);
            }
#pragma unroll
            for (int u = 0; u < LIF; u++) {
                const int c = c0 + u * 32 + lane;
                if (c < qchunks) {
                    const float sc = weight_scale_q<QF>(p.ws, row, k0 + c * WPL);
                    if constexpr (QF == QF_INT4) {                  // a part at a time: fewer live registers
#pragma unroll
                        for (int h = 0; h < 2 * WPB; h++) {
                            const uint4 w8 = dequant_part<QF>(wv[u], sc, h);
#pragma unroll
                            for (int t = 0; t < T; t++) acc[t] = dot8(w8, x_s, t, 2 * WPB * c + h, slice_chunks, acc[t]);
                        }
                    } else {
                        uint4 a, b;
                        dequant_x16<QF>(wv[u], sc, a, b);
#pragma unroll
                        for (int t = 0; t < T; t++) {
                            acc[t] = dot8(a, x_s, t, 2 * c, slice_chunks, acc[t]);
                            acc[t] = dot8(b, x_s, t, 2 * c + 1, slice_chunks, acc[t]);
                        }
                    }
                }
            }
        }
#pragma unroll
        for (int t = 0; t < T; t++) {
            const float v = warp_sum(acc[t]);
            if (lane == t) y_s[t][local] = v;
        }
    }
    __syncthreads();

    for (int i = tid; i < T * rows_here; i += GEMV_THREADS) {
        const int t = i / rows_here, local = i - t * rows_here, row = row_base + local;
        const float v = y_s[t][local];
        if (p.split_k > 1) {
            p.partial[((size_t)blockIdx.y * T + t) * p.n + row] = v;
        } else {
            float out = round_bf16(v);
            if (p.residual) out = (T == 1 && i == tid && !p.norm_weight ? res0 : bf16_to_f32(p.residual[(size_t)t * p.ldy + row])) + out;
            p.y[(size_t)t * p.ldy + row] = f32_to_bf16(out);
        }
    }
    if (p.split_k > 1) gemv_splitk_tail(p, row_base, rows_here, T);
}

// gemv_bf16_mma: the bf16 product on tensor cores for T = 1..8 tokens in one kernel (tokens at run time), one K-slice
// (split_k 1), optional RMSNorm prologue and residual epilogue as gemv_bf16_t*, PDL prologue as theirs. mma.sync
// m16n8k16 with A = x (rows: the tokens; rows T..15 are zero) and B = W^T (columns: 8 weight rows), fp32 accumulators.
// A CTA (256 threads, 8 warps) owns 8 * groups rows (groups = rows_per_warp: 1, 2, 4 or 8; the launcher's plan); the
// 8 / groups warps of row group gi split K into equal slices of whole 32-wide steps. Per step lane (g = lane / 4,
// t = lane % 4) loads W[row g of the group][k + 8t .. k + 8t + 7] (16 bytes, ld.global.nc) and x[token g][the same k]
// (16 bytes from x_s) and issues two mma: the 8 values are the lane's four k slots of two k16 steps (k 8t, 8t+1 in slots
// 2t, 2t+1 and 8t+2, 8t+3 in 2t+8, 2t+9 of the first; 8t+4 .. 8t+7 of the second), a permutation of k that A and B share,
// so each mma sums 16 matching products. The two mma of a step feed two accumulator sets (shorter dependent chains),
// added at the end. Steps go 8 at a time (8 weight loads in flight per lane, no guards), the rest of a short slice one
// at a time; a row past N reads row 0 and a token past T token 0 (sums never stored), so no load needs a guard. Lane
// (g, t) then holds token g's partial sums for rows 2t and 2t+1; the group's warps add theirs through shared memory in
// warp order and thread (group, token, row) applies the epilogue: deterministic, and within fp32 reduction-order
// differences of gemv_bf16_t* (docs/kernels.md, "Decode GEMV on tensor cores"). The row groups set how K is split, so
// the order of the sums: the launcher gives a launch the same groups with or without the norm prologue.
// x_s: [T][K + 32] bf16 (the staged x, or h = RMSNorm(x) * norm_weight, bitwise add_rmsnorm_bf16's output); the 64-byte
// pad per token row makes a quarter warp's eight 16-byte reads (two tokens, four chunks each) hit distinct banks.
// Bytes: N*K*2 (W, once) + T*K*2 (x, from L2, per CTA) + T*N*2 (y) [+ T*N*2 residual]. The tile's code is gemv_mma_tile
// (gemv_mma.cuh), which moe_experts_gemv's follow-on GEMV tiles run too (on 4 warps, one row group: bitwise this kernel's
// 2-group launch).
// One wave: the grid may be smaller than the row tiles (ceil(N / (8 * groups))): CTA b then runs tiles b, b + grid, ...
// one after the other, staging x (and its norm) once, for the first (GemvLaunchers sizes the grid to the CTAs that fit
// on the GPU at once when the tiles are more: the lm_head's 2374 tiles on 528 CTAs of an H100). Each tile's sums are
// those of a CTA of its own, so the rows are the same bits whatever the grid. Why: a launch of several waves starts every
// wave's first loads one DRAM latency after the CTAs of the wave before retire (docs/timing-model.md, section 2); a CTA
// that goes on to its next tile keeps its warps' loads coming. Only the first tile's rows are prefetched (before the
// wait): the later tiles' loads are the stream, 4 CTAs per SM with 8 loads in flight per lane.
#define GEMV_MMA_MIN_CTAS_PER_SM 4                         // GemvLaunchers.MmaCtasPerSm: at most 64 registers (64 today, no spill)
// gemv_bf16_mma_argmax: the same, and each token's argmax over its N outputs as stored (bf16): the greedy decode step's
// lm_head and its token in one launch (docs/kernels.md, "Fusions"). Each output's argmax_key goes into the CTA's best key
// per token (a shared atomicMax in the epilogue); after its last tile the CTA folds those into argmax_keys (a global
// atomicMax per token), fences and takes a ticket, and the last CTA takes the keys (resetting them) and writes the ids.
// The largest key is sample_reduce_bf16's argmax: the largest logit, ties to the lowest index, NaN and -inf never
// chosen, 0 when nothing is. Extra traffic: T global atomics and a ticket per CTA, T ids.
// gemv_bf16_mma_sample: the same GEMV, and sample_reduce_bf16's work for its T rows (sampling.cu: argmax, histogram,
// thresholds; the sampled decode step's lm_head and its reduce in one launch, sample_draw_bf16 after it; docs/kernels.md,
// "Fusions"). The epilogue keeps each output as stored in out_s; then warp t folds token t's outputs of the tile into the
// CTA's running partial of row t (sample_tile_fold: its largest logit and lowest index, its sum of exp(x - max) rescaled to
// a new maximum as it grows, its smallest bf16 key, and the row's histogram atomics). After its last tile the CTA stores
// the partials (s.parts[t][blockIdx.x]), fences and takes the ticket (argmax_ticket), and the last CTA runs
// sample_finish_row (sampling.cuh) for each row in turn: the merge of the gridDim.x partials and the histogram's threshold
// scan, as sample_reduce_bf16's last CTA does for its slices. The row state (and a greedy row's token) is then what
// sample_reduce_bf16 writes: the same maximum, argmax, key range and buckets; the masses are the same sums in another
// order (fp32, per tile then per CTA instead of per 4096-token slice), so a top-p threshold could differ only where the
// mass reaches top_p within that rounding. Extra traffic: one histogram atomic per non-NaN output (sampled rows with
// top-k or top-p), a 16-byte partial per row per CTA, a ticket per CTA, and the last CTA's tail: the partials (one pass
// from L2) and the histogram buckets it scans.
#define GEMV_MMA_PLAIN 0
#define GEMV_MMA_ARGMAX 1
#define GEMV_MMA_SAMPLE 2
// 4 CTAs per SM, as gemv_bf16_mma (GemvLaunchers.MmaSampleCtasPerSm): 64 registers, none spilled at sm_80 and sm_90
// with NVRTC 11.8. (It ran 3 at 80 registers until sample_finish_row found the top-p bucket on the top-k step's registers:
// with a second pass over the buckets ptxas spilled in the last CTA's merge at 64.)
#define GEMV_MMA_SAMPLE_MIN_CTAS_PER_SM 4
#define GEMV_SAMPLE_PARTS_HELD 3  // partials per thread of the last CTA's merge pass: one pass up to 768 CTAs (528 on an H100)

struct GemvSampleParams {
    GemvParams g;             // the GEMV: argmax_ticket is the launch's ticket
    SampleRowsParams s;       // the rows' sampling (sampling.cuh): parts holds [T][gridDim.x] partials here
};

// What the fold needs of a row's settings (set once per CTA): 1 / temperature, and whether the row is greedy or uses the
// histogram (sampling.cuh, row_greedy / row_uses_hist).
struct SampleFoldRow {
    float inv_temperature;
    int greedy;
    int hist;
};

// Warp t's fold of row t's outputs of one tile (outs: rows_here bf16 values, rows row_base ..) into the CTA's running
// partial run (shared; lane 0 updates it). Within the warp: each lane's two outputs in index order, then shuffles (ties to
// the lower index, the sum in xor-butterfly order): the same bits every run.
__device__ __forceinline__ void sample_tile_fold(const SampleRowsParams& sp, int t, const SampleFoldRow& f, const bf16* outs, int row_base,
                                                 int rows_here, SamplePart* run)
{
    const int lane = threadIdx.x & 31;
    const bool greedy = f.greedy, hist = f.hist;
    const float it = f.inv_temperature;
    unsigned int* h = sp.hist + (size_t)t * SAMPLE_BUCKETS;
    unsigned int bits[2];
    float best = -QC_INF;
    int best_i = SAMPLE_NONE, lo = SAMPLE_NONE;
#pragma unroll
    for (int j = 0; j < 2; j++) {
        const int local = lane + 32 * j;
        bits[j] = local < rows_here ? (unsigned int)outs[local] : 0u;
        if (local >= rows_here) continue;
        const float v = bits_value(bits[j]);
        if (v > best) { best = v; best_i = row_base + local; }
        if (v == v) {
            const unsigned int k = key16(bits[j]);
            lo = min(lo, (int)k);
            if (hist) atomicAdd(&h[k], 1u);
        }
    }
    warp_argmax(best, best_i);
    lo = warp_min_int(lo);
    float z = 0.f;
    if (!greedy && best > -QC_INF) {
        const float m = best * it;
#pragma unroll
        for (int j = 0; j < 2; j++)
            if (lane + 32 * j < rows_here) z += exp2f((bits_value(bits[j]) * it - m) * SAMPLE_LOG2E);
    }
    z = warp_sum(z);
    if (lane != 0) return;
    SamplePart r = *run;
    if (!greedy && best > -QC_INF) {   // both sums relative to the larger maximum
        const float nb = best > r.best ? best : r.best;
        r.z = (r.best > -QC_INF ? r.z * exp2f((r.best * it - nb * it) * SAMPLE_LOG2E) : 0.f) + z * exp2f((best * it - nb * it) * SAMPLE_LOG2E);
    }
    fold_part(SamplePart{best, best_i, z, lo}, r.best, r.best_i, r.lo);
    *run = r;
}

template <int MODE>
__device__ __forceinline__ void gemv_mma_body(const GemvParams& p, const SampleRowsParams& sp)
{
    constexpr bool ARGMAX = MODE == GEMV_MMA_ARGMAX, SAMPLE = MODE == GEMV_MMA_SAMPLE;
    extern __shared__ uint4 xm_s[];                        // [T][(K + GEMV_MMA_PAD) / 8]
    __shared__ float red_s[GEMV_WARPS][8][8];              // [warp][token][row of its group]: the warps' partial sums
    __shared__ float nred_s[GEMV_MAX_RPW][32];
    __shared__ float inv_s[GEMV_MAX_RPW];
    __shared__ unsigned long long best_s[GEMV_MMA_MAX_TOKENS];   // the fused argmax: the CTA's best key per token
    __shared__ SamplePart run_s[SAMPLE ? GEMV_MMA_MAX_TOKENS : 1];          // the fused reduce: the CTA's partial per row
    __shared__ SampleFoldRow set_s[SAMPLE ? GEMV_MMA_MAX_TOKENS : 1];       // and what it needs of the rows' settings
    __shared__ float fin_f[SAMPLE ? 32 : 1];               // the last CTA's sample_finish_row scratch
    __shared__ int fin_i[SAMPLE ? 32 : 1], fin_claim[SAMPLE ? 4 : 1];
    __shared__ float fin_found;
    __shared__ int last_s;
    static_assert(sizeof(nred_s) >= GEMV_MMA_MAX_TOKENS * 64 * sizeof(bf16), "out_s fits in nred_s");
    const int tid = threadIdx.x, warp = tid >> 5;
    const int rows_cta = GEMV_WARPS * p.rows_per_warp, tiles = (p.n + rows_cta - 1) / rows_cta;
    const int groups = p.rows_per_warp, wpg = GEMV_WARPS / groups;
    unsigned long long* best = ARGMAX ? best_s : nullptr;
    // the fused reduce's outputs of a tile, [T][64]: in nred_s, which only the first tile's norm uses (before its barrier)
    bf16* out_s = SAMPLE ? reinterpret_cast<bf16*>(&nred_s[0][0]) : nullptr;
    if (ARGMAX && tid < GEMV_MMA_MAX_TOKENS) best_s[tid] = 0ull;   // before the first tile's barriers
    if (SAMPLE && tid < p.tokens) run_s[tid] = SamplePart{-QC_INF, SAMPLE_NONE, 0.f, SAMPLE_NONE};
    gemv_prologue<0>(p, blockIdx.x * rows_cta, 0, p.k);
    if (SAMPLE && tid < p.tokens) {                        // after the wait; seen after the staging barrier
        const SampleRowSettings s = row_settings(sp, tid);
        set_s[tid] = SampleFoldRow{s.inv_temperature, row_greedy(sp, s), row_uses_hist(sp, s)};
    }
    // the fused reduce: warp t folds row t's outputs of the tile at row_base (out_s complete after the barrier)
    auto fold = [&](int row_base) {
        if constexpr (SAMPLE) {
            __syncthreads();
            if (warp < p.tokens) sample_tile_fold(sp, warp, set_s[warp], out_s + warp * 64, row_base, min(rows_cta, p.n - row_base), &run_s[warp]);
        }
    };
    // stages x: in one round trip with the norm (gemv_mma_tile) but in the plain kernel, where the held batch spills at
    // sm_80 under its 64-register bound
    gemv_mma_tile<GEMV_WARPS, false, 1, 0, 0, MODE != GEMV_MMA_PLAIN>(p, blockIdx.x * rows_cta, groups, wpg, xm_s, red_s, nred_s, inv_s, GemvHeld<0>{}, true, best, out_s);
    fold(blockIdx.x * rows_cta);
#pragma unroll 1
    for (int tile = blockIdx.x + gridDim.x; tile < tiles; tile += gridDim.x) {
        __syncthreads();                                   // the tile before has read red_s (and the fold out_s)
        gemv_mma_tile<GEMV_WARPS, false>(p, tile * rows_cta, groups, wpg, xm_s, red_s, nred_s, inv_s, GemvHeld<0>{}, false, best, out_s);
        fold(tile * rows_cta);
    }
    if constexpr (ARGMAX || SAMPLE) {
        tail_begin();                                      // the CTA's stream is done: the fold into global memory and the ticket
        __syncthreads();                                   // every output folded into best_s / run_s
        if (ARGMAX && tid < p.tokens && best_s[tid] != 0ull) atomicMax(&p.argmax_keys[tid], best_s[tid]);
        if (SAMPLE && tid < p.tokens) sp.parts[(size_t)tid * gridDim.x + blockIdx.x] = run_s[tid];
        __threadfence();
        __syncthreads();
        if (tid == 0) last_s = atomicAdd(p.argmax_ticket, 1) == (int)gridDim.x - 1;
        __syncthreads();
        if (!last_s) return;
        __threadfence();
        if constexpr (ARGMAX) {
            if (tid < p.tokens) {
                const unsigned long long k = atomicExch(&p.argmax_keys[tid], 0ull);   // every CTA's fold is in; left zero
                p.argmax_ids[tid] = k == 0ull ? 0 : (int)(0xffffffffu - (unsigned int)(k & 0xffffffffull));
            }
        } else {
#pragma unroll 1
            for (int row = 0; row < p.tokens; row++)
                sample_finish_row<GEMV_THREADS, GEMV_SAMPLE_PARTS_HELD>(sp, row, sp.parts + (size_t)row * gridDim.x, gridDim.x, fin_f, fin_i, fin_claim, &fin_found);
        }
        if (tid == 0) *p.argmax_ticket = 0;
    }
}

extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MMA_MIN_CTAS_PER_SM) gemv_bf16_mma(GemvParams p) { gemv_mma_body<GEMV_MMA_PLAIN>(p, SampleRowsParams{}); }
// gemv_bf16_mma with the fused argmax (argmax_ids set): the greedy decode step's lm_head and its token in one launch.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MMA_MIN_CTAS_PER_SM) gemv_bf16_mma_argmax(GemvParams p) { gemv_mma_body<GEMV_MMA_ARGMAX>(p, SampleRowsParams{}); }
// gemv_bf16_mma with sample_reduce_bf16's work in the launch: the sampled decode step's lm_head and its reduce.
extern "C" __global__ void __launch_bounds__(GEMV_THREADS, GEMV_MMA_SAMPLE_MIN_CTAS_PER_SM) gemv_bf16_mma_sample(GemvSampleParams p) { gemv_mma_body<GEMV_MMA_SAMPLE>(p.g, p.s); }

// No __launch_bounds__ on the GEMV entries: with it, NVRTC 11.8's ptxas spilled 8-16 bytes in four of them (int8 t1/t2
// at sm_80, int4 t8 and bf16 t6 at sm_90) at 48-64 registers; without it none spills and the register counts stay
// 40-76 (256 threads x 76 registers fit an SM many times over). The launcher always uses GEMV_THREADS.
#define GEMV_INSTANCE(T) \
    extern "C" __global__ void gemv_bf16_t##T(GemvParams p) { gemv_body<T>(p); }
GEMV_INSTANCE(1)
GEMV_INSTANCE(2)
GEMV_INSTANCE(3)
GEMV_INSTANCE(4)
GEMV_INSTANCE(5)
GEMV_INSTANCE(6)
GEMV_INSTANCE(7)
GEMV_INSTANCE(8)

#define GEMV_QUANT_INSTANCE(T) \
    extern "C" __global__ void gemv_fp8_t##T(GemvParams p) { gemv_quant_body<T, QF_FP8>(p); } \
    extern "C" __global__ void gemv_int8_t##T(GemvParams p) { gemv_quant_body<T, QF_INT8>(p); } \
    extern "C" __global__ void gemv_int4_t##T(GemvParams p) { gemv_quant_body<T, QF_INT4>(p); }
GEMV_QUANT_INSTANCE(1)
GEMV_QUANT_INSTANCE(2)
GEMV_QUANT_INSTANCE(3)
GEMV_QUANT_INSTANCE(4)
GEMV_QUANT_INSTANCE(5)
GEMV_QUANT_INSTANCE(6)
GEMV_QUANT_INSTANCE(7)
GEMV_QUANT_INSTANCE(8)
