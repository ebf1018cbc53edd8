using Qwen3Cuda.Model.Config;

namespace Qwen3Cuda.Model.Reference;

/// <summary>
/// The CPU reference of Qwen3 / Qwen3-MoE (design/qwen3-moe-reference.md): fp32 math on the bf16
/// weights of a memory-mapped checkpoint, with the bf16 rounding points of transformers' bf16 forward.
/// Holds a KV cache per sequence (K after norm and RoPE, V raw, both bf16-exact floats) that grows on
/// demand up to <see cref="ContextLength"/>. Not thread-safe: one Forward at a time (each op is parallel inside).
/// </summary>
public sealed class ReferenceModel : ICausalLanguageModel
{
    readonly SequenceCache[] _sequences;
    readonly float[] _invFreq;
    readonly float _attentionScaling;

    public ModelWeights Weights { get; }
    public ModelConfig Config => Weights.Config;
    public int VocabSize => Config.VocabSize;
    public int ContextLength { get; }
    public int MaxSequences => _sequences.Length;
    /// <summary>When set, the next forwards record named intermediates into it (a copy each; meant for tests).</summary>
    public ReferenceTrace? Trace { get; set; }

    /// <summary>Opens config.json + safetensors in <paramref name="modelDir"/>. contextLength defaults to max_position_embeddings.</summary>
    public static ReferenceModel Load(string modelDir, int maxSequences = 1, int? contextLength = null)
    {
        var weights = ModelWeights.Load(modelDir);
        try { return new ReferenceModel(weights, maxSequences, contextLength); }
        catch { weights.Dispose(); throw; }
    }

    /// <summary>Takes ownership of <paramref name="weights"/>.</summary>
    public ReferenceModel(ModelWeights weights, int maxSequences = 1, int? contextLength = null)
    {
        var c = weights.Config;
        if (maxSequences < 1 || maxSequences > 4096) throw new ArgumentOutOfRangeException(nameof(maxSequences), maxSequences, "must be in [1, 4096]");
        int ctx = contextLength ?? c.MaxPositionEmbeddings;
        // Like the device model, any positive length runs (RoPE is defined at every position); past max_position_embeddings
        // (x the YaRN factor) the model was not trained, which the CLI warns about (CliOptions.ContextCheck).
        if (ctx < 1) throw new ArgumentOutOfRangeException(nameof(contextLength), ctx, $"context length {ctx} must be at least 1");
        Weights = weights;
        ContextLength = ctx;
        (_invFreq, _attentionScaling) = ReferenceOps.RopeParameters(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        _sequences = new SequenceCache[maxSequences];
        for (int i = 0; i < maxSequences; i++) _sequences[i] = new SequenceCache(c.NumHiddenLayers, c.KeyValueDim);
    }

    public int SequenceLength(int sequence) => Seq(sequence).Length;

    public void ResetSequence(int sequence) => Seq(sequence).Length = 0;

    public void TruncateSequence(int sequence, int length)
    {
        var seq = Seq(sequence);
        if (length < 0 || length > seq.Length)
            throw new ArgumentOutOfRangeException(nameof(length), length, $"sequence {sequence} holds {seq.Length} tokens; cannot keep {length}");
        seq.Length = length; // later positions are overwritten by the next Forward
    }

    /// <summary>
    /// A sequence's cache for one layer: keys (after k_norm and RoPE) and values, each [SequenceLength, nKV*D],
    /// bf16-exact floats. Valid until the next Forward or Reset of that sequence.
    /// </summary>
    public (ReadOnlyMemory<float> Keys, ReadOnlyMemory<float> Values) KvCache(int sequence, int layer)
    {
        var seq = Seq(sequence);
        if ((uint)layer >= (uint)Config.NumHiddenLayers) throw new ArgumentOutOfRangeException(nameof(layer));
        int n = seq.Length * Config.KeyValueDim;
        if (n == 0) return (ReadOnlyMemory<float>.Empty, ReadOnlyMemory<float>.Empty);
        return (seq.Keys[layer].AsMemory(0, n), seq.Values[layer].AsMemory(0, n));
    }

    public void Forward(int sequence, ReadOnlySpan<int> tokens, Span<float> lastLogits)
    {
        if (lastLogits.Length != VocabSize) throw new ArgumentException($"lastLogits has {lastLogits.Length} elements, expected vocab size {VocabSize}", nameof(lastLogits));
        Run(sequence, tokens, lastLogits, allPositions: false);
    }

    /// <summary>Like <see cref="Forward"/>, but writes the logits of every appended token: logits [tokens, V].</summary>
    public void ForwardAllLogits(int sequence, ReadOnlySpan<int> tokens, Span<float> logits)
    {
        if (logits.Length != (long)tokens.Length * VocabSize)
            throw new ArgumentException($"logits has {logits.Length} elements, expected {tokens.Length} x {VocabSize}", nameof(logits));
        Run(sequence, tokens, logits, allPositions: true);
    }

    public float[] ForwardAllLogits(int sequence, ReadOnlySpan<int> tokens)
    {
        var logits = new float[(long)tokens.Length * VocabSize];
        ForwardAllLogits(sequence, tokens, logits);
        return logits;
    }

    void Run(int sequence, ReadOnlySpan<int> tokens, Span<float> logitsOut, bool allPositions)
    {
        var seq = Seq(sequence);
        var c = Config;
        int T = tokens.Length, H = c.HiddenSize, D = c.HeadDim, nH = c.NumAttentionHeads, nKV = c.NumKeyValueHeads;
        int qDim = c.QueryDim, kvDim = c.KeyValueDim, p0 = seq.Length;
        if (T == 0) throw new ArgumentException("no tokens to forward", nameof(tokens));
        if ((long)p0 + T > ContextLength)
            throw new ArgumentException($"sequence {sequence} would hold {p0 + T} tokens, more than the context length {ContextLength}", nameof(tokens));
        foreach (int t in tokens)
            if ((uint)t >= (uint)VocabSize) throw new ArgumentException($"token id {t} is outside the vocabulary [0, {VocabSize})", nameof(tokens));
        seq.EnsureCapacity(p0 + T, ContextLength);
        var trace = Trace;
        float eps = (float)c.RmsNormEps;

        var x = new float[(long)T * H];
        var embed = Weights.EmbedTokens.Span;
        for (int t = 0; t < T; t++) Bf16.ToFloat(embed.Slice(tokens[t] * H, H), x.AsSpan(t * H, H));
        trace?.Add("embed", x);

        var h = new float[(long)T * H];
        var q = new float[(long)T * qDim];
        var k = new float[(long)T * kvDim];
        var v = new float[(long)T * kvDim];
        var attn = new float[(long)T * qDim];
        var y = new float[(long)T * H];
        var cos = new float[(long)T * D];
        var sin = new float[(long)T * D];
        for (int t = 0; t < T; t++) ReferenceOps.RopeCosSin(_invFreq, _attentionScaling, p0 + t, cos.AsSpan(t * D, D), sin.AsSpan(t * D, D));

        foreach (var layer in Weights.Layers)
        {
            int l = layer.Index;
            var a = layer.Attention;
            // Attention block: norm -> q/k/v -> per-head q/k norm -> RoPE -> KV cache -> attention -> o_proj + residual.
            ReferenceOps.RmsNorm(x, layer.InputNorm.Span, eps, h, H);
            trace?.Add($"layers.{l}.attn_norm", h);
            ReferenceOps.Matmul(h, a.QProj.Span, q, T, H, qDim);
            ReferenceOps.Matmul(h, a.KProj.Span, k, T, H, kvDim);
            ReferenceOps.Matmul(h, a.VProj.Span, v, T, H, kvDim);
            ReferenceOps.RmsNorm(q, a.QNorm.Span, eps, q, D);
            ReferenceOps.RmsNorm(k, a.KNorm.Span, eps, k, D);
            for (int t = 0; t < T; t++)
            {
                ReadOnlySpan<float> ct = cos.AsSpan(t * D, D), st = sin.AsSpan(t * D, D);
                ReferenceOps.ApplyRope(q.AsSpan(t * qDim, qDim), nH, D, ct, st);
                ReferenceOps.ApplyRope(k.AsSpan(t * kvDim, kvDim), nKV, D, ct, st);
            }
            trace?.Add($"layers.{l}.q", q);
            trace?.Add($"layers.{l}.k", k);
            trace?.Add($"layers.{l}.v", v);
            k.CopyTo(seq.Keys[l].AsSpan(p0 * kvDim));
            v.CopyTo(seq.Values[l].AsSpan(p0 * kvDim));
            int seen = p0 + T;
            ReferenceOps.Attention(q, seq.Keys[l].AsSpan(0, seen * kvDim), seq.Values[l].AsSpan(0, seen * kvDim), attn, T, p0, nH, nKV, D);
            trace?.Add($"layers.{l}.attn", attn);
            ReferenceOps.Matmul(attn, a.OProj.Span, y, T, qDim, H);
            ReferenceOps.AddBf16(x, y, x);
            trace?.Add($"layers.{l}.after_attn", x);

            // MLP block: norm -> MoE (router, top-k, experts, weighted sum) or dense SwiGLU -> residual.
            ReferenceOps.RmsNorm(x, layer.PostAttentionNorm.Span, eps, h, H);
            trace?.Add($"layers.{l}.ffn_norm", h);
            if (layer.Moe is { } moe)
            {
                int K = c.NumExpertsPerTok;
                var routerLogits = new float[(long)T * c.NumExperts];
                var experts = new int[T * K];
                var weights = new float[T * K];
                ReferenceOps.MoeBlock(h, moe, K, c.NormTopkProb, y, T, routerLogits, experts, weights);
                if (trace is not null)
                {
                    trace.Add($"layers.{l}.router_logits", routerLogits);
                    trace.Experts[$"layers.{l}"] = experts;
                    trace.ExpertWeights[$"layers.{l}"] = weights;
                }
            }
            else ReferenceOps.SwiGluMlp(h, layer.Mlp!, y, T);
            trace?.Add($"layers.{l}.ffn_out", y);
            ReferenceOps.AddBf16(x, y, x);
            trace?.Add($"layers.{l}.out", x);
        }

        int rows = allPositions ? T : 1;
        var last = x.AsSpan((T - rows) * H, rows * H);
        var normed = new float[rows * H];
        ReferenceOps.RmsNorm(last, Weights.FinalNorm.Span, eps, normed, H);
        trace?.Add("final_norm", normed);
        // lm_head is a bf16 Linear: its logits are bf16 values (returned widened to float32).
        ReferenceOps.Matmul(normed, Weights.LmHead.Span, logitsOut, rows, H, VocabSize);
        trace?.Add("logits", logitsOut);
        seq.Length = p0 + T;
    }

    SequenceCache Seq(int sequence)
    {
        if ((uint)sequence >= (uint)_sequences.Length)
            throw new ArgumentOutOfRangeException(nameof(sequence), sequence, $"sequence id must be in [0, {_sequences.Length})");
        return _sequences[sequence];
    }

    public void Dispose() => Weights.Dispose();

    /// <summary>One sequence's KV cache: per layer K and V [capacity, nKV*D], grown by doubling.</summary>
    sealed class SequenceCache(int layers, int kvDim)
    {
        public int Length;
        public float[][] Keys = new float[layers][];
        public float[][] Values = new float[layers][];
        int _capacity;

        public void EnsureCapacity(int tokens, int max)
        {
            if (tokens <= _capacity) return;
            int cap = (int)Math.Min(max, Math.Max(tokens, Math.Max(16L, 2L * _capacity)));
            for (int l = 0; l < Keys.Length; l++)
            {
                Array.Resize(ref Keys[l], cap * kvDim);
                Array.Resize(ref Values[l], cap * kvDim);
            }
            _capacity = cap;
        }
    }
}
