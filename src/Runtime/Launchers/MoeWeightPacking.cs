namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>
/// Device layout of one MoE layer's experts, stacked so that a kernel finds expert e by an offset:
/// <list type="bullet">
/// <item><c>gate_up [E, 2I, H]</c> bf16: expert e's rows 0..I-1 are <c>gate_proj [I, H]</c>, rows I..2I-1 are
/// <c>up_proj [I, H]</c> (concatenated, NOT interleaved: each half is a verbatim copy of the HF tensor, and the
/// GEMM's B tile takes 64 gate rows plus the same 64 up rows so its epilogue holds gate and up of one column).</item>
/// <item><c>down [E, H, I]</c> bf16: <c>down_proj [H, I]</c> verbatim.</item>
/// </list>
/// The loader builds the stacked arrays on the host (or per expert in a staging buffer copied to
/// <see cref="GateUpExpertOffsetBytes"/>) with the helpers below. Tensors are bf16 bits (ushort), row-major as stored.
/// </summary>
public static class MoeWeightPacking
{
    public static long GateUpElements(int experts, int inter, int hidden) => (long)experts * 2 * inter * hidden;
    public static long DownElements(int experts, int hidden, int inter) => (long)experts * hidden * inter;
    public static long GateUpExpertOffsetBytes(int expert, int inter, int hidden) => (long)expert * 2 * inter * hidden * sizeof(ushort);
    public static long DownExpertOffsetBytes(int expert, int hidden, int inter) => (long)expert * hidden * inter * sizeof(ushort);

    /// <summary>Writes one expert's fused block <c>[2I, H]</c> (gate rows then up rows) into <paramref name="expertGateUp"/>.</summary>
    public static void PackGateUpExpert(Span<ushort> expertGateUp, ReadOnlySpan<ushort> gateProj, ReadOnlySpan<ushort> upProj, int inter, int hidden)
    {
        long n = (long)inter * hidden;
        if (gateProj.Length != n) throw new ArgumentException($"gate_proj has {gateProj.Length} elements, expected [I={inter}, H={hidden}] = {n}", nameof(gateProj));
        if (upProj.Length != n) throw new ArgumentException($"up_proj has {upProj.Length} elements, expected [I={inter}, H={hidden}] = {n}", nameof(upProj));
        if (expertGateUp.Length != 2 * n) throw new ArgumentException($"destination has {expertGateUp.Length} elements, expected [2I={2 * inter}, H={hidden}] = {2 * n}", nameof(expertGateUp));
        gateProj.CopyTo(expertGateUp[..(int)n]);
        upProj.CopyTo(expertGateUp[(int)n..]);
    }

    /// <summary>Writes expert <paramref name="expert"/>'s gate and up into the stacked <c>[E, 2I, H]</c> array.</summary>
    public static void PackGateUp(Span<ushort> stackedGateUp, int expert, ReadOnlySpan<ushort> gateProj, ReadOnlySpan<ushort> upProj, int inter, int hidden)
    {
        long per = 2L * inter * hidden;
        if (expert < 0 || (expert + 1) * per > stackedGateUp.Length)
            throw new ArgumentOutOfRangeException(nameof(expert), $"expert {expert} is outside the stacked gate_up array of {stackedGateUp.Length / Math.Max(per, 1)} experts");
        PackGateUpExpert(stackedGateUp.Slice((int)(expert * per), (int)per), gateProj, upProj, inter, hidden);
    }

    /// <summary>Writes expert <paramref name="expert"/>'s <c>down_proj [H, I]</c> into the stacked <c>[E, H, I]</c> array.</summary>
    public static void PackDown(Span<ushort> stackedDown, int expert, ReadOnlySpan<ushort> downProj, int hidden, int inter)
    {
        long per = (long)hidden * inter;
        if (downProj.Length != per) throw new ArgumentException($"down_proj has {downProj.Length} elements, expected [H={hidden}, I={inter}] = {per}", nameof(downProj));
        if (expert < 0 || (expert + 1) * per > stackedDown.Length)
            throw new ArgumentOutOfRangeException(nameof(expert), $"expert {expert} is outside the stacked down array of {stackedDown.Length / Math.Max(per, 1)} experts");
        downProj.CopyTo(stackedDown.Slice((int)(expert * per), (int)per));
    }
}
