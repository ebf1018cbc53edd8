using Qwen3Cuda.Runtime.Native;

namespace Qwen3Cuda.Runtime.Cuda;

public sealed unsafe partial class CudaDevice
{
    private sealed class CudaStream(CudaDevice device, nint handle, bool owned) : DeviceStream(device)
    {
        public nint Handle { get; } = handle;
        protected override void Release()
        {
            if (!owned) return;
            device.MakeCurrent();
            CudaCheck.Check(CudaApi.cuStreamDestroy_v2(Handle), "cuStreamDestroy_v2");
        }
    }

    private sealed class CudaEvent(CudaDevice device, nint handle) : DeviceEvent(device)
    {
        public nint Handle { get; } = handle;
        protected override void Release()
        {
            device.MakeCurrent();
            CudaCheck.Check(CudaApi.cuEventDestroy_v2(Handle), "cuEventDestroy_v2");
        }
    }

    private sealed class CudaGraph(CudaDevice device, nint handle, int kernelNodes) : DeviceGraph(device)
    {
        public nint Handle { get; } = handle;
        public override int KernelNodeCount { get; } = kernelNodes;
        protected override void Release()
        {
            device.MakeCurrent();
            CudaCheck.Check(CudaApi.cuGraphDestroy(Handle), "cuGraphDestroy");
        }
    }

    private sealed class CudaGraphExec(CudaDevice device, nint handle) : DeviceGraphExec(device)
    {
        public nint Handle { get; } = handle;
        protected override void Release()
        {
            device.MakeCurrent();
            CudaCheck.Check(CudaApi.cuGraphExecDestroy(Handle), "cuGraphExecDestroy");
        }
    }

    private nint S(DeviceStream stream) => DeviceHandle.Own<CudaStream>(stream, this, nameof(stream)).Handle;

    public DeviceStream CreateStream()
    {
        MakeCurrent();
        const uint nonBlocking = 1; // CU_STREAM_NON_BLOCKING: no implicit sync with the legacy default stream
        CudaCheck.Check(CudaApi.cuStreamCreate(out nint s, nonBlocking), "cuStreamCreate");
        return new CudaStream(this, s, owned: true);
    }

    public void Synchronize(DeviceStream stream)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuStreamSynchronize(S(stream)), "cuStreamSynchronize");
    }

    public void Synchronize()
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuCtxSynchronize(), "cuCtxSynchronize");
    }

    public DeviceEvent CreateEvent(bool timing = true)
    {
        MakeCurrent();
        const uint disableTiming = 2;
        CudaCheck.Check(CudaApi.cuEventCreate(out nint e, timing ? 0u : disableTiming), "cuEventCreate");
        return new CudaEvent(this, e);
    }

    public void Record(DeviceEvent evt, DeviceStream stream)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuEventRecord(DeviceHandle.Own<CudaEvent>(evt, this, nameof(evt)).Handle, S(stream)), "cuEventRecord");
    }

    public void Wait(DeviceStream stream, DeviceEvent evt)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuStreamWaitEvent(S(stream), DeviceHandle.Own<CudaEvent>(evt, this, nameof(evt)).Handle, 0), "cuStreamWaitEvent");
    }

    public void Synchronize(DeviceEvent evt)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuEventSynchronize(DeviceHandle.Own<CudaEvent>(evt, this, nameof(evt)).Handle), "cuEventSynchronize");
    }

    public float ElapsedMilliseconds(DeviceEvent start, DeviceEvent end)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuEventElapsedTime(out float ms, DeviceHandle.Own<CudaEvent>(start, this, nameof(start)).Handle,
            DeviceHandle.Own<CudaEvent>(end, this, nameof(end)).Handle), "cuEventElapsedTime");
        return ms;
    }

    public void BeginCapture(DeviceStream stream)
    {
        if (stream.IsCapturing) throw new InvalidOperationException("BeginCapture: the stream is already capturing");
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuStreamBeginCapture_v2(S(stream), CuStreamCaptureMode.ThreadLocal), "cuStreamBeginCapture_v2");
        stream.IsCapturing = true;
    }

    public DeviceGraph EndCapture(DeviceStream stream)
    {
        if (!stream.IsCapturing) throw new InvalidOperationException("EndCapture: the stream is not capturing");
        MakeCurrent();
        stream.IsCapturing = false;
        CudaCheck.Check(CudaApi.cuStreamEndCapture(S(stream), out nint graph), "cuStreamEndCapture");
        nuint count = 0;
        CudaCheck.Check(CudaApi.cuGraphGetNodes(graph, null, ref count), "cuGraphGetNodes");
        var nodes = new nint[(int)count];
        int kernels = 0;
        fixed (nint* p = nodes)
        {
            CudaCheck.Check(CudaApi.cuGraphGetNodes(graph, p, ref count), "cuGraphGetNodes");
            for (int i = 0; i < (int)count; i++)
            {
                CudaCheck.Check(CudaApi.cuGraphNodeGetType(p[i], out int type), "cuGraphNodeGetType");
                if (type == 0) kernels++; // CU_GRAPH_NODE_TYPE_KERNEL
            }
        }
        return new CudaGraph(this, graph, kernels);
    }

    public DeviceGraphExec Instantiate(DeviceGraph graph)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuGraphInstantiateWithFlags(out nint exec, DeviceHandle.Own<CudaGraph>(graph, this, nameof(graph)).Handle, 0), "cuGraphInstantiateWithFlags");
        return new CudaGraphExec(this, exec);
    }

    public bool TryUpdate(DeviceGraphExec exec, DeviceGraph graph)
    {
        MakeCurrent();
        CuResult r = CudaApi.cuGraphExecUpdate(DeviceHandle.Own<CudaGraphExec>(exec, this, nameof(exec)).Handle,
            DeviceHandle.Own<CudaGraph>(graph, this, nameof(graph)).Handle, out _, out int result);
        if (r == CuResult.Success) return result == 0;
        if ((int)r == 910) return false; // CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE: topology changed
        CudaCheck.Check(r, "cuGraphExecUpdate");
        return false;
    }

    public void Launch(DeviceGraphExec exec, DeviceStream stream)
    {
        MakeCurrent();
        CudaCheck.Check(CudaApi.cuGraphLaunch(DeviceHandle.Own<CudaGraphExec>(exec, this, nameof(exec)).Handle, S(stream)), "cuGraphLaunch");
    }
}
