using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model;

/// <summary>
/// A causal language model on some backend (the CPU reference, or the device model on CUDA or the emulator), reached
/// through ONE entry point: <see cref="Step"/> (docs/architecture.md, "The step contract"). The model holds the KV
/// cache of up to <see cref="MaxSequences"/> sequences, identified by small integers; <see cref="Kv"/> says which pages
/// each holds and how long it is, and is where a scheduler resets, truncates or shares them (prefix caching).
/// Conveniences built on Step (Forward, DecodeBatch, ...) are in <see cref="CausalLanguageModelExtensions"/>.
/// Not thread-safe: one Step at a time.
/// </summary>
public interface ICausalLanguageModel : IDisposable
{
    int VocabSize { get; }
    /// <summary>Longest sequence (prompt + generated tokens) the model accepts.</summary>
    int ContextLength { get; }
    /// <summary>Sequences that can be held at once (ids 0 .. MaxSequences-1).</summary>
    int MaxSequences { get; }
    /// <summary>Token rows one step takes (the token budget of a step).</summary>
    int MaxStepRows { get; }
    /// <summary>Rows with an output (logits or a sampled token) one step takes.</summary>
    int MaxOutputRows { get; }
    /// <summary>Penalty entries (token, count) one step may carry (<see cref="StepBatch.SetPenalties"/>); a scheduler samples
    /// the rows past it on the host from their logits.</summary>
    int MaxPenaltyEntries => int.MaxValue;
    /// <summary>The KV page table: sequence lengths, block tables, free pages, prefix cache.</summary>
    KvPageTable Kv { get; }

    /// <summary>
    /// Runs one forward over the rows of <paramref name="batch"/> (prefill chunks and decode rows of several sequences),
    /// appends their K/V to the sequences, and fills the batch's results. Invalid batches throw before anything changes
    /// (see <see cref="StepBatch.Prepare"/>).
    /// </summary>
    void Step(StepBatch batch);
}
