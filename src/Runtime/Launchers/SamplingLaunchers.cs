using System.Runtime.InteropServices;

namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Mirror of <c>SampleRowSettings</c> in kernels/sampling.cu: one row's settings, read by the kernel from device memory.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SampleRowSettings
{
    public ulong Seed;
    public ulong Step;               // Philox counter (Step, 0)
    public float InvTemperature;     // <= 0: greedy
    public int TopK;
    public float TopP;
    public float MinP;

    /// <summary>The row settings of <paramref name="s"/> (validated) at counter <paramref name="step"/>; greedy settings give InvTemperature 0.</summary>
    public static SampleRowSettings From(in SamplingSettings s, ulong step)
    {
        SamplingLaunchers.Validate(s);
        return new SampleRowSettings
        {
            Seed = s.Seed, Step = step, InvTemperature = s.IsGreedy ? 0f : 1f / s.Temperature, TopK = s.TopK, TopP = s.TopP, MinP = s.MinP,
        };
    }
}

/// <summary>Mirror of <c>SampleRowsParams</c> in kernels/sampling.cu (layout checked by a test).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SampleRowsParams
{
    public DevicePtr Logits;     // [Rows, Ld] bf16
    public DevicePtr OutIds;     // [Rows] int32
    public DevicePtr Settings;   // [Rows] SampleRowSettings, or null: Fixed for every row
    public DevicePtr Hist;       // [rows, 65536] uint32, zero on entry and exit
    public DevicePtr Tickets;    // [rows, 2] uint32, zero on entry and exit
    public DevicePtr Parts;      // [rows, Ctas] SamplePart (16 bytes)
    public DevicePtr SliceMass;  // [rows, Ctas] fp32
    public DevicePtr State;      // [rows] SampleRowState (32 bytes)
    public SampleRowSettings Fixed;
    public int Rows;
    public int Vocab;
    public int Ld;
    public int Ctas;
    public int ArgmaxOnly;
}

/// <summary>
/// Device memory the sampling kernels need between their two launches, for up to <see cref="Rows"/> rows of up to
/// <see cref="Vocab"/> logits: the per-row histogram of bf16 values and tickets (both must be zero before the first
/// launch, e.g. from <see cref="IDevice.MemsetAsync"/>; the kernels leave them zero), the CTAs' partials (room for
/// <see cref="FusedPartsPerRow"/> per row, the lm_head's fused reduce, or the slices', whichever is more) and the row
/// state. Size: <see cref="Bytes"/> (about 270 KiB per row).
/// </summary>
public readonly record struct SamplingScratch(DevicePtr Base, int Rows, int Vocab)
{
    public const int Buckets = 65536;
    /// <summary>Partials per row that <c>gemv_bf16_mma_sample</c> may store (one per CTA): its last CTA merges them in one pass
    /// of 3 per thread (gemv.cu's GEMV_SAMPLE_PARTS_HELD x 256 threads).</summary>
    public const int FusedPartsPerRow = 768;

    public static long Bytes(int rows, int vocab)
    {
        long ctas = SamplingLaunchers.CtasFor(vocab);
        return HistBytes(rows) + TicketBytes(rows) + rows * PartsPerRow(vocab) * 16L + rows * ctas * 4L + rows * 32L;
    }

    private static long PartsPerRow(int vocab) => Math.Max(SamplingLaunchers.CtasFor(vocab), FusedPartsPerRow);
    private static long HistBytes(int rows) => rows * (long)Buckets * sizeof(uint);
    private static long TicketBytes(int rows) => (rows * 8L + 255) / 256 * 256;
    internal DevicePtr Hist => Base;
    internal DevicePtr Tickets => Base + HistBytes(Rows);
    internal DevicePtr Parts => Tickets + TicketBytes(Rows);
    internal DevicePtr SliceMass => Parts + Rows * PartsPerRow(Vocab) * 16;
    internal DevicePtr State => SliceMass + Rows * (long)SamplingLaunchers.CtasFor(Vocab) * 4;
}

/// <summary>Sampling settings (transformers' names). Temperature 0 means greedy.</summary>
public readonly record struct SamplingSettings(float Temperature = 1f, int TopK = 0, float TopP = 1f, float MinP = 0f, ulong Seed = 0)
{
    public bool IsGreedy => Temperature <= 0f || TopK == 1;
}

/// <summary>
/// Launchers for kernels/sampling.cu: greedy argmax, or temperature / top-k / top-p / min-p sampling with a
/// counter-based Philox generator keyed by (seed, step, row): the same inputs always give the same token. Each row is
/// spread over ceil(vocab / 4096) CTAs: <c>sample_reduce_bf16</c> (argmax, histogram, thresholds), then for sampled
/// rows <c>sample_draw_bf16</c> (the draw). The token ids stay on the device. Nothing here allocates or synchronises;
/// the caller provides a <see cref="SamplingScratch"/>.
/// </summary>
public sealed class SamplingLaunchers(KernelLoader loader)
{
    public const string File = "sampling.cu";
    /// <summary>Tokens per CTA (512 threads x 8).</summary>
    public const int SliceTokens = 4096;
    /// <summary>CTAs per row at most (the draw scans the slices with one thread each).</summary>
    public const int MaxCtas = 512;
    private readonly DeviceKernel _reduce = loader.Get(File, "sample_reduce_bf16");
    private readonly DeviceKernel _draw = loader.Get(File, "sample_draw_bf16");
    private readonly IDevice _device = loader.Device;

    public static int CtasFor(int vocab) => Math.Max(1, (vocab + SliceTokens - 1) / SliceTokens);

    /// <summary>The largest logit of each row (ties to the lower index).</summary>
    public void Argmax(DeviceStream stream, DevicePtr logits, int ld, int rows, int vocab, DevicePtr outIds, in SamplingScratch scratch)
    {
        Validate(ld, rows, vocab, scratch);
        if (rows == 0) return;
        var p = Params(logits, ld, rows, vocab, outIds, DevicePtr.Null, default, scratch, argmaxOnly: true);
        Launch(_reduce, stream, p);
    }

    /// <summary>Samples one token per row with the same settings (Philox counter word 2 = the row index); greedy settings
    /// run <see cref="Argmax"/>. <paramref name="step"/> must change every call (e.g. the decode position) or the same
    /// random number is drawn again.</summary>
    public void Sample(DeviceStream stream, DevicePtr logits, int ld, int rows, int vocab, DevicePtr outIds, in SamplingSettings s, ulong step, in SamplingScratch scratch)
    {
        Validate(s);
        if (s.IsGreedy) { Argmax(stream, logits, ld, rows, vocab, outIds, scratch); return; }
        Validate(ld, rows, vocab, scratch);
        if (rows == 0) return;
        var p = Params(logits, ld, rows, vocab, outIds, DevicePtr.Null, SampleRowSettings.From(s, step), scratch, argmaxOnly: false);
        Launch(_reduce, stream, p);
        Launch(_draw, stream, p);
    }

    /// <summary>Samples row r with <c>settings[r]</c> (<see cref="SampleRowSettings"/> in device memory, so a captured
    /// graph sees new values; Philox counter word 2 = 0); a row with InvTemperature &lt;= 0 or TopK 1 takes the argmax.</summary>
    public void SampleRows(DeviceStream stream, DevicePtr logits, int ld, int rows, int vocab, DevicePtr settings, DevicePtr outIds, in SamplingScratch scratch)
    {
        Validate(ld, rows, vocab, scratch);
        if (settings.IsNull) throw new ArgumentException("sampling: SampleRows needs the settings array", nameof(settings));
        if (rows == 0) return;
        var p = Params(logits, ld, rows, vocab, outIds, settings, default, scratch, argmaxOnly: false);
        Launch(_reduce, stream, p);
        Launch(_draw, stream, p);
    }

    /// <summary>
    /// The rows of <see cref="SampleRows"/> for a launch that does <c>sample_reduce_bf16</c>'s work itself (the lm_head's
    /// <see cref="GemvLaunchers.GemvSample"/>), to pass to it and then to <see cref="Draw"/>: row r takes <c>settings[r]</c>.
    /// </summary>
    public static SampleRowsParams RowsParams(DevicePtr logits, int ld, int rows, int vocab, DevicePtr settings, DevicePtr outIds, in SamplingScratch scratch)
    {
        Validate(ld, rows, vocab, scratch);
        if (settings.IsNull) throw new ArgumentException("sampling: the rows need the settings array", nameof(settings));
        if (rows == 0) throw new ArgumentException("sampling: no rows to sample", nameof(rows));
        return Params(logits, ld, rows, vocab, outIds, settings, default, scratch, argmaxOnly: false);
    }

    /// <summary><c>sample_draw_bf16</c> alone, after a launch that left the rows' state (<see cref="GemvLaunchers.GemvSample"/>), with the same <paramref name="rows"/>.</summary>
    public void Draw(DeviceStream stream, in SampleRowsParams rows)
    {
        if (rows.Rows <= 0 || rows.Settings.IsNull || rows.ArgmaxOnly != 0 || rows.Ctas != CtasFor(rows.Vocab))
            throw new ArgumentException($"sampling: Draw takes the rows of RowsParams (rows {rows.Rows}, vocab {rows.Vocab}, CTAs {rows.Ctas})", nameof(rows));
        Launch(_draw, stream, rows);
    }

    private static SampleRowsParams Params(DevicePtr logits, int ld, int rows, int vocab, DevicePtr outIds, DevicePtr settings,
        SampleRowSettings fixedSettings, in SamplingScratch scratch, bool argmaxOnly) => new()
    {
        Logits = logits, OutIds = outIds, Settings = settings, Hist = scratch.Hist, Tickets = scratch.Tickets, Parts = scratch.Parts,
        SliceMass = scratch.SliceMass, State = scratch.State, Fixed = fixedSettings, Rows = rows, Vocab = vocab, Ld = ld,
        Ctas = CtasFor(vocab), ArgmaxOnly = argmaxOnly ? 1 : 0,
    };

    private void Launch(DeviceKernel kernel, DeviceStream stream, in SampleRowsParams p)
    {
        var args = new KernelArgs(stackalloc byte[160], stackalloc nint[1]);
        args.Add(p);
        _device.Launch(kernel, new LaunchConfig(new Dim3((uint)p.Ctas, (uint)p.Rows), 512, ProgrammaticDependentLaunch: true), stream, args);
    }

    public static void Validate(in SamplingSettings s)
    {
        if (float.IsNaN(s.Temperature) || s.Temperature < 0) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: temperature {s.Temperature} must be >= 0");
        if (!(s.TopP > 0f && s.TopP <= 1f)) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: top_p {s.TopP} must be in (0, 1]");
        if (!(s.MinP >= 0f && s.MinP <= 1f)) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: min_p {s.MinP} must be in [0, 1]");
        if (s.TopK < 0) throw new ArgumentOutOfRangeException(nameof(s), $"sampling: top_k {s.TopK} must be >= 0 (0: off)");
    }

    private static void Validate(int ld, int rows, int vocab, in SamplingScratch scratch)
    {
        if (rows < 0 || vocab <= 0 || ld < vocab)
            throw new ArgumentException($"sampling: rows {rows}, vocab {vocab}, ld {ld}: need rows >= 0, vocab > 0, ld >= vocab");
        if (CtasFor(vocab) > MaxCtas)
            throw new ArgumentException($"sampling: vocab {vocab} exceeds the {MaxCtas * SliceTokens} tokens sampling.cu supports");
        if (scratch.Base.IsNull || rows > scratch.Rows || vocab > scratch.Vocab)
            throw new ArgumentException($"sampling: the scratch (rows {scratch.Rows}, vocab {scratch.Vocab}) does not cover rows {rows}, vocab {vocab}", nameof(scratch));
    }
}
