using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// attention_decode.cu (flash decoding: split-K + combine) and attention_prefill.cu (causal flash attention on tensor cores)
/// over a paged KV cache in scrambled page order, against fp64 softmax attention; and the rope -> prefill -> decode
/// pipeline at head_dim 16 and 32 against the model's own ReferenceOps.
/// </summary>
public static class AttentionCases
{
    // Decode: the output is a convex combination of bf16 values in [-1, 1], rounded once to bf16 (half an ulp: 2^-9
    // relative); fp32 online softmax with ex2.approx (2^-22 relative) and fp32 accumulation over up to 4096 keys adds < 1e-4
    // absolute against the fp64 reference. So rtol 2^-8 and atol 5e-4.
    // Prefill: P goes into the mma as bf16 hi + lo (~2^-17 relative per weight) and the output is rounded once to bf16: the
    // decode kernel's tolerance (with a single bf16 P this needed 2e-3 absolute; 5e-4 fails for it).
    private const double Atol = 5e-4, Rtol = 1.0 / 256;

    public static IEnumerable<KernelCase> Decode()
    {
        yield return DecodeCase([1, 17, 100], 32, 4, 16, 64, 1, 128, real: true);   // real heads; 1 key, page-crossing lengths; split path
        yield return DecodeCase([33, 5], 32, 4, 16, 1, 2, 128, real: true);         // one split: direct bf16 output, no combine
        yield return DecodeCase([70], 6, 2, 16, 64, 3, 128);                        // odd: group of 3 (warp 1 has one head), tail tile of 6 keys
        yield return DecodeCase([300, 31], 8, 1, 8, 64, 4, 128);                    // group of 8 over one KV head, page size 8
        yield return DecodeCase([1, 40, 75], 8, 2, 4, 64, 5, 32);                   // D 32 (one dim per lane; the small preset), split path, page size 4
        yield return DecodeCase([45, 3], 4, 2, 8, 1, 6, 32);                        // D 32, one split: scalar bf16 output
        yield return DecodeCase([150], 4, 2, 16, 64, 7, 64);                        // D 64 (3 one-tile splits)
        yield return DecodeCase([2, 66], 4, 2, 4, 64, 8, 16);                       // D 16 (the tiny preset; half the threads load, lanes 16..31 do not store)
        yield return DecodeCase([4096], 32, 4, 16, 128, 11, 128, real: true, counters: true);   // real heads, 4096 keys: K/V read once
        yield return DecodeCase([20000, 3], 4, 2, 4, 512, 15, 32);                  // long context: 40 splits of <= 8 tiles, 5000 pages; a 3-key row with empty splits
        yield return DecodeCase([1025, 130], 32, 4, 16, 64, 20, 128, real: true, maxContext: 40960);   // planned for 40k keys: each row on its own plan (17 and 3 splits)
        // the tensor-core split: several 64-key tiles per CTA with ranges that are not a multiple of the tile (2 splits of 352 /
        // 348 keys: idle warps in the last tile, a partial warp share), group of 1, and one 260-key split (5 tiles, direct output)
        yield return DecodeCase([700, 9], 8, 1, 16, 2, 16, 128);
        yield return DecodeCase([611], 2, 2, 8, 2, 17, 64);
        yield return DecodeCase([260, 70], 16, 2, 16, 1, 18, 128, fp8: true);
        yield return DecodeCase([130, 37], 8, 2, 16, 64, 19, 256);                  // D 256: the scalar split (no tensor cores) kept at compile time
        // --kv-cache-dtype fp8 (KV_FP8): E4M3 codes decoded exactly, so the same reference and tolerance; K/V bytes halved
        yield return DecodeCase([1, 17, 100], 32, 4, 16, 64, 12, 128, real: true, fp8: true);
        yield return DecodeCase([4096], 32, 4, 16, 128, 13, 128, real: true, counters: true, fp8: true);
        yield return DecodeCase([2, 66], 4, 2, 4, 64, 14, 16, fp8: true);
    }

    /// <summary>
    /// attn_decode_fused (q/k norm + RoPE + KV write + attention + combine in one launch) against the separate kernels it
    /// replaces (qk_norm_rope_kv_write, then attn_decode_split + attn_decode_combine) bit for bit, and against ReferenceOps.
    /// </summary>
    public static IEnumerable<KernelCase> Fused()
    {
        yield return FusedCase([1, 17, 100], 32, 4, 16, 64, 21, 128, real: true);            // real heads, batch 3: the new key alone, on a new page, mid-page
        yield return FusedCase([33], 32, 4, 16, 1, 22, 128, real: true);                     // batch 1, one split: direct bf16 output, no ticket
        yield return FusedCase([1000], 32, 4, 16, 64, 23, 128, real: true);                  // batch 1 at ~1k context: 16 one-tile splits, the ticket combine
        yield return FusedCase([1025], 32, 4, 16, 64, 34, 128, real: true, maxContext: 40960); // a graph for 40k keys at 1k: 17 of its 64 splits work, the others exit
        yield return FusedCase([300, 31, 1], 8, 1, 8, 64, 24, 128, padding: true);           // group of 8 over one KV head, 5 splits of 64 keys; a padding row (slot -1)
        yield return FusedCase([70, 5], 6, 2, 16, 64, 25, 64, perRow: true, scaling: 1.25f); // group of 3, D 64, dynamic RoPE (a table per row), YaRN-like scaling
        yield return FusedCase([9000], 4, 1, 512, 512, 26, 32, perRow: true);                // one row of one KV head: a split per SM (> 64), D 32, combine kernel after
        yield return FusedCase([32000, 3], 4, 2, 64, 512, 31, 32);                           // 63 splits of 8 tiles, the last CTA's combine (7 warps' 8 + 7)
        yield return FusedCase([700, 2], 8, 1, 16, 3, 32, 128);                              // 3 splits of 240 / 240 / 220 keys: several tiles per CTA, the new key in a partial tile
        yield return FusedCase([90, 40], 8, 2, 16, 64, 33, 256);                             // D 256: the scalar split
        yield return FusedCase([2, 66, 1], 4, 2, 4, 64, 27, 16, padding: true);              // D 16 (half warps), page size 4, padding row
        // --kv-cache-dtype fp8: the new key and value as E4M3 codes in the cache, and decoded the same way from registers
        yield return FusedCase([1, 17, 100], 32, 4, 16, 64, 28, 128, real: true, fp8: true);
        yield return FusedCase([1500, 1], 32, 4, 16, 64, 29, 128, real: true, fp8: true, padding: true, scaling: 0.9f);
        yield return FusedCase([2, 66], 4, 2, 4, 64, 30, 16, fp8: true);
    }

    public static IEnumerable<KernelCase> Prefill()
    {
        yield return PrefillCase([5], [5], 4, 1, 1, 128);                  // one short prompt, group of 4
        yield return PrefillCase([70, 1], [70, 40], 8, 2, 2, 128);         // 2 query tiles (ragged), and a 1-token chunk after 39 keys
        yield return PrefillCase([33], [133], 32, 4, 3, 128, real: true);  // chunked prefill after 100 keys of context, real heads
        yield return PrefillCase([20, 16], [20, 50], 4, 2, 4, 32);         // D 32 (the small preset): a prompt, and a chunk after 34 keys
        yield return PrefillCase([9], [40], 4, 2, 5, 16);                  // D 16 (the tiny preset): a chunk after 31 keys
        yield return PrefillCase([70, 1], [70, 40], 8, 2, 6, 128, fp8: true);       // --kv-cache-dtype fp8
        yield return PrefillCase([33], [133], 32, 4, 7, 128, real: true, fp8: true);
        yield return new KernelCase("attention_prefill", "attn_prefill: the first token sees only itself (output = V[0] bitwise)", false, FirstTokenAttendsOnlyToItself);
    }

    public static IEnumerable<KernelCase> SmallHeadDimPipeline()
    {
        yield return new KernelCase("attention_prefill", "rope + prefill + decode attention at D 32 vs ReferenceOps (70 tokens, 4-token pages)", false, ctx => Pipeline(ctx, 32));
        yield return new KernelCase("attention_prefill", "rope + prefill + decode attention at D 16 vs ReferenceOps (70 tokens, 4-token pages)", false, ctx => Pipeline(ctx, 16));
    }

    public static IEnumerable<KernelCase> All() => Decode().Concat(Fused()).Concat(Prefill()).Concat(SmallHeadDimPipeline());

    static float[] Reference(PagedKvFixture kv, ushort[] q, int nH, int d)
    {
        int seqs = kv.ContextLens.Length, group = nH / kv.NumKvHeads;
        var exp = new float[seqs * nH * d];
        Parallel.For(0, seqs * nH, sh =>
        {
            int s = sh / nH, h = sh % nH, kvh = h / group;
            KernelReference.AttendOne(KernelData.ToFloats(q.AsSpan((s * nH + h) * d, d)), (j, i) => kv.KAt(s, j, kvh, i),
                (j, i) => kv.VAt(s, j, kvh, i), kv.ContextLens[s], d, exp.AsSpan((s * nH + h) * d, d));
        });
        return exp;
    }

    /// <summary>A row's splits under a grid of <paramref name="gridSplits"/>: attention_decode.cu's row_splits.</summary>
    static int RowSplits(KernelCheckContext ctx, int seqs, int nKV, int len, int gridSplits) =>
        Math.Min(gridSplits, AttentionDecodeLaunchers.PlanSplits(ctx.Device.Info.MultiprocessorCount, seqs, nKV, len));

    /// <summary>
    /// Exactly each row's own splits wrote a log2-sum-exp (a row of one split writes none: its output directly). The lse
    /// workspace was filled with 0xff bytes, a NaN no split writes, so a split past its row's plan must leave it.
    /// </summary>
    static void RowPlanWritten(Checker c, KernelCheckContext ctx, DevicePtr dLse, int[] lens, int nH, int nKV, int gridSplits)
    {
        float[] lse = ctx.Download<float>(dLse, (long)lens.Length * nH * gridSplits);
        int bad = 0;
        string first = "";
        for (int s = 0; s < lens.Length; s++)
        {
            int own = RowSplits(ctx, lens.Length, nKV, lens[s], gridSplits);
            for (int h = 0; h < nH; h++)
                for (int j = 0; j < gridSplits; j++)
                {
                    bool written = BitConverter.SingleToInt32Bits(lse[((long)s * nH + h) * gridSplits + j]) != -1;
                    if (written == (own > 1 && j < own)) continue;
                    if (bad++ == 0) first = $"row {s} ({lens[s]} keys, {own} of {gridSplits} splits) head {h} split {j}: {(written ? "written" : "not written")}";
                }
        }
        c.True(bad == 0, "exactly each row's own splits wrote partials (the rest exit)", bad == 0 ? "" : $"{bad} wrong; first: {first}");
    }

    /// <param name="maxContext">the longest context the launch is planned for (its grid), when more than the rows' (0: theirs)</param>
    static KernelCase DecodeCase(int[] lens, int nH, int nKV, int pageSize, int workspaceSplits, int seed, int d, bool real = false, bool counters = false, bool fp8 = false,
        int maxContext = 0) =>
        new("attention_decode", $"attn_decode ctx {string.Join("/", lens)}{(maxContext > 0 ? $" of {maxContext}" : "")} heads {nH}/{nKV} D {d} page {pageSize} splits <= {workspaceSplits}{(fp8 ? " fp8 KV" : "")}", real, ctx =>
        {
            var rng = new Random(seed);
            int planned = Math.Max(maxContext, lens.Max());
            var kv = new PagedKvFixture(rng, lens, nKV, d, pageSize, fp8: fp8, maxContextLen: planned);
            var launchers = ctx.Cached($"attn_decode{d}{(fp8 ? "-fp8" : "")}", () => new AttentionDecodeLaunchers(ctx.Loader, d, fp8));
            int seqs = lens.Length;
            ushort[] q = KernelData.Random(rng, seqs * nH * d, 2f);
            long wsBytes = launchers.WorkspaceBytes(seqs, nH, workspaceSplits, out long lseBytes);
            DevicePtr dOut = ctx.AllocFilled<ushort>(seqs * nH * d);
            var a = new DecodeAttentionArgs(ctx.Upload(q), nH * d, kv.UploadK(ctx), kv.UploadV(ctx), ctx.Upload(kv.BlockTable),
                kv.MaxPagesPerSeq, pageSize, ctx.Upload(lens), seqs, planned, nH, nKV, dOut, nH * d,
                ctx.Alloc<byte>(wsBytes), ctx.AllocFilled<float>(lseBytes / sizeof(float)), workspaceSplits);
            int splits = 0;
            var launches = ctx.RecordLaunches(() => splits = launchers.Decode(ctx.Stream, a));
            var c = new Checker();
            c.True(workspaceSplits == 1 ? splits == 1 : splits > 1, "split count", $"{splits} splits for a workspace of {workspaceSplits}");
            int tiles = (planned + AttentionDecodeLaunchers.TileKeys - 1) / AttentionDecodeLaunchers.TileKeys;
            c.True(splits == workspaceSplits || splits >= AttentionDecodeLaunchers.FusedMaxCombineSplits || (tiles + splits - 1) / splits <= AttentionDecodeLaunchers.MaxTilesPerSplit,
                $"at most {AttentionDecodeLaunchers.MaxTilesPerSplit} tiles per split unless the workspace or the {AttentionDecodeLaunchers.FusedMaxCombineSplits}-split cap limits the splits", $"{splits} splits over {tiles} tiles");
            ushort[] got = ctx.Download<ushort>(dOut, seqs * nH * d);
            c.CloseBf16(got, Reference(kv, q, nH, d), Atol, Rtol, "decode attention output");
            if (maxContext > 0)
            {
                RowPlanWritten(c, ctx, a.PartialLse, lens, nH, nKV, splits);
                // each row plans its splits for its own length: the launch planned for the rows' longest gives the same bits
                DevicePtr dOutShort = ctx.AllocFilled<ushort>(seqs * nH * d);
                launchers.Decode(ctx.Stream, a with { MaxContextLen = lens.Max(), Out = dOutShort });
                c.Exact<ushort>(got, ctx.Download<ushort>(dOutShort, seqs * nH * d), $"planned for {maxContext} keys = planned for {lens.Max()} (bitwise)");
            }
            if (launches.Count > 0 && d <= 128) c.AtLeast(launches[0].MmaCount, 1, "emulator: tensor-core split (mma count)");
            if (counters && launches.Count > 0)
            {
                var l = launches[0];
                long kvBytes = (long)lens[0] * nKV * d * 2 * (fp8 ? 1 : 2);
                long partialBytes = (long)nH * splits * (d + 1) * 4;
                long minBytes = kvBytes + nH * d * 2 + (lens[0] / pageSize) * 4 + 4 + partialBytes;
                c.AtLeast(l.GridBlocks, 132, "emulator: CTAs");
                c.AtMost(l.DistinctSectors * 32.0 / minBytes, 1.05, "emulator: distinct DRAM bytes / minimum (K/V read once)");
                c.AtLeast(l.CoalescingEfficiency, 0.95, "emulator: coalescing");
            }
            return c.Result();
        });

    /// <param name="lens">keys per row, the row's new token (position len - 1) included</param>
    /// <param name="padding">the last row is a graph bucket's padding row: slot -1 (nothing written); its output is not compared</param>
    /// <param name="perRow">dynamic RoPE: each row its own inv_freq table</param>
    /// <param name="maxContext">the longest context the launch is planned for (its grid), when more than the rows' (0: theirs)</param>
    static KernelCase FusedCase(int[] lens, int nH, int nKV, int pageSize, int workspaceSplits, int seed, int d, bool real = false,
        bool fp8 = false, bool padding = false, bool perRow = false, float scaling = 1f, int maxContext = 0) =>
        new("attention_decode", $"attn_decode_fused ctx {string.Join("/", lens)}{(maxContext > 0 ? $" of {maxContext}" : "")} heads {nH}/{nKV} D {d} page {pageSize} splits <= {workspaceSplits}" +
            $"{(fp8 ? " fp8 KV" : "")}{(padding ? " padding row" : "")}{(perRow ? " inv_freq per row" : "")}{(scaling != 1f ? $" scaling {scaling}" : "")}", real, ctx =>
        {
            const float Eps = 1e-6f;
            var rng = new Random(seed);
            int planned = Math.Max(maxContext, lens.Max());
            var kv = new PagedKvFixture(rng, lens, nKV, d, pageSize, fp8: fp8, maxContextLen: planned);
            string variant = $"{d}{(fp8 ? "-fp8" : "")}";
            var attn = ctx.Cached($"attn_decode{variant}", () => new AttentionDecodeLaunchers(ctx.Loader, d, fp8));
            var rope = ctx.Cached($"rope{variant}", () => new RopeLaunchers(ctx.Loader, d, fp8));
            int seqs = lens.Length, heads = nH + 2 * nKV, stride = heads * d, qDim = nH * d;
            var qkv = new ushort[seqs * stride];   // q and k columns in [-3, 3), v in [-1, 1) (the attention bounds below)
            for (int t = 0; t < seqs; t++)
            {
                KernelData.Random(rng, (nH + nKV) * d, 3f).CopyTo(qkv, t * stride);
                KernelData.Random(rng, nKV * d, 1f).CopyTo(qkv, t * stride + (nH + nKV) * d);
            }
            ushort[] qw = KernelData.Random(rng, d, 1.5f), kw = KernelData.Random(rng, d, 1.5f);
            float[][] invFreqRows = Enumerable.Range(0, perRow ? seqs : 1).Select(t => KernelReference.InvFreq(d, 1e6 * (1 + 2.5 * t))).ToArray();
            int[] positions = lens.Select(l => l - 1).ToArray();
            int[] slots = Enumerable.Range(0, seqs).Select(s => kv.BlockTable[s * kv.MaxPagesPerSeq + positions[s] / pageSize] * pageSize + positions[s] % pageSize).ToArray();
            if (padding) slots[^1] = -1;
            long cacheBytes = (long)kv.Pages * pageSize * nKV * d * (fp8 ? 1 : 2);

            DevicePtr dQkv = ctx.Upload(qkv), dQw = ctx.Upload(qw), dKw = ctx.Upload(kw), dInvFreq = ctx.Upload(invFreqRows.SelectMany(r => r).ToArray());
            DevicePtr dPos = ctx.Upload(positions), dSlots = ctx.Upload(slots), dTable = ctx.Upload(kv.BlockTable), dLens = ctx.Upload(lens);
            long wsBytes = attn.WorkspaceBytes(seqs, nH, workspaceSplits, out long lseBytes);
            DevicePtr dPartial = ctx.Alloc<byte>(wsBytes), dLse = ctx.AllocFilled<float>(lseBytes / sizeof(float));
            DecodeAttentionArgs Args(DevicePtr q, DevicePtr k, DevicePtr v, DevicePtr o) => new(q, qDim, k, v, dTable, kv.MaxPagesPerSeq, pageSize,
                dLens, seqs, planned, nH, nKV, o, qDim, dPartial, dLse, workspaceSplits);

            // The separate kernels: rope + KV write, then split + combine.
            DevicePtr dKA = kv.UploadK(ctx), dVA = kv.UploadV(ctx), dQA = ctx.AllocFilled<ushort>(seqs * qDim), dOutA = ctx.AllocFilled<ushort>(seqs * qDim);
            rope.QkNormRopeKvWrite(ctx.Stream, new QkNormRopeParams
            {
                Qkv = dQkv, QOut = dQA, KCache = dKA, VCache = dVA, QNormWeight = dQw, KNormWeight = dKw, InvFreq = dInvFreq,
                Positions = dPos, SlotMapping = dSlots, Tokens = seqs, NumQHeads = nH, NumKvHeads = nKV, QkvStride = stride,
                QOutStride = qDim, Eps = Eps, AttentionScaling = scaling, InvFreqPerToken = perRow ? 1 : 0,
            });
            int fusedSplits = attn.ChooseSplits(seqs, nKV, planned, workspaceSplits);   // both launches' grid
            int splitsA = attn.Decode(ctx.Stream, Args(dQA, dKA, dVA, dOutA));

            // The fused kernel, twice (the second run checks that the tickets were left zero), into fresh outputs.
            DevicePtr dKB = kv.UploadK(ctx), dVB = kv.UploadV(ctx), dQB = ctx.AllocFilled<ushort>(seqs * qDim);
            DevicePtr dOutB = ctx.AllocFilled<ushort>(seqs * qDim), dOutB2 = ctx.AllocFilled<ushort>(seqs * qDim);
            DevicePtr dTickets = ctx.AllocFilled<int>(seqs * nKV, 0);
            var ropeArgs = new DecodeRopeArgs(dQkv, stride, dQB, qDim, dQw, dKw, dInvFreq, perRow, dPos, dSlots, Eps, scaling, dTickets);
            int splitsB = 0;
            var launches = ctx.RecordLaunches(() => splitsB = attn.DecodeFused(ctx.Stream, Args(DevicePtr.Null, dKB, dVB, dOutB), ropeArgs));
            attn.DecodeFused(ctx.Stream, Args(DevicePtr.Null, dKB, dVB, dOutB2), ropeArgs with { QOut = DevicePtr.Null });

            var c = new Checker();
            c.True(splitsA == splitsB && splitsB == fusedSplits && (workspaceSplits == 1 ? splitsB == 1 : splitsB > 1), "split count", $"{splitsB} (separate: {splitsA})");
            int expectLaunches = splitsB > AttentionDecodeLaunchers.FusedMaxCombineSplits ? 2 : 1;   // beyond it attn_decode_combine runs after
            if (launches.Count > 0) c.True(launches.Count == expectLaunches, $"{expectLaunches} launch(es)", $"{launches.Count}");
            if (launches.Count > 0 && ctx.Device.Info.ComputeMajor >= 9)
                c.True(launches[0].ProgrammaticLaunch, "sm_90: a programmatic dependent launch (pdl_wait before anything an earlier kernel writes)");
            int compared = padding ? seqs - 1 : seqs;
            ushort[] qB = ctx.Download<ushort>(dQB, seqs * qDim), outB = ctx.Download<ushort>(dOutB, seqs * qDim);
            byte[] kB = ctx.Download<byte>(dKB, cacheBytes), vB = ctx.Download<byte>(dVB, cacheBytes);
            c.Exact<ushort>(qB, ctx.Download<ushort>(dQA, seqs * qDim), "q = qk_norm_rope_kv_write's (bitwise)");
            c.Exact<byte>(kB, ctx.Download<byte>(dKA, cacheBytes), "K cache = qk_norm_rope_kv_write's (bitwise; the padding row writes nothing)");
            c.Exact<byte>(vB, ctx.Download<byte>(dVA, cacheBytes), "V cache = qk_norm_rope_kv_write's (bitwise)");
            c.Exact<ushort>(outB.AsSpan(0, compared * qDim), ctx.Download<ushort>(dOutA, compared * qDim), "output = split + combine's (bitwise)");
            c.Exact<ushort>(ctx.Download<ushort>(dOutB2, compared * qDim), outB.AsSpan(0, compared * qDim), "second launch: the same output (tickets left zero)");
            c.Exact<int>(ctx.Download<int>(dTickets, seqs * nKV), new int[seqs * nKV], "tickets zero after the launches");
            if (maxContext > 0)
            {
                RowPlanWritten(c, ctx, dLse, lens, nH, nKV, splitsB);
                if (launches.Count > 0 && ctx.Device.Info.ComputeMajor >= 9)
                {
                    long working = lens.Sum(l => (long)RowSplits(ctx, seqs, nKV, l, splitsB)) * nKV;
                    c.True(launches[0].WaitingCtas == working, $"emulator: {working} CTAs reach their wait, the others exit", $"{launches[0].WaitingCtas} of {launches[0].GridBlocks}");
                }
                // each row plans its splits for its own length: the launch planned for the rows' longest gives the same bits
                // (a third run over the same cache: the new keys it writes again are the same values)
                DevicePtr dOutShort = ctx.AllocFilled<ushort>(seqs * qDim);
                attn.DecodeFused(ctx.Stream, Args(DevicePtr.Null, dKB, dVB, dOutShort) with { MaxContextLen = lens.Max() }, ropeArgs with { QOut = DevicePtr.Null });
                c.Exact<ushort>(ctx.Download<ushort>(dOutShort, compared * qDim), outB.AsSpan(0, compared * qDim), $"planned for {maxContext} keys = planned for {lens.Max()} (bitwise)");
            }

            // ReferenceOps: q and the new K (rope cases' tolerance: 0.04 absolute + 2^-6 relative; E4M3 keeps 3 mantissa bits, so
            // an fp8 key within that of the reference may sit one code away: 2^-3 relative), V copied exactly (bf16) or as E4M3.
            float Cache(byte[] cache, long element) => fp8 ? Checkpoint.Fp8E4M3.ToFloat(cache[element]) : Bf16.ToFloat(BitConverter.ToUInt16(cache, (int)(element * 2)));
            var cos = new float[d];
            var sin = new float[d];
            var expQ = new float[compared * qDim];
            var expK = new float[compared * nKV * d];
            var gotK = new float[compared * nKV * d];
            var expV = new float[compared * nKV * d];
            var gotV = new float[compared * nKV * d];
            for (int t = 0; t < compared; t++)
            {
                float[] row = KernelData.ToFloats(qkv.AsSpan(t * stride, stride));
                ReferenceOps.RmsNorm(row.AsSpan(0, qDim), qw, Eps, expQ.AsSpan(t * qDim, qDim), d);
                ReferenceOps.RmsNorm(row.AsSpan(qDim, nKV * d), kw, Eps, expK.AsSpan(t * nKV * d, nKV * d), d);
                ReferenceOps.RopeCosSin(invFreqRows[perRow ? t : 0], scaling, positions[t], cos, sin);
                ReferenceOps.ApplyRope(expQ.AsSpan(t * qDim, qDim), nH, d, cos, sin);
                ReferenceOps.ApplyRope(expK.AsSpan(t * nKV * d, nKV * d), nKV, d, cos, sin);
                for (int i = 0; i < nKV * d; i++)
                {
                    long e = (long)slots[t] * nKV * d + i;
                    gotK[t * nKV * d + i] = Cache(kB, e);
                    gotV[t * nKV * d + i] = Cache(vB, e);
                    float v = row[qDim + nKV * d + i];
                    expV[t * nKV * d + i] = fp8 ? Checkpoint.Fp8E4M3.ToFloat(Checkpoint.Fp8E4M3.FromFloat(v)) : v;
                }
            }
            c.Close(KernelData.ToFloats(qB.AsSpan(0, compared * qDim)), expQ, 0.04, 1.0 / 64, "q vs ReferenceOps norm + rope");
            c.Close(gotK, expK, 0.04, fp8 ? 1.0 / 8 : 1.0 / 64, "new K in the cache vs ReferenceOps norm + rope");
            c.Close(gotV, expV, 0, 0, "new V in the cache (copied)");
            // Attention of the kernel's own q over the cache it leaves (old keys and the new one): the decode cases' tolerance.
            var exp = new float[compared * qDim];
            int group = nH / nKV;
            Parallel.For(0, compared * nH, sh =>
            {
                int s = sh / nH, h = sh % nH, kvh = h / group;
                KernelReference.AttendOne(KernelData.ToFloats(qB.AsSpan((s * nH + h) * d, d)), (j, i) => Cache(kB, kv.Offset(s, j, kvh) + i),
                    (j, i) => Cache(vB, kv.Offset(s, j, kvh) + i), lens[s], d, exp.AsSpan((s * nH + h) * d, d));
            });
            c.CloseBf16(outB.AsSpan(0, compared * qDim), exp, Atol, Rtol, "fused decode attention output vs fp64 attention");
            return c.Result();
        });

    /// <param name="qLens">new tokens per sequence</param><param name="ctxLens">keys per sequence (earlier context + new tokens)</param>
    static KernelCase PrefillCase(int[] qLens, int[] ctxLens, int nH, int nKV, int seed, int d, bool real = false, bool fp8 = false) =>
        new("attention_prefill", $"attn_prefill q {string.Join("/", qLens)} ctx {string.Join("/", ctxLens)} heads {nH}/{nKV} D {d}{(fp8 ? " fp8 KV" : "")}", real, ctx =>
        {
            const int pageSize = 16;
            var rng = new Random(seed);
            var kv = new PagedKvFixture(rng, ctxLens, nKV, d, pageSize, fp8: fp8);
            var launchers = ctx.Cached($"attn_prefill{d}{(fp8 ? "-fp8" : "")}", () => new AttentionPrefillLaunchers(ctx.Loader, d, fp8));
            int seqs = qLens.Length, totalQ = qLens.Sum();
            var qStart = new int[seqs + 1];
            for (int s = 0; s < seqs; s++) qStart[s + 1] = qStart[s] + qLens[s];
            ushort[] q = KernelData.Random(rng, totalQ * nH * d, 2f);
            DevicePtr dOut = ctx.AllocFilled<ushort>(totalQ * nH * d);
            var p = new AttnPrefillParams
            {
                Q = ctx.Upload(q), KCache = kv.UploadK(ctx), VCache = kv.UploadV(ctx), BlockTable = ctx.Upload(kv.BlockTable),
                ContextLens = ctx.Upload(ctxLens), QStart = ctx.Upload(qStart), Out = dOut, Seqs = seqs, NumQHeads = nH,
                NumKvHeads = nKV, PageSize = pageSize, MaxPagesPerSeq = kv.MaxPagesPerSeq, QStride = nH * d, OutStride = nH * d,
            };
            var launches = ctx.RecordLaunches(() => launchers.Prefill(ctx.Stream, p, qLens.Max()));
            var exp = new float[totalQ * nH * d];
            int group = nH / nKV;
            Parallel.For(0, totalQ * nH, rh =>
            {
                int row = rh / nH, h = rh % nH, s = Array.FindLastIndex(qStart, x => x <= row), i = row - qStart[s], kvh = h / group;
                if (s >= seqs) s = seqs - 1;
                int visible = ctxLens[s] - qLens[s] + i + 1;     // causal: keys 0 .. own position
                KernelReference.AttendOne(KernelData.ToFloats(q.AsSpan((row * nH + h) * d, d)), (j, cc) => kv.KAt(s, j, kvh, cc),
                    (j, cc) => kv.VAt(s, j, kvh, cc), visible, d, exp.AsSpan((row * nH + h) * d, d));
            });
            var c = new Checker();
            c.CloseBf16(ctx.Download<ushort>(dOut, totalQ * nH * d), exp, Atol, Rtol, "prefill attention output");
            if (launches.Count > 0) c.AtLeast(launches[0].MmaCount, 1, "emulator: tensor-core path (mma count)");
            return c.Result();
        });

    /// <summary>Analytic: with no earlier context, query 0 sees only key 0, so its output is exactly V[0] (softmax of one score).</summary>
    static CheckResult FirstTokenAttendsOnlyToItself(KernelCheckContext ctx)
    {
        const int d = 128;
        var rng = new Random(9);
        var kv = new PagedKvFixture(rng, [3], 1, d, 16);
        var launchers = ctx.Cached($"attn_prefill{d}", () => new AttentionPrefillLaunchers(ctx.Loader, d));
        DevicePtr dOut = ctx.AllocFilled<ushort>(3 * d);
        launchers.Prefill(ctx.Stream, new AttnPrefillParams
        {
            Q = ctx.Upload(KernelData.Random(rng, 3 * d, 3f)), KCache = ctx.Upload(kv.K), VCache = ctx.Upload(kv.V),
            BlockTable = ctx.Upload(kv.BlockTable), ContextLens = ctx.Upload(new[] { 3 }), QStart = ctx.Upload(new[] { 0, 3 }),
            Out = dOut, Seqs = 1, NumQHeads = 1, NumKvHeads = 1, PageSize = 16, MaxPagesPerSeq = kv.MaxPagesPerSeq, QStride = d, OutStride = d,
        }, 3);
        var c = new Checker();
        c.Exact<ushort>(ctx.Download<ushort>(dOut, d), kv.V.AsSpan((int)kv.Offset(0, 0, 0), d), "row 0 = V[0] (p = 1 exactly)");
        return c.Result();
    }

    /// <summary>
    /// The attention kernels at head_dim 16 and 32 (the synth presets) against ReferenceOps, one prompt of 70 tokens (3 key
    /// tiles) in a paged cache of 4-token pages in scrambled page order: qk_norm_rope_kv_write vs RmsNorm + RopeCosSin +
    /// ApplyRope, then, on the device's own q / K / V, attn_prefill (all rows, causal) and attn_decode_split (the last row)
    /// vs ReferenceOps.Attention.
    /// </summary>
    static CheckResult Pipeline(KernelCheckContext ctx, int D)
    {
        const int NH = 4, NKV = 2, Tokens = 70, PageSize = 4;
        const float Eps = 1e-6f;
        var rng = new Random(D);
        int heads = NH + 2 * NKV, stride = heads * D;
        // q and k columns in [-3, 3) (normed values up to ~3); v columns in [-1, 1) (attention bounds below)
        var qkv = new ushort[Tokens * stride];
        for (int t = 0; t < Tokens; t++)
        {
            KernelData.Random(rng, (NH + NKV) * D, 3f).CopyTo(qkv, t * stride);
            KernelData.Random(rng, NKV * D, 1f).CopyTo(qkv, t * stride + (NH + NKV) * D);
        }
        ushort[] qw = KernelData.Random(rng, D, 1.5f), kw = KernelData.Random(rng, D, 1.5f);
        var (invFreq, scaling) = ReferenceOps.RopeParameters(D, 1_000_000, null, 2048);
        int pages = (Tokens + PageSize - 1) / PageSize;
        int[] table = Enumerable.Range(0, pages).Select(i => (i * 5 + 3) % pages).ToArray();   // a permutation (gcd(5, 18) = 1)
        int[] positions = Enumerable.Range(0, Tokens).ToArray();
        int[] slots = positions.Select(t => table[t / PageSize] * PageSize + t % PageSize).ToArray();
        long cacheElems = (long)pages * PageSize * NKV * D;

        DevicePtr dQkv = ctx.Upload(qkv), dQ = ctx.AllocFilled<ushort>(Tokens * NH * D);
        DevicePtr dK = ctx.AllocFilled<ushort>(cacheElems, 0), dV = ctx.AllocFilled<ushort>(cacheElems, 0);
        ctx.Cached($"rope{D}", () => new RopeLaunchers(ctx.Loader, D)).QkNormRopeKvWrite(ctx.Stream, new QkNormRopeParams
        {
            Qkv = dQkv, QOut = dQ, KCache = dK, VCache = dV, QNormWeight = ctx.Upload(qw), KNormWeight = ctx.Upload(kw),
            InvFreq = ctx.Upload(invFreq), Positions = ctx.Upload(positions), SlotMapping = ctx.Upload(slots),
            Tokens = Tokens, NumQHeads = NH, NumKvHeads = NKV, QkvStride = stride, QOutStride = NH * D, Eps = Eps, AttentionScaling = scaling,
        });
        float[] q = KernelData.ToFloats(ctx.Download<ushort>(dQ, Tokens * NH * D));
        ushort[] kCache = ctx.Download<ushort>(dK, cacheElems), vCache = ctx.Download<ushort>(dV, cacheElems);
        var keys = new float[Tokens * NKV * D];
        var values = new float[Tokens * NKV * D];
        var expV = new float[Tokens * NKV * D];
        for (int t = 0; t < Tokens; t++)
            for (int i = 0; i < NKV * D; i++)
            {
                keys[t * NKV * D + i] = Bf16.ToFloat(kCache[(long)slots[t] * NKV * D + i]);
                values[t * NKV * D + i] = Bf16.ToFloat(vCache[(long)slots[t] * NKV * D + i]);
                expV[t * NKV * D + i] = Bf16.ToFloat(qkv[t * stride + (NH + NKV) * D + i]);
            }

        // Rope: tolerance as the rope cases (0.04 absolute + 2^-6 relative).
        var cos = new float[D];
        var sin = new float[D];
        var expQ = new float[Tokens * NH * D];
        var expK = new float[Tokens * NKV * D];
        for (int t = 0; t < Tokens; t++)
        {
            float[] row = KernelData.ToFloats(qkv.AsSpan(t * stride, (NH + NKV) * D));
            ReferenceOps.RmsNorm(row.AsSpan(0, NH * D), qw, Eps, expQ.AsSpan(t * NH * D, NH * D), D);
            ReferenceOps.RmsNorm(row.AsSpan(NH * D, NKV * D), kw, Eps, expK.AsSpan(t * NKV * D, NKV * D), D);
            ReferenceOps.RopeCosSin(invFreq, scaling, positions[t], cos, sin);
            ReferenceOps.ApplyRope(expQ.AsSpan(t * NH * D, NH * D), NH, D, cos, sin);
            ReferenceOps.ApplyRope(expK.AsSpan(t * NKV * D, NKV * D), NKV, D, cos, sin);
        }
        var c = new Checker();
        c.Close(values, expV, 0, 0, $"V cache (copied bit for bit, D {D})");
        c.Close(q, expQ, 0.04, 1.0 / 64, $"q after norm + rope (D {D})");
        c.Close(keys, expK, 0.04, 1.0 / 64, $"K cache after norm + rope (D {D})");

        // Attention reference on the device's own q / K / V: fp32 scores and softmax, output rounded to bf16 once.
        var expAttn = new float[Tokens * NH * D];
        ReferenceOps.Attention(q, keys, values, expAttn, Tokens, 0, NH, NKV, D);
        DevicePtr dTable = ctx.Upload(table), dLens = ctx.Upload(new[] { Tokens });
        // Prefill: 2e-3 absolute for a convex combination of |v| <= 1 (the reference rounds P differently), and both sides
        // round the output to bf16 once, so they may sit one bf16 ulp apart (2^-7 relative).
        DevicePtr dOut = ctx.AllocFilled<ushort>(Tokens * NH * D);
        ctx.Cached($"attn_prefill{D}", () => new AttentionPrefillLaunchers(ctx.Loader, D)).Prefill(ctx.Stream, new AttnPrefillParams
        {
            Q = dQ, KCache = dK, VCache = dV, BlockTable = dTable, ContextLens = dLens, QStart = ctx.Upload(new[] { 0, Tokens }),
            Out = dOut, Seqs = 1, NumQHeads = NH, NumKvHeads = NKV, PageSize = PageSize, MaxPagesPerSeq = pages, QStride = NH * D, OutStride = NH * D,
        }, Tokens);
        c.CloseBf16(ctx.Download<ushort>(dOut, Tokens * NH * D), expAttn, 2e-3, 1.0 / 128, $"prefill attention (D {D})");

        // Decode of the last row: fp32 online softmax (ex2.approx) against the fp32 reference, 5e-4 absolute as the decode
        // cases, plus one bf16 ulp of the rounded outputs (2^-7 relative). Split path (workspace for 8).
        var decode = ctx.Cached($"attn_decode{D}", () => new AttentionDecodeLaunchers(ctx.Loader, D));
        long wsBytes = decode.WorkspaceBytes(1, NH, 8, out long lseBytes);
        DevicePtr dLast = ctx.AllocFilled<ushort>(NH * D);
        int splits = decode.Decode(ctx.Stream, new DecodeAttentionArgs(dQ + (long)(Tokens - 1) * NH * D * sizeof(ushort), NH * D, dK, dV,
            dTable, pages, PageSize, dLens, 1, Tokens, NH, NKV, dLast, NH * D, ctx.Alloc<byte>(wsBytes), ctx.Alloc<byte>(lseBytes), 8));
        c.True(splits > 1, "decode: split path (partials + combine)", $"{splits} split");
        c.CloseBf16(ctx.Download<ushort>(dLast, NH * D), expAttn.AsSpan((Tokens - 1) * NH * D, NH * D), 5e-4, 1.0 / 128, $"decode attention, last row (D {D})");
        return c.Result();
    }
}
