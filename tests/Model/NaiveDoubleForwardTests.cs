using System.Buffers.Binary;
using System.Text.Json;
using Qwen3Cuda.Model.Checkpoint;
using Qwen3Cuda.Model.Reference;

namespace Qwen3Cuda.Tests.Model;

/// <summary>
/// Independent check of the whole reference forward. Method: a second implementation, written in this file
/// straight from the pseudo-code of docs/architecture.md ("A decode step") and sharing no code with Qwen3Cuda.Model
/// (its own safetensors parsing, config reading, bf16 rounding, loops in double precision, one token at a time,
/// no KV cache: attention recomputed over the prefix). It applies the doc's bf16 rounding points but does every
/// sum in double, so the two differ only by fp32-vs-double accumulation before each bf16 rounding: an
/// occasional one-ulp bf16 flip (2^-8 relative) that propagates through the layers. Tolerance on logits:
/// |ref - naive| &lt;= 0.01 * rms(logits) + 1 bf16 ulp of |naive| for every element, and equal argmax at every
/// position where the naive top-2 gap exceeds that tolerance. Routing: the same expert set for every token
/// and layer unless the naive k-th/(k+1)-th probabilities are within 1e-3 (a near tie).
/// </summary>
public class NaiveDoubleForwardTests
{
    [TestCase(false)]
    [TestCase(true)]
    public void ReferenceMatchesNaiveDoubleImplementation(bool denseLayer1)
    {
        string dir = denseLayer1
            ? TestCheckpoints.Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 11, MlpOnlyLayers = new[] { 1 } })
            : TestCheckpoints.Get(new SyntheticOptions { Preset = SyntheticPreset.Tiny, Seed = 11 });
        int[] tokens = { 3, 141, 59, 265, 358, 97, 93, 238, 462, 64, 338, 327, 95, 2, 88, 41 };

        var naive = new Naive(dir);
        var (naiveLogits, naiveRoutes) = naive.Forward(tokens);

        using var model = ReferenceModel.Load(dir);
        var trace = new ReferenceTrace();
        model.Trace = trace;
        float[] refLogits = model.ForwardAllLogits(0, tokens);
        int v = model.VocabSize;

        // Routing.
        foreach (var (layer, routes) in naiveRoutes)
        {
            int k = routes[0].Experts.Length;
            var got = trace.Experts[$"layers.{layer}"];
            for (int t = 0; t < tokens.Length; t++)
            {
                var expected = routes[t].Experts.Order().ToArray();
                var actual = got.AsSpan(t * k, k).ToArray().Order().ToArray();
                if (routes[t].KthGap > 1e-3) Assert.That(actual, Is.EqualTo(expected), $"layer {layer} token {t} expert set");
            }
        }

        // Logits.
        double rms = Math.Sqrt(naiveLogits.Average(x => x * x));
        double tol = 0.01 * rms;
        double maxDiff = 0;
        for (int i = 0; i < refLogits.Length; i++)
        {
            double d = Math.Abs(refLogits[i] - naiveLogits[i]);
            maxDiff = Math.Max(maxDiff, d);
            Assert.That(d, Is.LessThanOrEqualTo(tol + Math.Abs(naiveLogits[i]) / 256), $"logit {i / v},{i % v}");
        }
        for (int t = 0; t < tokens.Length; t++)
        {
            var row = naiveLogits.AsSpan(t * v, v).ToArray();
            var sorted = row.OrderDescending().ToArray();
            if (sorted[0] - sorted[1] <= 2 * tol) continue;
            int naiveTop = Array.IndexOf(row, sorted[0]);
            var refRow = refLogits.AsSpan(t * v, v).ToArray();
            Assert.That(Array.IndexOf(refRow, refRow.Max()), Is.EqualTo(naiveTop), $"top-1 at position {t}");
        }
        TestContext.Out.WriteLine($"max |ref - naive| = {maxDiff:G4}, rms(logits) = {rms:G4}");
    }

    /// <summary>The naive double-precision model. Everything here is deliberately simple and separate.</summary>
    sealed class Naive
    {
        readonly JsonElement _cfg;
        readonly Dictionary<string, (string Dtype, long[] Shape, byte[] Data)> _tensors = new();

        public Naive(string dir)
        {
            _cfg = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "config.json"))).RootElement.Clone();
            string single = Path.Combine(dir, "model.safetensors");
            var files = File.Exists(single)
                ? new[] { single }
                : JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, "model.safetensors.index.json"))).RootElement
                    .GetProperty("weight_map").EnumerateObject().Select(p => Path.Combine(dir, p.Value.GetString()!)).Distinct().ToArray();
            foreach (var f in files)
            {
                byte[] bytes = File.ReadAllBytes(f);
                long n = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes);
                using var header = JsonDocument.Parse(bytes.AsMemory(8, (int)n));
                foreach (var p in header.RootElement.EnumerateObject())
                {
                    if (p.Name == "__metadata__") continue;
                    var off = p.Value.GetProperty("data_offsets");
                    long b = off[0].GetInt64(), e = off[1].GetInt64();
                    _tensors[p.Name] = (p.Value.GetProperty("dtype").GetString()!,
                        p.Value.GetProperty("shape").EnumerateArray().Select(x => x.GetInt64()).ToArray(),
                        bytes.AsSpan((int)(8 + n + b), (int)(e - b)).ToArray());
                }
            }
        }

        int I(string k) => _cfg.GetProperty(k).GetInt32();

        // bf16 of a double: to the nearest float, then round-to-nearest-even on the low 16 bits.
        static double Bf(double x)
        {
            uint u = BitConverter.SingleToUInt32Bits((float)x);
            uint lower = u & 0xFFFF, upper = u >> 16;
            if (lower > 0x8000 || (lower == 0x8000 && (upper & 1) == 1)) upper++;
            return BitConverter.UInt32BitsToSingle(upper << 16);
        }

        double[] Vec(string name) => Mat(name).SelectMany(r => r).ToArray();

        double[][] Mat(string name)
        {
            var (dtype, shape, data) = _tensors[name];
            Assert.That(dtype, Is.EqualTo("BF16"));
            long cols = shape[^1], rows = shape.Length == 1 ? 1 : shape[0];
            var m = new double[rows][];
            for (long r = 0; r < rows; r++)
            {
                m[r] = new double[cols];
                for (long c = 0; c < cols; c++)
                    m[r][c] = BitConverter.UInt32BitsToSingle((uint)BinaryPrimitives.ReadUInt16LittleEndian(data.AsSpan((int)((r * cols + c) * 2))) << 16);
            }
            return m;
        }

        // nn.Linear in bf16: y = bf16(x W^T), accumulated in double here.
        static double[] Linear(double[] x, double[][] w) => w.Select(row => Bf(row.Zip(x, (a, b) => a * b).Sum())).ToArray();

        double[] Rms(double[] x, double[] w)
        {
            double eps = _cfg.GetProperty("rms_norm_eps").GetDouble();
            double inv = 1 / Math.Sqrt(x.Average(v => v * v) + eps);
            return x.Select((v, i) => Bf(w[i] * Bf(v * inv))).ToArray();
        }

        static double Silu(double x) => x / (1 + Math.Exp(-x));

        double[] Mlp(double[] h, string prefix)
        {
            var g = Linear(h, Mat(prefix + "gate_proj.weight"));
            var u = Linear(h, Mat(prefix + "up_proj.weight"));
            var a = g.Select((gi, i) => Bf(Bf(Silu(gi)) * u[i])).ToArray();
            return Linear(a, Mat(prefix + "down_proj.weight"));
        }

        public record struct Route(int[] Experts, double KthGap);

        public (float[] Logits, Dictionary<int, Route[]> Routes) Forward(int[] ids)
        {
            int hidden = I("hidden_size"), nH = I("num_attention_heads"), nKV = I("num_key_value_heads"), d = I("head_dim");
            int layers = I("num_hidden_layers"), vocab = I("vocab_size"), T = ids.Length, half = d / 2;
            int numExperts = I("num_experts"), k = I("num_experts_per_tok"), step = I("decoder_sparse_step");
            var mlpOnly = _cfg.GetProperty("mlp_only_layers").EnumerateArray().Select(e => e.GetInt32()).ToHashSet();
            bool norm = _cfg.GetProperty("norm_topk_prob").GetBoolean();
            double theta = _cfg.GetProperty("rope_theta").GetDouble();
            var routes = new Dictionary<int, Route[]>();

            var embed = Mat("model.embed_tokens.weight");
            var x = ids.Select(id => embed[id].ToArray()).ToArray();
            for (int l = 0; l < layers; l++)
            {
                string p = $"model.layers.{l}.";
                var h = x.Select(r => Rms(r, Vec(p + "input_layernorm.weight"))).ToArray();
                var wq = Mat(p + "self_attn.q_proj.weight"); var wk = Mat(p + "self_attn.k_proj.weight"); var wv = Mat(p + "self_attn.v_proj.weight");
                var qn = Vec(p + "self_attn.q_norm.weight"); var kn = Vec(p + "self_attn.k_norm.weight");
                // q[t][head][dim], k and v [t][kvhead][dim], after per-head RMSNorm and RoPE at position t.
                double[][] Heads(double[] flat, int n) => Enumerable.Range(0, n).Select(i => flat.AsSpan(i * d, d).ToArray()).ToArray();
                var q = new double[T][][]; var kk = new double[T][][]; var vv = new double[T][][];
                for (int t = 0; t < T; t++)
                {
                    q[t] = Heads(Linear(h[t], wq), nH).Select(hd => Rope(Rms(hd, qn), t, theta)).ToArray();
                    kk[t] = Heads(Linear(h[t], wk), nKV).Select(hd => Rope(Rms(hd, kn), t, theta)).ToArray();
                    vv[t] = Heads(Linear(h[t], wv), nKV);
                }
                var wo = Mat(p + "self_attn.o_proj.weight");
                for (int t = 0; t < T; t++)
                {
                    var concat = new double[nH * d];
                    for (int head = 0; head < nH; head++)
                    {
                        int g = head / (nH / nKV);
                        var scores = Enumerable.Range(0, t + 1).Select(s => q[t][head].Zip(kk[s][g], (a, b) => a * b).Sum() / Math.Sqrt(d)).ToArray();
                        double max = scores.Max();
                        var e = scores.Select(sc => Math.Exp(sc - max)).ToArray();
                        double sum = e.Sum();
                        for (int j = 0; j < d; j++) concat[head * d + j] = Bf(Enumerable.Range(0, t + 1).Sum(s => e[s] / sum * vv[s][g][j]));
                    }
                    var o = Linear(concat, wo);
                    x[t] = x[t].Select((xi, i) => Bf(xi + o[i])).ToArray();
                }
                bool moe = !mlpOnly.Contains(l) && numExperts > 0 && (l + 1) % step == 0;
                var post = Vec(p + "post_attention_layernorm.weight");
                if (moe) routes[l] = new Route[T];
                for (int t = 0; t < T; t++)
                {
                    var hn = Rms(x[t], post);
                    double[] y;
                    if (moe)
                    {
                        var logits = Linear(hn, Mat(p + "mlp.gate.weight"));
                        double m = logits.Max();
                        var pr = logits.Select(z => Math.Exp(z - m)).ToArray();
                        double s = pr.Sum();
                        pr = pr.Select(z => z / s).ToArray();
                        var order = Enumerable.Range(0, numExperts).OrderByDescending(i => pr[i]).ThenBy(i => i).ToArray();
                        var chosen = order.Take(k).ToArray();
                        var w = chosen.Select(i => pr[i]).ToArray();
                        if (norm) { double ws = w.Sum(); w = w.Select(z => z / ws).ToArray(); }
                        routes[l][t] = new Route(chosen, k < numExperts ? pr[order[k - 1]] - pr[order[k]] : 1);
                        var acc = new double[hidden];
                        for (int j = 0; j < k; j++)
                        {
                            var ye = Mlp(hn, $"{p}mlp.experts.{chosen[j]}.");
                            for (int i = 0; i < hidden; i++) acc[i] += w[j] * ye[i];
                        }
                        y = acc.Select(Bf).ToArray();
                    }
                    else y = Mlp(hn, p + "mlp.");
                    x[t] = x[t].Select((xi, i) => Bf(xi + y[i])).ToArray();
                }
            }
            var lm = _tensors.ContainsKey("lm_head.weight") ? Mat("lm_head.weight") : embed;
            var fin = Vec("model.norm.weight");
            var result = new float[T * vocab];
            for (int t = 0; t < T; t++)
            {
                var logits = Linear(Rms(x[t], fin), lm);
                for (int i = 0; i < vocab; i++) result[t * vocab + i] = (float)logits[i];
            }
            return (result, routes);
        }

        // rotate_half RoPE with default inv_freq (theta^(-2j/D)) and bf16 cos/sin and bf16 ops.
        static double[] Rope(double[] v, int pos, double theta)
        {
            int dim = v.Length, half = dim / 2;
            var o = new double[dim];
            for (int i = 0; i < half; i++)
            {
                double angle = pos * Math.Pow(theta, -2.0 * i / dim);
                double c = Bf(Math.Cos(angle)), s = Bf(Math.Sin(angle));
                o[i] = Bf(Bf(v[i] * c) + Bf(-v[i + half] * s));
                o[i + half] = Bf(Bf(v[i + half] * c) + Bf(v[i] * s));
            }
            return o;
        }
    }
}
