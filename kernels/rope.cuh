// rope.cuh: the arithmetic of one head row of the attention prologue (per-head RMSNorm, rotate-half RoPE, the KV-cache
// store), held by one warp as ROPE_E consecutive elements per lane. Shared by rope.cu (qk_norm_rope_kv_write) and
// attention_decode.cu (attn_decode_fused, docs/kernels.md "Fusions") so that both round exactly alike; the formulas are
// in rope.cu's header. Needs HEAD_DIM and KV_FP8 defined, common.cuh included (and quant.cuh when KV_FP8).
#pragma once

#if HEAD_DIM == 16
#define ROPE_LANES 16                // lanes holding the row; the rest hold zeros
#define ROPE_ACTIVE(lane) ((lane) < 16)
#else
#define ROPE_LANES 32
#define ROPE_ACTIVE(lane) true
#endif
#define ROPE_E (HEAD_DIM / ROPE_LANES)
#define ROPE_HALF (ROPE_LANES / 2)   // the rotate-half partner is in lane ^ ROPE_HALF
static_assert(HEAD_DIM == 16 || HEAD_DIM == 32 || HEAD_DIM == 64 || HEAD_DIM == 128 || HEAD_DIM == 256, "HEAD_DIM must be 16, 32, 64, 128 or 256");

template <int E> struct RowVec;
template <> struct RowVec<2> { typedef unsigned int T; };
template <> struct RowVec<4> { typedef uint2 T; };
template <> struct RowVec<8> { typedef uint4 T; };

// L2: the row was written by another CTA of the same launch (a persistent launch, docs/kernels.md "Persistent
// launches"): loaded with ld.global.cg, so no older line in the SM's L1 can answer.
template <bool L2 = false>
__device__ __forceinline__ void load_row(const bf16* src, float (&x)[ROPE_E])
{
#if ROPE_E == 1
    x[0] = bf16_to_f32(L2 ? __ldcg(src) : *src);
#else
    const unsigned int* s = reinterpret_cast<const unsigned int*>(src);
    unsigned int w[ROPE_E / 2];
    typedef typename RowVec<ROPE_E>::T V;
    *reinterpret_cast<V*>(w) = L2 ? __ldcg(reinterpret_cast<const V*>(s)) : *reinterpret_cast<const V*>(s);
#pragma unroll
    for (int i = 0; i < ROPE_E / 2; i++) { x[2 * i] = bf16x2_lo(w[i]); x[2 * i + 1] = bf16x2_hi(w[i]); }
#endif
}

__device__ __forceinline__ void store_row(bf16* dst, const float (&x)[ROPE_E])
{
#if ROPE_E == 1
    *dst = f32_to_bf16(x[0]);
#else
    unsigned int w[ROPE_E / 2];
#pragma unroll
    for (int i = 0; i < ROPE_E / 2; i++) w[i] = pack_bf16x2(x[2 * i], x[2 * i + 1]);
    typedef typename RowVec<ROPE_E>::T V;
    *reinterpret_cast<V*>(dst) = *reinterpret_cast<const V*>(w);
#endif
}

#if KV_FP8
// The FP8 code of a cache element: the bf16 rounding the bf16 cache stores, then the E4M3 code.
__device__ __forceinline__ unsigned int kv_code(float x) { return f32_to_e4m3(bf16_to_f32(f32_to_bf16(x))); }

// The FP8 KV variant of store_row for the cache.
__device__ __forceinline__ void store_kv_row(bf16* cache, size_t element, const float (&x)[ROPE_E])
{
    unsigned char* dst = reinterpret_cast<unsigned char*>(cache) + element;
    unsigned int w[2] = {0u, 0u};
#pragma unroll
    for (int i = 0; i < ROPE_E; i++) w[i / 4] |= kv_code(x[i]) << (8 * (i % 4));
#if ROPE_E == 1
    *dst = (unsigned char)w[0];
#elif ROPE_E == 2
    *reinterpret_cast<unsigned short*>(dst) = (unsigned short)w[0];
#elif ROPE_E == 4
    *reinterpret_cast<unsigned int*>(dst) = w[0];
#else
    *reinterpret_cast<uint2*>(dst) = make_uint2(w[0], w[1]);
#endif
}
#define STORE_KV(cache, element, x) store_kv_row(cache, element, x)
// The bf16 values the attention reads back for a row stored with STORE_KV (the cache's E4M3 codes decoded).
__device__ __forceinline__ void store_kv_readback(bf16* dst, const float (&x)[ROPE_E])
{
#pragma unroll
    for (int i = 0; i < ROPE_E; i++) dst[i] = (bf16)e4m3_to_bf16_bits(kv_code(x[i]));
}
#else
#define STORE_KV(cache, element, x) store_row((cache) + (element), x)
__device__ __forceinline__ void store_kv_readback(bf16* dst, const float (&x)[ROPE_E]) { store_row(dst, x); }
#endif

// The lane's elements of a norm weight row (zeros on the idle lanes of D 16).
__device__ __forceinline__ void load_norm_weight(const bf16* weight, float (&w)[ROPE_E], int lane)
{
#if HEAD_DIM == 16
    w[0] = 0.f;
#endif
    if (ROPE_ACTIVE(lane)) load_row(weight + lane * ROPE_E, w);
}

// Per-head RMSNorm of the warp's row in place, w the lane's weights (load_norm_weight): fp32 statistics,
// x = bf16(w * bf16(x * rsqrt(mean(x^2) + eps))). Every lane of the warp must call it (one shuffle reduction).
__device__ __forceinline__ void rope_rmsnorm_row(float (&x)[ROPE_E], const float (&w)[ROPE_E], float eps)
{
    float ss = 0.f;
#pragma unroll
    for (int e = 0; e < ROPE_E; e++) ss += x[e] * x[e];
    ss = warp_sum(ss);
    const float inv_rms = rsqrtf(ss / (float)HEAD_DIM + eps);
#pragma unroll
    for (int e = 0; e < ROPE_E; e++) x[e] = round_bf16(w[e] * round_bf16(x[e] * inv_rms));
}

// cos and sin of frequency j at position pos: precise sincosf of the fp32 angle, each scaled and rounded to bf16.
__device__ __forceinline__ void rope_cos_sin(float pos, float inv_freq, float attention_scaling, float& c, float& s)
{
    sincosf(pos * inv_freq, &s, &c);
    c = round_bf16(c * attention_scaling);
    s = round_bf16(s * attention_scaling);
}

// Rotate-half of one element given its partner (element i +- D/2): PyTorch's bf16 op roundings.
__device__ __forceinline__ float rope_rotate(float x, float partner, bool first_half, float c, float s)
{
    const float rot = first_half ? -partner : partner;
    return round_bf16(round_bf16(x * c) + round_bf16(rot * s));
}
