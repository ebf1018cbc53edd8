using System.Collections.Concurrent;
using System.Text;
using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Runtime.Cuda;

/// <summary>
/// Programmatic dependent launch (docs/kernels.md, "Programmatic dependent launch"): a launch whose
/// <see cref="LaunchConfig.ProgrammaticDependentLaunch"/> is set goes through cuLaunchKernelEx with
/// CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION when the device is sm_90 or newer and the probe below passed;
/// otherwise through cuLaunchKernel, which is always correct (pdl_wait() then returns at once).
/// </summary>
public sealed unsafe partial class CudaDevice
{
    /// <summary>The environment variable that turns programmatic dependent launch off (<c>QWEN3CUDA_PDL=0</c>).</summary>
    public const string PdlEnvironmentVariable = "QWEN3CUDA_PDL";

    // A kernel that waits and triggers, in PTX (ISA 7.8, sm_90) so the probe needs no NVRTC.
    private const string PdlProbePtx = ".version 7.8\n.target sm_90\n.address_size 64\n\n.visible .entry qwen3cuda_pdl_probe()\n{\n\tgriddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;\n\tret;\n}\n";

    // Probe results per CUDA device ordinal (the driver's answer does not change within a process).
    private static readonly ConcurrentDictionary<int, (bool On, string Status)> PdlProbes = new();

    /// <summary>Kernels flagged for programmatic dependent launch are launched with it.</summary>
    public bool ProgrammaticLaunchEnabled { get; }

    /// <summary>"on", or "off (why)": for `info` and `selftest`.</summary>
    public string ProgrammaticLaunchStatus { get; }

    private CuResult LaunchProgrammatic(nint function, Dim3 g, Dim3 b, uint sharedBytes, nint stream, void** args)
    {
        var attr = new CuLaunchAttribute { Id = CuLaunchAttributeId.ProgrammaticStreamSerialization, Value = 1 };
        var c = new CuLaunchConfig
        {
            GridDimX = g.X, GridDimY = g.Y, GridDimZ = g.Z, BlockDimX = b.X, BlockDimY = b.Y, BlockDimZ = b.Z,
            SharedMemBytes = sharedBytes, HStream = stream, Attrs = &attr, NumAttrs = 1,
        };
        return CudaApi.cuLaunchKernelEx(&c, function, args, null);
    }

    /// <summary>
    /// Once per device: off below sm_90 or with QWEN3CUDA_PDL=0; else captures a graph of two programmatic launches of a
    /// tiny kernel on a private stream, instantiates and runs it. Any failure (a driver without cuLaunchKernelEx, or one
    /// that cannot capture programmatic launches into a graph, which the decode step needs) turns it off, saying why.
    /// </summary>
    private (bool On, string Status) ProbeProgrammaticLaunch()
    {
        if (Info.ComputeMajor < 9) return (false, $"off ({Info.Arch}; needs sm_90 or newer)");
        if (System.Environment.GetEnvironmentVariable(PdlEnvironmentVariable) == "0") return (false, $"off ({PdlEnvironmentVariable}=0)");
        return PdlProbes.GetOrAdd(_device, _ => RunPdlProbe());
    }

    private (bool On, string Status) RunPdlProbe()
    {
        nint module = 0, stream = 0, graph = 0, exec = 0;
        bool capturing = false;
        try
        {
            var ptx = Encoding.ASCII.GetBytes(PdlProbePtx + "\0");
            fixed (byte* p = ptx) CudaCheck.Check(CudaApi.cuModuleLoadDataEx(out module, p, 0, null, null), "cuModuleLoadDataEx(PDL probe)");
            CudaCheck.Check(CudaApi.cuModuleGetFunction(out nint fn, module, "qwen3cuda_pdl_probe"), "cuModuleGetFunction(PDL probe)");
            CudaCheck.Check(CudaApi.cuStreamCreate(out stream, 1), "cuStreamCreate(PDL probe)");
            CudaCheck.Check(CudaApi.cuStreamBeginCapture_v2(stream, CuStreamCaptureMode.ThreadLocal), "cuStreamBeginCapture_v2(PDL probe)");
            capturing = true;
            for (int i = 0; i < 2; i++)
                CudaCheck.Check(LaunchProgrammatic(fn, new Dim3(1), new Dim3(32), 0, stream, null), "cuLaunchKernelEx(PDL probe)");
            capturing = false;
            CudaCheck.Check(CudaApi.cuStreamEndCapture(stream, out graph), "cuStreamEndCapture(PDL probe)");
            CudaCheck.Check(CudaApi.cuGraphInstantiateWithFlags(out exec, graph, 0), "cuGraphInstantiateWithFlags(PDL probe)");
            CudaCheck.Check(CudaApi.cuGraphLaunch(exec, stream), "cuGraphLaunch(PDL probe)");
            CudaCheck.Check(CudaApi.cuStreamSynchronize(stream), "cuStreamSynchronize(PDL probe)");
            return (true, "on");
        }
        catch (Exception e) when (e is DeviceException or EntryPointNotFoundException)
        {
            return (false, $"off (the driver failed the probe: {e.Message})");
        }
        finally
        {
            if (capturing && CudaApi.cuStreamEndCapture(stream, out nint broken) == CuResult.Success && broken != 0) CudaApi.cuGraphDestroy(broken);
            if (exec != 0) CudaApi.cuGraphExecDestroy(exec);
            if (graph != 0) CudaApi.cuGraphDestroy(graph);
            if (stream != 0) CudaApi.cuStreamDestroy_v2(stream);
            if (module != 0) CudaApi.cuModuleUnload(module);
        }
    }
}
