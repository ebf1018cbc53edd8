using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// The quantized variants (kernels/quant.cuh; docs/formats.md) of gemv.cu, gemm.cu, moe_decode.cu and moe_gemm.cu. The
/// reference is the bf16 computation on the weights dequantized on the host (WeightQuantization, the CPU reference
/// model's path): the kernels must dequantize to exactly those bf16 values, so the bf16 families' tolerances hold
/// unchanged. Real decode shapes also hold their DRAM traffic on the emulator to within 5% of the quantized bytes.
/// </summary>
public static class QuantizedCases
{
    static readonly WeightFormat[] Formats = [WeightFormat.Fp8Block, WeightFormat.Int8Channel, WeightFormat.Int4Gptq];

    public static IEnumerable<KernelCase> Gemv()
    {
        foreach (var f in Formats)
        {
            bool int4 = f == WeightFormat.Int4Gptq;           // int4: K a multiple of its 32-weight loads and groups
            yield return GemvCase(f, 3, 1000, int4 ? 160 : 144, true);   // odd: K = one full and one partial 128-block (int4: 5 groups of 32), residual
            yield return GemvCase(f, 5, 37, int4 ? 64 : 48, false);      // tiny K, N below one CTA's rows
            yield return GemvCase(f, 8, 512, 4096, true);     // split-K (the x slice of 8 tokens does not fit), residual
            yield return GemvCase(f, 1, 5120, 2048, false, "qkv");
            yield return GemvCase(f, 1, 2048, 4096, false, "o_proj");
        }
    }

    public static IEnumerable<KernelCase> Gemm()
    {
        foreach (var f in Formats)
        {
            yield return GemmCase(f, 77, 93, f == WeightFormat.Int4Gptq ? 160 : 144, true, GemmTile.Tile64x64);    // odd M, N; K not a multiple of the 128 block; residual
            yield return GemmCase(f, 130, 200, 96, false, GemmTile.Tile128x128);
            yield return GemmCase(f, 40, 512, 2048, false, null, real: true);
        }
    }

    public static IEnumerable<KernelCase> MoeBlock()
    {
        foreach (var f in Formats)
        {
            yield return BlockCase(f, "tiny preset shape E 8 k 2 H 64 I 32, 3 tokens (decode GEMVs)", new MoeShape(8, 2, 64, 32, true), 3, 30);
            yield return BlockCase(f, "tiny preset shape, 20 tokens (guarded grouped GEMMs)", new MoeShape(8, 2, 64, 32, true), 20, 31);
            yield return BlockCase(f, "small shape, 64 tokens (grouped GEMMs)", MoeCase.Small, 64, 32);
            yield return BlockCase(f, "real shape, 1 token (decode) + DRAM bytes per kernel", MoeCase.Real, 1, 33, real: true);
        }
    }

    public static IEnumerable<KernelCase> All() => Gemv().Concat(Gemm()).Concat(MoeBlock());

    /// <summary>A random quantized matrix [n, k] in one of the formats: its stored bytes, fp32 scales (row shift 7 for FP8 blocks) and dequantized bf16.</summary>
    public sealed record QuantizedMatrix(WeightFormat Format, byte[] Q, float[] Scales, ushort[] Dequantized, int Rows, int Cols, ushort[]? HalfScales = null, int Group = 0)
    {
        public WeightOperand Operand(DevicePtr q, DevicePtr scales) => Format switch
        {
            WeightFormat.Fp8Block => WeightOperand.Fp8(q, scales, Cols),
            WeightFormat.Int4Gptq => WeightOperand.Int4(q, scales, Cols, Group),
            _ => WeightOperand.Int8(q, scales),
        };

        public DevicePtr UploadScales(KernelCheckContext ctx) => HalfScales is { } h ? ctx.Upload(h) : ctx.Upload(Scales);

        /// <summary>Distinct DRAM bytes a kernel that reads it all once must move: the weights and the scales.</summary>
        public long Bytes => Q.Length + (HalfScales is { } h ? h.Length * 2L : Scales.Length * 4L);
    }

    public static QuantizedMatrix RandomMatrix(Random rng, WeightFormat f, int n, int k)
    {
        var q = new byte[(long)n * k];
        float[] scales;
        ushort[] deq;
        if (f == WeightFormat.Fp8Block)
        {
            for (long i = 0; i < q.Length; i++) { byte b; do b = (byte)rng.Next(256); while ((b & 0x7F) == 0x7F); q[i] = b; }
            scales = new float[WeightQuantization.Blocks(n) * WeightQuantization.Blocks(k)];
            for (int i = 0; i < scales.Length; i++) scales[i] = (float)(0.5 + rng.NextDouble()) / 256;     // |w| <= 448 * 1.5 / 256
            deq = WeightQuantization.DequantizeFp8(q, scales, n, k);
        }
        else if (f == WeightFormat.Int4Gptq)
        {
            // device layout: [n, k/2] bytes, two random codes each; fp16 scales [n, k/group] (the GPTQ dequantization, zero 8)
            const int group = 32;
            q = new byte[(long)n * k / 2];
            rng.NextBytes(q);
            var half = new ushort[n * (k / group)];
            for (int i = 0; i < half.Length; i++) half[i] = BitConverter.HalfToUInt16Bits((Half)((0.5 + rng.NextDouble()) / 16));
            deq = new ushort[(long)n * k];
            for (int r = 0; r < n; r++)
                for (int kk = 0; kk < k; kk++)
                {
                    int code = (q[(r * (long)k + kk) / 2] >> (4 * (kk & 1))) & 0xF;
                    deq[r * (long)k + kk] = Bf16.FromFloat((code - 8) * (float)BitConverter.UInt16BitsToHalf(half[r * (k / group) + kk / group]));
                }
            return new QuantizedMatrix(f, q, [], deq, n, k, half, group);
        }
        else
        {
            for (long i = 0; i < q.Length; i++) q[i] = (byte)(sbyte)rng.Next(-127, 128);
            scales = new float[n];
            for (int i = 0; i < n; i++) scales[i] = (float)(0.5 + rng.NextDouble()) / 64;
            deq = WeightQuantization.DequantizeInt8(System.Runtime.InteropServices.MemoryMarshal.Cast<byte, sbyte>(q), scales, n, k);
        }
        return new QuantizedMatrix(f, q, scales, deq, n, k);
    }

    static KernelCase GemvCase(WeightFormat f, int tokens, int n, int k, bool residual, string? realName = null) =>
        new("gemv", $"gemv {f.Name()} T {tokens} N {n} K {k}{(residual ? " + residual" : "")}{(realName is null ? "" : $" ({realName})")}", realName is not null, ctx =>
        {
            var gemv = ctx.Cached("gemv-quant", () => new GemvLaunchers(ctx.Loader, Formats));
            var rng = new Random(tokens * 1000 + n + k + (int)f);
            var w = RandomMatrix(rng, f, n, k);
            ushort[] x = KernelData.Random(rng, tokens * k), r = KernelData.Random(rng, tokens * n, 4f);
            DevicePtr dY = ctx.AllocFilled<ushort>(tokens * n);
            GemvPlan plan = gemv.Plan(tokens, n, k, f);
            long ws = plan.PartialBytes(tokens, n);
            DevicePtr dPartial = ws > 0 ? ctx.AllocFilled<byte>(ws, 0) : DevicePtr.Null;   // the split-K tickets start at zero
            DevicePtr dX = ctx.Upload(x), dR = residual ? ctx.Upload(r) : DevicePtr.Null;
            var op = w.Operand(ctx.Upload(w.Q), w.UploadScales(ctx));
            var launches = ctx.RecordLaunches(() => gemv.Gemv(ctx.Stream, dY, n, dX, k, op, dR, tokens, n, k, dPartial, ws));
            var (exp, tol) = KernelReference.ProjectBf16(x, w.Dequantized, residual ? r : null, n, tokens, n, k);
            var c = new Checker();
            c.Within(KernelData.ToFloats(ctx.Download<ushort>(dY, tokens * n)), exp, tol, KernelReference.ProjectToleranceText, $"y (split-K {plan.SplitK})");
            if (realName is not null && launches.Count > 0)
            {
                // Decode is memory-bound: the quantized weights and their scales read once, coalesced, enough CTAs for 132 SMs.
                LaunchRecord l = launches[0];
                long minBytes = w.Bytes + (long)tokens * k * 2 + (long)tokens * n * 2;
                c.AtMost(l.DistinctSectors * 32.0 / minBytes, 1.05, "emulator: distinct DRAM bytes / minimum (weights + scales + x + y)");
                c.AtLeast(l.CoalescingEfficiency, 0.95, "emulator: coalescing");
                c.AtLeast(l.GridBlocks, 132, "emulator: CTAs");
            }
            return c.Result();
        });

    static KernelCase GemmCase(WeightFormat f, int m, int n, int k, bool withResidual, GemmTile? tile, bool real = false) =>
        new("gemm", $"gemm {f.Name()} M {m} N {n} K {k}{(withResidual ? " + residual" : "")} tile {tile?.ToString() ?? "auto"}", real, ctx =>
        {
            var gemm = ctx.Cached("gemm-quant", () => new GemmLaunchers(ctx.Loader, Formats));
            var rng = new Random(m * 31 + n * 7 + k + (int)f);
            int ldc = n + (n & 1);
            var w = RandomMatrix(rng, f, n, k);
            ushort[] a = KernelData.Random(rng, m * k), r = KernelData.Random(rng, m * ldc, 4f);
            DevicePtr dC = ctx.AllocFilled<ushort>(m * ldc);
            DevicePtr dA = ctx.Upload(a), dR = withResidual ? ctx.Upload(r) : DevicePtr.Null;
            var op = w.Operand(ctx.Upload(w.Q), w.UploadScales(ctx));
            var launches = ctx.RecordLaunches(() => gemm.Gemm(ctx.Stream, dC, ldc, dA, k, op, k, dR, m, n, k, tile));
            var (exp, tol) = KernelReference.ProjectBf16(a, w.Dequantized, withResidual ? r : null, ldc, m, n, k);
            ushort[] got = ctx.Download<ushort>(dC, m * ldc);
            var packed = new float[m * n];
            for (int i = 0; i < m; i++) for (int j = 0; j < n; j++) packed[i * n + j] = Bf16.ToFloat(got[i * ldc + j]);
            var c = new Checker();
            c.Within(packed, exp, tol, KernelReference.ProjectToleranceText, "C");
            if (launches.Count > 0) c.AtLeast(launches[0].MmaCount, 1, "emulator: runs on the tensor-core path (mma count)");
            return c.Result();
        });

    /// <summary>
    /// A MoE block whose experts are the bf16 case's weights stored quantized without loss: MoeCase's values are multiples of
    /// 2^-6 in [-1/8, 1/8], so with scales 2^-(6+j) (j 0..2, varying per block / row: a wrong scale index shows) the stored
    /// codes are the integers level x 2^j (|.| &lt;= 32, exact in E4M3 and INT8) and dequantize to exactly the bf16 weights.
    /// The block must then match the bf16 reference at the bf16 block's tolerance (MoeCase.Compare).
    /// </summary>
    static KernelCase BlockCase(WeightFormat f, string name, MoeShape s, int tokens, int seed, bool real = false) =>
        new("moe_block", $"moe block {f.Name()}: {name}", real, ctx =>
        {
            var mc = MoeCase.Create(s, tokens, seed);
            int E = s.Experts, H = s.Hidden, I = s.Inter;
            var gateUp = StackLossless(f, mc.GateUp, 2 * I, H, E, sourceRows: I);
            var down = StackLossless(f, mc.Down, H, I, E, sourceRows: H);
            var moe = ctx.Cached("moe-quant", () => new MoeLaunchers(ctx.Loader, formats: Formats));
            var dHidden = ctx.Upload(mc.Hidden);
            var dRouter = ctx.Upload(mc.Router);
            var dOut = ctx.Alloc<ushort>((long)tokens * H);
            var layout = MoeWorkspace.Compute(tokens, s);
            var dWs = ctx.Alloc<byte>(layout.TotalBytes);
            moe.ClearTickets(ctx.Stream, dWs, layout);
            var gu = gateUp.Upload(ctx);
            var dn = down.Upload(ctx);
            var launches = ctx.RecordLaunches(() => moe.MoeBlock(ctx.Stream, s, tokens, dHidden, dRouter, gu, dn, DevicePtr.Null, dOut, dWs, layout.TotalBytes));
            var c = new Checker();
            var ids = ctx.Download<int>(dWs + layout.TopkIds, tokens * s.TopK);
            c.Exact<int>(ids, mc.RefIds, "expert ids (exact: logits are exact)");
            MoeCase.Compare(c, mc.Reference(), ctx.Download<ushort>(dOut, tokens * H), "block output");
            if (real && launches.Count > 0)
            {
                int used = ids.Distinct().Count();
                static long Sec(long b) => (b + 31) / 32 * 32;
                long hidden = Sec(tokens * H * 2L), idBytes = Sec(tokens * s.TopK * 4L), inter = Sec(tokens * s.TopK * I * 2L), y = Sec(tokens * s.TopK * H * 2L);
                var min = new Dictionary<string, long>
                {
                    // both GEMVs in one launch: + the combine's routing weights and output, and the tile counters
                    [$"moe_experts_gemv_{f.Name()}"] = used * (gateUp.ExpertBytes + down.ExpertBytes) + hidden + idBytes + inter + y
                        + Sec(tokens * s.TopK * 4L) + Sec(tokens * H * 2L) + Sec((2 + tokens) * 4L),
                };
                foreach (var l in launches)
                {
                    if (!min.TryGetValue(l.Kernel, out long m)) continue;
                    double ratio = l.DistinctSectors * 32.0 / m;
                    c.True(ratio >= 1, $"emulator: {l.Kernel} moves at least the minimum", $"{ratio:F4}");
                    c.AtMost(ratio, 1.05, $"emulator: {l.Kernel} distinct DRAM bytes / minimum (selected experts' weights + scales + activations)");
                    c.AtLeast(l.CoalescingEfficiency, 0.95, $"emulator: {l.Kernel} coalescing");
                }
                c.True(launches.Count(l => min.ContainsKey(l.Kernel)) == 1, "emulator: the quantized experts' launch ran", string.Join(",", launches.Select(l => l.Kernel)));
            }
            return c.Result();
        });

    /// <summary>Stacked quantized expert weights [E, rows, cols] and their device scales.</summary>
    internal sealed record Stacked(WeightFormat Format, byte[] Q, float[] Scales, int RowShift, int Cols, int Rows, int ExpertCount, long ExpertBytes, ushort[]? HalfScales = null, int Group = 0)
    {
        public WeightOperand Upload(KernelCheckContext ctx) => Format switch
        {
            WeightFormat.Fp8Block => WeightOperand.Fp8(ctx.Upload(Q), ctx.Upload(Scales), Cols, RowShift),
            WeightFormat.Int4Gptq => WeightOperand.Int4(ctx.Upload(Q), ctx.Upload(HalfScales!), Cols, Group),
            _ => WeightOperand.Int8(ctx.Upload(Q), ctx.Upload(Scales)),
        };
    }

    /// <summary>
    /// GPTQ int4 (codes -8..7 around the zero point 8) cannot hold every level of MoeCase's data losslessly, so the
    /// experts' bf16 weights are first adjusted in place (the reference then uses the adjusted values): per (row, group of
    /// K) a scale of 2^-6 keeps the levels -8..7 (8 becomes 7), or 2^-5 keeps even levels (odd ones move one step towards
    /// zero). The values stay multiples of 2^-6 in [-1/8, 1/8], so the bf16 block's exact-sum tolerance still holds.
    /// </summary>
    static Stacked StackInt4(ushort[]?[] experts, int rows, int cols, int count)
    {
        int group = cols % 128 == 0 ? 128 : 32, groups = cols / group;
        var half = new ushort[(long)rows * count * groups];
        int J(long row, int g) => (int)((((ulong)(row * 7919 + g * 104729 + 29) * 2654435761UL) >> 20) % 2);
        for (long r = 0; r < (long)rows * count; r++)
            for (int g = 0; g < groups; g++) half[r * groups + g] = BitConverter.HalfToUInt16Bits((Half)MathF.ScaleB(1, -6 + J(r, g)));
        var q = new byte[(long)rows * count * cols / 2];
        for (int e = 0; e < count; e++)
        {
            if (experts[e] is not { } w) continue;   // unused: codes 0 (never read)
            for (int r = 0; r < rows; r++)
            {
                long grow = (long)e * rows + r;
                for (int k = 0; k < cols; k++)
                {
                    int j = J(grow, k / group);
                    int level = (int)(Bf16.ToFloat(w[r * cols + k]) * 64);
                    level = j == 0 ? Math.Min(level, 7) : level / 2 * 2;
                    w[r * cols + k] = Bf16.FromFloat(level / 64f);
                    int code = (level >> j) + 8;
                    q[(grow * cols + k) / 2] |= (byte)(code << (4 * (k & 1)));
                }
            }
        }
        long expertBytes = (long)rows * cols / 2 + (long)rows * groups * 2;
        return new Stacked(WeightFormat.Int4Gptq, q, [], 0, cols, rows, count, expertBytes, half, group);
    }

    internal static Stacked StackLossless(WeightFormat f, ushort[]?[] experts, int rows, int cols, int count, int sourceRows)
    {
        if (f == WeightFormat.Int4Gptq) return StackInt4(experts, rows, cols, count);
        int rowShift = f == WeightFormat.Fp8Block && sourceRows % 128 == 0 ? 7 : 0;
        int scaleCols = f == WeightFormat.Fp8Block ? WeightQuantization.Blocks(cols) : 1;
        int kShift = f == WeightFormat.Fp8Block ? 7 : 30;
        long totalRows = (long)rows * count;
        var scales = new float[(totalRows >> rowShift) * scaleCols];
        int J(long srow, int kb) => (int)((((ulong)(srow * 7919 + kb * 104729 + 17) * 2654435761UL) >> 20) % 3);
        for (long sr = 0; sr < totalRows >> rowShift; sr++)
            for (int kb = 0; kb < scaleCols; kb++) scales[sr * scaleCols + kb] = MathF.ScaleB(1, -(6 + J(sr, kb)));
        var q = new byte[totalRows * cols];
        for (int e = 0; e < count; e++)
        {
            if (experts[e] is not { } w) { Array.Fill(q, f == WeightFormat.Fp8Block ? (byte)0x7F : (byte)0x80, e * rows * cols, rows * cols); continue; }   // unused: NaN / -128, never read
            for (int r = 0; r < rows; r++)
            {
                long grow = (long)e * rows + r;
                for (int k = 0; k < cols; k++)
                {
                    int j = J(grow >> rowShift, k >> kShift);
                    float level = Bf16.ToFloat(w[r * cols + k]) * 64 * (1 << j);   // exact integer, |.| <= 32
                    q[grow * cols + k] = f == WeightFormat.Fp8Block ? Fp8E4M3.FromFloat(level) : (byte)(sbyte)level;
                }
            }
        }
        long expertBytes = (long)rows * cols + (long)rows / (1 << rowShift) * scaleCols * 4;
        return new Stacked(f, q, scales, rowShift, cols, rows, count, expertBytes);
    }
}
