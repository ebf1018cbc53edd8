// penalties.cu: presence, frequency and repetition penalties on the bf16 logits of a step's output rows, in place,
// before sampling (docs/architecture.md, "Engine"; vLLM's order). For every entry (token t, count n) of row r:
//   x = logits[r, t];  if (repetition != 1) x = x > 0 ? x / repetition : x * repetition;
//   if (n > 0) x = x - (frequency * n + presence);  logits[r, t] = bf16(x)   (round to nearest even)
// A row lists each token at most once: the ids in its prompt or answer (the repetition penalty's set), n = the token's
// occurrences in the answer (0: prompt only). Every operation is a single IEEE-rounded fp32 op (no contraction), so the
// host reference (Sampling/Penalties.cs) computes the same bits.
// Thread mapping: one block per output row, threads stride over the row's entries; entries of a row have distinct ids,
// so no two threads touch one logit. Bytes moved: per entry 8 read (id, count) + 2 read + 2 written of logits.
#include "common.cuh"

struct PenaltyRow {
    int start;              // first entry of the row in entries
    int count;              // entries of the row (0: no penalty)
    float presence;         // subtracted once from every answer token
    float frequency;        // subtracted per occurrence in the answer
    float repetition;       // > 0; 1: off
};

struct PenaltiesParams {
    bf16* logits;                   // [rows, ld]
    const PenaltyRow* row_settings; // [rows]
    const int* entries;             // [total, 2]: token id, occurrences in the answer
    int rows;
    int vocab;
    int ld;
};

extern "C" __global__ void __launch_bounds__(256) apply_penalties_bf16(PenaltiesParams p)
{
    const int r = blockIdx.x;
    const PenaltyRow s = p.row_settings[r];
    bf16* row = p.logits + (size_t)r * p.ld;
    for (int i = threadIdx.x; i < s.count; i += blockDim.x) {
        const int t = p.entries[2 * (s.start + i)];
        const int n = p.entries[2 * (s.start + i) + 1];
        if (t < 0 || t >= p.vocab) continue;
        float x = bf16_to_f32(row[t]);
        if (s.repetition != 1.0f) x = x > 0.0f ? __fdiv_rn(x, s.repetition) : __fmul_rn(x, s.repetition);
        if (n > 0) x = __fsub_rn(x, __fadd_rn(__fmul_rn(s.frequency, (float)n), s.presence));
        row[t] = f32_to_bf16(x);
    }
}
