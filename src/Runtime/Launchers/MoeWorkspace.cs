namespace Qwen3Cuda.Runtime.Launchers;

/// <summary>Shape of one MoE block: E experts, top-k, hidden H, expert intermediate I, norm_topk_prob (read from config.json).</summary>
public readonly record struct MoeShape(int Experts, int TopK, int Hidden, int Inter, bool NormTopkProb);

/// <summary>
/// Byte offsets of every buffer <c>MoeLaunchers.MoeBlock</c> carves out of the caller's workspace for T tokens
/// (each 256-byte aligned). Sizes (T tokens, E experts, k, I, H; BM = 64 the GEMM tile height):
/// <code>
/// experts_sync  int  [3 + 8 * 16]          moe_experts_gemv's tile counters (sized for the most decode slots; first: the
///                                          same place for every T)
/// counters      int  [ceil(T / 8)]         router tickets (the same place for every T; both zero between launches)
/// logits        fp32 [T, E]                router logits (bf16 values)
/// topk_ids      int  [T*k],  topk_weights fp32 [T*k]
/// counts        int  [E],    offsets int [E + 1]
/// sorted_slots  int  [MaxTiles * BM]       MaxTiles = min(T*k, (T*k + min(E, T*k) * (BM - 1)) / BM)
/// tile_expert   int  [MaxTiles],  num_tiles int [1]
/// inter         bf16 [max(MaxTiles * BM, T*k), I]   SwiGLU activations (sorted rows, or slots on decode)
/// slot_out      bf16 [T*k, H]              each expert's output per (token, rank) slot
/// </code>
/// At T = 4096, E = 128, k = 8, I = 768, H = 2048 this is about 190 MiB (slot_out 128 MiB, inter 49 MiB).
/// </summary>
public readonly record struct MoeWorkspace
{
    public const int TileRows = 64;
    public int Tokens { get; init; }
    public int MaxTiles { get; init; }
    /// <summary>moe_experts_gemv's counters: next tile, exit ticket, gate_up tiles done per token, down tiles done (<see cref="ExpertsSyncInts"/>).</summary>
    public long ExpertsSync { get; init; }
    public long Counters { get; init; }
    /// <summary>End of the tickets at the start of the workspace: zeroed once (<c>MoeLaunchers.ClearTickets</c>), every kernel that takes one leaves it zero.</summary>
    public long TicketBytes { get; init; }
    public long Logits { get; init; }
    public long TopkIds { get; init; }
    public long TopkWeights { get; init; }
    public long Counts { get; init; }
    public long Offsets { get; init; }
    public long SortedSlots { get; init; }
    public long TileExpert { get; init; }
    public long NumTiles { get; init; }
    public long Inter { get; init; }
    public long SlotOut { get; init; }
    public long TotalBytes { get; init; }

    public static int MaxTilesFor(int tokens, int experts, int topK)
    {
        long slots = (long)tokens * topK;
        return (int)Math.Min(slots, (slots + Math.Min(experts, slots) * (TileRows - 1)) / TileRows);
    }

    /// <summary>Ints of moe_experts_gemv's counters: next tile, exit ticket, the gate_up tiles done of each decode token (at
    /// index 2 + token), the down tiles done (for a follow-on GEMV, at index 2 + the step's slots); sized for the most slots
    /// a decode step has.</summary>
    public const int ExpertsSyncInts = 3 + MoeLaunchers.DecodeMaxTokens * MoeLaunchers.MaxTopK;

    /// <summary>Combine tickets of one token in the decode down GEMV: one per block of 16 output rows (its grid's x).</summary>
    public static int DownTicketsPerToken(int hidden) => (hidden + 15) / 16;

    /// <summary>The layout for <paramref name="tokens"/> tokens of a block of shape (E, k, I, H).</summary>
    public static MoeWorkspace Compute(int tokens, int experts, int topK, int inter, int hidden)
    {
        if (tokens < 0) throw new ArgumentOutOfRangeException(nameof(tokens), $"token count {tokens} is negative");
        if (experts < 1 || topK < 1 || inter < 1 || hidden < 1)
            throw new ArgumentException($"MoE shape E={experts}, k={topK}, I={inter}, H={hidden} must be positive");
        long slots = (long)tokens * topK;
        int maxTiles = MaxTilesFor(tokens, experts, topK);
        long padded = (long)maxTiles * TileRows;
        long at = 0;
        long Take(long bytes) { long o = at; at += (bytes + 255) / 256 * 256; return o; }
        var w = new MoeWorkspace
        {
            Tokens = tokens,
            MaxTiles = maxTiles,
            ExpertsSync = Take(ExpertsSyncInts * 4L),
            Counters = Take((tokens + 7) / 8 * 4L),
            TicketBytes = at,
            Logits = Take((long)tokens * experts * 4),
            TopkIds = Take(slots * 4),
            TopkWeights = Take(slots * 4),
            Counts = Take(experts * 4L),
            Offsets = Take((experts + 1) * 4L),
            SortedSlots = Take(padded * 4),
            TileExpert = Take(maxTiles * 4L),
            NumTiles = Take(4),
            Inter = Take(Math.Max(padded, slots) * inter * 2),
            SlotOut = Take(slots * hidden * 2),
        };
        return w with { TotalBytes = at };
    }

    public static MoeWorkspace Compute(int tokens, in MoeShape s) => Compute(tokens, s.Experts, s.TopK, s.Inter, s.Hidden);
}
