using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Config;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Model.Device;

/// <summary>One checkpoint tensor copied verbatim to <see cref="DeviceOffset"/> inside a device tensor.</summary>
public readonly record struct WeightSource(string CheckpointName, long DeviceOffset, long Bytes);

/// <summary>
/// A typed tensor of the device weight arena: its element type, logical shape, offset and size, the checkpoint tensors
/// it is built from and, for a weight matrix, the format the kernels read it in and the scale tensors that format needs
/// (none for bf16).
/// </summary>
public sealed record DeviceTensor(string Name, SafetensorsDType DType, long[] Shape, long Offset, long Bytes, IReadOnlyList<WeightSource> Sources)
{
    /// <summary>How the matrix kernels read this tensor (bf16 for every tensor of a bf16 checkpoint).</summary>
    public WeightFormat Format { get; init; } = WeightFormat.Bf16;
    /// <summary>The scale tensors of a quantized matrix (also in the arena); empty for bf16.</summary>
    public IReadOnlyList<DeviceTensor> Scales { get; init; } = [];
    /// <summary>What the tensor holds beyond its sources (e.g. "zeros", "fp32 computed on the host"), for `info`.</summary>
    public string? Note { get; init; }
    /// <summary>A quantized matrix: its scale of weight (row, k) is Scales[0][(row &gt;&gt; ScaleRowShift) * ScaleCols + (k &gt;&gt; ScaleKShift)].</summary>
    public int ScaleRowShift { get; init; }
    public int ScaleKShift { get; init; }
    public int ScaleCols { get; init; }
    /// <summary>
    /// A scale tensor (fp32 on the device, converted on the host at upload): the weight rows of each source, and how many
    /// weight rows one row of the checkpoint's scale tensor covers (128 for FP8 blocks, 1 per channel). Null otherwise.
    /// </summary>
    public IReadOnlyList<long>? ScaleSourceRows { get; init; }
    /// <summary>GPTQ tensors repacked on the host at upload: "gptq-qweight" (to [N, K/2] bytes) or "gptq-scales" (to fp16 [N, K/G]).</summary>
    public string? GptqRepack { get; init; }
    public int ScaleBlockRows { get; init; } = 1;

    /// <summary>True for tensors not read from the checkpoint (the RoPE table).</summary>
    public bool IsDerived => Sources.Count == 0;
    public string ShapeText => TensorInfo.FormatShape(Shape) + (Note is null ? "" : " " + Note);
}

/// <summary>One decoder layer's device tensors, in the order the step uses them.</summary>
public sealed record DeviceLayer(
    int Index,
    bool IsMoe,
    DeviceTensor InputNorm,   // [H]
    DeviceTensor Qkv,         // [(nH + 2 nKV) * D, H]: q_proj rows, then k_proj, then v_proj
    DeviceTensor QNorm,       // [D]
    DeviceTensor KNorm,       // [D]
    DeviceTensor OProj,       // [H, nH * D]
    DeviceTensor PostNorm,    // [H]
    DeviceTensor? Router,     // [E, H]; null for a dense layer
    DeviceTensor GateUp,      // [E, 2I, H]: per expert gate_proj rows then up_proj rows (MoeWeightPacking); dense: [1, 2I, H], one [2I, H] projection
    DeviceTensor Down,        // [E, H, I]
    int Experts,              // E (1 for a dense layer: its MLP, run by the dense path, not as an expert)
    int TopK,                 // k (1 for a dense layer)
    int Inter)                // I (intermediate_size for a dense layer)
{
    /// <summary>
    /// [E, nH * D] bf16: the folded router <c>W_r diag(post_norm) W_o</c> of early routing (docs/kernels.md, "Early
    /// routing"), computed on the device at load (moe_router_fold); null unless the layout was made with early routing and
    /// the layer is a MoE layer whose o_proj is bf16.
    /// </summary>
    public DeviceTensor? FoldedRouter { get; init; }
}

/// <summary>
/// The device weight layout of a checkpoint, computed from config.json alone (no weight is read): every
/// tensor 256-byte aligned in ONE arena. Fused q|k|v, stacked experts, a dense MLP's gate|up as one [2I, H] matrix.
/// A tied lm_head is the embedding tensor itself (one copy, counted once).
/// Checkpoint names and shapes come from <see cref="ModelTensors"/>; the weight format from
/// <see cref="CheckpointFormat"/> (config.json's quantization_config).
/// </summary>
public sealed class WeightLayout
{
    private readonly List<DeviceTensor> _tensors = [];
    private readonly ArenaLayout _arena = new();

    public ModelConfig Config { get; }
    public CheckpointFormat Format { get; }
    public ModelTensors Checkpoint { get; }
    /// <summary>Every tensor of the arena (scale tensors included), in offset order.</summary>
    public IReadOnlyList<DeviceTensor> Tensors => _tensors;
    public IReadOnlyList<DeviceLayer> Layers { get; }
    public DeviceTensor Embedding { get; }     // [V, H]
    public DeviceTensor FinalNorm { get; }     // [H]
    public DeviceTensor LmHead { get; }        // [V, H] (= Embedding when tied and no lm_head.weight)
    public DeviceTensor InvFreq { get; }       // [D/2] fp32, computed on the host (plain or YaRN)
    public long TotalBytes => _arena.TotalBytes;

    /// <param name="c">config.json.</param>
    /// <param name="checkpointHasLmHead">The checkpoint has lm_head.weight even when the embeddings are tied.</param>
    /// <param name="foldedRouters">Early routing (DeviceModelOptions.EarlyRouting): a folded router per MoE layer whose
    /// o_proj is bf16 (<see cref="DeviceLayer.FoldedRouter"/>), computed at load.</param>
    public WeightLayout(ModelConfig c, bool checkpointHasLmHead = false, bool foldedRouters = false)
    {
        Config = c;
        Format = CheckpointFormat.FromConfig(c);
        var names = Checkpoint = new ModelTensors(c, hasLmHead: !c.TieWordEmbeddings || checkpointHasLmHead);
        long H = c.HiddenSize, D = c.HeadDim;

        Embedding = Vector("embed_tokens", names.Embedding);
        var layers = new DeviceLayer[c.NumHiddenLayers];
        for (int l = 0; l < layers.Length; l++)
        {
            var t = names.Layers[l];
            string n = $"layers.{l}.";
            var inNorm = Vector(n + "input_norm", t.InputNorm);
            var qkv = Matrix(n + "qkv", [c.QueryDim + 2L * c.KeyValueDim, H], [t.QProj, t.KProj, t.VProj]);
            var qn = Vector(n + "q_norm", t.QNorm);
            var kn = Vector(n + "k_norm", t.KNorm);
            var o = Matrix(n + "o_proj", [H, c.QueryDim], [t.OProj]);
            var post = Vector(n + "post_norm", t.PostNorm);
            DeviceTensor? router;
            DeviceTensor gateUp, down;
            int E, K, I;
            if (t.IsMoe)
            {
                E = c.NumExperts; K = c.NumExpertsPerTok; I = c.MoeIntermediateSize;
                router = Vector(n + "router", t.Router!);     // the router stays bf16 in every format (CheckpointFormat)
                gateUp = Matrix(n + "gate_up", [E, 2L * I, H], t.Experts!.SelectMany(x => new[] { x.Gate, x.Up }).ToArray());
                down = Matrix(n + "down", [E, H, I], t.Experts!.Select(x => x.Down).ToArray());
            }
            else
            {
                E = 1; K = 1; I = c.IntermediateSize;
                router = null;
                gateUp = Matrix(n + "gate_up", [1, 2L * I, H], [t.Mlp!.Gate, t.Mlp.Up]);
                down = Matrix(n + "down", [1, H, I], [t.Mlp.Down]);
            }
            layers[l] = new DeviceLayer(l, t.IsMoe, inNorm, qkv, qn, kn, o, post, router, gateUp, down, E, K, I)
            {
                FoldedRouter = foldedRouters && t.IsMoe && o.Format == WeightFormat.Bf16
                    ? Add(new DeviceTensor(n + "folded_router", SafetensorsDType.BF16, [E, c.QueryDim], 0, (long)E * c.QueryDim * 2, []) { Note = "computed at load (moe_router_fold)" })
                    : null,
            };
        }
        Layers = layers;
        FinalNorm = Vector("final_norm", names.FinalNorm);
        LmHead = names.LmHead is { } head ? Matrix("lm_head", [c.VocabSize, H], [head]) : Embedding;
        InvFreq = Add(new DeviceTensor("rope.inv_freq", SafetensorsDType.F32, [D / 2], 0, D / 2 * sizeof(float), []) { Note = "computed on the host" });
    }

    private DeviceTensor Add(DeviceTensor t)
    {
        var placed = t with { Offset = _arena.Take(t.Name, t.Bytes) };
        _tensors.Add(placed);
        return placed;
    }

    /// <summary>A bf16 tensor copied verbatim (embedding, norms, router).</summary>
    private DeviceTensor Vector(string name, ModelTensor source)
    {
        long bytes = source.Elements * sizeof(ushort);
        return Add(new DeviceTensor(name, SafetensorsDType.BF16, source.Shape, 0, bytes, [new WeightSource(source.Name, 0, bytes)]));
    }

    /// <summary>
    /// A weight matrix made of <paramref name="sources"/> stacked along the output rows (q|k|v, experts' gate|up, ...), stored
    /// in the layout's weight format; the format's scale tensors follow it in the arena.
    /// </summary>
    private DeviceTensor Matrix(string name, long[] shape, ModelTensor[] sources)
    {
        var format = Format.FormatOf(sources[0]);
        if (sources.Any(s => Format.FormatOf(s) != format))
            throw new NotSupportedException($"{name}: its parts {string.Join(", ", sources.Select(s => s.Module))} are not all in one weight format " +
                "(quantization_config.modules_to_not_convert names only some of them)");
        if (format == WeightFormat.Int4Gptq) return GptqMatrix(name, shape, sources);
        if (format != WeightFormat.Bf16) return QuantizedMatrix(name, shape, sources, format);
        var list = new WeightSource[sources.Length];
        long at = 0;
        for (int i = 0; i < sources.Length; i++)
        {
            long bytes = sources[i].Elements * sizeof(ushort);
            list[i] = new WeightSource(sources[i].Name, at, bytes);
            at += bytes;
        }
        long total = shape.Aggregate(1L, (a, b) => a * b) * sizeof(ushort);
        if (at != total) throw new InvalidOperationException($"{name}: sources hold {at} bytes, shape {TensorInfo.FormatShape(shape)} needs {total}");
        return Add(new DeviceTensor(name, SafetensorsDType.BF16, shape, 0, total, list) { Format = format });
    }

    /// <summary>
    /// A quantized matrix: the one-byte weights of the sources stacked along the rows, then its fp32 scale tensor. FP8
    /// block scales keep one row per 128 weight rows when every source is 128-row aligned (the real shapes), else one row
    /// per weight row (small models; docs/formats.md); INT8 has one scale per weight row.
    /// </summary>
    private DeviceTensor QuantizedMatrix(string name, long[] shape, ModelTensor[] sources, WeightFormat format)
    {
        long k = shape[^1], rows = shape.Aggregate(1L, (a, b) => a * b) / k;
        var list = new WeightSource[sources.Length];
        long at = 0;
        for (int i = 0; i < sources.Length; i++)
        {
            list[i] = new WeightSource(sources[i].Name, at, sources[i].Elements);
            at += sources[i].Elements;
        }
        if (at != rows * k) throw new InvalidOperationException($"{name}: sources hold {at} weights, shape {TensorInfo.FormatShape(shape)} needs {rows * k}");
        var data = Add(new DeviceTensor(name, CheckpointFormat.StoredDType(format), shape, 0, rows * k, list) { Format = format });

        int blockRows = format == WeightFormat.Fp8Block ? WeightQuantization.Fp8Block : 1;
        int rowShift = format == WeightFormat.Fp8Block && sources.All(s => s.Rows % WeightQuantization.Fp8Block == 0) ? 7 : 0;
        int cols = format == WeightFormat.Fp8Block ? WeightQuantization.Blocks(k) : 1;
        int kShift = format == WeightFormat.Fp8Block ? 7 : 30;
        var scaleList = new WeightSource[sources.Length];
        long scaleRows = 0;
        for (int i = 0; i < sources.Length; i++)
        {
            long r = sources[i].Rows >> rowShift;
            scaleList[i] = new WeightSource(CheckpointFormat.ScaleName(sources[i], format), scaleRows * cols * sizeof(float), r * cols * sizeof(float));
            scaleRows += r;
        }
        var scales = Add(new DeviceTensor(name + ".scales", SafetensorsDType.F32, [scaleRows, cols], 0, scaleRows * cols * sizeof(float), scaleList)
        {
            Note = rowShift == 7 ? "fp32 scale per 128x128 block" : format == WeightFormat.Fp8Block ? "fp32 block scale per weight row" : "fp32 scale per row",
            ScaleSourceRows = sources.Select(s => s.Rows).ToArray(),
            ScaleBlockRows = blockRows,
            ScaleRowShift = rowShift,
        });
        _tensors[_tensors.Count - 2] = data = data with { Scales = [scales], ScaleRowShift = rowShift, ScaleKShift = kShift, ScaleCols = cols };
        return data;
    }

    /// <summary>
    /// A GPTQ int4 matrix: the sources' qweight repacked row-major, two codes per byte along K ([rows, K/2] bytes), then
    /// the fp16 scales transposed to [rows, K/G] (docs/formats.md). qzeros (all 8, checked at load) and g_idx (k / G) are
    /// not needed on the device.
    /// </summary>
    private DeviceTensor GptqMatrix(string name, long[] shape, ModelTensor[] sources)
    {
        long k = shape[^1], rows = shape.Aggregate(1L, (a, b) => a * b) / k;
        int g = Format.GroupSize;
        if (k % g != 0) throw new ConfigException($"{sources[0].Module}: quantization_config.group_size {g} does not divide its K {k}");
        var list = new WeightSource[sources.Length];
        var scaleList = new WeightSource[sources.Length];
        long at = 0, sat = 0;
        for (int i = 0; i < sources.Length; i++)
        {
            list[i] = new WeightSource(CheckpointFormat.GptqName(sources[i], "qweight"), at, sources[i].Rows * k / 2);
            scaleList[i] = new WeightSource(CheckpointFormat.GptqName(sources[i], "scales"), sat, sources[i].Rows * (k / g) * 2);
            at += list[i].Bytes;
            sat += scaleList[i].Bytes;
        }
        var data = Add(new DeviceTensor(name, SafetensorsDType.U8, shape, 0, rows * k / 2, list) { Format = WeightFormat.Int4Gptq, Note = "int4, 2 per byte", GptqRepack = "gptq-qweight" });
        var scales = Add(new DeviceTensor(name + ".scales", SafetensorsDType.F16, [rows, k / g], 0, sat, scaleList) { Note = $"fp16 per {g} inputs", GptqRepack = "gptq-scales" });
        _tensors[_tensors.Count - 2] = data = data with { Scales = [scales], ScaleRowShift = 0, ScaleKShift = System.Numerics.BitOperations.Log2((uint)g), ScaleCols = (int)(k / g) };
        return data;
    }

    /// <summary>Every checkpoint tensor name the layout reads.</summary>
    public IEnumerable<string> SourceNames => _tensors.SelectMany(t => t.Sources).Select(s => s.CheckpointName);

    /// <summary>Parameters of the model (elements of the logical tensors read; a quantized matrix counts its weights, not its bytes).</summary>
    public long ParameterCount => Checkpoint.All.Sum(t => t.Elements);

    /// <summary>Bytes of a matrix with its scale tensors (what a kernel streams to read all of it).</summary>
    public static long BytesWithScales(DeviceTensor t) => t.Bytes + t.Scales.Sum(s => s.Bytes);

    /// <summary>The formats of the matrices the GEMV / GEMM launchers read (qkv, o_proj, lm_head): the variants to load.</summary>
    public IReadOnlyCollection<WeightFormat> DenseFormats =>
        Layers.SelectMany(l => l.IsMoe ? new[] { l.Qkv, l.OProj } : new[] { l.Qkv, l.OProj, l.GateUp, l.Down })
            .Append(LmHead).Select(t => t.Format).Distinct().ToArray();

    /// <summary>The formats of the stacked expert matrices the MoE launchers read (gate_up, down).</summary>
    public IReadOnlyCollection<WeightFormat> ExpertFormats =>
        Layers.Where(l => l.IsMoe).SelectMany(l => new[] { l.GateUp, l.Down }).Select(t => t.Format).Distinct().ToArray();
}
