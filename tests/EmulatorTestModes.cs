using Qwen3Cuda.Runtime.Emulation;

/// <summary>
/// Before any test: the emulator's defaults for this test run are strict streams (work runs only when the host
/// synchronises; docs/emulator.md) plus whatever QWEN3CUDA_EMULATOR adds (.ci/run's extra passes: interleaved scheduling,
/// hardware-like math, other poison seeds). Exported to the environment so that CLI child processes run the same modes.
/// A test that needs other modes passes EmulatorOptions.Modes explicitly.
/// </summary>
[SetUpFixture]
public sealed class EmulatorTestModes
{
    [OneTimeSetUp]
    public void StrictStreamsByDefault()
    {
        EmulatorModes.Ambient = EmulatorModes.FromEnvironment(EmulatorModes.Fast with { StrictStreams = true });
        Environment.SetEnvironmentVariable(EmulatorModes.EnvironmentVariable, EmulatorModes.Ambient.ToString());
        TestContext.Progress.WriteLine($"emulator modes: {EmulatorModes.Ambient}");
    }
}
