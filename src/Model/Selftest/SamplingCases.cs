using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Selftest;

/// <summary>embedding.cu, sampling.cu (argmax, sample, sample_rows), penalties.cu and check_finite.cu against CPU computations.</summary>
public static class SamplingCases
{
    public static IEnumerable<KernelCase> All()
    {
        yield return new KernelCase("embedding", "embedding_gather width 2048, ids 3, 49, 0, 50, -1, 3 (out of range: zero row + flag)", true, Embedding);
        yield return new KernelCase("embedding", "embedding_gather fed ids (pipelined decode): -1 - j takes feed[j]; a fed id past the feed or out of range flags", true, EmbeddingFed);
        yield return Argmax(151936, real: true);   // real vocabulary
        yield return Argmax(37);                   // odd vocabulary (no 16-byte path)
        yield return Sample(0.7f, 5, 1f, 0f);      // temperature + top-k
        yield return Sample(1.3f, 0, 0.8f, 0f);    // top-p
        yield return Sample(1f, 6, 0.95f, 0.08f);  // all three
        yield return new KernelCase("sampling", "sample (fixed settings) top_k 1 is the argmax, lower index on ties", false, TopKOfOneIsGreedy);
        yield return new KernelCase("sampling", "sample (fixed settings) at the real vocabulary (38 CTAs) stays in the top 20", true, SampleAtRealVocabularyStaysInTheTopK);
        yield return ScanBoundary(1, 1160271ul, 0);   // gap at the warp 24 / 25 boundary: the old claim had no claimant
        yield return ScanBoundary(0, 1995517ul, 2);   // overlap at the warp 26 / 27 boundary: the old claim had two
        yield return Penalties(vocab: 37, rows: 4, entriesPerRow: 9);
        yield return Penalties(vocab: 151936, rows: 3, entriesPerRow: 700, real: true);
        yield return CheckFinite(5, 2048, 2048, real: true);
        yield return CheckFinite(3, 136, 144);
    }

    /// <summary>
    /// apply_penalties_bf16 against Sampling/Penalties.cs: every row with its own presence / frequency / repetition (one
    /// row without penalties), entries at distinct random ids with counts 0 (prompt only) to 5, logits of both signs.
    /// Exact: both sides do the same IEEE fp32 operations and round to bf16 once.
    /// </summary>
    static KernelCase Penalties(int vocab, int rows, int entriesPerRow, bool real = false) =>
        new("penalties", $"apply_penalties_bf16 vocab {vocab}, {rows} rows x {entriesPerRow} entries, against the host reference", real, ctx =>
        {
            var launcher = ctx.Cached("penalties", () => new PenaltiesLaunchers(ctx.Loader));
            var rng = new Random(vocab + rows);
            int ld = vocab + (vocab % 8 == 0 ? 0 : 8 - vocab % 8);   // a padded row stride
            ushort[] logits = KernelData.Random(rng, rows * ld, 8f);
            PenaltySettings[] settings = [new(0.5f, 0.25f, 1.3f), new(-1.5f, 0f, 1f), new(0f, 1.75f, 0.8f), new(0f, 0f, 1f)];
            var table = new PenaltyRow[rows];
            var entries = new List<int>();
            var expected = KernelData.ToFloats(logits);
            for (int r = 0; r < rows; r++)
            {
                var s = settings[r % settings.Length];
                int[] ids = [.. Enumerable.Range(0, vocab).OrderBy(_ => rng.Next()).Take(entriesPerRow)];
                int[] counts = [.. ids.Select(_ => rng.Next(0, 6))];
                int n = s.IsNone ? 0 : ids.Length;
                table[r] = new PenaltyRow { Start = entries.Count / 2, Count = n, Presence = s.Presence, Frequency = s.Frequency, Repetition = s.Repetition };
                for (int i = 0; i < n; i++) { entries.Add(ids[i]); entries.Add(counts[i]); }
                Sampling.Penalties.Apply(expected.AsSpan(r * ld, vocab), ids.AsSpan(0, n), counts.AsSpan(0, n), s);
            }
            DevicePtr dLogits = ctx.Upload(logits);
            launcher.ApplyPenalties(ctx.Stream, dLogits, ld, rows, vocab, ctx.Upload(table), ctx.Upload(entries.ToArray()));
            var got = ctx.Download<ushort>(dLogits, rows * ld);
            var c = new Checker();
            c.Exact<ushort>(got, KernelData.FromFloats(expected), "penalised logits (bit for bit; untouched ids and the padding unchanged)");
            return c.Result();
        });

    /// <summary>A zeroed <see cref="SamplingScratch"/> for <paramref name="rows"/> rows of <paramref name="vocab"/> logits.</summary>
    public static SamplingScratch Scratch(KernelCheckContext ctx, int rows, int vocab) =>
        new(ctx.AllocFilled<byte>(SamplingScratch.Bytes(rows, vocab), 0), rows, vocab);

    static CheckResult Embedding(KernelCheckContext ctx)
    {
        var launcher = ctx.Cached("embedding", () => new EmbeddingLaunchers(ctx.Loader));
        const int vocab = 50, width = 2048;
        var rng = new Random(1);
        ushort[] table = KernelData.Random(rng, vocab * width);
        int[] ids = [3, 49, 0, 50, -1, 3];
        DevicePtr dOut = ctx.AllocFilled<ushort>(ids.Length * width), flag = ctx.Upload(new[] { 0 });
        launcher.Gather(ctx.Stream, dOut, ctx.Upload(table), ctx.Upload(ids), flag, ids.Length, vocab, width);
        var expected = new ushort[ids.Length * width];
        for (int t = 0; t < ids.Length; t++)
            if (ids[t] is >= 0 and < vocab) table.AsSpan(ids[t] * width, width).CopyTo(expected.AsSpan(t * width));
        var c = new Checker();
        c.Exact<ushort>(ctx.Download<ushort>(dOut, ids.Length * width), expected, "rows (out-of-range ids give zeros)");
        c.Exact<int>(ctx.Download<int>(flag, 1), [1], "error flag set by ids 50 and -1");
        ctx.Device.CopyToDevice(flag, new byte[4]);
        launcher.Gather(ctx.Stream, dOut, ctx.Upload(table), ctx.Upload(new[] { 1, 2 }), flag, 2, vocab, width);
        c.Exact<int>(ctx.Download<int>(flag, 1), [0], "no flag for valid ids");
        return c.Result();
    }

    static CheckResult EmbeddingFed(KernelCheckContext ctx)
    {
        var launcher = ctx.Cached("embedding", () => new EmbeddingLaunchers(ctx.Loader));
        const int vocab = 50, width = 256;
        var rng = new Random(2);
        ushort[] table = KernelData.Random(rng, vocab * width);
        int[] feed = [7, 42, 19];
        // rows: fed from output rows 1, 0, 2; a host id; then one past the feed (-4 with 3 fed ids)
        int[] ids = [-2, -1, -3, 5, -4];
        int[] resolved = [42, 7, 19, 5, -1];
        DevicePtr dOut = ctx.AllocFilled<ushort>(ids.Length * width), flag = ctx.Upload(new[] { 0 }), dTable = ctx.Upload(table);
        launcher.Gather(ctx.Stream, dOut, dTable, ctx.Upload(ids), flag, ids.Length, vocab, width, ctx.Upload(feed), feed.Length);
        var expected = new ushort[ids.Length * width];
        for (int t = 0; t < ids.Length; t++)
            if (resolved[t] >= 0) table.AsSpan(resolved[t] * width, width).CopyTo(expected.AsSpan(t * width));
        var c = new Checker();
        c.Exact<ushort>(ctx.Download<ushort>(dOut, ids.Length * width), expected, "rows of the fed ids, the host id, and zeros past the feed");
        c.Exact<int>(ctx.Download<int>(flag, 1), [1], "error flag set by the id past the feed");
        // a fed id whose fed value is outside the vocabulary is caught as well
        ctx.Device.CopyToDevice(flag, new byte[4]);
        launcher.Gather(ctx.Stream, dOut, dTable, ctx.Upload(new[] { -1, -2 }), flag, 2, vocab, width, ctx.Upload(new[] { 3, vocab }), 2);
        c.Exact<int>(ctx.Download<int>(flag, 1), [1], "error flag set by a fed value of vocab");
        c.Exact<ushort>(ctx.Download<ushort>(dOut, width), table.AsSpan(3 * width, width).ToArray(), "the valid fed row beside it");
        return c.Result();
    }

    static KernelCase Argmax(int vocab, bool real = false) =>
        new("sampling", $"argmax (sample_reduce_bf16) vocab {vocab}, ties to the lower index", real, ctx =>
        {
            var launcher = ctx.Cached("sampling", () => new SamplingLaunchers(ctx.Loader));
            var rng = new Random(vocab);
            const int rows = 2;
            ushort[] logits = KernelData.Random(rng, rows * vocab, 10f);
            // row 0: a unique maximum in the middle; row 1: the same maximum at two places
            logits[vocab / 2] = Bf16.FromFloat(20f);
            logits[vocab + vocab / 3] = Bf16.FromFloat(20f);
            logits[vocab + vocab - 1] = Bf16.FromFloat(20f);
            DevicePtr ids = ctx.AllocFilled<int>(rows);
            launcher.Argmax(ctx.Stream, ctx.Upload(logits), vocab, rows, vocab, ids, Scratch(ctx, rows, vocab));
            var c = new Checker();
            c.Exact<int>(ctx.Download<int>(ids, rows), [vocab / 2, vocab / 3], "argmax ids");
            return c.Result();
        });

    /// <summary>The distribution transformers' warpers define (temperature, top-k, top-p, min-p), computed on the CPU.</summary>
    public static double[] ExpectedDistribution(float[] logits, SamplingSettings s)
    {
        int n = logits.Length;
        var x = logits.Select(v => (double)(v * (1f / s.Temperature))).ToArray();
        var order = Enumerable.Range(0, n).OrderByDescending(i => x[i]).ToArray();
        var keep = new bool[n];
        int k = s.TopK > 0 ? Math.Min(s.TopK, n) : n;
        double kth = x[order[k - 1]];
        for (int i = 0; i < n; i++) keep[i] = x[i] >= kth;
        double max = x[order[0]];
        double kept = Enumerable.Range(0, n).Where(i => keep[i]).Sum(i => Math.Exp(x[i] - max));
        if (s.TopP < 1f)
        {
            double cum = 0, threshold = double.NegativeInfinity;
            foreach (int i in order.Where(i => keep[i]))
            {
                cum += Math.Exp(x[i] - max);
                threshold = x[i];
                if (cum >= s.TopP * kept) break;
            }
            for (int i = 0; i < n; i++) keep[i] &= x[i] >= threshold;
        }
        if (s.MinP > 0f)
            for (int i = 0; i < n; i++) keep[i] &= x[i] >= max + Math.Log(s.MinP);
        double z = Enumerable.Range(0, n).Where(i => keep[i]).Sum(i => Math.Exp(x[i] - max));
        return Enumerable.Range(0, n).Select(i => keep[i] ? Math.Exp(x[i] - max) / z : 0).ToArray();
    }

    /// <summary>Philox4x32-10, counter (step lo, step hi, row, 0), key (seed lo, seed hi): the sampling kernels' generator.</summary>
    public static uint Philox(ulong seed, ulong step, uint row)
    {
        uint c0 = (uint)step, c1 = (uint)(step >> 32), c2 = row, c3 = 0, k0 = (uint)seed, k1 = (uint)(seed >> 32);
        for (int r = 0; r < 10; r++)
        {
            ulong p0 = 0xD2511F53ul * c0, p1 = 0xCD9E8D57ul * c2;
            (c0, c1, c2, c3) = ((uint)(p1 >> 32) ^ c1 ^ k0, (uint)p1, (uint)(p0 >> 32) ^ c3 ^ k1, (uint)p0);
            k0 += 0x9E3779B9u;
            k1 += 0xBB67AE85u;
        }
        return c0;
    }

    /// <summary>
    /// Each row draws u from Philox(seed, step, row); the token is the first (in index order) whose cumulative filtered
    /// probability exceeds u. The CPU computes the same from the warpers' distribution; the kernel's fp32 cumulative sums may
    /// move a boundary by ~1e-6, so a different token is accepted only when u lies within 1e-4 of the boundary between the two.
    /// </summary>
    static KernelCase Sample(float temperature, int topK, float topP, float minP) =>
        new("sampling", $"sample (fixed settings) temperature {temperature} top_k {topK} top_p {topP} min_p {minP}: the token of its random number", false, ctx =>
        {
            var launcher = ctx.Cached("sampling", () => new SamplingLaunchers(ctx.Loader));
            const int vocab = 12, rows = 8;
            float[] logits = [1.0f, 3.0f, 0.5f, 2.5f, -1f, 2.75f, 0f, 1.5f, 2.0f, -3f, 2.25f, 1.75f];
            ushort[] row = KernelData.FromFloats(logits);
            var all = new ushort[rows * vocab];
            for (int r = 0; r < rows; r++) row.CopyTo(all, r * vocab);
            var s = new SamplingSettings(temperature, topK, topP, minP, Seed: 1234);
            DevicePtr ids = ctx.AllocFilled<int>(rows);
            DevicePtr dLogits = ctx.Upload(all);
            var scratch = Scratch(ctx, rows, vocab);
            launcher.Sample(ctx.Stream, dLogits, vocab, rows, vocab, ids, s, step: 7, scratch);
            int[] got = ctx.Download<int>(ids, rows);
            double[] p = ExpectedDistribution(KernelData.ToFloats(row), s);
            var c = new Checker();
            double worstMiss = 0;
            var bad = new List<string>();
            for (int r = 0; r < rows; r++)
            {
                double u = (Philox(s.Seed, 7, (uint)r) >> 8) / 16777216.0;
                int want = -1;
                double cum = 0;
                var before = new double[vocab];
                for (int i = 0; i < vocab; i++)
                {
                    before[i] = cum;
                    cum += p[i];
                    if (want < 0 && p[i] > 0 && cum > u) want = i;
                }
                int g = got[r];
                if (g < 0 || g >= vocab || p[g] <= 0) { bad.Add($"row {r}: token {g} is outside the vocabulary or filtered out"); continue; }
                if (g == want) continue;
                double miss = Math.Min(Math.Abs(before[g] - u), Math.Abs(before[g] + p[g] - u));
                worstMiss = Math.Max(worstMiss, miss);
                if (!(miss < 1e-4)) bad.Add($"row {r}: u {u:F6} selects token {want}, kernel drew {g}");
            }
            c.True(bad.Count == 0, "each row's token is the one its u selects (or a neighbour within 1e-4 of a boundary)", string.Join("\n", bad));
            DevicePtr ids2 = ctx.AllocFilled<int>(rows);
            launcher.Sample(ctx.Stream, dLogits, vocab, rows, vocab, ids2, s, step: 7, scratch);
            c.Exact<int>(ctx.Download<int>(ids2, rows), got, "same seed and step: same tokens");
            return c.Result();
        });

    static CheckResult TopKOfOneIsGreedy(KernelCheckContext ctx)
    {
        var launcher = ctx.Cached("sampling", () => new SamplingLaunchers(ctx.Loader));
        ushort[] logits = KernelData.FromFloats([0.5f, 4f, 4f, -2f, 3.9f]);
        DevicePtr ids = ctx.AllocFilled<int>(1);
        launcher.Sample(ctx.Stream, ctx.Upload(logits), 5, 1, 5, ids, new SamplingSettings(1f, 1, 1f, 0f, 5), step: 3, Scratch(ctx, 1, 5));
        var c = new Checker();
        c.Exact<int>(ctx.Download<int>(ids, 1), [1], "top_k 1 is argmax, lower index on ties");
        return c.Result();
    }

    static CheckResult SampleAtRealVocabularyStaysInTheTopK(KernelCheckContext ctx)
    {
        var launcher = ctx.Cached("sampling", () => new SamplingLaunchers(ctx.Loader));
        const int vocab = 151936;
        var rng = new Random(3);
        ushort[] logits = KernelData.Random(rng, vocab, 8f);
        DevicePtr ids = ctx.AllocFilled<int>(1);
        launcher.Sample(ctx.Stream, ctx.Upload(logits), vocab, 1, vocab, ids, new SamplingSettings(1f, 20, 1f, 0f, Seed: 99), step: 1, Scratch(ctx, 1, vocab));
        int id = ctx.Download<int>(ids, 1)[0];
        float[] f = KernelData.ToFloats(logits);
        float kth = f.OrderDescending().ElementAt(19);
        var c = new Checker();
        c.True(id >= 0 && id < vocab && f[id] >= kth, "token among the top 20", $"token {id} (logit {(id >= 0 && id < vocab ? f[id] : float.NaN)}) is not among the top 20 (threshold {kth})");
        return c.Result();
    }

    /// <summary>
    /// Issue 12, fault 5: the draw at a warp boundary of the block scan. 1024 tokens (one per thread); logit -k_i at inverse
    /// temperature ln 2 (fp32 0x3f317218, for which (-k * it) * log2(e) is exactly -k in fp32 for every k used here), so every
    /// kept mass is exactly 2^-k_i and the CPU can redo the kernel's fp32 scan bit for bit. The exponents (a counter hash,
    /// 1..25, 1..3 at warp edges, 0 for the maximum at token 1023) and the Philox step put u where the old per-thread claim
    /// (excl &lt;= u &lt; incl, lane 31's incl from the warp scan + the previous warps' prefix, lane 0's excl from the
    /// warp-level scan) left a gap (no claimant: the kernel fell back to the argmax, token 1023) or an overlap (two
    /// claimants writing the result); <see cref="OldClaimants"/> shows that it does. The draw must be the token whose exact
    /// (double) cumulative interval holds u, or its neighbour across a boundary within the fp32 scan's rounding of u: at
    /// most 11 roundings of 2^-24 of the total per prefix, plus ex2.approx's 2^-22 relative on each mass, so 2^-19 of the
    /// total; the two tokens at the boundary carry 2^-3 or more, so only they qualify.
    /// </summary>
    public static KernelCase ScanBoundary(int pattern, ulong step, int oldClaimants) =>
        new("sampling", $"sample rows (settings in device memory): draw at a warp boundary of the scan ({(oldClaimants == 0 ? "gap" : "overlap")} of the old claim)", false, ctx =>
        {
            const int vocab = 1024;
            const ulong seed = 1234;
            float it = BitConverter.Int32BitsToSingle(0x3f317218);
            int[] k = Enumerable.Range(0, vocab).Select(i => ScanBoundaryExponent(pattern, i)).ToArray();
            var c = new Checker();
            c.True(k.Distinct().All(e => (-(float)e * it - 0f) * 1.44269502f == -(float)e), "every mass 2^-k is exact in fp32");
            float[] mass = k.Select(e => MathF.Pow(2f, -e)).ToArray();
            var (u, claimants) = OldClaimants(mass, seed, step);
            c.True(claimants.Count == oldClaimants, $"the case hits the old claim's {(oldClaimants == 0 ? "gap" : "overlap")}", $"u {u:R}: {claimants.Count} claimants");
            double total = mass.Sum(m => (double)m), tol = total / (1 << 19), cum = 0;
            var accepted = new List<int>();
            for (int i = 0; i < vocab; i++)
            {
                if (cum - tol <= u && u < cum + mass[i] + tol) accepted.Add(i);   // exact: sums of powers of two in double
                cum += mass[i];
            }
            c.True(accepted.Count == 2 && !accepted.Contains(vocab - 1), "u sits at a boundary between two heavy tokens", string.Join(", ", accepted));

            var launcher = ctx.Cached("sampling", () => new SamplingLaunchers(ctx.Loader));
            DevicePtr logits = ctx.Upload(KernelData.FromFloats(k.Select(e => -(float)e).ToArray()));
            var settings = new SampleRowSettings { Seed = seed, Step = step, InvTemperature = it, TopK = 0, TopP = 1f, MinP = 0f };
            DevicePtr ids = ctx.AllocFilled<int>(1);
            var scratch = Scratch(ctx, 1, vocab);
            launcher.SampleRows(ctx.Stream, logits, vocab, 1, vocab, ctx.Upload(new[] { settings }), ids, scratch);
            int rows = ctx.Download<int>(ids, 1)[0];
            c.True(accepted.Contains(rows), "sample rows draws a token at the boundary", $"drew {rows} for u {u:R}; the tokens at the boundary are {string.Join(", ", accepted)}");
            float temperature = 1f / it;
            c.True(1f / temperature == it, "sample (fixed settings) gets the same inverse temperature");
            launcher.Sample(ctx.Stream, logits, vocab, 1, vocab, ids, new SamplingSettings(temperature, 0, 1f, 0f, seed), step, scratch);
            int single = ctx.Download<int>(ids, 1)[0];
            c.True(single == rows, "sample (fixed settings; row 0: the same Philox counter) draws the same token", $"{single} vs {rows}");
            return c.Result();
        });

    /// <summary>Exponent k_i of token i's mass 2^-k_i in <see cref="ScanBoundary"/>.</summary>
    public static int ScanBoundaryExponent(int pattern, int i)
    {
        if (i == 1023) return 0;   // the maximum (argmax), far from the boundaries that matter
        ulong x = (ulong)(uint)pattern * 0x9E3779B97F4A7C15UL ^ (ulong)i * 0xD1B54A32D192ED03UL;
        x ^= x >> 31; x *= 0xBF58476D1CE4E5B9UL; x ^= x >> 29;
        if (i % 32 is 0 or 31) return 1 + (int)(x % 3);
        int[] exact = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25];
        return exact[x % (ulong)exact.Length];
    }

    /// <summary>
    /// The pre-fix kernel's claim on one row of 1024 segments of one token each, in the kernel's fp32 order: Hillis-Steele
    /// inclusive scan within each warp (shfl_up by 1, 2, 4, 8, 16), the same over the 32 warp totals, lane incl += the
    /// previous warps' prefix; excl = the previous lane's incl, or for lane 0 the previous warps' prefix. Returns u and
    /// the threads for which excl &lt;= u &lt; incl held.
    /// </summary>
    public static (float U, List<int> Claimants) OldClaimants(float[] mass, ulong seed, ulong step)
    {
        static void Scan(Span<float> v)
        {
            for (int o = 1; o < 32; o <<= 1)
            {
                var old = v.ToArray();
                for (int l = o; l < 32; l++) v[l] = old[l] + old[l - o];
            }
        }
        var incl = (float[])mass.Clone();
        for (int w = 0; w < 32; w++) Scan(incl.AsSpan(w * 32, 32));
        var warps = new float[32];
        for (int w = 0; w < 32; w++) warps[w] = incl[w * 32 + 31];
        Scan(warps);
        for (int t = 32; t < 1024; t++) incl[t] += warps[t / 32 - 1];
        float u = (float)(Philox(seed, step, 0) >> 8) * (1f / 16777216f) * warps[31];
        var claimants = new List<int>();
        for (int t = 0; t < 1024; t++)
        {
            float excl = t % 32 != 0 ? incl[t - 1] : t == 0 ? 0f : warps[t / 32 - 1];
            if (mass[t] > 0 && u >= excl && u < incl[t]) claimants.Add(t);
        }
        return (u, claimants);
    }

    /// <summary>check_finite_bf16 (the forward's debug check) against a CPU scan of the same rows, over several stages.</summary>
    static KernelCase CheckFinite(int rows, int width, int ld, bool real = false) =>
        new("check_finite", $"check_finite_bf16 rows {rows} width {width} stride {ld}", real, ctx =>
        {
            var check = ctx.Cached("check_finite", () => new CheckFiniteLaunchers(ctx.Loader));
            var rng = new Random(width + rows);
            ushort[] x = KernelData.Random(rng, rows * ld, 1e30f);
            for (int i = 0; i < x.Length; i++) if ((x[i] & 0x7f80) == 0x7f80) x[i] = 0;   // start finite
            x[2 * ld + width - 1] = 0x7f7f;                  // the largest finite bf16: not reported
            int[] positions = Enumerable.Range(0, rows).Select(r => 100 + 7 * r).ToArray();
            positions[rows - 1] = 5_000_000;                 // beyond 2^20 - 1: saturates
            DevicePtr dX = ctx.Upload(x), dPos = ctx.Upload(positions), record = ctx.Upload(new[] { NonFiniteRecord.None });
            var c = new Checker();
            check.CheckFinite(ctx.Stream, dX, ld, dPos, rows, width, stage: 3, record);
            c.Exact<ulong>(ctx.Download<ulong>(record, 1), [NonFiniteRecord.None], "all finite (including 0x7f7f): nothing recorded");

            x[(rows - 1) * ld + 9] = 0xff80;                 // -inf in the last row
            x[1 * ld + width - 2] = 0x7fc1;                  // NaN late in row 1
            x[1 * ld + width - 1] = 0x7f80;                  // +inf after it
            dX = ctx.Upload(x);
            check.CheckFinite(ctx.Stream, dX, ld, dPos, rows, width, stage: 3, record);
            ulong got = ctx.Download<ulong>(record, 1)[0];
            c.True(NonFiniteRecord.Decode(got) == new NonFiniteRecord(3, 1, width - 2, 107), "stage 3: row 1's NaN (the first non-finite element)", $"{NonFiniteRecord.Decode(got)}");
            // A later stage never replaces an earlier one; an earlier stage does (the minimum of the keys).
            check.CheckFinite(ctx.Stream, dX, ld, dPos, rows, width, stage: 4, record);
            c.Exact<ulong>(ctx.Download<ulong>(record, 1), [got], "stage 4 after stage 3 keeps stage 3");
            x[1 * ld + width - 2] = 0;
            x[1 * ld + width - 1] = 0;
            check.CheckFinite(ctx.Stream, ctx.Upload(x), ld, DevicePtr.Null, rows, width, stage: 1, record);
            var r1 = NonFiniteRecord.Decode(ctx.Download<ulong>(record, 1)[0]);
            c.True(r1 == new NonFiniteRecord(1, rows - 1, 9, 0), "stage 1: the -inf of the last row; no positions given: 0", $"{r1}");
            x = new ushort[ld * rows];
            x[(rows - 1) * ld] = 0x7fc0;
            ctx.Device.CopyToDevice(record, BitConverter.GetBytes(NonFiniteRecord.None));
            check.CheckFinite(ctx.Stream, ctx.Upload(x), ld, dPos, rows, width, stage: 0, record);
            var r0 = NonFiniteRecord.Decode(ctx.Download<ulong>(record, 1)[0]);
            c.True(r0 == new NonFiniteRecord(0, rows - 1, 0, 0xfffff), "stage 0, saturated position", $"{r0}");
            return c.Result();
        });
}
