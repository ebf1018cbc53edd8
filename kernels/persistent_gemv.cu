// persistent_gemv.cu: a chain of bf16 GEMVs in ONE launch whose CTAs pull tiles from an ordered list: the first brick
// of the persistent decode kernel (docs/timing-model.md, section 7; docs/kernels.md, "Persistent launches").
//
//   act[s + 1] = bf16(W[s] . act[s])      s = 0 .. stages - 1, every W[s] [dim, dim] bf16, act[s] [dim] bf16
//
// Tiles: stage s, row block b (8 * rows_per_warp rows) is tile s * tiles_per_stage + b. A CTA takes the next tile index
// with an atomic on counters[0], prefetches the tile's weight rows into L2 (their bytes need nothing earlier), then waits
// until counters[2 + s - 1] says every tile of stage s - 1 is done, stages act[s] in shared memory as fp32 and computes
// its rows exactly as gemv_bf16_t1 does (gemv.cuh: the same products in the same order, so the chain equals that
// kernel launched once per stage, bit for bit), writes them and releases its tile (fence, then counters[2 + s] += 1).
// Progress needs no co-residency: a tile waits only on tiles with smaller indices, which were taken by CTAs that are
// running them (a CTA takes a new tile only after finishing its last), so an ordinary launch of any grid finishes, on
// a GPU and on the emulator. The last CTA to run out of tiles (ticket counters[1]) resets every counter to zero for the
// next launch: counters are zero before the first.
// Thread mapping: 256 threads = 8 warps, warp w computes rows base + w * rows_per_warp ... of the tile (one warp per row,
// shuffles), as gemv.cu. Memory traffic: each weight once (dim * dim * 2 per stage), act[s] once per tile from L2, act[s + 1]
// written once; counters: one atomic per tile and per release, polling by one thread per waiting CTA.
#include "gemv.cuh"

#define PGEMV_THREADS 256
#define PGEMV_WARPS 8
#define PGEMV_MAX_RPW 8

struct PersistentGemvParams {
    const bf16* const* w;     // [stages] device pointers to [dim, dim] bf16 weights, rows contiguous
    bf16* act;                // [stages + 1, dim] bf16: act[0] the input, act[s + 1] stage s's output
    int* counters;            // [2 + stages]: next tile, exit ticket, tiles done per stage; zero on entry, left zero
    int stages;
    int dim;                  // multiple of 8; the staged row, dim * 4 bytes, is the dynamic shared memory
    int rows_per_warp;        // 1 .. 8: a tile is 8 * rows_per_warp rows
};

extern "C" __global__ void __launch_bounds__(PGEMV_THREADS) persistent_gemv_chain(PersistentGemvParams p)
{
    extern __shared__ float4 x_s[];                        // [2][dim / 8] (stage_chunk)
    __shared__ float y_s[PGEMV_WARPS * PGEMV_MAX_RPW];
    __shared__ int tile_s;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const int chunks = p.dim >> 3;
    const int rows_tile = PGEMV_WARPS * p.rows_per_warp;
    const int tiles_per_stage = (p.dim + rows_tile - 1) / rows_tile, tiles = p.stages * tiles_per_stage;
    for (;;) {
        if (tid == 0) tile_s = atomicAdd(&p.counters[0], 1);
        __syncthreads();
        const int tile = tile_s;
        if (tile >= tiles) break;
        const int s = tile / tiles_per_stage;
        const int row_base = (tile - s * tiles_per_stage) * rows_tile, rows_here = min(rows_tile, p.dim - row_base);
        const bf16* w = p.w[s];
        prefetch_l2_rows(w, row_base, row_base + rows_here, (size_t)p.dim * 2, 0, (size_t)p.dim * 2);
        if (s > 0) counter_wait(&p.counters[2 + s - 1], tiles_per_stage);
        const bf16* x = p.act + (size_t)s * p.dim;
        for (int c = tid; c < chunks; c += PGEMV_THREADS)
            stage_chunk(x_s, 0, c, chunks, __ldcg(reinterpret_cast<const uint4*>(x) + c));   // another CTA wrote it: L2, not L1
        __syncthreads();
        for (int r = 0; r < p.rows_per_warp; r++) {
            const int local = warp * p.rows_per_warp + r;
            if (local >= rows_here) break;
            float acc[1];
            gemv_row_dot<1>(w + (size_t)(row_base + local) * p.dim, x_s, chunks, chunks, lane, acc);
            const float v = warp_sum(acc[0]);
            if (lane == 0) y_s[local] = v;
        }
        __syncthreads();
        bf16* y = p.act + (size_t)(s + 1) * p.dim;
        for (int i = tid; i < rows_here; i += PGEMV_THREADS) y[row_base + i] = f32_to_bf16(round_bf16(y_s[i]));
        counter_release(&p.counters[2 + s]);                // its barrier: every row written (and tile_s, x_s, y_s free)
    }
    if (tid == 0) {
        __threadfence();
        if (atomicAdd(&p.counters[1], 1) == (int)gridDim.x - 1) {   // every other CTA has run out of tiles and left
            p.counters[0] = 0;
            for (int s = 0; s < p.stages; s++) p.counters[2 + s] = 0;
            __threadfence();
            p.counters[1] = 0;
        }
    }
}
