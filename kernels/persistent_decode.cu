// persistent_decode.cu: a decoder layer's attention block for decode rows as ONE launch whose tiles wait on counters
// instead of kernel boundaries (docs/kernels.md, "Persistent launches"; the plan in docs/timing-model.md, section 7):
//
//   qkv = W_qkv (RMSNorm(x) * w_in)                              gemv_bf16_mma's tile, its norm prologue
//   attn = attention(q/k norm, RoPE, KV write, splits, combine)  attn_decode_fused's CTA
//   x = x + W_o attn                                             gemv_bf16_mma's tile, the residual
//   [+ o_proj.fetch_ahead_bytes of the next weights into L2 with evict_last, shared by the o_proj tiles after their wait]
//   [router_tiles > 0, a MoE layer: h = RMSNorm(x) * w_post, the router logits, softmax + top-k: moe_router_norm_topk's
//    work, one router row per tile (moe_router.cuh); + router.fetch_ahead_bytes of the next weights, shared by the router
//    tiles before their wait; router.topk_by_consumer: the logits only, no ticket and no softmax + top-k, which the
//    experts' launch after the block runs in each of its CTAs (moe_experts_gemv's router_logits)]
//   [early_tiles > 0, with the router stage: early routing (early_route.cuh, docs/kernels.md "Early routing"): x tiles after
//    the qkv tiles in stage 0 (they need only x, as the qkv tiles; they count as attention tiles) sum the x part of the
//    unscaled logits u; early tiles first in the o_proj stage (one expert row per warp, its folded row copied into the K / V
//    tile buffer before their wait) add the attention output's part through the folded router; after their wait the router
//    tiles, when early_prefetch_bytes > 0, each take every token's top-k of u (one warp per token; router tile 0 also
//    stores the ids) and prefetch their share of the first early_prefetch_bytes of each chosen expert's gate_up weight into
//    L2 (evict_last), for the experts' launch: a hint that never changes a result. x must then stay the layer's input:
//    o_proj.y is another buffer (o_proj.residual is x)]
//
// In the multi-kernel step these are three launches (three graph nodes per layer). Here they are the stages of one
// ordered list of tiles: every qkv row tile (then early routing's x tiles), then every attention CTA (row-major, then
// split, the KV head fastest: the numbering of attn_decode_fused's grid), then every o_proj row tile (after early
// routing's early tiles), then (a MoE layer) every router row. The grid is one CTA per tile; a CTA takes its tile with
// an atomic ticket (counters[0]) once it runs, so tiles start in list order whatever order the hardware
// dispatches the CTAs in. A GEMV tile first loads up to 16 weight steps of each lane into registers and prefetches the
// rest of its rows into L2 (they depend on nothing), an attention tile loads its first K / V tile (keys of earlier
// steps) into shared memory, a router tile its router row and norm weight chunks, then it waits for the stage before (counters[2]: qkv tiles
// done, counters[3]: attention tiles done, counters[4]: o_proj tiles done; the router tiles elect their last with
// counters[5], which resets it): the next stage's weights stream during the current stage's dependency chain without a
// kernel boundary, and the held steps need no transfer from L2 once the tile's inputs are ready. Progress needs no
// co-residency: a tile waits only on tiles of lower tickets, held by CTAs already running. Each CTA takes an exit ticket
// (counters[1]) after its last access to counters[0 .. 4] (a router tile: right after its wait, so the round trip runs
// beside its work), and the CTA with the last one resets them for the next launch: they are zero before the first.
// Why not resident CTAs looping over tickets: in a loop, NVRTC hoists the tiles' parameter loads and per-thread
// addresses out of it and keeps them in registers across the whole loop: 168 to 227 registers, against this kernel's
// 128 (sm_80 and sm_90: attn_decode_fused's own 103 / 121, and the GEMV tiles' 64 held registers; docs/kernels.md,
// "Persistent launches").
// Oracle: the tiles are the kernels' own code (gemv_mma_tile, attn_fused_tile, router_norm_tile), so the launch equals the
// three launches (and moe_router_norm_topk) bit for bit: a GEMV tile sums each row group over the standalone plan's K-slices (wpg), its 4 warps running
// 8 slices two each when the plan has 8 (tests/Kernels/PersistentDecodeTests).
// PDL: launched as a programmatic dependent of the previous kernel (which wrote x). Before pdl_wait() a CTA only
// loads and prefetches the weight rows of the GEMV tile (or the router row) its index names (the ticket, an atomic on a counter the step
// writes, comes after the wait); a CTA lets the next kernel start once its tile is done.
// stage_only 0 .. 3 runs that stage's tiles alone, for the timing model (below; docs/timing-model.md, section 7).
// Thread mapping: 128 threads = 4 warps (the attention's CTA); a GEMV tile is 8 * groups rows, groups * wpg K-slices
// on the 4 warps. Memory traffic: each weight once, the KV cache once (as attn_decode_fused), x and attn once per GEMV
// tile from L2, the partials once, x once per router tile from L2 and the logits once; counters: one ticket and one
// release per tile, one polling thread per waiting CTA.
// Shared memory: the attention's (AttnFusedSmem, about 40 KiB at D 128); its K / V tile buffer also holds a GEMV
// tile's staged rows (T x (K + 32) bf16: the launcher checks they fit); a router tile's sums use the GEMV tiles' arrays.
#include "gemv_mma.cuh"
#include "attention_decode.cuh"
#include "moe_router.cuh"
#include "early_route.cuh"

#if DEC_TC
#define PDEC_THREADS DEC_THREADS
#define PDEC_WARPS (PDEC_THREADS / 32)
#define PDEC_MIN_CTAS_PER_SM 4            // 4 x 128 threads x 128 registers: all 128 taken on sm_80 and sm_90 today, no spill
static_assert(PDEC_WARPS == 4, "the attention tile's 4 warps");

struct PersistentAttnParams {
    GemvParams qkv;                        // x: the layer input, norm_weight: its input RMSNorm, y: qkv rows
    AttnDecodeFusedParams attn;            // qkv: qkv.y; out: o_proj.x
    GemvParams o_proj;                     // x: the attention output, y = residual = the layer's x
    MoeRouterParams router;                // hidden: o_proj.y (row stride hidden_size); counters unused (counters[5])
    int* counters;                         // [6]: next ticket, exit ticket, qkv / attention (+ x) / o_proj (+ early) tiles
                                           //      done, router ticket
    int qkv_groups, qkv_wpg;               // a qkv tile: qkv_groups row groups of 8 rows, each summed over qkv_wpg K-slices
    int o_groups, o_wpg;
    int router_tiles;                      // 0: no router stage; E: one tile per router row
    int stage_only;                        // -1: the whole block; 0 .. 3: that stage's tiles alone (below)
    long long o_ahead_bytes;               // the first bytes of o_proj.w the qkv tiles prefetch (evict_last) before their wait
    // Early routing (early_tiles > 0, a MoE layer with the router stage; kernels/early_route.cu): early.x is the layer's
    // input, which the block must not overwrite (o_proj.y is another buffer), early.attn the attention's output;
    // early.counter is unused (no ticket: the router tiles take the top-k). The x tiles come after the qkv tiles in
    // stage 0, the early tiles first in stage 2; the router tiles, after their wait, take the top-k and prefetch the first
    // early_prefetch_bytes of each chosen expert's gate_up block (early_experts + id * early_expert_stride) into L2 with
    // evict_last, for the experts' launch after the block.
    MoeEarlyRouteParams early;
    const void* early_experts;             // the stacked gate_up weight [E, 2I, H]
    long long early_expert_stride;         // its bytes per expert
    long long early_prefetch_bytes;        // per chosen expert (a token's rank-j choice)
    int early_tiles;                       // 0: none; ceil(E / 4)
};

// The router tiles' prefetch of the early-routed experts (part `part` of router_tiles equal shares of the lines): every
// token's top-k of u (warp t: token t; u's rows through L2, the early tiles' stores released before the router's wait)
// into ids_s, router tile 0 also storing them in early.topk_ids; then the first early_prefetch_bytes of expert
// ids_s[s]'s gate_up block for every slot s = t * k + j. Every thread calls it (a barrier between the two).
__device__ __forceinline__ void early_prefetch_experts(const PersistentAttnParams& p, int part, int* ids_s)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp < p.early.tokens) {
        const int e = early_topk_select(p.early, warp);
        if (lane < p.early.top_k) {
            ids_s[warp * p.early.top_k + lane] = e;
            if (part == 0) p.early.topk_ids[warp * p.early.top_k + lane] = e;
        }
    }
    __syncthreads();
    const long long per_slot = (p.early_prefetch_bytes + 127) >> 7, total = (long long)p.early.tokens * p.early.top_k * per_slot;
    for (long long i = (long long)part * PDEC_THREADS + threadIdx.x; i < total; i += (long long)p.router_tiles * PDEC_THREADS) {
        const int slot = (int)(i / per_slot);
        const long long line = i - slot * per_slot;
        const int e = ids_s[slot];
        asm volatile("prefetch.global.L2::evict_last [%0];"
                     :: "l"(reinterpret_cast<const char*>(p.early_experts) + e * p.early_expert_stride + (line << 7)) : "memory");
    }
#endif
}

// The weight rows of GEMV tile `tile` into L2 (sm_90; they depend on nothing the step writes).
__device__ __forceinline__ void prefetch_gemv_rows(const GemvParams& g, int tile, int groups)
{
    const int row_base = tile * 8 * groups;
    prefetch_l2_rows(g.w, row_base, min(g.n, row_base + 8 * groups), (size_t)g.k * 2, 0, (size_t)g.k * 2);
}

// A GEMV tile loads 16 weight steps per lane (64 registers) into registers before its wait (gemv_mma_hold): the first 8
// steps of each of its warp's two slices when a slice has 8 to 15, the first 16 of its first slice when a slice has 16
// or more (Qwen3-30B-A3B's qkv tile, 16 rows x 2048 in two 16-step slices per warp, and its o_proj tile, 8 rows x 4096:
// half; the other half streams after the wait, its rows prefetched into L2), none when a slice is shorter. The held shape depends only on the
// GEMV's K and wpg, so the load before the wait and the tile after it agree on it.
typedef GemvHeld<16> PdecHeld;                 // both shapes: 2 x 8 and 1 x 16 steps

__device__ __forceinline__ int held_slices(const GemvParams& g, int wpg)
{
    const int nsteps = (g.k / wpg) >> 5;
    return nsteps >= 16 ? 1 : nsteps >= 8 ? 2 : 0;
}

// A GEMV tile's loads that need nothing of the step, for the tile at `tile`: its held steps into `held`, and, unless
// they are all of the tile or the rows were prefetched already, its weight rows into L2.
__device__ __forceinline__ void gemv_stage_hold(const GemvParams& g, int tile, int groups, int wpg, bool prefetched, PdecHeld& held)
{
    const int hs = held_slices(g, wpg), nsteps = (g.k / wpg) >> 5, per_warp = (groups * wpg + PDEC_WARPS - 1) / PDEC_WARPS;
    const bool all = hs > 0 && per_warp <= hs && nsteps <= 16 / hs;   // every step of the tile held
    if (!prefetched && !all) prefetch_gemv_rows(g, tile, groups);
    if (hs == 2) gemv_mma_hold<PDEC_WARPS, 2, 8>(g, tile * 8 * groups, groups, wpg, held);
    else if (hs == 1) gemv_mma_hold<PDEC_WARPS, 1, 16>(g, tile * 8 * groups, groups, wpg, held);
}

// A GEMV tile: its loads that need nothing of the step (gemv_stage_hold, unless `held` has them already), wait() (every
// thread calls it: the inputs are ready after it), the tile. Ends without a barrier.
template <bool X_L2, class Wait>
__device__ __forceinline__ void gemv_stage_tile(const GemvParams& g, int tile, int groups, int wpg, bool prefetched, bool loaded, PdecHeld& held,
                                                unsigned char* staging, float (*red_s)[8][8], float (*nred_s)[32], float* inv_s, Wait wait)
{
    if (!loaded) gemv_stage_hold(g, tile, groups, wpg, prefetched, held);
    wait();
    uint4* xm_s = reinterpret_cast<uint4*>(staging);
    const int row_base = tile * 8 * groups, hs = held_slices(g, wpg);
    if (hs == 2) gemv_mma_tile<PDEC_WARPS, X_L2, 2, 2, 8>(g, row_base, groups, wpg, xm_s, red_s, nred_s, inv_s, held);
    else if (hs == 1) gemv_mma_tile<PDEC_WARPS, X_L2, 2, 1, 16>(g, row_base, groups, wpg, xm_s, red_s, nred_s, inv_s, held);
    else gemv_mma_tile<PDEC_WARPS, X_L2, 2>(g, row_base, groups, wpg, xm_s, red_s, nred_s, inv_s);
}

// The exit ticket is take_exit_ticket(&p.counters[1]) (common.cuh), after the CTA's last access to counters[0 .. 4]; the
// CTA that takes the last one resets those counters at the kernel's end.
extern "C" __global__ void __launch_bounds__(PDEC_THREADS, PDEC_MIN_CTAS_PER_SM) persistent_attn_block(PersistentAttnParams p)
{
    __shared__ AttnFusedSmem s;
    __shared__ float red_s[8][8][8];
    __shared__ float nred_s[8][32];
    __shared__ float inv_s[8];
    __shared__ int ticket_s;
    __shared__ int early_ids_s[EARLY_MAX_TOKENS * EARLY_MAX_TOPK];
    const int qkv_tiles = (p.qkv.n + 8 * p.qkv_groups - 1) / (8 * p.qkv_groups);
    const int attn_per_row = p.attn.splits * p.attn.num_kv_heads, attn_tiles = attn_per_row * p.attn.seqs;
    const int o_tiles = (p.o_proj.n + 8 * p.o_groups - 1) / (8 * p.o_groups);
    // stage 0: the qkv tiles, then early routing's x tiles; stage 1: the attention tiles; stage 2: the early tiles, then
    // o_proj's
    const int x_begin = qkv_tiles, attn_begin = x_begin + p.early_tiles, early_begin = attn_begin + attn_tiles, o_begin = early_begin + p.early_tiles;
    const int attn_done = attn_tiles + p.early_tiles;   // counters[3]'s target: the attention and x tiles
    const int gemv_attn_tiles = o_begin + o_tiles;   // the router tiles after them
    // stage_only >= 0 (the timing model's measurement, docs/timing-model.md section 7): a launch of one stage's tiles, one
    // per CTA in index order, after a launch of the stage before; a tile then calls pdl_wait() where it would wait on the
    // counter, so the emulator's split at the wait is the stage's split between what it fetches ahead and its work.
    const bool whole = p.stage_only < 0;
    // The qkv tiles, resident from the launch's start, prefetch the first o_ahead_bytes of o_proj's weight into L2 with
    // evict_last before their wait, one share per qkv CTA: the o_proj tiles' CTAs start only once earlier tiles' CTAs exit,
    // so their own prefetches come after the qkv stage, and the DRAM would idle at its end (docs/timing-model.md, "A
    // stage-ordered launch"). By CTA index, as the held loads below: a wrong guess of the ticket only moves the share.
    if ((int)blockIdx.x < qkv_tiles && (whole || p.stage_only == 0))
        prefetch_l2_evict_last_share(p.o_proj.w, p.o_ahead_bytes, blockIdx.x, qkv_tiles);
    PdecHeld held;
    int tile;
    if (whole) {
        // Before pdl_wait() nothing the step writes, the counters included: the weight rows of tile blockIdx.x (a GEMV
        // tile), a guess at the ticket this CTA will take (CTAs start roughly in index order): a qkv tile's held steps
        // into registers (the tile has nothing else to wait for), an o_proj tile's rows into L2 (its CTA starts after the
        // wait has long passed: it holds its steps once it has its ticket); a wrong guess only fetches another CTA's rows
        // early.
        if ((int)blockIdx.x < qkv_tiles) gemv_stage_hold(p.qkv, blockIdx.x, p.qkv_groups, p.qkv_wpg, false, held);
        else if ((int)blockIdx.x >= gemv_attn_tiles) {
            const int e = blockIdx.x - gemv_attn_tiles;
            prefetch_l2_rows(p.router.w_gate, e, e + 1, (size_t)p.router.hidden_size * 2, 0, (size_t)p.router.hidden_size * 2);
        } else if ((int)blockIdx.x >= o_begin) prefetch_gemv_rows(p.o_proj, blockIdx.x - o_begin, p.o_groups);
        else if ((int)blockIdx.x >= early_begin) {     // an early tile's rows of the folded router (one per warp)
            const size_t row = (size_t)p.early.q_dim * 2, r0 = (size_t)(blockIdx.x - early_begin) * EARLY_ROWS_PER_CTA;
            prefetch_l2_rows(p.early.folded, r0, min((size_t)p.early.experts, r0 + EARLY_ROWS_PER_CTA), row, 0, row);
        } else if ((int)blockIdx.x >= x_begin && (int)blockIdx.x < attn_begin)
            early_route_prefetch_x(p.early, blockIdx.x - x_begin);   // an x tile's router rows
        pdl_wait();
        if (threadIdx.x == 0) ticket_s = atomicAdd(&p.counters[0], 1);
        __syncthreads();
        tile = ticket_s;
    } else {
        tile = (p.stage_only == 0 ? 0 : p.stage_only == 1 ? attn_begin : p.stage_only == 2 ? early_begin : gemv_attn_tiles) + blockIdx.x;
    }
    const bool guessed = whole && tile == (int)blockIdx.x;   // a qkv tile: its loads made; an o_proj tile: its rows in L2
    bool exit_early = false;                       // a router tile takes its exit ticket after its wait (thread 0's)
    int exit_ticket = -1;
    // the wait for the stage before: its counter, or (a stage alone) the launch before
    auto wait_for = [&](const int* counter, int target) {
        if (whole) counter_wait(counter, target);
        else pdl_wait();
    };
    auto release = [&](int* counter) {
        if (whole) counter_release(counter);   // its barrier: every output written, the shared memory free
    };
    if (tile < qkv_tiles) {
        gemv_stage_tile<false>(p.qkv, tile, p.qkv_groups, p.qkv_wpg, false, guessed, held, s.tiles_s, red_s, nred_s, inv_s, [&] { if (!whole) pdl_wait(); });
        release(&p.counters[2]);
    } else if (tile < attn_begin) {
        // Early routing's x tile: the x part of u, W_r (g * x), for 4 experts (x: the layer's input, which o_proj does not
        // overwrite here), into the logits buffer. Like a qkv tile it needs only x, so it runs beside the qkv tiles (its
        // router rows prefetched before the wait); it counts as an attention tile (counters[3]), which the early tiles wait for.
        if (!whole) {                                 // (a stage alone: a kernel of the step wrote x)
            early_route_prefetch_x(p.early, tile - x_begin);
            pdl_wait();
        }
        float xacc[EARLY_MAX_TOKENS];
        early_route_xpart(p.early, tile - x_begin, xacc);
        early_route_store_x(p.early, tile - x_begin, xacc);
        release(&p.counters[3]);
    } else if (tile < early_begin) {
        const int a = tile - attn_begin, seq = a / attn_per_row, cta = a - seq * attn_per_row;
        attn_fused_tile<true>(p.attn, seq, cta / p.attn.num_kv_heads, cta % p.attn.num_kv_heads, s, [&] { wait_for(&p.counters[2], qkv_tiles); });
        release(&p.counters[3]);
    } else if (tile < o_begin) {
        // Early routing: u of 4 experts, the x part (the x tiles') plus M a; every early tile counts as a stage-2 tile
        // for the router's wait, so u is written before any router tile takes its top-k.
        const int rb = tile - early_begin;
        uint4* m_s = reinterpret_cast<uint4*>(s.tiles_s);   // the tile's folded rows: the attention's K / V tile buffer
        constexpr int held = (int)(sizeof(s.tiles_s) / (16 * EARLY_ROWS_PER_CTA)) < EARLY_HELD_CHUNKS
            ? (int)(sizeof(s.tiles_s) / (16 * EARLY_ROWS_PER_CTA)) : EARLY_HELD_CHUNKS;
        early_route_hold(p.early, rb, m_s, held);      // the folded rows into shared memory, before the attention is done
        wait_for(&p.counters[3], attn_done);
        float v[EARLY_MAX_TOKENS];
        early_route_load_x(p.early, rb, v);
        early_route_rows(p.early, rb, m_s, held, v);
        release(&p.counters[4]);
    } else if (tile < gemv_attn_tiles) {
        // after its wait, each o_proj tile also fetches its share of the next weights' first bytes (o_proj.fetch_ahead) into
        // L2: its own weights came during the attention, so the DRAM has nothing else to do (docs/timing-model.md,
        // "Weights fetched ahead")
        const int o = tile - o_begin;
        gemv_stage_tile<true>(p.o_proj, o, p.o_groups, p.o_wpg, guessed, false, held, s.tiles_s, red_s, nred_s, inv_s, [&] {
            wait_for(&p.counters[3], attn_done);
            prefetch_l2_evict_last_share(p.o_proj.fetch_ahead, p.o_proj.fetch_ahead_bytes, o, o_tiles);
        });
        release(&p.counters[4]);
    } else if (tile < gemv_attn_tiles + p.router_tiles) {
        exit_early = whole;
        // Router row e: its row and the norm weight (one chunk per virtual thread: the whole row at H <= 2048) into
        // registers and its share of the next weights (router.fetch_ahead) into L2 before the wait, as neither depends on
        // the step; then moe_router_norm_topk's work on x through L2 (the o_proj tiles wrote it), T <= 4 rows.
        const int e = tile - gemv_attn_tiles;
        uint4 w0[ROUTER_VT(PDEC_THREADS)], n0[ROUTER_VT(PDEC_THREADS)];
        router_norm_hold<PDEC_THREADS>(p.router, e, w0, n0);
        prefetch_l2_evict_last_share(p.router.fetch_ahead, p.router.fetch_ahead_bytes, e, p.router_tiles);
        wait_for(&p.counters[4], o_tiles + p.early_tiles);
        // that wait was the tile's last access to counters[0 .. 4] (its own ticket, counters[5], resets itself): the exit
        // ticket now, so its round trip runs beside the router's work instead of after its softmax + top-k
        if (exit_early && threadIdx.x == 0) exit_ticket = take_exit_ticket(&p.counters[1]);
        // the early-routed experts' first bytes, before the router's own work: the experts' launch finds them in L2
        if (p.early_tiles > 0 && p.early_prefetch_bytes > 0) early_prefetch_experts(p, e, early_ids_s);
        float (*logit_s)[ROUTER_NORM_WARPS] = red_s[0];
        switch (p.router.tokens) {                       // 1 <= T <= 4 (the launcher checks)
#define PDEC_ROUTER(n) router_norm_tile<n, PDEC_THREADS, true>(p.router, e, w0, n0, nred_s, logit_s, inv_s, s.is_last, &p.counters[5], p.router_tiles)
        case 1: PDEC_ROUTER(1); break;
        case 2: PDEC_ROUTER(2); break;
        case 3: PDEC_ROUTER(3); break;
        default: PDEC_ROUTER(4); break;
#undef PDEC_ROUTER
        }
    }
    if (!whole) pdl_wait();                // (a stage alone: an attention CTA past its row's plan returned before its wait)
    pdl_launch_dependents();
    if (whole && threadIdx.x == 0) {
        if (!exit_early) exit_ticket = take_exit_ticket(&p.counters[1]);
        if (exit_ticket == (int)(gridDim.x - 1)) {       // every other CTA has done its last counter access
            for (int c = 2; c < 5; c++) p.counters[c] = 0;
            p.counters[0] = 0;
            __threadfence();
            p.counters[1] = 0;
        }
    }
}
#endif
