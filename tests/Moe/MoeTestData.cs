using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>
/// Inputs of one MoE block test and its CPU reference. Values are "exact-sum" bf16: multiples of 2^-6 in
/// [-1/8, 1/8] for hidden, router and gate/up weights, so every router logit and every gate/up dot product is
/// exact in fp32 whatever the summation order (products are multiples of 2^-12, sums stay far below 2^24 units).
/// That makes routing and the bf16 gate/up values identical on CPU and device; only silu's exp (fp32 ulps)
/// and the down projection's fp32 reduction order can differ, which the tolerances below cover.
/// The reference follows docs/architecture.md ("A decode step") through Qwen3Cuda.Model.Reference.ReferenceOps
/// (Matmul, RouterTopK, SwiGluMlp) and combines in fp32 in rank order, rounding once.
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
        var hf = ToFloat(hidden);
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

    public static float[] ToFloat(ushort[] bits)
    {
        var f = new float[bits.Length];
        Bf16.ToFloat(bits, f);
        return f;
    }

    /// <summary>The reference output bf16(sum_j w_j * Expert_j(h)) [T, H] (+ residual as a bf16 add when given).</summary>
    public float[] Reference(ushort[]? residual = null)
    {
        int H = Shape.Hidden, I = Shape.Inter, k = Shape.TopK;
        var hf = ToFloat(Hidden);
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
}

/// <summary>An emulated device holding the stacked expert weights used by one or more cases of one shape.</summary>
public sealed class MoeDevice : IDisposable
{
    public EmulatedDevice Device { get; }
    public KernelLoader Loader { get; }
    public MoeLaunchers Moe { get; }
    public MoeShape Shape { get; }
    public DevicePtr GateUp { get; }
    public DevicePtr Down { get; }

    public MoeDevice(MoeShape s, params MoeCase[] cases) : this(s, null, cases) { }

    public MoeDevice(MoeShape s, EmulatorOptions? options, params MoeCase[] cases)
    {
        Shape = s;
        Device = new EmulatedDevice(options);
        Loader = new KernelLoader(Device);
        Moe = new MoeLaunchers(Loader);
        if (cases.Length == 0) return; // kernel-level tests without experts
        // Full stacked arrays; experts no token uses keep the emulator's poison (0xFFFF = bf16 NaN), so reading
        // one by mistake turns outputs into NaN.
        GateUp = Device.Allocate(MoeWeightPacking.GateUpElements(s.Experts, s.Inter, s.Hidden) * 2);
        Down = Device.Allocate(MoeWeightPacking.DownElements(s.Experts, s.Hidden, s.Inter) * 2);
        for (int e = 0; e < s.Experts; e++)
        {
            if (cases.Select(c => c.GateUp[e]).FirstOrDefault(g => g != null) is { } g)
                Device.CopyToDevice(GateUp + MoeWeightPacking.GateUpExpertOffsetBytes(e, s.Inter, s.Hidden), AsBytes(g));
            if (cases.Select(c => c.Down[e]).FirstOrDefault(d => d != null) is { } d)
                Device.CopyToDevice(Down + MoeWeightPacking.DownExpertOffsetBytes(e, s.Hidden, s.Inter), AsBytes(d));
        }
    }

    public DevicePtr Upload<T>(T[] data) where T : unmanaged
    {
        var p = Device.Allocate(Math.Max(1, AsBytes(data).Length));
        Device.CopyToDevice(p, AsBytes(data));
        return p;
    }

    public static ReadOnlySpan<byte> AsBytes<T>(T[] a) where T : unmanaged => System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan());

    public T[] Read<T>(DevicePtr p, int count) where T : unmanaged
    {
        var a = new T[count];
        Device.CopyToHost(System.Runtime.InteropServices.MemoryMarshal.AsBytes(a.AsSpan()), p);
        return a;
    }

    public void Dispose()
    {
        Loader.Dispose();
        Device.Dispose();
    }
}

/// <summary>One case's inputs, output and workspace on a <see cref="MoeDevice"/>.</summary>
public sealed class MoeRun
{
    public MoeDevice Dev { get; }
    public MoeCase Case { get; }
    public int Tokens { get; }
    public MoeWorkspace Layout { get; }
    public DevicePtr Hidden, Router, Output, Workspace;

    /// <summary>Runs the first <paramref name="tokens"/> tokens of the case (all by default).</summary>
    public MoeRun(MoeDevice dev, MoeCase c, int tokens = -1)
    {
        Dev = dev;
        Case = c;
        Tokens = tokens < 0 ? c.Tokens : tokens;
        Hidden = dev.Upload(c.Hidden);
        Router = dev.Upload(c.Router);
        Output = dev.Device.Allocate((long)Tokens * c.Shape.Hidden * 2);
        Layout = MoeWorkspace.Compute(Tokens, c.Shape);
        Workspace = dev.Device.Allocate(Layout.TotalBytes);
    }

    public void Run(DevicePtr residual = default) =>
        Dev.Moe.MoeBlock(Dev.Device.DefaultStream, Case.Shape, Tokens, Hidden, Router, Dev.GateUp, Dev.Down, residual, Output, Workspace, Layout.TotalBytes);

    public ushort[] ReadOutput() => Dev.Read<ushort>(Output, Tokens * Case.Shape.Hidden);
    public int[] ReadIds() => Dev.Read<int>(Workspace + Layout.TopkIds, Tokens * Case.Shape.TopK);
    public float[] ReadWeights() => Dev.Read<float>(Workspace + Layout.TopkWeights, Tokens * Case.Shape.TopK);
}
