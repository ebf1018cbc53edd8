namespace Qwen3Cuda.Model.Selftest;

/// <summary>Every kernel check, family by family: the kernel tests' list and `qwen3cuda selftest`'s.</summary>
public static class KernelCases
{
    public static IEnumerable<KernelCase> All() =>
        NormRopeCases.All().Concat(ProjectionCases.All()).Concat(AttentionCases.All()).Concat(SamplingCases.All()).Concat(MoeCases.All()).Concat(MlpCases.All()).Concat(PersistentDecodeCases.All()).Concat(EarlyRoutingCases.All());

    /// <summary>The family names (rmsnorm, rope, gemv, ...), in the order of <see cref="All"/>.</summary>
    public static IReadOnlyList<string> Families() => [.. All().Select(c => c.Family).Distinct()];
}
