using System.Text.Json.Nodes;

namespace Qwen3Cuda.Tests.Emulation;

/// <summary>The `qwen3cuda emulate` verb, run in-process with Console output captured.</summary>
[NonParallelizable]
public class EmulateCommandTests
{
    private string _dir = "";

    [SetUp]
    public void SetUp()
    {
        _dir = Path.Combine(Path.GetTempPath(), "qwen3cuda-emulate-" + Guid.NewGuid().ToString("N")[..8]);
        Directory.CreateDirectory(_dir);
    }

    [TearDown]
    public void TearDown() => Directory.Delete(_dir, recursive: true);

    private (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var (o, e) = (Console.Out, Console.Error);
        Console.SetOut(stdout);
        Console.SetError(stderr);
        try { return (Qwen3Cuda.Cli.Program.Main(args), stdout.ToString(), stderr.ToString()); }
        finally { Console.SetOut(o); Console.SetError(e); }
    }

    private string Write(string name, string text)
    {
        string p = Path.Combine(_dir, name);
        File.WriteAllText(p, text);
        return p;
    }

    private const string Kernel = """
        extern "C" __global__ void scale(float* y, const unsigned short* x, int n, float s) {
          int i = blockIdx.x * blockDim.x + threadIdx.x;
          if (i < n) y[i] = __uint_as_float(((unsigned)x[i]) << 16) * s;
        }
        """;

    [Test]
    public void RunsKernelAndPrintsBuffersAndCounters()
    {
        string cu = Write("scale.cu", Kernel);
        string args = Write("args.json", """{"args": [{"type": "f32", "zeros": 5}, {"type": "bf16", "data": [1, 2.5, -3, 0.5, 100]}, {"type": "i32", "value": 5}, {"type": "f32", "value": 2}]}""");
        var (code, stdout, stderr) = Run("emulate", "--source", cu, "--kernel", "scale", "--grid", "2", "--block", "4", "--args", args, "--arch", "sm_80");
        Assert.That(code, Is.EqualTo(0), stderr);
        var root = JsonNode.Parse(stdout)!;
        var bufs = root["buffers"]!.AsArray();
        Assert.That(bufs, Has.Count.EqualTo(2));
        // every input is exactly representable in bf16, and *2 is exact
        Assert.That(bufs[0]!.AsArray().Select(v => v!.GetValue<double>()), Is.EqualTo(new[] { 2.0, 5.0, -6.0, 1.0, 200.0 }));
        Assert.That(bufs[1]!.AsArray().Select(v => v!.GetValue<double>()), Is.EqualTo(new[] { 1.0, 2.5, -3.0, 0.5, 100.0 }));
        var c = root["counters"]!;
        Assert.That(c["kernel"]!.GetValue<string>(), Is.EqualTo("scale"));
        Assert.That(c["globalStoreRequests"]!.GetValue<long>(), Is.EqualTo(2));
        Assert.That(c["warpInstructions"]!.GetValue<long>(), Is.GreaterThan(0));
        Assert.That(c["gridBlocks"]!.GetValue<long>(), Is.EqualTo(2));
    }

    [Test]
    public void MemcheckErrorExitsNonZeroWithMessage()
    {
        string cu = Write("scale.cu", Kernel);
        // n = 8 but the output buffer holds 5 floats
        string args = Write("args.json", """{"args": [{"type": "f32", "zeros": 5}, {"type": "bf16", "zeros": 8}, {"type": "i32", "value": 8}, {"type": "f32", "value": 1}]}""");
        var (code, stdout, stderr) = Run("emulate", "--source", cu, "--kernel", "scale", "--grid", "1", "--block", "8", "--args", args);
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("out-of-bounds global write"));
        Assert.That(stderr, Does.Contain("kernel scale"));
        Assert.That(stdout, Is.Empty);
    }

    [Test]
    public void BadArgumentsGiveClearErrors()
    {
        string cu = Write("scale.cu", Kernel);
        string bad = Write("bad.json", """{"args": [{"type": "f33", "zeros": 5}]}""");
        var (code, _, stderr) = Run("emulate", "--source", cu, "--kernel", "scale", "--grid", "1", "--block", "8", "--args", bad);
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("args[0]").And.Contain("unknown type 'f33'"));
        string few = Write("few.json", """{"args": [{"type": "f32", "zeros": 5}]}""");
        (code, _, stderr) = Run("emulate", "--source", cu, "--kernel", "scale", "--grid", "1", "--block", "8", "--args", few);
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("1 arguments given, the kernel takes 4"));
        (code, _, stderr) = Run("emulate", "--source", cu, "--kernel", "scale", "--grid", "1,x", "--block", "8", "--args", few);
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("--grid"));
        (code, _, stderr) = Run("emulate", "--source", cu, "--kernel", "nope", "--grid", "1", "--block", "8", "--args", few);
        Assert.That(stderr, Does.Contain("kernel 'nope' is not in the module"));
    }

    [Test]
    public void Modes_PickStrictnessModes_AnIntraWarpRaceShowsOnlyUnderIts()
    {
        string cu = Write("neighbour.cu", """
            extern "C" __global__ void neighbour(int* out) {
              __shared__ int s[32];
              s[threadIdx.x] = threadIdx.x;
              out[threadIdx.x] = s[threadIdx.x ^ 1];
            }
            """);
        string args = Write("args.json", """{"args": [{"type": "i32", "zeros": 32}]}""");
        var (code, stdout, stderr) = Run("emulate", "--source", cu, "--kernel", "neighbour", "--grid", "1", "--block", "32", "--args", args, "--modes", "lockstep,hw-math=4,poison=1");
        Assert.That(code, Is.EqualTo(0), stderr);
        var root = JsonNode.Parse(stdout)!;
        Assert.That(root["modes"]!.GetValue<string>(), Does.Contain("lockstep").And.Contain("hw-math=4").And.Contain("poison=1"));
        Assert.That(root["buffers"]![0]!.AsArray().Select(v => v!.GetValue<int>()), Is.EqualTo(Enumerable.Range(0, 32).Select(i => i ^ 1)), "lockstep: the lanes happen to be in step");

        (code, stdout, stderr) = Run("emulate", "--source", cu, "--kernel", "neighbour", "--grid", "1", "--block", "32", "--args", args, "--modes", "its=2");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("racecheck (intra-warp): read-after-write hazard").And.Contain("__syncwarp"));
        Assert.That(stdout, Is.Empty);

        (code, _, stderr) = Run("emulate", "--source", cu, "--kernel", "neighbour", "--grid", "1", "--block", "32", "--args", args, "--modes", "its,turbo");
        Assert.That(code, Is.EqualTo(2), "a usage error");
        Assert.That(stderr.Trim().Split('\n'), Has.Length.EqualTo(1), "one line");
        Assert.That(stderr, Does.Contain("--modes: unknown emulator mode 'turbo'"));

        var (_, help, _) = Run("emulate", "--help");
        Assert.That(help, Does.Contain("--modes").And.Contain("strict-streams").And.Contain("its[=SEED]").And.Contain("hw-math[=SEED]").And.Contain("poison=SEED"));
    }

    [Test]
    public void KernelThatNeverEndsStopsAtTheTimeout()
    {
        string cu = Write("spin.cu", """
            extern "C" __global__ void spin(volatile int* flag) { while (flag[0] == 0) { } }
            """);
        string args = Write("args.json", """{"args": [{"type": "i32", "zeros": 1}]}""");
        var (code, _, stderr) = Run("emulate", "--source", cu, "--kernel", "spin", "--grid", "1", "--block", "32", "--args", args, "--timeout", "0.3");
        Assert.That(code, Is.Not.EqualTo(0));
        Assert.That(stderr, Does.Contain("watchdog: kernel spin ran longer than 0.3 s").And.Contain("PTX line"));
        Assert.That(stderr, Does.Not.Contain("   at "), "no stack trace");
    }
}
