// moe_combine.cu: the deterministic weighted sum of a token's k expert outputs (MoE block step 5).
//
//   m        = sum_{j=0..k-1} w[t, j] * y[t*k + j]    fp32, in rank order j = 0, 1, ..., k-1, every
//                                                     product and sum rounded separately (no FMA
//                                                     contraction), exactly the CPU reference's loop
//   out[t]   = bf16(m)                                 one rounding
//   out[t]   = bf16(residual[t] + bf16(m))             instead, when residual != null (the decoder's
//                                                     bf16 residual add; residual may alias out)
// No atomics: each output element is owned by one thread, so results never depend on scheduling.
// Thread mapping: grid (ceil(H / 8 / 128), T), 128 threads, one 16-byte chunk (8 columns) per thread.
// Bytes: T*k*H*2 (y) + T*k*4 (weights) + T*H*2 (out) [+ T*H*2 residual].
#include "common.cuh"

struct MoeCombineParams {
    const bf16* y;              // [T*k, H] per-slot expert outputs
    const float* topk_weights;  // [T, k]
    const bf16* residual;       // [T, H] or null
    bf16* out;                  // [T, H]
    int tokens;
    int top_k;
    int hidden_size;            // multiple of 8
};

extern "C" __global__ void __launch_bounds__(128) moe_combine(MoeCombineParams p)
{
    const int t = blockIdx.y;
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    const int chunks = p.hidden_size >> 3;
    if (c >= chunks) return;
    float acc[8];
#pragma unroll
    for (int i = 0; i < 8; i++) acc[i] = 0.f;
    for (int j = 0; j < p.top_k; j++) {
        const float w = p.topk_weights[(size_t)t * p.top_k + j];
        const uint4 v = reinterpret_cast<const uint4*>(p.y + ((size_t)t * p.top_k + j) * p.hidden_size)[c];
        const unsigned int words[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
            acc[2 * q] = __fadd_rn(acc[2 * q], __fmul_rn(w, bf16x2_lo(words[q])));
            acc[2 * q + 1] = __fadd_rn(acc[2 * q + 1], __fmul_rn(w, bf16x2_hi(words[q])));
        }
    }
    if (p.residual) {
        const uint4 r = reinterpret_cast<const uint4*>(p.residual + (size_t)t * p.hidden_size)[c];
        const unsigned int rw[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int q = 0; q < 4; q++) {
            acc[2 * q] = round_bf16(acc[2 * q]) + bf16x2_lo(rw[q]);
            acc[2 * q + 1] = round_bf16(acc[2 * q + 1]) + bf16x2_hi(rw[q]);
        }
    }
    uint4 o;
    o.x = pack_bf16x2(acc[0], acc[1]);
    o.y = pack_bf16x2(acc[2], acc[3]);
    o.z = pack_bf16x2(acc[4], acc[5]);
    o.w = pack_bf16x2(acc[6], acc[7]);
    reinterpret_cast<uint4*>(p.out + (size_t)t * p.hidden_size)[c] = o;
}
