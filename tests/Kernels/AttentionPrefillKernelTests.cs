using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

[TestFixture]
public sealed class AttentionPrefillKernelTests
{
    private EmulatorContext _emu = null!;

    [OneTimeSetUp]
    public void SetUp() => _emu = new EmulatorContext();

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    // P goes into the mma as bf16 hi + lo (~2^-17 relative per weight, against FlashAttention-2's single bf16 P at
    // 2^-9) and the output is rounded once to bf16 (2^-9): within 2^-8 relative + 5e-4 absolute (fp32 accumulation
    // order, exp2f, the residual P error summed against |v| <= 1) of the fp64 reference, the decode kernel's tolerance.
    // With a single bf16 P this needed 2e-3 absolute; 5e-4 fails for it.
    private const double Atol = 5e-4, Rtol = 1.0 / 256;

    /// <param name="qLens">new tokens per sequence; <param name="ctxLens">keys per sequence (earlier context + new tokens)</param>
    [TestCase(new[] { 5 }, new[] { 5 }, 4, 1, 1, 128)]                    // one short prompt, group of 4
    [TestCase(new[] { 70, 1 }, new[] { 70, 40 }, 8, 2, 2, 128)]           // 2 query tiles (ragged), and a 1-token chunk after 39 keys
    [TestCase(new[] { 33 }, new[] { 133 }, 32, 4, 3, 128)]                // chunked prefill after 100 keys of context, real heads
    [TestCase(new[] { 20, 16 }, new[] { 20, 50 }, 4, 2, 4, 32)]           // D 32 (the small preset): a prompt, and a chunk after 34 keys
    [TestCase(new[] { 9 }, new[] { 40 }, 4, 2, 5, 16)]                     // D 16 (the tiny preset): a chunk after 31 keys
    public void MatchesReference(int[] qLens, int[] ctxLens, int nH, int nKV, int seed, int d)
    {
        const int pageSize = 16;
        var rng = new Random(seed);
        var kv = new PagedKvFixture(rng, ctxLens, nKV, d, pageSize);
        var launchers = new AttentionPrefillLaunchers(_emu.Loader, d);
        int seqs = qLens.Length, totalQ = qLens.Sum();
        var qStart = new int[seqs + 1];
        for (int s = 0; s < seqs; s++) qStart[s + 1] = qStart[s] + qLens[s];
        ushort[] q = Bf16.Random(rng, totalQ * nH * d, 2f);
        DevicePtr dOut = _emu.AllocFilled<ushort>(totalQ * nH * d);
        launchers.Prefill(_emu.Stream, new AttnPrefillParams
        {
            Q = _emu.Upload(q), KCache = _emu.Upload(kv.K), VCache = _emu.Upload(kv.V), BlockTable = _emu.Upload(kv.BlockTable),
            ContextLens = _emu.Upload(ctxLens), QStart = _emu.Upload(qStart), Out = dOut, Seqs = seqs, NumQHeads = nH,
            NumKvHeads = nKV, PageSize = pageSize, MaxPagesPerSeq = kv.MaxPagesPerSeq, QStride = nH * d, OutStride = nH * d,
        }, qLens.Max());
        _emu.Device.Synchronize(_emu.Stream);   // launch records exist once the kernel ran
        var launch = _emu.Device.LastLaunch!;
        Assert.That(launch.MmaCount, Is.GreaterThan(0), "tensor-core path");
        TestContext.Out.WriteLine($"| attn_prefill q {string.Join("/", qLens)} ctx {string.Join("/", ctxLens)} heads {nH}/{nKV} | grid {launch.Grid} | mma {launch.MmaCount} | coalescing {launch.CoalescingEfficiency:F3} |");

        var exp = new float[totalQ * nH * d];
        int group = nH / nKV;
        for (int s = 0; s < seqs; s++)
            for (int i = 0; i < qLens[s]; i++)
                for (int h = 0; h < nH; h++)
                {
                    int row = qStart[s] + i, seq = s, kvh = h / group;
                    int visible = ctxLens[s] - qLens[s] + i + 1;     // causal: keys 0 .. own position
                    CpuReference.AttendOne(Bf16.ToFloats(q.AsSpan((row * nH + h) * d, d)), (j, c) => kv.KAt(seq, j, kvh, c),
                        (j, c) => kv.VAt(seq, j, kvh, c), visible, d, exp.AsSpan((row * nH + h) * d, d));
                }
        Compare.AssertCloseBf16(_emu.Download<ushort>(dOut, totalQ * nH * d), exp, Atol, Rtol, "prefill attention output");
    }

    [Test]
    public void FirstTokenAttendsOnlyToItself()
    {
        // Analytic: with no earlier context, query 0 sees only key 0, so its output is exactly V[0] (softmax of one score).
        const int d = 128;
        var rng = new Random(9);
        var kv = new PagedKvFixture(rng, [3], 1, d, 16);
        var launchers = new AttentionPrefillLaunchers(_emu.Loader, d);
        DevicePtr dOut = _emu.AllocFilled<ushort>(3 * d);
        launchers.Prefill(_emu.Stream, new AttnPrefillParams
        {
            Q = _emu.Upload(Bf16.Random(rng, 3 * d, 3f)), KCache = _emu.Upload(kv.K), VCache = _emu.Upload(kv.V),
            BlockTable = _emu.Upload(kv.BlockTable), ContextLens = _emu.Upload(new[] { 3 }), QStart = _emu.Upload(new[] { 0, 3 }),
            Out = dOut, Seqs = 1, NumQHeads = 1, NumKvHeads = 1, PageSize = 16, MaxPagesPerSeq = kv.MaxPagesPerSeq, QStride = d, OutStride = d,
        }, 3);
        ushort[] got = _emu.Download<ushort>(dOut, d);
        for (int c = 0; c < d; c++) Assert.That(got[c], Is.EqualTo(kv.V[kv.Offset(0, 0, 0) + c]), $"dim {c}: p = 1 exactly, so V[0] comes through bit for bit");
    }

    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(AttnPrefillParams), "attention_prefill.cu", "AttnPrefillParams");
}
