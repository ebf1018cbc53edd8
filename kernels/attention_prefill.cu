// attention_prefill.cu: causal flash attention for prefill (FlashAttention-2 style) over the paged KV
// cache, GQA, tensor cores.
//
//   out[t, h, :] = softmax(q[t, h] . K[kvh]^T * D^-0.5 + causal) . V[kvh],   kvh = h / (nH / nKV)
//
// Sequences are packed: sequence s owns query rows q_start[s] .. q_start[s+1]-1 (q_len_s rows) and
// has context_lens[s] keys in the cache (its earlier context followed by these new tokens, already
// written by rope.cu). Query i of the chunk sits at absolute position context_len - q_len + i and
// attends keys 0 .. that position, so chunked prefill after earlier context just works.
// KV cache layout: [pages, page_size, nKV, D] bf16 (see rope.cu); block_table [seqs, max_pages_per_seq].
//
// Thread mapping: grid (ceil(max q_len / 64), nH, seqs), 128 threads = 4 warps, warp w owns query rows
// 16w .. 16w+15 of the CTA's 64-row tile. Per 64-key tile: S = Q K^T by mma.sync m16n8k16 (Q fragments
// held in registers, K fragments by ldmatrix from shared), causal mask, online softmax in fp32 (log2
// domain, exp2f; row statistics reduced over the 4 lanes of a quad), P split into two bf16 A fragments in
// registers (hi = bf16(p), lo = bf16(p - hi): the fp32 weights to ~2^-17), O += P_lo V + P_hi V with V
// fragments by ldmatrix.trans. K/V tiles are gathered through the block
// table with cp.async (16 bytes, zero-fill beyond the context) into a two-stage buffer: tile j+1 loads
// while tile j computes. Shared rows are padded to D + 8 elements (conflict-free ldmatrix).
// Dynamic shared memory: (64 + 2 * 64 + 2 * 64) * (D + 8) * 2 bytes = 87,040 for D = 128 (opt-in).
// HEAD_DIM is a compile-time constant (-D HEAD_DIM=128, the launcher passes it).
// Variants: this one; the CPU reference in tests/Kernels is its oracle.
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
static_assert(HEAD_DIM % 16 == 0 && HEAD_DIM <= 256, "HEAD_DIM must be a multiple of 16, at most 256");

#define PF_BQ 64                        // query rows per CTA
#define PF_BK 64                        // keys per tile
#define PF_STRIDE (HEAD_DIM + 8)        // padded shared row (elements)
#define PF_CHUNKS (HEAD_DIM / 8)        // 16-byte chunks per row
#define PF_DK (HEAD_DIM / 16)           // k-steps over D for S = Q K^T
#define PF_DN (HEAD_DIM / 8)            // n8 tiles over D for O

struct AttnPrefillParams {
    const bf16* q;             // [total_q, q_stride] bf16
    const bf16* k_cache;       // [pages, page_size, nKV, D] bf16
    const bf16* v_cache;       // [pages, page_size, nKV, D] bf16
    const int* block_table;    // [seqs, max_pages_per_seq] int32
    const int* context_lens;   // [seqs] int32: keys in the cache, this chunk included
    const int* q_start;        // [seqs + 1] int32: packed query row offsets
    bf16* out;                 // [total_q, out_stride] bf16
    int seqs;
    int num_q_heads;
    int num_kv_heads;
    int page_size;
    int max_pages_per_seq;
    int q_stride;              // elements
    int out_stride;            // elements
    float scale_log2;          // D^-0.5 * log2(e)
};

extern "C" __global__ void __launch_bounds__(128) attn_prefill(AttnPrefillParams p)
{
    extern __shared__ __align__(16) bf16 smem[];
    bf16* q_s = smem;                               // [PF_BQ][PF_STRIDE]
    bf16* k_s = q_s + PF_BQ * PF_STRIDE;            // [2][PF_BK][PF_STRIDE]
    bf16* v_s = k_s + 2 * PF_BK * PF_STRIDE;        // [2][PF_BK][PF_STRIDE]

    const int tile = blockIdx.x, head = blockIdx.y, seq = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int q0 = p.q_start[seq], q_len = p.q_start[seq + 1] - q0;
    const int row0 = tile * PF_BQ;
    if (row0 >= q_len) return;
    const int ctx = p.context_lens[seq];
    const int kvh = head / (p.num_q_heads / p.num_kv_heads);
    const int first_pos = ctx - q_len;             // absolute position of query row 0
    const int last_row = min(row0 + PF_BQ, q_len) - 1;
    const int keys = min(ctx, first_pos + last_row + 1);
    const int ntiles = (keys + PF_BK - 1) / PF_BK;
    const int* table = p.block_table + (size_t)seq * p.max_pages_per_seq;

    // Q tile
    for (int i = tid; i < PF_BQ * PF_CHUNKS; i += 128) {
        const int r = i / PF_CHUNKS, c = (i % PF_CHUNKS) * 8;
        const bool ok = row0 + r < q_len;
        const bf16* src = ok ? p.q + (size_t)(q0 + row0 + r) * p.q_stride + (size_t)head * HEAD_DIM + c : p.q;
        cp_async_16(&q_s[r * PF_STRIDE + c], src, ok);
    }
    auto load_kv = [&](int stage, int t0) {
        bf16* ks = k_s + stage * PF_BK * PF_STRIDE;
        bf16* vs = v_s + stage * PF_BK * PF_STRIDE;
        for (int i = tid; i < PF_BK * PF_CHUNKS; i += 128) {
            const int r = i / PF_CHUNKS, c = (i % PF_CHUNKS) * 8;
            const int key = t0 + r;
            const bool ok = key < keys;
            size_t off = 0;
            if (ok) {
                const int slot = table[key / p.page_size] * p.page_size + key % p.page_size;
                off = ((size_t)slot * p.num_kv_heads + kvh) * HEAD_DIM + c;
            }
#if KV_FP8
            *reinterpret_cast<uint4*>(&ks[r * PF_STRIDE + c]) = ok ? e4m3x8_to_bf16(__ldg(reinterpret_cast<const uint2*>(reinterpret_cast<const unsigned char*>(p.k_cache) + off))) : make_uint4(0, 0, 0, 0);
            *reinterpret_cast<uint4*>(&vs[r * PF_STRIDE + c]) = ok ? e4m3x8_to_bf16(__ldg(reinterpret_cast<const uint2*>(reinterpret_cast<const unsigned char*>(p.v_cache) + off))) : make_uint4(0, 0, 0, 0);
#else
            cp_async_16(&ks[r * PF_STRIDE + c], p.k_cache + off, ok);
            cp_async_16(&vs[r * PF_STRIDE + c], p.v_cache + off, ok);
#endif
        }
        cp_async_commit();
    };
    load_kv(0, 0);

    unsigned int qf[PF_DK][4];
    float o[PF_DN][4];
#pragma unroll
    for (int j = 0; j < PF_DN; j++)
#pragma unroll
        for (int e = 0; e < 4; e++) o[j][e] = 0.f;
    float m[2] = {-QC_INF, -QC_INF}, l[2] = {0.f, 0.f};
    // absolute positions of this thread's two query rows (rows past q_len see no keys)
    const int r_a = row0 + warp * 16 + (lane >> 2), r_b = r_a + 8;
    const int pos_a = r_a < q_len ? first_pos + r_a : -1, pos_b = r_b < q_len ? first_pos + r_b : -1;

    for (int j = 0; j < ntiles; j++) {
        if (j + 1 < ntiles) { load_kv((j + 1) & 1, (j + 1) * PF_BK); cp_async_wait<1>(); }
        else cp_async_wait<0>();
        __syncthreads();
        if (j == 0) {
#pragma unroll
            for (int kk = 0; kk < PF_DK; kk++)
                ldmatrix_x4(qf[kk], &q_s[(warp * 16 + (lane & 15)) * PF_STRIDE + kk * 16 + (lane >> 4) * 8]);
        }
        const bf16* ks = k_s + (j & 1) * PF_BK * PF_STRIDE;
        const bf16* vs = v_s + (j & 1) * PF_BK * PF_STRIDE;

        // S = Q K^T for 16 rows x 64 keys
        float s[PF_BK / 8][4];
#pragma unroll
        for (int n = 0; n < PF_BK / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) s[n][e] = 0.f;
#pragma unroll
        for (int kk = 0; kk < PF_DK; kk++) {
#pragma unroll
            for (int n = 0; n < PF_BK / 8; n += 2) {
                unsigned int b[4];
                ldmatrix_x4(b, &ks[(n * 8 + (lane & 7) + ((lane >> 4) << 3)) * PF_STRIDE + kk * 16 + ((lane >> 3) & 1) * 8]);
                mma_bf16_16816(s[n], qf[kk], b[0], b[1]);
                mma_bf16_16816(s[n + 1], qf[kk], b[2], b[3]);
            }
        }

        // causal mask + online softmax (log2 domain)
        const int t0 = j * PF_BK;
        float mx[2] = {-QC_INF, -QC_INF};
#pragma unroll
        for (int n = 0; n < PF_BK / 8; n++)
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const int key = t0 + n * 8 + (lane & 3) * 2 + (e & 1);
                const int pos = e < 2 ? pos_a : pos_b;
                const float v = key <= pos ? s[n][e] * p.scale_log2 : -QC_INF;
                s[n][e] = v;
                mx[e >> 1] = fmaxf(mx[e >> 1], v);
            }
        float alpha[2], mref[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(0xffffffffu, mx[h], 2));
            const float m_new = fmaxf(m[h], mx[h]);
            mref[h] = m_new == -QC_INF ? 0.f : m_new;     // a row with no key yet: keep everything zero
            alpha[h] = exp2f(m[h] - mref[h]);
            m[h] = m_new;
            l[h] *= alpha[h];
        }
#pragma unroll
        for (int n = 0; n < PF_DN; n++) {
            o[n][0] *= alpha[0]; o[n][1] *= alpha[0];
            o[n][2] *= alpha[1]; o[n][3] *= alpha[1];
        }
        // P as two bf16 A fragments, hi = bf16(p) and lo = bf16(p - hi): hi + lo carries ~16 significant bits of
        // p, so P·V keeps the fp32 softmax weights to ~2^-17 relative (one bf16 P alone is ~2^-9, FlashAttention-2's
        // choice) for one more mma per P·V step; the registers of S die as these are written.
        unsigned int pf[PF_BK / 16][4], pl[PF_BK / 16][4];
#pragma unroll
        for (int n = 0; n < PF_BK / 8; n++) {
            const float p0 = exp2f(s[n][0] - mref[0]), p1 = exp2f(s[n][1] - mref[0]);
            const float p2 = exp2f(s[n][2] - mref[1]), p3 = exp2f(s[n][3] - mref[1]);
            l[0] += p0 + p1;
            l[1] += p2 + p3;
            pf[n >> 1][(n & 1) * 2] = pack_bf16x2(p0, p1);
            pf[n >> 1][(n & 1) * 2 + 1] = pack_bf16x2(p2, p3);
            pl[n >> 1][(n & 1) * 2] = pack_bf16x2(p0 - round_bf16(p0), p1 - round_bf16(p1));
            pl[n >> 1][(n & 1) * 2 + 1] = pack_bf16x2(p2 - round_bf16(p2), p3 - round_bf16(p3));
        }

        // O += P V = P_hi V + P_lo V
#pragma unroll
        for (int kk = 0; kk < PF_BK / 16; kk++) {
#pragma unroll
            for (int n = 0; n < PF_DN; n += 2) {
                unsigned int b[4];
                ldmatrix_x4_trans(b, &vs[(kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * PF_STRIDE + (n + (lane >> 4)) * 8]);
                mma_bf16_16816(o[n], pl[kk], b[0], b[1]);
                mma_bf16_16816(o[n + 1], pl[kk], b[2], b[3]);
                mma_bf16_16816(o[n], pf[kk], b[0], b[1]);
                mma_bf16_16816(o[n + 1], pf[kk], b[2], b[3]);
            }
        }
        __syncthreads();   // this stage is refilled by the next iteration's load
    }

    // finish: full row sums over the quad, normalise, store bf16
#pragma unroll
    for (int h = 0; h < 2; h++) {
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
        l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
    }
    const float inv_a = l[0] > 0.f ? 1.f / l[0] : 0.f, inv_b = l[1] > 0.f ? 1.f / l[1] : 0.f;
#pragma unroll
    for (int n = 0; n < PF_DN; n++) {
        const int d = n * 8 + (lane & 3) * 2;
        if (r_a < q_len)
            *reinterpret_cast<bf16x2*>(p.out + (size_t)(q0 + r_a) * p.out_stride + (size_t)head * HEAD_DIM + d) = pack_bf16x2(o[n][0] * inv_a, o[n][1] * inv_a);
        if (r_b < q_len)
            *reinterpret_cast<bf16x2*>(p.out + (size_t)(q0 + r_b) * p.out_stride + (size_t)head * HEAD_DIM + d) = pack_bf16x2(o[n][2] * inv_b, o[n][3] * inv_b);
    }
}
