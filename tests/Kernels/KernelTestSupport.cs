using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Kernels;

/// <summary>An emulated sm_90 device plus a kernel loader, disposed together. One per test fixture.</summary>
public sealed class EmulatorContext : IDisposable
{
    public EmulatorContext(EmulatorOptions? options = null)
    {
        Device = new EmulatedDevice(options);
        Loader = new KernelLoader(Device);
    }

    public EmulatedDevice Device { get; }
    public KernelLoader Loader { get; }
    public DeviceStream Stream => Device.DefaultStream;
    private readonly List<DevicePtr> _allocations = [];

    public DevicePtr Upload<T>(ReadOnlySpan<T> data) where T : unmanaged
    {
        DevicePtr p = Alloc<T>(Math.Max(1, data.Length));
        Device.CopyToDevice(p, MemoryMarshal.AsBytes(data));
        return p;
    }

    public DevicePtr Upload<T>(T[] data) where T : unmanaged => Upload<T>(data.AsSpan());

    public unsafe DevicePtr Alloc<T>(long count) where T : unmanaged
    {
        DevicePtr p = Device.Allocate(Math.Max(1, count) * sizeof(T));
        _allocations.Add(p);
        return p;
    }

    /// <summary>Allocates and fills with a byte pattern (so a kernel that forgets to write shows garbage).</summary>
    public unsafe DevicePtr AllocFilled<T>(long count, byte value = 0xff) where T : unmanaged
    {
        DevicePtr p = Alloc<T>(count);
        var bytes = new byte[Math.Max(1, count) * sizeof(T)];
        Array.Fill(bytes, value);
        Device.CopyToDevice(p, bytes);
        return p;
    }

    public T[] Download<T>(DevicePtr p, long count) where T : unmanaged
    {
        var r = new T[count];
        Device.CopyToHost(MemoryMarshal.AsBytes(r.AsSpan()), p);
        return r;
    }

    public void Dispose()
    {
        foreach (var p in _allocations) Device.Free(p);
        Loader.Dispose();
        Device.Dispose();
    }
}

/// <summary>
/// Checks a C# params mirror against its CUDA struct: a probe kernel compiled with the kernel file writes every
/// field's offset and the struct's size, and runs on the emulator. C# field names map to snake_case C names
/// (KCache -> k_cache).
/// </summary>
public static class StructLayoutCheck
{
    public static string SnakeCase(string name)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < name.Length; i++)
        {
            char c = name[i];
            if (char.IsUpper(c) && i > 0 && (char.IsLower(name[i - 1]) || char.IsDigit(name[i - 1])
                || (i + 1 < name.Length && char.IsLower(name[i + 1]) && char.IsUpper(name[i - 1]))))
                sb.Append('_');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    public static void AssertMatches(Type mirror, string kernelFile, string cStruct, IReadOnlyDictionary<string, string>? defines = null)
    {
        var fields = mirror.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic);
        Assert.That(fields, Is.Not.Empty);
        var sb = new StringBuilder(KernelSources.Read(kernelFile));
        sb.AppendLine();
        sb.AppendLine($"extern \"C\" __global__ void layout_probe(long long* o) {{ {cStruct} s;");
        for (int i = 0; i < fields.Length; i++)
            sb.AppendLine($"  o[{i}] = (long long)((char*)&s.{SnakeCase(fields[i].Name)} - (char*)&s);");
        sb.AppendLine($"  o[{fields.Length}] = (long long)sizeof({cStruct}); }}");
        // the kernel cache keys on the source, so the probe (the whole kernel file plus a few lines) compiles once per
        // machine rather than on every run of every pass: gemv.cu alone took NVRTC about 8 s
        var compiler = new KernelCompiler();
        var build = new KernelBuild("layout_probe.cu", "sm_90", CompileTarget.Ptx) { LineInfo = false, Defines = defines ?? new Dictionary<string, string>() };
        CompiledModule module = compiler.CompileSource("layout_probe.cu", sb.ToString(), build);
        using var device = new EmulatedDevice();
        using DeviceModule m = device.LoadModule(module);
        DevicePtr o = device.Allocate((fields.Length + 1) * 8);
        var args = new KernelArgs(stackalloc byte[16], stackalloc nint[1]);
        args.Add(o);
        device.Launch(device.GetKernel(m, "layout_probe"), new LaunchConfig(1, 1), device.DefaultStream, args);
        var got = new long[fields.Length + 1];
        device.CopyToHost(MemoryMarshal.AsBytes(got.AsSpan()), o);
        for (int i = 0; i < fields.Length; i++)
            Assert.That(got[i], Is.EqualTo(Marshal.OffsetOf(mirror, fields[i].Name).ToInt64()),
                $"{cStruct}.{SnakeCase(fields[i].Name)} offset vs C# {mirror.Name}.{fields[i].Name}");
        Assert.That(got[fields.Length], Is.EqualTo(Marshal.SizeOf(mirror)), $"sizeof({cStruct}) vs C# {mirror.Name}");
    }
}
