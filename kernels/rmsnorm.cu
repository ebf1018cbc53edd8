// rmsnorm.cu: fused residual-add + RMSNorm over bf16 rows (Qwen3's input_layernorm,
// post_attention_layernorm and final norm).
//
//   hidden[r] = bf16(hidden[r] + delta[r])        (only when delta != null: the residual add)
//   out[r]    = bf16(weight * bf16(hidden[r] * rsqrt(mean(hidden[r]^2) + eps)))
//
// Statistics in fp32; the two bf16 roundings are transformers' Qwen3MoeRMSNorm.
// Thread mapping: one block per row; each thread owns 8-element (16-byte) chunks, strided by the
// block size (2048-wide rows with 256 threads: one chunk per thread). The summed row is cached in
// dynamic shared memory (width * 2 bytes), so global memory is read once and written once:
// bytes moved per row = width * 2 * (read hidden [+ read delta + write hidden] + write out) + weight.
// Variants:
//   add_rmsnorm_bf16    one block per hidden row (width 2048: 256 threads, one 16-byte chunk each).
//                       Launch with dynamic shared memory = width * sizeof(bf16).
//   rmsnorm_heads_bf16  per-head RMSNorm (Qwen3's q_norm / k_norm over head_dim): 16 lanes per head row,
//                       two rows per warp, 16-byte chunks; rows addressed as (token, head) with a token
//                       stride, so it can normalise q or k heads in place inside the fused qkv rows.
//                       (The decode path fuses this into qk_norm_rope_kv_write in rope.cu; this kernel is
//                       its oracle and the unfused form.)
#include "common.cuh"

struct AddRmsNormParams {
    bf16* out;            // [rows, width] normalised output
    bf16* hidden;         // [rows, width] residual stream; hidden += delta in place when delta != null
    const bf16* delta;    // [rows, width] or null
    const bf16* weight;   // [width]
    int rows;
    int width;            // multiple of 8
    float eps;
};

__device__ __forceinline__ uint4 add_bf16x8(uint4 a, uint4 b)
{
    uint4 r;
    r.x = pack_bf16x2(bf16x2_lo(a.x) + bf16x2_lo(b.x), bf16x2_hi(a.x) + bf16x2_hi(b.x));
    r.y = pack_bf16x2(bf16x2_lo(a.y) + bf16x2_lo(b.y), bf16x2_hi(a.y) + bf16x2_hi(b.y));
    r.z = pack_bf16x2(bf16x2_lo(a.z) + bf16x2_lo(b.z), bf16x2_hi(a.z) + bf16x2_hi(b.z));
    r.w = pack_bf16x2(bf16x2_lo(a.w) + bf16x2_lo(b.w), bf16x2_hi(a.w) + bf16x2_hi(b.w));
    return r;
}

// sumsq_bf16x2 and norm_bf16x2 are in common.cuh (gemv.cu's RMSNorm prologue uses them too).

extern "C" __global__ void __launch_bounds__(1024) add_rmsnorm_bf16(AddRmsNormParams p)
{
    extern __shared__ uint4 row_cache[];   // width / 8 chunks
    __shared__ float scratch[32];

    const int row = blockIdx.x;
    const int chunks = p.width >> 3;
    uint4* hidden = reinterpret_cast<uint4*>(p.hidden + (size_t)row * p.width);
    const uint4* delta = p.delta ? reinterpret_cast<const uint4*>(p.delta + (size_t)row * p.width) : nullptr;

    float sumsq = 0.f;
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
        uint4 h = hidden[i];
        if (delta) {
            h = add_bf16x8(h, delta[i]);
            hidden[i] = h;
        }
        row_cache[i] = h;
        sumsq += sumsq_bf16x2(h.x) + sumsq_bf16x2(h.y) + sumsq_bf16x2(h.z) + sumsq_bf16x2(h.w);
    }
    const float total = block_sum(sumsq, scratch);
    const float inv_rms = rsqrtf(total / (float)p.width + p.eps);

    const uint4* weight = reinterpret_cast<const uint4*>(p.weight);
    uint4* out = reinterpret_cast<uint4*>(p.out + (size_t)row * p.width);
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) {
        const uint4 h = row_cache[i];
        const uint4 w = __ldg(&weight[i]);
        out[i] = norm_bf16x8(h, w, inv_rms);
    }
}

struct RmsNormHeadsParams {
    bf16* out;                // row (t, h) at out + t * out_token_stride + h * width
    const bf16* in;           // row (t, h) at in + t * in_token_stride + h * width (may equal out)
    const bf16* weight;       // [width], shared by every head
    int tokens;
    int heads;                // head rows per token
    int width;                // multiple of 8, at most 16 * 8 * 8 = 1024
    int in_token_stride;      // elements
    int out_token_stride;     // elements
    float eps;
};

// Block of 256 threads = 16 half-warps = 16 head rows.
extern "C" __global__ void __launch_bounds__(256) rmsnorm_heads_bf16(RmsNormHeadsParams p)
{
    const int group = threadIdx.x >> 4, sub = threadIdx.x & 15;
    const int row = blockIdx.x * 16 + group;
    const bool active = row < p.tokens * p.heads;
    const int t = active ? row / p.heads : 0, h = active ? row - t * p.heads : 0;
    const int chunks = p.width >> 3;
    const uint4* in = reinterpret_cast<const uint4*>(p.in + (size_t)t * p.in_token_stride + (size_t)h * p.width);
    uint4 v[8];
    float sumsq = 0.f;
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int i = sub + 16 * k;
        if (active && i < chunks) {
            v[k] = in[i];
            sumsq += sumsq_bf16x2(v[k].x) + sumsq_bf16x2(v[k].y) + sumsq_bf16x2(v[k].z) + sumsq_bf16x2(v[k].w);
        }
    }
#pragma unroll
    for (int offset = 8; offset > 0; offset >>= 1) sumsq += __shfl_xor_sync(0xffffffffu, sumsq, offset);
    if (!active) return;
    const float inv_rms = rsqrtf(sumsq / (float)p.width + p.eps);
    const uint4* weight = reinterpret_cast<const uint4*>(p.weight);
    uint4* out = reinterpret_cast<uint4*>(p.out + (size_t)t * p.out_token_stride + (size_t)h * p.width);
#pragma unroll
    for (int k = 0; k < 8; k++) {
        const int i = sub + 16 * k;
        if (i < chunks) {
            const uint4 w = __ldg(&weight[i]);
            uint4 o;
            o.x = norm_bf16x2(v[k].x, w.x, inv_rms);
            o.y = norm_bf16x2(v[k].y, w.y, inv_rms);
            o.z = norm_bf16x2(v[k].z, w.z, inv_rms);
            o.w = norm_bf16x2(v[k].w, w.w, inv_rms);
            out[i] = o;
        }
    }
}
