// attention_decode.cuh: the decode attention's device code, shared by attention_decode.cu (its kernels: the header comment
// there has the thread mapping and memory traffic) and persistent_decode.cu (the fused attention as tiles of a persistent
// launch): the parameter blocks, the split loop (attn_split_range), the last CTA's combine and the fused tile.
#pragma once
#include "mma.cuh"
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

#define DEC_TC (HEAD_DIM <= 128)              // tensor-core split; HEAD_DIM 256 keeps the scalar one (see below)
#define DEC_THREADS 128
#define DEC_MAX_GROUP 8                      // query heads per KV head
#define DEC_ROW_CHUNKS (HEAD_DIM / 8)        // 16-byte chunks per K/V row
#if DEC_TC
#define DEC_TILE 64                          // keys per tile: warp w owns keys 16w .. 16w + 15
#define DEC_ALIGN 16                         // a split's range: a multiple of 16 keys (one warp's share of a tile)
#define DEC_KSTRIDE (HEAD_DIM + 8)           // padded K / V rows in shared memory (bf16 elements): conflict-free ldmatrix
#define DEC_VSTRIDE (HEAD_DIM + 8)
#define DEC_DK (HEAD_DIM / 16)               // k-steps over D for S = Q K^T
#define DEC_DN (HEAD_DIM / 8)                // n8 tiles over D for O
#define DEC_WPAIRS ((DEC_DN / 2 + 3) / 4)    // n-tile pairs of O per warp: warp w owns pairs w, w + 4, ...
#else
#define DEC_TILE 32                          // keys per tile
#define DEC_ALIGN 32
#define DEC_KSTRIDE (HEAD_DIM + 8)           // padded K row in shared memory (bf16 elements)
#define DEC_VSTRIDE HEAD_DIM
#endif
#define DEC_LOADS ((DEC_TILE * DEC_ROW_CHUNKS + DEC_THREADS - 1) / DEC_THREADS)   // chunks per thread per tile and tensor
// attn_fused_tile issues its split's first K / V tile into shared memory before its inputs are ready (the tensor-core
// split, bf16 cache: cp.async); otherwise it prefetches the tile's rows into L2 and the split loads them after.
#define DEC_PRELOAD (DEC_TC && !KV_FP8)
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
    int splits;                // the grid's splits: the partials' stride (a row uses row_splits of them)
    int q_stride;              // elements
    int out_stride;            // elements
    float scale_log2;          // D^-0.5 * log2(e)
    int min_splits;            // the launcher's one-CTA-per-SM share of splits (row_splits)
};

// The splits a row of `len` keys uses out of the grid's `grid_splits`: the launcher's plan
// (AttentionDecodeLaunchers.PlanSplits) for this length rather than for the longest context the graph was captured for:
// at least `min_splits` (one CTA per SM over the rows and KV heads), at most 8 tiles of 64 keys per split up to 64 splits,
// at most one split per tile, at most the grid's.
#define ROW_SPLIT_TILE_KEYS 64
#define ROW_SPLIT_MAX_TILES 8
#define ROW_SPLIT_MAX_SPLITS 64
__device__ __forceinline__ int row_splits(int len, int grid_splits, int min_splits)
{
    const int tiles = max(1, (len + ROW_SPLIT_TILE_KEYS - 1) / ROW_SPLIT_TILE_KEYS);
    const int for_length = min((tiles + ROW_SPLIT_MAX_TILES - 1) / ROW_SPLIT_MAX_TILES, ROW_SPLIT_MAX_SPLITS);
    return max(1, min(grid_splits, min(tiles, max(min_splits, for_length))));
}

// The (split, KV head) of this CTA of a grid (splits, nKV, seqs), the KV head varying fastest in the CTAs' order: the
// splits a short row uses (the first ones) are dispatched before the CTAs past its plan, which exit at once. The split
// and fused kernels number their CTAs alike.
__device__ __forceinline__ void decode_cta(int num_kv_heads, int& split, int& kvh)
{
    const int cta = blockIdx.x + gridDim.x * blockIdx.y;
    split = cta / num_kv_heads;
    kvh = cta % num_kv_heads;
}

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
#if DEC_TC
// Tensor-core split (HEAD_DIM <= 128). Warp w scores keys 16w .. 16w + 15 of every 64-key tile and owns the n-tile pairs
// w, w + 4, ... of O (32 of the 128 dims at D 128), so O takes 16 registers per thread instead of 64 and no merge of the
// warps' O is needed at the end; the GQA group is the M side of mma.sync m16n8k16. S = Q K^T: A = q (rows 0..7 the
// group's heads, bf16 exactly; rows 8..15 zero), B = K by ldmatrix from the [key][dim] tile; the fp32 scores are scaled by
// scale_log2. The online softmax keeps one running max per head for the CTA: each tile's max over the 4 warps goes
// through shared memory (one barrier), each warp keeps its own keys' share of the sum (all scaled to that max; added in
// warp order at the end). O += P V: a warp's two 8-key n-tiles of S are the A fragment of one 16-key k-step
// (FlashAttention-2), with rows 0..7 = bf16(p) and rows 8..15 = bf16(p - bf16(p)), so one mma per n-tile accumulates
// P_hi V in c0/c1 and P_lo V in c2/c3 (p to ~2^-17 relative); the 4 warps' fragments go through shared memory (a second
// barrier) and every warp runs the tile's 4 k-steps on its own dims, V by ldmatrix.trans.
// A thread loads DEC_PAIR chunks of each of its rows (one slot lookup for both): columns col and col + DEC_ROW_UNITS, so
// the lanes of one instruction still cover whole 128-byte runs of consecutive rows.
#define DEC_PAIR (DEC_LOADS >= 2 ? 2 : 1)
#define DEC_ROW_UNITS (DEC_ROW_CHUNKS / DEC_PAIR)          // threads per row
#define DEC_ROWS (DEC_LOADS / DEC_PAIR)                    // rows per thread and tile
#define DEC_ROW_STEP (DEC_THREADS / DEC_ROW_UNITS)         // rows between a thread's rows of a tile
static_assert(DEC_THREADS % DEC_ROW_UNITS == 0 && DEC_ROWS * DEC_ROW_STEP == DEC_TILE && DEC_KSTRIDE == DEC_VSTRIDE,
              "a thread's chunks: DEC_ROWS rows of DEC_PAIR chunks, the same columns in every row");

// The shared-memory forms of cp.async and ldmatrix on 32-bit shared addresses (computed once per thread, plus constants).
__device__ __forceinline__ void cp_async_16_at(unsigned int dst, const void* src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_at(unsigned int (&r)[4], unsigned int addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}
__device__ __forceinline__ void ldmatrix_x4_trans_at(unsigned int (&r)[4], unsigned int addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr) : "memory");
}

template <bool NEW_KEY, int PART = 0>
__device__ __forceinline__ void attn_split_range(
    const bf16* k_cache, const bf16* v_cache, const int* block_table, int max_pages_per_seq, int page_size,
    int num_q_heads, int num_kv_heads, int splits, int split_stride, float* partial_out, float* partial_lse, bf16* out, int out_stride,
    int seq, int kvh, int split, int group, int begin, int end, float scale_log2, const float* q_s, bf16* k_s, bf16* v_s,
    int new_key, const bf16* knew_s, const bf16* vnew_s)
{
    static_assert(PART == 0 || (NEW_KEY && DEC_PRELOAD), "the first tile issued apart: attn_fused_tile's bf16 cache only");
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int g = lane >> 2, t2 = (lane & 3) * 2;   // fragment row (group head g; g + 8 the lo half) and column pair
    const int* table = block_table + (size_t)seq * max_pages_per_seq;
    // This thread's chunks of a tile: rows row0 + r * DEC_ROW_STEP, columns col + c * DEC_ROW_UNITS (16 bytes each); their
    // cache offset is slot * row_elems + col_off + c * DEC_ROW_UNITS * 8 elements, their shared offset tile_off + r *
    // DEC_ROW_STEP rows + c * DEC_ROW_UNITS * 16 bytes.
    const int row0 = tid / DEC_ROW_UNITS, col = tid % DEC_ROW_UNITS;
    const unsigned int row_elems = (unsigned int)num_kv_heads * HEAD_DIM;
    const size_t col_off = (size_t)kvh * HEAD_DIM + col * 8;
    const unsigned int tile_off = (unsigned int)(row0 * DEC_KSTRIDE + col * 8) * 2;
    const unsigned int k_base = smem_addr(k_s), v_base = smem_addr(v_s);
    // ldmatrix row addresses of this lane (K: keys 16w + (lane & 7) + 8 (lane >> 4), dims 8 ((lane >> 3) & 1), stepped by
    // 32 bytes per k-step; V: keys (lane & 7) + 8 ((lane >> 3) & 1) of a 16-key step, dims 8 (lane >> 4) of an n-tile
    // pair, stepped by 16 rows per k-step and 32 bytes per pair)
    const unsigned int k_lm = k_base + ((warp * 16 + (lane & 7) + ((lane >> 4) << 3)) * DEC_KSTRIDE + ((lane >> 3) & 1) * 8) * 2;
    const unsigned int v_lm = v_base + (((lane & 7) + ((lane >> 3) & 1) * 8) * DEC_VSTRIDE + (lane >> 4) * 8) * 2;

    // q as A fragments (a1 / a3, rows 8..15, are zero): q_s holds bf16 values, so the bf16 packing is exact. Held in
    // registers; KV_FP8 re-reads them per tile instead (its decode needs the registers).
    auto q_frag = [&](int kk, unsigned int (&f)[2]) {
        const float2 lo = *reinterpret_cast<const float2*>(&q_s[g * HEAD_DIM + kk * 16 + t2]);
        const float2 hi = *reinterpret_cast<const float2*>(&q_s[g * HEAD_DIM + kk * 16 + 8 + t2]);
        f[0] = pack_bf16x2(lo.x, lo.y);
        f[1] = pack_bf16x2(hi.x, hi.y);
    };
    // head g: the CTA's running max (log2 domain, the same in every warp) and this thread's share of the sum over the
    // warp's own keys; O of the warp's n-tile pairs (dims (2 (warp + 4 i) + j) * 8 + t2, +1: c0/c1 from P_hi, c2/c3 from P_lo)
    float m = -QC_INF, l = 0.f;
    float o[DEC_WPAIRS][2][4];
#pragma unroll
    for (int i = 0; i < DEC_WPAIRS; i++)
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) o[i][j][e] = 0.f;
    __shared__ float tmax_s[4][DEC_MAX_GROUP];      // each warp's tile max per head, then its sum per head
    __shared__ uint4 p_s[4][32];                    // each warp's P fragment (its 16 keys of the tile) per lane

    int page[DEC_ROWS];                             // block-table entries of this thread's rows in the next tile to load
    auto load_pages = [&](int t0) {
#pragma unroll
        for (int r = 0; r < DEC_ROWS; r++) {
            const int key = t0 + row0 + r * DEC_ROW_STEP;
            page[r] = key < end ? table[key / page_size] : 0;
        }
    };
    // Tile t0 (pages in page[]) into shared memory, and the pages of the tile after it in the same round trip. bf16: cp.async
    // (keys past the range zero-filled); KV_FP8: registers, decoded, st.shared. The new key comes from knew_s / vnew_s.
    // rows: 0 all of them; 1 (PART 1) only the cached rows, by cp.async, and no pages after; 2 (PART 2) only the new key's.
    auto load_tile = [&](int t0, int rows) {
#if KV_FP8
        uint2 kc[DEC_ROWS][DEC_PAIR], vc[DEC_ROWS][DEC_PAIR];   // the codes of all chunks in flight, then decoded (code 0 is +0)
#endif
#pragma unroll
        for (int r = 0; r < DEC_ROWS; r++) {
            const int key = t0 + row0 + r * DEC_ROW_STEP;
            const bool mine = NEW_KEY && key == new_key;
            const bool ok = key < end && !mine;
            const size_t off = ok && rows != 2 ? (size_t)(unsigned int)(page[r] * page_size + key % page_size) * row_elems + col_off : 0;
#if KV_FP8
            const unsigned char* kp = reinterpret_cast<const unsigned char*>(k_cache) + off;
            const unsigned char* vp = reinterpret_cast<const unsigned char*>(v_cache) + off;
#pragma unroll
            for (int c = 0; c < DEC_PAIR; c++) {
                kc[r][c] = ok ? __ldg(reinterpret_cast<const uint2*>(kp + c * DEC_ROW_UNITS * 8)) : make_uint2(0, 0);
                vc[r][c] = ok ? __ldg(reinterpret_cast<const uint2*>(vp + c * DEC_ROW_UNITS * 8)) : make_uint2(0, 0);
            }
#else
            const unsigned int dst = tile_off + r * DEC_ROW_STEP * DEC_KSTRIDE * 2;
#pragma unroll
            for (int c = 0; c < DEC_PAIR; c++) {
                const unsigned int d = dst + c * DEC_ROW_UNITS * 16;
                if (mine) {
                    if (rows == 1) continue;
                    *reinterpret_cast<uint4*>(reinterpret_cast<unsigned char*>(k_s) + d) = *reinterpret_cast<const uint4*>(&knew_s[(col + c * DEC_ROW_UNITS) * 8]);
                    *reinterpret_cast<uint4*>(reinterpret_cast<unsigned char*>(v_s) + d) = *reinterpret_cast<const uint4*>(&vnew_s[(col + c * DEC_ROW_UNITS) * 8]);
                } else if (rows != 2) {
                    cp_async_16_at(k_base + d, k_cache + off + c * DEC_ROW_UNITS * 8, ok);
                    cp_async_16_at(v_base + d, v_cache + off + c * DEC_ROW_UNITS * 8, ok);
                }
            }
#endif
        }
        if (rows != 1) load_pages(t0 + DEC_TILE);
#if KV_FP8
#pragma unroll
        for (int r = 0; r < DEC_ROWS; r++) {
            const bool mine = NEW_KEY && t0 + row0 + r * DEC_ROW_STEP == new_key;
#pragma unroll
            for (int c = 0; c < DEC_PAIR; c++) {
                const unsigned int d = tile_off + r * DEC_ROW_STEP * DEC_KSTRIDE * 2 + c * DEC_ROW_UNITS * 16;
                *reinterpret_cast<uint4*>(reinterpret_cast<unsigned char*>(k_s) + d) = mine ? *reinterpret_cast<const uint4*>(&knew_s[(col + c * DEC_ROW_UNITS) * 8]) : e4m3x8_to_bf16(kc[r][c]);
                *reinterpret_cast<uint4*>(reinterpret_cast<unsigned char*>(v_s) + d) = mine ? *reinterpret_cast<const uint4*>(&vnew_s[(col + c * DEC_ROW_UNITS) * 8]) : e4m3x8_to_bf16(vc[r][c]);
            }
        }
#else
        cp_async_commit();
#endif
    };

    // PART 1 issues the first tile's cached rows (keys of earlier steps, depending on nothing of this step) and returns;
    // PART 2, called with the same arguments once the inputs are ready, adds the new key's row and runs the rest (the
    // cp.async group of PART 1 is the first the loop waits for).
    if (begin < end) {
        if (PART == 2) load_tile(begin, 2);
        else {
            load_pages(begin);
            load_tile(begin, PART);
        }
    }
    if (PART == 1) return;
#if !KV_FP8
    unsigned int qf[DEC_DK][2];
#pragma unroll
    for (int kk = 0; kk < DEC_DK; kk++) q_frag(kk, qf[kk]);
#endif
    for (int t0 = begin; t0 < end; t0 += DEC_TILE) {
#if !KV_FP8
        cp_async_wait<0>();
#endif
        __syncthreads();
        const int kb = t0 + warp * 16;              // this warp's first key; warp-uniform
        float s[2][4];
#pragma unroll
        for (int n = 0; n < 2; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = 0.f;
        if (kb < end) {
#pragma unroll
            for (int kk = 0; kk < DEC_DK; kk++) {
                unsigned int b[4];
                ldmatrix_x4_at(b, k_lm + kk * 32);
#if KV_FP8
                unsigned int qk[2];
                q_frag(kk, qk);
                const unsigned int a[4] = {qk[0], 0u, qk[1], 0u};
#else
                const unsigned int a[4] = {qf[kk][0], 0u, qf[kk][1], 0u};
#endif
                mma_bf16_16816(s[0], a, b[0], b[1]);
                mma_bf16_16816(s[1], a, b[2], b[3]);
            }
        }
        // head g's scores of keys kb + 8n + t2 + e, the warp's max over the quad, the CTA's over the 4 warps (warp order)
        float sv[4], mx = -QC_INF;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const int n = j >> 1, e = j & 1;
            sv[j] = kb + n * 8 + t2 + e < end ? s[n][e] * scale_log2 : -QC_INF;
            mx = fmaxf(mx, sv[j]);
        }
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        if ((lane & 3) == 0) tmax_s[warp][g] = mx;
        __syncthreads();
        const float m_new = fmaxf(m, fmaxf(fmaxf(tmax_s[0][g], tmax_s[1][g]), fmaxf(tmax_s[2][g], tmax_s[3][g])));   // finite: key t0 is in range
        const float alpha = exp2f(m - m_new);        // 0 on the first tile (m = -inf)
        m = m_new;
        float pr[4];
#pragma unroll
        for (int j = 0; j < 4; j++) pr[j] = exp2f(sv[j] - m_new);
        l = l * alpha + ((pr[0] + pr[1]) + (pr[2] + pr[3]));
        // P as the A fragment of the 16-key k-step of this warp's keys: rows 0..7 bf16(p), rows 8..15 bf16(p - bf16(p));
        // every warp multiplies all 4 warps' fragments with the V columns of its own n-tiles
        p_s[warp][lane] = make_uint4(pack_bf16x2(pr[0], pr[1]), pack_bf16x2(pr[0] - round_bf16(pr[0]), pr[1] - round_bf16(pr[1])),
                                     pack_bf16x2(pr[2], pr[3]), pack_bf16x2(pr[2] - round_bf16(pr[2]), pr[3] - round_bf16(pr[3])));
        __syncthreads();
        if (alpha != 1.f) {                          // x 1 changes no bit; alpha is per head (lane >> 2), the same in every warp
#pragma unroll
            for (int i = 0; i < DEC_WPAIRS; i++)
#pragma unroll
                for (int j = 0; j < 2; j++)
#pragma unroll
                    for (int e = 0; e < 4; e++) o[i][j][e] *= alpha;
        }
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            if (t0 + kk * 16 >= end) break;          // keys past the range: P is 0
            const uint4 pv = p_s[kk][lane];
            const unsigned int pa[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
            for (int i = 0; i < DEC_WPAIRS; i++) {
                const int pair = warp + 4 * i;
                if (pair >= DEC_DN / 2) break;
                unsigned int b[4];
                ldmatrix_x4_trans_at(b, v_lm + kk * 16 * DEC_VSTRIDE * 2 + pair * 32);
                mma_bf16_16816(o[i][0], pa, b[0], b[1]);
                mma_bf16_16816(o[i][1], pa, b[2], b[3]);
            }
        }
        __syncthreads();                            // the tile buffers and p_s are refilled next
        if (t0 + DEC_TILE < end) load_tile(t0 + DEC_TILE, 0);
    }

    // The CTA's sum per head: the quad's shares, then the 4 warps' in warp order (all were scaled to the same max).
    l += __shfl_xor_sync(0xffffffffu, l, 1);
    l += __shfl_xor_sync(0xffffffffu, l, 2);
    if ((lane & 3) == 0) tmax_s[warp][g] = l;
    __syncthreads();
    const float sum = ((tmax_s[0][g] + tmax_s[1][g]) + tmax_s[2][g]) + tmax_s[3][g];
    const float inv_l = sum > 0.f ? 1.f / sum : 0.f;
    if (g >= group) return;                          // rows past the group: zero q, nothing to write
    const int head = kvh * group + g;
    const size_t row = ((size_t)seq * num_q_heads + head) * split_stride + split;
#pragma unroll
    for (int i = 0; i < DEC_WPAIRS; i++) {
        const int pair = warp + 4 * i;
        if (pair >= DEC_DN / 2) break;
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int d = (2 * pair + j) * 8 + t2;
            const float x = (o[i][j][0] + o[i][j][2]) * inv_l, y = (o[i][j][1] + o[i][j][3]) * inv_l;
            if (splits == 1) *reinterpret_cast<bf16x2*>(out + (size_t)seq * out_stride + (size_t)head * HEAD_DIM + d) = pack_bf16x2(x, y);
            else *reinterpret_cast<float2*>(partial_out + row * HEAD_DIM + d) = make_float2(x, y);
        }
    }
    if (splits > 1 && warp == 0 && (lane & 3) == 0) partial_lse[row] = sum > 0.f ? m + __log2f(sum) : -QC_INF;
}
#else
template <bool NEW_KEY, int PART = 0>
__device__ __forceinline__ void attn_split_range(
    const bf16* k_cache, const bf16* v_cache, const int* block_table, int max_pages_per_seq, int page_size,
    int num_q_heads, int num_kv_heads, int splits, int split_stride, float* partial_out, float* partial_lse, bf16* out, int out_stride,
    int seq, int kvh, int split, int group, int begin, int end, float scale_log2, const float* q_s, bf16* k_s, bf16* v_s,
    int new_key, const bf16* knew_s, const bf16* vnew_s)
{
    static_assert(PART == 0, "the scalar split loads its tiles itself");
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
            *reinterpret_cast<uint4*>(&v_s[row * DEC_VSTRIDE + col * 8]) = vq;
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
            const float sv = valid ? s[h] * scale_log2 : -QC_INF;
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
            const size_t row = ((size_t)seq * num_q_heads + head) * split_stride + split;
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
#endif


// attn_decode_fused: one node per layer for decode rows whose earlier keys all come from earlier steps (one row per
// sequence: the captured decode graph). Grid (splits, nKV, seqs), 128 threads, CTAs numbered as attn_decode_split's, its split loop;
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
//   The prologue's loads after the wait (the qkv rows, the norm weights) go out in one round trip.
// PDL: before pdl_wait() only what no kernel of the step writes: an L2 prefetch of the two norm weights, the row's inputs
// (context length, position, slot, inv_freq: RoPE's cos / sin), the first K / V tile's block-table entries and an L2
// prefetch of its rows (with the bf16 cache and tensor-core split, cp.async of those rows into shared memory); the qkv rows
// (the GEMV before) after it.
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
    int splits;                // the grid's splits: the partials' stride (a row uses row_splits of them)
    int qkv_stride;            // elements
    int q_out_stride;          // elements
    int out_stride;            // elements
    float scale_log2;          // D^-0.5 * log2(e)
    float eps;                 // q / k RMSNorm epsilon
    float attention_scaling;   // RoPE cos / sin factor (YaRN; 1 otherwise)
    int inv_freq_per_token;    // 0: one shared table; 1: row seq of inv_freq (dynamic NTK)
    int min_splits;            // the launcher's one-CTA-per-SM share of splits (row_splits)
};

#if HEAD_DIM == 16 || HEAD_DIM == 32 || HEAD_DIM == 64 || HEAD_DIM == 128 || HEAD_DIM == 256
#include "rope.cuh"

#define FUSED_MAX_COMBINE_SPLITS 64                                    // more: the tickets are null, attn_decode_combine runs after
#define FUSED_TILE_BYTES (DEC_TILE * DEC_KSTRIDE * 2 + DEC_TILE * DEC_VSTRIDE * 2)
#define FUSED_COMB_BYTES (DEC_MAX_GROUP * FUSED_MAX_COMBINE_SPLITS * 4)
#define FUSED_SMEM_BYTES (FUSED_TILE_BYTES > FUSED_COMB_BYTES ? FUSED_TILE_BYTES : FUSED_COMB_BYTES)
#define COMB_VEC (HEAD_DIM / 16 < 4 ? HEAD_DIM / 16 : 4)                 // floats per load in the last CTA's combine
#define COMB_CHUNKS (HEAD_DIM / (16 * COMB_VEC))                        // loads per split and thread

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

// The last CTA of (seq, kvh): attn_decode_combine's sums for the group's heads, in its order (split order, an empty
// split with weight 0). Thread (h = tid / 16, l = tid % 16) owns dims c * 16 * COMB_VEC + l * COMB_VEC .. of head h and
// walks the splits in order, 8 splits' loads per round trip, summing the weights alongside so each owner has its head's
// denominator without another pass. w_s (the tile buffers, free now): the weights 2^(lse - max) at a row stride of S
// rounded up to 4 (a batch's 8 weights in two 16-byte shared loads), computed where the lse were loaded (each head's max
// by shuffles within its 16 threads: no shared-memory pass, one barrier). A full batch runs without a per-split test: no
// bound, and no skip (an empty split's weight is 0, so it adds +0 to z and, since n is never -0, leaves n as it is).
__device__ __forceinline__ void fused_combine(const AttnDecodeFusedParams& p, int seq, int kvh, int group, int S, float* w_s)
{
    const int tid = threadIdx.x;
    const int stride = p.splits;                     // S of the row's splits, at the grid's stride
    const size_t head0 = (size_t)seq * p.num_q_heads + (size_t)kvh * group;    // the group's first row of [seqs * nH]
    const int h = tid >> 4, l = tid & 15;
    const bool owner = h < group;
    const float* base = p.partial_out + (head0 + (owner ? h : 0)) * stride * HEAD_DIM + l * COMB_VEC;
    float v[8][COMB_CHUNKS][COMB_VEC];
    // Loads the partials of splits s0 .. s0 + 7; every split wrote its partial (0 when empty), so the loads need no
    // weight and the first batch goes out with the lse loads.
    auto load_batch = [&](int s0) {
        const float* src = base + (size_t)s0 * HEAD_DIM;
#pragma unroll
        for (int j = 0; j < 8; j++) {
            if (!owner || s0 + j >= S) continue;
#pragma unroll
            for (int c = 0; c < COMB_CHUNKS; c++) CombVec<COMB_VEC>::load(src + j * HEAD_DIM + c * 16 * COMB_VEC, v[j][c]);
        }
    };
    load_batch(0);
    // The weights 2^(lse - max) of head h: its 16 threads hold the lse of splits l, l + 16, ... in registers, take the
    // head's largest over the 16 lanes (xor shuffles below 16 stay in the half warp) and write w_s[h * WS + split] (0 for
    // an empty split: exp2(-inf); 0 for every split when all are empty). The max is exact in any order, so the weights
    // are attn_decode_combine's bits.
    const int WS = (S + 3) & ~3;
    static_assert(FUSED_MAX_COMBINE_SPLITS <= 64 && DEC_THREADS / 16 >= DEC_MAX_GROUP, "16 threads per head, 4 splits each");
    float lse[4], mx = -QC_INF;
#pragma unroll
    for (int m = 0; m < 4; m++) {                    // all four loads first: the same round trip as the first batch
        const int j = l + 16 * m;
        lse[m] = owner && j < S ? ld_cg_f32(p.partial_lse + (head0 + h) * stride + j) : -QC_INF;
    }
#pragma unroll
    for (int m = 0; m < 4; m++) mx = fmaxf(mx, lse[m]);
#pragma unroll
    for (int off = 8; off > 0; off >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, off));
#pragma unroll
    for (int m = 0; m < 4; m++) {
        const int j = l + 16 * m;
        if (owner && j < S) w_s[h * WS + j] = mx > -QC_INF ? exp2f(lse[m] - mx) : 0.f;
    }
    __syncthreads();
    if (!owner) return;
    const float* w_h = w_s + h * WS;
    float n[COMB_CHUNKS][COMB_VEC], z = 0.f;
#pragma unroll
    for (int c = 0; c < COMB_CHUNKS; c++)
#pragma unroll
        for (int e = 0; e < COMB_VEC; e++) n[c][e] = 0.f;
    auto add = [&](float w, int j) {
        z += w;
#pragma unroll
        for (int c = 0; c < COMB_CHUNKS; c++)
#pragma unroll
            for (int e = 0; e < COMB_VEC; e++) n[c][e] = fmaf(w, v[j][c][e], n[c][e]);
    };
    for (int s0 = 0; s0 < S; s0 += 8) {
        if (s0 > 0) load_batch(s0);
        if (s0 + 8 <= S) {                           // a full batch: its weights in two loads, no per-split test
            const float4 wa = *reinterpret_cast<const float4*>(w_h + s0), wb = *reinterpret_cast<const float4*>(w_h + s0 + 4);
            add(wa.x, 0); add(wa.y, 1); add(wa.z, 2); add(wa.w, 3);
            add(wb.x, 4); add(wb.y, 5); add(wb.z, 6); add(wb.w, 7);
        } else {
#pragma unroll
            for (int j = 0; j < 8; j++) {
                if (s0 + j >= S) break;
                add(w_h[s0 + j], j);
            }
        }
    }
    bf16* out = p.out + (size_t)seq * p.out_stride + (size_t)(kvh * group + h) * HEAD_DIM + l * COMB_VEC;
    const float inv_z = z > 0.f ? 1.f / z : 0.f;     // one division, not one per dim (attn_decode_combine's n * (1 / z))
#pragma unroll
    for (int c = 0; c < COMB_CHUNKS; c++)
#pragma unroll
        for (int e = 0; e < COMB_VEC; e++) out[c * 16 * COMB_VEC + e] = f32_to_bf16(n[c][e] * inv_z);
}


// The shared memory of one attn_fused_tile: the K / V tiles (the last CTA's combine weights after them), the group's
// pre-scaled q, the new key's K and V rows, RoPE's cos / sin and the combine ticket's answer.
struct AttnFusedSmem {
    __align__(16) unsigned char tiles_s[FUSED_SMEM_BYTES];
    __align__(16) float q_s[DEC_MAX_GROUP * HEAD_DIM];
    __align__(16) bf16 knew_s[HEAD_DIM];
    __align__(16) bf16 vnew_s[HEAD_DIM];
    float cos_s[HEAD_DIM / 2], sin_s[HEAD_DIM / 2];
    int is_last;
};

// One CTA of attn_decode_fused (its comment above): split `split` of KV head kvh of row seq, on the block's 128 threads,
// with the combine when it is the group's last. wait() is called by every thread once, between the loads that need
// nothing of this step (before) and the qkv rows (after): pdl_wait() in attn_decode_fused, a counter wait in a persistent
// launch. QKV_L2: the qkv rows were written by other CTAs of the same launch, so they are read through L2 (ld.global.cg).
// A split past the row's plan returns at once. Ends without a barrier (the caller's, if it reuses `s`).
template <bool QKV_L2, class Wait>
__device__ __forceinline__ void attn_fused_tile(const AttnDecodeFusedParams& p, int seq, int split, int kvh, AttnFusedSmem& s, Wait wait)
{
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int group = p.num_q_heads / p.num_kv_heads;

    // Before wait() only what no earlier kernel or tile of the step writes, in two round trips that may run while the qkv
    // GEMV does (PDL, docs/kernels.md "Programmatic dependent launch", or a persistent launch's counter): the norm weights into L2; the row's context length, position, slot
    // and inv_freq (inputs copied before the step) into registers, with RoPE's cos / sin into shared memory; then the
    // block-table entries of the split's first K / V tile and its rows (keys of earlier steps; the new key's row is this
    // step's and is never read from the cache): by cp.async into the tile buffers (DEC_PRELOAD: after the wait the split
    // finds them on the SM, two round trips fewer on its chain), else an L2 prefetch.
    if (tid < 2 * ((HEAD_DIM * 2 + 127) / 128)) prefetch_l2((tid & 1 ? p.k_norm_weight : p.q_norm_weight) + (tid >> 1) * 64);
    const int len = p.context_lens[seq];
    const float pos = (float)p.positions[seq];
    const int slot = p.slot_mapping[seq];
    const float* inv_freq = p.inv_freq + (p.inv_freq_per_token ? (size_t)seq * (HEAD_DIM / 2) : 0);
    static_assert(HEAD_DIM / 2 <= DEC_THREADS, "one frequency per thread");
    const float freq = tid < HEAD_DIM / 2 ? __ldg(&inv_freq[tid]) : 0.f;   // in the same round trip as len
    const int splits = row_splits(len, p.splits, p.min_splits);
    if (split >= splits) return;                          // past this row's plan: no work, no partial, no ticket, no sincos
    if (tid < HEAD_DIM / 2) rope_cos_sin(pos, freq, p.attention_scaling, s.cos_s[tid], s.sin_s[tid]);
    for (int i = group * HEAD_DIM + tid; i < DEC_MAX_GROUP * HEAD_DIM; i += DEC_THREADS) s.q_s[i] = 0.f;
    const int chunk = ((len + splits - 1) / splits + DEC_ALIGN - 1) / DEC_ALIGN * DEC_ALIGN;
    const int begin = split * chunk;
    const int end = min(len, begin + chunk);
    const int new_key = len - 1;
    bf16* k_s = reinterpret_cast<bf16*>(s.tiles_s);
    bf16* v_s = k_s + DEC_TILE * DEC_KSTRIDE;
#if DEC_PRELOAD
    // the split's first K / V tile but the new key's row, by cp.async into the tile buffers (nothing reads them before the
    // split loop waits for the group)
    attn_split_range<true, 1>(p.k_cache, p.v_cache, p.block_table, p.max_pages_per_seq, p.page_size, p.num_q_heads, p.num_kv_heads,
                              splits, p.splits, p.partial_out, p.partial_lse, p.out, p.out_stride, seq, kvh, split, group, begin, end, p.scale_log2, s.q_s, k_s, v_s,
                              new_key, s.knew_s, s.vnew_s);
#else
    {
        // line l of key row r of the first tile for thread (r = tid / lines, l = tid % lines), rows past the tile's end or
        // the new key skipped; the cache row of (slot, kvh) is HEAD_DIM elements, contiguous
        constexpr int row_bytes = HEAD_DIM * (KV_FP8 ? 1 : 2), lines = (row_bytes + 127) / 128;
        const int* table = p.block_table + (size_t)seq * p.max_pages_per_seq;
        for (int i = tid; i < DEC_TILE * lines; i += DEC_THREADS) {
            const int key = begin + i / lines;
            if (key >= end || key == new_key) continue;
            const size_t row = (size_t)(unsigned int)(table[key / p.page_size] * p.page_size + key % p.page_size) * p.num_kv_heads + kvh;
            const size_t byte = row * row_bytes + (size_t)(i % lines) * 128;
            prefetch_l2(reinterpret_cast<const unsigned char*>(p.k_cache) + byte);
            prefetch_l2(reinterpret_cast<const unsigned char*>(p.v_cache) + byte);
        }
    }
#endif
    wait();

    // Prologue loads after the wait, all in one round trip: rows w, w + 4, w + 8 of (q heads of the group | k | v) for
    // warp w and both norm weights.
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
        load_row<QKV_L2>(qkv + col + lane * ROPE_E, x[r]);
    }
    float wq[ROPE_E], wk[ROPE_E];
    load_norm_weight(p.q_norm_weight, wq, lane);
    load_norm_weight(p.k_norm_weight, wk, lane);

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
            store_kv_readback(s.vnew_s + lane * ROPE_E, x[r]);
            if (writer && slot >= 0) STORE_KV(p.v_cache, ((size_t)slot * p.num_kv_heads + kvh) * HEAD_DIM + lane * ROPE_E, x[r]);
            continue;
        }
        float w[ROPE_E];                                  // selected value by value: a pointer chosen at run time
#pragma unroll                                            // would put both arrays in local memory
        for (int e = 0; e < ROPE_E; e++) w[e] = is_q ? wq[e] : wk[e];
        rope_rmsnorm_row(x[r], w, p.eps);
        float y[ROPE_E];
#pragma unroll
        for (int e = 0; e < ROPE_E; e++) {
            const int j = (lane & (ROPE_HALF - 1)) * ROPE_E + e;
            const float partner = __shfl_xor_sync(0xffffffffu, x[r][e], ROPE_HALF);
            y[e] = rope_rotate(x[r][e], partner, first_half, s.cos_s[j], s.sin_s[j]);
        }
        if (!ROPE_ACTIVE(lane)) continue;
        if (is_q) {
#pragma unroll
            for (int e = 0; e < ROPE_E; e++) s.q_s[task * HEAD_DIM + lane * ROPE_E + e] = y[e];
            if (writer && p.q_out)
                store_row(p.q_out + (size_t)seq * p.q_out_stride + (size_t)(kvh * group + task) * HEAD_DIM + lane * ROPE_E, y);
        } else {
            store_kv_readback(s.knew_s + lane * ROPE_E, y);
            if (writer && slot >= 0) STORE_KV(p.k_cache, ((size_t)slot * p.num_kv_heads + kvh) * HEAD_DIM + lane * ROPE_E, y);
        }
    }
    __syncthreads();

    attn_split_range<true, DEC_PRELOAD ? 2 : 0>(p.k_cache, p.v_cache, p.block_table, p.max_pages_per_seq, p.page_size, p.num_q_heads, p.num_kv_heads,
                           splits, p.splits, p.partial_out, p.partial_lse, p.out, p.out_stride, seq, kvh, split, group, begin, end, p.scale_log2, s.q_s, k_s, v_s,
                           holds_new ? new_key : -1, s.knew_s, s.vnew_s);
    if (splits == 1 || !p.tickets) return;

    // Ticket: the last CTA of (seq, kvh) combines.
    int* ticket = p.tickets + (size_t)seq * p.num_kv_heads + kvh;
    tail_begin();
    __threadfence();
    __syncthreads();
    if (tid == 0) s.is_last = atomicAdd(ticket, 1) == splits - 1;
    __syncthreads();
    if (!s.is_last) return;
    __threadfence();
    if (tid == 0) *ticket = 0;
    fused_combine(p, seq, kvh, group, splits, reinterpret_cast<float*>(s.tiles_s));
}
#endif
