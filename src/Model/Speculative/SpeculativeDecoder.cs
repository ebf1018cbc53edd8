using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Speculative;

/// <summary>A speculative decoding setting that cannot work: another vocabulary, a draft length out of range (the message says which).</summary>
public sealed class SpeculativeDecodingException(string message, ErrorKind kind = ErrorKind.InvalidArgument) : Qwen3CudaException(message)
{
    public override ErrorKind Kind => kind;
}

/// <summary>
/// Changes a verification row's logits in place before acceptance (penalties): <paramref name="history"/> is the sequence
/// before the round, <paramref name="proposed"/> the proposals before this row (d1..dj for row j).
/// </summary>
public delegate void LogitsProcessor(Span<float> logits, IReadOnlyList<int> history, ReadOnlySpan<int> proposed);

/// <summary>Counts of one request's speculation (or of several, <see cref="Add"/>).</summary>
public sealed class SpeculationStats
{
    /// <summary>Verification steps.</summary>
    public long Rounds { get; private set; }
    /// <summary>Tokens the drafter proposed.</summary>
    public long DraftedTokens { get; private set; }
    /// <summary>Proposed tokens the target accepted.</summary>
    public long AcceptedTokens { get; private set; }
    /// <summary>Tokens emitted: the accepted ones plus one per round (the target's correction or bonus token).</summary>
    public long EmittedTokens => AcceptedTokens + Rounds;
    /// <summary>Accepted / proposed (0 when nothing was proposed).</summary>
    public double AcceptanceRate => DraftedTokens > 0 ? (double)AcceptedTokens / DraftedTokens : 0;
    /// <summary>Accepted proposals per round (the tokens a round emits are one more).</summary>
    public double MeanAcceptedLength => Rounds > 0 ? (double)AcceptedTokens / Rounds : 0;

    public void Record(int drafted, int accepted)
    {
        Rounds++;
        DraftedTokens += drafted;
        AcceptedTokens += accepted;
    }

    public void Add(SpeculationStats other)
    {
        Rounds += other.Rounds;
        DraftedTokens += other.DraftedTokens;
        AcceptedTokens += other.AcceptedTokens;
    }

    public override string ToString() => string.Create(System.Globalization.CultureInfo.InvariantCulture,
        $"speculation: {Rounds} rounds, {AcceptedTokens}/{DraftedTokens} drafted tokens accepted ({AcceptanceRate:P1}), mean accepted length {MeanAcceptedLength:F2}, {(Rounds > 0 ? (double)EmittedTokens / Rounds : 0):F2} tokens per target step");
}

/// <summary>
/// Speculative decoding of one sequence of a target model (docs/speculative.md): a drafter proposes k tokens, ONE target
/// step verifies them (k + 1 rows of the sequence: the last emitted token and the k proposals, causal among themselves
/// over the cached prefix, an output on every row), the longest acceptable prefix is kept and the target's KV cache is
/// truncated back past it (rejected positions' pages return to the pool). Each round emits the accepted tokens plus one
/// token from the target (the correction at the first rejection, or a bonus after k acceptances).
/// <list type="bullet">
/// <item>Greedy: a proposal is accepted while it equals the target's argmax at its row, so the output is token for token
/// the target's own greedy output; the rows sample greedily on the target's backend (only ids come back).</item>
/// <item>Sampling: the standard rejection scheme: with p and q the target's and the draft's distributions after the same
/// warpers (temperature, top-k, top-p, min-p: <see cref="CounterSampler.Probabilities"/>), proposal x is accepted with
/// probability min(1, p(x) / q(x)); at the first rejection the token is drawn from max(0, p - q) renormalised; after k
/// acceptances a bonus token is drawn from p. The output is distributed exactly as sampling the target alone. The
/// uniforms are Philox(seed, position, stream) on the host, so a seeded request is reproducible.</item>
/// </list>
/// Usable per request inside a serving loop: the state is the drafter's (its own KV sequence) and this object's scratch;
/// the target's sequence must hold every history token but the last when <see cref="Step"/> is called.
/// </summary>
public sealed class SpeculativeDecoder : IDisposable
{
    /// <summary>The largest number of draft tokens per round.</summary>
    public const int MaxDraftTokens = 16;
    internal const uint AcceptStream = 1, ResidualStream = 2, DraftStream = 3;
    private static readonly SamplingSettings Greedy = new(Temperature: 0f);

    private readonly ICausalLanguageModel _target;
    private readonly bool _ownsDrafter;
    private readonly StepBatch _batch;
    private readonly CounterSampler _sampler = new();
    private readonly int[] _draft;
    private double[] _q = [], _p = [];
    private float[] _rowLogits = [];
    private Round? _round;
    private StepBatch? _verify;   // the batch Accept reads
    private int _firstRow;

    /// <param name="target">the model whose output this produces</param>
    /// <param name="sequence">the target's sequence id</param>
    /// <param name="drafter">proposes the tokens (its vocabulary must be the target's)</param>
    /// <param name="numDraftTokens">k, proposals per round: 1 .. <see cref="MaxDraftLimit"/></param>
    /// <param name="ownsDrafter">dispose the drafter with this decoder</param>
    public SpeculativeDecoder(ICausalLanguageModel target, int sequence, IDrafter drafter, int numDraftTokens, bool ownsDrafter = false)
    {
        ArgumentNullException.ThrowIfNull(target);
        ArgumentNullException.ThrowIfNull(drafter);
        int limit = MaxDraftLimit(target);
        if (numDraftTokens < 1 || numDraftTokens > limit)
            throw new SpeculativeDecodingException($"--num-draft-tokens {numDraftTokens} is out of range: give 1 to {limit} (at most {MaxDraftTokens}, and one verification step of k + 1 rows must fit the target's step of {Math.Min(target.MaxStepRows, target.MaxOutputRows)} output rows)");
        CheckVocabulary(target.VocabSize, drafter.VocabSize);
        if ((uint)sequence >= (uint)target.MaxSequences)
            throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"the target holds sequences 0..{target.MaxSequences - 1}");
        _target = target;
        Sequence = sequence;
        Drafter = drafter;
        NumDraftTokens = numDraftTokens;
        _ownsDrafter = ownsDrafter;
        _batch = new StepBatch(numDraftTokens + 1);
        _draft = new int[numDraftTokens];
    }

    public int Sequence { get; }
    public IDrafter Drafter { get; }
    public int NumDraftTokens { get; }
    public SpeculationStats Stats { get; } = new();
    /// <summary>
    /// Applied to the target's logits of every verification row (presence / repetition penalties). Only the target's side
    /// needs it for the output to be right: the acceptance rule is exact for whatever distribution the draft drew from.
    /// </summary>
    public LogitsProcessor? Processor { get; init; }

    /// <summary>The largest k a target takes: <see cref="MaxDraftTokens"/>, and k + 1 rows with outputs in one step.</summary>
    public static int MaxDraftLimit(ICausalLanguageModel target) => Math.Min(MaxDraftTokens, Math.Min(target.MaxStepRows, target.MaxOutputRows) - 1);

    /// <summary>Refuses a draft whose vocabulary differs from the target's (token ids would mean other text).</summary>
    public static void CheckVocabulary(int targetVocab, int? draftVocab)
    {
        if (draftVocab is int v && v != targetVocab)
            throw new SpeculativeDecodingException($"the draft model's vocabulary ({v} tokens) differs from the target's ({targetVocab}): a draft must share the target's tokenizer and vocab_size", ErrorKind.InvalidInput);
    }

    /// <summary>
    /// One round: proposes, verifies in one target step and appends the emitted tokens (1 .. k + 1) to
    /// <paramref name="emitted"/>; returns how many. <paramref name="history"/> is the sequence so far (prompt and
    /// generated tokens; the target's KV cache holds all but its last token, and holds all but the last emitted token
    /// afterwards). <paramref name="maxNewTokens"/> caps the tokens emitted (the draft is shortened, never the output cut).
    /// A serving loop that batches several sequences calls the three phases itself: <see cref="Propose"/>,
    /// <see cref="AddVerificationRows"/> into its shared batch, its Step, then <see cref="Accept"/>.
    /// </summary>
    public int Step(IReadOnlyList<int> history, in SamplingSettings sampling, int maxNewTokens, List<int> emitted)
    {
        Propose(history, sampling, maxNewTokens);
        _batch.Clear();
        AddVerificationRows(_batch, history);
        _target.Step(_batch);
        return Accept(_batch, history, emitted);
    }

    /// <summary>
    /// Phase 1: the drafter's proposals for the sequence <paramref name="history"/> (at most k, fewer near the context end
    /// or the token budget <paramref name="maxNewTokens"/>); returns how many. Checks the target's cache holds all of the
    /// history but its last token.
    /// </summary>
    public int Propose(IReadOnlyList<int> history, in SamplingSettings sampling, int maxNewTokens)
    {
        int L = history.Count;
        if (L == 0) throw new ArgumentException("the history is empty", nameof(history));
        if (maxNewTokens < 1) throw new ArgumentOutOfRangeException(nameof(maxNewTokens), maxNewTokens, "at least one token");
        if (_target.Kv.Length(Sequence) != L - 1)
            throw new InvalidOperationException($"the target's sequence {Sequence} holds {_target.Kv.Length(Sequence)} tokens; a speculative step needs all {L - 1} history tokens but the last");
        SamplingLaunchers.Validate(sampling);
        bool sample = !sampling.IsGreedy;
        int V = _target.VocabSize;
        int k = Math.Max(0, Math.Min(Math.Min(NumDraftTokens, maxNewTokens - 1), _target.ContextLength - L));
        if (sample && _p.Length < V) { _q = new double[(long)NumDraftTokens * V]; _p = new double[V]; }   // once per decoder
        if (Processor is not null && _rowLogits.Length < V) _rowLogits = new float[V];
        int drafted = k > 0 ? Drafter.Propose(history, k, sampling, _draft.AsSpan(0, k), sample ? _q.AsSpan(0, k * V) : default, (ulong)L) : 0;
        if (drafted < 0 || drafted > k) throw new InvalidOperationException($"the drafter proposed {drafted} tokens, asked for at most {k}");
        for (int j = 0; j < drafted; j++)
            if ((uint)_draft[j] >= (uint)V) throw new InvalidOperationException($"the drafter proposed token id {_draft[j]}, outside the target's vocabulary [0, {V})");
        _round = new Round(L, drafted, sampling, -1);
        return drafted;
    }

    /// <summary>
    /// Phase 2: appends the verification rows (the history's last token and the proposals, consecutive, every row with an
    /// output: greedy without a processor samples the argmax on the backend, else the rows return logits) to
    /// <paramref name="batch"/>, which may hold other sequences' rows.
    /// </summary>
    public void AddVerificationRows(StepBatch batch, IReadOnlyList<int> history)
    {
        if (_round is not { } r || r.FirstRow >= 0) throw new InvalidOperationException("AddVerificationRows follows Propose, once per round");
        if (history.Count != r.Length) throw new ArgumentException($"the history has {history.Count} tokens; Propose saw {r.Length}", nameof(history));
        var output = !r.Sampling.IsGreedy || Processor is not null ? StepOutput.Logits : StepOutput.Sample;
        int first = batch.Add(Sequence, history[r.Length - 1], r.Length - 1, output, Greedy);
        for (int j = 0; j < r.Drafted; j++) batch.Add(Sequence, _draft[j], r.Length + j, output, Greedy);
        _round = r with { FirstRow = first };
    }

    /// <summary>
    /// Phase 3, after the target's step over <paramref name="batch"/>: the acceptance rule, the rollback of the rejected
    /// positions (<see cref="Runtime.Memory.KvPageTable.Truncate"/>), and the emitted tokens appended to <paramref name="emitted"/>;
    /// returns how many (1 .. proposals + 1).
    /// </summary>
    public int Accept(StepBatch batch, IReadOnlyList<int> history, List<int> emitted)
    {
        if (_round is not { FirstRow: >= 0 } r) throw new InvalidOperationException("Accept follows AddVerificationRows and the target's step");
        _round = null;
        _verify = batch;
        _firstRow = r.FirstRow;
        int accepted = 0, next;
        if (r.Sampling.IsGreedy)
        {
            while (accepted < r.Drafted && GreedyToken(history, accepted) == _draft[accepted]) accepted++;
            next = GreedyToken(history, accepted);
        }
        else next = AcceptSampled(history, r.Sampling, r.Length, r.Drafted, _target.VocabSize, ref accepted);
        _verify = null;

        _target.Kv.Truncate(Sequence, r.Length + accepted);   // keep the history and the accepted proposals
        for (int j = 0; j < accepted; j++) emitted.Add(_draft[j]);
        emitted.Add(next);
        Stats.Record(r.Drafted, accepted);
        return accepted + 1;
    }

    /// <summary>The round in progress: history length, proposals, settings, first verification row (-1: not added yet).</summary>
    private readonly record struct Round(int Length, int Drafted, SamplingSettings Sampling, int FirstRow);

    /// <summary>Verification row <paramref name="row"/>'s logits, through the processor when there is one.</summary>
    private ReadOnlySpan<float> RowLogits(IReadOnlyList<int> history, int row)
    {
        if (Processor is null) return _verify!.Logits(_firstRow + row);
        var l = _rowLogits.AsSpan(0, _target.VocabSize);
        _verify!.Logits(_firstRow + row).CopyTo(l);
        Processor(l, history, _draft.AsSpan(0, row));
        return l;
    }

    /// <summary>The greedy token of verification row <paramref name="row"/>.</summary>
    private int GreedyToken(IReadOnlyList<int> history, int row) =>
        _verify!.Output(_firstRow + row) == StepOutput.Sample ? _verify.SampledToken(_firstRow + row) : Sampler.ArgMax(RowLogits(history, row));

    /// <summary>The rejection scheme over the verification rows; returns the round's last token (correction or bonus).</summary>
    private int AcceptSampled(IReadOnlyList<int> history, in SamplingSettings s, int L, int drafted, int V, ref int accepted)
    {
        var p = _p.AsSpan(0, V);
        for (int j = 0; ; j++)
        {
            var logits = RowLogits(history, j);
            _sampler.Probabilities(logits, s, p);
            ulong position = (ulong)(L + j);
            if (j == drafted) return Draw(p, Uniform(s.Seed, position, ResidualStream));   // all accepted: the bonus token
            int x = _draft[j];
            var q = _q.AsSpan(j * V, V);
            double px = p[x], qx = q[x];
            if (qx > 0 && Uniform(s.Seed, position, AcceptStream) * qx < px) { accepted++; continue; }   // u < p/q
            // rejected: draw from max(0, p - q), renormalised (Draw normalises)
            double mass = 0;
            for (int i = 0; i < V; i++) { double r = p[i] - q[i]; p[i] = r > 0 ? r : 0; mass += p[i]; }
            if (mass <= 0) _sampler.Probabilities(logits, s, p);   // p == q up to rounding: p itself
            return Draw(p, Uniform(s.Seed, position, ResidualStream));
        }
    }

    /// <summary>A uniform in [0, 1) from Philox(seed, counter = position, stream) (32 bits).</summary>
    public static double Uniform(ulong seed, ulong position, uint stream) => CounterSampler.Philox(seed, position, stream) / 4294967296.0;

    /// <summary>The token whose cumulative weight first exceeds u x (total weight) (weights need not sum to 1; ties in order).</summary>
    public static int Draw(ReadOnlySpan<double> weights, double u)
    {
        double total = 0;
        foreach (double w in weights) total += w;
        double target = u * total, cum = 0;
        int last = -1;
        for (int i = 0; i < weights.Length; i++)
        {
            if (weights[i] <= 0) continue;
            cum += weights[i];
            last = i;
            if (cum > target) return i;
        }
        return last >= 0 ? last : throw new ArgumentException("the distribution has no mass", nameof(weights));
    }

    public void Dispose()
    {
        if (_ownsDrafter) Drafter.Dispose();
    }
}
