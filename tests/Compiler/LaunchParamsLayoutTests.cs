using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Compiler;

/// <summary>
/// The C# mirrors of kernel params structs must match the CUDA layout byte for byte. NVRTC's PTX gives
/// the struct's size (the .param byte array) and the offset of each field the kernel reads
/// (ld.param.X [name_param_0+OFFSET]); those are compared with Marshal.SizeOf/OffsetOf.
/// </summary>
[TestFixture]
public class LaunchParamsLayoutTests
{
    private static string Ptx(string file) =>
        new KernelCompiler().Compile(new KernelBuild(file, "sm_90", CompileTarget.Ptx) { LineInfo = false }).Ptx;

    [Test]
    public void AddRmsNormParamsMatchesTheCudaStruct()
    {
        string ptx = Ptx("rmsnorm.cu");
        var size = Regex.Match(ptx, @"\.param \.align 8 \.b8 add_rmsnorm_bf16_param_0\[(\d+)\]");
        Assert.That(size.Success, "the kernel takes one struct by value");
        Assert.That(Marshal.SizeOf<AddRmsNormParams>(), Is.EqualTo(int.Parse(size.Groups[1].Value)));
        var offsets = Regex.Matches(ptx, @"\[add_rmsnorm_bf16_param_0\+(\d+)\]").Select(m => int.Parse(m.Groups[1].Value)).ToHashSet();
        string[] fields = ["Out", "Hidden", "Delta", "Weight", "Rows", "Width", "Eps"];
        var expected = fields.Select(f => (int)Marshal.OffsetOf<AddRmsNormParams>(f)).ToHashSet();
        // Every offset the kernel reads is a field start of the C# struct (Rows and Width may be read as one
        // 8-byte load at Rows' offset, and Rows is otherwise unused by the kernel).
        Assert.That(offsets.IsSubsetOf(expected), $"PTX reads offsets {string.Join(",", offsets.Order())}, C# fields start at {string.Join(",", expected.Order())}");
        Assert.That(offsets, Does.Contain((int)Marshal.OffsetOf<AddRmsNormParams>("Eps")));
    }

    [Test]
    public void KernelArgsPointAtEachValueWithItsSize()
    {
        var args = new KernelArgs(stackalloc byte[64], stackalloc nint[4]);
        args.Add((byte)1);
        args.Add(0x0A0B0C0D);
        args.Add(new DevicePtr(0x1122334455667788));
        Assert.That(args.Count, Is.EqualTo(3));
        Assert.That(args.SizeOf(0), Is.EqualTo(1));
        Assert.That(args.Bytes(1).ToArray(), Is.EqualTo(new byte[] { 0x0D, 0x0C, 0x0B, 0x0A }));
        Assert.That(args.Bytes(2).ToArray(), Is.EqualTo(BitConverter.GetBytes(0x1122334455667788UL)));
        Assert.That((long)args.Pointers[2] % 8, Is.Zero, "8-byte values are 8-byte aligned in the buffer");
    }

    [Test]
    public void KernelArgsRejectsTooManyOrTooLarge()
    {
        Assert.Throws<ArgumentException>(() =>
        {
            var args = new KernelArgs(stackalloc byte[8], stackalloc nint[4]);
            args.Add(1L);
            args.Add(2L);
        });
        Assert.Throws<ArgumentException>(() =>
        {
            var args = new KernelArgs(stackalloc byte[64], stackalloc nint[1]);
            args.Add(1);
            args.Add(2);
        });
    }
}
