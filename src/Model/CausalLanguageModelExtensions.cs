using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model;

/// <summary>
/// Single-sequence and fixed-batch conveniences over <see cref="ICausalLanguageModel.Step"/>, for tests, tools and
/// simple callers (each call builds its own <see cref="StepBatch"/>; a serving loop keeps one and calls Step itself).
/// Long inputs are split into steps of at most <see cref="ICausalLanguageModel.MaxStepRows"/> rows.
/// </summary>
public static class CausalLanguageModelExtensions
{
    /// <summary>Tokens already in the sequence's KV cache.</summary>
    public static int SequenceLength(this ICausalLanguageModel model, int sequence) => model.Kv.Length(sequence);

    /// <summary>Empties a sequence's KV cache (its pages are released).</summary>
    public static void ResetSequence(this ICausalLanguageModel model, int sequence) => model.Kv.Reset(sequence);

    /// <summary>Keeps the first <paramref name="length"/> tokens of a sequence's KV cache and drops the rest.</summary>
    public static void TruncateSequence(this ICausalLanguageModel model, int sequence, int length) => model.Kv.Truncate(sequence, length);

    /// <summary>Appends <paramref name="tokens"/> to a sequence and writes the logits of the last one into <paramref name="lastLogits"/>.</summary>
    public static void Forward(this ICausalLanguageModel model, int sequence, ReadOnlySpan<int> tokens, Span<float> lastLogits)
    {
        if (lastLogits.Length != model.VocabSize) throw new ArgumentException($"lastLogits has {lastLogits.Length} elements, expected vocab size {model.VocabSize}", nameof(lastLogits));
        var batch = Run(model, sequence, tokens, StepOutput.Logits, default);
        batch.Logits(batch.Count - 1).CopyTo(lastLogits);
    }

    /// <summary>Appends <paramref name="tokens"/> and writes the logits of every one: <paramref name="logits"/> is [tokens, V].</summary>
    public static void ForwardAllLogits(this ICausalLanguageModel model, int sequence, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        int V = model.VocabSize;
        if (logits.Length != (long)tokens.Length * V) throw new ArgumentException($"logits has {logits.Length} elements, expected {tokens.Length} x {V}", nameof(logits));
        if (tokens.IsEmpty) throw new ArgumentException("no tokens to forward", nameof(tokens));
        int chunk = Math.Min(model.MaxStepRows, model.MaxOutputRows);
        var batch = new StepBatch(chunk);
        for (int start = 0; start < tokens.Length; start += chunk)
        {
            int n = Math.Min(chunk, tokens.Length - start);
            batch.Clear();
            int pos = model.Kv.Length(sequence);
            for (int i = 0; i < n; i++) batch.Add(sequence, tokens[start + i], pos + i, StepOutput.Logits);
            model.Step(batch);
            for (int i = 0; i < n; i++) batch.Logits(i).CopyTo(logits.Slice((start + i) * V, V));
        }
    }

    public static float[] ForwardAllLogits(this ICausalLanguageModel model, int sequence, ReadOnlySpan<int> tokens)
    {
        var logits = new float[(long)tokens.Length * model.VocabSize];
        model.ForwardAllLogits(sequence, tokens, logits);
        return logits;
    }

    /// <summary>Appends <paramref name="tokens"/> and returns the next token, sampled on the model's backend with <paramref name="settings"/>.</summary>
    public static int ForwardSampled(this ICausalLanguageModel model, int sequence, ReadOnlySpan<int> tokens, in SamplingSettings settings)
    {
        var batch = Run(model, sequence, tokens, StepOutput.Sample, settings);
        return batch.SampledToken(batch.Count - 1);
    }

    /// <summary>Appends <paramref name="tokens"/> and returns the argmax of the next-token logits (computed on the backend).</summary>
    public static int ForwardGreedy(this ICausalLanguageModel model, int sequence, ReadOnlySpan<int> tokens) =>
        model.ForwardSampled(sequence, tokens, new SamplingSettings(Temperature: 0f));

    /// <summary>One decode step of several sequences: token i appended to sequence i; <paramref name="logits"/> is [count, V].</summary>
    public static void DecodeBatch(this ICausalLanguageModel model, ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        int V = model.VocabSize;
        if (logits.Length != (long)sequences.Length * V) throw new ArgumentException($"logits has {logits.Length} elements, expected {sequences.Length} x {V}", nameof(logits));
        var batch = DecodeRows(model, sequences, tokens, StepOutput.Logits, [default]);
        model.Step(batch);
        for (int i = 0; i < sequences.Length; i++) batch.Logits(i).CopyTo(logits.Slice(i * V, V));
    }

    /// <summary>One decode step of several sequences with greedy sampling on the backend: only the ids come back.</summary>
    public static void DecodeBatchGreedy(this ICausalLanguageModel model, ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, Span<int> nextTokens) =>
        model.DecodeBatchSampled(sequences, tokens, [new SamplingSettings(Temperature: 0f)], nextTokens);

    /// <summary>One decode step of several sequences, every row sampled with <paramref name="settings"/>.</summary>
    public static void DecodeBatchSampled(this ICausalLanguageModel model, ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens,
        in SamplingSettings settings, Span<int> nextTokens) =>
        model.DecodeBatchSampled(sequences, tokens, new ReadOnlySpan<SamplingSettings>(in settings), nextTokens);

    /// <summary>
    /// One decode step of several sequences, row i sampled with <paramref name="settings"/>[i] (one element: the same
    /// settings for every row). A row's random number depends on its seed and its new token's position only.
    /// </summary>
    public static void DecodeBatchSampled(this ICausalLanguageModel model, ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens,
        ReadOnlySpan<SamplingSettings> settings, Span<int> nextTokens)
    {
        if (nextTokens.Length != sequences.Length) throw new ArgumentException($"nextTokens has {nextTokens.Length} elements, expected {sequences.Length}", nameof(nextTokens));
        if (settings.Length != 1 && settings.Length != sequences.Length)
            throw new ArgumentException($"{settings.Length} sampling settings for {sequences.Length} sequences: give one for all or one per sequence", nameof(settings));
        var batch = DecodeRows(model, sequences, tokens, StepOutput.Sample, settings);
        model.Step(batch);
        for (int i = 0; i < sequences.Length; i++) nextTokens[i] = batch.SampledToken(i);
    }

    /// <summary>
    /// Appends <paramref name="prompt"/> to a sequence and generates up to <c>generated.Length</c> tokens after it, each
    /// sampled with <paramref name="settings"/> from the logits after the one before; stops early after a token for
    /// which <paramref name="stop"/> says true (that token included). Returns how many tokens it wrote. The sequence then
    /// holds the prompt and every generated token but the last, which the next call may pass as its prompt. On a
    /// pipelined model (<see cref="IPipelinedModel"/>) each decode step is queued before the host reads the token of the
    /// step before it (a fed token), so the GPU does not wait for the host between tokens; the step queued past a stop is
    /// discarded and the sequence truncated. The tokens are those of one <see cref="ForwardSampled"/> call per token: a
    /// row's draw depends on its seed and position only.
    /// </summary>
    public static int Generate(this ICausalLanguageModel model, int sequence, ReadOnlySpan<int> prompt, in SamplingSettings settings, Span<int> generated,
        Func<int, bool>? stop = null)
    {
        if (generated.IsEmpty) throw new ArgumentException("no room for a generated token", nameof(generated));
        long end = (long)model.Kv.Length(sequence) + prompt.Length + generated.Length - 1;
        if (end > model.ContextLength)
            throw new ArgumentException($"sequence {sequence} would hold {end} tokens after the prompt and {generated.Length} generated tokens, more than the context length {model.ContextLength}", nameof(generated));
        int token = model.ForwardSampled(sequence, prompt, settings);
        generated[0] = token;
        int count = 1;
        if (stop?.Invoke(token) == true || generated.Length == 1) return count;
        if (model is not IPipelinedModel pipe)
        {
            while (count < generated.Length)
            {
                token = model.ForwardSampled(sequence, [token], settings);
                generated[count++] = token;
                if (stop?.Invoke(token) == true) break;
            }
            return count;
        }
        // Step k takes token k - 1 and samples token k. Steps k and k + 1 are queued before token k is read; two batches
        // alternate (step k + 1 reuses step k - 1's, completed by then), so the loop allocates nothing per token.
        StepBatch[] ring = [new StepBatch(1), new StepBatch(1)];
        var queued = new Queue<StepBatch>(2);
        int start = model.Kv.Length(sequence);   // the prompt; the steps append token 0, 1, ...
        try
        {
            Enqueue(pipe, ring[1], queued, sequence, token, settings);
            for (int k = 1; k < generated.Length; k++)
            {
                if (k + 1 < generated.Length) Enqueue(pipe, ring[(k + 1) & 1], queued, sequence, StepBatch.FedToken(0), settings);
                var b = queued.Dequeue();
                pipe.Complete(b);
                token = b.SampledToken(0);
                generated[count++] = token;
                if (stop?.Invoke(token) == true) break;
            }
        }
        finally
        {
            // a step queued past the stop (or past an error) still runs: wait for it, then forget its position
            while (pipe.PendingSteps > 0 && queued.Count > 0) pipe.Complete(queued.Dequeue());
            if (model.Kv.Length(sequence) > start + count - 1) model.Kv.Truncate(sequence, start + count - 1);
        }
        return count;
    }

    static void Enqueue(IPipelinedModel model, StepBatch batch, Queue<StepBatch> queued, int sequence, int token, in SamplingSettings settings)
    {
        batch.Clear();
        batch.Add(sequence, token, model.Kv.Length(sequence), StepOutput.Sample, settings);
        model.Enqueue(batch);
        queued.Enqueue(batch);
    }

    /// <summary>One row per sequence at its next position; row i takes settings[i] (or settings[0] for all).</summary>
    private static StepBatch DecodeRows(ICausalLanguageModel model, ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, StepOutput output, ReadOnlySpan<SamplingSettings> settings)
    {
        if (tokens.Length != sequences.Length) throw new ArgumentException($"{tokens.Length} tokens for {sequences.Length} sequences", nameof(tokens));
        var batch = new StepBatch(sequences.Length);
        for (int i = 0; i < sequences.Length; i++)
            batch.Add(sequences[i], tokens[i], model.Kv.Length(sequences[i]), output, settings[settings.Length == 1 ? 0 : i]);
        return batch;
    }

    /// <summary>Runs <paramref name="tokens"/> of one sequence in steps of at most MaxStepRows; the last row gets <paramref name="lastOutput"/>. Returns the last step's batch.</summary>
    private static StepBatch Run(ICausalLanguageModel model, int sequence, ReadOnlySpan<int> tokens, StepOutput lastOutput, in SamplingSettings settings)
    {
        if (tokens.IsEmpty) throw new ArgumentException("no tokens to forward", nameof(tokens));
        if ((long)model.Kv.Length(sequence) + tokens.Length > model.ContextLength)
            throw new ArgumentException($"sequence {sequence} would hold {model.Kv.Length(sequence) + tokens.Length} tokens, more than the context length {model.ContextLength}", nameof(tokens));
        int chunk = model.MaxStepRows;
        var batch = new StepBatch(Math.Min(chunk, tokens.Length));
        for (int start = 0; start < tokens.Length; start += chunk)
        {
            int n = Math.Min(chunk, tokens.Length - start);
            bool last = start + n == tokens.Length;
            batch.Clear();
            batch.AddTokens(sequence, tokens.Slice(start, n), model.Kv.Length(sequence), last ? lastOutput : StepOutput.None, settings);
            model.Step(batch);
        }
        return batch;
    }
}
