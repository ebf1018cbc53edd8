// token_io.cu: the two ends of a forward pass that touch token ids on the device.
// (Named token_* to stay distinct from kern1's embedding.cu / sampling.cu, which the device model may switch to.)
//
// token_embedding_bf16: out[t, :] = table[ids[t], :]  (bf16 rows of `width` elements; width % 8 == 0).
//   Grid (tokens), 128 threads; each thread copies 16-byte chunks (8 bf16) of the row, so a warp moves 512
//   contiguous bytes per instruction (fully used sectors). Ids outside [0, rows) write a zero row.
//   Bytes: tokens * width * 2 read + the same written + tokens * 4.
// token_argmax_bf16: ids[r] = argmax_j logits[r, j] over `cols` bf16 values, ties to the LOWER index (greedy decoding
//   on device: only the id goes back to the host). Grid (rows), 256 threads: strided scan with (value, index)
//   kept per thread, warp shuffle reduction then a shared-memory reduction over the 8 warps.
//   Bytes: rows * cols * 2 read, rows * 4 written.
// Variants: these only (the device model's embedding and greedy sampling until a fuller sampler exists).
#include "common.cuh"

struct EmbeddingParams {
    bf16* out;            // [tokens, width]
    const bf16* table;    // [rows, width]
    const int* ids;       // [tokens]
    int tokens;
    int rows;             // vocab size
    int width;            // hidden size, multiple of 8
};

extern "C" __global__ void __launch_bounds__(128) token_embedding_bf16(EmbeddingParams p)
{
    const int t = blockIdx.x;
    if (t >= p.tokens) return;
    const int id = p.ids[t];
    const int chunks = p.width >> 3;
    uint4* dst = reinterpret_cast<uint4*>(p.out + (long long)t * p.width);
    if (id < 0 || id >= p.rows)
    {
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) dst[c] = make_uint4(0, 0, 0, 0);
        return;
    }
    const uint4* src = reinterpret_cast<const uint4*>(p.table + (long long)id * p.width);
    for (int c = threadIdx.x; c < chunks; c += blockDim.x) dst[c] = src[c];
}

struct ArgmaxParams {
    const bf16* logits;   // [rows, ld]
    int* ids;             // [rows]
    int rows;
    int cols;
    int ld;               // elements per row
};

__device__ __forceinline__ void argmax_pick(float& v, int& i, float ov, int oi)
{
    // NaN never wins; larger value wins; equal values: lower index.
    if (ov > v || (ov == v && oi < i) || (v != v && ov == ov)) { v = ov; i = oi; }
}

extern "C" __global__ void __launch_bounds__(256) token_argmax_bf16(ArgmaxParams p)
{
    __shared__ float sv[8];
    __shared__ int si[8];
    const int r = blockIdx.x;
    if (r >= p.rows) return;
    const bf16* row = p.logits + (long long)r * p.ld;
    float best = -QC_INF;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < p.cols; j += blockDim.x) argmax_pick(best, bi, bf16_to_f32(row[j]), j);
#pragma unroll
    for (int off = 16; off > 0; off >>= 1)
    {
        float ov = __shfl_xor_sync(0xffffffffu, best, off);
        int oi = __shfl_xor_sync(0xffffffffu, bi, off);
        argmax_pick(best, bi, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { sv[warp] = best; si[warp] = bi; }
    __syncthreads();
    if (threadIdx.x == 0)
    {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++) argmax_pick(best, bi, sv[w], si[w]);
        p.ids[r] = bi == 0x7fffffff ? 0 : bi;
    }
}
