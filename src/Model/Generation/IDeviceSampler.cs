using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Model.Generation;

/// <summary>
/// A model that can sample the next token on its device (only the id comes back). The <see cref="Generator"/> uses it
/// when the requested sampling has no presence or repetition penalty (those need the logits on the host).
/// </summary>
public interface IDeviceSampler
{
    /// <summary>Appends <paramref name="tokens"/> to <paramref name="sequence"/> and returns the sampled next token.</summary>
    int ForwardSampled(int sequence, ReadOnlySpan<int> tokens, in SamplingSettings settings);
}
