// embedding.cu: token embedding gather, out[t, :] = table[ids[t], :] (bf16 rows).
//
// Ids are validated: an id outside [0, vocab) writes a row of zeros and sets *error_flag = 1 (when
// error_flag is not null), so a bad id never reads out of bounds and the host can report it after
// the step (the flag is sticky: the host clears it).
// Fed ids (pipelined decode, docs/architecture.md "Pipelined decode"): an id -1 - j with j < feed_count takes
// feed[j], the token the step queued before this one sampled for its output row j, so the host can queue a decode
// step before it has read the token that step continues from. A fed id is validated like any other.
// Thread mapping: one block per token, threads copy 16-byte chunks (width must be a multiple of 8).
// Bytes moved: tokens * width * 2 read + written.
#include "common.cuh"

struct EmbeddingParams {
    bf16* out;              // [tokens, width]
    const bf16* table;      // [vocab, width]
    const int* ids;         // [tokens]
    int* error_flag;        // set to 1 on an out-of-range id; may be null
    const int* feed;        // [feed_count] the previous step's sampled ids (fed ids); may be null when feed_count is 0
    int feed_count;
    int tokens;
    int vocab;
    int width;              // multiple of 8
};

extern "C" __global__ void __launch_bounds__(256) embedding_gather_bf16(EmbeddingParams p)
{
    const int t = blockIdx.x;
    pdl_wait();                     // ids may come from the previous step's sampler (docs/kernels.md, "Programmatic dependent launch")
    pdl_launch_dependents();
    int id = p.ids[t];
    if (id < 0 && -1 - id < p.feed_count) id = p.feed[-1 - id];
    const bool ok = id >= 0 && id < p.vocab;
    if (!ok && threadIdx.x == 0 && p.error_flag) *p.error_flag = 1;
    const int chunks = p.width >> 3;
    const uint4* src = reinterpret_cast<const uint4*>(p.table + (size_t)(ok ? id : 0) * p.width);
    uint4* dst = reinterpret_cast<uint4*>(p.out + (size_t)t * p.width);
    for (int i = threadIdx.x; i < chunks; i += blockDim.x) dst[i] = ok ? __ldg(&src[i]) : make_uint4(0, 0, 0, 0);
}
