using System.CommandLine;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.Json.Nodes;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Cli.Commands;

/// <summary>
/// `qwen3cuda emulate --source K.cu --kernel NAME --grid X[,Y,Z] --block X[,Y,Z] [--shared BYTES] --args ARGS.json [--arch sm_80]
/// [--modes LIST]`: compiles one kernel with NVRTC, runs it on the PTX emulator (memcheck, racecheck, synccheck on; the
/// strictness modes of docs/emulator.md as --modes or QWEN3CUDA_EMULATOR choose) and prints
/// JSON <c>{"buffers": [[...], ...], "counters": {...}, "modes": "..."}</c>. ARGS.json is <c>{"args": [...]}</c>, one entry per kernel
/// parameter: a buffer <c>{"type": T, "data": [..]}</c> or <c>{"type": T, "zeros": N}</c>, or a scalar <c>{"type": T, "value": x}</c>.
/// </summary>
public static class EmulateCommand
{
    /// <summary>The --args file format, as --help shows it.</summary>
    public const string ArgsFormat =
        "JSON file {\"args\": [...]} with one entry per kernel parameter, in order: a buffer {\"type\": T, \"data\": [1, 2.5, ...]} " +
        "or {\"type\": T, \"zeros\": N} (N elements), or a scalar {\"type\": T, \"value\": x}; T is one of f64 f32 f16 bf16 i8 u8 i16 u16 i32 u32 i64 u64. " +
        "Example: {\"args\": [{\"type\": \"f32\", \"zeros\": 5}, {\"type\": \"bf16\", \"data\": [1, 2, 3, 4, 5]}, {\"type\": \"i32\", \"value\": 5}]}. " +
        "Buffers are printed back after the launch, in order (NaN and infinities as strings)";

    public static Command Create()
    {
        var source = new Option<FileInfo>("--source") { Description = "CUDA source file (.cu)", Required = true, HelpName = "FILE" };
        var kernel = new Option<string>("--kernel") { Description = "extern \"C\" kernel name", Required = true, HelpName = "NAME" };
        var grid = new Option<string>("--grid") { Description = "grid dimensions X[,Y,Z]", Required = true, HelpName = "X[,Y,Z]" };
        var block = new Option<string>("--block") { Description = "block dimensions X[,Y,Z]", Required = true, HelpName = "X[,Y,Z]" };
        var shared = CliOptions.Int("--shared", [], "dynamic shared memory in bytes", 0, 0, 1 << 20, "BYTES");
        var args = new Option<FileInfo>("--args") { Description = ArgsFormat, Required = true, HelpName = "ARGS.json" };
        var arch = new Option<string>("--arch") { Description = "emulated architecture (sm_80 or sm_90)", DefaultValueFactory = _ => "sm_90", HelpName = "sm_80|sm_90" };
        var timeout = CliOptions.Seconds("--timeout", "seconds the launch may run before the watchdog stops it (a spin-wait that never ends)", 600);
        var modes = Modes();
        var cmd = new Command("emulate", "Run one CUDA kernel on the PTX emulator with memory/race checking and print its outputs and counters as JSON")
            { source, kernel, grid, block, shared, args, arch, timeout, modes };
        cmd.SetAction(p => Run(p.GetValue(source)!, p.GetValue(kernel)!, p.GetValue(grid)!, p.GetValue(block)!,
            p.GetValue(shared), p.GetValue(args)!, p.GetValue(arch)!, p.GetValue(timeout), p.InvocationConfiguration.Output, p.GetValue(modes)));
        return cmd;
    }

    /// <summary>--modes LIST: the emulator's strictness modes (EmulatorModes.Parse), applied over QWEN3CUDA_EMULATOR's.</summary>
    public static Option<EmulatorModes> Modes() => new("--modes")
    {
        Description = "emulator strictness modes, comma-separated, applied over $QWEN3CUDA_EMULATOR (default: none of them): " +
            "strict-streams (queued work runs only at a synchronisation), its[=SEED] (interleaved thread scheduling and the " +
            "intra-warp shared-memory racecheck), hw-math[=SEED] (.approx results anywhere within the PTX ISA's error bound, " +
            "tensor-core mma accumulation), poison=SEED (uninitialised memory: even seeds NaN bytes, odd seeds large finite " +
            "ones), strict (strict-streams,its,hw-math), fast (none); see docs/emulator.md. Example: --modes its=3,hw-math,poison=1",
        HelpName = "LIST",
        DefaultValueFactory = _ => EmulatorModes.Ambient,
        CustomParser = r =>
        {
            try { return EmulatorModes.Parse(CliOptions.Token(r), EmulatorModes.Ambient); }
            catch (ArgumentException e)
            {
                r.AddError($"--modes: {e.Message}");
                return EmulatorModes.Ambient;
            }
        },
    };

    private sealed record Arg(string Type, int Size, bool IsBuffer, byte[] Bytes, long Count);

    public static int Run(FileInfo source, string kernelName, string grid, string block, int shared, FileInfo argsFile, string arch, double timeoutSeconds = 600,
        TextWriter? stdout = null, EmulatorModes? modes = null)
    {
        stdout ??= Console.Out;
        if (!(timeoutSeconds > 0) || double.IsInfinity(timeoutSeconds)) throw new UsageException($"--timeout: must be a positive number of seconds, got {timeoutSeconds}");
        int archNumber = ParseArch(arch);
        if (!source.Exists) throw new FileNotFoundException($"--source: {source.FullName} does not exist");
        if (!argsFile.Exists) throw new FileNotFoundException($"--args: {argsFile.FullName} does not exist");
        var g = ParseDim(grid, "--grid");
        var b = ParseDim(block, "--block");
        var parsed = ParseArgs(argsFile);
        var compiled = new KernelCompiler().CompileSource(source.Name, File.ReadAllText(source.FullName),
            new KernelBuild(source.Name, $"sm_{archNumber}", CompileTarget.Ptx));
        var options = archNumber < 90 ? EmulatorOptions.Sm80 : new EmulatorOptions();
        options = options with { PrintfOutput = Console.Error, Watchdog = TimeSpan.FromSeconds(timeoutSeconds), Modes = modes ?? EmulatorModes.Ambient };
        using var dev = new EmulatedDevice(options);
        using var module = dev.LoadModule(compiled);
        var k = dev.GetKernel(module, kernelName);
        if (shared > dev.GetAttributes(k).MaxDynamicSharedBytes) dev.SetMaxDynamicSharedMemory(k, shared);
        var ptrs = new List<DevicePtr?>();
        var buf = new byte[KernelArgs.DefaultBufferBytes];
        var ka = new KernelArgs(buf, new nint[KernelArgs.MaxArgs]);
        var handle = GCHandle.Alloc(buf, GCHandleType.Pinned);
        try
        {
            foreach (var a in parsed)
            {
                if (a.IsBuffer)
                {
                    var p = dev.Allocate(Math.Max(a.Bytes.Length, 1));
                    dev.CopyToDevice(p, a.Bytes);
                    ptrs.Add(p);
                    ka.Add(p.Address);
                }
                else
                {
                    ptrs.Add(null);
                    switch (a.Size)
                    {
                        case 1: ka.Add(a.Bytes[0]); break;
                        case 2: ka.Add(BitConverter.ToUInt16(a.Bytes)); break;
                        case 4: ka.Add(BitConverter.ToUInt32(a.Bytes)); break;
                        default: ka.Add(BitConverter.ToUInt64(a.Bytes)); break;
                    }
                }
            }
            dev.Launch(k, new LaunchConfig(g, b, shared), dev.DefaultStream, ka);   // a fault is an EmulatorFaultException: exit code 5
            dev.Synchronize(dev.DefaultStream);   // strict streams run the kernel here, where its fault surfaces
        }
        finally { handle.Free(); }
        var buffers = new JsonArray();
        for (int i = 0; i < parsed.Count; i++)
        {
            if (ptrs[i] is not { } p) continue;
            var bytes = new byte[parsed[i].Bytes.Length];
            dev.CopyToHost(bytes, p);
            buffers.Add(Decode(parsed[i].Type, bytes));
        }
        var rec = dev.LastLaunch!;
        var counters = JsonSerializer.SerializeToNode(rec, new JsonSerializerOptions { PropertyNamingPolicy = JsonNamingPolicy.CamelCase })!.AsObject();
        counters["grid"] = rec.Grid.ToString();
        counters["block"] = rec.Block.ToString();
        var root = new JsonObject { ["buffers"] = buffers, ["counters"] = counters, ["modes"] = dev.Options.Modes.ToString() };
        stdout.WriteLine(root.ToJsonString(new JsonSerializerOptions { WriteIndented = false }));
        return 0;
    }

    /// <summary>--arch through <see cref="KernelCompiler.ParseArch"/>, as a usage error.</summary>
    internal static int ParseArch(string arch)
    {
        try { return KernelCompiler.ParseArch(arch); }
        catch (ArgumentException e) { throw new UsageException(CliErrors.Message(e)); }
    }

    private static Dim3 ParseDim(string s, string option)
    {
        var parts = s.Split(',');
        if (parts.Length is < 1 or > 3) throw new UsageException($"{option}: expected X[,Y,Z], got '{s}'");
        var v = new uint[] { 1, 1, 1 };
        for (int i = 0; i < parts.Length; i++)
            if (!uint.TryParse(parts[i].Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out v[i]) || v[i] == 0)
                throw new UsageException($"{option}: '{parts[i]}' is not a positive integer (expected X[,Y,Z], got '{s}')");
        return new Dim3(v[0], v[1], v[2]);
    }

    private static int SizeOf(string t) => t switch
    {
        "f64" or "i64" or "u64" => 8, "f32" or "i32" or "u32" => 4, "f16" or "bf16" or "i16" or "u16" => 2, "i8" or "u8" => 1,
        _ => throw new ArgumentException($"unknown type '{t}' (expected f64 f32 f16 bf16 i8 u8 i16 u16 i32 u32 i64 u64)"),
    };

    private static List<Arg> ParseArgs(FileInfo file)
    {
        JsonNode? root;
        try { root = JsonNode.Parse(File.ReadAllText(file.FullName)); }
        catch (JsonException e) { throw new InvalidDataException($"--args {file.Name}: not valid JSON: {e.Message}"); }
        if (root?["args"] is not JsonArray list) throw new InvalidDataException($"--args {file.Name}: expected an object with an \"args\" array");
        var result = new List<Arg>();
        for (int i = 0; i < list.Count; i++)
        {
            string where = $"--args {file.Name}: args[{i}]";
            if (list[i] is not JsonObject o) throw new InvalidDataException($"{where}: expected an object");
            string type = o["type"]?.GetValue<string>() ?? throw new InvalidDataException($"{where}: missing \"type\"");
            int size;
            try { size = SizeOf(type); } catch (ArgumentException e) { throw new InvalidDataException($"{where}: {e.Message}"); }
            if (o["data"] is JsonArray data)
            {
                var bytes = new byte[data.Count * size];
                for (int j = 0; j < data.Count; j++) Encode(type, Number(data[j], $"{where}.data[{j}]"), bytes.AsSpan(j * size, size));
                result.Add(new Arg(type, size, true, bytes, data.Count));
            }
            else if (o["zeros"] is JsonNode z)
            {
                long n = (long)Number(z, $"{where}.zeros");
                if (n < 0 || n > int.MaxValue / size) throw new InvalidDataException($"{where}: zeros {n} out of range");
                result.Add(new Arg(type, size, true, new byte[n * size], n));
            }
            else if (o["value"] is JsonNode v)
            {
                var bytes = new byte[size];
                Encode(type, Number(v, $"{where}.value"), bytes);
                result.Add(new Arg(type, size, false, bytes, 1));
            }
            else throw new InvalidDataException($"{where}: expected \"data\", \"zeros\" or \"value\"");
        }
        return result;
    }

    private static double Number(JsonNode? n, string where)
    {
        try { return n!.GetValue<double>(); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        { throw new InvalidDataException($"{where}: expected a number"); }
    }

    private static void Encode(string t, double v, Span<byte> dst)
    {
        switch (t)
        {
            case "f64": BitConverter.TryWriteBytes(dst, v); break;
            case "f32": BitConverter.TryWriteBytes(dst, (float)v); break;
            case "f16": BitConverter.TryWriteBytes(dst, BitConverter.HalfToUInt16Bits((Half)v)); break;
            case "bf16":
                {
                    uint u = BitConverter.SingleToUInt32Bits((float)v);
                    ushort h = float.IsNaN((float)v) ? (ushort)0x7FFF : (ushort)((u + 0x7FFF + ((u >> 16) & 1)) >> 16);
                    BitConverter.TryWriteBytes(dst, h);
                    break;
                }
            case "i8": dst[0] = (byte)(sbyte)v; break;
            case "u8": dst[0] = (byte)v; break;
            case "i16": BitConverter.TryWriteBytes(dst, (short)v); break;
            case "u16": BitConverter.TryWriteBytes(dst, (ushort)v); break;
            case "i32": BitConverter.TryWriteBytes(dst, (int)v); break;
            case "u32": BitConverter.TryWriteBytes(dst, (uint)v); break;
            case "i64": BitConverter.TryWriteBytes(dst, (long)v); break;
            case "u64": BitConverter.TryWriteBytes(dst, (ulong)v); break;
        }
    }

    private static JsonArray Decode(string t, byte[] b)
    {
        int size = SizeOf(t);
        var a = new JsonArray();
        for (int i = 0; i + size <= b.Length; i += size)
        {
            var s = b.AsSpan(i, size);
            JsonNode? n = t switch
            {
                "f64" => Finite(BitConverter.ToDouble(s)),
                "f32" => Finite(BitConverter.ToSingle(s)),
                "f16" => Finite((double)BitConverter.ToHalf(s)),
                "bf16" => Finite(BitConverter.UInt32BitsToSingle((uint)BitConverter.ToUInt16(s) << 16)),
                "i8" => JsonValue.Create((sbyte)s[0]), "u8" => JsonValue.Create(s[0]),
                "i16" => JsonValue.Create(BitConverter.ToInt16(s)), "u16" => JsonValue.Create(BitConverter.ToUInt16(s)),
                "i32" => JsonValue.Create(BitConverter.ToInt32(s)), "u32" => JsonValue.Create(BitConverter.ToUInt32(s)),
                "i64" => JsonValue.Create(BitConverter.ToInt64(s)), _ => JsonValue.Create(BitConverter.ToUInt64(s)),
            };
            a.Add(n);
        }
        return a;
    }

    /// <summary>JSON has no NaN/Infinity: those are written as the strings "NaN", "Infinity", "-Infinity".</summary>
    private static JsonNode Finite(double v) =>
        double.IsFinite(v) ? JsonValue.Create(v) : JsonValue.Create(v.ToString(CultureInfo.InvariantCulture))!;
}
