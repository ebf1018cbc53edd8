// moe_gemm.cu: grouped expert GEMMs for many tokens (prefill), on tensor cores with the sm_80 feature set:
// mma.sync.aligned.m16n8k16 bf16 -> fp32, ldmatrix, cp.async (inline PTX; no wgmma/TMA).
// Rows are the expert-sorted, tile-padded slots from kernels/moe_align.cu; row tile b (BM = 64 rows) belongs
// to expert tile_expert[b]; blocks with b >= num_tiles (the grid is sized for the worst case) exit at once.
// Weight layout (MoeWeightPacking.cs): gate_up [E, 2I, H] (rows 0..I-1 gate, I..2I-1 up), down [E, H, I].
//
// moe_gate_up_gemm: grid (max tiles, I / 64). Gathers the BM hidden rows of the tile's tokens
//   (token = slot / k; padding rows are zero), multiplies by 64 gate rows and the matching 64 up rows
//   (the B tile holds both, 128 rows), and the epilogue writes, for every sorted row r and column i,
//   inter[r, i] = bf16( bf16(silu(bf16(g))) * bf16(u) )   (the reference's rounding points; padding rows get 0).
// moe_down_gemm: grid (max tiles, H / 128). inter rows of the tile times 128 rows of down[e] (K = I);
//   the epilogue writes y[slot, h] = bf16(acc) for real rows only (slot = sorted_slots[r] >= 0).
// Both: 128 threads = 4 warps as 2 (M) x 2 (N); a warp owns 32 rows x 64 B-tile rows (8 n8 tiles) =
//   2 x 8 mma per k16 step, 64 fp32 accumulators per thread. BK = 32, 3-stage cp.async pipeline,
//   shared tiles of 64-byte rows with the 16-byte chunk index XORed by (row / 2) % 4 so that every ldmatrix
//   phase touches 8 distinct bank groups. Static shared memory: 3 * (64 + 128) * 32 * 2 = 36 KiB.
// Bytes: each B tile is read once per row tile of its expert; A rows once per N block (from L2).
// Limits: H % 128 == 0, I % 64 == 0 (checked by the launcher). Fixed accumulation order per output:
// results are deterministic. The GEMV kernels in moe_decode.cu compute the same math (test oracle).
// Variant MOE_GEMM_GUARD_N=1 (small models, e.g. the tiny preset's H 64 and I 32): the last N block may run past
// the end (of I for gate_up, of H for down; grid.y = ceil): B rows beyond it are zero-filled instead of loaded and
// their output columns are not stored, so only H % 32 == 0 and I % 32 == 0 are needed (K steps of 32). The
// launcher picks it per GEMM only when the shape needs it; at the default MOE_GEMM_GUARD_N=0 the guards compile
// away (the real-shape PTX is unchanged).
// Quantized experts (quant.cuh, docs/formats.md): moe_gate_up_gemm_fp8 / _int8 and moe_down_gemm_fp8 / _int8 load the
// B tile one byte per weight (8 bytes per 16-byte shared chunk, plain loads), dequantize it in registers to the
// reference's bf16 weights and store it swizzled like the cp.async path; A and the mma loop are the bf16 ones.
// moe_*_gemm_int4 (GPTQ): 4 bytes per 8-weight chunk, fp16 group scales.
#include "quant.cuh"

#ifndef MOE_GEMM_GUARD_N
#define MOE_GEMM_GUARD_N 0
#endif

#define GM_BM 64
#define GM_BROWS 128
#define GM_BK 32
#define GM_STAGES 3
#define GM_THREADS 128

struct MoeGateUpGemmParams {
    const bf16* hidden;        // [T, H]
    const bf16* gate_up;       // [E, 2I, H]
    const int* sorted_slots;   // [padded rows], -1 = padding
    const int* tile_expert;    // [tiles]
    const int* num_tiles;      // [1]
    bf16* inter;               // [padded rows, I]
    int top_k;
    int hidden_size;           // H (K of this GEMM)
    int inter_size;            // I
    WeightScales ws;           // quantized variants only
};

struct MoeDownGemmParams {
    const bf16* inter;         // [padded rows, I]
    const bf16* down;          // [E, H, I]
    const int* sorted_slots;
    const int* tile_expert;
    const int* num_tiles;
    bf16* y;                   // [T*k, H] per-slot expert outputs
    int hidden_size;           // H
    int inter_size;            // I (K of this GEMM)
    WeightScales ws;           // quantized variants only
};

struct GemmSmem {
    bf16 a[GM_STAGES][GM_BM * GM_BK];
    bf16 b[GM_STAGES][GM_BROWS * GM_BK];
};

// Element offset of 16-byte chunk `chunk` (0..3) of tile row `row`, swizzled.
__device__ __forceinline__ int swz(int row, int chunk) { return row * GM_BK + ((chunk ^ ((row >> 1) & 3)) << 3); }

__device__ __forceinline__ unsigned smem_u32(const void* p)
{
    unsigned long long a;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(a) : "l"(p));
    return (unsigned)a;
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" :: "r"(smem_u32(dst)), "l"(src) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }

__device__ __forceinline__ void ldmatrix_x4(unsigned (&r)[4], const void* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
}

__device__ __forceinline__ void mma_bf16(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The shared main loop: acc[mi][j] = A[rows] x B[rows]^T over K (acc is zeroed here). a_src[i] / b_src[i] point at this thread's
// 16-byte chunks of k-tile 0 (a_src null: a zero padding row; b_src null, guarded variant only: a zero row
// past the end of N). b_row0[jp] is the B-tile row of the warp's
// The scales of stacked row `grow` (fp32, or fp16 for QF_INT4: the pointer is then reinterpreted).
template <int QF>
__device__ __forceinline__ const float* scale_row(const WeightScales& s, size_t grow)
{
    const size_t i = (grow >> s.row_shift) * s.cols;
    if (QF == QF_INT4) return reinterpret_cast<const float*>(reinterpret_cast<const unsigned short*>(s.scales) + i);
    return s.scales + i;
}

// n8-tile pair jp. Quantized (QF != 0): b_src[i] points at one-byte weights, b_scale[i] at the row's scales (k_shift).
template <int QF>
__device__ __forceinline__ void gemm_mainloop(GemmSmem& sm, float (&acc)[2][8][4], const bf16* const (&a_src)[2],
                                              const void* const (&b_src)[4], const float* const (&b_scale)[4], int k_shift,
                                              const int (&b_row0)[4], int k_tiles)
{
    const int tid = threadIdx.x, lane = tid & 31, wm = (tid >> 5) >> 1;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[mi][j][r] = 0.f;

    auto load_stage = [&](int stage, int kt) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int idx = tid + i * GM_THREADS, row = idx >> 2, chunk = idx & 3;
            bf16* dst = &sm.a[stage][swz(row, chunk)];
            if (a_src[i]) cp_async16(dst, a_src[i] + kt * GM_BK);
            else *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0);
        }
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int idx = tid + i * GM_THREADS, row = idx >> 2, chunk = idx & 3;
            bf16* dst = &sm.b[stage][swz(row, chunk)];
#if MOE_GEMM_GUARD_N
            if (!b_src[i]) { *reinterpret_cast<uint4*>(dst) = make_uint4(0, 0, 0, 0); continue; }
#endif
            if (QF == 0) {
                cp_async16(dst, static_cast<const bf16*>(b_src[i]) + kt * GM_BK);
            } else {
                const int k = kt * GM_BK + chunk * 8;
                const unsigned char* src = static_cast<const unsigned char*>(b_src[i]) + kt * GM_BK / QF_WPB(QF);
                if constexpr (QF == QF_INT4)
                    *reinterpret_cast<uint4*>(dst) = dequant_int4x8(__ldg(reinterpret_cast<const unsigned int*>(src)),
                                                                    f16_to_f32(__ldg(reinterpret_cast<const unsigned short*>(b_scale[i]) + (k >> k_shift))));
                else
                    *reinterpret_cast<uint4*>(dst) = dequant_x8<QF>(__ldg(reinterpret_cast<const uint2*>(src)), __ldg(&b_scale[i][k >> k_shift]));
            }
        }
    };

#pragma unroll
    for (int s = 0; s < GM_STAGES - 1; s++) {
        if (s < k_tiles) load_stage(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < k_tiles; kt++) {
        cp_async_wait<GM_STAGES - 2>();
        __syncthreads();
        if (kt + GM_STAGES - 1 < k_tiles) load_stage((kt + GM_STAGES - 1) % GM_STAGES, kt + GM_STAGES - 1);
        cp_async_commit();
        const int st = kt % GM_STAGES;
#pragma unroll
        for (int ks = 0; ks < 2; ks++) {
            unsigned af[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++) {
                const int row = wm * 32 + mi * 16 + (lane & 15);
                ldmatrix_x4(af[mi], &sm.a[st][swz(row, ks * 2 + (lane >> 4))]);
            }
#pragma unroll
            for (int jp = 0; jp < 4; jp++) {
                unsigned bf[4];
                const int row = b_row0[jp] + (lane & 7) + ((lane >> 4) << 3);
                ldmatrix_x4(bf, &sm.b[st][swz(row, ks * 2 + ((lane >> 3) & 1))]);
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    mma_bf16(acc[mi][2 * jp], af[mi], bf[0], bf[1]);
                    mma_bf16(acc[mi][2 * jp + 1], af[mi], bf[2], bf[3]);
                }
            }
        }
    }
    cp_async_wait<0>();
}

template <int QF>
__device__ __forceinline__ void moe_gate_up_gemm_body(const MoeGateUpGemmParams& p)
{
    __shared__ __align__(128) GemmSmem sm;
    const int tile = blockIdx.x;
    if (tile >= p.num_tiles[0]) return;
    const int e = p.tile_expert[tile];
    const int n0 = blockIdx.y * 64;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    const int H = p.hidden_size, I = p.inter_size;

    const bf16* a_src[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int idx = tid + i * GM_THREADS, row = idx >> 2, chunk = idx & 3;
        const int slot = p.sorted_slots[tile * GM_BM + row];
        a_src[i] = slot >= 0 ? p.hidden + (size_t)(slot / p.top_k) * H + chunk * 8 : nullptr;
    }
    const void* b_src[4];
    const float* b_scale[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int idx = tid + i * GM_THREADS, row = idx >> 2, chunk = idx & 3;
        const int wrow = row < 64 ? n0 + row : I + n0 + (row - 64);   // gate rows, then the matching up rows
        const size_t grow = (size_t)e * 2 * I + wrow;
        if (QF == 0) b_src[i] = p.gate_up + grow * H + chunk * 8;
        else b_src[i] = reinterpret_cast<const unsigned char*>(p.gate_up) + (grow * H + chunk * 8) / QF_WPB(QF);
        b_scale[i] = QF == 0 ? nullptr : scale_row<QF>(p.ws, grow);
#if MOE_GEMM_GUARD_N
        if (n0 + (row & 63) >= I) b_src[i] = nullptr;
#endif
    }
    // Warp's n8 tiles 0..3: gate columns wn*32 .. +31; tiles 4..7: the same up columns (B rows 64 + ...).
    const int b_row0[4] = {wn * 32, wn * 32 + 16, 64 + wn * 32, 64 + wn * 32 + 16};

    float acc[2][8][4];

    gemm_mainloop<QF>(sm, acc, a_src, b_src, b_scale, p.ws.k_shift, b_row0, H / GM_BK);

    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int row = tile * GM_BM + wm * 32 + mi * 16 + g + half * 8;
            bf16x2* out = reinterpret_cast<bf16x2*>(p.inter + (size_t)row * I + n0 + wn * 32 + 2 * t4);
#pragma unroll
            for (int j = 0; j < 4; j++) {
#if MOE_GEMM_GUARD_N
                if (n0 + wn * 32 + j * 8 >= I) continue;
#endif
                float v[2];
#pragma unroll
                for (int q = 0; q < 2; q++) {
                    const float gate = round_bf16(acc[mi][j][half * 2 + q]);
                    const float up = round_bf16(acc[mi][j + 4][half * 2 + q]);
                    v[q] = round_bf16(round_bf16(gate / (1.f + expf(-gate))) * up);
                }
                out[j * 4] = pack_bf16x2(v[0], v[1]);   // columns + j*8
            }
        }
}

template <int QF>
__device__ __forceinline__ void moe_down_gemm_body(const MoeDownGemmParams& p)
{
    __shared__ __align__(128) GemmSmem sm;
    const int tile = blockIdx.x;
    if (tile >= p.num_tiles[0]) return;
    const int e = p.tile_expert[tile];
    const int n0 = blockIdx.y * GM_BROWS;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, wm = warp >> 1, wn = warp & 1;
    const int H = p.hidden_size, I = p.inter_size;

    const bf16* a_src[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        const int idx = tid + i * GM_THREADS, row = idx >> 2, chunk = idx & 3;
        a_src[i] = p.inter + (size_t)(tile * GM_BM + row) * I + chunk * 8;
    }
    const void* b_src[4];
    const float* b_scale[4];
#pragma unroll
    for (int i = 0; i < 4; i++) {
        const int idx = tid + i * GM_THREADS, row = idx >> 2, chunk = idx & 3;
        const size_t grow = (size_t)e * H + n0 + row;
        if (QF == 0) b_src[i] = p.down + grow * I + chunk * 8;
        else b_src[i] = reinterpret_cast<const unsigned char*>(p.down) + (grow * I + chunk * 8) / QF_WPB(QF);
        b_scale[i] = QF == 0 ? nullptr : scale_row<QF>(p.ws, grow);
#if MOE_GEMM_GUARD_N
        if (n0 + row >= H) b_src[i] = nullptr;
#endif
    }
    const int b_row0[4] = {wn * 64, wn * 64 + 16, wn * 64 + 32, wn * 64 + 48};

    float acc[2][8][4];

    gemm_mainloop<QF>(sm, acc, a_src, b_src, b_scale, p.ws.k_shift, b_row0, I / GM_BK);

    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mi = 0; mi < 2; mi++)
#pragma unroll
        for (int half = 0; half < 2; half++) {
            const int slot = p.sorted_slots[tile * GM_BM + wm * 32 + mi * 16 + g + half * 8];
            if (slot < 0) continue;
            bf16x2* out = reinterpret_cast<bf16x2*>(p.y + (size_t)slot * H + n0 + wn * 64 + 2 * t4);
#pragma unroll
            for (int j = 0; j < 8; j++) {
#if MOE_GEMM_GUARD_N
                if (n0 + wn * 64 + j * 8 >= H) continue;
#endif
                out[j * 4] = pack_bf16x2(acc[mi][j][half * 2], acc[mi][j][half * 2 + 1]);
            }
        }
}

extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_gate_up_gemm(MoeGateUpGemmParams p) { moe_gate_up_gemm_body<0>(p); }
extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_down_gemm(MoeDownGemmParams p) { moe_down_gemm_body<0>(p); }
extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_gate_up_gemm_fp8(MoeGateUpGemmParams p) { moe_gate_up_gemm_body<QF_FP8>(p); }
extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_down_gemm_fp8(MoeDownGemmParams p) { moe_down_gemm_body<QF_FP8>(p); }
extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_gate_up_gemm_int8(MoeGateUpGemmParams p) { moe_gate_up_gemm_body<QF_INT8>(p); }
extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_down_gemm_int8(MoeDownGemmParams p) { moe_down_gemm_body<QF_INT8>(p); }
extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_gate_up_gemm_int4(MoeGateUpGemmParams p) { moe_gate_up_gemm_body<QF_INT4>(p); }
extern "C" __global__ void __launch_bounds__(GM_THREADS) moe_down_gemm_int4(MoeDownGemmParams p) { moe_down_gemm_body<QF_INT4>(p); }
