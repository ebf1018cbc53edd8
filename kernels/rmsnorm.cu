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
// Variants: this one (block per row). Launch with dynamic shared memory = width * sizeof(bf16).
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

__device__ __forceinline__ float sumsq_bf16x2(bf16x2 v)
{
    float lo = bf16x2_lo(v), hi = bf16x2_hi(v);
    return lo * lo + hi * hi;
}

__device__ __forceinline__ bf16x2 norm_bf16x2(bf16x2 v, bf16x2 w, float inv_rms)
{
    float lo = round_bf16(bf16x2_lo(v) * inv_rms) * bf16x2_lo(w);
    float hi = round_bf16(bf16x2_hi(v) * inv_rms) * bf16x2_hi(w);
    return pack_bf16x2(lo, hi);
}

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
        uint4 o;
        o.x = norm_bf16x2(h.x, w.x, inv_rms);
        o.y = norm_bf16x2(h.y, w.y, inv_rms);
        o.z = norm_bf16x2(h.z, w.z, inv_rms);
        o.w = norm_bf16x2(h.w, w.w, inv_rms);
        out[i] = o;
    }
}
