using System.Runtime.InteropServices;
using Qwen3Cuda.Runtime;
using Qwen3Cuda.Runtime.Emulation;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>Compiles a CUDA source with NVRTC and runs its kernels on an <see cref="EmulatedDevice"/>.</summary>
internal sealed class EmuKit : IDisposable
{
    private static readonly KernelCompiler Compiler = new(Path.Combine(Path.GetTempPath(), "qwen3cuda-emu-tests"));
    public EmulatedDevice Dev { get; }
    public DeviceModule Module { get; }
    public CompiledModule Compiled { get; }

    public EmuKit(string source, EmulatorOptions? options = null, string name = "test.cu")
    {
        Compiled = Compile(source, name);
        Dev = new EmulatedDevice(options ?? new EmulatorOptions { Sequential = true, PrintfOutput = TextWriter.Null });
        Module = Dev.LoadModule(Compiled);
    }

    public static CompiledModule Compile(string source, string name = "test.cu") =>
        Compiler.CompileSource(name, source, new KernelBuild(name, "sm_80", CompileTarget.Ptx));

    public DevicePtr Upload<T>(T[] data) where T : unmanaged
    {
        var p = Dev.Allocate(Math.Max(1, data.Length) * Marshal.SizeOf<T>());
        Dev.CopyToDevice(p, MemoryMarshal.AsBytes(data.AsSpan()));
        return p;
    }

    public DevicePtr Zeros<T>(int count) where T : unmanaged => Upload(new T[count]);

    public T[] Download<T>(DevicePtr p, int count) where T : unmanaged
    {
        var r = new T[count];
        Dev.CopyToHost(MemoryMarshal.AsBytes(r.AsSpan()), p);
        return r;
    }

    /// <summary>Launches and waits for the kernel, with arguments given as DevicePtr, int, uint, float, long, ulong or an unmanaged struct via <see cref="Raw"/>.</summary>
    public LaunchRecord Launch(string kernel, Dim3 grid, Dim3 block, int sharedBytes, params object[] args) =>
        Launch(kernel, new LaunchConfig(grid, block, sharedBytes), args);

    /// <summary>As above with the whole launch configuration (cooperative, programmatic).</summary>
    public LaunchRecord Launch(string kernel, LaunchConfig config, params object[] args)
    {
        var k = Dev.GetKernel(Module, kernel);
        var a = new KernelArgs(new byte[KernelArgs.DefaultBufferBytes], new nint[KernelArgs.MaxArgs]);
        foreach (var x in args)
        {
            switch (x)
            {
                case DevicePtr p: a.Add(p.Address); break;
                case int i: a.Add(i); break;
                case uint u: a.Add(u); break;
                case float f: a.Add(f); break;
                case long l: a.Add(l); break;
                case ulong ul: a.Add(ul); break;
                case Raw12 r: a.Add(r); break;
                default: throw new ArgumentException($"unsupported argument type {x.GetType()}");
            }
        }
        Dev.Launch(k, config, Dev.DefaultStream, a);
        Dev.Synchronize(Dev.DefaultStream);   // strict streams: the launch runs (and faults) here
        return Dev.LastLaunch!;
    }

    public void Dispose()
    {
        Module.Dispose();
        Dev.Dispose();
    }
}

/// <summary>A 12-byte struct argument (int, float, int) for struct-by-value parameter tests.</summary>
[StructLayout(LayoutKind.Sequential)]
internal readonly record struct Raw12(int A, float B, int C);
