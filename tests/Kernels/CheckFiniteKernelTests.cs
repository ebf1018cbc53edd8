using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>check_finite_bf16 (the device model's debug check) against a CPU scan of the same rows.</summary>
[TestFixture]
public sealed class CheckFiniteKernelTests
{
    private EmulatorContext _emu = null!;
    private CheckFiniteLaunchers _check = null!;

    [OneTimeSetUp]
    public void SetUp()
    {
        _emu = new EmulatorContext();
        _check = new CheckFiniteLaunchers(_emu.Loader);
    }

    [OneTimeTearDown]
    public void TearDown() => _emu.Dispose();

    /// <summary>The CPU's answer: the lowest (row, column) whose bf16 exponent is all ones, as the kernel's key.</summary>
    static ulong Expected(ushort[] x, int rows, int width, int ld, int[] positions, int stage)
    {
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < width; c++)
                if ((x[r * ld + c] & 0x7f80) == 0x7f80)
                    return (ulong)(uint)stage << 52 | (ulong)(uint)r << 36 | (ulong)(uint)c << 20 | (uint)Math.Min(positions[r], 0xfffff);
        return NonFiniteRecord.None;
    }

    [TestCase(5, 2048, 2048)]   // real hidden rows
    [TestCase(3, 136, 144)]     // odd: 17 chunks, padded stride
    public void FindsTheFirstNonFiniteElement_AndKeepsTheEarliestStage(int rows, int width, int ld)
    {
        var rng = new Random(width + rows);
        ushort[] x = Bf16.Random(rng, rows * ld, 1e30f);
        for (int i = 0; i < x.Length; i++) if ((x[i] & 0x7f80) == 0x7f80) x[i] = 0;   // start finite
        x[2 * ld + width - 1] = 0x7f7f;                  // the largest finite bf16: not reported
        int[] positions = Enumerable.Range(0, rows).Select(r => 100 + 7 * r).ToArray();
        positions[rows - 1] = 5_000_000;                 // beyond 2^20 - 1: saturates
        DevicePtr dX = _emu.Upload(x), dPos = _emu.Upload(positions), record = _emu.Upload(new[] { NonFiniteRecord.None });

        _check.CheckFinite(_emu.Stream, dX, ld, dPos, rows, width, stage: 3, record);
        Assert.That(_emu.Download<ulong>(record, 1)[0], Is.EqualTo(NonFiniteRecord.None), "all finite (including 0x7f7f): nothing recorded");

        x[(rows - 1) * ld + 9] = 0xff80;                 // -inf in the last row
        x[1 * ld + width - 2] = 0x7fc1;                  // NaN late in row 1
        x[1 * ld + width - 1] = 0x7f80;                  // +inf after it
        dX = _emu.Upload(x);
        _check.CheckFinite(_emu.Stream, dX, ld, dPos, rows, width, stage: 3, record);
        ulong got = _emu.Download<ulong>(record, 1)[0];
        Assert.That(got, Is.EqualTo(Expected(x, rows, width, ld, positions, 3)));
        Assert.That(NonFiniteRecord.Decode(got), Is.EqualTo(new NonFiniteRecord(3, 1, width - 2, 107)));

        // A later stage never replaces an earlier one; an earlier stage does (the minimum of the keys).
        _check.CheckFinite(_emu.Stream, dX, ld, dPos, rows, width, stage: 4, record);
        Assert.That(_emu.Download<ulong>(record, 1)[0], Is.EqualTo(got), "stage 4 after stage 3");
        x[1 * ld + width - 2] = 0;
        x[1 * ld + width - 1] = 0;
        _check.CheckFinite(_emu.Stream, _emu.Upload(x), ld, DevicePtr.Null, rows, width, stage: 1, record);
        Assert.That(NonFiniteRecord.Decode(_emu.Download<ulong>(record, 1)[0]), Is.EqualTo(new NonFiniteRecord(1, rows - 1, 9, 0)),
            "stage 1: the -inf of the last row; no positions given: 0");
        _check.CheckFinite(_emu.Stream, dX, ld, dPos, rows, width, stage: 2, record);
        Assert.That(NonFiniteRecord.Decode(_emu.Download<ulong>(record, 1)[0])!.Value.Stage, Is.EqualTo(1));

        x = new ushort[ld * rows];
        x[(rows - 1) * ld] = 0x7fc0;
        _emu.Device.CopyToDevice(record, BitConverter.GetBytes(NonFiniteRecord.None));
        _check.CheckFinite(_emu.Stream, _emu.Upload(x), ld, dPos, rows, width, stage: 0, record);
        Assert.That(NonFiniteRecord.Decode(_emu.Download<ulong>(record, 1)[0]), Is.EqualTo(new NonFiniteRecord(0, rows - 1, 0, 0xfffff)), "saturated position");
    }

    [Test]
    public void ParamsMirrorMatchesCuda() => StructLayoutCheck.AssertMatches(typeof(CheckFiniteParams), "check_finite.cu", "CheckFiniteParams");

    [Test]
    public void UnsupportedShapes_AreRejected()
    {
        Assert.That(() => _check.CheckFinite(_emu.Stream, default, 12, default, 1, 12, 0, default), Throws.ArgumentException.With.Message.Contains("multiple of 8"));
        Assert.That(() => _check.CheckFinite(_emu.Stream, default, 16, default, 1, 8, 4096, default), Throws.InstanceOf<ArgumentOutOfRangeException>());
    }
}
