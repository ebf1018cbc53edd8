namespace Qwen3Cuda.Model.Checkpoint;

/// <summary>A checkpoint file is missing, corrupt, or lacks a tensor with the expected dtype/shape.
/// The message names the file and, where relevant, the tensor.</summary>
public sealed class CheckpointException : Runtime.Qwen3CudaException
{
    public CheckpointException(string message) : base(message) { }
    public CheckpointException(string message, Exception inner) : base(message, inner) { }
    public override Runtime.ErrorKind Kind => Runtime.ErrorKind.InvalidInput;
}
