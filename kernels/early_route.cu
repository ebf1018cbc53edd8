// early_route.cu: early routing (docs/kernels.md, "Early routing"; why, and what the timing model says it buys, in
// docs/timing-model.md, section 7): a MoE layer's experts' ids from the attention's output, before o_proj, the residual
// add and the router's norm have run, as a hint for prefetching the experts' weights. It never replaces the router.
//
//   The router's logits are W_r (g * x') / rms(x') with x' = x + W_o a (x: the layer's input, a: the attention's output,
//   g: the post-attention norm weight). Up to the positive factor 1 / rms(x') of each token, which the top-k ignores,
//   they are   u = W_r (g * x) + M a   with the folded router   M = W_r diag(g) W_o   ([E, Q], made once at load).
//   u does not see the model's bf16 roundings of x' and of the normed row (nor M's own): at a near tie its ids may differ
//   from the router's (then a prefetch is wasted; the step's results never change). The host reference:
//   src/Model/Reference/EarlyRouting.cs.
//
// moe_router_fold (load time, once per MoE layer): M[e, j] = bf16(sum_i (W_r[e, i] * g[i]) * W_o[i, j]), the product of two
//   bf16 exact in fp32, then fp32 fmas in i order. Grid (ceil(Q / 128), ceil(E / FOLD_ROWS)), 128 threads: thread x of
//   block (bx, by) owns column j = bx * 128 + x of the FOLD_ROWS rows by * FOLD_ROWS ..; per i it reads W_o[i, j] once
//   for all its rows (a warp: 64 contiguous bytes) and the rows' coefficients W_r[e, i] * g[i] from shared memory (staged
//   FOLD_CHUNK values of i at a time). Bytes: W_o once per row block (ceil(E / FOLD_ROWS) x H x Q x 2, from L2 after the
//   first), W_r and g once per column block, M once. A load-time kernel: plain and exact to read, not tuned.
// moe_early_route (decode, 1 <= T <= 4 tokens): u[t, e] for every expert, then each token's top-k ids.
//   Grid ceil(E / 4), 128 threads = 4 warps: warp w owns row e = bx * 4 + w. Its lanes first copy their 16-byte chunks
//   lane, lane + 32, ... of M's row into shared memory (each lane reads back only its own: no barrier; the first 512
//   chunks of a row, all of Q <= 4096) and sum their chunks of W_r's row with the same chunks of g and of x[t] (sum of
//   (W_r * g) * x: the product W_r * g exact in fp32), summed over the lanes by a fixed shuffle tree (v); then for each
//   token they load a[t]'s chunks through L2 (8 in flight), sum M's products the same way and add v: u is
//   bit-reproducible. In persistent_attn_block x tiles beside the qkv tiles compute v and store it in logits[t, e],
//   and the early tiles after the attention add M a (the same bits), so only the attention output's loads are on the
//   step's chain; the router tiles take the top-k (persistent_decode.cu). Lane 0 stores u (fp32) in logits[t, e].
//   Then the ticket of moe_router_topk: the CTA fences, thread 0 adds 1 to *counter, and the CTA that takes the last ticket runs the top-k (warp t: token t) and resets the
//   counter to 0 (zero before the first launch, left zero). The top-k is on u's values (no softmax: u is the logit times
//   rms(x'), so exp would underflow where the router's does not): keys of two halves, the value's orderable bits and
//   ~e, compared as one 64-bit key, a NaN counted as -inf, so ties go to the lower expert, as the router's; lane l holds
//   experts l, l + 32, ... (4 keys at E <= 128, else 8), sorts them once, and each of k rounds takes the warp's largest
//   head (two redux.sync) and shifts the winning lane's keys up: the router's own selection (keys_topk, moe_router.cuh);
//   lane j stores the rank-j expert. Bytes: W_r, g and M once (E x (H + Q) x 2 + H x 2), x and a once per CTA
//   from L2, u once (T x E x 4), the ids (T x k x 4).
// Limits (the launcher checks them): H and Q multiples of 8, E <= 256, 1 <= k <= min(16, E), 1 <= T <= 4.
#include "early_route.cuh"

#define FOLD_THREADS 128
#define FOLD_ROWS 8
#define FOLD_CHUNK 256

struct MoeRouterFoldParams {
    const bf16* w_router;    // [E, H] (mlp.gate.weight)
    const bf16* norm_weight; // [H] (post_attention_layernorm.weight)
    const bf16* o_proj;      // [H, Q] (self_attn.o_proj.weight)
    bf16* folded;            // [E, Q] out: M
    int experts;             // E
    int hidden_size;         // H
    int q_dim;               // Q
};

extern "C" __global__ void __launch_bounds__(FOLD_THREADS) moe_router_fold(MoeRouterFoldParams p)
{
    __shared__ float coef_s[FOLD_ROWS][FOLD_CHUNK];
    const int j = blockIdx.x * FOLD_THREADS + threadIdx.x;
    const int e0 = blockIdx.y * FOLD_ROWS;
    float acc[FOLD_ROWS];
#pragma unroll
    for (int r = 0; r < FOLD_ROWS; r++) acc[r] = 0.f;
    for (int i0 = 0; i0 < p.hidden_size; i0 += FOLD_CHUNK) {
        const int n = min(FOLD_CHUNK, p.hidden_size - i0);
        __syncthreads();                                   // the chunk before is read by every thread
        for (int idx = threadIdx.x; idx < FOLD_ROWS * FOLD_CHUNK; idx += FOLD_THREADS) {
            const int r = idx / FOLD_CHUNK, i = idx - r * FOLD_CHUNK;
            coef_s[r][i] = e0 + r < p.experts && i < n
                ? bf16_to_f32(p.w_router[(size_t)(e0 + r) * p.hidden_size + i0 + i]) * bf16_to_f32(p.norm_weight[i0 + i])
                : 0.f;
        }
        __syncthreads();
        if (j < p.q_dim)
            for (int i = 0; i < n; i++) {
                const float w = bf16_to_f32(p.o_proj[(size_t)(i0 + i) * p.q_dim + j]);
#pragma unroll
                for (int r = 0; r < FOLD_ROWS; r++) acc[r] = fmaf(coef_s[r][i], w, acc[r]);
            }
    }
    if (j < p.q_dim)
#pragma unroll
        for (int r = 0; r < FOLD_ROWS; r++)
            if (e0 + r < p.experts) p.folded[(size_t)(e0 + r) * p.q_dim + j] = f32_to_bf16(acc[r]);
}

extern "C" __global__ void __launch_bounds__(EARLY_THREADS) moe_early_route(MoeEarlyRouteParams p)
{
    __shared__ int is_last;
    __shared__ uint4 m_s[EARLY_ROWS_PER_CTA * EARLY_HELD_CHUNKS];   // 32 KiB: the CTA's folded rows
    float acc[EARLY_MAX_TOKENS], v[EARLY_MAX_TOKENS];
    early_route_hold(p, blockIdx.x, m_s, EARLY_HELD_CHUNKS);
    early_route_xpart(p, blockIdx.x, acc);
    early_route_sum_x(acc, v);
    early_route_rows(p, blockIdx.x, m_s, EARLY_HELD_CHUNKS, v);
    early_route_finish(p, gridDim.x, is_last);
}
