using Qwen3Cuda.Model;
using Qwen3Cuda.Model.Reference;
using Qwen3Cuda.Model.Serving;
using Qwen3Cuda.Model.Templates;
using Qwen3Cuda.Model.Tokenization;
using Qwen3Cuda.Tests.Text;

namespace Qwen3Cuda.Tests.Serving;

/// <summary>Engines over the tiny synthetic checkpoint (vocab 512) with the tiny test tokenizer (tests/Text/Data/tiny-model).</summary>
static class ServingTestSupport
{
    static readonly Lazy<Qwen3Tokenizer> TinyTokenizer = new(() => Qwen3Tokenizer.FromModelDirectory(TinyTokenizerDir));
    public static string TinyTokenizerDir => Path.Combine(TextTestSupport.TextTestsDir, "Data", "tiny-model");
    public static Qwen3Tokenizer Tokenizer => TinyTokenizer.Value;
    public static ChatTemplate Template => ChatTemplate.FromModelDirectory(TinyTokenizerDir);

    /// <summary>The CPU reference on the tiny checkpoint: <paramref name="sequences"/> sequences of <paramref name="context"/> tokens in pages of <paramref name="pageSize"/>.</summary>
    public static ReferenceModel CpuModel(int sequences, int context = 96, int pageSize = 4, int? kvPages = null) =>
        new(ModelWeights.Load(DeviceModel.DeviceCheckpoints.Tiny()), sequences, context, pageSize, kvPages);

    /// <summary>An engine without EOS ids (the random model's greedy answers run to their budget).</summary>
    public static Engine CpuEngine(int sequences = 16, EngineOptions? options = null, int context = 96, int pageSize = 4, int? kvPages = null, IReadOnlyList<int>? eos = null) =>
        new(CpuModel(sequences, context, pageSize, kvPages), Tokenizer, Template, eos ?? [], options ?? new EngineOptions { MaxNumSeqs = sequences });

    /// <summary>A prompt of <paramref name="length"/> ids in [1, 300) from <paramref name="seed"/>.</summary>
    public static int[] Prompt(int length, int seed)
    {
        var rng = new Random(seed);
        return [.. Enumerable.Range(0, length).Select(_ => rng.Next(1, 300))];
    }

    public static RequestOptions Greedy(int maxNewTokens) => new() { Sampling = Qwen3Cuda.Model.Sampling.SamplingOptions.Greedy, MaxNewTokens = maxNewTokens };

    /// <summary>A model the test keeps (an engine disposing it does not dispose the model): forwards everything but Dispose.</summary>
    public class Borrowed(ICausalLanguageModel inner) : ICausalLanguageModel
    {
        public int VocabSize => inner.VocabSize;
        public int ContextLength => inner.ContextLength;
        public int MaxSequences => inner.MaxSequences;
        public int MaxStepRows => inner.MaxStepRows;
        public int MaxOutputRows => inner.MaxOutputRows;
        public int MaxPenaltyEntries => inner.MaxPenaltyEntries;
        public Qwen3Cuda.Runtime.Memory.KvPageTable Kv => inner.Kv;
        public void Step(StepBatch batch) => inner.Step(batch);
        public void Dispose() { }
    }

    /// <summary>A borrowed model that pipelines (<see cref="IPipelinedModel"/>): the engine queues its decode steps; counts them.</summary>
    public sealed class BorrowedPipelined(IPipelinedModel inner) : Borrowed(inner), IPipelinedModel
    {
        public void Enqueue(StepBatch batch) { inner.Enqueue(batch); Enqueued++; if (inner.PendingSteps == 2) QueuedAhead++; }
        public void Complete(StepBatch batch) => inner.Complete(batch);
        public int PendingSteps => inner.PendingSteps;
        public int MaxPipelinedRows => inner.MaxPipelinedRows;
        /// <summary>Steps queued; of them, those queued while the step before was still queued.</summary>
        public int Enqueued, QueuedAhead;
    }

    /// <summary>The model without ownership, pipelining when it does.</summary>
    public static ICausalLanguageModel Borrow(ICausalLanguageModel m) => m is IPipelinedModel p ? new BorrowedPipelined(p) : new Borrowed(m);
}
