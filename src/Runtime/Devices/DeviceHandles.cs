namespace Qwen3Cuda.Runtime;

/// <summary>
/// Base of every device-owned handle: it remembers the device that made it, so a handle from one
/// device passed to another fails with a clear message, and it is released exactly once.
/// </summary>
public abstract class DeviceHandle : IDisposable
{
    protected DeviceHandle(IDevice owner) => Owner = owner;
    public IDevice Owner { get; }
    public bool IsDisposed { get; private set; }

    public void Dispose()
    {
        if (IsDisposed) return;
        IsDisposed = true;
        Release();
        GC.SuppressFinalize(this);
    }

    /// <summary>Frees the native resource. Called once, from <see cref="Dispose"/>; never from a finalizer
    /// (a finalizer thread has no CUDA context).</summary>
    protected abstract void Release();

    public void ThrowIfDisposed()
    {
        ObjectDisposedException.ThrowIf(IsDisposed, this);
    }

    /// <summary>Casts a handle to the backend's own type, with a clear error for a foreign or disposed one.</summary>
    public static T Own<T>(DeviceHandle handle, IDevice device, string argument) where T : DeviceHandle
    {
        if (handle is not T typed || !ReferenceEquals(handle.Owner, device))
            throw new ArgumentException($"{argument}: the {handle.GetType().Name} belongs to another device", argument);
        typed.ThrowIfDisposed();
        return typed;
    }
}

/// <summary>A loaded module (CUBIN or PTX).</summary>
public abstract class DeviceModule(IDevice owner) : DeviceHandle(owner)
{
    public abstract IReadOnlyList<string> KernelNames { get; }
}

/// <summary>One kernel of a loaded module. Owned by its module: disposing it does nothing.</summary>
public abstract class DeviceKernel(IDevice owner, string name) : DeviceHandle(owner)
{
    public string Name { get; } = name;
    protected override void Release() { }
    public override string ToString() => Name;
}

/// <summary>An ordered queue of device work.</summary>
public abstract class DeviceStream(IDevice owner) : DeviceHandle(owner)
{
    /// <summary>True while work on this stream is being captured into a graph.</summary>
    public bool IsCapturing { get; protected internal set; }
}

public abstract class DeviceEvent(IDevice owner) : DeviceHandle(owner);

/// <summary>A captured graph (not yet executable).</summary>
public abstract class DeviceGraph(IDevice owner) : DeviceHandle(owner)
{
    /// <summary>Kernel launches in the graph.</summary>
    public abstract int KernelNodeCount { get; }
}

/// <summary>An instantiated graph that can be launched.</summary>
public abstract class DeviceGraphExec(IDevice owner) : DeviceHandle(owner);
