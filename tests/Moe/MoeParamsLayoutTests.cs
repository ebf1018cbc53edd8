using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Tests.Moe;

/// <summary>The C# params structs match the CUDA structs: pointers (8 bytes) first, then 4-byte ints, size rounded to 8.</summary>
[TestFixture]
public class MoeParamsLayoutTests
{
    static void Expect<T>(int pointers, int ints) where T : struct
    {
        int size = (pointers * 8 + ints * 4 + 7) / 8 * 8;
        Assert.That(Marshal.SizeOf<T>(), Is.EqualTo(size), $"sizeof({typeof(T).Name})");
        var fields = typeof(T).GetFields();
        for (int i = 0; i < fields.Length; i++)
        {
            int expected = i < pointers ? i * 8 : pointers * 8 + (i - pointers) * 4;
            Assert.That((int)Marshal.OffsetOf<T>(fields[i].Name), Is.EqualTo(expected), $"{typeof(T).Name}.{fields[i].Name}");
        }
        Assert.That(fields, Has.Length.EqualTo(pointers + ints));
    }

    [Test] public void Router() => Expect<MoeRouterParams>(6, 5);
    [Test] public void Align() => Expect<MoeAlignParams>(6, 3);
    [Test] public void GateUpGemv() => Expect<MoeGateUpGemvParams>(4, 4);
    [Test] public void DownGemv() => Expect<MoeDownGemvParams>(4, 3);
    [Test] public void GateUpGemm() => Expect<MoeGateUpGemmParams>(6, 3);
    [Test] public void DownGemm() => Expect<MoeDownGemmParams>(6, 2);
    [Test] public void Combine() => Expect<MoeCombineParams>(4, 3);
}
