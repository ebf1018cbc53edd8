using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>
/// The attention kernels at head_dim 16 and 32 (the synth presets: tiny heads 4/2 x 16, small 8/2 x 32) against the model's own
/// reference ops (Qwen3Cuda.Model.Reference.ReferenceOps), one prompt of 70 tokens (3 key tiles) in a paged cache of
/// 4-token pages in scrambled page order: qk_norm_rope_kv_write vs ReferenceOps.RmsNorm + RopeCosSin + ApplyRope, then, on the
/// device's own q / K / V, attn_prefill (all rows, causal) and attn_decode_split (the last row) vs ReferenceOps.Attention.
/// </summary>
[TestFixture]
public sealed class SmallHeadDimReferenceOpsTests
{
    const int NH = 4, NKV = 2, Tokens = 70, PageSize = 4;
    const float Eps = 1e-6f;

    private EmulatorContext _emu = null!;

    [OneTimeSetUp]
    public void SetUp() => _emu = new EmulatorContext();

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    [TestCase(32)]
    [TestCase(16)]
    public void RopeThenPrefillAndDecodeAttention_MatchReferenceOps(int D)
    {
        var rng = new Random(D);
        int heads = NH + 2 * NKV, stride = heads * D;
        // q and k columns in [-3, 3) (normed values up to ~3, as RopeKernelTests); v columns in [-1, 1) (attention bounds below)
        var qkv = new ushort[Tokens * stride];
        for (int t = 0; t < Tokens; t++)
        {
            Bf16.Random(rng, (NH + NKV) * D, 3f).CopyTo(qkv, t * stride);
            Bf16.Random(rng, NKV * D, 1f).CopyTo(qkv, t * stride + (NH + NKV) * D);
        }
        ushort[] qw = Bf16.Random(rng, D, 1.5f), kw = Bf16.Random(rng, D, 1.5f);
        var (invFreq, scaling) = ReferenceOps.RopeParameters(D, 1_000_000, null, 2048);
        int pages = (Tokens + PageSize - 1) / PageSize;
        int[] table = Enumerable.Range(0, pages).Select(i => (i * 5 + 3) % pages).ToArray();   // a permutation (gcd(5, 18) = 1)
        int[] positions = Enumerable.Range(0, Tokens).ToArray();
        int[] slots = positions.Select(t => table[t / PageSize] * PageSize + t % PageSize).ToArray();
        long cacheElems = (long)pages * PageSize * NKV * D;

        DevicePtr dQkv = _emu.Upload(qkv), dQ = _emu.AllocFilled<ushort>(Tokens * NH * D);
        DevicePtr dK = _emu.AllocFilled<ushort>(cacheElems, 0), dV = _emu.AllocFilled<ushort>(cacheElems, 0);
        new RopeLaunchers(_emu.Loader, D).QkNormRopeKvWrite(_emu.Stream, new QkNormRopeParams
        {
            Qkv = dQkv, QOut = dQ, KCache = dK, VCache = dV, QNormWeight = _emu.Upload(qw), KNormWeight = _emu.Upload(kw),
            InvFreq = _emu.Upload(invFreq), Positions = _emu.Upload(positions), SlotMapping = _emu.Upload(slots),
            Tokens = Tokens, NumQHeads = NH, NumKvHeads = NKV, QkvStride = stride, QOutStride = NH * D, Eps = Eps, AttentionScaling = scaling,
        });
        float[] q = Bf16.ToFloats(_emu.Download<ushort>(dQ, Tokens * NH * D));
        ushort[] kCache = _emu.Download<ushort>(dK, cacheElems), vCache = _emu.Download<ushort>(dV, cacheElems);
        // Sequence-order K / V [Tokens, nKV * D] read back through the slots (the reference's layout).
        var keys = new float[Tokens * NKV * D];
        var values = new float[Tokens * NKV * D];
        for (int t = 0; t < Tokens; t++)
            for (int i = 0; i < NKV * D; i++)
            {
                keys[t * NKV * D + i] = Bf16.ToFloat(kCache[(long)slots[t] * NKV * D + i]);
                values[t * NKV * D + i] = Bf16.ToFloat(vCache[(long)slots[t] * NKV * D + i]);
            }

        // Rope: the reference from the same inputs. Tolerance as RopeKernelTests: a rounding flip in the norm (rsqrt.approx
        // vs 1/sqrt) or in bf16(cos/sin) moves a product by about one ulp of the inputs (magnitude 2-4: ulp 2^-6), so
        // 0.04 absolute plus 2^-6 relative.
        var cos = new float[D];
        var sin = new float[D];
        var expQ = new float[Tokens * NH * D];
        var expK = new float[Tokens * NKV * D];
        for (int t = 0; t < Tokens; t++)
        {
            float[] row = Bf16.ToFloats(qkv.AsSpan(t * stride, (NH + NKV) * D));
            ReferenceOps.RmsNorm(row.AsSpan(0, NH * D), qw, Eps, expQ.AsSpan(t * NH * D, NH * D), D);
            ReferenceOps.RmsNorm(row.AsSpan(NH * D, NKV * D), kw, Eps, expK.AsSpan(t * NKV * D, NKV * D), D);
            ReferenceOps.RopeCosSin(invFreq, scaling, positions[t], cos, sin);
            ReferenceOps.ApplyRope(expQ.AsSpan(t * NH * D, NH * D), NH, D, cos, sin);
            ReferenceOps.ApplyRope(expK.AsSpan(t * NKV * D, NKV * D), NKV, D, cos, sin);
            for (int i = 0; i < NKV * D; i++)   // V is copied bit for bit
                Assert.That(values[t * NKV * D + i], Is.EqualTo(Bf16.ToFloat(qkv[t * stride + (NH + NKV) * D + i])), $"v token {t} element {i}");
        }
        Compare.AssertClose(q, expQ, 0.04, 1.0 / 64, $"q after norm + rope (D {D})");
        Compare.AssertClose(keys, expK, 0.04, 1.0 / 64, $"K cache after norm + rope (D {D})");

        // Attention reference on the device's own q / K / V: fp32 scores and softmax, output rounded to bf16 once.
        var expAttn = new float[Tokens * NH * D];
        ReferenceOps.Attention(q, keys, values, expAttn, Tokens, 0, NH, NKV, D);
        DevicePtr dTable = _emu.Upload(table), dLens = _emu.Upload(new[] { Tokens });

        // Prefill: P is rounded to bf16 for the mma (2e-3 absolute for a convex combination of |v| <= 1, as
        // AttentionPrefillKernelTests), and both sides round the output to bf16 once, so they may sit one bf16 ulp
        // apart (2^-7 relative).
        DevicePtr dOut = _emu.AllocFilled<ushort>(Tokens * NH * D);
        new AttentionPrefillLaunchers(_emu.Loader, D).Prefill(_emu.Stream, new AttnPrefillParams
        {
            Q = dQ, KCache = dK, VCache = dV, BlockTable = dTable, ContextLens = dLens, QStart = _emu.Upload(new[] { 0, Tokens }),
            Out = dOut, Seqs = 1, NumQHeads = NH, NumKvHeads = NKV, PageSize = PageSize, MaxPagesPerSeq = pages, QStride = NH * D, OutStride = NH * D,
        }, Tokens);
        Compare.AssertCloseBf16(_emu.Download<ushort>(dOut, Tokens * NH * D), expAttn, 2e-3, 1.0 / 128, $"prefill attention (D {D})");

        // Decode of the last row: fp32 online softmax (ex2.approx) against the fp32 reference, 5e-4 absolute as
        // AttentionDecodeKernelTests, plus one bf16 ulp of the rounded outputs (2^-7 relative). Split path (workspace for 8).
        var decode = new AttentionDecodeLaunchers(_emu.Loader, D);
        long wsBytes = decode.WorkspaceBytes(1, NH, 8, out long lseBytes);
        DevicePtr dLast = _emu.AllocFilled<ushort>(NH * D);
        int splits = decode.Decode(_emu.Stream, new DecodeAttentionArgs(dQ + (long)(Tokens - 1) * NH * D * sizeof(ushort), NH * D, dK, dV,
            dTable, pages, PageSize, dLens, 1, Tokens, NH, NKV, dLast, NH * D, _emu.Alloc<byte>(wsBytes), _emu.Alloc<byte>(lseBytes), 8));
        Assert.That(splits, Is.GreaterThan(1), "split path (partials + combine)");
        Compare.AssertCloseBf16(_emu.Download<ushort>(dLast, NH * D), expAttn.AsSpan((Tokens - 1) * NH * D, NH * D), 5e-4, 1.0 / 128, $"decode attention, last row (D {D})");
    }
}
