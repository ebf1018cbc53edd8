using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Device;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;
using Qwen3Cuda.Tests.Support;

namespace Qwen3Cuda.Tests.DeviceModel;

/// <summary>
/// Issue 12, fault 2: the memory plan keeps a reserve (max(1 GiB, 3% of total), or (1 - U) x total with
/// --gpu-memory-utilization U) and is made after the fixed allocations (kernel modules, stream), from the memory they leave.
/// <see cref="BudgetDevice"/> behaves like a GPU of a given size: it reports free = total - what was allocated - what its
/// kernel modules took (a CUDA module holds code and constant banks in device memory), and refuses an allocation that
/// does not fit.
/// </summary>
[NonParallelizable]
public class GpuMemoryUtilizationTests
{
    /// <summary>A device of <paramref name="totalBytes"/> whose every loaded module takes <paramref name="moduleBytes"/>.</summary>
    sealed class BudgetDevice(long totalBytes, long moduleBytes) : ForwardingDevice(new EmulatedDevice())
    {
        readonly Dictionary<ulong, long> _live = [];
        public long Allocated { get; private set; }
        public long ModuleBytes { get; private set; }
        public long FreeBytes => totalBytes - Allocated - ModuleBytes;

        public override (long FreeBytes, long TotalBytes) GetMemoryInfo() => (FreeBytes, totalBytes);

        public override DevicePtr Allocate(long bytes)
        {
            if (bytes > FreeBytes) throw new DeviceOutOfMemoryException(bytes, $"cuMemAlloc: out of memory ({bytes} bytes requested, {FreeBytes} free)");
            var p = base.Allocate(bytes);
            _live[p.Address] = bytes;
            Allocated += bytes;
            return p;
        }

        public override void Free(DevicePtr ptr)
        {
            if (_live.Remove(ptr.Address, out long bytes)) Allocated -= bytes;
            base.Free(ptr);
        }

        public override DeviceModule LoadModule(Qwen3Cuda.Runtime.CompiledModule module)
        {
            ModuleBytes += moduleBytes;
            return base.LoadModule(module);
        }
    }

    const long GiB = 1L << 30, MiB = 1L << 20;

    /// <summary>The tiny preset (256 bytes of KV per token); the KV cache is what the tests size. One sequence of
    /// <paramref name="contextTokens"/> (the pool must hold one at full context), or <paramref name="sequences"/> of 2048.</summary>
    static DeviceModelOptions Options(int sequences, double? utilization = null, int contextTokens = 2048) => new()
    {
        ContextLength = contextTokens, MaxSequences = sequences, PageSize = 16, PrefillChunkTokens = 16, MaxBatch = 1, UseGraphs = false,
        GpuMemoryUtilization = utilization,
    };

    /// <summary>The pool for one sequence of <paramref name="contextTokens"/>: its pages + the scratch page, 16 x 256 bytes each.</summary>
    static long KvBytes(int contextTokens) => (contextTokens / 16 + 1) * 16L * 256;

    [Test]
    public void DefaultReserve_IsMaxOf1GiBAnd3PercentOfTotal()
    {
        Assert.That(MemoryPlan.DefaultReserveBytes(16 * GiB), Is.EqualTo(GiB));
        Assert.That(MemoryPlan.DefaultReserveBytes(80 * GiB), Is.EqualTo((long)Math.Ceiling(80 * GiB * 0.03)), "2.4 GiB of an 80 GiB H100");
        Assert.That(MemoryPlan.ReserveFor(new DeviceModelOptions { GpuMemoryUtilization = 0.9 }, 80 * GiB), Is.EqualTo(8 * GiB).Within(1));
        Assert.That(MemoryPlan.ReserveFor(new DeviceModelOptions { GpuMemoryUtilization = 1 }, 80 * GiB), Is.Zero);
    }

    [TestCase(0.0)]
    [TestCase(-0.5)]
    [TestCase(1.01)]
    [TestCase(double.NaN)]
    public void Utilization_OutsideZeroToOne_IsRejected(double u) =>
        Assert.That(() => new DeviceModelOptions { GpuMemoryUtilization = u }.Validate(),
            Throws.InstanceOf<ArgumentOutOfRangeException>().With.Message.Contains("--gpu-memory-utilization").And.Message.Contains("(0, 1]"));

    [Test]
    public void GpuMemoryAndUtilizationTogether_AreRejected() =>
        Assert.That(() => new DeviceModelOptions { GpuMemoryBytes = GiB, GpuMemoryUtilization = 0.5 }.Validate(),
            Throws.ArgumentException.With.Message.Contains("not both"));

    /// <summary>
    /// One sequence of 1800 x 2048 tokens: a 0.88 GiB KV pool (the least the plan takes: one sequence at full context) on a
    /// 1.5 GiB device whose modules take 16 MiB each. A plan that took the 1.5 GiB free before the modules existed, with no
    /// reserve, would load (0.4 GiB left: nothing for graphs or the driver). The plan sees ~1.3 GiB free after the modules,
    /// keeps 1 GiB, and says so.
    /// </summary>
    [Test]
    public void ModelThatWouldEatTheReserve_IsRefusedWithAClearMessage()
    {
        const int context = 1800 * 2048;
        Assert.That(KvBytes(context), Is.InRange(0.85 * GiB, 0.9 * GiB));
        using var weights = ModelWeights.Load(DeviceCheckpoints.Tiny());
        using var device = new BudgetDevice(3 * GiB / 2, 16 * MiB);
        var e = Assert.Throws<ModelDoesNotFitException>(() => new Qwen3Cuda.Model.Device.DeviceModel(device, weights, Options(1, contextTokens: context)));
        TestContext.Out.WriteLine(e!.Message);
        Assert.That(e.Message, Does.Contain("keeps 1.0 GiB free").And.Contain("--gpu-memory-utilization"));
        Assert.That(e.Message, Does.Contain($"one sequence of {context} tokens").And.Contain($"(--ctx-size {context})"));
        Assert.That(device.Allocated, Is.Zero, "nothing left allocated");
        Assert.That(device.ModuleBytes, Is.GreaterThan(0), "the modules were loaded before the plan");

        // Asked to fill the device (U = 1), the same model loads: the option reaches the plan.
        using var dm = new Qwen3Cuda.Model.Device.DeviceModel(device, weights, Options(1, utilization: 1.0, contextTokens: context));
        Assert.That(dm.Plan.ReserveBytes, Is.Zero);
        Assert.That(dm.Plan.KvPages, Is.EqualTo(context / 16 + 1));
        Assert.That(device.FreeBytes, Is.LessThan(GiB));
    }

    /// <summary>
    /// One sequence of 2700 x 2048 tokens: 1.32 GiB of KV on the same device, with U = 1 (no reserve). It fits the 1.5 GiB free
    /// before the modules, not the ~1.3 GiB after them: a plan made before them would pass and the KV allocation then fail
    /// with a bare out-of-memory error; planned after the modules, it is a clear "does not fit" before anything is allocated.
    /// </summary>
    [Test]
    public void PlanIsMadeAfterTheModulesAreLoaded()
    {
        const int context = 2700 * 2048;
        Assert.That(KvBytes(context), Is.InRange(1.25 * GiB, 1.4 * GiB));
        using var weights = ModelWeights.Load(DeviceCheckpoints.Tiny());
        using var device = new BudgetDevice(3 * GiB / 2, 16 * MiB);
        var e = Assert.Throws<ModelDoesNotFitException>(() => new Qwen3Cuda.Model.Device.DeviceModel(device, weights, Options(1, utilization: 1.0, contextTokens: context)));
        Assert.That(e!.Message, Does.Contain("missing"));
        Assert.That(device.Allocated, Is.Zero);
    }

    /// <summary>
    /// 4096 sequences of 2048 tokens could use 2 GiB of KV; a 2 GiB device keeps 1 GiB and its modules take some: the pool is
    /// what the budget leaves (to within a page), not refused, every sequence keeps its 2048 tokens, and the reserve stays free.
    /// </summary>
    [Test]
    public void ManySequences_ThePoolTakesTheBudget_AndTheReserveStaysFree()
    {
        using var weights = ModelWeights.Load(DeviceCheckpoints.Tiny());
        using var device = new BudgetDevice(2 * GiB, 16 * MiB);
        using var dm = new Qwen3Cuda.Model.Device.DeviceModel(device, weights, Options(4096));
        var plan = dm.Plan;
        TestContext.Out.Write(plan.Describe());
        Assert.That(plan.ContextLength, Is.EqualTo(2048));
        Assert.That(plan.PoolIsCapped, Is.False);
        Assert.That(plan.KvPages, Is.LessThan(4096 * 128 + 1));
        Assert.That(plan.FreeBytes, Is.InRange(0, plan.KvBytesPerPage - 1), "the pool takes every whole page the budget leaves");
        Assert.That(dm.Kv.Pages, Is.EqualTo(plan.KvPages));
        Assert.That(dm.Kv.MaxPagesPerSequence, Is.EqualTo(128), "every sequence may reach the full context");
        Assert.That(device.FreeBytes, Is.GreaterThanOrEqualTo(plan.ReserveBytes), "free memory after loading");
    }

    /// <summary>A model that fits leaves at least the reserve free once loaded: the default, and U = 0.6 (40% of total free).</summary>
    [TestCase(null, 1.0 * GiB)]
    [TestCase(0.6, 0.4 * 3 * GiB)]
    public void LoadedModel_LeavesTheReserveFree(double? utilization, double reserve)
    {
        using var weights = ModelWeights.Load(DeviceCheckpoints.Tiny());
        using var device = new BudgetDevice(3 * GiB, 16 * MiB);
        using var dm = new Qwen3Cuda.Model.Device.DeviceModel(device, weights, Options(1024, utilization));
        TestContext.Out.Write(dm.Plan.Describe());
        Assert.That(dm.Plan.ReserveBytes, Is.EqualTo((long)Math.Ceiling(reserve)).Within(1));
        Assert.That(device.FreeBytes, Is.GreaterThanOrEqualTo(dm.Plan.ReserveBytes), "free memory after loading");
        Assert.That(dm.Plan.Describe(), Does.Contain("reserve").And.Contain("budget"));
    }
}

/// <summary>`--gpu-memory-utilization` through the real CLI entry point, on every verb that opens a device model.</summary>
[NonParallelizable]
public class GpuMemoryUtilizationCliTests
{
    string _dir = "";

    [OneTimeSetUp]
    public void WriteModel()
    {
        _dir = Directory.CreateTempSubdirectory("q3-gpu-util").FullName;
        SyntheticCheckpoint.Write(SyntheticPreset.Tiny, seed: 7, _dir);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json", "generation_config.json" })
            File.Copy(Path.Combine(RepoPaths.Root, "tests", "Text", "Data", "tiny-model", f), Path.Combine(_dir, f), overwrite: true);
    }

    [OneTimeTearDown]
    public void Cleanup() => Directory.Delete(_dir, recursive: true);

    static (int Exit, string Out, string Err) Cli(params string[] args) => Support.CliRunner.Run(args);

    static string[] VerbArgs(string verb, string dir) => verb switch
    {
        "info" => ["info", "--model", dir],
        "generate" => ["generate", "--model", dir, "--prompt", "the cat", "--device", "emulator", "--max-new-tokens", "1", "--temperature", "0"],
        "chat" => ["chat", "--model", dir, "--device", "emulator"],
        "logits" => ["logits", "--model", dir, "--tokens", "1,2", "--device", "emulator"],
        "profile" => ["profile", "--model", dir, "--device", "emulator", "--tokens", "2"],
        "bench" => ["bench", "--model", dir, "--device", "emulator", "-p", "2", "-n", "1"],
        _ => throw new ArgumentException(verb),
    };

    static readonly string[] Verbs = ["info", "generate", "chat", "logits", "profile", "bench"];

    [Test]
    public void BadValues_AreOneClearLine_OnEveryVerb([ValueSource(nameof(Verbs))] string verb, [Values("0", "1.5", "-1", "lots", "NaN")] string value)
    {
        var (exit, _, err) = Cli([.. VerbArgs(verb, _dir), "--gpu-memory-utilization", value]);
        Assert.That(exit, Is.EqualTo(2), "exit code 2: a bad command line (docs/troubleshooting.md); " + err);
        Assert.That(err, Does.StartWith("error: --gpu-memory-utilization").And.Contain("(0, 1]"));
        Assert.That(err.TrimEnd().Split('\n'), Has.Length.EqualTo(1), "one line");
    }

    [Test]
    public void Info_ShowsTheReserve_OfTheAssumedDevice()
    {
        var (exit, stdout, err) = Cli("info", "--model", _dir, "--gpu-memory-utilization", "0.9");
        Assert.That(exit, Is.EqualTo(0), err);
        TestContext.Out.Write(stdout);
        if (Qwen3Cuda.Runtime.Cuda.CudaDriver.IsDeviceAvailable()) Assert.Ignore("a CUDA device is present: the reserve is measured on it");
        Assert.That(stdout, Does.Contain("reserve").And.Contain("8.0 GiB").And.Contain("--gpu-memory-utilization 0.9"));
        (exit, _, err) = Cli("info", "--model", _dir, "--gpu-memory", "40GiB", "--gpu-memory-utilization", "0.9");
        Assert.That((exit, err.Trim()), Is.EqualTo((1, "error: give --gpu-memory (the pools' budget) or --gpu-memory-utilization (a fraction of the device's memory), not both")));
    }

    /// <summary>
    /// The option reaches the device model's plan: the emulator reports an 80 GiB device with an 8 GiB heap, so U = 0.05
    /// (keep 76 GiB free) leaves no budget and the verb says the model does not fit; U = 1 runs.
    /// </summary>
    [TestCase("logits")]
    [TestCase("generate")]
    [TestCase("profile")]
    public void Utilization_ReachesTheDevicePlan(string verb)
    {
        var (exit, _, err) = Cli([.. VerbArgs(verb, _dir), "--gpu-memory-utilization", "0.05"]);
        Assert.That(exit, Is.EqualTo(4), "exit code 4: does not fit in device memory (docs/troubleshooting.md)");
        Assert.That(err, Does.StartWith("error: model needs").And.Contain("--gpu-memory-utilization 0.05"));
        Assert.That(err, Does.Not.Contain("   at "));
        (exit, _, err) = Cli([.. VerbArgs(verb, _dir), "--gpu-memory-utilization", "1"]);
        Assert.That(exit, Is.EqualTo(0), err);
    }
}
