using System.Globalization;

namespace Qwen3Cuda.Runtime.Emulation;

/// <summary>How the emulator schedules the threads of a block (docs/emulator.md, "Thread scheduling").</summary>
public enum ThreadScheduling
{
    /// <summary>A warp runs until it blocks; a diverged warp runs its lowest-PC group first (min-PC reconvergence). Fast.</summary>
    Lockstep,
    /// <summary>
    /// Independent thread scheduling: warps of a block and the lane groups of a diverged warp take turns in a seeded
    /// random order after a random number of instructions, and shared-memory accesses of two lanes of one warp with no
    /// warp synchronisation between them are reported as races (intra-warp racecheck).
    /// </summary>
    Interleaved,
}

/// <summary>
/// The strictness modes of the emulator, chosen together (docs/emulator.md): poisoned memory, strict streams,
/// interleaved thread scheduling and hardware-like math. Written as a comma-separated list, e.g.
/// <c>strict-streams,its=3,hw-math,poison=1</c> (<see cref="Parse"/>); the environment variable
/// <c>QWEN3CUDA_EMULATOR</c> sets the process-wide defaults (<see cref="Ambient"/>) that every new
/// <see cref="EmulatorOptions"/> starts from.
/// </summary>
public sealed record EmulatorModes
{
    public const string EnvironmentVariable = "QWEN3CUDA_EMULATOR";

    /// <summary>
    /// Work queued on a stream runs only when the host synchronises (stream, event or device sync, a blocking copy);
    /// async host-to-device copies read host memory when they run; events order streams; device-to-host destinations
    /// hold poison until their copy runs; a host write to a pinned range that a queued copy will read is reported.
    /// </summary>
    public bool StrictStreams { get; init; }

    public ThreadScheduling Scheduling { get; init; } = ThreadScheduling.Lockstep;

    /// <summary>Seed of the interleaved schedule (and of the order in which strict streams run independent work).</summary>
    public int ScheduleSeed { get; init; }

    /// <summary>
    /// <c>.approx</c> functions carry deterministic pseudo-noise within the PTX ISA's error bound, and mma.sync
    /// accumulates like the tensor core (blocks of products aligned to the largest exponent and truncated).
    /// </summary>
    public bool HardwareMath { get; init; }

    /// <summary>Seed of the approximation noise (the same seed and input give the same result).</summary>
    public int MathSeed { get; init; }

    /// <summary>
    /// Uninitialised device memory, shared and local memory, fresh pinned host buffers and pending device-to-host
    /// destinations are filled with a pattern: even seeds 0xFF bytes (NaN as f32/bf16, -1 as an integer), odd seeds a
    /// large finite value (0x7F bytes, about 3.4e38 as f32/bf16; or 0xFE bytes, about -1.7e38, when bit 1 is set).
    /// </summary>
    public int PoisonSeed { get; init; }

    public bool Interleaved => Scheduling == ThreadScheduling.Interleaved;

    /// <summary>The byte every poisoned location holds under <paramref name="seed"/> (see <see cref="PoisonSeed"/>).</summary>
    public static byte PoisonByte(int seed) => (seed & 1) == 0 ? (byte)0xFF : (seed & 2) == 0 ? (byte)0x7F : (byte)0xFE;

    public byte Poison => PoisonByte(PoisonSeed);

    /// <summary>Everything off: eager streams, lockstep, exact math, NaN poison.</summary>
    public static EmulatorModes Fast { get; } = new();

    /// <summary>The defaults of new <see cref="EmulatorOptions"/>: from <c>QWEN3CUDA_EMULATOR</c> when set, else <see cref="Fast"/>.
    /// Test suites set it once at start-up (our tests: strict streams on).</summary>
    public static EmulatorModes Ambient { get; set; } = FromEnvironment(Fast);

    /// <summary><paramref name="baseline"/> with the modes of <c>QWEN3CUDA_EMULATOR</c> applied (unchanged when unset or empty).</summary>
    public static EmulatorModes FromEnvironment(EmulatorModes baseline)
    {
        string? text = Environment.GetEnvironmentVariable(EnvironmentVariable);
        if (string.IsNullOrWhiteSpace(text)) return baseline;
        try { return Parse(text, baseline); }
        catch (ArgumentException e) { throw new ArgumentException($"{EnvironmentVariable}={text}: {e.Message}", e); }
    }

    /// <summary>
    /// Applies a comma-separated list of modes to <paramref name="baseline"/> (default <see cref="Fast"/>):
    /// <c>strict-streams</c> | <c>eager-streams</c>; <c>its[=SEED]</c> | <c>lockstep</c>; <c>hw-math[=SEED]</c> |
    /// <c>exact-math</c>; <c>poison=SEED</c>; <c>fast</c> (everything off); <c>strict</c> (strict streams, its, hw-math).
    /// Unknown words fail with a message that lists the known ones.
    /// </summary>
    public static EmulatorModes Parse(string text, EmulatorModes? baseline = null)
    {
        var m = baseline ?? Fast;
        foreach (string raw in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            string word = raw.ToLowerInvariant();
            string? arg = null;
            int eq = word.IndexOf('=');
            if (eq >= 0) { arg = word[(eq + 1)..]; word = word[..eq]; }
            int Seed(string what)
            {
                if (arg is null) return 0;
                if (!int.TryParse(arg, NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) || s < 0)
                    throw new ArgumentException($"'{raw}': the {what} seed must be a non-negative integer");
                return s;
            }
            void NoArg() { if (arg is not null) throw new ArgumentException($"'{raw}': '{word}' takes no value"); }
            m = word switch
            {
                "strict-streams" => NoArgThen(m with { StrictStreams = true }),
                "eager-streams" => NoArgThen(m with { StrictStreams = false }),
                "its" => m with { Scheduling = ThreadScheduling.Interleaved, ScheduleSeed = Seed("schedule") },
                "lockstep" => NoArgThen(m with { Scheduling = ThreadScheduling.Lockstep }),
                "hw-math" => m with { HardwareMath = true, MathSeed = Seed("math") },
                "exact-math" => NoArgThen(m with { HardwareMath = false }),
                "poison" => arg is null ? throw new ArgumentException($"'{raw}': give a seed, poison=N") : m with { PoisonSeed = Seed("poison") },
                "fast" => NoArgThen(Fast),
                "strict" => NoArgThen(m with { StrictStreams = true, Scheduling = ThreadScheduling.Interleaved, HardwareMath = true }),
                _ => throw new ArgumentException($"unknown emulator mode '{raw}' (known: strict-streams, eager-streams, its[=SEED], lockstep, hw-math[=SEED], exact-math, poison=SEED, strict, fast)"),
            };
            EmulatorModes NoArgThen(EmulatorModes next) { NoArg(); return next; }
        }
        return m;
    }

    /// <summary>The canonical text of these modes (parses back to an equal value).</summary>
    public override string ToString()
    {
        var parts = new List<string>
        {
            StrictStreams ? "strict-streams" : "eager-streams",
            Interleaved ? $"its={ScheduleSeed}" : "lockstep",
            HardwareMath ? $"hw-math={MathSeed}" : "exact-math",
            $"poison={PoisonSeed}",
        };
        return string.Join(",", parts);
    }
}
