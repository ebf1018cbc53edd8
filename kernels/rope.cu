// rope.cu: the attention prologue after the fused q|k|v projection, in one pass over the qkv rows:
//
//   q_h = rope(RMSNorm_D(q_h) * q_norm_w)         written to q_out (own buffer, or in place in qkv)
//   k_h = rope(RMSNorm_D(k_h) * k_norm_w)         written to the paged K cache at slot_mapping[t]
//   v_h                                             copied to the paged V cache at slot_mapping[t]
//
// RMSNorm: fp32 statistics, out = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))) (two roundings).
// RoPE (rotate-half, element i pairs with i + D/2): f = pos * inv_freq[i mod D/2] in fp32; precise
// sincosf; c = bf16(cos f * attention_scaling), s = bf16(sin f * attention_scaling);
//   x'[i]       = bf16(bf16(x[i] * c) + bf16(-x[i+D/2] * s))
//   x'[i+D/2]   = bf16(bf16(x[i+D/2] * c) + bf16(x[i] * s))      (PyTorch's bf16 op roundings)
// inv_freq [D/2] fp32 is precomputed by the host (plain theta^(-2j/D) or YaRN), so this kernel knows
// nothing about rope scaling except attention_scaling. With inv_freq_per_token = 1 the table is [tokens, D/2]
// (token t reads row t): dynamic NTK, where each sequence of a step has the table of its own length.
//
// KV_FP8=1 (the FP8 KV cache, docs/formats.md): k and v are stored as FP8 E4M3 codes of their bf16 values (nearest,
// ties to even, saturating at +-448; per-layer scale 1), one byte per element, same layout.
// Paged KV cache layout (per layer, K and V separately): [pages, page_size, num_kv_heads, D] bf16,
// i.e. slot-major: token slot s = page * page_size + offset holds all KV heads of that token, and head
// kvh of slot s starts at element (s * num_kv_heads + kvh) * D. The host turns per-sequence block
// tables into slot_mapping[t]; slot < 0 means "do not write" (padding tokens).
//
// Thread mapping: grid (tokens, ceil(heads / 8)), 256 threads = 8 warps, one warp per head row of
// D = HEAD_DIM (32 * E elements, E = D / 32 contiguous elements per lane; D 32 has E = 1, one scalar
// bf16 per lane; D 16 uses lanes 0..15 only, lanes 16..31 hold zeros and just join the shuffles; both are
// selected at compile time, so D 64/128/256 compile as before). The RoPE partner element i + D/2 lives in
// lane ^ (lanes / 2) (lane ^ 16 for D >= 32), fetched with one shuffle per element. Heads 0..nH-1 are q, then nKV k
// heads, then nKV v heads (the column order of the fused projection).
// Bytes moved per token: read (nH + 2 nKV) * D * 2, write the same (q_out + K + V), plus tables.
// Variants: this fused kernel; rmsnorm_heads_bf16 (rmsnorm.cu) + a CPU RoPE is its test oracle.
#include "common.cuh"

#ifndef HEAD_DIM
#define HEAD_DIM 128
#endif
#ifndef KV_FP8
#define KV_FP8 0
#endif
#if KV_FP8
#include "quant.cuh"
#endif
#include "rope.cuh"   // load_row / store_row / STORE_KV and the norm / rotate arithmetic (shared with attention_decode.cu)

struct QkNormRopeParams {
    const bf16* qkv;            // [tokens, qkv_stride] bf16: q heads | k heads | v heads
    bf16* q_out;                // row t at q_out + t * q_out_stride, [num_q_heads * D]; may alias qkv
    bf16* k_cache;              // [pages, page_size, num_kv_heads, D]
    bf16* v_cache;              // [pages, page_size, num_kv_heads, D]
    const bf16* q_norm_weight;  // [D]
    const bf16* k_norm_weight;  // [D]
    const float* inv_freq;      // [D / 2]
    const int* positions;       // [tokens]
    const int* slot_mapping;    // [tokens]; < 0: skip the cache write
    int tokens;
    int num_q_heads;
    int num_kv_heads;
    int qkv_stride;             // elements per qkv row, >= (num_q_heads + 2 * num_kv_heads) * D
    int q_out_stride;           // elements per q_out row
    float eps;
    float attention_scaling;
    int inv_freq_per_token;     // 0: one shared table [D/2]; 1: one row per token [tokens, D/2]
};

extern "C" __global__ void __launch_bounds__(256) qk_norm_rope_kv_write(QkNormRopeParams p)
{
    const int lane = threadIdx.x & 31;
    const int t = blockIdx.x;
    const int head = blockIdx.y * 8 + (threadIdx.x >> 5);
    const int heads = p.num_q_heads + 2 * p.num_kv_heads;
    if (head >= heads) return;

    const int slot = p.slot_mapping[t];
    const bool is_q = head < p.num_q_heads;
    const bool is_k = !is_q && head < p.num_q_heads + p.num_kv_heads;
    if (!is_q && slot < 0) return;               // padding token: nothing to store for k / v

    float x[ROPE_E];
#if HEAD_DIM == 16
    x[0] = 0.f;
#endif
    if (ROPE_ACTIVE(lane)) load_row(p.qkv + (size_t)t * p.qkv_stride + (size_t)head * HEAD_DIM + lane * ROPE_E, x);

    if (!is_q && !is_k) {                        // v: straight copy into the cache
        const int kvh = head - p.num_q_heads - p.num_kv_heads;
        if (ROPE_ACTIVE(lane)) STORE_KV(p.v_cache, ((size_t)slot * p.num_kv_heads + kvh) * HEAD_DIM + lane * ROPE_E, x);
        return;
    }

    // per-head RMSNorm
    rope_rmsnorm_row(x, is_q ? p.q_norm_weight : p.k_norm_weight, p.eps, lane);

    // rotate-half RoPE: partner element i +- D/2 is in lane ^ ROPE_HALF
    const float pos = (float)p.positions[t];
    const float* inv_freq = p.inv_freq + (p.inv_freq_per_token ? (size_t)t * (HEAD_DIM / 2) : 0);
    const bool first_half = lane < ROPE_HALF;
    float y[ROPE_E];
#pragma unroll
    for (int e = 0; e < ROPE_E; e++) {
        const int j = (lane & (ROPE_HALF - 1)) * ROPE_E + e;
        float s, c;
        rope_cos_sin(pos, __ldg(&inv_freq[j]), p.attention_scaling, c, s);
        const float partner = __shfl_xor_sync(0xffffffffu, x[e], ROPE_HALF);
        y[e] = rope_rotate(x[e], partner, first_half, c, s);
    }

    if (!ROPE_ACTIVE(lane)) return;
    if (is_q) {
        store_row(p.q_out + (size_t)t * p.q_out_stride + (size_t)head * HEAD_DIM + lane * ROPE_E, y);
    } else {
        const int kvh = head - p.num_q_heads;
        STORE_KV(p.k_cache, ((size_t)slot * p.num_kv_heads + kvh) * HEAD_DIM + lane * ROPE_E, y);
    }
}
