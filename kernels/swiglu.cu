// swiglu.cu: the activation of a dense SwiGLU MLP (Qwen3 dense models, mlp_only_layers of Qwen3-MoE), between the
// fused gate|up projection and the down projection (both plain GEMV / GEMM launches, docs/kernels.md):
//
//   out[t, i] = bf16( bf16(silu(g)) * u ),  g = gate_up[t, i], u = gate_up[t, I + i]   (gate, up already bf16)
//
// silu(g) = g / (1 + expf(-g)) in fp32; the two roundings are the reference's (ReferenceOps.SwiGluMlp) and those of
// the MoE expert kernels (moe_decode.cu, moe_gemm.cu).
//
// Thread mapping: grid (ceil(I / 8 / 256), tokens), 256 threads; thread i8 of a row handles elements 8*i8 .. 8*i8+7
// with one 16-byte load of gate, one of up and one 16-byte store (I must be a multiple of 8, rows 16-byte aligned).
// Bytes moved per token: read 2 I * 2, write I * 2 (memory-bound; ~0.3% of the MLP's weight bytes at batch 1).
// Variants: this kernel only; its oracle is the CPU loop in src/Model/Selftest/MlpCases.cs.
#include "common.cuh"

struct SwiGluParams {
    const bf16* gate_up;   // [tokens, ld_in]: gate in columns 0..I-1, up in columns I..2I-1
    bf16* out;             // [tokens, ld_out]: columns 0..I-1
    int tokens;
    int inter;             // I, multiple of 8
    int ld_in;             // elements per gate_up row, multiple of 8, >= 2 I
    int ld_out;            // elements per out row, multiple of 8, >= I
};

__device__ __forceinline__ float silu_mul_bf16(float g, float u)
{
    const float s = round_bf16(g / (1.f + expf(-g)));
    return round_bf16(s * u);
}

extern "C" __global__ void __launch_bounds__(256) swiglu_bf16(SwiGluParams p)
{
    const int t = blockIdx.y;
    const int i8 = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= p.tokens || i8 * 8 >= p.inter) return;
    const bf16* row = p.gate_up + (size_t)t * p.ld_in;
    const uint4 g = *reinterpret_cast<const uint4*>(row + i8 * 8);
    const uint4 u = *reinterpret_cast<const uint4*>(row + p.inter + i8 * 8);
    uint4 o;
    o.x = pack_bf16x2(silu_mul_bf16(bf16x2_lo(g.x), bf16x2_lo(u.x)), silu_mul_bf16(bf16x2_hi(g.x), bf16x2_hi(u.x)));
    o.y = pack_bf16x2(silu_mul_bf16(bf16x2_lo(g.y), bf16x2_lo(u.y)), silu_mul_bf16(bf16x2_hi(g.y), bf16x2_hi(u.y)));
    o.z = pack_bf16x2(silu_mul_bf16(bf16x2_lo(g.z), bf16x2_lo(u.z)), silu_mul_bf16(bf16x2_hi(g.z), bf16x2_hi(u.z)));
    o.w = pack_bf16x2(silu_mul_bf16(bf16x2_lo(g.w), bf16x2_lo(u.w)), silu_mul_bf16(bf16x2_hi(g.w), bf16x2_hi(u.w)));
    *reinterpret_cast<uint4*>(p.out + (size_t)t * p.ld_out + i8 * 8) = o;
}
