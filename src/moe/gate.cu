/* Routing gate kernel: one warp per token, grid-stride over tokens with the
 * next row prefetched into registers. Lane l holds experts j*32 + l
 * (row j of the warp's view), so every load of a row is one coalesced
 * warp access whatever E and the alignment are. All scores are fp32 keys
 * (gate_common.h); the selections are warp reductions on them. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <string.h>

#include "vcoll.h"
#include "gate_common.h"
#include "gate_device.cuh"
extern "C" {
#include "vcoll_internal.h"
}

namespace {

constexpr int kWarps = 8; /* warps (tokens in flight) per block */
constexpr unsigned kFull = 0xffffffffu;

enum GroupMode {
  kAllKept = 0, /* topkGroup == G: every expert is a candidate */
  kRows = 1,    /* groups are whole rows (E/G a multiple of 32): warp reductions per group */
  kSmem = 2     /* any other grouping: scores staged in shared memory */
};

struct GateArgs {
  const void* logits;
  const float* bias;
  int32_t* ids;
  float* weights;
  size_t T;
  int E, G, gs, rowsPerGroup, topkGroup, topk, K;
  int renormalize, scaleIn;
  float rsf, sharedW;
  uint32_t hiMask; /* ~255u, as a value: the packing below is then one LOP3 with a register mask */
  uint32_t keyMul; /* 256, as a value: the fixed-point packing is then an IMAD (FMA pipe), not a LEA */
};

template <typename TIn> __device__ __forceinline__ uint32_t loadRaw(const TIn* p);
template <> __device__ __forceinline__ uint32_t loadRaw<float>(const float* p) { return __float_as_uint(__ldg(p)); }
template <> __device__ __forceinline__ uint32_t loadRaw<__nv_bfloat16>(const __nv_bfloat16* p) {
  return __bfloat16_as_ushort(__ldg(p));
}
template <typename TIn> __device__ __forceinline__ float rawToFloat(uint32_t u);
template <> __device__ __forceinline__ float rawToFloat<float>(uint32_t u) { return __uint_as_float(u); }
template <> __device__ __forceinline__ float rawToFloat<__nv_bfloat16>(uint32_t u) {
  return __bfloat162float(__ushort_as_bfloat16((unsigned short)u));
}

/* One pointer per lane and constant offsets j * 32: no per-row address arithmetic. */
template <typename TIn, int NR, bool FULL>
__device__ __forceinline__ void loadRow(uint32_t (&raw)[NR], const TIn* row, int E, int lane) {
  const TIn* p = row + lane;
#pragma unroll
  for (int j = 0; j < NR; j++) raw[j] = (FULL || j * 32 + lane < E) ? loadRaw<TIn>(p + j * 32) : 0u;
}

/* Top-2 of the candidate rows `rows` (bit j: row j), by key then lower expert. */
template <int NR>
__device__ __forceinline__ void laneTop2(const uint32_t (&k)[NR], const float (&s)[NR], uint32_t rows, int lane,
                                         uint32_t& k1, uint32_t& e1, float& s1, uint32_t& k2, uint32_t& e2,
                                         float& s2) {
  k1 = k2 = 0;
  e1 = e2 = 0xffffffffu;
  s1 = s2 = 0.0f;
#pragma unroll
  for (int j = 0; j < NR; j++) {
    if ((rows >> j) & 1u) {
      uint32_t c = k[j], e = j * 32 + lane;
      if (c > k1) { k2 = k1; e2 = e1; s2 = s1; k1 = c; e1 = e; s1 = s[j]; }
      else if (c > k2) { k2 = c; e2 = e; s2 = s[j]; }
    }
  }
}

/* FULL: E == NR * 32 (every row holds 32 experts), known at compile time so
 * that no bounds check remains and the group loop below unrolls with its
 * warp reductions outside any runtime condition. RPG > 0 (kRows with FULL
 * only): groups of RPG rows, so G = NR / RPG at compile time; 0: from `a`. */
template <typename TIn, int NR, int MODE, bool FULL, int RPG>
__global__ void __launch_bounds__(kWarps * 32) moeGateKernel(const GateArgs a) {
  extern __shared__ uint32_t smem[];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const size_t stride = (size_t)gridDim.x * kWarps;
  const TIn* logits = (const TIn*)a.logits;
  const int E = a.E;
  /* Rows holding at least one expert. */
  const int nRows = FULL ? NR : (E + 31) / 32;
  const int rowsPerGroup = RPG > 0 ? RPG : a.rowsPerGroup;
  const int G = RPG > 0 ? NR / RPG : a.G;
  const uint32_t validRows = nRows >= 32 ? kFull : (1u << nRows) - 1u;

  float bias[NR];
#pragma unroll
  for (int j = 0; j < NR; j++)
    bias[j] = (a.bias != nullptr && (FULL || j * 32 + lane < E)) ? __ldg(a.bias + j * 32 + lane) : 0.0f;

  size_t t = (size_t)blockIdx.x * kWarps + warp;
  uint32_t next[NR];
  const TIn* nextRow = logits + t * E;           /* row of token t + stride, advanced by rowStep */
  const size_t rowStep = stride * (size_t)E;
  if (t < a.T) loadRow<TIn, NR, FULL>(next, nextRow, E, lane);
  for (; t < a.T; t += stride) {
    uint32_t raw[NR];
#pragma unroll
    for (int j = 0; j < NR; j++) raw[j] = next[j];
    nextRow += rowStep;
    if (t + stride < a.T) loadRow<TIn, NR, FULL>(next, nextRow, E, lane);

    float s[NR];
    uint32_t k[NR];
#pragma unroll
    for (int j = 0; j < NR; j++) {
      s[j] = vgSigmoid(rawToFloat<TIn>(raw[j]));
      k[j] = (FULL || j * 32 + lane < E) ? vgKey(__fadd_rn(s[j], bias[j])) : 0u;
    }

    uint32_t rows = validRows; /* rows whose lane-experts are candidates */
    if (MODE == kRows) {
      /* Group g is rows g*R .. g*R+R-1. Its top-2 over the warp: the
       * largest lane top-1 m1, then the largest of the other lanes' top-1
       * and the top-2 of the first lane holding m1. */
      uint32_t a1 = 0, a2 = 0, gm1 = 0, gm2 = 0;
      int q = 0, g = 0;
#pragma unroll
      for (int j = 0; j < NR; j++) {
        if (FULL || j < nRows) {
          a2 = max(a2, min(a1, k[j]));
          a1 = max(a1, k[j]);
          if (++q == rowsPerGroup) {
            uint32_t m1 = __reduce_max_sync(kFull, a1);
            int first = __ffs(__ballot_sync(kFull, a1 == m1)) - 1;
            uint32_t m2 = __reduce_max_sync(kFull, lane == first ? a2 : a1);
            if (lane == g) { gm1 = m1; gm2 = m2; }
            a1 = a2 = 0;
            q = 0;
            g++;
          }
        }
      }
      /* Lane g < G holds group g's score; rank = groups that beat it. */
      const uint32_t gk = lane < G ? vgGroupKey(gm1, gm2) : 0u;
      int rank = 0;
#pragma unroll
      for (int o = 0; o < G; o++) {
        uint32_t ok = __shfl_sync(kFull, gk, o);
        rank += ok > gk || (ok == gk && o < lane);
      }
      const uint32_t kept = __ballot_sync(kFull, lane < G && rank < a.topkGroup);
      if (rowsPerGroup == 1) {
        rows = kept;
      } else {
        rows = 0;
        for (int g2 = 0; g2 < G; g2++)
          if ((kept >> g2) & 1u) rows |= ((1u << rowsPerGroup) - 1u) << (g2 * rowsPerGroup);
      }
    } else if (MODE == kSmem) {
      uint32_t* kb = smem + (size_t)warp * (NR * 32 + a.G);
      uint32_t* gb = kb + NR * 32;
#pragma unroll
      for (int j = 0; j < NR; j++) kb[j * 32 + lane] = k[j];
      __syncwarp();
      for (int g = lane; g < a.G; g += 32) {
        uint32_t a1 = 0, a2 = 0;
        for (int i = g * a.gs; i < (g + 1) * a.gs; i++) {
          a2 = max(a2, min(a1, kb[i]));
          a1 = max(a1, kb[i]);
        }
        gb[g] = vgGroupKey(a1, a2);
      }
      __syncwarp();
      for (int g = lane; g < a.G; g += 32) {
        const uint32_t gk = gb[g];
        int rank = 0;
        for (int o = 0; o < a.G; o++) rank += gb[o] > gk || (gb[o] == gk && o < g);
        if (rank >= a.topkGroup)
          for (int i = g * a.gs; i < (g + 1) * a.gs; i++) kb[i] = 0;
      }
      __syncwarp();
#pragma unroll
      for (int j = 0; j < NR; j++) k[j] = kb[j * 32 + lane];
      __syncwarp(); /* the next token rewrites kb */
    }

    /* topk rounds of warp argmax. Each lane keeps its best two candidates;
     * the winning lane promotes its second, and rescans only when it wins
     * again with no second cached. */
    uint32_t k1, e1, k2, e2;
    float s1, s2;
    laneTop2<NR>(k, s, rows, lane, k1, e1, s1, k2, e2, s2);
    bool have2 = true;
    uint32_t taken = 0;
    float sum = 0.0f, myS = 0.0f;
    uint32_t myId = 0;
    int32_t* idRow = a.ids + t * a.K;
    float* wRow = a.weights + t * a.K;
    for (int r = 0; r < a.topk; r++) {
      const uint32_t m = __reduce_max_sync(kFull, k1);
      const uint32_t w = __reduce_min_sync(kFull, k1 == m ? e1 : 0xffffffffu);
      const int wl = w & 31;
      const float ws = __shfl_sync(kFull, s1, wl);
      if (lane == wl) {
        taken |= 1u << (w >> 5);
        if (have2) {
          k1 = k2; e1 = e2; s1 = s2;
          have2 = false;
        } else {
          laneTop2<NR>(k, s, rows & ~taken, lane, k1, e1, s1, k2, e2, s2);
          have2 = true;
        }
      }
      sum = __fadd_rn(sum, ws); /* in slot order, as the reference */
      if (lane == (r & 31)) {
        if (r < 32) { myId = w; myS = ws; }
        else { idRow[r] = (int32_t)w; wRow[r] = ws; } /* finished below by this same lane */
      }
    }
    for (int r = lane; r < a.topk; r += 32) {
      float v = r < 32 ? myS : wRow[r];
      if (a.renormalize) v = __fdiv_rn(v, sum);
      if (a.scaleIn) v = __fmul_rn(v, a.rsf);
      if (r < 32) idRow[r] = (int32_t)myId;
      wRow[r] = v;
    }
    for (int r = a.topk + lane; r < a.K; r += 32) {
      idRow[r] = E + (r - a.topk);
      wRow[r] = a.sharedW;
    }
  }
}

template <typename TIn, int NR, int MODE, bool FULL, int RPG>
vcollResult_t launchGate(const GateArgs& a, cudaStream_t stream) {
  static int resident[64];
  const size_t smemMax = MODE == kSmem ? (size_t)kWarps * (NR * 32 + VCOLL_MOE_GATE_MAX_EXPERTS / 2) * 4 : 0;
  const size_t smem = MODE == kSmem ? (size_t)kWarps * (NR * 32 + a.G) * 4 : 0;
  unsigned blocks = 0;
  VCOLL_CHECK_RES(vcollResidentGrid((const void*)moeGateKernel<TIn, NR, MODE, FULL, RPG>, kWarps * 32, smemMax,
                                    resident, (a.T + kWarps - 1) / kWarps, &blocks));
  moeGateKernel<TIn, NR, MODE, FULL, RPG><<<blocks, kWarps * 32, smem, stream>>>(a);
  VCOLL_CUDACHECK(NULL, cudaGetLastError());
  return vcollSuccess;
}

/* DeepSeek-V3's shape (E = 256 in 8 groups of 32, topk <= 8) with 8 lanes
 * per token (a segment; a warp takes 4 tokens): every selection step is 3
 * shuffle levels among 8 lanes instead of 5 among 32.
 *
 * The selection runs on approximate scores, sigmoidApprox(x) + bias
 * (gate_device.cuh: 2 MUFU instead of about 20 instructions for the exact
 * recipe; within kSigApproxErr of it, checked for all 2^32 floats), as
 * keys that carry the expert in their low 8 bits (255 - expert), so one
 * 32-bit max names it. Two passes over the segment's keys in shared memory
 * (a row of 32 per group):
 *  1. the 8 lanes load the row's 128-byte lines together (coalesced), score
 *     and write the keys to their rows; lane g then reads row g back and
 *     keeps its top-2 (the group score);
 *  2. the kept groups are listed, and each of the 8 lanes takes an equal
 *     share of their keys (16 of the 128 candidates for topk_group 4) and
 *     keeps its kDepth best.
 * Every decision is then either proved exact or redone exactly:
 *  - group ranks: each group's score is bounded from its top-2 and the
 *    error bound; where the bounds do not decide a rank, the warp ranks on
 *    exact scores (recomputed from the logits);
 *  - the chosen set: topk rounds of a segment max; the set is exact when
 *    the smallest score taken and the largest left are further apart than
 *    both errors; otherwise (near ties, NaN or infinite scores) the segment
 *    selects again on unique 64-bit (exact key, expert) values.
 * The chosen experts' weights are recomputed exactly from their logits;
 * the slots stay in round order when the approximate scores prove it, and
 * are sorted by (exact key, expert) across the segment otherwise, so ids,
 * order and weights are the reference's bit for bit.
 *
 * Keys. When every bias is finite and their spread and size are moderate
 * (the common case; checked once per block), the kernel adds a constant C
 * to every bias so that every shifted score sigmoidApprox(x) + (bias + C)
 * lies in one binade [2^m, 2^(m+1)): its fp32 bits are then a fixed-point
 * number, and bits * 256 (one integer multiply, on the FMA pipe) keeps all
 * 23 bits of it with 8 free bits below for the expert. Otherwise the key is the
 * score's order-preserving map with its low 8 bits replaced (classes of
 * 256 ulp, so more decisions fall back to exact). */
constexpr int kSegExperts = 256, kSegGroups = 8, kSegGroupSize = 32;
static_assert(kWarps * 32 == kSegExperts, "the segment kernel's preamble reads one bias per thread");
/* Below this many tokens the one-warp-per-token kernel is as fast or
 * faster (more warps in flight for the same tokens). At 0933f2d on an H200,
 * per call in a graph, fp32: 2048 tokens 5.11 us (segment) vs 4.95 (warp),
 * 4096 tokens 6.70 vs 8.72 (docs/perf/2026-12-02_gate_1xH200_0933f2d.txt). */
constexpr size_t kSegMinTokens = 4096;
/* Blocks of kWarps warps per SM the segment kernel is built for (its
 * __launch_bounds__; 40 KB of shared memory each): 5 (48 registers, no
 * spills) for fp32 from kSegWideTokens tokens, 4 (64 registers) otherwise.
 * At 65536 fp32 tokens 5 blocks take 35.6 us per call in a graph against
 * 37.2 with 4, at 32768 19.9 against 20.6; at 16384 they are 2% slower, and
 * for bf16 (one block per 32 tokens, below) equal at 65536 and 22% slower
 * at 16384: the 48-register code is slower where the extra block does not
 * help (docs/perf/2026-12-02_gate-ab_1xH200_dc0ea31.txt). 3 blocks (up
 * to 80 registers) measured within noise of 4 at 65536 tokens.
 * Nothing is prefetched: an L2 prefetch of the next rows (per lane, or
 * one bulk prefetch per warp, 1 to 3 iterations ahead) made every size
 * slower or no faster (65536 fp32: 39.4 us with it, 36.9 without;
 * docs/perf/2026-12-02_gate-experiments_1xH200_4c5ace5.txt). */
constexpr int kSegBlocks = 4, kSegBlocksWide = 5;
constexpr size_t kSegWideTokens = 32768;

/* Pass 1's loads: the 8 lanes of a segment read each 128-byte line of the
 * row together (16 bytes each), so that every load instruction of a warp
 * touches 4 whole lines (it touched 32 half-used ones when a lane read its
 * own group: the L1 was the kernel's busiest unit). Quad Q of lane g holds
 * experts spreadExpert(Q, g) ... + 3. */
template <typename TIn> __device__ __forceinline__ int spreadExpert(int Q, int g);
template <> __device__ __forceinline__ int spreadExpert<float>(int Q, int g) { return 32 * Q + 4 * g; }
template <> __device__ __forceinline__ int spreadExpert<__nv_bfloat16>(int Q, int g) {
  return 64 * (Q >> 1) + 8 * g + 4 * (Q & 1);
}
/* Half h of a lane's pass-1 logits: quads 4h .. 4h + 3 (x[4q .. 4q+3] =
 * quad 4h + q). Two halves of 16 registers, not 32 at once: the fp32
 * kernel then fits 48 registers (5 blocks per SM) without spills. */
template <typename TIn> __device__ __forceinline__ void loadSpread(const TIn* row, int g, int h, float (&x)[16]);
template <> __device__ __forceinline__ void loadSpread<float>(const float* row, int g, int h, float (&x)[16]) {
#pragma unroll
  for (int q = 0; q < 4; q++) {
    const float4 v = __ldg((const float4*)(row + spreadExpert<float>(4 * h + q, g)));
    x[4 * q] = v.x; x[4 * q + 1] = v.y; x[4 * q + 2] = v.z; x[4 * q + 3] = v.w;
  }
}
template <> __device__ __forceinline__ void loadSpread<__nv_bfloat16>(const __nv_bfloat16* row, int g, int h,
                                                                          float (&x)[16]) {
#pragma unroll
  for (int q = 0; q < 2; q++) {
    const uint4 v = __ldg((const uint4*)(row + spreadExpert<__nv_bfloat16>(4 * h + 2 * q, g)));
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
      x[8 * q + 2 * i] = __uint_as_float(w[i] << 16);
      x[8 * q + 2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
}

/* Depth of each lane's cache of its best candidate keys in pass 2: a lane
 * rescans its share (from shared memory) when it wins a fifth time. */
constexpr int kDepth = 4;
/* Band experts per lane the cheap exact selection takes (see segTokens). */
constexpr int kBand = 4;

/* Merges the sorted quad b0 > b1 > b2 > b3 into the descending list c of
 * kDepth = 4, keeping its length: the k-th largest of two sorted lists is
 * the largest min(c_i, b_j) with i + j = k - 1, or c_k or b_k (a multiset
 * identity: zeros for empty places are fine). The quad is sorted apart
 * from c, so the chain through c is 3 instructions deep per quad. */
__device__ __forceinline__ void mergeQuad(uint32_t (&b)[4], uint32_t (&c)[kDepth]) {
  static_assert(kDepth == 4, "mergeQuad keeps 4");
  /* sort b descending: 5 compare-exchanges */
  auto cx = [](uint32_t& x, uint32_t& y) { const uint32_t h = max(x, y); y = min(x, y); x = h; };
  cx(b[0], b[1]); cx(b[2], b[3]); cx(b[0], b[2]); cx(b[1], b[3]); cx(b[1], b[2]);
  uint32_t n[4];
  n[0] = max(c[0], b[0]);
  n[1] = max(max(c[1], b[1]), min(c[0], b[0]));
  n[2] = max(max(max(c[2], b[2]), min(c[1], b[0])), min(c[0], b[1]));
  n[3] = max(max(max(c[3], b[3]), min(c[2], b[0])), max(min(c[1], b[1]), min(c[0], b[2])));
#pragma unroll
  for (int i = 0; i < 4; i++) c[i] = n[i];
}

/* Per-block constants of the fixed-point keys (BIN, see above). */
struct SegFixed {
  uint32_t expBits; /* fp32 exponent field of the binade [2^m, 2^(m+1)) */
  float err;        /* bound on |shifted approximate score - (exact score + C)| */
  float gm;         /* margin of a group score's bounds (sum of two, and roundings) */
};

/* The fast path's key of an approximate score with bias b (BIN: the
 * shifted bias), low 8 bits clear: pass 2 puts 255 - expert there. A NaN x
 * comes out as the canonical NaN 0x7fffffff (fp32 arithmetic on the GPU has
 * no NaN payloads), whose key is above every number's: 0xffffff00 with BIN
 * (numbers give keys below 2^31: m is odd), vgKey's map (0xffffff00) otherwise. The
 * score is never -0. */
template <bool BIN>
__device__ __forceinline__ uint32_t fastPack(float x, float b, uint32_t hm) {
  const uint32_t u = __float_as_uint(__fadd_rn(vcollGate::sigmoidApprox(x), b));
  if (BIN) return u * hm; /* hm = keyMul = 256: the binade's exponent bits leave at the top */
  return (u ^ ((uint32_t)((int32_t)u >> 31) | 0x80000000u)) & hm;
}

/* BIN: the shifted score a key holds (exact: all of its bits are kept). */
__device__ __forceinline__ float fixedScore(uint32_t k, uint32_t expBits) { return __uint_as_float(expBits | (k >> 8)); }

/* Bound on |approximate score - exact score| for scores of magnitude up to
 * |a| (keys that are not BIN): the sigmoid's bound plus 2 ulp of rounding
 * in the bias addition (both scores are fp32 sums with the same bias). */
__device__ __forceinline__ float scoreErr(float a) { return vcollGate::kSigApproxErr + fabsf(a) * 2.384185791015625e-07f; }

/* The exact key (gate_common.h's, as the reference computes it) of expert j
 * of a lane's group, from its logit reloaded (an L1 or L2 hit). */
template <typename TIn>
__device__ __forceinline__ uint32_t exactKey(const TIn* grp, const float* myBias, int j) {
  return vgKey(__fadd_rn(vgSigmoid(rawToFloat<TIn>(loadRaw<TIn>(grp + j))), myBias[j]));
}

/* Top-2 (a1 > a2) of a lane's keys so far, with the quad k0..k3 (its own
 * top-2 first, apart from a1 and a2: the chain through them is 2 deep). */
__device__ __forceinline__ void top2Quad(uint32_t k0, uint32_t k1, uint32_t k2, uint32_t k3, uint32_t& a1,
                                         uint32_t& a2) {
  const uint32_t h1 = max(k0, k1), l1 = min(k0, k1), h2 = max(k2, k3), l2 = min(k2, k3);
  const uint32_t t0 = max(h1, h2), t1 = max(max(l1, l2), min(h1, h2));
  a2 = max(max(a2, t1), min(a1, t0));
  a1 = max(a1, t0);
}

/* Keys of a segment in shared memory, and the biases (one copy per block),
 * by expert: quad Q (4 experts) at word 4 (Q + Q / 8), rows of 32 padded
 * to 36 words, so that the 8 quads a segment's lanes write in pass 1 or read
 * back (one row each) fall in 8 different bank quads (pass 2's shares, in
 * arbitrary kept rows, can meet in pairs). */
constexpr int kSegKeyWords = 8 * 36; /* 8 rows of 32 keys and one padding quad each */
__device__ __forceinline__ int keyWord(int v) { return v + ((v >> 5) << 2); }

/* Pass 2: the kDepth best of a lane's share (quads q of nq, 4 keys each,
 * at 4 (nq g + q) of the kept groups' keys taken one group after the other:
 * rows[i] is the i-th kept group), below `below` when MASKED; each key gets
 * 255 - expert in its low 8 bits (one LOP3: (7 - r) << 5 | (28 - place of
 * the quad's first) in a register, 3 - i as the immediate). */
template <bool MASKED, bool ALLKEPT>
__device__ __forceinline__ void fillCache(const uint32_t* keys, const uint32_t* rows, int g, int nq, uint32_t below,
                                          uint32_t (&c)[kDepth]) {
#pragma unroll
  for (int i = 0; i < kDepth; i++) c[i] = 0;
#pragma unroll 2
  for (int q = 0; q < nq; q++) {
    const int v = 4 * (nq * g + q);
    const int r = ALLKEPT ? v >> 5 : (int)rows[v >> 5];
    const uint32_t lb = ((uint32_t)(7 - r) << 5) | (uint32_t)(28 - (v & 31));
    const uint4 w = *(const uint4*)(keys + keyWord(r * kSegGroupSize + (v & 31)));
    uint32_t k[4] = {w.x | lb | 3u, w.y | lb | 2u, w.z | lb | 1u, w.w | lb};
    if (MASKED)
#pragma unroll
      for (int i = 0; i < 4; i++) k[i] = k[i] < below ? k[i] : 0u;
    mergeQuad(k, c);
  }
}

/* The token loop of moeGateSegKernel. sb: the biases (keyWord layout),
 * sbs: the same shifted by C (BIN), keys/rows: this warp's 4
 * segments' keys (kSegKeyWords each, row g: group g) and kept groups (8
 * each). */
template <typename TIn, bool ALLKEPT, bool BIN>
__device__ __forceinline__ void segTokens(const GateArgs& a, const float* sb, const float* sbs, uint32_t* keys,
                                          uint32_t* rows, const SegFixed f) {
  const int lane = threadIdx.x & 31, g = lane & 7, segBase = lane & 24;
  const unsigned segMask = 0xffu << segBase;
  const float* myBias = sb + keyWord(g * kSegGroupSize);
  const float* fastBias = BIN ? sbs : sb;
  const int spreadBase = keyWord(spreadExpert<TIn>(0, g)); /* lane's quad Q at spreadBase + keyWord(spreadExpert(Q, 0)) */
  const uint32_t hm = BIN ? a.keyMul : a.hiMask;
  const int nq = ALLKEPT ? kSegGroups : a.topkGroup; /* quads of candidate keys per lane in pass 2 */
  uint32_t* segKeys = keys + (segBase >> 3) * kSegKeyWords;
  uint32_t* segRows = rows + segBase;
  uint32_t* myRow = segKeys + keyWord(g * kSegGroupSize); /* group g's keys */
  const TIn* logits = (const TIn*)a.logits;
  const size_t step = (size_t)gridDim.x * kWarps * 4;
  for (size_t t0 = ((size_t)blockIdx.x * kWarps + (threadIdx.x >> 5)) * 4; t0 < a.T; t0 += step) {
    const size_t t = t0 + (lane >> 3);
    const bool valid = t < a.T;
    const TIn* row = logits + (valid ? t : t0) * kSegExperts; /* a spare segment works on a valid row */
    const TIn* grp = row + g * kSegGroupSize;
    /* Pass 1: the keys of the 32 experts the lane loaded (spreadExpert)
     * to their places in the segment's rows (row = group; the bias is kept
     * in the same layout), then the top-2 of the lane's own group g. */
    __syncwarp(); /* the previous quad's reads of these keys are done */
    {
#pragma unroll
      for (int h = 0; h < 2; h++) {
        float x[16];
        loadSpread<TIn>(row, g, h, x);
#pragma unroll
        for (int Qh = 0; Qh < 4; Qh++) {
          const int Q = 4 * h + Qh;
          const int pos = spreadBase + keyWord(spreadExpert<TIn>(Q, 0));
          const float4 b = *(const float4*)(fastBias + pos);
          const uint4 k = make_uint4(fastPack<BIN>(x[4 * Qh], b.x, hm), fastPack<BIN>(x[4 * Qh + 1], b.y, hm),
                                     fastPack<BIN>(x[4 * Qh + 2], b.z, hm), fastPack<BIN>(x[4 * Qh + 3], b.w, hm));
          *(uint4*)(segKeys + pos) = k;
        }
      }
    }
    __syncwarp();
    /* Special: a NaN score (its key is the largest) or, with vgKey's map,
     * +inf in the lane's group: its segment takes the exact group ranking
     * and selection. */
    const uint32_t specialKey = BIN ? 0x80000000u : 0xff800000u;
    bool special = false, kept = true;
    if (!ALLKEPT) {
      uint32_t a1 = 0, a2 = 0;
#pragma unroll
      for (int q = 0; q < 8; q++) {
        const uint4 k = *(const uint4*)(myRow + 4 * q);
        top2Quad(k.x, k.y, k.z, k.w, a1, a2);
      }
      special = a1 >= specialKey;
      /* Group score b1 + b2 bounded from the top-2 of the approximate
       * scores (the top-2 sum moves by at most the sum of the two errors);
       * ranks that the bounds decide are exact; otherwise the warp ranks
       * exactly. */
      float lo, hi;
      if (BIN) {
        const float s = __fadd_rn(fixedScore(a1, f.expBits), fixedScore(a2, f.expBits));
        lo = __fsub_rn(s, f.gm);
        hi = __fadd_rn(s, f.gm);
      } else {
        /* Each approximate score is in [unkey(p & ~255), unkey(p | 255)];
         * margins doubled to cover the rounding of these sums. */
        const float l1 = vgUnkey(a1 & ~255u), l2 = vgUnkey(a2 & ~255u);
        const float u1 = vgUnkey(a1 | 255u), u2 = vgUnkey(a2 | 255u);
        const float m = 2.0f * (scoreErr(fabsf(l1) + fabsf(u1)) + scoreErr(fabsf(l2) + fabsf(u2)));
        lo = __fsub_rn(__fadd_rn(l1, l2), m);
        hi = __fadd_rn(__fadd_rn(u1, u2), m);
      }
      int above = 0, unsure = 0;
#pragma unroll
      for (int d = 1; d < kSegGroups; d++) {
        const int og = segBase | ((g + d) & 7);
        const float olo = __shfl_sync(kFull, lo, og), ohi = __shfl_sync(kFull, hi, og);
        const bool up = olo > hi, down = lo > ohi; /* false for NaN bounds: unsure */
        above += up;
        unsure += !up && !down;
      }
      kept = above + unsure < a.topkGroup;
      const bool decided = !special && isfinite(lo) && isfinite(hi) && (kept || above >= a.topkGroup);
      if (!__all_sync(kFull, decided)) {
        /* Exact group top-2 and ranks (groups of equal score: the lower index is kept). */
        uint32_t e1 = 0, e2 = 0;
#pragma unroll 4
        for (int j = 0; j < 32; j++) {
          const uint32_t kj = exactKey<TIn>(grp, myBias, j);
          e2 = max(e2, min(e1, kj));
          e1 = max(e1, kj);
        }
        const uint32_t gk = vgGroupKey(e1, e2);
        int rank = 0;
#pragma unroll
        for (int d = 1; d < kSegGroups; d++) {
          const int og = (g + d) & 7;
          const uint32_t ok = __shfl_sync(kFull, gk, segBase | og);
          rank += ok > gk || (ok == gk && og < g);
        }
        kept = rank < a.topkGroup;
      }
    }
    /* Pass 2: the kept groups (in lane order) listed in segRows, each
     * lane's share of their keys into its cache. */
    if (!ALLKEPT) {
      const int packedRow = __popc(__ballot_sync(kFull, kept) & segMask & ((1u << lane) - 1u));
      if (kept) segRows[packedRow] = (uint32_t)g;
    }
    __syncwarp();
    uint32_t c[kDepth];
    fillCache<false, ALLKEPT>(segKeys, segRows, g, nq, 0u, c);
    if (ALLKEPT) special = c[0] >= specialKey; /* the lane's share is its group */

    /* topk rounds: segment max of the lanes' heads; expert 255 - (p & 255).
     * A lane whose cache runs out refills it at once. */
    uint32_t myP = 0, lastTaken = 0xffffffffu;
    for (int r = 0; r < a.topk; r++) {
      uint32_t bp = c[0];
#pragma unroll
      for (int d = 4; d > 0; d >>= 1) bp = max(bp, __shfl_xor_sync(kFull, bp, d));
      if (g == r) myP = bp;
      if (bp == c[0]) {
        lastTaken = bp;
#pragma unroll
        for (int i = 0; i < kDepth - 1; i++) c[i] = c[i + 1];
        c[kDepth - 1] = 0;
        if (c[0] == 0) fillCache<true, ALLKEPT>(segKeys, segRows, g, nq, bp, c); /* the kDepth best below the one taken */
      }
    }
    uint32_t e = 255u - (myP & 255u); /* expert of slot g (g < topk) */
    /* Its logit for the weight, loaded now (mostly an L2 hit: the rows left
     * the L1 since pass 1) so that the checks below hide the latency; the
     * exact selection, if any, reloads it. */
    const uint32_t xe = loadRaw<TIn>(row + (g < a.topk ? e : 0u));
    /* Every expert taken scores (approximately) at least the score of lo,
     * the smallest key taken, and every one left at most that of hi, the
     * largest head left (each lane takes its keys in order). The set is
     * the exact one when these differ by more than both scores' errors;
     * otherwise (near ties, and NaN or infinite scores) the segment
     * selects exactly. */
    bool exact = special;
    uint32_t lo = lastTaken, hi = c[0];
    if (kSegGroupSize * a.topkGroup > a.topk) { /* candidates are left (always, for topk <= 8) */
#pragma unroll
      for (int d = 4; d > 0; d >>= 1) {
        lo = min(lo, __shfl_xor_sync(kFull, lo, d));
        hi = max(hi, __shfl_xor_sync(kFull, hi, d));
      }
      if (BIN) { /* both in one binade: the difference is exact */
        exact |= !(__fsub_rn(fixedScore(lo, f.expBits), fixedScore(hi, f.expBits)) > 2.0f * f.err);
      } else {
        const float takenLo = vgUnkey(lo & ~255u), leftHi = vgUnkey(hi | 255u);
        exact |= !(__fsub_rn(takenLo, leftHi) > 2.0f * scoreErr(fabsf(takenLo) + fabsf(leftHi)));
      }
    }
    exact = __ballot_sync(kFull, exact) & segMask;
    if (exact) {
      /* Near ties with fixed-point keys (no NaN): only the experts whose
       * approximate scores the bounds cannot place need exact keys. With L
       * the smallest approximate score taken and H the largest left, an
       * expert with approximate score above H + 2 err beats every one left
       * (sure: in the set); one below L - 2 err is beaten by all topk taken
       * (out); the rest (the band) gets exact keys, and its best take the
       * slots the sure ones leave. Up to kBand per lane; more (exact ties
       * of many experts) take the full exact selection below. */
      bool done = false;
      if (BIN && !(__ballot_sync(segMask, special) & segMask)) {
        const float sL = fixedScore(lo, f.expBits), sH = fixedScore(hi, f.expBits), e2 = 2.0f * f.err;
        uint32_t sure = 0, bandMask = 0;
        if (kept) {
#pragma unroll 2
          for (int q = 0; q < 8; q++) {
            const uint4 w = *(const uint4*)(myRow + 4 * q);
            const uint32_t k4[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
              const float sj = fixedScore(k4[i], f.expBits); /* both in one binade: the differences are exact */
              if (__fsub_rn(sj, sH) > e2) sure |= 1u << (4 * q + i);
              else if (!(__fsub_rn(sL, sj) > e2)) bandMask |= 1u << (4 * q + i);
            }
          }
        }
        if (__all_sync(segMask, __popc(bandMask) <= kBand)) {
          uint64_t bv[kBand]; /* (exact key, 0xffff - expert) of the lane's band, 0 past it */
          uint32_t bm = bandMask;
#pragma unroll
          for (int i = 0; i < kBand; i++) {
            const int j = __ffs(bm) - 1;
            bv[i] = bm ? ((uint64_t)exactKey<TIn>(grp, myBias, j) << 32) | (uint64_t)(0xffffu - (g * 32 + j)) : 0ull;
            bm &= bm - 1;
          }
          int nSure = __popc(sure);
#pragma unroll
          for (int d = 4; d > 0; d >>= 1) nSure += __shfl_xor_sync(segMask, nSure, d);
          uint32_t won = 0;
          uint64_t last = ~0ull;
          for (int r = nSure; r < a.topk; r++) {
            uint64_t best = 0;
#pragma unroll
            for (int i = 0; i < kBand; i++)
              if (bv[i] < last && bv[i] > best) best = bv[i];
#pragma unroll
            for (int d = 4; d > 0; d >>= 1) {
              const uint64_t o = __shfl_xor_sync(segMask, best, d);
              best = o > best ? o : best;
            }
            last = best;
#pragma unroll
            for (int i = 0; i < kBand; i++) won |= (uint32_t)(bv[i] == best && best != 0) << i;
          }
          /* The set (any order: the sort below orders it) into the
           * segment's 8 words of segRows, free since the refills. */
          const int cnt = __popc(sure) + __popc(won);
          int pos = cnt;
#pragma unroll
          for (int d = 1; d < 8; d <<= 1) {
            const int o = __shfl_up_sync(segMask, pos, d, 8);
            if (g >= d) pos += o;
          }
          pos -= cnt;
          __syncwarp(segMask); /* the refills' reads of segRows are done */
          /* (The bounds put exactly topk experts here; pos is checked all the same.) */
          for (uint32_t m = sure; m != 0 && pos < kSegGroups; m &= m - 1) segRows[pos++] = (uint32_t)(g * 32 + __ffs(m) - 1);
          bm = bandMask;
#pragma unroll
          for (int i = 0; i < kBand; i++) {
            if (((won >> i) & 1u) && pos < kSegGroups) segRows[pos++] = (uint32_t)(g * 32 + __ffs(bm) - 1);
            bm &= bm - 1;
          }
          __syncwarp(segMask);
          if (g < a.topk) e = segRows[g];
          done = true;
        }
      }
      if (!done) {
        /* Segment-uniform: the selection again on unique 64-bit values
         * (key, 255 - expert) of the exact keys, which replace the lane's
         * row of approximate ones (the refills are over); each round rescans
         * all 32. */
        __syncwarp(segMask); /* the segment's reads of the approximate keys (pass 2, refills) are done */
#pragma unroll 2
        for (int q = 0; q < 8; q++)
          *(uint4*)(myRow + 4 * q) =
              make_uint4(exactKey<TIn>(grp, myBias, 4 * q), exactKey<TIn>(grp, myBias, 4 * q + 1),
                         exactKey<TIn>(grp, myBias, 4 * q + 2), exactKey<TIn>(grp, myBias, 4 * q + 3));
        uint64_t last = ~0ull;
        for (int r = 0; r < a.topk; r++) {
          uint64_t best = 0;
#pragma unroll 2
          for (int q = 0; q < 8; q++) {
            const uint4 w = *(const uint4*)(myRow + 4 * q);
            const uint32_t ek[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
              const uint64_t v =
                  kept ? ((uint64_t)ek[i] << 32) | (uint64_t)(0xffffu - (g * 32 + 4 * q + i)) : 0ull;
              if (v < last && v > best) best = v;
            }
          }
#pragma unroll
          for (int d = 4; d > 0; d >>= 1) {
            const uint64_t o = __shfl_xor_sync(segMask, best, d);
            best = o > best ? o : best;
          }
          last = best;
          if (g == r) e = 0xffffu - (uint32_t)(best & 0xffffu);
        }
      }
    }
    /* The slots are in the reference's order already when each slot's
     * approximate score exceeds the next one's by more than both errors
     * (BIN keys, no exact selection): exact scores strictly decreasing.
     * Warp-uniform, as the sort below is a warp-wide network. */
    bool ordered = false;
    if (BIN) {
      const uint32_t nextP = __shfl_down_sync(kFull, myP, 1); /* slot g + 1 (for g + 1 < topk) */
      ordered = __all_sync(kFull, !exact && (g + 1 >= a.topk || __fsub_rn(fixedScore(myP, f.expBits),
                                                                          fixedScore(nextP, f.expBits)) > 2.0f * f.err));
    }
    /* Slot g (< topk): exact score and weight of expert e, recomputed. */
    float w = 0.0f;
    if (g < a.topk) w = vgSigmoid(rawToFloat<TIn>(exact ? loadRaw<TIn>(row + e) : xe));
    if (!ordered) {
      /* Bitonic sort of the 8 slots by (exact key, 255 - e), descending; 0 for slots past topk. */
      uint64_t sk = 0;
      if (g < a.topk)
        sk = ((uint64_t)vgKey(__fadd_rn(w, sb[keyWord(e)])) << 32) | (uint64_t)(0xffffu - e);
#pragma unroll
      for (int size = 2; size <= 8; size <<= 1) {
#pragma unroll
        for (int d = size >> 1; d > 0; d >>= 1) {
          const uint64_t o = __shfl_xor_sync(kFull, sk, d);
          const float ow = __shfl_xor_sync(kFull, w, d);
          const bool lower = (g & d) == 0, desc = (g & size) == 0 || size == 8;
          const bool takeMax = lower == desc;
          if (takeMax ? o > sk : o < sk) { sk = o; w = ow; }
        }
      }
      e = 0xffffu - (uint32_t)(sk & 0xffffu);
    }
    float sum = 0.0f;
    for (int r = 0; r < a.topk; r++) sum = __fadd_rn(sum, __shfl_sync(kFull, w, segBase | r)); /* slot order */
    if (valid) {
      int32_t* idRow = a.ids + t * a.K;
      float* wRow = a.weights + t * a.K;
      if (g < a.topk) {
        float v = w;
        if (a.renormalize) v = __fdiv_rn(v, sum);
        if (a.scaleIn) v = __fmul_rn(v, a.rsf);
        idRow[g] = (int32_t)e;
        wRow[g] = v;
      }
      for (int r = a.topk + g; r < a.K; r += kSegGroups) {
        idRow[r] = kSegExperts + (r - a.topk);
        wRow[r] = a.sharedW;
      }
    }
  }
}

template <typename TIn, bool ALLKEPT, int BLOCKS>
__global__ void __launch_bounds__(kWarps * 32, BLOCKS) moeGateSegKernel(const GateArgs a) {
  /* Biases in the keys' layout (keyWord). */
  __shared__ __align__(16) float sb[kSegKeyWords];
  __shared__ __align__(16) float sbs[kSegKeyWords];
  __shared__ __align__(16) uint32_t keys[kWarps * 4 * kSegKeyWords];
  __shared__ uint32_t rows[kWarps * 4 * kSegGroups];
  __shared__ float red[3][kWarps];
  const int i = threadIdx.x, w = i >> 5;
  const float v = a.bias != nullptr ? __ldg(a.bias + i) : 0.0f;
  sb[keyWord(i)] = v;
  /* The fixed-point keys need every bias finite, and fit the shifted
   * scores sigmoid + bias + C into one binade [2^m, 2^(m+1)), m odd, <= 7: C =
   * 1.0625 * 2^m - min(bias) (the 2^m / 16 margins absorb every rounding),
   * spread + 1 <= 0.875 * 2^m; and |bias| <= 1024. */
  float mn = v, mx = v, ab = fabsf(v);
#pragma unroll
  for (int d = 16; d > 0; d >>= 1) {
    mn = fminf(mn, __shfl_xor_sync(kFull, mn, d));
    mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, d));
    ab = fmaxf(ab, __shfl_xor_sync(kFull, ab, d));
  }
  if ((i & 31) == 0) { red[0][w] = mn; red[1][w] = mx; red[2][w] = ab; }
  const bool finite = __syncthreads_and(isfinite(v));
#pragma unroll
  for (int j = 0; j < kWarps; j++) {
    mn = fminf(mn, red[0][j]);
    mx = fmaxf(mx, red[1][j]);
    ab = fmaxf(ab, red[2][j]);
  }
  /* m odd: the binade's exponent 127 + m is even, so its lowest bit, which
   * fastPack's * 256 moves to bit 31, is 0 and numbers' keys stay below
   * 2^31 (an even m made every key look like a NaN's: all exact path). */
  int m = 1;
  while (m <= 7 && __fadd_rn(__fsub_rn(mx, mn), 1.0f) > 0.875f * (float)(1 << m)) m += 2;
  const bool bin = finite && m <= 7 && ab <= 1024.0f;
  if (bin) sbs[keyWord(i)] = __fadd_rn(v, __fsub_rn(1.0625f * (float)(1 << m), mn));
  __syncthreads();
  uint32_t* myKeys = keys + w * 4 * kSegKeyWords;
  uint32_t* myRows = rows + w * 4 * kSegGroups;
  SegFixed f;
  f.expBits = (uint32_t)(127 + m) << 23;
  if (bin) {
    /* |shifted approximate - (exact + C)|: the sigmoid's 2^-20, half an ulp
     * of the binade for the shifted bias and for the sum (2^(m-24) each),
     * half an ulp of the exact fp32 score (<= (|bias| + 1) 2^-24); 1/128 up
     * for the rounding of this sum. */
    const float ulpHalf = ldexpf(1.0f, m - 24), eps = 5.9604644775390625e-08f; /* 2^-24 */
    f.err = (vcollGate::kSigApproxErr + 2.0f * ulpHalf + (ab + 1.0f) * eps) * 1.0078125f;
    /* A group's b1 + b2: twice err, half an ulp of the exact sum (<= (2|bias| + 2) 2^-24), and of the
     * approximate sum and of each bound (2^(m-23) each); doubled. */
    f.gm = 2.0f * (2.0f * f.err + 6.0f * ulpHalf + (2.0f * ab + 2.0f) * eps);
    segTokens<TIn, ALLKEPT, true>(a, sb, sbs, myKeys, myRows, f);
  } else {
    f.err = f.gm = 0.0f;
    segTokens<TIn, ALLKEPT, false>(a, sb, sbs, myKeys, myRows, f);
  }
}

/* fp32: on the blocks the device holds at once (BLOCKS per SM), each
 * warp looping over its tokens. bf16: one block per 32 tokens (each warp
 * takes 4 tokens once), as the hardware schedules blocks while others
 * finish; at 65536 tokens 32.7 us per call in a graph against 36.3 on the
 * resident grid, while fp32 is 0.5-0.8 us slower that way
 * (docs/perf/2026-12-02_gate-experiments_1xH200_4c5ace5.txt). */
template <typename TIn, bool ALLKEPT, int BLOCKS>
vcollResult_t launchSeg(const GateArgs& a, cudaStream_t stream) {
  static int resident[64];
  const size_t need = (a.T + kWarps * 4 - 1) / (kWarps * 4);
  unsigned blocks = 0;
  if (sizeof(TIn) == 2)
    blocks = (unsigned)(need < 0x7fffffffu ? need : 0x7fffffffu); /* the token loop covers any rest */
  else
    VCOLL_CHECK_RES(vcollResidentGrid((const void*)moeGateSegKernel<TIn, ALLKEPT, BLOCKS>, kWarps * 32, 0, resident,
                                      need, &blocks));
  moeGateSegKernel<TIn, ALLKEPT, BLOCKS><<<blocks, kWarps * 32, 0, stream>>>(a);
  VCOLL_CUDACHECK(NULL, cudaGetLastError());
  return vcollSuccess;
}

template <typename TIn, bool ALLKEPT>
vcollResult_t launchSegBlocks(const GateArgs& a, cudaStream_t stream) {
  constexpr int wide = sizeof(TIn) == 4 ? kSegBlocksWide : kSegBlocks; /* bf16: one kernel */
  if (a.T >= kSegWideTokens) return launchSeg<TIn, ALLKEPT, wide>(a, stream);
  return launchSeg<TIn, ALLKEPT, kSegBlocks>(a, stream);
}

/* The segment kernel for its shapes from kSegMinTokens tokens on;
 * VCOLL_GATE_KERNEL=warp or =seg forces one kernel (seg: where the shape allows),
 * =auto (or another value, with a notice) chooses. */
bool segShape(const GateArgs& a) {
  if (a.E != kSegExperts || a.G != kSegGroups || a.topk > kSegGroups || ((uintptr_t)a.logits & 15u) != 0)
    return false;
  const int forced = vcollParamGateKernel();
  if (forced != 0) return forced == 2;
  return a.T >= kSegMinTokens;
}

template <typename TIn, int NR>
vcollResult_t launchMode(const GateArgs& a, cudaStream_t stream) {
  const bool full = a.E == NR * 32;
  if (a.topkGroup == a.G)
    return full ? launchGate<TIn, NR, kAllKept, true, 0>(a, stream) : launchGate<TIn, NR, kAllKept, false, 0>(a, stream);
  if (a.gs % 32 == 0) {
    if (full && a.rowsPerGroup == 1) return launchGate<TIn, NR, kRows, true, 1>(a, stream);
    if (full && a.rowsPerGroup == 2) return launchGate<TIn, NR, kRows, true, 2>(a, stream); /* NR is even */
    return launchGate<TIn, NR, kRows, false, 0>(a, stream);
  }
  return launchGate<TIn, NR, kSmem, false, 0>(a, stream);
}

template <typename TIn>
vcollResult_t launchRows(const GateArgs& a, cudaStream_t stream) {
  if (segShape(a))
    return a.topkGroup == a.G ? launchSegBlocks<TIn, true>(a, stream) : launchSegBlocks<TIn, false>(a, stream);
  if (a.E <= 64) return launchMode<TIn, 2>(a, stream);
  if (a.E <= 128) return launchMode<TIn, 4>(a, stream);
  if (a.E <= 256) return launchMode<TIn, 8>(a, stream);
  if (a.E <= 384) return launchMode<TIn, 12>(a, stream);
  return launchMode<TIn, 16>(a, stream);
}

}  // namespace

extern "C" vcollResult_t vcollMoeGate(const void* logits, vcollDataType_t logitsType, const float* bias, size_t T,
                                      const vcollMoeGateParams_t* p, int32_t* ids, float* weights,
                                      cudaStream_t stream) {
  VCOLL_CHECK_RES(vcollMoeGateCheckArgs("vcollMoeGate", logits, logitsType, bias, T, p, ids, weights));
  if (T == 0) return vcollSuccess;
  GateArgs a;
  a.logits = logits;
  a.bias = bias;
  a.ids = ids;
  a.weights = weights;
  a.T = T;
  a.E = p->numExperts;
  a.G = p->numExpertGroup;
  a.gs = a.E / a.G;
  a.rowsPerGroup = a.gs / 32;
  a.topkGroup = p->topkGroup;
  a.topk = p->topk;
  a.K = p->topk + p->numFusedSharedExperts;
  a.renormalize = p->renormalize;
  a.scaleIn = p->applyScalingInKernel;
  a.rsf = p->routedScalingFactor;
  a.sharedW = p->applyScalingInKernel ? 1.0f : 1.0f / p->routedScalingFactor;
  a.hiMask = ~255u;
  a.keyMul = 256u;
  VCOLL_TRACE("vcollMoeGate: T %zu E %d G %d topkGroup %d topk %d shared %d", T, a.E, a.G, a.topkGroup, a.topk,
              p->numFusedSharedExperts);
  if (logitsType == vcollFloat32) return launchRows<float>(a, stream);
  return launchRows<__nv_bfloat16>(a, stream);
}
