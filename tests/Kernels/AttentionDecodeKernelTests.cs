using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

[TestFixture]
public sealed class AttentionDecodeKernelTests
{
    private EmulatorContext _emu = null!;

    [OneTimeSetUp]
    public void SetUp() => _emu = new EmulatorContext();

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    // The output is a convex combination of bf16 values in [-1, 1], rounded once to bf16 (half an ulp: 2^-9 relative);
    // fp32 online softmax with ex2.approx (2^-22 relative) and fp32 accumulation over up to 4096 keys adds < 1e-4
    // absolute against the fp64 reference. So rtol 2^-8 and atol 5e-4.
    private const double Atol = 5e-4, Rtol = 1.0 / 256;

    private (AttentionDecodeLaunchers L, DecodeAttentionArgs A, PagedKvFixture Kv, ushort[] Q, DevicePtr Out) Setup(
        int[] lens, int nH, int nKV, int d, int pageSize, int workspaceSplits, int seed)
    {
        var rng = new Random(seed);
        var kv = new PagedKvFixture(rng, lens, nKV, d, pageSize);
        var launchers = new AttentionDecodeLaunchers(_emu.Loader, d);
        int seqs = lens.Length;
        ushort[] q = Bf16.Random(rng, seqs * nH * d, 2f);
        long wsBytes = launchers.WorkspaceBytes(seqs, nH, workspaceSplits, out long lseBytes);
        DevicePtr dOut = _emu.AllocFilled<ushort>(seqs * nH * d);
        var a = new DecodeAttentionArgs(_emu.Upload(q), nH * d, _emu.Upload(kv.K), _emu.Upload(kv.V), _emu.Upload(kv.BlockTable),
            kv.MaxPagesPerSeq, pageSize, _emu.Upload(lens), seqs, lens.Max(), nH, nKV, dOut, nH * d,
            _emu.Alloc<byte>(wsBytes), _emu.Alloc<byte>(lseBytes), workspaceSplits);
        return (launchers, a, kv, q, dOut);
    }

    private static float[] Reference(PagedKvFixture kv, ushort[] q, int nH, int d)
    {
        int seqs = kv.ContextLens.Length, group = nH / kv.NumKvHeads;
        var exp = new float[seqs * nH * d];
        for (int s = 0; s < seqs; s++)
            for (int h = 0; h < nH; h++)
            {
                int kvh = h / group, seq = s;
                CpuReference.AttendOne(Bf16.ToFloats(q.AsSpan((s * nH + h) * d, d)), (j, i) => kv.KAt(seq, j, kvh, i),
                    (j, i) => kv.VAt(seq, j, kvh, i), kv.ContextLens[s], d, exp.AsSpan((s * nH + h) * d, d));
            }
        return exp;
    }

    [TestCase(new[] { 1, 17, 100 }, 32, 4, 16, 64, 1, 128)]    // real heads; 1 key, page-crossing lengths; split path
    [TestCase(new[] { 33, 5 }, 32, 4, 16, 1, 2, 128)]          // one split: direct bf16 output, no combine
    [TestCase(new[] { 70 }, 6, 2, 16, 64, 3, 128)]             // odd: group of 3 (warp 1 has one head), tail tile of 6 keys
    [TestCase(new[] { 300, 31 }, 8, 1, 8, 64, 4, 128)]         // group of 8 over one KV head, page size 8
    [TestCase(new[] { 1, 40, 75 }, 8, 2, 4, 64, 5, 32)]        // D 32 (one dim per lane; the small preset), split path, page size 4
    [TestCase(new[] { 45, 3 }, 4, 2, 8, 1, 6, 32)]             // D 32, one split: scalar bf16 output
    [TestCase(new[] { 50 }, 4, 2, 16, 64, 7, 64)]              // D 64
    [TestCase(new[] { 2, 66 }, 4, 2, 4, 64, 8, 16)]            // D 16 (the tiny preset; half the threads load, lanes 16..31 do not store)
    public void MatchesReference(int[] lens, int nH, int nKV, int pageSize, int workspaceSplits, int seed, int d)
    {
        var (launchers, a, kv, q, dOut) = Setup(lens, nH, nKV, d, pageSize, workspaceSplits, seed);
        int splits = launchers.Decode(_emu.Stream, a);
        Assert.That(splits, workspaceSplits == 1 ? Is.EqualTo(1) : Is.GreaterThan(1), "split count");
        Compare.AssertCloseBf16(_emu.Download<ushort>(dOut, lens.Length * nH * d), Reference(kv, q, nH, d), Atol, Rtol, "decode attention output");
    }

    [Test]
    public void RealShapeContext4096MatchesReferenceAndCounters()
    {
        const int d = 128, nH = 32, nKV = 4, len = 4096, pageSize = 16;
        var (launchers, a, kv, q, dOut) = Setup([len], nH, nKV, d, pageSize, 128, 11);
        _emu.Device.ClearLaunches();
        int splits = launchers.Decode(_emu.Stream, a);
        _emu.Device.Synchronize(_emu.Stream);   // launch records exist once the kernels ran
        var launch = _emu.Device.Launches[0];
        Compare.AssertCloseBf16(_emu.Download<ushort>(dOut, nH * d), Reference(kv, q, nH, d), Atol, Rtol, "decode attention over 4096 keys");

        long kvBytes = (long)len * nKV * d * 2 * 2;
        long partialBytes = (long)nH * splits * (d + 1) * 4;
        long minBytes = kvBytes + nH * d * 2 + (len / pageSize) * 4 + 4 + partialBytes;
        double ratio = launch.DistinctSectors * 32.0 / minBytes;
        TestContext.Out.WriteLine("| kernel | grid | distinct sectors x32 / minimum bytes | (vs K+V only) | coalescing |");
        TestContext.Out.WriteLine($"| attn_decode_split ctx 4096, 32/4 heads | {launch.GridBlocks} | {ratio:F3} | {launch.DistinctSectors * 32.0 / kvBytes:F3} | {launch.CoalescingEfficiency:F3} |");
        Assert.That(launch.GridBlocks, Is.GreaterThanOrEqualTo(132), "grid covers the SMs");
        Assert.That(ratio, Is.LessThanOrEqualTo(1.05), "K/V read once (distinct sectors within 5% of the minimum incl. the split partials)");
        Assert.That(launch.CoalescingEfficiency, Is.GreaterThanOrEqualTo(0.95), "coalescing");
    }

    [Test]
    public void ParamsMirrorMatchesCuda() =>
        StructLayoutCheck.AssertMatches(typeof(AttnDecodeParams), "attention_decode.cu", "AttnDecodeParams");
}
