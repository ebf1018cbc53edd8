using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>One checkpoint tensor copied verbatim (bf16 bytes) to <see cref="DeviceOffset"/> inside a device tensor.</summary>
public readonly record struct WeightSource(string CheckpointName, long DeviceOffset, long Bytes);

/// <summary>A tensor of the device weight arena: its offset, size, shape, and the checkpoint tensors it is built from.</summary>
public sealed record DeviceTensor(string Name, long Offset, long Bytes, string Shape, IReadOnlyList<WeightSource> Sources)
{
    /// <summary>True for tensors not read from the checkpoint (zero router of a dense layer, RoPE table).</summary>
    public bool IsDerived => Sources.Count == 0;
}

/// <summary>Offsets (in the weight arena) of one decoder layer's tensors, in the order the step uses them.</summary>
public sealed record LayerOffsets(
    int Index,
    bool IsMoe,
    long InputNorm,   // [H]
    long Qkv,         // [(nH + 2 nKV) * D, H]: q_proj rows, then k_proj, then v_proj
    long QNorm,       // [D]
    long KNorm,       // [D]
    long OProj,       // [H, nH * D]
    long PostNorm,    // [H]
    long Router,      // [E, H]; a dense layer: [1, H] zeros (its MLP runs as one expert of weight 1)
    long GateUp,      // [E, 2I, H]: per expert gate_proj rows then up_proj rows (kern2's MoeWeightPacking)
    long Down,        // [E, H, I]
    int Experts,      // E (1 for a dense layer)
    int TopK,         // k (1 for a dense layer)
    int Inter);       // I (intermediate_size for a dense layer)

/// <summary>
/// The device weight layout of a checkpoint, computed from config.json alone (no weight is read): every
/// tensor 256-byte aligned in ONE arena. Fused q|k|v, stacked experts, dense MLPs as a one-expert MoE.
/// </summary>
public sealed class WeightLayout
{
    private readonly List<DeviceTensor> _tensors = [];

    public ModelConfig Config { get; }
    public IReadOnlyList<DeviceTensor> Tensors => _tensors;
    public IReadOnlyList<LayerOffsets> Layers { get; }
    public long Embedding { get; }     // [V, H]
    public long FinalNorm { get; }     // [H]
    public long LmHead { get; }        // [V, H] (= Embedding when tied and no lm_head.weight)
    public long InvFreq { get; }       // [D/2] fp32, computed on the host (plain or YaRN)
    public long TotalBytes { get; }

    public WeightLayout(ModelConfig c, bool checkpointHasLmHead = false)
    {
        var arena = new ArenaLayout();
        long H = c.HiddenSize, D = c.HeadDim, bf = sizeof(ushort);
        long Add(string name, long bytes, string shape, params WeightSource[] sources)
        {
            long off = arena.Take(name, bytes);
            _tensors.Add(new DeviceTensor(name, off, bytes, shape, sources));
            return off;
        }
        WeightSource Src(string name, long at, long elements) => new(name, at, elements * bf);

        Embedding = Add("embed_tokens", c.VocabSize * H * bf, $"[{c.VocabSize}, {H}]", Src("model.embed_tokens.weight", 0, c.VocabSize * H));
        var layers = new LayerOffsets[c.NumHiddenLayers];
        for (int l = 0; l < layers.Length; l++)
        {
            string p = $"model.layers.{l}.", n = $"layers.{l}.";
            long inNorm = Add(n + "input_norm", H * bf, $"[{H}]", Src(p + "input_layernorm.weight", 0, H));
            long qRows = c.QueryDim, kvRows = c.KeyValueDim, qkvRows = qRows + 2 * kvRows;
            long qkv = Add(n + "qkv", qkvRows * H * bf, $"[{qkvRows}, {H}]",
                Src(p + "self_attn.q_proj.weight", 0, qRows * H),
                Src(p + "self_attn.k_proj.weight", qRows * H * bf, kvRows * H),
                Src(p + "self_attn.v_proj.weight", (qRows + kvRows) * H * bf, kvRows * H));
            long qn = Add(n + "q_norm", D * bf, $"[{D}]", Src(p + "self_attn.q_norm.weight", 0, D));
            long kn = Add(n + "k_norm", D * bf, $"[{D}]", Src(p + "self_attn.k_norm.weight", 0, D));
            long o = Add(n + "o_proj", H * qRows * bf, $"[{H}, {qRows}]", Src(p + "self_attn.o_proj.weight", 0, H * qRows));
            long post = Add(n + "post_norm", H * bf, $"[{H}]", Src(p + "post_attention_layernorm.weight", 0, H));
            long router, gateUp, down;
            int E, K, I;
            bool moe = c.IsMoeLayer(l);
            if (moe)
            {
                E = c.NumExperts; K = c.NumExpertsPerTok; I = c.MoeIntermediateSize;
                router = Add(n + "router", E * H * bf, $"[{E}, {H}]", Src(p + "mlp.gate.weight", 0, E * H));
                var gu = new WeightSource[2 * E];
                var dn = new WeightSource[E];
                for (int e = 0; e < E; e++)
                {
                    long expert = (long)e * 2 * I * H * bf;
                    gu[2 * e] = Src($"{p}mlp.experts.{e}.gate_proj.weight", expert, (long)I * H);
                    gu[2 * e + 1] = Src($"{p}mlp.experts.{e}.up_proj.weight", expert + (long)I * H * bf, (long)I * H);
                    dn[e] = Src($"{p}mlp.experts.{e}.down_proj.weight", (long)e * H * I * bf, H * I);
                }
                gateUp = Add(n + "gate_up", (long)E * 2 * I * H * bf, $"[{E}, {2 * I}, {H}]", gu);
                down = Add(n + "down", (long)E * H * I * bf, $"[{E}, {H}, {I}]", dn);
            }
            else
            {
                E = 1; K = 1; I = c.IntermediateSize;
                router = Add(n + "router", H * bf, $"[1, {H}] zeros");
                gateUp = Add(n + "gate_up", 2L * I * H * bf, $"[1, {2 * I}, {H}]",
                    Src(p + "mlp.gate_proj.weight", 0, (long)I * H), Src(p + "mlp.up_proj.weight", (long)I * H * bf, (long)I * H));
                down = Add(n + "down", H * I * bf, $"[1, {H}, {I}]", Src(p + "mlp.down_proj.weight", 0, H * I));
            }
            layers[l] = new LayerOffsets(l, moe, inNorm, qkv, qn, kn, o, post, router, gateUp, down, E, K, I);
        }
        Layers = layers;
        FinalNorm = Add("final_norm", H * bf, $"[{H}]", Src("model.norm.weight", 0, H));
        bool tied = c.TieWordEmbeddings && !checkpointHasLmHead;
        LmHead = tied ? Embedding : Add("lm_head", c.VocabSize * H * bf, $"[{c.VocabSize}, {H}]", Src("lm_head.weight", 0, c.VocabSize * H));
        InvFreq = Add("rope.inv_freq", D / 2 * sizeof(float), $"[{D / 2}] fp32");
        TotalBytes = arena.TotalBytes;
        Config = c;
    }

    /// <summary>Every checkpoint tensor name the layout reads.</summary>
    public IEnumerable<string> SourceNames => _tensors.SelectMany(t => t.Sources).Select(s => s.CheckpointName);

    /// <summary>Parameters of the checkpoint (elements of the tensors read).</summary>
    public long ParameterCount => _tensors.SelectMany(t => t.Sources).Sum(s => s.Bytes / sizeof(ushort));
}
