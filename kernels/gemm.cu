// gemm.cu: dense bf16 GEMM for prefill, C[M, N] = A[M, K] . W[N, K]^T (nn.Linear), on tensor cores.
//
//   C = bf16(acc)                              (residual == null)
//   C = bf16(residual + bf16(acc))             (residual != null)
//
// mma.sync.m16n8k16.row.col bf16 -> fp32; A and W tiles move global -> shared with cp.async (16 bytes,
// zero-filled via src-size 0 outside M, N or K), two stages (load tile k+1 while computing tile k),
// fragments come from ldmatrix.x4 (A: row-major 16x16; W rows are the columns of B, so a plain
// ldmatrix of W rows is B's col-major fragment). Shared rows are padded to BK + 8 elements (80 bytes):
// the eight 16-byte rows of each ldmatrix phase hit distinct banks.
// Thread mapping: WARPS_M x WARPS_N warps, warp tile (BM / WARPS_M) x (BN / WARPS_N) made of 16x8 mma
// tiles. Variants (the launcher picks per shape):
//   gemm_bf16_64x64    BM 64,  BN 64,  BK 32, 4 warps (2 x 2), warp tile 32 x 32
//   gemm_bf16_128x128  BM 128, BN 128, BK 32, 8 warps (2 x 4), warp tile 64 x 32
// Requirements: K, lda, ldw multiples of 8 (16-byte rows); ldc even.
// Bytes moved (ideal): M*K*2 * ceil(N/BN) + N*K*2 * ceil(M/BM) from L2, M*N*2 written.
// Quantized weights (quant.cuh, docs/formats.md): gemm_fp8_* and gemm_int8_* read W one byte per weight (8 bytes per
// 8-weight chunk with plain loads), dequantize to bf16 in registers and store the chunk into the same shared tile the
// bf16 variant fills with cp.async; the mma loop is unchanged (bf16 mma.sync: no FP8 tensor-core path on sm_80).
// gemm_int4_* (GPTQ): 4 bytes per 8-weight chunk, fp16 group scales; ldw counts weights (2 per byte).
#include "mma.cuh"
#include "quant.cuh"

#define GEMM_BK 32
#define GEMM_SK (GEMM_BK + 8)   // padded shared row, elements

struct GemmParams {
    bf16* c;                 // [M, ldc]
    const bf16* a;           // [M, lda]
    const bf16* w;           // [N, ldw]
    const bf16* residual;    // [M, ldc] or null
    int m;
    int n;
    int k;
    int lda;
    int ldw;
    int ldc;
    WeightScales ws;         // quantized variants only
};

template <int BM, int BN, int WARPS_M, int WARPS_N, int QF>
__device__ __forceinline__ void gemm_body(const GemmParams& p)
{
    constexpr int THREADS = WARPS_M * WARPS_N * 32;
    constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;
    constexpr int MT = WM / 16, NT = WN / 8;
    static_assert(NT % 2 == 0, "B fragments are loaded two n8 tiles at a time");
    __shared__ __align__(16) bf16 a_s[2][BM * GEMM_SK];
    __shared__ __align__(16) bf16 w_s[2][BN * GEMM_SK];

    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int wm = warp / WARPS_N, wn = warp % WARPS_N;
    const int bm = blockIdx.y * BM, bn = blockIdx.x * BN;
    const int ktiles = (p.k + GEMM_BK - 1) / GEMM_BK;

    auto load = [&](int stage, int kt) {
        const int k0 = kt * GEMM_BK;
        for (int i = tid; i < BM * (GEMM_BK / 8); i += THREADS) {
            const int r = i / (GEMM_BK / 8), c = (i % (GEMM_BK / 8)) * 8;
            const bool ok = bm + r < p.m && k0 + c < p.k;
            const bf16* src = ok ? p.a + (size_t)(bm + r) * p.lda + k0 + c : p.a;
            cp_async_16(&a_s[stage][r * GEMM_SK + c], src, ok);
        }
        for (int i = tid; i < BN * (GEMM_BK / 8); i += THREADS) {
            const int r = i / (GEMM_BK / 8), c = (i % (GEMM_BK / 8)) * 8;
            const bool ok = bn + r < p.n && k0 + c < p.k;
            if (QF == 0) {
                const bf16* src = ok ? p.w + (size_t)(bn + r) * p.ldw + k0 + c : p.w;
                cp_async_16(&w_s[stage][r * GEMM_SK + c], src, ok);
            } else {
                uint4 v = make_uint4(0, 0, 0, 0);
                if (ok) {
                    const unsigned char* src = reinterpret_cast<const unsigned char*>(p.w) + ((size_t)(bn + r) * p.ldw + k0 + c) / QF_WPB(QF);
                    const float sc = weight_scale_q<QF>(p.ws, bn + r, k0 + c);
                    if constexpr (QF == QF_INT4) v = dequant_int4x8(__ldg(reinterpret_cast<const unsigned int*>(src)), sc);
                    else v = dequant_x8<QF>(__ldg(reinterpret_cast<const uint2*>(src)), sc);
                }
                *reinterpret_cast<uint4*>(&w_s[stage][r * GEMM_SK + c]) = v;
            }
        }
        cp_async_commit();
    };

    float acc[MT][NT][4];
#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.f;

    load(0, 0);
    for (int kt = 0; kt < ktiles; kt++) {
        if (kt + 1 < ktiles) { load((kt + 1) & 1, kt + 1); cp_async_wait<1>(); }
        else cp_async_wait<0>();
        __syncthreads();
        const bf16* as = a_s[kt & 1];
        const bf16* ws = w_s[kt & 1];
#pragma unroll
        for (int kk = 0; kk < GEMM_BK; kk += 16) {
            unsigned int af[MT][4], bfr[NT][2];
#pragma unroll
            for (int i = 0; i < MT; i++) {
                const int r = wm * WM + i * 16 + (lane & 15), c = kk + (lane >> 4) * 8;
                ldmatrix_x4(af[i], as + r * GEMM_SK + c);
            }
#pragma unroll
            for (int j = 0; j < NT; j += 2) {
                const int r = wn * WN + j * 8 + (lane & 7) + ((lane >> 4) << 3), c = kk + ((lane >> 3) & 1) * 8;
                unsigned int t[4];
                ldmatrix_x4(t, ws + r * GEMM_SK + c);
                bfr[j][0] = t[0]; bfr[j][1] = t[1]; bfr[j + 1][0] = t[2]; bfr[j + 1][1] = t[3];
            }
#pragma unroll
            for (int i = 0; i < MT; i++)
#pragma unroll
                for (int j = 0; j < NT; j++) mma_bf16_16816(acc[i][j], af[i], bfr[j][0], bfr[j][1]);
        }
        __syncthreads();   // the stage just read is refilled next iteration
    }

#pragma unroll
    for (int i = 0; i < MT; i++)
#pragma unroll
        for (int j = 0; j < NT; j++)
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const int r = bm + wm * WM + i * 16 + (lane >> 2) + half * 8;
                const int c = bn + wn * WN + j * 8 + (lane & 3) * 2;
                if (r >= p.m || c >= p.n) continue;
                float v0 = round_bf16(acc[i][j][half * 2]), v1 = round_bf16(acc[i][j][half * 2 + 1]);
                bf16* out = p.c + (size_t)r * p.ldc + c;
                if (c + 1 < p.n) {
                    if (p.residual) {
                        const bf16x2 rr = *reinterpret_cast<const bf16x2*>(p.residual + (size_t)r * p.ldc + c);
                        v0 += bf16x2_lo(rr); v1 += bf16x2_hi(rr);
                    }
                    *reinterpret_cast<bf16x2*>(out) = pack_bf16x2(v0, v1);
                } else {
                    if (p.residual) v0 += bf16_to_f32(p.residual[(size_t)r * p.ldc + c]);
                    *out = f32_to_bf16(v0);
                }
            }
}

extern "C" __global__ void __launch_bounds__(128) gemm_bf16_64x64(GemmParams p) { gemm_body<64, 64, 2, 2, 0>(p); }
extern "C" __global__ void __launch_bounds__(256) gemm_bf16_128x128(GemmParams p) { gemm_body<128, 128, 2, 4, 0>(p); }
extern "C" __global__ void __launch_bounds__(128) gemm_fp8_64x64(GemmParams p) { gemm_body<64, 64, 2, 2, QF_FP8>(p); }
extern "C" __global__ void __launch_bounds__(256) gemm_fp8_128x128(GemmParams p) { gemm_body<128, 128, 2, 4, QF_FP8>(p); }
extern "C" __global__ void __launch_bounds__(128) gemm_int8_64x64(GemmParams p) { gemm_body<64, 64, 2, 2, QF_INT8>(p); }
extern "C" __global__ void __launch_bounds__(256) gemm_int8_128x128(GemmParams p) { gemm_body<128, 128, 2, 4, QF_INT8>(p); }
extern "C" __global__ void __launch_bounds__(128) gemm_int4_64x64(GemmParams p) { gemm_body<64, 64, 2, 2, QF_INT4>(p); }
extern "C" __global__ void __launch_bounds__(256) gemm_int4_128x128(GemmParams p) { gemm_body<128, 128, 2, 4, QF_INT4>(p); }
