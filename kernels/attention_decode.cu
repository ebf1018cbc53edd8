// attention_decode.cu: flash decoding over the paged KV cache, one query token per sequence, GQA.
//
//   out[s, h, :] = softmax(q[s, h] . K[kvh]^T * D^-0.5) . V[kvh],   kvh = h / (nH / nKV), keys 0..len_s-1
//
// KV cache layout (see rope.cu): [pages, page_size, nKV, D] bf16; key j of sequence s lives in slot
// block_table[s * max_pages_per_seq + j / page_size] * page_size + j % page_size.
//
// attn_decode_split: grid (splits, nKV, seqs), 128 threads = 4 warps (CTA x + splits * y is split (x + splits * y) / nKV
//   of KV head (x + splits * y) % nKV: the KV head varies fastest). One CTA serves ALL query heads of
//   one KV head (the GQA group, up to 8), so each K/V tile is read from global memory once per group. The
//   context of sequence s is cut into `splits` ranges of ceil(len / splits) keys rounded up to 16 keys
//   (DEC_ALIGN); each CTA runs an online softmax (fp32, log2 domain: the fp32 scores are scaled by
//   D^-0.5 * log2(e), exp2f) over its range. The launcher sizes the grid's `splits` for the longest context the graph may
//   run (at least one CTA per SM, at most 8 tiles per split up to 64 splits, at most one split per tile; docs/kernels.md
//   "Decode attention"); each row then uses the same plan for its own length (row_splits: `min_splits`, the one-CTA-per-SM
//   share, is the launcher's), and the CTAs past it exit at once. The partials keep the grid's split stride.
//   Tensor cores (HEAD_DIM <= 128, attn_split_range under DEC_TC): per 64-key tile the 128 threads gather
//   the K and V rows through the block table with cp.async (16 bytes; a thread takes two chunks of a row, one
//   slot lookup, D / 16 threads per row: fully used sectors; keys past the range zero-filled) into [key][D + 8]
//   shared tiles, with the block-table entries of the next tile in the same round trip (KV_FP8: the E4M3
//   codes into registers, decoded exactly to bf16, st.shared). Warp w scores keys 16w .. 16w + 15 of each tile
//   (S = Q K^T by mma.sync m16n8k16 with the group as M: rows 0..7; q fragments from shared memory, kept in
//   registers; K fragments by ldmatrix) and owns a quarter of O's dims: the tile's max per head over the warps
//   and the warps' P fragments (S's two 8-key accumulator tiles reused as the A fragment of one 16-key k-step,
//   P as bf16 hi in rows 0..7 and bf16 lo (p - hi) in rows 8..15: the fp32 weight to ~2^-17 in one mma) go
//   through shared memory, and each warp runs O += P V for all the tile's keys on its dims (V by ldmatrix.trans).
//   HEAD_DIM 256 keeps the scalar split at compile time (its O fragments, 128 fp32 per thread, and a
//   64-key tile, 67 KB, fit neither the registers nor static shared memory): 32-key tiles loaded into
//   registers one tile ahead; scores lane = key (warp w: heads 2w, 2w+1); P.V lane owns D/32 dims.
//   Output: splits == 1 writes bf16 `out` directly; otherwise the normalised fp32 partial output
//   [seqs, nH, splits, D] and its log2-sum-exp [seqs, nH, splits] (-inf for an empty range).
// attn_decode_combine: grid (seqs, nH), 256 threads: out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), bf16;
//   thread d sums output dim d over the splits in split order (8 splits' loads per round trip).
//   Launched with programmatic dependent launch: pdl_wait() first, nothing before it.
// Bytes moved: len * nKV * D * 2 * 2 (K and V, read once) + q + out + partials (splits * nH * (D+1) * 4 * 2).
// attn_decode_fused (below): the decode step's single attention node, rope.cu's prologue before the split loop and the
//   combine in the last CTA; the pair above (with qk_norm_rope_kv_write) is its bitwise oracle and the multi-row-run path.
// Variants: these; the CPU reference in src/Model/Selftest is their oracle.
#include "attention_decode.cuh"

extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode_split(AttnDecodeParams p)
{
    __shared__ __align__(16) bf16 k_s[DEC_TILE * DEC_KSTRIDE];
    __shared__ __align__(16) bf16 v_s[DEC_TILE * DEC_VSTRIDE];
    __shared__ __align__(16) float q_s[DEC_MAX_GROUP * HEAD_DIM];

    int split, kvh;
    decode_cta(p.num_kv_heads, split, kvh);
    const int seq = blockIdx.z;
    const int tid = threadIdx.x;
    const int group = p.num_q_heads / p.num_kv_heads;
    const int len = p.context_lens[seq];
    const int splits = row_splits(len, p.splits, p.min_splits);
    if (split >= splits) return;                           // past this row's plan: nothing to do, no partial
    const int chunk = ((len + splits - 1) / splits + DEC_ALIGN - 1) / DEC_ALIGN * DEC_ALIGN;
    const int begin = split * chunk;
    const int end = min(len, begin + chunk);

    // q of the whole group (bf16 values; the scores are scaled into the log2 domain)
    const bf16* q = p.q + (size_t)seq * p.q_stride + (size_t)kvh * group * HEAD_DIM;
    for (int i = tid; i < DEC_MAX_GROUP * HEAD_DIM; i += DEC_THREADS)
        q_s[i] = i < group * HEAD_DIM ? bf16_to_f32(q[i]) : 0.f;

    __syncthreads();
    attn_split_range<false>(p.k_cache, p.v_cache, p.block_table, p.max_pages_per_seq, p.page_size, p.num_q_heads, p.num_kv_heads,
                            splits, p.splits, p.partial_out, p.partial_lse, p.out, p.out_stride, seq, kvh, split, group, begin, end, p.scale_log2, q_s, k_s, v_s,
                            -1, nullptr, nullptr);
}

// Combine: grid (seqs, nH), 256 threads. All threads find the largest lse over the splits (exact in any order); thread
// d then owns output dim d and sums the splits in split order, out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M), bf16,
// an empty split (lse -inf, partial +0) with weight 2^-inf = 0: the serial order and the terms attn_decode_fused's last CTA
// uses too (fused_combine, which needs no per-split test that way), so the two are bitwise equal. The loop is unrolled so several splits' loads share a round trip.
#define COMB_THREADS 256
#define COMB_WARPS (COMB_THREADS / 32)
extern "C" __global__ void __launch_bounds__(COMB_THREADS) attn_decode_combine(AttnDecodeParams p)
{
    __shared__ float red_s[COMB_WARPS];
    const int seq = blockIdx.x, head = blockIdx.y, tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    pdl_wait();                              // everything it reads is the split kernel's (docs/kernels.md, PDL)
    pdl_launch_dependents();
    const int splits = row_splits(p.context_lens[seq], p.splits, p.min_splits);
    if (splits == 1) return;                 // the row's one split wrote out itself
    const size_t row0 = ((size_t)seq * p.num_q_heads + head) * p.splits;
    float mx = -QC_INF;
    for (int s = tid; s < splits; s += COMB_THREADS) mx = fmaxf(mx, p.partial_lse[row0 + s]);
    mx = warp_max(mx);
    if (lane == 0) red_s[warp] = mx;
    __syncthreads();
    mx = red_s[0];
#pragma unroll
    for (int w = 1; w < COMB_WARPS; w++) mx = fmaxf(mx, red_s[w]);
    for (int d = tid; d < HEAD_DIM; d += COMB_THREADS) {
        float n = 0.f, z = 0.f;
        if (mx > -QC_INF) {
#pragma unroll 8
            for (int s = 0; s < splits; s++) {
                const float lse = p.partial_lse[row0 + s];
                const float v = p.partial_out[(row0 + s) * HEAD_DIM + d];
                const float w = exp2f(lse - mx);          // an empty split (lse -inf): weight 0, its partial +0, so it
                                                          // leaves n (never -0) and z as they are
                z += w;
                n = fmaf(w, v, n);
            }
        }
        const float inv_z = z > 0.f ? 1.f / z : 0.f;     // n * (1 / z), as attn_fused_tile's combine: one division per owner there
        p.out[(size_t)seq * p.out_stride + (size_t)head * HEAD_DIM + d] = f32_to_bf16(n * inv_z);
    }
}

// attn_decode_fused: its CTA's code is attn_fused_tile (attention_decode.cuh, with the comment on what it does), shared
// with persistent_decode.cu's attention tiles.
#if HEAD_DIM == 16 || HEAD_DIM == 32 || HEAD_DIM == 64 || HEAD_DIM == 128 || HEAD_DIM == 256
extern "C" __global__ void __launch_bounds__(DEC_THREADS) attn_decode_fused(AttnDecodeFusedParams p)
{
    __shared__ AttnFusedSmem s;
    int split, kvh;
    decode_cta(p.num_kv_heads, split, kvh);
    attn_fused_tile<false>(p, blockIdx.z, split, kvh, s, [] {
        pdl_wait();
        pdl_launch_dependents();
    });
}
#endif
