namespace Qwen3Cuda.Runtime;

/// <summary>
/// Compiles and loads kernel modules for one device, once per (file, defines): a CUBIN for the
/// device's architecture on CUDA, PTX on the emulator. Launchers get their <see cref="DeviceKernel"/>s here.
/// </summary>
public sealed class KernelLoader : IDisposable
{
    private readonly Dictionary<string, DeviceModule> _modules = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    public KernelLoader(IDevice device, KernelCompiler? compiler = null)
    {
        Device = device;
        Compiler = compiler ?? new KernelCompiler();
    }

    public IDevice Device { get; }
    public KernelCompiler Compiler { get; }

    public DeviceKernel Get(string file, string kernel, IReadOnlyDictionary<string, string>? defines = null)
    {
        DeviceModule module = Module(file, defines);
        if (!module.KernelNames.Contains(kernel))
            throw new ArgumentException($"{file} has no kernel '{kernel}' (it has: {string.Join(", ", module.KernelNames)})", nameof(kernel));
        return Device.GetKernel(module, kernel);
    }

    public DeviceModule Module(string file, IReadOnlyDictionary<string, string>? defines = null)
    {
        defines ??= new Dictionary<string, string>();
        string key = file + "|" + string.Join(";", defines.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => $"{kv.Key}={kv.Value}"));
        lock (_gate)
        {
            if (_modules.TryGetValue(key, out var m)) return m;
            var target = Device.Info.Backend == BackendKind.Cuda ? CompileTarget.Cubin : CompileTarget.Ptx;
            CompiledModule compiled = Compiler.Compile(new KernelBuild(file, Device.Info.Arch, target) { Defines = defines });
            m = Device.LoadModule(compiled);
            _modules[key] = m;
            return m;
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            foreach (var m in _modules.Values) m.Dispose();
            _modules.Clear();
        }
    }
}
