using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// gemv.cu (the decode GEMV, split-K) and gemm.cu (the prefill tensor-core GEMM) against the fp64 product rounded as the
/// kernels round (<see cref="KernelReference.ProjectBf16"/>). On the emulator the real decode shapes also hold their
/// DRAM traffic and coalescing to bounds.
/// </summary>
public static class ProjectionCases
{
    public static IEnumerable<KernelCase> Gemv()
    {
        yield return GemvCase(8, 512, 4096, true);     // o_proj K + residual, 8 tokens: x slice too big, split-K 2
        yield return GemvCase(2, 128, 2048, false);    // router: split-K to fill the SMs
        yield return GemvCase(5, 37, 24, false);       // odd: N not a multiple of the CTA rows, K of 3 chunks
        yield return GemvCase(3, 1000, 136, true);     // odd: ragged chunk count, residual epilogue
        yield return GemvCase(1, 20000, 64, false);    // many rows per warp (the lm_head plan with a small K)
        yield return GemvCase(1, 5120, 2048, false, "qkv");            // real decode shapes: weights read once, coalesced, >= 132 CTAs
        yield return GemvCase(1, 2048, 4096, false, "o_proj");
        yield return GemvCase(1, 151936, 2048, false, "lm_head", heavy: true);   // 311 MB of weights: ~40 s on the emulator
        // gemv_bf16_mma (tensor cores; the real shapes above run it too, and the lm_head with 8 row groups of one warp): 4
        // tokens + residual, 8 tokens with the last CTA's rows past N, 2 tokens with K 256 (one 32-wide step per warp);
        // 4 tokens at N 1024 fill only 128 CTAs, so they keep the CUDA-core kernel that splits K
        yield return GemvCase(4, 2048, 2048, true);
        yield return GemvCase(8, 1100, 512, false);
        yield return GemvCase(2, 4096, 256, true);
        yield return GemvCase(4, 1024, 2048, true);
        foreach (var q in QuantizedCases.Gemv()) yield return q;               // fp8 / int8 weights (docs/formats.md)
        // RMSNorm prologue (the input norm -> qkv, the final norm -> lm_head, a dense layer's post norm -> gate_up)
        yield return GemvNormCase(1, 5120, 2048, "qkv + input norm");           // real decode shape, one row of x per CTA's norm
        yield return GemvNormCase(3, 1000, 136);                               // 17 chunks: ragged last warp of the norm
        yield return GemvNormCase(8, 512, 4104);                               // 513 chunks (544 norm threads on 8 warps), split-K 3
        yield return GemvNormCase(5, 37, 24);                                  // 3 chunks: one partial warp
        yield return GemvNormCase(3, 1200, 1024);                              // tensor cores, 3 tokens, norm prologue
        yield return GemvNormCase(8, 2048, 2048);                              // tensor cores, 8 tokens: 33 KB of staged h (the fp32 slice split K)
    }

    public static IEnumerable<KernelCase> Gemm()
    {
        yield return GemmCase(64, 64, 32, false, GemmTile.Tile64x64);       // exactly one tile
        yield return GemmCase(77, 93, 136, true, GemmTile.Tile64x64);       // odd M, N; K = 4 tiles + 8 (zero-filled tail); residual
        yield return GemmCase(1, 10, 8, false, GemmTile.Tile64x64);         // one row, tiny K
        yield return GemmCase(130, 200, 96, true, GemmTile.Tile128x128);    // big tile with ragged edges
        yield return GemmCase(40, 512, 2048, false, null, real: true);      // k_proj of a 40-token prefill chunk (launcher's choice)
        foreach (var q in QuantizedCases.Gemm()) yield return q;
    }

    public static IEnumerable<KernelCase> All() => Gemv().Concat(Gemm());

    static KernelCase GemvCase(int tokens, int n, int k, bool residual, string? realName = null, bool heavy = false) =>
        new("gemv", $"gemv T {tokens} N {n} K {k}{(residual ? " + residual" : "")}{(realName is null ? "" : $" ({realName})")}", realName is not null, ctx =>
        {
            var gemv = ctx.Cached("gemv", () => new GemvLaunchers(ctx.Loader));
            var rng = new Random(realName is null ? tokens * 1000 + n + k : n + k);
            ushort[] x = KernelData.Random(rng, tokens * k), w = KernelData.Random(rng, n * k), r = KernelData.Random(rng, tokens * n, 4f);
            DevicePtr dY = ctx.AllocFilled<ushort>(tokens * n);
            GemvPlan plan = gemv.Plan(tokens, n, k);
            long ws = plan.PartialBytes(tokens, n);
            DevicePtr dPartial = ws > 0 ? ctx.AllocFilled<byte>(ws, 0) : DevicePtr.Null;   // the split-K tickets start at zero
            DevicePtr dX = ctx.Upload(x), dW = ctx.Upload(w), dR = residual ? ctx.Upload(r) : DevicePtr.Null;
            var launches = ctx.RecordLaunches(() => gemv.Gemv(ctx.Stream, dY, n, dX, k, dW, dR, tokens, n, k, dPartial, ws));
            var (exp, tol) = KernelReference.ProjectBf16(x, w, residual ? r : null, n, tokens, n, k);
            var c = new Checker();
            ExpectKernel(c, launches, plan, tokens);
            c.Within(KernelData.ToFloats(ctx.Download<ushort>(dY, tokens * n)), exp, tol, KernelReference.ProjectToleranceText, $"y (split-K {plan.SplitK}{(plan.TensorCores ? ", tensor cores" : "")})");
            if (plan.SplitK > 1)
            {
                // The last CTA of each row block combined the partials and reset its ticket: one launch, tickets zero again.
                c.Exact<int>(ctx.Download<int>(dPartial, plan.GridX), new int[plan.GridX], "split-K tickets reset for the next launch");
                if (launches.Count > 0) c.True(launches.Count == 1, "emulator: no separate split-K combine launch", string.Join(",", launches.Select(l => l.Kernel)));
            }
            if (realName is not null && launches.Count > 0)
            {
                // Decode is memory-bound: the weights read once (distinct 32-byte sectors within 5% of the bytes that must
                // move), coalesced accesses, and enough CTAs for 132 SMs.
                LaunchRecord l = launches[0];
                long minBytes = (long)n * k * 2 + (long)tokens * k * 2 + (long)tokens * n * 2;
                c.AtMost(l.DistinctSectors * 32.0 / minBytes, 1.05, "emulator: distinct DRAM bytes / minimum");
                c.AtLeast(l.CoalescingEfficiency, 0.95, "emulator: coalescing");
                c.AtLeast(l.GridBlocks, 132, "emulator: CTAs");
                // o_proj at one token runs from L2 (its weights prefetched during the attention), so its time is the critical
                // warp's chain (docs/timing-model.md, section 2): x with the residual in one round trip, then 16 chunks per
                // lane 4 at a time, 4 more. The DRAM and L2 maxima may come from different warps (whoever touched a sector
                // first), so their sum is 6 here; it was 8 with x in two round trips and the residual read after the product.
                // Lockstep counters only: interleaved lanes split a warp's loads into more trips.
                if (realName == "o_proj" && !EmulatorModes.Ambient.Interleaved) c.AtMost(l.MaxWarpDramRoundTrips + l.MaxWarpL2RoundTrips, 6, "emulator: a warp's dependent round trips (max DRAM + max L2)");
            }
            return c.Result();
        }, heavy);

    /// <summary>
    /// The GEMV with its RMSNorm prologue against the unfused pair (add_rmsnorm_bf16 into h, then the plain GEMV): y bitwise
    /// equal (the prologue sums the squares in add_rmsnorm_bf16's order), in one launch instead of two; the pair's h against
    /// the fp64 RMSNorm reference and its y against the product reference of that h, at the existing tolerances.
    /// </summary>
    static KernelCase GemvNormCase(int tokens, int n, int k, string? realName = null) =>
        new("gemv", $"gemv T {tokens} N {n} K {k} with the RMSNorm prologue{(realName is null ? "" : $" ({realName})")}", realName is not null, ctx =>
        {
            var gemv = ctx.Cached("gemv", () => new GemvLaunchers(ctx.Loader));
            var rms = ctx.Cached("rmsnorm", () => new RmsNormLaunchers(ctx.Loader));
            var rng = new Random(tokens * 77 + n + k);
            ushort[] x = KernelData.Random(rng, tokens * k, 4f), w = KernelData.Random(rng, n * k), nw = KernelData.Random(rng, k, 1.5f);
            const float eps = 1e-6f;
            GemvPlan plan = gemv.Plan(tokens, n, k);
            long ws = plan.PartialBytes(tokens, n);
            DevicePtr dPartial = ws > 0 ? ctx.AllocFilled<byte>(ws, 0) : DevicePtr.Null;   // the split-K tickets start at zero
            DevicePtr dX = ctx.Upload(x), dW = ctx.Upload(w), dNw = ctx.Upload(nw);
            DevicePtr dH = ctx.AllocFilled<ushort>(tokens * k), dY1 = ctx.AllocFilled<ushort>(tokens * n), dY2 = ctx.AllocFilled<ushort>(tokens * n);
            rms.AddRmsNorm(ctx.Stream, dH, dX, DevicePtr.Null, dNw, tokens, k, eps);
            gemv.Gemv(ctx.Stream, dY1, n, dH, k, dW, DevicePtr.Null, tokens, n, k, dPartial, ws);
            ctx.Synchronize();   // the pair's launches stay out of the record below
            var launches = ctx.RecordLaunches(() => gemv.Gemv(ctx.Stream, dY2, n, dX, k, WeightOperand.Bf16(dW), DevicePtr.Null, tokens, n, k, dPartial, ws, dNw, eps));
            ushort[] h = ctx.Download<ushort>(dH, tokens * k), y1 = ctx.Download<ushort>(dY1, tokens * n), y2 = ctx.Download<ushort>(dY2, tokens * n);
            var c = new Checker();
            ExpectKernel(c, launches, gemv.Plan(tokens, n, k, WeightFormat.Bf16, normPrologue: true), tokens);
            c.Exact<ushort>(y2, y1, $"fused y == add_rmsnorm_bf16 + gemv y, bitwise (split-K {plan.SplitK})");
            if (launches.Count > 0) c.True(launches.Count == 1, "emulator: one launch (no norm kernel, no split-K combine)", string.Join(",", launches.Select(l => l.Kernel)));
            float[] xf = KernelData.ToFloats(x), nwf = KernelData.ToFloats(nw), hRef = new float[tokens * k];
            for (int t = 0; t < tokens; t++) KernelReference.RmsNorm(xf.AsSpan(t * k, k), nwf, eps, hRef.AsSpan(t * k, k));
            c.CloseBf16(h, hRef, NormRopeCases.RmsAtol, NormRopeCases.RmsRtol, "h (the unfused norm) vs the fp64 RMSNorm");
            var (exp, tol) = KernelReference.ProjectBf16(h, w, null, n, tokens, n, k);
            c.Within(KernelData.ToFloats(y1), exp, tol, KernelReference.ProjectToleranceText, "y of that h");
            return c.Result();
        });

    /// <summary>The launch ran the kernel its plan names: gemv_bf16_mma (with mma instructions on the emulator) when the
    /// plan is on tensor cores (<see cref="GemvLaunchers.TensorCorePlan"/>), gemv_bf16_t{T} otherwise.</summary>
    static void ExpectKernel(Checker c, IReadOnlyList<LaunchRecord> launches, GemvPlan plan, int tokens)
    {
        if (launches.Count == 0) return;   // a GPU run records no launches
        string want = plan.TensorCores ? GemvLaunchers.TensorCoreKernel : $"gemv_bf16_t{tokens}";
        c.True(launches[0].Kernel == want, $"the kernel: {want}", launches[0].Kernel);
        if (plan.TensorCores) c.AtLeast(launches[0].MmaCount, 1, "emulator: mma instructions");
    }

    static KernelCase GemmCase(int m, int n, int k, bool withResidual, GemmTile? tile, bool real = false) =>
        new("gemm", $"gemm M {m} N {n} K {k}{(withResidual ? " + residual" : "")} tile {tile?.ToString() ?? "auto"}", real, ctx =>
        {
            var gemm = ctx.Cached("gemm", () => new GemmLaunchers(ctx.Loader));
            var rng = new Random(m * 31 + n * 7 + k);
            int ldc = n + (n & 1);   // odd N: C and residual rows padded to an even stride (bf16x2 stores)
            ushort[] a = KernelData.Random(rng, m * k), w = KernelData.Random(rng, n * k), r = KernelData.Random(rng, m * ldc, 4f);
            DevicePtr dC = ctx.AllocFilled<ushort>(m * ldc);
            DevicePtr dA = ctx.Upload(a), dW = ctx.Upload(w), dR = withResidual ? ctx.Upload(r) : DevicePtr.Null;
            var launches = ctx.RecordLaunches(() => gemm.Gemm(ctx.Stream, dC, ldc, dA, k, dW, k, dR, m, n, k, tile));
            var (exp, tol) = KernelReference.ProjectBf16(a, w, withResidual ? r : null, ldc, m, n, k);
            ushort[] got = ctx.Download<ushort>(dC, m * ldc);
            var packed = new float[m * n];
            int padWritten = 0;
            for (int i = 0; i < m; i++)
            {
                for (int j = 0; j < n; j++) packed[i * n + j] = Bf16.ToFloat(got[i * ldc + j]);
                if (ldc > n && got[i * ldc + n] != 0xffff) padWritten++;
            }
            var c = new Checker();
            c.Within(packed, exp, tol, KernelReference.ProjectToleranceText, "C");
            c.True(padWritten == 0, "padding column untouched", $"{padWritten} rows had their padding column written");
            if (launches.Count > 0) c.AtLeast(launches[0].MmaCount, 1, "emulator: runs on the tensor-core path (mma count)");
            return c.Result();
        });
}
