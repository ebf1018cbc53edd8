using System.Diagnostics;
using System.Globalization;
using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Performance;
using Qwen3Cuda.Model.Speculative;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `bench` with speculative decoding (docs/speculative.md): on cpu and cuda the greedy generation measured with the
/// drafter; on the emulator the timing model's prediction for a GPU: one target decode step, one verification step of
/// k + 1 rows and one draft decode step predicted from their launches, combined with the acceptance measured by running
/// the speculation on the emulator.
/// </summary>
static class SpeculativeBench
{
    static readonly SamplingSettings Greedy = new(Temperature: 0f);

    /// <summary>Greedy generation of <paramref name="tg"/> tokens after a prefill of <paramref name="prompt"/>, speculative; returns tokens/s of the decode part and the stats.</summary>
    public static (double TokensPerSecond, SpeculationStats Stats) MeasureGreedy(ICausalLanguageModel target, IDrafter drafter, int k, int[] prompt, int tg)
    {
        target.ResetSequence(0);
        var history = new List<int>(prompt) { target.ForwardGreedy(0, prompt) };
        using var decoder = new SpeculativeDecoder(target, 0, drafter, k);
        var emitted = new List<int>();
        var sw = Stopwatch.StartNew();
        while (history.Count - prompt.Length < tg)
        {
            emitted.Clear();
            decoder.Step(history, Greedy, tg - (history.Count - prompt.Length), emitted);
            history.AddRange(emitted);
        }
        return ((tg - 1) / sw.Elapsed.TotalSeconds, decoder.Stats);
    }

    /// <summary>The emulator path: predicted plain and speculative decode rates on <paramref name="gpu"/>.</summary>
    public static void Predict(string targetDir, string? draftDir, int k, int tg, GpuSpec gpu, TextWriter stdout)
    {
        using var device = new EmulatedDevice(gpu.EmulatorOptions(ProfileCommand.PredictHeapBytes));
        const int promptLength = 16;
        int ctx = promptLength + tg + k + 16;
        var options = new DeviceModelOptions { ContextLength = ctx, PrefillChunkTokens = promptLength, MaxBatch = 1, PageSize = 16, MaxOutputRows = k + 1 };
        using var target = DeviceModel.Load(device, targetDir, options);
        using var draftModel = draftDir is null ? null : DeviceModel.Load(device, draftDir, options with { MaxOutputRows = null });
        SpeculativeDecoder.CheckVocabulary(target.VocabSize, draftModel?.VocabSize);
        int V = target.VocabSize;
        var prompt = Enumerable.Range(0, promptLength).Select(i => (i * 7919 + 11) % V).ToArray();
        int first = target.ForwardGreedy(0, prompt);
        int[] ids = new int[1];
        var decode = DeviceProfiler.Profile(target, "decode", 1, () => target.DecodeBatchGreedy([0], [first], ids), undo: () => target.TruncateSequence(0, promptLength));
        target.TruncateSequence(0, promptLength);
        var batch = new StepBatch(k + 1);
        for (int j = 0; j <= k; j++) batch.Add(0, (first + j) % V, promptLength + j, StepOutput.Sample, Greedy);
        var verify = DeviceProfiler.Profile(target, $"verify {k + 1} rows", k + 1, () => target.Step(batch), undo: () => target.TruncateSequence(0, promptLength));
        target.TruncateSequence(0, promptLength);
        StepProfile? draftDecode = null;
        if (draftModel is not null)
        {
            int d = draftModel.ForwardGreedy(0, prompt);
            draftDecode = DeviceProfiler.Profile(draftModel, "draft decode", 1, () => draftModel.DecodeBatchGreedy([0], [d], ids), undo: () => draftModel.TruncateSequence(0, promptLength));
            draftModel.ResetSequence(0);
        }

        using IDrafter drafter = draftModel is null ? new NgramDrafter() : new ModelDrafter(draftModel);
        var (_, stats) = MeasureGreedy(target, drafter, k, prompt, tg);

        var resources = new PtxasResources(new KernelCompiler(), gpu.Arch);
        double Us(StepProfile s, DeviceModel m) => StepPredictor.Predict(gpu, s.Name, s.Tokens, m.Config.NumHiddenLayers, s.Records, s.Operations, resources.For).TotalUs;
        double plainUs = Us(decode, target), verifyUs = Us(verify, target), draftUs = draftDecode is null ? 0 : Us(draftDecode, draftModel!);
        double rounds = Math.Max(1, stats.Rounds);
        double draftedPerRound = stats.DraftedTokens / rounds, tokensPerRound = stats.EmittedTokens / rounds;
        // A round: the draft's decode steps (one per proposal but the last, plus the catch-up of the round's new tokens:
        // about one step per proposal) and one verification step of 1 + proposals rows, its time interpolated linearly
        // between the one-row decode step and the k + 1 row step (a drafter may propose fewer than k, prompt lookup often none).
        double roundUs = draftedPerRound * draftUs + plainUs + (verifyUs - plainUs) * draftedPerRound / k;
        var inv = CultureInfo.InvariantCulture;
        stdout.WriteLine(string.Create(inv, $"speculative decoding, predicted on {gpu.Name} by the timing model (docs/timing-model.md) from the emulator's launches:"));
        string drafterText = draftDecode is null ? "drafter: prompt lookup (no model)" : string.Create(inv, $"draft decode step {draftUs:F1} us");
        stdout.WriteLine(string.Create(inv, $"  target decode step {plainUs:F1} us, verification step of {k + 1} rows {verifyUs:F1} us ({verifyUs / plainUs:F2}x), {drafterText}"));
        stdout.WriteLine(string.Create(inv, $"  measured on the emulator over {tg} greedy tokens: {stats}"));
        stdout.WriteLine(string.Create(inv, $"  tg without speculation {1e6 / plainUs:F1} t/s; with it {tokensPerRound * 1e6 / roundUs:F1} t/s ({tokensPerRound * plainUs / roundUs:F2}x)"));
    }
}
