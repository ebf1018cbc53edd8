namespace Qwen3Cuda.Model.Selftest;

/// <summary>
/// One kernel check: a family (rmsnorm, gemv, ...), a name that says the shape, and the check itself, which runs the
/// kernel on the context's device and compares it with the CPU reference at its stated tolerance. On the emulator a check
/// may also hold the launch counters to bounds (DRAM bytes, coalescing, grid). The same objects are the kernel tests
/// (tests/Kernels, tests/Moe, parametrised over the backends present) and `qwen3cuda selftest`.
/// </summary>
/// <param name="RealShape">Runs a Qwen3-30B-A3B shape.</param>
/// <param name="Heavy">Too slow for the emulator's selftest (tens of seconds there); the tests and a GPU run it.</param>
public sealed record KernelCase(string Family, string Name, bool RealShape, Func<KernelCheckContext, CheckResult> Check, bool Heavy = false)
{
    public override string ToString() => Name;
}
