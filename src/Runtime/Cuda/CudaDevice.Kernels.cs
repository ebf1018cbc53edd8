using System.Text;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Runtime.Cuda;

public sealed unsafe partial class CudaDevice
{
    private sealed class CudaModule(CudaDevice device, nint handle, IReadOnlyList<string> kernels, string name) : DeviceModule(device)
    {
        public nint Handle { get; } = handle;
        public string Name { get; } = name;
        public override IReadOnlyList<string> KernelNames { get; } = kernels;
        protected override void Release()
        {
            device.MakeCurrent();
            CudaCheck.Check(CudaApi.cuModuleUnload(Handle), $"cuModuleUnload({Name})");
        }
    }

    private sealed class CudaKernel(CudaDevice device, nint handle, string name) : DeviceKernel(device, name)
    {
        public nint Handle { get; } = handle;
    }

    public DeviceModule LoadModule(CompiledModule module)
    {
        MakeCurrent();
        bool useCubin = module.Cubin != null && module.CubinArch == Info.Arch;
        byte[] image = useCubin ? module.Cubin! : Encoding.UTF8.GetBytes(module.Ptx + "\0");
        const int logBytes = 16 * 1024;
        byte* errorLog = stackalloc byte[logBytes];
        errorLog[0] = 0;
        CuJitOption* options = stackalloc CuJitOption[2];
        void** values = stackalloc void*[2];
        options[0] = CuJitOption.ErrorLogBuffer; values[0] = errorLog;
        options[1] = CuJitOption.ErrorLogBufferSizeBytes; values[1] = (void*)logBytes;
        nint handle;
        CuResult r;
        fixed (byte* p = image) r = CudaApi.cuModuleLoadDataEx(out handle, p, 2, options, values);
        if (r != CuResult.Success)
        {
            var (name, text) = CudaCheck.Describe(r);
            string log = Utf8Z(new ReadOnlySpan<byte>(errorLog, logBytes));
            throw new CudaException($"cuModuleLoadDataEx({module.Name}, {(useCubin ? module.CubinArch : module.PtxArch)})", r, name,
                text + (log.Length > 0 ? "; JIT log: " + log : ""));
        }
        return new CudaModule(this, handle, PtxEntries(module.Ptx), module.Name);
    }

    /// <summary>Kernel names from the PTX's ".entry name(" lines.</summary>
    internal static IReadOnlyList<string> PtxEntries(string ptx)
    {
        var names = new List<string>();
        int i = 0;
        while ((i = ptx.IndexOf(".entry ", i, StringComparison.Ordinal)) >= 0)
        {
            i += 7;
            int end = ptx.IndexOfAny(['(', ' ', '\n', '\r'], i);
            if (end > i) names.Add(ptx[i..end]);
        }
        return names;
    }

    public DeviceKernel GetKernel(DeviceModule module, string name)
    {
        var m = DeviceHandle.Own<CudaModule>(module, this, nameof(module));
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuModuleGetFunction(out nint f, m.Handle, name), $"cuModuleGetFunction({m.Name}, {name})");
        return new CudaKernel(this, f, name);
    }

    public KernelAttributes GetAttributes(DeviceKernel kernel)
    {
        var k = DeviceHandle.Own<CudaKernel>(kernel, this, nameof(kernel));
        MakeCurrent();
        int Attr(CuFunctionAttribute a)
        {
            CudaCheck.Check(CudaApi.cuFuncGetAttribute(out int v, a, k.Handle), $"cuFuncGetAttribute({k.Name}, {a})");
            return v;
        }
        return new KernelAttributes(Attr(CuFunctionAttribute.NumRegs), Attr(CuFunctionAttribute.SharedSizeBytes),
            Attr(CuFunctionAttribute.LocalSizeBytes), Attr(CuFunctionAttribute.MaxThreadsPerBlock), Attr(CuFunctionAttribute.MaxDynamicSharedSizeBytes));
    }

    public void SetMaxDynamicSharedMemory(DeviceKernel kernel, int bytes)
    {
        var k = DeviceHandle.Own<CudaKernel>(kernel, this, nameof(kernel));
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuFuncSetAttribute(k.Handle, CuFunctionAttribute.MaxDynamicSharedSizeBytes, bytes), $"cuFuncSetAttribute({k.Name}, MaxDynamicSharedSizeBytes, {bytes})");
    }

    public int MaxActiveBlocksPerMultiprocessor(DeviceKernel kernel, int blockThreads, int dynamicSharedBytes)
    {
        var k = DeviceHandle.Own<CudaKernel>(kernel, this, nameof(kernel));
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuOccupancyMaxActiveBlocksPerMultiprocessor(out int blocks, k.Handle, blockThreads, (nuint)dynamicSharedBytes),
            $"cuOccupancyMaxActiveBlocksPerMultiprocessor({k.Name}, {blockThreads}, {dynamicSharedBytes})");
        return blocks;
    }

    public void Launch(DeviceKernel kernel, in LaunchConfig config, DeviceStream stream, scoped in KernelArgs args)
    {
        var k = DeviceHandle.Own<CudaKernel>(kernel, this, nameof(kernel));
        MakeCurrent();
        var (g, b) = (config.Grid, config.Block);
        if (config.Cooperative)
        {
            fixed (nint* p = args.Pointers)
                CudaCheck.Check(CudaApi.cuLaunchCooperativeKernel(k.Handle, g.X, g.Y, g.Z, b.X, b.Y, b.Z, (uint)config.DynamicSharedBytes, S(stream), (void**)p),
                    $"cuLaunchCooperativeKernel({k.Name}, grid {g}, block {b}, smem {config.DynamicSharedBytes}; every block must be resident at once)");
            return;
        }
        if (config.ProgrammaticDependentLaunch && ProgrammaticLaunchEnabled)
        {
            fixed (nint* p = args.Pointers)
                CudaCheck.Check(LaunchProgrammatic(k.Handle, g, b, (uint)config.DynamicSharedBytes, S(stream), (void**)p),
                    $"cuLaunchKernelEx({k.Name}, grid {g}, block {b}, smem {config.DynamicSharedBytes}, programmatic stream serialization)");
            return;
        }
        fixed (nint* p = args.Pointers)
            CudaCheck.Check(CudaApi.cuLaunchKernel(k.Handle, g.X, g.Y, g.Z, b.X, b.Y, b.Z, (uint)config.DynamicSharedBytes, S(stream), (void**)p, null),
                $"cuLaunchKernel({k.Name}, grid {g}, block {b}, smem {config.DynamicSharedBytes})");
    }
}
