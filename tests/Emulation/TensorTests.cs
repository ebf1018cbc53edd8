namespace Qwen3Cuda.Tests.Emulation;

/// <summary>mma.sync fragments against a plain matrix product; ldmatrix layouts (with and without .trans).</summary>
public class TensorTests
{
    private const string Source = """
        // A: 16x16 row-major, B: 16x8 row-major ([k][n]), D: 16x8 row-major f32. Fragments per the PTX ISA maps.
        extern "C" __global__ void mma_bf16(float* d, const unsigned short* a, const unsigned short* b) {
          int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
          unsigned ra[4], rb[2];
          for (int i = 0; i < 4; i++) {
            int row = g + ((i & 1) ? 8 : 0), col = 2 * t + ((i >= 2) ? 8 : 0);
            ra[i] = a[row * 16 + col] | ((unsigned)a[row * 16 + col + 1] << 16);
          }
          for (int i = 0; i < 2; i++) {
            int k = 2 * t + (i ? 8 : 0);
            rb[i] = b[k * 8 + g] | ((unsigned)b[(k + 1) * 8 + g] << 16);
          }
          float c0 = 1.0f, c1 = 2.0f, c2 = 3.0f, c3 = 4.0f;
          asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
            : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3) : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]));
          d[g * 8 + 2 * t] = c0; d[g * 8 + 2 * t + 1] = c1; d[(g + 8) * 8 + 2 * t] = c2; d[(g + 8) * 8 + 2 * t + 1] = c3;
        }
        // m16n8k8 with f16 inputs: A 16x8, B 8x8.
        extern "C" __global__ void mma_f16_k8(float* d, const unsigned short* a, const unsigned short* b) {
          int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
          unsigned ra0 = a[g * 8 + 2 * t] | ((unsigned)a[g * 8 + 2 * t + 1] << 16);
          unsigned ra1 = a[(g + 8) * 8 + 2 * t] | ((unsigned)a[(g + 8) * 8 + 2 * t + 1] << 16);
          unsigned rb0 = b[(2 * t) * 8 + g] | ((unsigned)b[(2 * t + 1) * 8 + g] << 16);
          float c0 = 0, c1 = 0, c2 = 0, c3 = 0;
          asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};"
            : "+f"(c0), "+f"(c1), "+f"(c2), "+f"(c3) : "r"(ra0), "r"(ra1), "r"(rb0));
          d[g * 8 + 2 * t] = c0; d[g * 8 + 2 * t + 1] = c1; d[(g + 8) * 8 + 2 * t] = c2; d[(g + 8) * 8 + 2 * t + 1] = c3;
        }
        // Four 8x8 b16 matrices in shared memory (row stride 40 halves = 80 bytes, like a padded tile).
        extern "C" __global__ void ldm(unsigned* out, const unsigned short* src, int trans) {
          __shared__ __align__(16) unsigned short tile[32 * 40];
          for (int i = threadIdx.x; i < 32 * 40; i += 32) tile[i] = src[i];
          __syncwarp();
          int lane = threadIdx.x;
          unsigned addr = (unsigned)__cvta_generic_to_shared(&tile[lane * 40]);
          unsigned r0, r1, r2, r3;
          if (trans) asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
          else asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];" : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3) : "r"(addr));
          out[0 * 32 + lane] = r0; out[1 * 32 + lane] = r1; out[2 * 32 + lane] = r2; out[3 * 32 + lane] = r3;
          unsigned x2a, x2b;
          asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];" : "=r"(x2a), "=r"(x2b) : "r"(addr));
          unsigned x1;
          asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];" : "=r"(x1) : "r"(addr));
          out[4 * 32 + lane] = x2a; out[5 * 32 + lane] = x2b; out[6 * 32 + lane] = x1;
        }
        """;

    private static ushort Bf16(float f) => (ushort)(BitConverter.SingleToUInt32Bits(f) >> 16); // exact for the small values used

    [Test]
    public void MmaM16N8K16Bf16MatchesMatrixProduct()
    {
        using var kit = new EmuKit(Source);
        var rnd = new Random(1);
        var a = Enumerable.Range(0, 256).Select(_ => (float)rnd.Next(-8, 9) / 4).ToArray();
        var b = Enumerable.Range(0, 128).Select(_ => (float)rnd.Next(-8, 9) / 8).ToArray();
        var da = kit.Upload(a.Select(Bf16).ToArray());
        var db = kit.Upload(b.Select(Bf16).ToArray());
        var dd = kit.Zeros<float>(128);
        var rec = kit.Launch("mma_bf16", 1, 32, 0, dd, da, db);
        var got = kit.Download<float>(dd, 128);
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 8; j++)
            {
                float c = (i < 8 ? 0 : 2) + (j % 2) + 1;
                double s = c;
                for (int k = 0; k < 16; k++) s += (double)a[i * 16 + k] * b[k * 8 + j];
                // inputs are multiples of 1/32 with small magnitude: the sum is exact in f32
                Assert.That(got[i * 8 + j], Is.EqualTo((float)s), $"D[{i}][{j}]");
            }
        Assert.That(rec.MmaCount, Is.EqualTo(1));
    }

    [Test]
    public void MmaM16N8K8F16MatchesMatrixProduct()
    {
        using var kit = new EmuKit(Source);
        var rnd = new Random(2);
        var a = Enumerable.Range(0, 128).Select(_ => (float)rnd.Next(-16, 17) / 8).ToArray();
        var b = Enumerable.Range(0, 64).Select(_ => (float)rnd.Next(-16, 17) / 16).ToArray();
        var da = kit.Upload(a.Select(x => BitConverter.HalfToUInt16Bits((Half)x)).ToArray());
        var db = kit.Upload(b.Select(x => BitConverter.HalfToUInt16Bits((Half)x)).ToArray());
        var dd = kit.Zeros<float>(128);
        kit.Launch("mma_f16_k8", 1, 32, 0, dd, da, db);
        var got = kit.Download<float>(dd, 128);
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 8; j++)
            {
                double s = 0;
                for (int k = 0; k < 8; k++) s += (double)a[i * 8 + k] * b[k * 8 + j];
                // exact: small dyadic inputs
                Assert.That(got[i * 8 + j], Is.EqualTo((float)s), $"D[{i}][{j}]");
            }
    }

    [TestCase(0)]
    [TestCase(1)]
    public void LdmatrixLayouts(int trans)
    {
        using var kit = new EmuKit(Source);
        var src = Enumerable.Range(0, 32 * 40).Select(i => (ushort)i).ToArray();
        var ds = kit.Upload(src);
        var d = kit.Zeros<uint>(7 * 32);
        var rec = kit.Launch("ldm", 1, 32, 0, d, ds, trans);
        var got = kit.Download<uint>(d, 7 * 32);
        // matrix i, row r is at tile[(8*i + r) * 40]; element M_i[r][c] = (8*i+r)*40 + c
        uint M(int i, int r, int c) => (uint)((8 * i + r) * 40 + c);
        for (int lane = 0; lane < 32; lane++)
        {
            int r = lane / 4, c = 2 * (lane % 4);
            for (int i = 0; i < 4; i++)
            {
                uint want = trans == 0 ? M(i, r, c) | (M(i, r, c + 1) << 16) : M(i, c, r) | (M(i, c + 1, r) << 16);
                Assert.That(got[i * 32 + lane], Is.EqualTo(want), $"x4 matrix {i} lane {lane}");
            }
            Assert.That(got[4 * 32 + lane], Is.EqualTo(M(0, r, c) | (M(0, r, c + 1) << 16)), $"x2 matrix 0 lane {lane}");
            Assert.That(got[5 * 32 + lane], Is.EqualTo(M(1, r, c) | (M(1, r, c + 1) << 16)), $"x2 matrix 1 lane {lane}");
            Assert.That(got[6 * 32 + lane], Is.EqualTo(M(0, c, r) | (M(0, c + 1, r) << 16)), $"x1.trans lane {lane}");
        }
        Assert.That(rec.SharedBankConflicts, Is.GreaterThanOrEqualTo(0));
    }
}
