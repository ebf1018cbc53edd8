using System.Diagnostics;
using System.Globalization;
using Qwen3Cuda.Runtime.Memory;

namespace Qwen3Cuda.Cli;

/// <summary>
/// Progress of a model load on stderr. On a terminal: a weight-upload bar redrawn in place (percent, bytes, bytes/s,
/// ETA) at most 10 times a second, and a running count while NVRTC compiles kernels on a cold cache. When stderr is
/// redirected (logs, tests): no bar, one line when compiling starts and one when it ends.
/// </summary>
sealed class LoadProgress(TextWriter stderr, bool terminal)
{
    readonly Stopwatch _upload = new();
    readonly Stopwatch _compile = new();
    long _lastDrawTicks = -1;
    bool _barShown;
    int _compiled;

    public int CompiledModules => _compiled;
    public TimeSpan CompileTime => _compile.Elapsed;

    /// <summary>Whether stderr is the console and a terminal (not redirected).</summary>
    public static bool IsTerminal(TextWriter stderr) => ReferenceEquals(stderr, Console.Error) && !Console.IsErrorRedirected;

    public void CompileStarting(string file)
    {
        if (_compiled++ == 0)
        {
            _compile.Start();
            if (!terminal) { stderr.WriteLine($"compiling kernels with NVRTC (cold cache: once per kernel version; cached in {Runtime.KernelCompiler.DefaultCacheDirectory()})"); stderr.Flush(); }
        }
        if (terminal) { stderr.Write($"\r\x1b[Kcompiling kernels: {_compiled} ({file})"); stderr.Flush(); }
    }

    /// <summary>Ends the compile line, if any module was compiled.</summary>
    public void CompileDone()
    {
        if (_compiled == 0 || !_compile.IsRunning) return;
        _compile.Stop();
        string line = string.Create(CultureInfo.InvariantCulture, $"compiled {_compiled} kernel modules in {_compile.Elapsed.TotalSeconds:F1} s (cached for next time)");
        stderr.WriteLine(terminal ? $"\r\x1b[K{line}" : line);
        stderr.Flush();
    }

    public void Upload(UploadProgress p)
    {
        if (!_upload.IsRunning) { CompileDone(); _upload.Start(); }
        if (!terminal) return;
        long now = _upload.ElapsedTicks;
        bool last = p.DoneBytes >= p.TotalBytes;
        if (!last && _lastDrawTicks >= 0 && now - _lastDrawTicks < Stopwatch.Frequency / 10) return;
        _lastDrawTicks = now;
        stderr.Write("\r\x1b[K" + Bar(p.DoneBytes, p.TotalBytes, _upload.Elapsed));
        stderr.Flush();
        _barShown = true;
    }

    /// <summary>"loading weights  42% [########            ] 1.2 GiB / 2.9 GiB  850.0 MiB/s  ETA 2 s".</summary>
    public static string Bar(long done, long total, TimeSpan elapsed, int width = 24)
    {
        double f = total > 0 ? Math.Clamp((double)done / total, 0, 1) : 1;
        int filled = (int)Math.Round(f * width);
        double rate = elapsed.TotalSeconds > 0 ? done / elapsed.TotalSeconds : 0;
        string eta = rate > 0 && done < total ? $"ETA {Math.Ceiling((total - done) / rate):F0} s" : "";
        return string.Create(CultureInfo.InvariantCulture,
            $"loading weights {f * 100,3:F0}% [{new string('#', filled)}{new string(' ', width - filled)}] {ByteSize.Format(done)} / {ByteSize.Format(total)}  {ByteSize.Format((long)rate)}/s  {eta}").TrimEnd();
    }

    /// <summary>Clears the bar line (the summary follows on its own line).</summary>
    public void Finish()
    {
        CompileDone();
        if (_barShown) { stderr.Write("\r\x1b[K"); stderr.Flush(); }
    }
}
