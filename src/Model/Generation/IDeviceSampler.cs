using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Generation;

/// <summary>
/// A model that can sample the next token on its device (only the id comes back). The <see cref="Generator"/> uses it
/// when the requested sampling has no presence or repetition penalty (those need the logits on the host).
/// </summary>
public interface IDeviceSampler
{
    /// <summary>Most sequences one <see cref="DecodeBatchSampled"/> call takes.</summary>
    int MaxBatch { get; }

    /// <summary>Appends <paramref name="tokens"/> to <paramref name="sequence"/> and returns the sampled next token.</summary>
    int ForwardSampled(int sequence, ReadOnlySpan<int> tokens, in SamplingSettings settings);

    /// <summary>
    /// One decode step of several sequences at once: token <paramref name="tokens"/>[i] appended to sequence
    /// <paramref name="sequences"/>[i], whose next token is sampled with <paramref name="settings"/>[i] (one element:
    /// the same settings for every row) into <paramref name="nextTokens"/>[i]. Each row's random number depends on its
    /// own seed and its new token's position only, so a sequence draws the same token in a batch as alone.
    /// </summary>
    void DecodeBatchSampled(ReadOnlySpan<int> sequences, ReadOnlySpan<int> tokens, ReadOnlySpan<SamplingSettings> settings, Span<int> nextTokens);
}
