// check_finite.cu: debug check of activations for NaN / inf (DeviceModelOptions.CheckFinite, QWEN3CUDA_DEBUG_FINITE=1).
//
// For x [rows, width] (row stride ld) it finds the first non-finite element of each row (bf16 exponent all ones: inf or
// NaN) and folds (stage, row, column, position) into *record with a 64-bit atomicMin on the key
//   stage << 52 | row << 36 | column << 20 | min(position, 2^20 - 1)
// stage: 0 = the embedding output, l + 1 = the residual stream after layer l. The host sets *record to ~0 (nothing
// found); the minimum is the earliest stage, then the lowest row, then the lowest column, whatever the launch order of
// rows or the number of checks since the host last read it (sticky, like the embedding's error flag).
// Limits: width a multiple of 8 and < 2^16, rows < 2^16, stage < 2^12 (the launcher checks).
// Thread mapping: one block of 256 threads per row; each thread reads 16-byte chunks; a warp min then a block min.
// Bytes moved: rows * width * 2 read (once per check).
#include "common.cuh"

struct CheckFiniteParams {
    const bf16* x;                  // [rows, ld]
    const int* positions;           // [rows] token positions, or null (position 0 recorded)
    unsigned long long* record;     // the key of the first non-finite element; ~0: none
    int rows;
    int width;                      // elements checked per row, multiple of 8
    int ld;                         // row stride in elements
    int stage;                      // 0: embedding output; l + 1: after layer l
};

__device__ __forceinline__ bool bf16_nonfinite(unsigned int bits16) { return (bits16 & 0x7f80u) == 0x7f80u; }

extern "C" __global__ void __launch_bounds__(256) check_finite_bf16(CheckFiniteParams p)
{
    __shared__ int warp_min[8];
    const int row = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const uint4* x = reinterpret_cast<const uint4*>(p.x + (size_t)row * p.ld);
    int first = 0x7fffffff;
    for (int c = threadIdx.x; c < (p.width >> 3) && c * 8 < first; c += blockDim.x) {
        const uint4 v = x[c];
        const unsigned int w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int e = 0; e < 8; e++)
            if (bf16_nonfinite(e & 1 ? w[e >> 1] >> 16 : w[e >> 1] & 0xffffu)) { first = min(first, c * 8 + e); }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) first = min(first, __shfl_xor_sync(0xffffffffu, first, o));
    if (lane == 0) warp_min[warp] = first;
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int i = 1; i < (int)(blockDim.x >> 5); i++) first = min(first, warp_min[i]);
        if (first != 0x7fffffff) {
            const int pos = p.positions ? p.positions[row] : 0;
            const unsigned long long key = ((unsigned long long)p.stage << 52) | ((unsigned long long)row << 36)
                                         | ((unsigned long long)first << 20) | (unsigned long long)min(max(pos, 0), 0xfffff);
            atomicMin(p.record, key);
        }
    }
}
