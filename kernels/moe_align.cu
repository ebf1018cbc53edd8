// moe_align.cu: token grouping for the grouped expert GEMMs (vLLM's moe_align_block_size), all on device.
// Slot s = t*k + j (token t's rank-j choice) goes to expert topk_ids[s]. Outputs:
//   counts[e]        slots routed to expert e
//   offsets[e]       start of expert e's rows in the sorted order; each expert's run is padded up to a
//                    multiple of the GEMM tile height BM: offsets[e+1] = offsets[e] + roundup(counts[e], BM)
//   offsets[E]       total padded rows
//   sorted_slots[r]  slot id of sorted row r, slots of one expert in ASCENDING slot order
//                    (deterministic); padding rows hold the sentinel -1
//   tile_expert[b]   expert of row tile b (rows b*BM .. b*BM+BM-1)
//   num_tiles[0]     offsets[E] / BM
//
// moe_align_count: ONE block of 1024 threads. Counts with shared-memory integer atomics (the counts do not
//   depend on order), then thread 0 scans the E counts (E <= 1024, a few hundred adds) and warps fill
//   tile_expert. Bytes: T*k*4 read.
// moe_align_scatter: grid E, 256 threads = 8 warps; block e writes expert e's run. The slot list is cut into
//   8 contiguous pieces, one per warp: pass 1 counts matches per piece (ballot + popc), a fixed prefix over
//   the 8 warps gives each piece its base, pass 2 writes positions in ascending order within the piece.
//   Every block reads all T*k ids (from L2): T*k*4*E bytes of cache traffic, fine up to a few 10^4 slots.
// Variants: these two kernels only.
#include "common.cuh"

struct MoeAlignParams {
    const int* topk_ids;     // [slots]
    int* counts;             // [E]
    int* offsets;            // [E + 1]
    int* sorted_slots;       // [max padded rows] (capacity: see MoeWorkspace)
    int* tile_expert;        // [max tiles]
    int* num_tiles;          // [1]
    int slots;               // T*k
    int experts;             // E <= 1024
    int block_m;             // BM, the GEMM tile height
};

extern "C" __global__ void __launch_bounds__(1024) moe_align_count(MoeAlignParams p)
{
    __shared__ int s_count[1024];
    __shared__ int s_offset[1025];
    for (int e = threadIdx.x; e < p.experts; e += blockDim.x) s_count[e] = 0;
    __syncthreads();
    for (int s = threadIdx.x; s < p.slots; s += blockDim.x) atomicAdd(&s_count[p.topk_ids[s]], 1);
    __syncthreads();
    if (threadIdx.x == 0) {
        int run = 0;
        for (int e = 0; e < p.experts; e++) {
            s_offset[e] = run;
            run += (s_count[e] + p.block_m - 1) / p.block_m * p.block_m;
        }
        s_offset[p.experts] = run;
        p.num_tiles[0] = run / p.block_m;
    }
    __syncthreads();
    for (int e = threadIdx.x; e <= p.experts; e += blockDim.x) {
        p.offsets[e] = s_offset[e];
        if (e < p.experts) p.counts[e] = s_count[e];
    }
    // tile_expert: one warp per expert, lanes stride over its tiles.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    for (int e = warp; e < p.experts; e += warps) {
        const int b0 = s_offset[e] / p.block_m, b1 = s_offset[e + 1] / p.block_m;
        for (int b = b0 + lane; b < b1; b += 32) p.tile_expert[b] = e;
    }
}

#define ALIGN_WARPS 8

extern "C" __global__ void __launch_bounds__(ALIGN_WARPS * 32) moe_align_scatter(MoeAlignParams p)
{
    __shared__ int s_warp_count[ALIGN_WARPS];
    const int e = blockIdx.x;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int piece = (p.slots + ALIGN_WARPS - 1) / ALIGN_WARPS;
    const int begin = min(p.slots, warp * piece), end = min(p.slots, begin + piece);

    int n = 0;
    for (int s0 = begin; s0 < end; s0 += 32) {
        const int s = s0 + lane;
        const bool hit = s < end && p.topk_ids[s] == e;
        n += __popc(__ballot_sync(0xffffffffu, hit));
    }
    if (lane == 0) s_warp_count[warp] = n;
    __syncthreads();
    const int start = p.offsets[e];
    int base = start;
    for (int w = 0; w < warp; w++) base += s_warp_count[w];

    for (int s0 = begin; s0 < end; s0 += 32) {
        const int s = s0 + lane;
        const bool hit = s < end && p.topk_ids[s] == e;
        const unsigned int mask = __ballot_sync(0xffffffffu, hit);
        if (hit) p.sorted_slots[base + __popc(mask & ((1u << lane) - 1u))] = s;
        base += __popc(mask);
    }
    // Padding rows of this expert's run.
    int total = 0;
    for (int w = 0; w < ALIGN_WARPS; w++) total += s_warp_count[w];
    const int padded_end = p.offsets[e + 1];
    for (int r = start + total + threadIdx.x; r < padded_end; r += blockDim.x) p.sorted_slots[r] = -1;
}
