// quant.cuh: reading quantized weight matrices (docs/formats.md). NVRTC 11.8 has no cuda_fp8.h, so FP8 E4M3 is decoded
// here by bit manipulation. Every format dequantizes an element to the same bf16 value the CPU reference uses:
//   w = bf16(decode(q) * scale)      (fp32 product, then round to nearest even)
// and the kernels then compute exactly as their bf16 variants do with that w.
// Scales are fp32 on the device, indexed by a shifted row and a shifted column:
//   scale(row, k) = scales[(row >> row_shift) * cols + (k >> k_shift)]
// FP8 block-128: row_shift 7 (0 when a stacked matrix's parts are not 128-row aligned: one scale row per weight row),
// k_shift 7, cols = ceil(K / 128). INT8 per output channel: row_shift 0, k_shift 30, cols 1. GPTQ int4 (symmetric,
// zero point 8): two 4-bit codes per byte along K (low nibble first), fp16 scales [N, K / group]: row_shift 0,
// k_shift log2(group), cols K / group; w = bf16((code - 8) x scale).
#pragma once
#include "common.cuh"

// The quantized formats, selected by a template parameter: QF_FP8 (E4M3), QF_INT8, QF_INT4 (GPTQ, symmetric).
#define QF_FP8 1
#define QF_INT8 2
#define QF_INT4 3

// Weights per byte of a format.
#define QF_WPB(QF) ((QF) == QF_INT4 ? 2 : 1)

struct WeightScales {
    const float* scales;      // fp32, see above
    int row_shift;
    int k_shift;
    int cols;
};

__device__ __forceinline__ float weight_scale(const WeightScales& s, int row, int k)
{
    return __ldg(&s.scales[(size_t)(row >> s.row_shift) * s.cols + (k >> s.k_shift)]);
}

__device__ __forceinline__ float f16_to_f32(unsigned short h)
{
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}

// The scale of weight (row, k) in format QF: fp32, or fp16 for QF_INT4 (GPTQ keeps its fp16 scales on the device).
template <int QF>
__device__ __forceinline__ float weight_scale_q(const WeightScales& s, int row, int k)
{
    const size_t i = (size_t)(row >> s.row_shift) * s.cols + (k >> s.k_shift);
    if (QF == QF_INT4) return f16_to_f32(__ldg(reinterpret_cast<const unsigned short*>(s.scales) + i));
    return __ldg(&s.scales[i]);
}

// FP8 E4M3 (the "fn" variant: no infinities, S.1111.111 is NaN): bits moved into an fp32 with the exponent rebased by
// 2^120 (127 - 7); subnormals come out exact because the fp32 value is then subnormal by the same shift.
__device__ __forceinline__ float e4m3_to_f32(unsigned int b)
{
    const unsigned int mag = b & 0x7fu;
    const float f = __uint_as_float(((b & 0x80u) << 24) | (mag << 20)) * __uint_as_float(0x7b800000u);   // x 2^120
    return mag == 0x7fu ? __uint_as_float(0x7fc00000u) : f;
}

// The nearest FP8 E4M3 code of x (ties to even), saturated to +-448, NaN -> 0x7f: Fp8E4M3.FromFloat on the host.
// Used for the FP8 KV cache (KV_FP8), whose values are bf16 first, so every product below is exact.
__device__ __forceinline__ unsigned int f32_to_e4m3(float x)
{
    const unsigned int sign = (__float_as_uint(x) >> 24) & 0x80u;
    const float a = fabsf(x);
    if (a != a) return 0x7fu;
    if (a >= 448.f) return sign | 0x7eu;
    int code;
    if (a < 0.015625f) {
        code = __float2int_rn(a * 512.f);                                        // multiples of 2^-9
    } else {
        const int e = (int)((__float_as_uint(a) >> 23) & 0xffu) - 127;           // -6 .. 8
        const int q = __float2int_rn(a * __uint_as_float((unsigned int)(127 - (e - 3)) << 23));   // 8 .. 16
        code = ((e + 7) << 3) + (q - 8);
    }
    return sign | (unsigned int)min(code, 0x7e);
}

// An E4M3 code as bf16 bits: exact (3 mantissa bits, exponents within bf16's range).
__device__ __forceinline__ unsigned int e4m3_to_bf16_bits(unsigned int b) { return __float_as_uint(e4m3_to_f32(b)) >> 16; }

// Eight E4M3 codes (two words, byte order) -> 8 bf16 in one uint4.
__device__ __forceinline__ uint4 e4m3x8_to_bf16(uint2 q)
{
    uint4 r;
    r.x = e4m3_to_bf16_bits(q.x & 0xffu) | e4m3_to_bf16_bits((q.x >> 8) & 0xffu) << 16;
    r.y = e4m3_to_bf16_bits((q.x >> 16) & 0xffu) | e4m3_to_bf16_bits(q.x >> 24) << 16;
    r.z = e4m3_to_bf16_bits(q.y & 0xffu) | e4m3_to_bf16_bits((q.y >> 8) & 0xffu) << 16;
    r.w = e4m3_to_bf16_bits((q.y >> 16) & 0xffu) | e4m3_to_bf16_bits(q.y >> 24) << 16;
    return r;
}

// The bf16 weight of one FP8 byte (in the low 8 bits) with its block scale, as the CPU reference rounds it.
__device__ __forceinline__ float dequant_fp8(unsigned int b, float scale) { return round_bf16(e4m3_to_f32(b) * scale); }

// The bf16 weight of one INT8 byte (in the low 8 bits) with its channel scale.
__device__ __forceinline__ float dequant_int8(unsigned int b, float scale) { return round_bf16((float)(int)(signed char)(b & 0xffu) * scale); }

// Four FP8 bytes of a 32-bit word -> two bf16x2 (elements in byte order).
__device__ __forceinline__ void dequant_fp8x4(unsigned int w, float scale, bf16x2& lo, bf16x2& hi)
{
    lo = pack_bf16x2(dequant_fp8(w & 0xffu, scale), dequant_fp8((w >> 8) & 0xffu, scale));
    hi = pack_bf16x2(dequant_fp8((w >> 16) & 0xffu, scale), dequant_fp8(w >> 24, scale));
}

__device__ __forceinline__ void dequant_int8x4(unsigned int w, float scale, bf16x2& lo, bf16x2& hi)
{
    lo = pack_bf16x2(dequant_int8(w, scale), dequant_int8(w >> 8, scale));
    hi = pack_bf16x2(dequant_int8(w >> 16, scale), dequant_int8(w >> 24, scale));
}


// The bf16 weight of one 4-bit code (in the low 4 bits) with its group scale: (code - 8) x scale.
__device__ __forceinline__ float dequant_int4(unsigned int q, float scale) { return round_bf16((float)((int)(q & 0xfu) - 8) * scale); }

// Eight 4-bit codes of a 32-bit word (weight j in bits 4j..4j+3) -> 8 bf16 in one uint4.
__device__ __forceinline__ uint4 dequant_int4x8(unsigned int w, float scale)
{
    uint4 r;
    r.x = pack_bf16x2(dequant_int4(w, scale), dequant_int4(w >> 4, scale));
    r.y = pack_bf16x2(dequant_int4(w >> 8, scale), dequant_int4(w >> 12, scale));
    r.z = pack_bf16x2(dequant_int4(w >> 16, scale), dequant_int4(w >> 20, scale));
    r.w = pack_bf16x2(dequant_int4(w >> 24, scale), dequant_int4(w >> 28, scale));
    return r;
}

template <int QF>
__device__ __forceinline__ void dequant_x4(unsigned int w, float scale, bf16x2& lo, bf16x2& hi)
{
    if (QF == QF_FP8) dequant_fp8x4(w, scale, lo, hi);
    else dequant_int8x4(w, scale, lo, hi);
}

// 16 bytes (16 weights of one row, one scale) -> 16 bf16 in two uint4 chunks of 8.
template <int QF>
__device__ __forceinline__ void dequant_x16(uint4 q, float scale, uint4& a, uint4& b)
{
    dequant_x4<QF>(q.x, scale, a.x, a.y);
    dequant_x4<QF>(q.y, scale, a.z, a.w);
    dequant_x4<QF>(q.z, scale, b.x, b.y);
    dequant_x4<QF>(q.w, scale, b.z, b.w);
}

// 16 bytes of one row, one scale -> 16 * QF_WPB(QF) bf16 in 2 * QF_WPB(QF) uint4 chunks of 8.
template <int QF>
__device__ __forceinline__ void dequant_load16(uint4 q, float scale, uint4 (&out)[2 * QF_WPB(QF)])
{
    if constexpr (QF == QF_INT4) {
        out[0] = dequant_int4x8(q.x, scale); out[1] = dequant_int4x8(q.y, scale);
        out[2] = dequant_int4x8(q.z, scale); out[3] = dequant_int4x8(q.w, scale);
    } else {
        dequant_x16<QF>(q, scale, out[0], out[1]);
    }
}

// 8 bytes (8 weights, one scale) -> 8 bf16 in one uint4 (forward declaration for dequant_part).
template <int QF>
__device__ __forceinline__ uint4 dequant_x8(uint2 q, float scale);

// Part h (0 .. 2 * QF_WPB(QF) - 1) of a 16-byte load as 8 bf16: one uint4 at a time keeps few registers live.
template <int QF>
__device__ __forceinline__ uint4 dequant_part(uint4 q, float scale, int h)
{
    if constexpr (QF == QF_INT4) return dequant_int4x8(h == 0 ? q.x : h == 1 ? q.y : h == 2 ? q.z : q.w, scale);
    else return dequant_x8<QF>(h == 0 ? make_uint2(q.x, q.y) : make_uint2(q.z, q.w), scale);
}

// 8 bytes (8 weights, one scale) -> 8 bf16 in one uint4.
template <int QF>
__device__ __forceinline__ uint4 dequant_x8(uint2 q, float scale)
{
    uint4 r;
    dequant_x4<QF>(q.x, scale, r.x, r.y);
    dequant_x4<QF>(q.y, scale, r.z, r.w);
    return r;
}
