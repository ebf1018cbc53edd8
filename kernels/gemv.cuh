// gemv.cuh: the bf16 GEMV's inner product, shared by gemv.cu and persistent_gemv.cu so both add the same products in
// the same order (bitwise the same rows). x is staged in shared memory as fp32; a warp reduces one row of W.
#pragma once
#include "common.cuh"

// A 16-byte streaming load of weights (read once: no L1 allocation).
__device__ __forceinline__ uint4 ldg_stream_v4(const void* p)
{
    uint4 r;
    asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p) : "memory");
    return r;
}

// x is staged in shared memory as fp32 (the bf16 values, exact): chunk c of token t (8 values) is two float4, values 0..3 at
// xs[t][0][c] and 4..7 at xs[t][1][c] ([T][2][slice_chunks] float4), so a warp's reads of 32 consecutive chunks are two
// conflict-free 16-byte rows and the product converts only the weights (the sum and its order are unchanged).
__device__ __forceinline__ void stage_chunk(float4* xs, int t, int c, int slice_chunks, uint4 v)
{
    float4* row = xs + (size_t)t * 2 * slice_chunks;
    row[c] = make_float4(bf16x2_lo(v.x), bf16x2_hi(v.x), bf16x2_lo(v.y), bf16x2_hi(v.y));
    row[slice_chunks + c] = make_float4(bf16x2_lo(v.z), bf16x2_hi(v.z), bf16x2_lo(v.w), bf16x2_hi(v.w));
}

// acc + the dot product of 8 bf16 weights with staged chunk c of token t, pairwise in the weights' order.
__device__ __forceinline__ float dot8(uint4 a, const float4* xs, int t, int c, int slice_chunks, float acc)
{
    const float4* row = xs + (size_t)t * 2 * slice_chunks;
    const float4 lo = row[c], hi = row[slice_chunks + c];
    acc += bf16x2_lo(a.x) * lo.x + bf16x2_hi(a.x) * lo.y;
    acc += bf16x2_lo(a.y) * lo.z + bf16x2_hi(a.y) * lo.w;
    acc += bf16x2_lo(a.z) * hi.x + bf16x2_hi(a.z) * hi.y;
    acc += bf16x2_lo(a.w) * hi.z + bf16x2_hi(a.w) * hi.w;
    return acc;
}

// acc[t] = the dot product of one weight row (kchunks 8-weight chunks from wrow) with the staged x of each token t, this
// lane's part: chunks c = lane, lane + 32, ... added in ascending order, four 16-byte loads in flight. At T <= 2 whole
// blocks of 128 chunks run unguarded (fewer instructions; above, the extra registers would cost occupancy), the rest
// guarded. The caller reduces acc over the warp (warp_sum).
template <int T>
__device__ __forceinline__ void gemv_row_dot(const bf16* wrow, const float4* x_s, int kchunks, int slice_chunks, int lane, float (&acc)[T])
{
#pragma unroll
    for (int t = 0; t < T; t++) acc[t] = 0.f;
    int c0 = 0;
    if constexpr (T <= 2) {
        for (; c0 + 128 <= kchunks; c0 += 128) {
            uint4 wv[4];
#pragma unroll
            for (int u = 0; u < 4; u++) wv[u] = ldg_stream_v4(wrow + (c0 + u * 32 + lane) * 8);
#pragma unroll
            for (int u = 0; u < 4; u++) {
#pragma unroll
                for (int t = 0; t < T; t++) acc[t] = dot8(wv[u], x_s, t, c0 + u * 32 + lane, slice_chunks, acc[t]);
            }
        }
    }
    for (; c0 < kchunks; c0 += 128) {
        uint4 wv[4];
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int c = c0 + u * 32 + lane;
            wv[u] = c < kchunks ? ldg_stream_v4(wrow + c * 8) : make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int u = 0; u < 4; u++) {
            const int c = c0 + u * 32 + lane;
            if (c < kchunks) {
#pragma unroll
                for (int t = 0; t < T; t++) acc[t] = dot8(wv[u], x_s, t, c, slice_chunks, acc[t]);
            }
        }
    }
}
