// quant.cuh: reading quantized weight matrices (docs/formats.md). NVRTC 11.8 has no cuda_fp8.h, so FP8 E4M3 is decoded
// here by bit manipulation. Every format dequantizes an element to the same bf16 value the CPU reference uses:
//   w = bf16(decode(q) * scale)      (fp32 product, then round to nearest even)
// and the kernels then compute exactly as their bf16 variants do with that w.
// Scales are fp32 on the device, indexed by a shifted row and a shifted column:
//   scale(row, k) = scales[(row >> row_shift) * cols + (k >> k_shift)]
// FP8 block-128: row_shift 7 (0 when a stacked matrix's parts are not 128-row aligned: one scale row per weight row),
// k_shift 7, cols = ceil(K / 128). INT8 per output channel: row_shift 0, k_shift 30, cols 1.
#pragma once
#include "common.cuh"

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

// FP8 E4M3 (the "fn" variant: no infinities, S.1111.111 is NaN): bits moved into an fp32 with the exponent rebased by
// 2^120 (127 - 7); subnormals come out exact because the fp32 value is then subnormal by the same shift.
__device__ __forceinline__ float e4m3_to_f32(unsigned int b)
{
    const unsigned int mag = b & 0x7fu;
    const float f = __uint_as_float(((b & 0x80u) << 24) | (mag << 20)) * __uint_as_float(0x7b800000u);   // x 2^120
    return mag == 0x7fu ? __uint_as_float(0x7fc00000u) : f;
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

// Byte-per-weight formats, selected by a template parameter: QF_FP8 (E4M3) or QF_INT8.
#define QF_FP8 1
#define QF_INT8 2

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

// 8 bytes (8 weights, one scale) -> 8 bf16 in one uint4.
template <int QF>
__device__ __forceinline__ uint4 dequant_x8(uint2 q, float scale)
{
    uint4 r;
    dequant_x4<QF>(q.x, scale, r.x, r.y);
    dequant_x4<QF>(q.y, scale, r.z, r.w);
    return r;
}
