using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Model.Sampling;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Reference;

/// <summary>
/// The CPU reference of Qwen3 / Qwen3-MoE (docs/architecture.md, "The CPU reference"): fp32 math on the bf16 weights of
/// a memory-mapped checkpoint, with the bf16 rounding points of transformers' bf16 forward. Implements the step contract
/// like the device model: a paged KV cache (K after norm and RoPE, V raw, both bf16-exact floats, in pages allocated on
/// first use) behind the same <see cref="KvPageTable"/>, so prefix sharing works here too. A step runs each sequence's
/// rows as one forward (so a sequence's results do not depend on what else is in the batch); sampled rows use
/// <see cref="CounterSampler"/> (the device sampler's semantics). Not thread-safe: one Step at a time (each op is
/// parallel inside).
/// </summary>
public sealed class ReferenceModel : ICausalLanguageModel
{
    public const int DefaultPageSize = 16;
    readonly float[] _invFreq;
    readonly float _attentionScaling;
    readonly float[]?[][] _kPages, _vPages;   // [layer][page] -> [pageSize, nKV * D]; both levels grow on first write
    readonly CounterSampler _sampler = new();
    float[] _kScratch = [], _vScratch = [];

    public ModelWeights Weights { get; }
    public ModelConfig Config => Weights.Config;
    public int VocabSize => Config.VocabSize;
    public int ContextLength { get; }
    public int MaxSequences => Kv.MaxSequences;
    /// <summary>The reference has no workspace limit: a step may hold a whole context.</summary>
    public int MaxStepRows => ContextLength;
    public int MaxOutputRows => ContextLength;
    public KvPageTable Kv { get; }
    /// <summary>When set, the next forwards record named intermediates into it (a copy each; meant for tests).</summary>
    public ReferenceTrace? Trace { get; set; }

    /// <summary>Opens config.json + safetensors in <paramref name="modelDir"/>. contextLength defaults to max_position_embeddings.</summary>
    public static ReferenceModel Load(string modelDir, int maxSequences = 1, int? contextLength = null,
        Qwen3Cuda.Runtime.Memory.KvCacheDtype kvCacheDtype = Qwen3Cuda.Runtime.Memory.KvCacheDtype.Bf16)
    {
        var weights = ModelWeights.Load(modelDir);
        try { return new ReferenceModel(weights, maxSequences, contextLength) { KvCacheDtype = kvCacheDtype }; }
        catch { weights.Dispose(); throw; }
    }

    /// <summary>Takes ownership of <paramref name="weights"/>. The page table holds <paramref name="maxSequences"/> full contexts,
    /// or <paramref name="kvPages"/> pages (the scratch page included) when given (a smaller cache, for schedulers under page pressure).</summary>
    public ReferenceModel(ModelWeights weights, int maxSequences = 1, int? contextLength = null, int pageSize = DefaultPageSize, int? kvPages = null)
    {
        var c = weights.Config;
        if (maxSequences < 1 || maxSequences > 4096) throw new ArgumentOutOfRangeException(nameof(maxSequences), maxSequences, "must be in [1, 4096]");
        int ctx = contextLength ?? c.MaxPositionEmbeddings;
        // Like the device model, any positive length runs (RoPE is defined at every position); past max_position_embeddings
        // (x the YaRN factor) the model was not trained, which the CLI warns about (CliOptions.ContextCheck).
        if (ctx < 1) throw new ArgumentOutOfRangeException(nameof(contextLength), ctx, $"context length {ctx} must be at least 1");
        if (pageSize < 1 || pageSize > 4096) throw new ArgumentOutOfRangeException(nameof(pageSize), pageSize, "KV page size must be in [1, 4096]");
        Weights = weights;
        ContextLength = ctx;
        (_invFreq, _attentionScaling) = ReferenceOps.RopeParameters(c.HeadDim, c.RopeTheta, c.RopeScaling, c.MaxPositionEmbeddings);
        int pagesPerSeq = (ctx + pageSize - 1) / pageSize;
        if (kvPages is < 2) throw new ArgumentOutOfRangeException(nameof(kvPages), kvPages, "KV pages must be at least 2 (page 0 is the scratch page)");
        Kv = new KvPageTable(kvPages ?? checked(maxSequences * pagesPerSeq + 1), pageSize, maxSequences, pagesPerSeq);
        _kPages = new float[]?[c.NumHiddenLayers][];
        _vPages = new float[]?[c.NumHiddenLayers][];
        for (int l = 0; l < c.NumHiddenLayers; l++) { _kPages[l] = []; _vPages[l] = []; }
    }

    /// <summary>
    /// A sequence's cache for one layer: keys (after k_norm and RoPE) and values, each [SequenceLength, nKV*D],
    /// bf16-exact floats (copies).
    /// </summary>
    public (ReadOnlyMemory<float> Keys, ReadOnlyMemory<float> Values) KvCache(int sequence, int layer)
    {
        if ((uint)layer >= (uint)Config.NumHiddenLayers) throw new ArgumentOutOfRangeException(nameof(layer));
        int n = Kv.Length(sequence) * Config.KeyValueDim;
        var keys = new float[n];
        var values = new float[n];
        GatherKv(sequence, layer, Kv.Length(sequence), keys, values);
        return (keys, values);
    }

    public void Step(StepBatch batch)
    {
        batch.Prepare(VocabSize, ContextLength, MaxStepRows, MaxOutputRows, Kv);
        batch.ReservePages(Kv);
        ApplyPendingCopies();
        foreach (var g in batch.Segments)
        {
            Run(batch, g);
            Kv.Advance(g.Sequence, g.Rows);
        }
    }

    /// <summary>Copy-on-write of shared pages that a sequence is about to write into (see <see cref="KvPageTable"/>).</summary>
    void ApplyPendingCopies()
    {
        foreach (var (src, dst) in Kv.TakePendingCopies())
            for (int l = 0; l < _kPages.Length; l++)
            {
                Page(_kPages, l, src).CopyTo(Page(_kPages, l, dst), 0);
                Page(_vPages, l, src).CopyTo(Page(_vPages, l, dst), 0);
            }
    }

    /// <summary>One sequence's rows of a step: every layer over its T tokens, then the final norm and lm_head for its output rows.</summary>
    void Run(StepBatch batch, StepSegment g)
    {
        var c = Config;
        int sequence = g.Sequence, T = g.Rows, H = c.HiddenSize, D = c.HeadDim, nH = c.NumAttentionHeads, nKV = c.NumKeyValueHeads;
        int qDim = c.QueryDim, kvDim = c.KeyValueDim, p0 = g.FirstPosition;
        var tokens = batch.Tokens.Slice(g.FirstRow, T);
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
        // Dynamic NTK: the whole run of rows uses the table of its sequence length (its last position + 1), as transformers
        // does for one forward over a cache (docs/model-formats.md, "RoPE scaling").
        var invFreq = _invFreq;
        if (c.RopeScaling is { IsDynamic: true } dyn)
        {
            invFreq = new float[D / 2];
            ReferenceOps.DynamicNtkInvFreq(D, c.RopeTheta, dyn.Factor, c.MaxPositionEmbeddings, p0 + T, invFreq);
        }
        for (int t = 0; t < T; t++) ReferenceOps.RopeCosSin(invFreq, _attentionScaling, p0 + t, cos.AsSpan(t * D, D), sin.AsSpan(t * D, D));
        int seen = p0 + T;
        EnsureScratch((long)seen * kvDim);

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
            ScatterKv(sequence, l, p0, T, k, v);
            GatherKv(sequence, l, seen, _kScratch, _vScratch);
            ReferenceOps.Attention(q, _kScratch.AsSpan(0, seen * kvDim), _vScratch.AsSpan(0, seen * kvDim), attn, T, p0, nH, nKV, D);
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

        // Final norm and lm_head for the rows with an output (a bf16 Linear: its logits are bf16 values, widened).
        int outputs = 0;
        for (int t = 0; t < T; t++) if (batch.Output(g.FirstRow + t) != StepOutput.None) outputs++;
        if (outputs == 0) return;
        var rows = new float[(long)outputs * H];
        var rowIndex = new int[outputs];
        for (int t = 0, o = 0; t < T; t++)
            if (batch.Output(g.FirstRow + t) != StepOutput.None) { x.AsSpan(t * H, H).CopyTo(rows.AsSpan(o * H, H)); rowIndex[o++] = g.FirstRow + t; }
        var normed = new float[rows.Length];
        ReferenceOps.RmsNorm(rows, Weights.FinalNorm.Span, eps, normed, H);
        trace?.Add("final_norm", normed);
        var logits = new float[(long)outputs * VocabSize];
        ReferenceOps.Matmul(normed, Weights.LmHead.Span, logits, outputs, H, VocabSize);
        trace?.Add("logits", logits);
        for (int o = 0; o < outputs; o++)
        {
            int row = rowIndex[o];
            var rowLogits = logits.AsSpan(o * VocabSize, VocabSize);
            if (batch.Output(row) == StepOutput.Logits) rowLogits.CopyTo(batch.LogitsBuffer(row));
            else
            {
                // Penalties first (kernels/penalties.cu's semantics, bf16-rounded like the device's logits).
                if (batch.PenaltyTokens(row).Length > 0) Penalties.Apply(rowLogits, batch.PenaltyTokens(row), batch.PenaltyCounts(row), batch.Penalties(row));
                batch.SetSampled(batch.OutputIndex(row), _sampler.Sample(rowLogits, batch.Sampling(row), (ulong)batch.Position(row) + 1));
            }
        }
    }

    /// <summary>
    /// How the cache stores K and V, as the device's --kv-cache-dtype: bf16 values, or (Fp8) the FP8 E4M3 value nearest to
    /// each bf16 value (ties to even, saturating at +-448, per-layer scale 1; docs/formats.md).
    /// </summary>
    public Qwen3Cuda.Runtime.Memory.KvCacheDtype KvCacheDtype { get; init; }

    /// <summary>Writes K/V of positions p0 .. p0+T-1 of a sequence into its pages (reserved by the step).</summary>
    void ScatterKv(int sequence, int layer, int p0, int T, ReadOnlySpan<float> k, ReadOnlySpan<float> v)
    {
        int kvDim = Config.KeyValueDim, ps = Kv.PageSize;
        var table = Kv.BlockTable(sequence);
        bool fp8 = KvCacheDtype == Qwen3Cuda.Runtime.Memory.KvCacheDtype.Fp8;
        for (int t = 0; t < T; t++)
        {
            int pos = p0 + t, page = table[pos / ps], at = pos % ps * kvDim;
            var kd = Page(_kPages, layer, page).AsSpan(at, kvDim);
            var vd = Page(_vPages, layer, page).AsSpan(at, kvDim);
            k.Slice(t * kvDim, kvDim).CopyTo(kd);
            v.Slice(t * kvDim, kvDim).CopyTo(vd);
            if (!fp8) continue;
            for (int i = 0; i < kvDim; i++)
            {
                kd[i] = Checkpoint.Fp8E4M3.ToFloat(Checkpoint.Fp8E4M3.FromFloat(Bf16.Round(kd[i])));
                vd[i] = Checkpoint.Fp8E4M3.ToFloat(Checkpoint.Fp8E4M3.FromFloat(Bf16.Round(vd[i])));
            }
        }
    }

    /// <summary>Copies the first <paramref name="tokens"/> keys and values of a sequence into contiguous [tokens, nKV*D] arrays.</summary>
    void GatherKv(int sequence, int layer, int tokens, Span<float> keys, Span<float> values)
    {
        int kvDim = Config.KeyValueDim, ps = Kv.PageSize;
        var table = Kv.BlockTable(sequence);
        for (int start = 0; start < tokens; start += ps)
        {
            int n = Math.Min(ps, tokens - start) * kvDim, page = table[start / ps];
            Page(_kPages, layer, page).AsSpan(0, n).CopyTo(keys.Slice(start * kvDim, n));
            Page(_vPages, layer, page).AsSpan(0, n).CopyTo(values.Slice(start * kvDim, n));
        }
    }

    /// <summary>Page <paramref name="page"/> of a layer's pool, allocated (zeroed) on first use.</summary>
    float[] Page(float[]?[][] pool, int layer, int page)
    {
        ref var pages = ref pool[layer];
        if (page >= pages.Length) Array.Resize(ref pages, Math.Max(page + 1, pages.Length * 2));
        return pages[page] ??= new float[Kv.PageSize * Config.KeyValueDim];
    }

    void EnsureScratch(long elements)
    {
        if (_kScratch.Length >= elements) return;
        _kScratch = new float[elements];
        _vScratch = new float[elements];
    }

    public void Dispose() => Weights.Dispose();
}
