// attention_decode.cu: flash decoding over the paged KV cache, one query token per sequence, GQA.
//
//   out[s, h, :] = softmax(q[s, h] . K[kvh]^T * D^-0.5) . V[kvh],   kvh = h / (nH / nKV), keys 0..len_s-1
//
// KV cache layout (see rope.cu): [pages, page_size, nKV, D] bf16; key j of sequence s lives in slot
// block_table[s * max_pages_per_seq + j / page_size] * page_size + j % page_size.
//
// attn_decode_split: grid (splits, nKV, seqs), 128 threads = 4 warps. One CTA serves ALL query heads of
//   one KV head (the GQA group, up to 8: warp w owns group heads 2w and 2w+1), so each K/V tile is read
//   from global memory once per group. The context of sequence s is cut into `splits` ranges of
//   ceil(len / splits) keys rounded up to the 32-key tile; each CTA runs an online softmax (fp32, log2
//   domain: q is pre-scaled by D^-0.5 * log2(e), exp2f) over its range. The launcher grows `splits` with
//   the context (at most 8 tiles per split, at least one CTA per SM), so a long context runs several
//   CTAs per SM, each a short chain of tile loads (docs/kernels.md "Decode attention").
//   Per tile: the 128 threads load K and V rows (16-byte ld.global.nc, 16 threads per 256-byte row:
//   fully used sectors) into registers one tile ahead, with the block-table entries of the tile after
//   that (no page lookup between a tile's loads and the previous tile's arrival), then store them to shared memory (K rows padded
//   by 16 bytes: conflict-free 16-byte reads by lane-per-key). Scores: lane j = key j, dot over D for
//   the warp's 2 heads against q in shared memory (broadcast). P.V: lane owns D/32 output dims,
//   p_j comes from lane j by shuffle (D = 32: one dim per lane, scalar loads/stores chosen at compile time).
//   Output: splits == 1 writes bf16 `out` directly; otherwise the normalised fp32 partial output
//   [seqs, nH, splits, D] and its log2-sum-exp [seqs, nH, splits] (-inf for an empty range).
// attn_decode_combine: grid (seqs, nH), 256 threads: out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), bf16;
//   warp w sums splits w, w + 8, ... (8 splits' loads per round trip), the 8 warp sums added in a fixed order.
//   Launched with programmatic dependent launch: pdl_wait() first, nothing before it.
// Bytes moved: len * nKV * D * 2 * 2 (K and V, read once) + q + out + partials (splits * nH * (D+1) * 4 * 2).
// attn_decode_fused (below): the decode step's single attention node, rope.cu's prologue before the split loop and the
//   combine in the last CTA; the pair above (with qk_norm_rope_kv_write) is its bitwise oracle and the multi-row-run path.
// Variants: these; the CPU reference in src/Model/Selftest is their oracle.
#include "common.cuh"
// KV_FP8=1: the cache holds FP8 E4M3 codes (one byte per element, per-layer scale 1; docs/formats.md), decoded
// exactly to bf16 as they are loaded; everything after the load is the bf16 kernel. KV bytes read are halved.
#ifndef KV_FP8
#define KV_FP8 0
#endif
#if KV_FP8
#include "quant.cuh"
#endif

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
static_assert((HEAD_DIM % 32 == 0 || HEAD_DIM == 16) && HEAD_DIM <= 256, "HEAD_DIM must be 16 or a multiple of 32, at most 256");

#define DEC_TILE 32                          // keys per tile
#define DEC_THREADS 128
#define DEC_MAX_GROUP 8                      // query heads per KV head
#define DEC_ROW_CHUNKS (HEAD_DIM / 8)        // 16-byte chunks per K/V row
#define DEC_KSTRIDE (HEAD_DIM + 8)           // padded K row in shared memory (bf16 elements)
#define DEC_LOADS ((DEC_TILE * DEC_ROW_CHUNKS + DEC_THREADS - 1) / DEC_THREADS)   // chunks per thread per tile and tensor
#if HEAD_DIM == 16                           // D 16: half the threads load a tile; lane & 15 owns one dim (lanes 16..31
#define DEC_E 1                              // duplicate lanes 0..15 and do not store); selected at compile time
#define DEC_DIM0(lane) ((lane) & 15)
#define DEC_STORES(lane) ((lane) < 16)
#define DEC_ROW_OK(row) ((row) < DEC_TILE)
#else
#define DEC_E (HEAD_DIM / 32)                // output dims per lane
#define DEC_DIM0(lane) ((lane) * DEC_E)
#define DEC_STORES(lane) true
#define DEC_ROW_OK(row) true
#endif

struct AttnDecodeParams {
    const bf16* q;             // [seqs, q_stride] bf16, head h at columns h*D .. h*D+D-1
    const bf16* k_cache;       // [pages, page_size, nKV, D] bf16
    const bf16* v_cache;       // [pages, page_size, nKV, D] bf16
    const int* block_table;    // [seqs, max_pages_per_seq] int32
    const int* context_lens;   // [seqs] int32: keys 0 .. len-1 (the current token included)
    float* partial_out;        // [seqs, nH, splits, D] fp32 (splits > 1)
    float* partial_lse;        // [seqs, nH, splits] fp32, log2 domain (splits > 1)
    bf16* out;                 // [seqs, out_stride] bf16
    int seqs;
    int num_q_heads;
    int num_kv_heads;
    int page_size;
    int max_pages_per_seq;
    int splits;
    int q_stride;              // elements
    int out_stride;            // elements
    float scale_log2;          // D^-0.5 * log2(e)
};

__device__ __forceinline__ uint4 ldg_nc_v4(const void* p)
{
    uint4 r;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p) : "memory");
    return r;
}

// One split's online softmax (attn_decode_split and attn_decode_fused): keys [begin, end) of row `seq` for the query heads
// of KV head kvh, whose pre-scaled q is in q_s [DEC_MAX_GROUP][HEAD_DIM]; k_s / v_s are the caller's tile buffers. Key
// new_key (NEW_KEY and >= 0: attn_decode_fused's own token) is taken from knew_s / vnew_s and never loaded from the cache.
// Writes bf16 `out` (splits == 1) or the split's normalised fp32 partial output and log2-sum-exp.
template <bool NEW_KEY>
__device__ __forceinline__ void attn_split_range(
    const bf16* k_cache, const bf16* v_cache, const int* block_table, int max_pages_per_seq, int page_size,
    int num_q_heads, int num_kv_heads, int splits, float* partial_out, float* partial_lse, bf16* out, int out_stride,
    int seq, int kvh, int split, int group, int begin, int end, const float* q_s, bf16* k_s, bf16* v_s,
    int new_key, const bf16* knew_s, const bf16* vnew_s)
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int h0 = warp * 2;                 // this warp's two group heads (h0 + 1 may be >= group)
    float m[2] = {-QC_INF, -QC_INF}, l[2] = {0.f, 0.f};
    float acc[2][DEC_E];
#pragma unroll
    for (int h = 0; h < 2; h++)
#pragma unroll
        for (int e = 0; e < DEC_E; e++) acc[h][e] = 0.f;

    const int* table = block_table + (size_t)seq * max_pages_per_seq;
    uint4 k_reg[DEC_LOADS], v_reg[DEC_LOADS];
    int page[DEC_LOADS];                     // block-table entries of this thread's rows in the next tile to load
    auto load_pages = [&](int t0) {
#pragma unroll
        for (int r = 0; r < DEC_LOADS; r++) {
            const int row = (tid + r * DEC_THREADS) / DEC_ROW_CHUNKS, key = t0 + row;
            page[r] = DEC_ROW_OK(row) && key < end ? table[key / page_size] : 0;
        }
    };
    // Loads tile t0 (its pages are in page[]) and the pages of the tile after it, in the same round trip: the
    // block-table lookup never stands between a tile's loads and the previous tile's arrival.
    auto load_tile = [&](int t0) {
#pragma unroll
        for (int r = 0; r < DEC_LOADS; r++) {
            const int i = tid + r * DEC_THREADS, row = i / DEC_ROW_CHUNKS, col = i % DEC_ROW_CHUNKS;
            const int key = t0 + row;
            if (DEC_ROW_OK(row) && key < end && !(NEW_KEY && key == new_key)) {
                const int slot = page[r] * page_size + key % page_size;
                const size_t off = ((size_t)slot * num_kv_heads + kvh) * HEAD_DIM + col * 8;
#if KV_FP8
                k_reg[r] = e4m3x8_to_bf16(__ldg(reinterpret_cast<const uint2*>(reinterpret_cast<const unsigned char*>(k_cache) + off)));
                v_reg[r] = e4m3x8_to_bf16(__ldg(reinterpret_cast<const uint2*>(reinterpret_cast<const unsigned char*>(v_cache) + off)));
#else
                k_reg[r] = ldg_nc_v4(k_cache + off);
                v_reg[r] = ldg_nc_v4(v_cache + off);
#endif
            } else {
                k_reg[r] = make_uint4(0, 0, 0, 0);
                v_reg[r] = make_uint4(0, 0, 0, 0);
            }
        }
        load_pages(t0 + DEC_TILE);
    };

    if (begin < end) {
        load_pages(begin);
        load_tile(begin);
    }
    for (int t0 = begin; t0 < end; t0 += DEC_TILE) {
#pragma unroll
        for (int r = 0; r < DEC_LOADS; r++) {
            const int i = tid + r * DEC_THREADS, row = i / DEC_ROW_CHUNKS, col = i % DEC_ROW_CHUNKS;
            if (!DEC_ROW_OK(row)) continue;
            uint4 kq = k_reg[r], vq = v_reg[r];
            if (NEW_KEY && t0 + row == new_key) {   // the step's own token: from the prologue, never from the cache
                kq = *reinterpret_cast<const uint4*>(&knew_s[col * 8]);
                vq = *reinterpret_cast<const uint4*>(&vnew_s[col * 8]);
            }
            *reinterpret_cast<uint4*>(&k_s[row * DEC_KSTRIDE + col * 8]) = kq;
            *reinterpret_cast<uint4*>(&v_s[row * HEAD_DIM + col * 8]) = vq;
        }
        __syncthreads();
        if (t0 + DEC_TILE < end) load_tile(t0 + DEC_TILE);   // next tile in flight during the math

        // scores: lane = key
        float s[2] = {0.f, 0.f};
        const float* q0 = q_s + h0 * HEAD_DIM;
        const float* q1 = q0 + HEAD_DIM;
#pragma unroll 4
        for (int c = 0; c < DEC_ROW_CHUNKS; c++) {
            const uint4 kv = *reinterpret_cast<const uint4*>(&k_s[lane * DEC_KSTRIDE + c * 8]);
            const float4 a0 = *reinterpret_cast<const float4*>(q0 + c * 8), a1 = *reinterpret_cast<const float4*>(q0 + c * 8 + 4);
            const float4 b0 = *reinterpret_cast<const float4*>(q1 + c * 8), b1 = *reinterpret_cast<const float4*>(q1 + c * 8 + 4);
            const float k0 = bf16x2_lo(kv.x), k1 = bf16x2_hi(kv.x), k2 = bf16x2_lo(kv.y), k3 = bf16x2_hi(kv.y);
            const float k4 = bf16x2_lo(kv.z), k5 = bf16x2_hi(kv.z), k6 = bf16x2_lo(kv.w), k7 = bf16x2_hi(kv.w);
            s[0] += a0.x * k0 + a0.y * k1 + a0.z * k2 + a0.w * k3 + a1.x * k4 + a1.y * k5 + a1.z * k6 + a1.w * k7;
            s[1] += b0.x * k0 + b0.y * k1 + b0.z * k2 + b0.w * k3 + b1.x * k4 + b1.y * k5 + b1.z * k6 + b1.w * k7;
        }
        const bool valid = t0 + lane < end;
        float pr[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            const float sv = valid ? s[h] : -QC_INF;
            const float m_new = fmaxf(m[h], warp_max(sv));      // finite: every tile has a valid key
            const float alpha = exp2f(m[h] - m_new);            // 0 on the first tile (m = -inf)
            pr[h] = valid ? exp2f(sv - m_new) : 0.f;
            l[h] = l[h] * alpha + warp_sum(pr[h]);
            m[h] = m_new;
#pragma unroll
            for (int e = 0; e < DEC_E; e++) acc[h][e] *= alpha;
        }
        // P . V: lane owns dims lane*E .. lane*E+E-1
#pragma unroll 8
        for (int j = 0; j < DEC_TILE; j++) {
            const float p0 = __shfl_sync(0xffffffffu, pr[0], j), p1 = __shfl_sync(0xffffffffu, pr[1], j);
            const bf16* vrow = &v_s[j * HEAD_DIM + DEC_DIM0(lane)];
#if DEC_E == 1
            const float va = bf16_to_f32(vrow[0]);
            acc[0][0] += p0 * va;
            acc[1][0] += p1 * va;
#else
#pragma unroll
            for (int e = 0; e < DEC_E; e += 2) {
                const bf16x2 v2 = *reinterpret_cast<const bf16x2*>(vrow + e);
                const float va = bf16x2_lo(v2), vb = bf16x2_hi(v2);
                acc[0][e] += p0 * va; acc[0][e + 1] += p0 * vb;
                acc[1][e] += p1 * va; acc[1][e + 1] += p1 * vb;
            }
#endif
        }
        __syncthreads();   // the tile in shared memory is overwritten next iteration
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int gh = h0 + h;
        if (gh >= group) continue;
        const int head = kvh * group + gh;
        if (!DEC_STORES(lane)) continue;
        const float inv_l = l[h] > 0.f ? 1.f / l[h] : 0.f;
        if (splits == 1) {
            bf16* o = out + (size_t)seq * out_stride + (size_t)head * HEAD_DIM + DEC_DIM0(lane);
#if DEC_E == 1
            o[0] = f32_to_bf16(acc[h][0] * inv_l);
#else
#pragma unroll
            for (int e = 0; e < DEC_E; e += 2)
                *reinterpret_cast<bf16x2*>(o + e) = pack_bf16x2(acc[h][e] * inv_l, acc[h][e + 1] * inv_l);
#endif
        } else {
            const size_t row = ((size_t)seq * num_q_heads + head) * splits + split;
            float* o = partial_out + row * HEAD_DIM + DEC_DIM0(lane);
#if DEC_E == 1
            o[0] = acc[h][0] * inv_l;
#else
#pragma unroll
            for (int e = 0; e < DEC_E; e += 2)
                *reinterpret_cast<float2*>(o + e) = make_float2(acc[h][e] * inv_l, acc[h][e + 1] * inv_l);
#endif
            if (lane == 0) partial_lse[row] = l[h] > 0.f ? m[h] + __log2f(l[h]) : -QC_INF;
        }
    }
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode_split(AttnDecodeParams p)
{
    __shared__ __align__(16) bf16 k_s[DEC_TILE * DEC_KSTRIDE];
    __shared__ __align__(16) bf16 v_s[DEC_TILE * HEAD_DIM];
    __shared__ __align__(16) float q_s[DEC_MAX_GROUP * HEAD_DIM];

    const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x;
    const int group = p.num_q_heads / p.num_kv_heads;
    const int len = p.context_lens[seq];
    const int chunk = ((len + p.splits - 1) / p.splits + DEC_TILE - 1) / DEC_TILE * DEC_TILE;
    const int begin = split * chunk;
    const int end = min(len, begin + chunk);

    // q of the whole group, pre-scaled into the log2 domain
    const bf16* q = p.q + (size_t)seq * p.q_stride + (size_t)kvh * group * HEAD_DIM;
    for (int i = tid; i < DEC_MAX_GROUP * HEAD_DIM; i += DEC_THREADS)
        q_s[i] = i < group * HEAD_DIM ? bf16_to_f32(q[i]) * p.scale_log2 : 0.f;

    __syncthreads();
    attn_split_range<false>(p.k_cache, p.v_cache, p.block_table, p.max_pages_per_seq, p.page_size, p.num_q_heads, p.num_kv_heads,
                            p.splits, p.partial_out, p.partial_lse, p.out, p.out_stride, seq, kvh, split, group, begin, end, q_s, k_s, v_s,
                            -1, nullptr, nullptr);
}

// Combine: grid (seqs, nH), 256 threads. All threads find the largest lse over the splits; warp w then sums splits
// w, w + 8, ... (lane owns dims DEC_DIM0(lane) .. + DEC_E, unrolled so several splits' loads share a round trip),
// and the 8 warps' sums are added in a fixed order: out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), bf16.
#define COMB_THREADS 256
#define COMB_WARPS (COMB_THREADS / 32)
extern "C" __global__ void __launch_bounds__(COMB_THREADS) attn_decode_combine(AttnDecodeParams p)
{
    __shared__ float red_s[COMB_WARPS];
    __shared__ float num_s[COMB_WARPS][HEAD_DIM];
    __shared__ float den_s[COMB_WARPS];
    const int seq = blockIdx.x, head = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    pdl_wait();                              // everything it reads is the split kernel's (docs/kernels.md, PDL)
    pdl_launch_dependents();
    const size_t row0 = ((size_t)seq * p.num_q_heads + head) * p.splits;
    float mx = -QC_INF;
    for (int s = tid; s < p.splits; s += COMB_THREADS) mx = fmaxf(mx, p.partial_lse[row0 + s]);
    mx = warp_max(mx);
    if (lane == 0) red_s[warp] = mx;
    __syncthreads();
    mx = red_s[0];
#pragma unroll
    for (int w = 1; w < COMB_WARPS; w++) mx = fmaxf(mx, red_s[w]);

    float num[DEC_E], den = 0.f;
#pragma unroll
    for (int e = 0; e < DEC_E; e++) num[e] = 0.f;
    if (mx > -QC_INF) {
#pragma unroll 8
        for (int s = warp; s < p.splits; s += COMB_WARPS) {
            const float lse = p.partial_lse[row0 + s];
            const float* o = p.partial_out + (row0 + s) * HEAD_DIM + DEC_DIM0(lane);
            float v[DEC_E];
#if DEC_E == 1
            v[0] = o[0];
#else
#pragma unroll
            for (int e = 0; e < DEC_E; e += 2) {
                const float2 t = *reinterpret_cast<const float2*>(o + e);
                v[e] = t.x;
                v[e + 1] = t.y;
            }
#endif
            const float w = lse == -QC_INF ? 0.f : exp2f(lse - mx);   // an empty split's partial is 0
            den += w;
#pragma unroll
            for (int e = 0; e < DEC_E; e++) num[e] += w * v[e];
        }
    }
    if (DEC_STORES(lane)) {
#pragma unroll
        for (int e = 0; e < DEC_E; e++) num_s[warp][DEC_DIM0(lane) + e] = num[e];
    }
    if (lane == 0) den_s[warp] = den;
    __syncthreads();
    for (int d = tid; d < HEAD_DIM; d += COMB_THREADS) {
        float n = 0.f, z = 0.f;
#pragma unroll
        for (int w = 0; w < COMB_WARPS; w++) { n += num_s[w][d]; z += den_s[w]; }
        p.out[(size_t)seq * p.out_stride + (size_t)head * HEAD_DIM + d] = f32_to_bf16(z > 0.f ? n / z : 0.f);
    }
}

// attn_decode_fused: one node per layer for decode rows whose earlier keys all come from earlier steps (one row per
// sequence: the captured decode graph). Grid (splits, nKV, seqs), 128 threads, the split loop of attn_decode_split;
// around it:
//   Prologue: the CTA normalises and rotates its row's q heads of the group and the k head, and takes the v head, from
//   the qkv GEMV's output with rope.cu's arithmetic (rope.cuh; cos / sin of the D/2 frequencies computed once per CTA
//   into shared memory), so q, K and V are bitwise qk_norm_rope_kv_write's. Warp w takes the rows w, w + 4, w + 8 of
//   (q heads of the group | k | v), all loads issued before any arithmetic. Split 0 writes the new K and V into the
//   paged cache at slot_mapping[seq] (slot < 0: padding, nothing) and q to q_out when it is given; the CTA whose range
//   holds the new key (len - 1) takes its K and V rows from shared memory, and no CTA loads that key from the cache,
//   so the launch has no write-read race on it.
//   Combine: with splits > 1 each CTA writes its partials, fences and takes a ticket for (row, KV head); the last one
//   (it resets the ticket) merges the group's heads with attn_decode_combine's sums in that kernel's order (see
//   fused_combine), so the output is bitwise split + combine's. tickets[] are zero before the first launch (cleared
//   once with the workspace) and left zero. With more than FUSED_MAX_COMBINE_SPLITS splits (a long context: one CTA
//   would pull too many partials through one SM) tickets is null and the launcher runs attn_decode_combine after.
//   All loads the prologue needs go out in one round trip, the context length's.
// PDL: before pdl_wait() only an L2 prefetch of the two norm weights (everything else may come from the kernel before).
// Bytes moved: attn_decode_split's + the qkv rows (splits x (group + 2) x D x 2 per (row, KV head), from L2) + the new K
// and V (written once) + the partials read back by the last CTAs, one ticket per (row, KV head).
// Compiled for the head sizes rope.cu supports (16, 32, 64, 128, 256).
struct AttnDecodeFusedParams {
    const bf16* qkv;           // [seqs, qkv_stride] bf16: q heads | k heads | v heads (the qkv projection)
    bf16* q_out;               // [seqs, q_out_stride] bf16 normalised + rotated q, or null (not written)
    bf16* k_cache;             // [pages, page_size, nKV, D] bf16 (or E4M3 codes, KV_FP8): read, and the new key written
    bf16* v_cache;             // [pages, page_size, nKV, D]
    const bf16* q_norm_weight; // [D]
    const bf16* k_norm_weight; // [D]
    const float* inv_freq;     // [D / 2] fp32, or [seqs, D / 2] when inv_freq_per_token
    const int* positions;      // [seqs] the new token's position (= context_lens - 1)
    const int* slot_mapping;   // [seqs] cache slot of the new token; < 0: not written
    const int* block_table;    // [seqs, max_pages_per_seq] int32
    const int* context_lens;   // [seqs] keys 0 .. len-1, the new token (key len-1) included
    float* partial_out;        // [seqs, nH, splits, D] fp32 (splits > 1)
    float* partial_lse;        // [seqs, nH, splits] fp32, log2 domain (splits > 1)
    int* tickets;              // [seqs, nKV] (splits > 1) zero on entry, left zero
    bf16* out;                 // [seqs, out_stride] bf16
    int seqs;
    int num_q_heads;
    int num_kv_heads;
    int page_size;
    int max_pages_per_seq;
    int splits;
    int qkv_stride;            // elements
    int q_out_stride;          // elements
    int out_stride;            // elements
    float scale_log2;          // D^-0.5 * log2(e)
    float eps;                 // q / k RMSNorm epsilon
    float attention_scaling;   // RoPE cos / sin factor (YaRN; 1 otherwise)
    int inv_freq_per_token;    // 0: one shared table; 1: row seq of inv_freq (dynamic NTK)
};

#if HEAD_DIM == 16 || HEAD_DIM == 32 || HEAD_DIM == 64 || HEAD_DIM == 128 || HEAD_DIM == 256
#include "rope.cuh"

#define FUSED_MAX_COMBINE_SPLITS 64                                    // more: the tickets are null, attn_decode_combine runs after
#define FUSED_TILE_BYTES (DEC_TILE * DEC_KSTRIDE * 2 + DEC_TILE * HEAD_DIM * 2)
#define FUSED_COMB_BYTES (DEC_MAX_GROUP * FUSED_MAX_COMBINE_SPLITS * 4)
#define FUSED_SMEM_BYTES (FUSED_TILE_BYTES > FUSED_COMB_BYTES ? FUSED_TILE_BYTES : FUSED_COMB_BYTES)
#define COMB_VEC (HEAD_DIM / 16 < 4 ? HEAD_DIM / 16 : 4)                 // floats per load in the last CTA's combine
#define COMB_CHUNKS (HEAD_DIM / (16 * COMB_VEC))                        // loads per split and thread

__device__ __forceinline__ float ld_cg_f32(const float* p)
{
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ float2 ld_cg_f32x2(const float* p)
{
    float2 v;
    asm volatile("ld.global.cg.v2.f32 {%0, %1}, [%2];" : "=f"(v.x), "=f"(v.y) : "l"(p) : "memory");
    return v;
}

template <int V> struct CombVec;
template <> struct CombVec<1> { static __device__ __forceinline__ void load(const float* p, float* v) { v[0] = ld_cg_f32(p); } };
template <> struct CombVec<2> {
    static __device__ __forceinline__ void load(const float* p, float* v) { const float2 t = ld_cg_f32x2(p); v[0] = t.x; v[1] = t.y; }
};
template <> struct CombVec<4> {
    static __device__ __forceinline__ void load(const float* p, float* v)
    {
        asm volatile("ld.global.cg.v4.f32 {%0, %1, %2, %3}, [%4];" : "=f"(v[0]), "=f"(v[1]), "=f"(v[2]), "=f"(v[3]) : "l"(p) : "memory");
    }
};

// The last CTA of (seq, kvh): attn_decode_combine's sums for the group's heads, in its order. That kernel's warp vw sums
// splits vw, vw + 8, ... (p_vw, from 0) and the output is (((0 + p_0) + p_1) + ... + p_7) / (the same of the weights).
// Here thread (h = tid / 16, l = tid % 16) owns dims c * 16 * COMB_VEC + l * COMB_VEC .. of head h and walks the splits
// in that vw-major order, 8 splits' loads per round trip, adding p_vw to its total when vw's last split is in; it sums
// the weights the same way, so each owner has its head's denominator without another pass. The order is a table in
// shared memory (order_s[i]: the split at position i, COMB_LAST set on the last split of its vw), one division per
// thread to build it instead of two per split and thread. A split with lse -inf is empty (its partial is 0: skipping
// its product changes no bit). w_s (the tile buffers, free now): the weights 2^(lse - max), -1 for a skipped split.
#define COMB_LAST 0x10000
__device__ __forceinline__ void fused_combine(const AttnDecodeFusedParams& p, int seq, int kvh, int group, float* w_s, float* mx_s, int* order_s)
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int S = p.splits;
    const size_t head0 = (size_t)seq * p.num_q_heads + (size_t)kvh * group;    // the group's first row of [seqs * nH]
    // vw-major order: the first S % 8 of attn_decode_combine's warps have q + 1 splits, the others q
    static_assert(FUSED_MAX_COMBINE_SPLITS <= DEC_THREADS, "one order entry per thread");
    if (tid < S) {
        const int q = S / 8, r = S % 8;
        int vw, k, count;
        if (tid < r * (q + 1)) { vw = tid / (q + 1); k = tid % (q + 1); count = q + 1; }
        else { const int j = tid - r * (q + 1); vw = r + j / q; k = j % q; count = q; }
        order_s[tid] = (vw + 8 * k) | (k == count - 1 ? COMB_LAST : 0);
    }
    __syncthreads();
    const int h = tid >> 4, l = tid & 15;
    const bool owner = h < group;
    const float* base = p.partial_out + (head0 + (owner ? h : 0)) * S * HEAD_DIM + l * COMB_VEC;
    float v[8][COMB_CHUNKS][COMB_VEC];
    int o[8];
    // Loads the partials of splits i0 .. i0 + 7 (vw-major); every split wrote its partial (0 when empty), so the loads
    // need no weight and the first batch goes out with the lse loads.
    auto load_batch = [&](int i0) {
#pragma unroll
        for (int j = 0; j < 8; j++) {
            o[j] = 0;
            if (!owner || i0 + j >= S) continue;
            o[j] = order_s[i0 + j];
            const float* src = base + (size_t)(o[j] & (COMB_LAST - 1)) * HEAD_DIM;
#pragma unroll
            for (int c = 0; c < COMB_CHUNKS; c++) CombVec<COMB_VEC>::load(src + c * 16 * COMB_VEC, v[j][c]);
        }
    };
    load_batch(0);
#pragma unroll
    for (int k = 0; k < DEC_MAX_GROUP * FUSED_MAX_COMBINE_SPLITS / DEC_THREADS; k++) {
        const int i = tid + k * DEC_THREADS;
        if (i < group * S) w_s[i] = ld_cg_f32(p.partial_lse + head0 * S + i);
    }
    __syncthreads();
    for (int hh = warp; hh < group; hh += DEC_THREADS / 32) {               // the largest lse of each head
        float mx = -QC_INF;
        for (int t = lane; t < S; t += 32) mx = fmaxf(mx, w_s[hh * S + t]);
        mx = warp_max(mx);
        if (lane == 0) mx_s[hh] = mx;
    }
    __syncthreads();
    for (int i = tid; i < group * S; i += DEC_THREADS) {                    // weights; -1: an empty split, skipped
        const float mx = mx_s[i / S], lse = w_s[i];
        w_s[i] = mx > -QC_INF && lse != -QC_INF ? exp2f(lse - mx) : -1.f;
    }
    __syncthreads();
    if (!owner) return;
    const float* w_h = w_s + h * S;
    float n[COMB_CHUNKS][COMB_VEC], pp[COMB_CHUNKS][COMB_VEC], z = 0.f, zz = 0.f;
#pragma unroll
    for (int c = 0; c < COMB_CHUNKS; c++)
#pragma unroll
        for (int e = 0; e < COMB_VEC; e++) { n[c][e] = 0.f; pp[c][e] = 0.f; }
    for (int i0 = 0; i0 < S; i0 += 8) {
        if (i0 > 0) load_batch(i0);
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (i0 + j >= S) break;
            const float w = w_h[o[j] & (COMB_LAST - 1)];
            if (w >= 0.f) {
                zz += w;
#pragma unroll
                for (int c = 0; c < COMB_CHUNKS; c++)
#pragma unroll
                    for (int e = 0; e < COMB_VEC; e++) pp[c][e] += w * v[j][c][e];
            }
            if (o[j] & COMB_LAST) {
                z += zz;
                zz = 0.f;
#pragma unroll
                for (int c = 0; c < COMB_CHUNKS; c++)
#pragma unroll
                    for (int e = 0; e < COMB_VEC; e++) { n[c][e] += pp[c][e]; pp[c][e] = 0.f; }
            }
        }
    }
    bf16* out = p.out + (size_t)seq * p.out_stride + (size_t)(kvh * group + h) * HEAD_DIM + l * COMB_VEC;
#pragma unroll
    for (int c = 0; c < COMB_CHUNKS; c++)
#pragma unroll
        for (int e = 0; e < COMB_VEC; e++) out[c * 16 * COMB_VEC + e] = f32_to_bf16(z > 0.f ? n[c][e] / z : 0.f);
}

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode_fused(AttnDecodeFusedParams p)
{
    __shared__ __align__(16) unsigned char tiles_s[FUSED_SMEM_BYTES];   // K / V tiles; the last CTA's combine sums
    __shared__ __align__(16) float q_s[DEC_MAX_GROUP * HEAD_DIM];
    __shared__ __align__(16) bf16 knew_s[HEAD_DIM];
    __shared__ __align__(16) bf16 vnew_s[HEAD_DIM];
    __shared__ float cos_s[HEAD_DIM / 2], sin_s[HEAD_DIM / 2];
    __shared__ float mx_s[DEC_MAX_GROUP];
    __shared__ int order_s[FUSED_MAX_COMBINE_SPLITS];
    __shared__ int is_last;

    const int split = blockIdx.x, kvh = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int group = p.num_q_heads / p.num_kv_heads;

    // PDL (docs/kernels.md, "Programmatic dependent launch"): before the wait only the norm weights, into L2.
    if (tid < 2 * ((HEAD_DIM * 2 + 127) / 128)) prefetch_l2((tid & 1 ? p.k_norm_weight : p.q_norm_weight) + (tid >> 1) * 64);
    pdl_wait();
    pdl_launch_dependents();

    // Prologue loads, all in one round trip with the context length: rows w, w + 4, w + 8 of (q heads of the group | k |
    // v) for warp w, both norm weights, the position, slot and inv_freq.
    const int tasks = group + 2;
    const bf16* qkv = p.qkv + (size_t)seq * p.qkv_stride;
    float x[3][ROPE_E];
#pragma unroll
    for (int r = 0; r < 3; r++) {
        const int task = warp + 4 * r;
#pragma unroll
        for (int e = 0; e < ROPE_E; e++) x[r][e] = 0.f;
        if (task >= tasks || !ROPE_ACTIVE(lane)) continue;
        const int col = task < group ? (kvh * group + task) * HEAD_DIM
                      : task == group ? (p.num_q_heads + kvh) * HEAD_DIM : (p.num_q_heads + p.num_kv_heads + kvh) * HEAD_DIM;
        load_row(qkv + col + lane * ROPE_E, x[r]);
    }
    float wq[ROPE_E], wk[ROPE_E];
    load_norm_weight(p.q_norm_weight, wq, lane);
    load_norm_weight(p.k_norm_weight, wk, lane);
    const float pos = (float)p.positions[seq];
    const int slot = p.slot_mapping[seq];
    const float* inv_freq = p.inv_freq + (p.inv_freq_per_token ? (size_t)seq * (HEAD_DIM / 2) : 0);
    static_assert(HEAD_DIM / 2 <= DEC_THREADS, "one frequency per thread");
    if (tid < HEAD_DIM / 2) rope_cos_sin(pos, __ldg(&inv_freq[tid]), p.attention_scaling, cos_s[tid], sin_s[tid]);
    for (int i = group * HEAD_DIM + tid; i < DEC_MAX_GROUP * HEAD_DIM; i += DEC_THREADS) q_s[i] = 0.f;

    const int len = p.context_lens[seq];
    const int chunk = ((len + p.splits - 1) / p.splits + DEC_TILE - 1) / DEC_TILE * DEC_TILE;
    const int begin = split * chunk;
    const int end = min(len, begin + chunk);
    const int new_key = len - 1;
    const bool writer = split == 0;                       // writes the new K / V (and q_out)
    const bool holds_new = begin <= new_key && new_key < end;
    const bool need_kv = writer || holds_new;
    __syncthreads();

    const bool first_half = lane < ROPE_HALF;
#pragma unroll
    for (int r = 0; r < 3; r++) {
        const int task = warp + 4 * r;                    // warp-uniform
        const bool is_q = task < group, is_k = task == group;
        if (task >= tasks || (is_q ? begin >= end : !need_kv)) continue;
        if (!is_q && !is_k) {                             // v: as loaded
            if (!ROPE_ACTIVE(lane)) continue;
            store_kv_readback(vnew_s + lane * ROPE_E, x[r]);
            if (writer && slot >= 0) STORE_KV(p.v_cache, ((size_t)slot * p.num_kv_heads + kvh) * HEAD_DIM + lane * ROPE_E, x[r]);
            continue;
        }
        rope_rmsnorm_row(x[r], is_q ? wq : wk, p.eps);
        float y[ROPE_E];
#pragma unroll
        for (int e = 0; e < ROPE_E; e++) {
            const int j = (lane & (ROPE_HALF - 1)) * ROPE_E + e;
            const float partner = __shfl_xor_sync(0xffffffffu, x[r][e], ROPE_HALF);
            y[e] = rope_rotate(x[r][e], partner, first_half, cos_s[j], sin_s[j]);
        }
        if (!ROPE_ACTIVE(lane)) continue;
        if (is_q) {
#pragma unroll
            for (int e = 0; e < ROPE_E; e++) q_s[task * HEAD_DIM + lane * ROPE_E + e] = y[e] * p.scale_log2;
            if (writer && p.q_out)
                store_row(p.q_out + (size_t)seq * p.q_out_stride + (size_t)(kvh * group + task) * HEAD_DIM + lane * ROPE_E, y);
        } else {
            store_kv_readback(knew_s + lane * ROPE_E, y);
            if (writer && slot >= 0) STORE_KV(p.k_cache, ((size_t)slot * p.num_kv_heads + kvh) * HEAD_DIM + lane * ROPE_E, y);
        }
    }
    __syncthreads();

    bf16* k_s = reinterpret_cast<bf16*>(tiles_s);
    bf16* v_s = k_s + DEC_TILE * DEC_KSTRIDE;
    attn_split_range<true>(p.k_cache, p.v_cache, p.block_table, p.max_pages_per_seq, p.page_size, p.num_q_heads, p.num_kv_heads,
                           p.splits, p.partial_out, p.partial_lse, p.out, p.out_stride, seq, kvh, split, group, begin, end, q_s, k_s, v_s,
                           holds_new ? new_key : -1, knew_s, vnew_s);
    if (p.splits == 1 || !p.tickets) return;

    // Ticket: the last CTA of (seq, kvh) combines.
    int* ticket = p.tickets + (size_t)seq * p.num_kv_heads + kvh;
    __threadfence();
    __syncthreads();
    if (tid == 0) is_last = atomicAdd(ticket, 1) == p.splits - 1;
    __syncthreads();
    if (!is_last) return;
    __threadfence();
    if (tid == 0) *ticket = 0;
    fused_combine(p, seq, kvh, group, reinterpret_cast<float*>(tiles_s), mx_s, order_s);
}
#endif
