/* NVFP4 kernels. A thread quantizes one 16-element block at a time: 16-byte
 * loads of the block, its scale, the 16 codes packed into one 8-byte store,
 * one scale byte. The quantize kernel runs on a grid the device holds at
 * once and loops over blocks with the next block's loads issued before the
 * current one is quantized, so that loads stay in flight while it computes
 * (one block per thread and launch left the memory system idle between a
 * thread's load and its exit: 74-78% of the copy bandwidth for bf16, now
 * 90-95% from 1024 rows up, docs/nvfp4.md). The recipe is the CPU reference's (nvfp4.c), operation for
 * operation in IEEE fp32 with explicit __fmul_rn/__frcp_rn/__fdiv_rn (no
 * contraction into FMA), so the results match it bit for bit.
 *
 * Computed global scale, without a host round trip: the scale is a
 * non-increasing function of amax, gs(a) = min(2688 / a, FLT_MAX), so
 * gs(max of amax_b) = min over blocks of gs(amax_b). The amax kernel takes
 * that min with atomicMin on the bits of the (non-negative) candidates,
 * straight into *globalScale, preset to 0xFFFFFFFF ("no finite non-zero
 * element"). The quantize kernel reads it; a thread that still finds the
 * preset uses 1.0 and stores 1.0, which every other reader also derives. */
#include <cuda_runtime.h>
#include <float.h>

#include "nvfp4_device.cuh"
#include "vcoll/nvfp4.h"
extern "C" {
#include "nvfp4_internal.h"
#include "vcoll_internal.h"
}

using namespace vcollNvfp4;

namespace {

constexpr int kThreads = 256;
constexpr int kAmaxUnroll = 4; /* blocks per thread in the amax kernel */
/* Resident blocks per SM the quantize kernel is compiled for: at most 48
 * registers (51 rounded down to the allocation unit), which its loop with
 * one block's loads in flight needs without spilling for bf16/fp16 input
 * (fp32 input spills 16 bytes; nvcc 13.0, sm_90) (measured against 3
 * and 4 blocks with a two-deep pipeline, and 8 blocks with spills:
 * docs/perf/2026-12-02_nvfp4_1xH200_*). */
constexpr int kQuantMinBlocks = 5;
constexpr uint32_t kNoAmax = 0xffffffffu;  /* preset of the computed scale */
constexpr unsigned kMaxGrid = 1u << 30;

struct QuantArgs {
  const void* x;
  uint8_t* payload;
  uint8_t* scales;
  float* gs;
  size_t rows, kc, blocks; /* blocks = rows * kc */
  size_t kTiles;           /* swizzled: ceil(kc / 4) */
  size_t padCols;          /* swizzled: kTiles * 4 - kc */
  size_t padRight;         /* swizzled: rows * padCols zero scales right of real ones */
  size_t padTotal;         /* swizzled: all zero scales (right, then rows up to a multiple of 128) */
  int swizzled;
  int computed;
};

/* What the MoE dispatch's launch does besides quantizing: plain copies (its
 * routing rows and given global scale: one kernel where a quantize and a
 * copy kernel would be two), and with amaxBits the global scale derived from
 * all ranks' amax (no kernel of its own). A parameter of its own kernel:
 * inside QuantArgs, the array made the compiler address the parameter
 * generically in the plain kernel too, which then measured 4-6% slower in a
 * CUDA graph at 1024-4096 rows. */
struct SideCopies {
  int n;
  vcollNvfp4SideCopy c[VCOLL_NVFP4_MAX_SIDE_COPIES];
  const uint32_t* amaxBits; /* NULL, or namax amax bits: gs from their max */
  int namax;
  uint32_t* amaxScratch; /* with amaxBits: NULL, or two words set to 0 */
};

__device__ __forceinline__ float readGlobalScale(float* gs, int computed) {
  uint32_t g = *(volatile uint32_t*)gs;
  if (computed && g == kNoAmax) {
    g = 0x3f800000u; /* 1.0f */
    *(volatile uint32_t*)gs = g;
  }
  return __uint_as_float(g);
}

/* The global scale of a positive amax, fminf(2688 / amax, FLT_MAX): the
 * amax kernel's candidates and the MoE dispatch's scale. */
__device__ __forceinline__ float gsOfAmax(float amax) { return fminf(__fdiv_rn(2688.0f, amax), FLT_MAX); }

/* The computed global scale of all ranks' tokens, gs(max of bits[n]) =
 * gsOfAmax(amax), 1.0 when the max is 0 (the MoE dispatch's;
 * the bits are those of finite non-negative floats, which order like
 * their bits). Every thread of the CTA must call it (one __syncthreads);
 * thread 0 of CTA 0 stores it to *out. */
__device__ __forceinline__ float scaleFromAmaxBits(const uint32_t* bits, int n, float* out) {
  __shared__ uint32_t warpMax[kThreads / 32];
  uint32_t m = 0;
  for (int r = threadIdx.x; r < n; r += kThreads) m = max(m, bits[r]);
  m = __reduce_max_sync(0xffffffffu, m);
  if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = m;
  __syncthreads();
  m = warpMax[0];
#pragma unroll
  for (int w = 1; w < kThreads / 32; w++) m = max(m, warpMax[w]);
  const float amax = __uint_as_float(m);
  const float gs = amax > 0.0f ? gsOfAmax(amax) : 1.0f;
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = gs;
  return gs;
}

__device__ __forceinline__ size_t scaleIndex(const QuantArgs& a, size_t blk) {
  if (!a.swizzled) return blk;
  size_t m, k;
  if (((blk | a.kc) >> 32) == 0) { /* 32-bit division when it suffices */
    m = (uint32_t)blk / (uint32_t)a.kc;
    k = (uint32_t)blk - (uint32_t)m * (uint32_t)a.kc;
  } else {
    m = blk / a.kc;
    k = blk - m * a.kc;
  }
  return swizzle(m, k, a.kTiles);
}

/* Zero scale number q of the swizzled padding. */
__device__ __forceinline__ void writePadding(const QuantArgs& a, size_t q) {
  size_t m, k;
  if (q < a.padRight) {
    m = q / a.padCols;
    k = a.kc + (q - m * a.padCols);
  } else {
    q -= a.padRight;
    const size_t kp = a.kTiles * 4;
    m = a.rows + q / kp;
    k = q % kp;
  }
  a.scales[swizzle(m, k, a.kTiles)] = 0;
}

/* Quantizes block blk whose 16 values and amax are loaded. kSigns: sg holds
 * the signs of the inputs, which are those of the scaled values since
 * outScale is never negative: sfv and invGs both carry the sign of gs (or
 * sfv is NaN, or their product is NaN), so their product is >= +0 or NaN,
 * and fminf(rcp, FLT_MAX) maps NaN to FLT_MAX. */
template <bool kVec, bool kSigns>
__device__ __forceinline__ void quantizeBlock(const QuantArgs& a, size_t blk, const float (&v)[16], float amax,
                                              const uint32_t (&sg)[4], float gsDiv6, float invGs) {
  const __nv_fp8_storage_t sf = __nv_cvt_float_to_fp8(__fmul_rn(amax, gsDiv6), __NV_SATFINITE, __NV_E4M3);
  const float sfv = __half2float(__half(__nv_cvt_fp8_to_halfraw(sf, __NV_E4M3)));
  const float outScale = amax != 0.0f ? fminf(__frcp_rn(__fmul_rn(sfv, invGs)), FLT_MAX) : 0.0f;
  float lo[8], hi[8];
#pragma unroll
  for (int i = 0; i < 8; i++) {
    lo[i] = __fmul_rn(v[i], outScale);
    hi[i] = __fmul_rn(v[8 + i], outScale);
  }
  uint32_t qlo = e2m1x8(lo, kSigns, sg[0], sg[1]), qhi = e2m1x8(hi, kSigns, sg[2], sg[3]);
  if (!(amax <= FLT_MAX)) { /* Inf or NaN in the block: scaled values may be NaN */
    qlo = fixNan(qlo, make_float4(lo[0], lo[1], lo[2], lo[3]), make_float4(lo[4], lo[5], lo[6], lo[7]));
    qhi = fixNan(qhi, make_float4(hi[0], hi[1], hi[2], hi[3]), make_float4(hi[4], hi[5], hi[6], hi[7]));
  }
  if (kVec) {
    ((uint2*)a.payload)[blk] = make_uint2(qlo, qhi);
  } else {
    uint8_t* dst = a.payload + blk * 8;
#pragma unroll
    for (int j = 0; j < 4; j++) {
      dst[j] = (uint8_t)(qlo >> (8 * j));
      dst[4 + j] = (uint8_t)(qhi >> (8 * j));
    }
  }
  a.scales[scaleIndex(a, blk)] = sf;
}

/* One side copy, grid-stride: 4-byte words where both ends allow, bytes
 * otherwise. */
__device__ __forceinline__ void sideCopy(const vcollNvfp4SideCopy& c, size_t first, size_t stride) {
  const uint8_t* __restrict__ src = (const uint8_t*)c.src;
  uint8_t* __restrict__ dst = (uint8_t*)c.dst;
  size_t done = 0;
  if ((((uintptr_t)src | (uintptr_t)dst) & 3) == 0) {
    done = c.bytes / 4 * 4;
    for (size_t i = first; i < c.bytes / 4; i += stride) ((uint32_t*)dst)[i] = ((const uint32_t*)src)[i];
  }
  for (size_t i = done + first; i < c.bytes; i += stride) dst[i] = src[i];
}

/* Grid-stride over the blocks, the next block's loads issued before the
 * current block is quantized (so that every thread keeps a load in flight
 * while it computes), then the swizzled layout's zero padding. With sc
 * (quantizeCopiesKernel only): first, with kAmax, the global scale from
 * sc->amaxBits (a variant of its own: the branch and its __syncthreads in
 * the given-scale kernel made that 1.5-2% slower at 1024-4096 rows in a
 * graph, 23eb79c), last the side copies (done first instead, while the first block's loads
 * are in flight, they made no difference at 1-64 tokens and cost 1.3% at
 * 4096 rows of 7168 in a graph: 85f88dd, docs/perf). */
template <typename T, bool kVec, bool kCopies, bool kAmax>
__device__ __forceinline__ void quantizeBody(const QuantArgs& a, const SideCopies* sc) {
  typedef Block<T, kVec> B;
  const size_t first = (size_t)blockIdx.x * kThreads + threadIdx.x, stride = (size_t)gridDim.x * kThreads;
  typename B::Raw cur = {};
  if (first < a.blocks) B::loadRaw(a.x, first, cur);
  float gs;
  if (kAmax) {
    gs = scaleFromAmaxBits(sc->amaxBits, sc->namax, a.gs);
    /* The amax kernel, done before this launch, left its counter at 0
     * unless two of them overlapped (a caller's mistake): zero it so that
     * the next stream-ordered dispatch is right again. */
    if (sc->amaxScratch && first == 0) sc->amaxScratch[0] = sc->amaxScratch[1] = 0;
  } else {
    gs = !kCopies || a.blocks > 0 ? readGlobalScale(a.gs, a.computed) : 1.0f; /* no blocks: no scale to read */
  }
  const float gsDiv6 = __fmul_rn(gs, 1.0f / 6.0f);
  const float invGs = __frcp_rn(gs);
#pragma unroll 1
  for (size_t blk = first; blk < a.blocks; blk += stride) {
    typename B::Raw next = {};
    if (blk + stride < a.blocks) B::loadRaw(a.x, blk + stride, next);
    float v[16];
    uint32_t sg[4];
    const float amax = B::decode(cur, v, sg);
    quantizeBlock<kVec, B::kSigns>(a, blk, v, amax, sg, gsDiv6, invGs);
    cur = next;
  }
  for (size_t q = first; q < a.padTotal; q += stride) writePadding(a, q);
  if (kCopies)
    for (int k = 0; k < sc->n; k++) sideCopy(sc->c[k], first, stride);
}

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads, kQuantMinBlocks) quantizeKernel(const QuantArgs a) {
  quantizeBody<T, kVec, false, false>(a, nullptr);
}

template <typename T, bool kVec, bool kAmax>
__global__ void __launch_bounds__(kThreads, kQuantMinBlocks)
    quantizeCopiesKernel(const QuantArgs a, const __grid_constant__ SideCopies sc) {
  quantizeBody<T, kVec, true, kAmax>(a, &sc);
}

/* Min over CTAs of gs(amax over the CTA's finite elements) into *gs. */
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) amaxKernel(const void* x, size_t blocks, float* gs) {
  __shared__ float warpMax[kThreads / 32];
  const size_t perCta = (size_t)kThreads * kAmaxUnroll;
  for (size_t base = (size_t)blockIdx.x * perCta; base < blocks; base += (size_t)gridDim.x * perCta) {
    float tmax = 0.0f;
#pragma unroll
    for (int u = 0; u < kAmaxUnroll; u++) {
      const size_t blk = base + (size_t)u * kThreads + threadIdx.x;
      if (blk < blocks) {
        float v[16];
        uint32_t sg[4];
        const float amax = loadBlock<T, kVec>(x, blk, v, sg);
        if (amax <= FLT_MAX) {
          tmax = fmaxf(tmax, amax);
        } else { /* skip NaN and Inf */
#pragma unroll
          for (int i = 0; i < 16; i++)
            if (fabsf(v[i]) <= FLT_MAX) tmax = fmaxf(tmax, fabsf(v[i]));
        }
      }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, o));
    if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = tmax;
    __syncthreads();
    if (threadIdx.x == 0) {
      float cmax = warpMax[0];
#pragma unroll
      for (int w = 1; w < kThreads / 32; w++) cmax = fmaxf(cmax, warpMax[w]);
      if (cmax > 0.0f) {
        const uint32_t cand = __float_as_uint(gsOfAmax(cmax));
        if (cand < *(volatile uint32_t*)gs) atomicMin((unsigned int*)gs, cand);
      }
    }
    __syncthreads();
  }
}

__global__ void setOneKernel(float* gs) { *gs = 1.0f; }

struct DequantArgs {
  const uint8_t* payload;
  const uint8_t* scales;
  const float* gs;
  void* out;
  size_t kc, blocks, kTiles;
  int swizzled;
};

template <typename T> __device__ __forceinline__ T fromFloat(float f);
template <> __device__ __forceinline__ float fromFloat<float>(float f) { return f; }
template <> __device__ __forceinline__ __half fromFloat<__half>(float f) { return __float2half_rn(f); }
template <> __device__ __forceinline__ __nv_bfloat16 fromFloat<__nv_bfloat16>(float f) { return __float2bfloat16_rn(f); }

template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) dequantizeKernel(const DequantArgs a) {
  const float gs = *a.gs;
  for (size_t blk = (size_t)blockIdx.x * kThreads + threadIdx.x; blk < a.blocks; blk += (size_t)gridDim.x * kThreads) {
    uint8_t q[8];
    if (kVec) {
      const uint2 w = __ldg((const uint2*)a.payload + blk);
#pragma unroll
      for (int j = 0; j < 4; j++) {
        q[j] = (uint8_t)(w.x >> (8 * j));
        q[4 + j] = (uint8_t)(w.y >> (8 * j));
      }
    } else {
#pragma unroll
      for (int j = 0; j < 8; j++) q[j] = __ldg(a.payload + blk * 8 + j);
    }
    size_t si = blk;
    if (a.swizzled) {
      const size_t m = blk / a.kc;
      si = swizzle(m, blk - m * a.kc, a.kTiles);
    }
    const float s = __half2float(__half(__nv_cvt_fp8_to_halfraw(__ldg(a.scales + si), __NV_E4M3)));
    alignas(16) T o[16]; /* read as uint4 below: aligned should it ever live in local memory */
#pragma unroll
    for (int j = 0; j < 8; j++) {
      const float2 e = __half22float2(__half2(__nv_cvt_fp4x2_to_halfraw2(q[j], __NV_E2M1)));
      /* value * scale is exact (2 x 4 significant bits): one rounding, in the division. */
      o[2 * j] = fromFloat<T>(__fdiv_rn(__fmul_rn(e.x, s), gs));
      o[2 * j + 1] = fromFloat<T>(__fdiv_rn(__fmul_rn(e.y, s), gs));
    }
    if (kVec) {
      uint4* dst = (uint4*)((T*)a.out + blk * 16);
      const uint4* src = (const uint4*)o;
#pragma unroll
      for (int j = 0; j < (int)(16 * sizeof(T) / 16); j++) dst[j] = src[j];
    } else {
      T* dst = (T*)a.out + blk * 16;
#pragma unroll
      for (int j = 0; j < 16; j++) dst[j] = o[j];
    }
  }
}

/* Linear to swizzled, one thread per 16-byte chunk of the destination: the
 * chunk of tile (mt, kt) at r = m % 32 holds rows mt*128 + g*32 + r
 * (g = 0..3), 4 scales each from column kt*4 on. Threads run kt fastest,
 * so a warp's loads of one g are consecutive words of the same rows
 * (coalesced) and every store is 16 bytes. Padding rows and columns get 0.
 * vec4: kc % 4 == 0 and src 4-byte aligned (word loads); vec16: dst
 * 16-byte aligned. */
template <bool kVec4, bool kVec16>
__global__ void __launch_bounds__(kThreads) toSwizzledKernel(const uint8_t* __restrict__ src,
                                                             uint8_t* __restrict__ dst, size_t rows, size_t kc,
                                                             size_t kTiles, size_t chunks) {
  for (size_t i = (size_t)blockIdx.x * kThreads + threadIdx.x; i < chunks; i += (size_t)gridDim.x * kThreads) {
    const size_t line = i / kTiles, kt = i - line * kTiles; /* line = mt * 32 + r */
    const size_t mt = line >> 5, r = line & 31, k0 = kt * 4;
    uint32_t w[4];
#pragma unroll
    for (int g = 0; g < 4; g++) {
      const size_t m = mt * 128 + (size_t)g * 32 + r;
      w[g] = 0;
      if (m < rows) {
        const uint8_t* p = src + m * kc + k0;
        if (kVec4) {
          w[g] = __ldg((const uint32_t*)p);
        } else {
#pragma unroll
          for (int kk = 0; kk < 4; kk++)
            if (k0 + kk < kc) w[g] |= (uint32_t)__ldg(p + kk) << (8 * kk);
        }
      }
    }
    const size_t off = (mt * kTiles + kt) * 512 + r * 16;
    if (kVec16) {
      *(uint4*)(dst + off) = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
#pragma unroll
      for (int g = 0; g < 4; g++)
#pragma unroll
        for (int kk = 0; kk < 4; kk++) dst[off + g * 4 + kk] = (uint8_t)(w[g] >> (8 * kk));
    }
  }
}

/* One thread per destination byte; padding of a swizzled destination is 0. */
__global__ void __launch_bounds__(kThreads) convertKernel(const uint8_t* src, int srcSwizzled, uint8_t* dst,
                                                          int dstSwizzled, size_t rows, size_t kc, size_t kTiles,
                                                          size_t dstBytes) {
  for (size_t i = (size_t)blockIdx.x * kThreads + threadIdx.x; i < dstBytes; i += (size_t)gridDim.x * kThreads) {
    size_t m, k;
    if (dstSwizzled) {
      const size_t tile = i >> 9, r = i & 511;
      m = tile / kTiles * 128 + ((r >> 2) & 3) * 32 + (r >> 4);
      k = tile % kTiles * 4 + (r & 3);
    } else {
      m = i / kc;
      k = i - m * kc;
    }
    uint8_t v = 0;
    if (m < rows && k < kc) v = src[srcSwizzled ? swizzle(m, k, kTiles) : m * kc + k];
    dst[i] = v;
  }
}

unsigned gridFor(size_t work, size_t perCta) {
  const size_t g = (work + perCta - 1) / perCta;
  return (unsigned)(g < kMaxGrid ? g : kMaxGrid);
}

#define LAUNCH_CHECK(name)                                                                              \
  do {                                                                                                  \
    cudaError_t err_ = cudaGetLastError();                                                              \
    if (err_ != cudaSuccess)                                                                            \
      return vcollSetError(NULL, vcollUnhandledCudaError, "%s: launch of %s failed: %s", op, name,      \
                           cudaGetErrorString(err_));                                                   \
  } while (0)

/* The quantize kernel on at most the blocks the device holds at once (SMs x
 * resident blocks per SM, queried once per device), since each thread
 * loops over blocks; need: blocks for one block of input per thread. */
template <typename T, bool kVec>
vcollResult_t launchQuantizeKernel(const QuantArgs& a, const SideCopies* sc, unsigned need, cudaStream_t stream) {
  static int resident[64], residentCopies[2][64];
  const bool amax = sc && sc->amaxBits;
  const void* k = !sc    ? (const void*)quantizeKernel<T, kVec>
                  : amax ? (const void*)quantizeCopiesKernel<T, kVec, true>
                         : (const void*)quantizeCopiesKernel<T, kVec, false>;
  unsigned g = 0;
  VCOLL_CHECK_RES(vcollResidentGrid(k, kThreads, 0, sc ? residentCopies[amax] : resident, need, &g));
  if (!sc) quantizeKernel<T, kVec><<<g, kThreads, 0, stream>>>(a);
  else if (amax) quantizeCopiesKernel<T, kVec, true><<<g, kThreads, 0, stream>>>(a, *sc);
  else quantizeCopiesKernel<T, kVec, false><<<g, kThreads, 0, stream>>>(a, *sc);
  return vcollSuccess;
}

/* sc: NULL, or side copies (n > 0) and/or amax bits for quantizeCopiesKernel. */
template <typename T>
vcollResult_t launchQuantize(const char* op, const QuantArgs& a, const SideCopies* sc, bool vec, cudaStream_t stream) {
  if (a.computed) {
    const unsigned g = gridFor(a.blocks, (size_t)kThreads * kAmaxUnroll);
    if (vec) amaxKernel<T, true><<<g, kThreads, 0, stream>>>(a.x, a.blocks, a.gs);
    else amaxKernel<T, false><<<g, kThreads, 0, stream>>>(a.x, a.blocks, a.gs);
    LAUNCH_CHECK("amaxKernel");
  }
  size_t work = a.blocks > a.padTotal ? a.blocks : a.padTotal;
  for (int k = 0; sc && k < sc->n; k++) work = sc->c[k].bytes / 4 > work ? sc->c[k].bytes / 4 : work;
  const unsigned g = gridFor(work > 0 ? work : 1, kThreads);
  const vcollResult_t r = vec ? launchQuantizeKernel<T, true>(a, sc, g, stream)
                              : launchQuantizeKernel<T, false>(a, sc, g, stream);
  if (r != vcollSuccess) return r;
  LAUNCH_CHECK("quantizeKernel");
  return vcollSuccess;
}

template <typename T>
vcollResult_t launchDequantize(const char* op, const DequantArgs& a, bool vec, cudaStream_t stream) {
  const unsigned g = gridFor(a.blocks, kThreads);
  if (vec) dequantizeKernel<T, true><<<g, kThreads, 0, stream>>>(a);
  else dequantizeKernel<T, false><<<g, kThreads, 0, stream>>>(a);
  LAUNCH_CHECK("dequantizeKernel");
  return vcollSuccess;
}

}  // namespace

extern "C" VCOLL_API vcollResult_t vcollNvfp4Quantize(const void* x, vcollDataType_t dtype, size_t rows, size_t cols,
                                                      float* globalScale, int computeGlobalScale, void* payload,
                                                      void* scales, vcollScaleLayout_t layout, cudaStream_t stream) {
  return vcollNvfp4QuantizeCopies("vcollNvfp4Quantize", x, dtype, rows, cols, globalScale, computeGlobalScale,
                                  payload, scales, layout, NULL, 0, NULL, 0, NULL, stream);
}

extern "C" vcollResult_t vcollNvfp4QuantizeCopies(const char* op, const void* x, vcollDataType_t dtype, size_t rows,
                                                  size_t cols, float* globalScale, int computeGlobalScale,
                                                  void* payload, void* scales, vcollScaleLayout_t layout,
                                                  const vcollNvfp4SideCopy* copies, int ncopies,
                                                  const uint32_t* amaxBits, int namax, uint32_t* amaxScratch,
                                                  cudaStream_t stream) {
  VCOLL_CHECK_RES(vcollNvfp4CheckQuantize(op, x, dtype, rows, cols, globalScale, payload, scales, layout));
  if (ncopies < 0 || ncopies > VCOLL_NVFP4_MAX_SIDE_COPIES)
    return vcollSetError(NULL, vcollInternalError, "%s: %d side copies (at most %d)", op, ncopies,
                         VCOLL_NVFP4_MAX_SIDE_COPIES);
  if (amaxBits && (computeGlobalScale || namax < 1))
    return vcollSetError(NULL, vcollInternalError, "%s: amax bits with %s", op,
                         computeGlobalScale ? "computeGlobalScale" : "namax < 1");
  /* The kernel writes *globalScale when it computes it (computeGlobalScale
   * or amaxBits). */
  const int writesGs = computeGlobalScale || amaxBits;
  QuantArgs a = {};
  SideCopies sc = {};
  for (int k = 0; k < ncopies; k++) {
    if (copies[k].bytes == 0 || copies[k].src == copies[k].dst) continue;
    const int writes = vcollOverlaps(copies[k].dst, copies[k].bytes, globalScale, sizeof(float));
    if (writes || (writesGs && vcollOverlaps(copies[k].src, copies[k].bytes, globalScale, sizeof(float))))
      return vcollSetError(NULL, vcollInternalError, "%s: side copy %d %s the global scale", op, k,
                           writes ? "writes" : "reads a computed");
    sc.c[sc.n++] = copies[k];
  }
  sc.amaxBits = amaxBits;
  sc.namax = namax;
  sc.amaxScratch = amaxBits ? amaxScratch : NULL;
  const SideCopies* scp = sc.n > 0 || amaxBits ? &sc : NULL;
  a.gs = globalScale;
  if (rows == 0) {
    if (computeGlobalScale) {
      setOneKernel<<<1, 1, 0, stream>>>(globalScale);
      LAUNCH_CHECK("setOneKernel");
    }
    if (scp == NULL) return vcollSuccess;
    /* Only the copies and a scale from amaxBits: the quantize kernel with
     * no blocks to quantize (it then reads no global scale). */
    return launchQuantize<float>(op, a, scp, false, stream);
  }
  a.x = x;
  a.payload = (uint8_t*)payload;
  a.scales = (uint8_t*)scales;
  a.rows = rows;
  a.kc = cols / 16;
  a.blocks = rows * a.kc;
  a.swizzled = layout == vcollScaleSwizzled128x4;
  a.computed = computeGlobalScale != 0;
  if (a.swizzled) {
    a.kTiles = (a.kc + 3) / 4;
    a.padCols = a.kTiles * 4 - a.kc;
    a.padRight = rows * a.padCols;
    a.padTotal = vcollNvfp4ScaleBytes(rows, cols, layout) - a.blocks;
  }
  if (a.computed) VCOLL_CUDACHECK(NULL, cudaMemsetAsync(globalScale, 0xff, sizeof(float), stream));
  const bool vec = (uintptr_t)x % 16 == 0 && (uintptr_t)payload % 8 == 0;
  VCOLL_TRACE("%s: %zu x %zu %s, %s scales, %s global scale, %s path, %d side copies", op, rows, cols,
              vcollTypeName(dtype), a.swizzled ? "swizzled" : "linear",
              a.computed ? "computed" : amaxBits ? "gathered-amax" : "given", vec ? "vector" : "scalar", sc.n);
  switch (dtype) {
    case vcollBfloat16: return launchQuantize<__nv_bfloat16>(op, a, scp, vec, stream);
    case vcollFloat16: return launchQuantize<__half>(op, a, scp, vec, stream);
    default: return launchQuantize<float>(op, a, scp, vec, stream);
  }
}

extern "C" VCOLL_API vcollResult_t vcollNvfp4Dequantize(const void* payload, const void* scales,
                                                        vcollScaleLayout_t layout, const float* globalScale,
                                                        size_t rows, size_t cols, void* out, vcollDataType_t outType,
                                                        cudaStream_t stream) {
  const char* op = "vcollNvfp4Dequantize";
  VCOLL_CHECK_RES(vcollNvfp4CheckDequantize(op, payload, scales, layout, globalScale, rows, cols, out, outType));
  if (rows == 0) return vcollSuccess;
  DequantArgs a = {};
  a.payload = (const uint8_t*)payload;
  a.scales = (const uint8_t*)scales;
  a.gs = globalScale;
  a.out = out;
  a.kc = cols / 16;
  a.blocks = rows * a.kc;
  a.kTiles = (a.kc + 3) / 4;
  a.swizzled = layout == vcollScaleSwizzled128x4;
  const bool vec = (uintptr_t)payload % 8 == 0 && (uintptr_t)out % 16 == 0;
  switch (outType) {
    case vcollBfloat16: return launchDequantize<__nv_bfloat16>(op, a, vec, stream);
    case vcollFloat16: return launchDequantize<__half>(op, a, vec, stream);
    default: return launchDequantize<float>(op, a, vec, stream);
  }
}

extern "C" VCOLL_API vcollResult_t vcollNvfp4ConvertScales(const void* src, vcollScaleLayout_t srcLayout, void* dst,
                                                           vcollScaleLayout_t dstLayout, size_t rows, size_t cols,
                                                           cudaStream_t stream) {
  const char* op = "vcollNvfp4ConvertScales";
  VCOLL_CHECK_RES(vcollNvfp4CheckConvert(op, src, srcLayout, dst, dstLayout, rows, cols));
  if (rows == 0) return vcollSuccess;
  const size_t kc = cols / 16, dstBytes = vcollNvfp4ScaleBytes(rows, cols, dstLayout);
  if (srcLayout == vcollScaleLinear && dstLayout == vcollScaleSwizzled128x4) {
    const size_t kTiles = (kc + 3) / 4, chunks = dstBytes / 16;
    const bool v4 = kc % 4 == 0 && (uintptr_t)src % 4 == 0, v16 = (uintptr_t)dst % 16 == 0;
    const unsigned g = gridFor(chunks, kThreads);
    const uint8_t* s = (const uint8_t*)src;
    uint8_t* d = (uint8_t*)dst;
    if (v4 && v16) toSwizzledKernel<true, true><<<g, kThreads, 0, stream>>>(s, d, rows, kc, kTiles, chunks);
    else if (v4) toSwizzledKernel<true, false><<<g, kThreads, 0, stream>>>(s, d, rows, kc, kTiles, chunks);
    else if (v16) toSwizzledKernel<false, true><<<g, kThreads, 0, stream>>>(s, d, rows, kc, kTiles, chunks);
    else toSwizzledKernel<false, false><<<g, kThreads, 0, stream>>>(s, d, rows, kc, kTiles, chunks);
    LAUNCH_CHECK("toSwizzledKernel");
    return vcollSuccess;
  }
  convertKernel<<<gridFor(dstBytes, kThreads), kThreads, 0, stream>>>(
      (const uint8_t*)src, srcLayout == vcollScaleSwizzled128x4, (uint8_t*)dst, dstLayout == vcollScaleSwizzled128x4,
      rows, kc, (kc + 3) / 4, dstBytes);
  LAUNCH_CHECK("convertKernel");
  return vcollSuccess;
}
