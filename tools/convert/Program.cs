namespace Qwen3Cuda.Convert;

public static class Program
{
    public static int Main(string[] args) => 0;
}
