using BenchmarkDotNet.Running;

namespace Qwen3Cuda.Bench;

public static class Program
{
    public static void Main(string[] args) => BenchmarkSwitcher.FromAssembly(typeof(Program).Assembly).Run(args);
}
