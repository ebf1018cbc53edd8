// common.cuh: the few definitions every kernel shares. NVRTC 11.8 has no CUDA toolkit headers
// (no cuda_bf16.h, no <cstdint>), so bf16 is a raw 16-bit value here and conversions use the
// sm_80 cvt instructions directly. Include nothing else.
#pragma once

typedef unsigned short bf16;          // raw IEEE bfloat16 bits
typedef unsigned int bf16x2;          // two bf16: element 0 in bits [15:0], element 1 in bits [31:16]
typedef unsigned long long u64;

#define QC_INF __int_as_float(0x7f800000)

__device__ __forceinline__ float bf16_to_f32(bf16 v) { return __uint_as_float(((unsigned int)v) << 16); }
__device__ __forceinline__ float bf16x2_lo(bf16x2 v) { return __uint_as_float(v << 16); }
__device__ __forceinline__ float bf16x2_hi(bf16x2 v) { return __uint_as_float(v & 0xffff0000u); }

// Round to nearest even (cvt.rn.bf16.f32, sm_80+).
__device__ __forceinline__ bf16 f32_to_bf16(float f)
{
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Packs (lo, hi) into one bf16x2 with lo in bits [15:0]. The PTX operand order is (hi, lo).
__device__ __forceinline__ bf16x2 pack_bf16x2(float lo, float hi)
{
    unsigned int r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

// bf16 round of x, kept in fp32 (what a PyTorch bf16 op does to its output).
__device__ __forceinline__ float round_bf16(float f) { return bf16_to_f32(f32_to_bf16(f)); }

// RMSNorm pieces (rmsnorm.cu, gemv.cu's prologue): the squares of a bf16 pair, and bf16(w * bf16(v * inv_rms)).
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

// norm_bf16x2 over a 16-byte chunk: 8 values of x with their 8 norm weights.
__device__ __forceinline__ uint4 norm_bf16x8(uint4 v, uint4 w, float inv_rms)
{
    return make_uint4(norm_bf16x2(v.x, w.x, inv_rms), norm_bf16x2(v.y, w.y, inv_rms), norm_bf16x2(v.z, w.z, inv_rms),
                      norm_bf16x2(v.w, w.w, inv_rms));
}

// Dot product of 8 bf16 pairs (two 16-byte chunks) in fp32, in element order: a product then 7 fmas.
__device__ __forceinline__ float dot_bf16x8(uint4 a, uint4 b)
{
    float s = bf16x2_lo(a.x) * bf16x2_lo(b.x);
    s = fmaf(bf16x2_hi(a.x), bf16x2_hi(b.x), s);
    s = fmaf(bf16x2_lo(a.y), bf16x2_lo(b.y), s);
    s = fmaf(bf16x2_hi(a.y), bf16x2_hi(b.y), s);
    s = fmaf(bf16x2_lo(a.z), bf16x2_lo(b.z), s);
    s = fmaf(bf16x2_hi(a.z), bf16x2_hi(b.z), s);
    s = fmaf(bf16x2_lo(a.w), bf16x2_lo(b.w), s);
    s = fmaf(bf16x2_hi(a.w), bf16x2_hi(b.w), s);
    return s;
}

// A 32-bit float through L2 (ld.global.cg): data other CTAs of the launch wrote.
__device__ __forceinline__ float ld_cg_f32(const float* p)
{
    float v;
    asm volatile("ld.global.cg.f32 %0, [%1];" : "=f"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ float warp_sum(float v)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// rms_inv_rows' last steps, once red_s[t][0 .. rwarps - 1] hold row t's virtual-warp sums (after a barrier): warp t
// adds them (one warp per row: needs the block's warps >= rows) and writes inv_s[t] = rsqrt(sum / width + eps); ends with
// a barrier. A kernel that sums the squares in that layout itself (gemv_mma_tile's one-round-trip staging) finishes here.
__device__ __forceinline__ void rms_inv_finish(int rows, int rwarps, int width, float eps, float (*red_s)[32], float* inv_s)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (warp < rows) {
        float v = lane < rwarps ? red_s[warp][lane] : 0.f;
        v = warp_sum(v);
        if (lane == 0) inv_s[warp] = rsqrtf(v / (float)width + eps);
    }
    __syncthreads();
}

// The inverse RMS of `rows` (<= MAX_ROWS) rows of bf16 x (row stride `ld` elements, `width` a multiple of 8) summed in
// add_rmsnorm_bf16's layout and tree (ceil32(width / 8) virtual threads, clamped to 32..1024, mapped onto the block's
// WARPS warps; one warp per row finishes), so a kernel that fuses the norm in its prologue stages bitwise that kernel's
// h: inv_s[t] = rsqrt(sum_t / width + eps). red_s [MAX_ROWS][32] and inv_s [MAX_ROWS] are the caller's shared arrays;
// needs WARPS >= rows; ends with a barrier (docs/kernels.md, "Fusions"). X_L2: x was written by other CTAs of the same
// launch, so it is read through L2 (ld.global.cg).
template <int MAX_ROWS, int WARPS, bool X_L2 = false>
__device__ __forceinline__ void rms_inv_rows(const bf16* x, size_t ld, int rows, int width, float eps,
                                             float (*red_s)[32], float* inv_s)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int chunks = width >> 3;
    const int rthreads = min(max((chunks + 31) / 32 * 32, 32), 1024), rwarps = rthreads >> 5;
#pragma unroll
    for (int t = 0; t < MAX_ROWS; t++) {
        if (t >= rows) break;
        const uint4* xr = reinterpret_cast<const uint4*>(x + (size_t)t * ld);
        for (int vw = warp; vw < rwarps; vw += WARPS) {
            float sumsq = 0.f;
            for (int i = vw * 32 + lane; i < chunks; i += rthreads) {
                const uint4 h = X_L2 ? __ldcg(xr + i) : xr[i];
                sumsq += sumsq_bf16x2(h.x) + sumsq_bf16x2(h.y) + sumsq_bf16x2(h.z) + sumsq_bf16x2(h.w);
            }
            sumsq = warp_sum(sumsq);
            if (lane == 0) red_s[t][vw] = sumsq;
        }
    }
    __syncthreads();
    rms_inv_finish(rows, rwarps, width, eps, red_s, inv_s);
}

__device__ __forceinline__ float warp_max(float v)
{
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
    return v;
}

// Sum over the whole block; every thread gets the result. `scratch` holds 32 floats of shared memory.
// Contains __syncthreads(): every thread of the block must call it.
__device__ __forceinline__ float block_sum(float v, float* scratch)
{
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.f;
    v = warp_sum(v);
    __syncthreads();  // scratch may be reused by the caller
    return v;
}

// Where a launch's tail begins: the work a CTA does after its share of the launch's stream (the ticket, and the last CTA's
// merge), which on a GPU runs after the DRAM stream ends. `pmevent 7` triggers a performance-monitor event and nothing
// else; the emulator counts each warp's chain from its first mark on apart, and the timing model adds the longest such
// chain after the launch's waves (docs/timing-model.md, section 2). Every kernel that elects a last CTA with a ticket calls
// it right before the ticket's fence.
__device__ __forceinline__ void tail_begin() { asm volatile("pmevent 7;" ::: "memory"); }

// stream_begin(): marks where a CTA's weight stream can begin in a kernel whose weights' addresses depend on what it read
// after its wait (moe_experts_gemv: the expert ids). A performance-monitor event on a GPU; the emulator counts each warp's
// chain from its wait to its first such mark apart (its head), and the timing model starts the DRAM stream after the
// longest head (docs/timing-model.md, section 2).
__device__ __forceinline__ void stream_begin() { asm volatile("pmevent 6;" ::: "memory"); }

// Programmatic dependent launch (PDL, sm_90 and newer; docs/kernels.md "Programmatic dependent launch").
// A kernel launched with LaunchConfig.ProgrammaticDependentLaunch may start while the kernel before it in the
// stream or graph is still running. Before pdl_wait() it may only touch memory no earlier kernel of the step
// writes (weights: e.g. prefetch_l2 of its weight slice); pdl_wait() returns once the previous kernel has
// finished and its writes are visible. pdl_launch_dependents() lets the next kernel start its own prologue;
// our kernels call it right after pdl_wait(), so at most one kernel runs ahead (the chain is one deep).
// On older architectures both compile to nothing and the launch attribute is never set.
__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void pdl_launch_dependents()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Dependency counters between the tiles of one launch (docs/kernels.md, "Persistent launches"). counter_release: after
// the CTA's writes (the barrier), thread 0 fences and adds 1. counter_wait: thread 0 polls until *counter reaches target
// (a volatile load, backing off), then fences, so the CTA's later reads come after what the releasing CTAs wrote before
// their fence; the barrier hands that to the whole CTA. Every thread of the CTA calls either.
__device__ __forceinline__ void counter_release(int* counter)
{
    __syncthreads();
    if (threadIdx.x == 0) {
        __threadfence();
        atomicAdd(counter, 1);
    }
}

// A persistent launch's exit ticket: thread 0 of a CTA, after the CTA's last access to the launch's counters, fences and
// takes a ticket on *exit_counter. Nothing waits for the result until the CTA's end, where the one that took the last
// ticket (gridDim.x - 1) resets the counters for the next launch: every other CTA has then done its last wait and release.
__device__ __forceinline__ int take_exit_ticket(int* exit_counter)
{
    __threadfence();
    return atomicAdd(exit_counter, 1);
}

__device__ __forceinline__ void counter_wait(const int* counter, int target)
{
    if (threadIdx.x == 0) {
        while (*(volatile const int*)counter < target) __nanosleep(32);
        __threadfence();
    }
    __syncthreads();
}

// Asks the L2 to fetch the 128-byte line holding `p` (no register result, nothing to wait for).
__device__ __forceinline__ void prefetch_l2(const void* p)
{
    asm volatile("prefetch.global.L2 [%0];" :: "l"(p) : "memory");
}

// Weights of a LATER kernel (not the next one) into L2 with the evict_last priority, [base, base + bytes) spread over the
// grid's threads, one 128-byte line per thread per turn (docs/timing-model.md, "Weights fetched ahead"): a latency-bound
// kernel leaves the DRAM idle, and lines fetched with evict_last outlive the streaming traffic in between (the runtime
// sets L2 aside for persisting lines). A GEMV issues it after pdl_wait(), behind its own pre-wait prefetch; a kernel whose
// own stream cannot begin before its inputs (moe_experts_gemv) issues it before, so it fills that wait. A null
// base or no bytes: nothing. sm_80 and newer (PTX ISA 7.4); nothing before. This is part `part` of `parts` equal shares
// of the lines (a CTA's share when `parts` CTAs fetch them: a persistent launch's tiles of one stage).
__device__ __forceinline__ void prefetch_l2_evict_last_share(const void* base, long long bytes, long long part, long long parts)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
    if (base == nullptr || bytes <= 0) return;
    const long long lines = (bytes + 127) >> 7;
    const long long per_part = (long long)blockDim.x * blockDim.y * blockDim.z;
    const long long thread = ((long long)threadIdx.z * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
    for (long long i = part * per_part + thread; i < lines; i += parts * per_part)
        asm volatile("prefetch.global.L2::evict_last [%0];" :: "l"(reinterpret_cast<const char*>(base) + (i << 7)) : "memory");
#endif
}

// The whole grid's share: every CTA one part.
__device__ __forceinline__ void prefetch_l2_evict_last_range(const void* base, long long bytes)
{
    const long long block = ((long long)blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    prefetch_l2_evict_last_share(base, bytes, block, (long long)gridDim.x * gridDim.y * gridDim.z);
}

// Prefetches into L2 (sm_90 and newer only: it serves programmatic dependent launch, where it runs before pdl_wait()
// while the previous kernel still runs) the 128-byte lines holding bytes [r * stride + off, r * stride + off + len) of
// `base` for rows r in [r0, r1): the lines a CTA's weight slice lies in, one line per thread per iteration. Rows that
// are contiguous (stride == len, or one row) are one range, walked without a division (the decode step's slices all
// are: whole weight rows); other slices take one 32-bit division per line (a CTA's slice is far below 2^32 lines).
// Every address passed lies inside the slice.
__device__ __forceinline__ void prefetch_l2_rows(const void* base, size_t r0, size_t r1, size_t stride, size_t off, size_t len)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    if (r1 <= r0 || len == 0) return;
    if (stride == len || r1 - r0 == 1) {
        const size_t start = reinterpret_cast<size_t>(base) + r0 * stride + off, end = start + len * (r1 - r0);
        const size_t first = start >> 7, lines = ((end - 1) >> 7) - first + 1;
        for (size_t i = threadIdx.x; i < lines; i += blockDim.x) {
            const size_t line = (first + i) << 7;
            prefetch_l2(reinterpret_cast<const void*>(line > start ? line : start));
        }
        return;
    }
    const unsigned lines_per_row = (unsigned)((len + 127) >> 7) + 1;   // a row's bytes span at most this many lines
    const unsigned total = (unsigned)(r1 - r0) * lines_per_row;
    for (unsigned i = threadIdx.x; i < total; i += blockDim.x) {
        const unsigned r = i / lines_per_row, j = i - r * lines_per_row;
        const size_t start = reinterpret_cast<size_t>(base) + (r0 + r) * stride + off, end = start + len;
        const size_t line = ((start >> 7) + j) << 7;
        if (line < end) prefetch_l2(reinterpret_cast<const void*>(line > start ? line : start));
    }
#endif
}
