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

/// <summary>
/// A model that can queue decode steps ahead of the host (docs/architecture.md, "Pipelined decode"):
/// <see cref="Enqueue"/> returns before the step ran, <see cref="Complete"/> waits for the oldest queued step. A queued
/// row's token may be <see cref="StepBatch.FedToken"/>: the id the step before sampled, taken on the device.
/// <see cref="CausalLanguageModelExtensions.Generate"/> uses it where the model has it.
/// </summary>
public interface IPipelinedModel : ICausalLanguageModel
{
    /// <summary>Queues a decode step (one row per sequence, every row sampled, no penalties); at most two are queued.</summary>
    void Enqueue(StepBatch batch);
    /// <summary>Waits for the oldest queued step and fills its batch (the one given to <see cref="Enqueue"/>).</summary>
    void Complete(StepBatch batch);
    /// <summary>Steps queued and not yet completed.</summary>
    int PendingSteps { get; }
    /// <summary>Rows a queued step takes at most (the device model's MaxBatch).</summary>
    int MaxPipelinedRows { get; }
}
