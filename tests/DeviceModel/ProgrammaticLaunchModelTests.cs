using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Runtime.Launchers;
using Qwen3Cuda.Tests.Kernels;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Programmatic dependent launch (docs/kernels.md) changes when a kernel may start, never what it computes: the kernels
/// that wait (GEMV, router, MoE decode GEMVs, embedding, sampling) give bitwise the same results on an sm_90 emulator,
/// where pdl_wait/prefetch are compiled in and the launches are programmatic, as on an sm_80 one, where they are not.
/// The two devices differ only in the compute capability (same SM count, so the same GEMV plans and split-K orders),
/// with exact math (hardware-like math models sm_80 and sm_90 tensor cores differently).
/// </summary>
public sealed class ProgrammaticLaunchModelTests
{
    private static EmulatorOptions Options(int major) => new()
    {
        ComputeMajor = major, Name = $"PDL test emulator (sm_{major}0)",
        Modes = EmulatorModes.Ambient with { HardwareMath = false, StrictStreams = true },
    };

    private static readonly WeightFormat[] Formats = [WeightFormat.Bf16, WeightFormat.Fp8Block, WeightFormat.Int8Channel, WeightFormat.Int4Gptq];

    /// <summary>
    /// Every GEMV variant (bf16, fp8, int8, int4; with and without split-K, residual and the RMSNorm prologue): y bitwise
    /// equal on sm_80 and sm_90, and on sm_90 a programmatic launch whose PreWaitSectors are exactly the weight and scale
    /// sectors: each CTA prefetches the lines of its weight slice and of the scales it uses before pdl_wait(), every
    /// byte of both is read by some CTA, and the shapes make both a whole number of 32-byte sectors, so every sector of
    /// the two allocations is first touched by a prefetch; x, the residual, partials and tickets come after the wait.
    /// </summary>
    [TestCase(WeightFormat.Bf16, 1, 512, 4096, false)]
    [TestCase(WeightFormat.Bf16, 3, 1000, 2048, true)]
    [TestCase(WeightFormat.Fp8Block, 1, 512, 4096, false)]
    [TestCase(WeightFormat.Fp8Block, 3, 1000, 2048, true)]
    [TestCase(WeightFormat.Int8Channel, 2, 1000, 2048, false)]
    [TestCase(WeightFormat.Int4Gptq, 1, 512, 4096, false)]
    [TestCase(WeightFormat.Int4Gptq, 5, 1000, 2048, true)]
    public void Gemv_IsBitwiseTheSameOnSm80AndSm90_AndPrefetchesExactlyItsWeightsBeforeTheWait(WeightFormat format, int tokens, int n, int k, bool normAndResidual)
    {
        var rng = new Random(1234 + tokens * 7 + n);
        long weightBytes = format switch { WeightFormat.Bf16 => 2L * n * k, WeightFormat.Int4Gptq => (long)n * k / 2, _ => (long)n * k };
        var w = new byte[weightBytes];
        rng.NextBytes(w);
        if (format == WeightFormat.Bf16) for (int i = 1; i < w.Length; i += 2) w[i] = (byte)(0x3c + (w[i] & 1) * 0x80);   // |w| in [2^-7, 2^-6)
        if (format == WeightFormat.Fp8Block) for (int i = 0; i < w.Length; i++) w[i] &= 0xbf;                            // no NaN codes
        const int group = 128;
        float[] scalesF32 = format switch
        {
            WeightFormat.Fp8Block => new float[(n + 127) / 128 * ((k + 127) / 128)],
            WeightFormat.Int8Channel => new float[n],
            _ => [],
        };
        for (int i = 0; i < scalesF32.Length; i++) scalesF32[i] = 0.001f * (1 + i % 5);
        ushort[] scalesF16 = format == WeightFormat.Int4Gptq ? Enumerable.Range(0, n * (k / group)).Select(i => (ushort)(0x1c00 + i % 64)).ToArray() : [];
        var x = Enumerable.Range(0, tokens * k).Select(_ => (ushort)(0x3f80 + rng.Next(0, 0x7f) - (rng.Next(2) << 15))).ToArray();
        var res = Enumerable.Range(0, tokens * n).Select(i => (ushort)(0x3f00 + i % 100)).ToArray();
        var norm = Enumerable.Range(0, k).Select(i => (ushort)(0x3f80 + i % 16)).ToArray();
        long scaleBytes = scalesF32.Length * 4L + scalesF16.Length * 2L;

        (ushort[] Y, LaunchRecord Rec) Run(int major)
        {
            using var emu = new EmulatorContext(Options(major));
            var gemv = new GemvLaunchers(emu.Loader, [format]);
            var dW = emu.Upload<byte>(w);
            var dS = scalesF32.Length > 0 ? emu.Upload<float>(scalesF32) : scalesF16.Length > 0 ? emu.Upload<ushort>(scalesF16) : DevicePtr.Null;
            var op = format switch
            {
                WeightFormat.Bf16 => WeightOperand.Bf16(dW),
                WeightFormat.Fp8Block => WeightOperand.Fp8(dW, dS, k),
                WeightFormat.Int8Channel => WeightOperand.Int8(dW, dS),
                _ => WeightOperand.Int4(dW, dS, k, group),
            };
            var dX = emu.Upload<ushort>(x);
            var dY = emu.Alloc<ushort>(tokens * n);
            var plan = gemv.Plan(tokens, n, k, format);
            long ws = Math.Max(plan.PartialBytes(tokens, n), 1);
            var dPartial = emu.Alloc<byte>(ws);
            gemv.ClearTickets(emu.Stream, dPartial, ws);
            emu.Device.Synchronize();
            gemv.Gemv(emu.Stream, dY, n, dX, k, op, normAndResidual ? emu.Upload<ushort>(res) : DevicePtr.Null, tokens, n, k, dPartial, ws,
                normAndResidual ? emu.Upload<ushort>(norm) : DevicePtr.Null, 1e-6f);
            emu.Device.Synchronize();
            var rec = emu.Device.LastLaunch!;
            return (emu.Download<ushort>(dY, tokens * n), rec);
        }

        var (y80, r80) = Run(8);
        var (y90, r90) = Run(9);
        Assert.That(r90.Kernel, Does.StartWith("gemv_"));
        Assert.That(y90, Is.EqualTo(y80), "sm_90 (programmatic, prefetching) vs sm_80");
        Assert.That(r80.ProgrammaticLaunch, Is.False);
        Assert.That(r80.PreWaitSectors, Is.Zero);
        Assert.That(r90.ProgrammaticLaunch, Is.True);
        Assert.That((weightBytes + scaleBytes) % 32, Is.Zero, "the test's shapes make whole sectors");
        Assert.That(r90.PreWaitSectors, Is.EqualTo((weightBytes + scaleBytes) / 32), $"weight {weightBytes} + scale {scaleBytes} bytes");
    }

    /// <summary>
    /// A tiny model (each weight format): prefill, greedy decode steps and sampled decode steps (graphs: embedding, the
    /// GEMVs with their fused norm/residual/split-K paths, moe_router_norm_topk, moe_experts_gemv*, the two
    /// sampling kernels) give bitwise the same logits and tokens on sm_90 as on sm_80; on sm_90 those kernels' launches are
    /// programmatic and the GEMVs' and the router's prefetch their weights before the wait.
    /// </summary>
    [TestCaseSource(nameof(Formats))]
    public void DecodeSteps_GiveTheSameLogitsAndTokens_OnSm90AsOnSm80(WeightFormat format)
    {
        string dir = format == WeightFormat.Bf16 ? DeviceCheckpoints.Tiny() : QuantizedModelTests.TinyIn(format);
        var (logits80, tokens80, launches80) = Decode(dir, 8);
        var (logits90, tokens90, launches90) = Decode(dir, 9);
        Assert.That(tokens90, Is.EqualTo(tokens80), "greedy and sampled tokens");
        Assert.That(logits90.Count, Is.EqualTo(logits80.Count));
        for (int i = 0; i < logits80.Count; i++)
            Assert.That(logits90[i], Is.EqualTo(logits80[i]), $"logits of step {i} (0: prefill)");
        Assert.That(launches80.Any(l => l.ProgrammaticLaunch), Is.False, "sm_80 has no programmatic dependent launch");
        string[] expected = ["embedding_gather_bf16", "gemv_", "moe_router_norm_topk", "moe_experts_gemv", "sample_reduce_bf16", "sample_draw_bf16"];
        foreach (var name in expected)
        {
            var mine = launches90.Where(l => l.Kernel.StartsWith(name, StringComparison.Ordinal)).ToList();
            Assert.That(mine, Is.Not.Empty, $"{name}* ran");
            Assert.That(mine.All(l => l.ProgrammaticLaunch), Is.True, $"{name}* launched programmatically");
        }
        Assert.That(launches90.Where(l => l.Kernel.StartsWith("gemv_", StringComparison.Ordinal) || l.Kernel == "moe_router_norm_topk")
            .All(l => l.PreWaitSectors > 0), Is.True, "GEMVs and the router prefetch before the wait");
        Assert.That(launches90.Where(l => !l.ProgrammaticLaunch).All(l => l.PreWaitSectors == 0 || l.Kernel.StartsWith("attention", StringComparison.Ordinal)),
            Is.True, "kernels launched normally do not wait (the attention kernels may, once they do)");
    }

    private static (List<float[]> Logits, List<int> Tokens, List<LaunchRecord> Launches) Decode(string dir, int major)
    {
        using var device = new EmulatedDevice(Options(major));
        using var dm = Qwen3Cuda.Model.Device.DeviceModel.Load(device, dir, new DeviceModelOptions { ContextLength = 64, PageSize = 4, PrefillChunkTokens = 16, MaxBatch = 2, MaxSequences = 2 });
        int v = dm.VocabSize;
        var logits = new List<float[]>();
        var tokens = new List<int>();
        var a = new float[v];
        dm.Forward(0, Enumerable.Range(0, 20).Select(i => (i * 37 + 104) % v).ToArray(), a);
        logits.Add((float[])a.Clone());
        for (int s = 0; s < 4; s++)
        {
            int t = Array.IndexOf(a, a.Max());
            tokens.Add(t);
            dm.Forward(0, [t], a);
            logits.Add((float[])a.Clone());
        }
        var settings = new SamplingSettings(Temperature: 0.8f, TopK: 20, TopP: 0.9f, Seed: 7);
        int next = dm.ForwardSampled(1, [3, 14, 15, 92, 65], settings);
        tokens.Add(next);
        Span<int> one = stackalloc int[1];
        for (int s = 0; s < 3; s++)
        {
            dm.DecodeBatchSampled([1], [next], settings, one);
            next = one[0];
            tokens.Add(next);
        }
        return (logits, tokens, device.Launches.ToList());
    }
}
