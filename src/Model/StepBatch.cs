using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model;

/// <summary>What one row of a step returns.</summary>
public enum StepOutput : byte
{
    /// <summary>Nothing (a prompt token whose successor is known).</summary>
    None,
    /// <summary>The logits of the next token (float32 [vocab]).</summary>
    Logits,
    /// <summary>The next token, sampled on the model's backend with the row's <see cref="SamplingSettings"/> (greedy: argmax).</summary>
    Sample,
}

/// <summary>A run of consecutive rows of one sequence in a <see cref="StepBatch"/>: positions FirstPosition .. FirstPosition + Rows - 1.</summary>
public readonly record struct StepSegment(int Sequence, int FirstRow, int Rows, int FirstPosition);

/// <summary>
/// The input and output of one forward step (docs/architecture.md, "The step contract"): rows of (sequence, token,
/// position, output). A step mixes prefill chunks of several sequences and single decode rows: the rows of a sequence
/// are consecutive in the batch with consecutive positions starting at the sequence's current length
/// (<see cref="KvPageTable.Length"/>), and a sequence appears in one run only. After
/// <see cref="ICausalLanguageModel.Step"/> the sequences have advanced by their rows and each output row has its result:
/// <see cref="SampledToken"/> for <see cref="StepOutput.Sample"/> rows, <see cref="Logits"/> for
/// <see cref="StepOutput.Logits"/> rows. A sampled row draws with Philox(seed, counter = its position + 1), so a
/// sequence draws the same token in any batch as alone. Reuse one batch across steps (<see cref="Clear"/>): it grows
/// to the largest step and then allocates nothing.
/// </summary>
public sealed class StepBatch
{
    private int[] _sequences, _tokens, _positions, _outputIndex;
    private StepOutput[] _outputs;
    private SamplingSettings[] _sampling;
    private int[] _outputRows = [], _sampled = [], _logitsIndex = [];
    private PenaltySettings[] _penalties;
    private int[] _penaltyStart, _penaltyLength;
    private int[] _penaltyTokens = [], _penaltyCounts = [];
    private float[] _logits = [];
    private readonly List<StepSegment> _segments = [];
    private int[] _seen = [];        // per sequence id: the Prepare stamp that last saw it
    private int _stamp;
    private int _vocab;

    public StepBatch(int capacity = 16)
    {
        capacity = Math.Max(1, capacity);
        _sequences = new int[capacity]; _tokens = new int[capacity]; _positions = new int[capacity]; _outputIndex = new int[capacity];
        _outputs = new StepOutput[capacity]; _sampling = new SamplingSettings[capacity];
        _penalties = new PenaltySettings[capacity]; _penaltyStart = new int[capacity]; _penaltyLength = new int[capacity];
    }

    /// <summary>Rows in the batch.</summary>
    public int Count { get; private set; }
    /// <summary>Rows with an output (<see cref="StepOutput.Logits"/> or <see cref="StepOutput.Sample"/>).</summary>
    public int OutputCount { get; private set; }
    /// <summary>Rows with <see cref="StepOutput.Logits"/>.</summary>
    public int LogitsCount { get; private set; }
    /// <summary>Rows with <see cref="StepOutput.Sample"/>.</summary>
    public int SampleCount => OutputCount - LogitsCount;

    /// <summary>(token, count) entries of every row's penalties (<see cref="SetPenalties"/>).</summary>
    public int PenaltyEntries { get; private set; }
    /// <summary>Rows with penalties.</summary>
    public int PenaltyRows { get; private set; }

    public void Clear()
    {
        Count = 0; OutputCount = 0; LogitsCount = 0; PenaltyEntries = 0; PenaltyRows = 0;
        _segments.Clear();
    }

    /// <summary>Appends one row; returns its index.</summary>
    public int Add(int sequence, int token, int position, StepOutput output = StepOutput.None, in SamplingSettings sampling = default)
    {
        if (Count == _sequences.Length) Grow(Count * 2);
        int r = Count++;
        _sequences[r] = sequence; _tokens[r] = token; _positions[r] = position; _outputs[r] = output;
        _sampling[r] = output == StepOutput.Sample ? sampling : default;
        _penalties[r] = default; _penaltyLength[r] = 0;
        _outputIndex[r] = output == StepOutput.None ? -1 : OutputCount++;
        if (output == StepOutput.Logits) LogitsCount++;
        return r;
    }

    /// <summary>Appends <paramref name="tokens"/> of one sequence at positions firstPosition.. (a prefill chunk); only the last row gets <paramref name="lastOutput"/>.</summary>
    public void AddTokens(int sequence, ReadOnlySpan<int> tokens, int firstPosition, StepOutput lastOutput = StepOutput.None, in SamplingSettings sampling = default)
    {
        for (int i = 0; i < tokens.Length; i++)
            Add(sequence, tokens[i], firstPosition + i, i == tokens.Length - 1 ? lastOutput : StepOutput.None, sampling);
    }

    /// <summary>
    /// Gives a <see cref="StepOutput.Sample"/> row penalties applied to its logits before sampling (kernels/penalties.cu,
    /// Sampling/Penalties.cs): <paramref name="tokens"/> are the distinct ids of the sequence's prompt and answer (the
    /// repetition penalty's set; the answer's alone when repetition is off), <paramref name="counts"/> their occurrences
    /// in the answer. Copied into the batch (which grows once, then allocates nothing).
    /// </summary>
    public void SetPenalties(int row, in PenaltySettings settings, ReadOnlySpan<int> tokens, ReadOnlySpan<int> counts)
    {
        if (Output(row) != StepOutput.Sample) throw new InvalidOperationException($"row {row} asks for {Output(row)}: penalties apply to sampled rows (a logits row returns the model's logits)");
        if (counts.Length != tokens.Length) throw new ArgumentException($"{counts.Length} counts for {tokens.Length} penalty tokens", nameof(counts));
        if (_penaltyLength[row] > 0) throw new InvalidOperationException($"row {row} already has penalties");
        if (settings.IsNone || tokens.IsEmpty) return;
        int need = PenaltyEntries + tokens.Length;
        if (_penaltyTokens.Length < need)
        {
            int size = Math.Max(need, _penaltyTokens.Length * 2);
            Array.Resize(ref _penaltyTokens, size);
            Array.Resize(ref _penaltyCounts, size);
        }
        tokens.CopyTo(_penaltyTokens.AsSpan(PenaltyEntries));
        counts.CopyTo(_penaltyCounts.AsSpan(PenaltyEntries));
        _penalties[row] = settings;
        _penaltyStart[row] = PenaltyEntries;
        _penaltyLength[row] = tokens.Length;
        PenaltyEntries = need;
        PenaltyRows++;
    }

    /// <summary>The row's penalties (default: none).</summary>
    public ref readonly PenaltySettings Penalties(int row) => ref _penalties[CheckRow(row)];
    /// <summary>The row's penalty tokens (distinct ids) and their answer counts.</summary>
    public ReadOnlySpan<int> PenaltyTokens(int row) => _penaltyTokens.AsSpan(_penaltyStart[CheckRow(row)], _penaltyLength[row]);
    public ReadOnlySpan<int> PenaltyCounts(int row) => _penaltyCounts.AsSpan(_penaltyStart[CheckRow(row)], _penaltyLength[row]);
    /// <summary>Offset of the row's entries among all <see cref="PenaltyEntries"/>.</summary>
    public int PenaltyStart(int row) => _penaltyStart[CheckRow(row)];

    public int Sequence(int row) => _sequences[CheckRow(row)];
    public int Token(int row) => _tokens[CheckRow(row)];
    public int Position(int row) => _positions[CheckRow(row)];
    public StepOutput Output(int row) => _outputs[CheckRow(row)];
    public ref readonly SamplingSettings Sampling(int row) => ref _sampling[CheckRow(row)];
    /// <summary>Index of the row among the output rows, in batch order (-1 for a row without output).</summary>
    public int OutputIndex(int row) => _outputIndex[CheckRow(row)];

    public ReadOnlySpan<int> Sequences => _sequences.AsSpan(0, Count);
    public ReadOnlySpan<int> Tokens => _tokens.AsSpan(0, Count);
    public ReadOnlySpan<int> Positions => _positions.AsSpan(0, Count);
    /// <summary>The rows with an output, in batch order (valid after <see cref="Prepare"/>).</summary>
    public ReadOnlySpan<int> OutputRows => _outputRows.AsSpan(0, OutputCount);
    /// <summary>Runs of consecutive rows of one sequence (valid after <see cref="Prepare"/>).</summary>
    public IReadOnlyList<StepSegment> Segments => _segments;

    // ---------------- results ----------------

    /// <summary>
    /// A row token that stands for the id the previous step sampled for its output row <paramref name="outputRow"/>: a
    /// pipelined step (DeviceModel.Enqueue) is queued before the host has read that id, and the device takes it itself.
    /// </summary>
    public static int FedToken(int outputRow) => outputRow >= 0 ? -1 - outputRow : throw new ArgumentOutOfRangeException(nameof(outputRow), outputRow, "an output row is >= 0");

    /// <summary>The token sampled for a <see cref="StepOutput.Sample"/> row (after the step).</summary>
    public int SampledToken(int row)
    {
        if (Output(row) != StepOutput.Sample) throw new InvalidOperationException($"row {row} asked for {Output(row)}, not a sampled token");
        return _sampled[_outputIndex[row]];
    }

    /// <summary>The next-token logits of a <see cref="StepOutput.Logits"/> row (after the step; valid until the next step).</summary>
    public ReadOnlySpan<float> Logits(int row) => LogitsBuffer(row);

    /// <summary>For backends: where the logits of a <see cref="StepOutput.Logits"/> row go.</summary>
    public Span<float> LogitsBuffer(int row)
    {
        if (Output(row) != StepOutput.Logits) throw new InvalidOperationException($"row {row} asked for {Output(row)}, not logits");
        return _logits.AsSpan(_logitsIndex[_outputIndex[row]] * _vocab, _vocab);
    }

    /// <summary>For backends: the sampled token of output row <paramref name="outputIndex"/>.</summary>
    public void SetSampled(int outputIndex, int token) => _sampled[outputIndex] = token;

    // ---------------- validation (every backend calls it first) ----------------

    /// <summary>
    /// Checks the batch against a model and its page table and computes <see cref="Segments"/> and
    /// <see cref="OutputRows"/>; sizes the result buffers. Throws (and changes nothing) on any violation: unknown
    /// sequence, token outside the vocabulary, positions that do not continue the sequence, a sequence in two runs, a
    /// step past the context, more rows or outputs than the model takes, invalid sampling settings, or too few free KV
    /// pages (<see cref="KvCacheFullException"/>).
    /// </summary>
    /// <remarks>
    /// <paramref name="fedOutputs"/>: a pipelined step (DeviceModel.Enqueue) may take fed tokens (<see cref="FedToken"/>)
    /// of the previous step's first <paramref name="fedOutputs"/> output rows; other steps take none.
    /// </remarks>
    public void Prepare(int vocabSize, int contextLength, int maxRows, int maxOutputRows, KvPageTable kv, int maxPenaltyEntries = int.MaxValue, int fedOutputs = 0)
    {
        if (Count == 0) throw new ArgumentException("the step has no rows");
        if (PenaltyEntries > maxPenaltyEntries) throw new ArgumentException($"the step has {PenaltyEntries} penalty entries; the model takes at most {maxPenaltyEntries} per step");
        if (Count > maxRows) throw new ArgumentException($"the step has {Count} rows; the model takes at most {maxRows} per step");
        if (OutputCount > maxOutputRows) throw new ArgumentException($"the step asks for {OutputCount} outputs; the model returns at most {maxOutputRows} per step");
        if (_seen.Length < kv.MaxSequences) _seen = new int[kv.MaxSequences];
        if (++_stamp == int.MaxValue) { Array.Clear(_seen); _stamp = 1; }
        _segments.Clear();
        long pagesNeeded = 0;
        for (int r = 0; r < Count; r++)
        {
            int s = _sequences[r];
            if ((uint)s >= (uint)kv.MaxSequences) throw new ArgumentOutOfRangeException(nameof(Sequences), s, $"row {r}: sequence id must be in [0, {kv.MaxSequences})");
            if (_tokens[r] < 0 && -1 - _tokens[r] < fedOutputs) { }   // a fed token: the device takes the previous step's id
            else if (_tokens[r] < 0 && fedOutputs > 0)
                throw new ArgumentException($"row {r}: fed token of output row {-1 - _tokens[r]}, but the previous step sampled {fedOutputs} output row(s)");
            else if ((uint)_tokens[r] >= (uint)vocabSize)
                throw new ArgumentException($"row {r}: token id {_tokens[r]} is outside the vocabulary [0, {vocabSize})" +
                    (_tokens[r] < 0 ? " (a fed token, StepBatch.FedToken, is taken only by a pipelined step after a step with sampled outputs)" : ""));
            if (_outputs[r] == StepOutput.Sample)
            {
                try { SamplingLaunchers.Validate(_sampling[r]); if (_penaltyLength[r] > 0) _penalties[r].Validate(); }
                catch (ArgumentException e) { throw new ArgumentException($"row {r} (sequence {s}): {e.Message}", e); }
            }
            if (r > 0 && _sequences[r - 1] == s)
            {
                if (_positions[r] != _positions[r - 1] + 1)
                    throw new ArgumentException($"row {r}: sequence {s} position {_positions[r]} does not follow {_positions[r - 1]}");
                var last = _segments[^1];
                _segments[^1] = last with { Rows = last.Rows + 1 };
                continue;
            }
            if (_seen[s] == _stamp) throw new ArgumentException($"row {r}: sequence {s} appears in two separate runs of rows; its rows must be consecutive");
            _seen[s] = _stamp;
            if (_positions[r] != kv.Length(s))
                throw new ArgumentException($"row {r}: sequence {s} holds {kv.Length(s)} tokens, so its next position is {kv.Length(s)}, not {_positions[r]}");
            _segments.Add(new StepSegment(s, r, 1, _positions[r]));
        }
        foreach (var g in _segments)
        {
            long end = (long)g.FirstPosition + g.Rows;
            if (end > contextLength)
                throw new ArgumentException($"sequence {g.Sequence} would hold {end} tokens, more than the context length {contextLength}");
            pagesNeeded += kv.PagesNeeded(g.Sequence, g.Rows);
        }
        if (pagesNeeded > kv.FreePages)
            throw new KvCacheFullException($"KV cache full: the step needs {pagesNeeded} more pages of {kv.PageSize} tokens, {kv.FreePages} are free (of {kv.Pages - 1})");

        if (_outputRows.Length < OutputCount) { _outputRows = new int[_sequences.Length]; _sampled = new int[_sequences.Length]; _logitsIndex = new int[_sequences.Length]; }
        int o = 0, l = 0;
        for (int r = 0; r < Count; r++)
        {
            if (_outputs[r] == StepOutput.None) continue;
            _outputRows[o] = r;
            _sampled[o] = -1;
            _logitsIndex[o] = _outputs[r] == StepOutput.Logits ? l++ : -1;
            o++;
        }
        _vocab = vocabSize;
        long need = (long)LogitsCount * vocabSize;
        if (_logits.Length < need) _logits = new float[need];
    }

    /// <summary>For backends: reserves the pages of every segment (after <see cref="Prepare"/>).</summary>
    public void ReservePages(KvPageTable kv)
    {
        foreach (var g in _segments) kv.Reserve(g.Sequence, g.Rows);
    }

    /// <summary>For backends: advances every segment's sequence by its rows (after the step's work is queued).</summary>
    public void AdvanceSequences(KvPageTable kv)
    {
        foreach (var g in _segments) kv.Advance(g.Sequence, g.Rows);
    }

    private int CheckRow(int row) => (uint)row < (uint)Count ? row : throw new ArgumentOutOfRangeException(nameof(row), row, $"row must be in [0, {Count})");

    private void Grow(int capacity)
    {
        Array.Resize(ref _sequences, capacity); Array.Resize(ref _tokens, capacity); Array.Resize(ref _positions, capacity);
        Array.Resize(ref _outputIndex, capacity); Array.Resize(ref _outputs, capacity); Array.Resize(ref _sampling, capacity);
        Array.Resize(ref _penalties, capacity); Array.Resize(ref _penaltyStart, capacity); Array.Resize(ref _penaltyLength, capacity);
    }
}
