using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// Inputs of one MoE block check and its CPU reference. Values are "exact-sum" bf16: multiples of 2^-6 in [-1/8, 1/8] for
/// hidden, router and gate/up weights, so every router logit and every gate/up dot product is exact in fp32 whatever the
/// summation order (products are multiples of 2^-12, sums stay far below 2^24 units). That makes routing and the bf16
/// gate/up values identical on CPU and device; only silu's exp (fp32 ulps) and the down projection's fp32 reduction order
/// can differ, which <see cref="MoeCase.Compare"/>'s tolerance covers. The reference is ReferenceOps (Matmul, RouterTopK,
/// SwiGluMlp), combined in fp32 in rank order and rounded once.
/// </summary>
public sealed class MoeCase
{
    public required MoeShape Shape { get; init; }
    public required int Tokens { get; init; }
    public required ushort[] Hidden { get; init; }        // [T, H]
    public required ushort[] Router { get; init; }        // [E, H]
    /// <summary>Per expert [2I, H] (gate rows then up rows) or null when no token routes to it (never uploaded: poison on device).</summary>
    public required ushort[]?[] GateUp { get; init; }
    public required ushort[]?[] Down { get; init; }        // per expert [H, I] or null
    public required int[] RefIds { get; init; }           // [T, k]
    public required float[] RefWeights { get; init; }     // [T, k]

    /// <summary>Qwen3-30B-A3B: E 128, k 8, H 2048, I 768, norm_topk_prob true.</summary>
    public static readonly MoeShape Real = new(128, 8, 2048, 768, true);
    /// <summary>Reduced shape for large token counts on the emulator (same k, fewer/smaller experts).</summary>
    public static readonly MoeShape Small = new(32, 8, 256, 128, true);

    /// <summary>
    /// Random case. <paramref name="hotExperts"/> > 0 crafts the router so that every token picks only among
    /// experts 0..hotExperts-1 spread over the index range (the rest get no token): the first 512 hidden columns are
    /// +1/8 for every token and the hot experts' router rows are +1/8 there (cold rows -1/8), a logit gap of 16.
    /// </summary>
    public static MoeCase Create(MoeShape s, int tokens, int seed, int hotExperts = 0, bool tiedRouter = false, bool withExperts = true)
    {
        int H = s.Hidden, E = s.Experts, I = s.Inter, k = s.TopK;
        var hidden = new ushort[tokens * H];
        Fill(hidden, seed * 7919 + 1);
        var router = new ushort[E * H];
        Fill(router, seed * 7919 + 2);
        if (tiedRouter) // pairs of identical router rows: exact logit ties between experts 2m and 2m+1
            for (int e = 1; e < E; e += 2) Array.Copy(router, (e - 1) * H, router, e * H, H);
        int[] hot = hotExperts > 0 ? Enumerable.Range(0, hotExperts).Select(i => (int)((long)i * E / hotExperts + (E / hotExperts) / 2)).ToArray() : [];
        if (hotExperts > 0)
        {
            int cols = Math.Min(512, H / 2);
            for (int t = 0; t < tokens; t++) for (int c = 0; c < cols; c++) hidden[t * H + c] = Bf16.FromFloat(0.125f);
            for (int e = 0; e < E; e++)
            {
                ushort v = Bf16.FromFloat(hot.Contains(e) ? 0.125f : -0.125f);
                for (int c = 0; c < cols; c++) router[e * H + c] = v;
            }
        }
        // Router on the CPU (exact logits), then weights only for the experts that are used.
        var hf = KernelData.ToFloats(hidden);
        var logits = new float[tokens * E];
        ReferenceOps.Matmul(hf, router, logits, tokens, H, E);
        var ids = new int[tokens * k];
        var wts = new float[tokens * k];
        for (int t = 0; t < tokens; t++)
            ReferenceOps.RouterTopK(logits.AsSpan(t * E, E), k, s.NormTopkProb, ids.AsSpan(t * k, k), wts.AsSpan(t * k, k));
        var gateUp = new ushort[]?[E];
        var down = new ushort[]?[E];
        foreach (int e in withExperts ? ids.Distinct() : [])
        {
            // Expert weights depend on the expert index only, so cases of one shape can share a device.
            gateUp[e] = new ushort[2 * I * H];
            Fill(gateUp[e]!, 100 + 2 * e);
            down[e] = new ushort[H * I];
            Fill(down[e]!, 101 + 2 * e);
        }
        return new MoeCase { Shape = s, Tokens = tokens, Hidden = hidden, Router = router, GateUp = gateUp, Down = down, RefIds = ids, RefWeights = wts };
    }

    /// <summary>Multiples of 2^-6 in [-1/8, 1/8] (17 levels) from a counter hash: exact-sum data.</summary>
    public static void Fill(ushort[] dst, int seed)
    {
        Parallel.For(0, (dst.Length + 65535) / 65536, b =>
        {
            int end = Math.Min(dst.Length, (b + 1) * 65536);
            for (int i = b * 65536; i < end; i++)
            {
                ulong x = (ulong)(uint)seed * 0x9E3779B97F4A7C15UL ^ (ulong)i * 0xD1B54A32D192ED03UL;
                x ^= x >> 31; x *= 0xBF58476D1CE4E5B9UL; x ^= x >> 29;
                dst[i] = Bf16.FromFloat(((int)(x % 17) - 8) / 64f);
            }
        });
    }

    /// <summary>The reference output bf16(sum_j w_j * Expert_j(h)) [T, H] (+ residual as a bf16 add when given).</summary>
    public float[] Reference(ushort[]? residual = null)
    {
        int H = Shape.Hidden, I = Shape.Inter, k = Shape.TopK;
        var hf = KernelData.ToFloats(Hidden);
        var slotOut = new float[Tokens * k * H];
        Parallel.For(0, Tokens * k, s =>
        {
            int t = s / k, e = RefIds[s];
            var g = GateUp[e]!;
            ReferenceOps.SwiGluMlp(hf.AsSpan(t * H, H), g.AsSpan(0, I * H), g.AsSpan(I * H, I * H), Down[e], slotOut.AsSpan(s * H, H), 1, H, I);
        });
        var y = new float[Tokens * H];
        for (int t = 0; t < Tokens; t++)
        {
            for (int j = 0; j < k; j++)
            {
                float w = RefWeights[t * k + j];
                for (int i = 0; i < H; i++) y[t * H + i] += w * slotOut[(t * k + j) * H + i];
            }
            for (int i = 0; i < H; i++)
            {
                y[t * H + i] = Bf16.Round(y[t * H + i]);
                if (residual != null) y[t * H + i] = Bf16.Round(Bf16.ToFloat(residual[t * H + i]) + y[t * H + i]);
            }
        }
        return y;
    }

    /// <summary>
    /// Tolerance per element: |d| &lt;= 2^-7 |ref| + 2^-7 rms(ref). The routing and the bf16 gate/up values are exact
    /// (exact-sum data), so differences come from silu's exp (fp32 ulps, sometimes one bf16 ulp of an activation) and the
    /// down projection's fp32 summation order (sometimes one bf16 ulp of an expert output): one carried ulp (2^-8
    /// relative) plus the final rounding. The absolute term covers outputs that cancel to near zero, whose error is the
    /// flipped activations' share, 2^-8 |a w| each. On a GPU (and the emulator's hardware-like math) expf rests on
    /// ex2.approx, 2 ulp from the correctly rounded result (PTX ISA), where the exact emulator is within half an ulp: about
    /// five times as many activations lie within reach of a bf16 rounding boundary, and a cancelling output may carry two
    /// flipped terms: 2 x 2^-8 rms. (With one, 2^-8 rms, the small 300-token case measured up to 1.32x that bound over
    /// hardware-math seeds 0-5; exact math 0.44x.) Also a sanity check against all-zero outputs (the tolerance scales with
    /// rms): the tiny preset shape (H 64, I 32) gives rms ~3e-4.
    /// </summary>
    public static void Compare(Checker c, float[] reference, ushort[] actual, string what)
    {
        double rms = Math.Sqrt(reference.Select(v => (double)v * v).Average());
        var tol = reference.Select(r => (float)(Math.Abs(r) / 128.0 + rms / 128.0)).ToArray();
        c.Within(KernelData.ToFloats(actual), reference, tol, "2^-7|ref| + 2^-7 rms(ref)", what);
        c.True(rms > 1e-4, "test data not degenerate (rms of the reference > 1e-4)", $"rms {rms:G3}");
    }
}

/// <summary>
/// The stacked expert weights of one shape on a check context (freed with it), shared by every case of that shape: expert
/// weights depend on the expert index only (<see cref="MoeCase.Create"/>), so <see cref="Ensure"/> uploads each expert a
/// case routes to once. Experts no case uses are left as the device leaves them (the emulator's poison, NaN by default), so
/// reading one by mistake shows in the outputs.
/// </summary>
public sealed class MoeWeightsOnDevice
{
    private readonly KernelCheckContext _ctx;
    private readonly bool[] _uploaded;
    public MoeShape Shape { get; }
    public DevicePtr GateUp { get; }
    public DevicePtr Down { get; }

    public MoeWeightsOnDevice(KernelCheckContext ctx, MoeShape s)
    {
        _ctx = ctx;
        Shape = s;
        _uploaded = new bool[s.Experts];
        GateUp = ctx.Alloc<ushort>(MoeWeightPacking.GateUpElements(s.Experts, s.Inter, s.Hidden));
        Down = ctx.Alloc<ushort>(MoeWeightPacking.DownElements(s.Experts, s.Hidden, s.Inter));
    }

    /// <summary>The shared weights of <paramref name="s"/> on <paramref name="ctx"/>, with the experts of <paramref name="c"/> uploaded.</summary>
    public static MoeWeightsOnDevice For(KernelCheckContext ctx, MoeShape s, MoeCase c)
    {
        var w = ctx.Cached($"moe-weights {s.Experts}x{s.Hidden}x{s.Inter}", () => new MoeWeightsOnDevice(ctx, s with { NormTopkProb = true }));
        w.Ensure(c);
        return w;
    }

    public void Ensure(MoeCase c)
    {
        var s = Shape;
        for (int e = 0; e < s.Experts; e++)
        {
            if (_uploaded[e] || c.GateUp[e] is not { } g || c.Down[e] is not { } d) continue;
            _ctx.Device.CopyToDevice(GateUp + MoeWeightPacking.GateUpExpertOffsetBytes(e, s.Inter, s.Hidden), System.Runtime.InteropServices.MemoryMarshal.AsBytes(g.AsSpan()));
            _ctx.Device.CopyToDevice(Down + MoeWeightPacking.DownExpertOffsetBytes(e, s.Hidden, s.Inter), System.Runtime.InteropServices.MemoryMarshal.AsBytes(d.AsSpan()));
            _uploaded[e] = true;
        }
    }
}

/// <summary>One case's inputs, output and workspace on a context, and the MoE block run over them.</summary>
public sealed class MoeRun
{
    public KernelCheckContext Ctx { get; }
    public MoeCase Case { get; }
    public MoeWeightsOnDevice Weights { get; }
    public MoeLaunchers Moe { get; }
    public int Tokens { get; }
    public MoeWorkspace Layout { get; }
    public DevicePtr Hidden, Router, Output, Workspace;

    /// <summary>Runs the first <paramref name="tokens"/> tokens of the case (all by default).</summary>
    public MoeRun(KernelCheckContext ctx, MoeWeightsOnDevice weights, MoeCase c, int tokens = -1)
    {
        Ctx = ctx;
        Case = c;
        Weights = weights;
        Moe = ctx.Cached("moe", () => new MoeLaunchers(ctx.Loader));
        Tokens = tokens < 0 ? c.Tokens : tokens;
        Hidden = ctx.Upload(c.Hidden);
        Router = ctx.Upload(c.Router);
        Output = ctx.Alloc<ushort>((long)Tokens * c.Shape.Hidden);
        Layout = MoeWorkspace.Compute(Tokens, c.Shape);
        Workspace = ctx.Alloc<byte>(Layout.TotalBytes);
        Moe.ClearTickets(ctx.Stream, Workspace, Layout);
    }

    public void Run(DevicePtr residual = default) =>
        Moe.MoeBlock(Ctx.Stream, Case.Shape, Tokens, Hidden, Router, Weights.GateUp, Weights.Down, residual, Output, Workspace, Layout.TotalBytes);

    public ushort[] ReadOutput() => Ctx.Download<ushort>(Output, Tokens * Case.Shape.Hidden);
    public int[] ReadIds() => Ctx.Download<int>(Workspace + Layout.TopkIds, Tokens * Case.Shape.TopK);
    public float[] ReadWeights() => Ctx.Download<float>(Workspace + Layout.TopkWeights, Tokens * Case.Shape.TopK);
}
