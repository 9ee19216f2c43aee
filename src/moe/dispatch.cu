/* MoE dispatch/combine kernels: the amax of the local tokens (computed
 * NVFP4 scale; the scale itself is derived inside the quantize launch), and the
 * bf16 <-> fp32 conversions around an fp32-accumulated combine. All are
 * memory-bound grid-stride loops with 16-byte accesses when both pointers
 * are 16-byte aligned (a scalar loop covers the rest), and 64-bit indices. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <float.h>

extern "C" {
#include "dispatch.h"
#include "vcoll_internal.h"
}

namespace {

constexpr int kThreads = 256;
constexpr size_t kMaxGrid = 8192; /* grid-stride beyond this; far below gridDim.x's limit */

unsigned gridFor(size_t work) {
  const size_t g = (work + kThreads - 1) / kThreads;
  return (unsigned)(g == 0 ? 1 : g < kMaxGrid ? g : kMaxGrid);
}

union Bf16x8 {
  uint4 u;
  __nv_bfloat16 h[8];
};

/* |v| for finite v; NaN and +-Inf do not count towards the amax (as in
 * NVFP4's computed scale). */
__device__ __forceinline__ float absFinite(__nv_bfloat16 v) {
  const float f = fabsf(__bfloat162float(v));
  return f <= FLT_MAX ? f : 0.0f;
}

/* On a grid the device holds at once, four 16-byte loads in flight per
 * thread. The last CTA to finish (counted in acc[1]) moves the max
 * (acc[0]) to *out and sets both back to 0 for the next launch: no memset
 * before it (acc starts at 0 with the workspace). */
template <bool kVec>
__global__ void __launch_bounds__(kThreads) amaxKernel(const __nv_bfloat16* x, size_t n, uint32_t* acc,
                                                       uint32_t* out) {
  __shared__ float warpMax[kThreads / 32];
  const size_t tid = (size_t)blockIdx.x * kThreads + threadIdx.x, stride = (size_t)gridDim.x * kThreads;
  float m = 0.0f;
  size_t done = 0;
  if (kVec) {
    const size_t nv = n / 8;
    const uint4* xv = (const uint4*)x;
    size_t i = tid;
    for (; i + 3 * stride < nv; i += 4 * stride) {
      Bf16x8 w[4];
#pragma unroll
      for (int u = 0; u < 4; u++) w[u].u = __ldg(xv + i + u * stride);
#pragma unroll
      for (int u = 0; u < 4; u++)
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, absFinite(w[u].h[j]));
    }
    for (; i < nv; i += stride) {
      Bf16x8 w;
      w.u = __ldg(xv + i);
#pragma unroll
      for (int j = 0; j < 8; j++) m = fmaxf(m, absFinite(w.h[j]));
    }
    done = nv * 8;
  }
  for (size_t i = done + tid; i < n; i += stride) m = fmaxf(m, absFinite(x[i]));
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, o));
  if ((threadIdx.x & 31) == 0) warpMax[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
#pragma unroll
    for (int w = 1; w < kThreads / 32; w++) m = fmaxf(m, warpMax[w]);
    if (m > 0.0f) atomicMax(acc, __float_as_uint(m));
    __threadfence();
    if (atomicAdd(acc + 1, 1u) == gridDim.x - 1) { /* every other CTA's max is in acc[0] */
      __threadfence();
      *out = atomicExch(acc, 0u);
      acc[1] = 0;
    }
  }
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads) toF32Kernel(const __nv_bfloat16* src, float* dst, size_t n) {
  const size_t tid = (size_t)blockIdx.x * kThreads + threadIdx.x, stride = (size_t)gridDim.x * kThreads;
  size_t done = 0;
  if (kVec) {
    const size_t nv = n / 8;
    for (size_t i = tid; i < nv; i += stride) {
      Bf16x8 w;
      w.u = __ldg((const uint4*)src + i);
      float4* d = (float4*)dst + 2 * i;
      d[0] = make_float4(__bfloat162float(w.h[0]), __bfloat162float(w.h[1]), __bfloat162float(w.h[2]),
                         __bfloat162float(w.h[3]));
      d[1] = make_float4(__bfloat162float(w.h[4]), __bfloat162float(w.h[5]), __bfloat162float(w.h[6]),
                         __bfloat162float(w.h[7]));
    }
    done = nv * 8;
  }
  for (size_t i = done + tid; i < n; i += stride) dst[i] = __bfloat162float(src[i]);
}

template <bool kVec>
__global__ void __launch_bounds__(kThreads) toBf16Kernel(const float* src, __nv_bfloat16* dst, size_t n) {
  const size_t tid = (size_t)blockIdx.x * kThreads + threadIdx.x, stride = (size_t)gridDim.x * kThreads;
  size_t done = 0;
  if (kVec) {
    const size_t nv = n / 8;
    for (size_t i = tid; i < nv; i += stride) {
      const float4 a = __ldg((const float4*)src + 2 * i), b = __ldg((const float4*)src + 2 * i + 1);
      Bf16x8 w;
      w.h[0] = __float2bfloat16_rn(a.x); w.h[1] = __float2bfloat16_rn(a.y);
      w.h[2] = __float2bfloat16_rn(a.z); w.h[3] = __float2bfloat16_rn(a.w);
      w.h[4] = __float2bfloat16_rn(b.x); w.h[5] = __float2bfloat16_rn(b.y);
      w.h[6] = __float2bfloat16_rn(b.z); w.h[7] = __float2bfloat16_rn(b.w);
      ((uint4*)dst)[i] = w.u;
    }
    done = nv * 8;
  }
  for (size_t i = done + tid; i < n; i += stride) dst[i] = __float2bfloat16_rn(src[i]);
}

bool aligned16(const void* a, const void* b) { return ((uintptr_t)a % 16 == 0) && ((uintptr_t)b % 16 == 0); }

#define LAUNCH_CHECK(name)                                                                              \
  do {                                                                                                  \
    cudaError_t err_ = cudaGetLastError();                                                              \
    if (err_ != cudaSuccess)                                                                            \
      return vcollSetError(comm, vcollUnhandledCudaError, "%s : launch of %s failed: %s", op, name,     \
                           cudaGetErrorString(err_));                                                   \
  } while (0)

}  // namespace

extern "C" vcollResult_t vcollMoeAmaxBf16(vcollComm_t comm, const char* op, const void* x, size_t n, uint32_t* acc,
                                          uint32_t* amaxBits, cudaStream_t stream) {
  if (n == 0) {
    VCOLL_CUDACHECK(comm, cudaMemsetAsync(amaxBits, 0, sizeof(uint32_t), stream));
    return vcollSuccess;
  }
  const __nv_bfloat16* xb = (const __nv_bfloat16*)x;
  static int resident[2][64];
  const bool vec = (uintptr_t)x % 16 == 0;
  const void* k = vec ? (const void*)amaxKernel<true> : (const void*)amaxKernel<false>;
  unsigned g = 0;
  VCOLL_CHECK_RES(vcollResidentGrid(k, kThreads, 0, resident[vec], gridFor(vec ? n / 8 : n), &g));
  if (vec) amaxKernel<true><<<g, kThreads, 0, stream>>>(xb, n, acc, amaxBits);
  else amaxKernel<false><<<g, kThreads, 0, stream>>>(xb, n, acc, amaxBits);
  LAUNCH_CHECK("amaxKernel");
  return vcollSuccess;
}

extern "C" vcollResult_t vcollMoeBf16ToF32(vcollComm_t comm, const char* op, const void* src, float* dst, size_t n,
                                           cudaStream_t stream) {
  if (n == 0) return vcollSuccess;
  const __nv_bfloat16* s = (const __nv_bfloat16*)src;
  if (aligned16(src, dst)) toF32Kernel<true><<<gridFor(n / 8), kThreads, 0, stream>>>(s, dst, n);
  else toF32Kernel<false><<<gridFor(n), kThreads, 0, stream>>>(s, dst, n);
  LAUNCH_CHECK("toF32Kernel");
  return vcollSuccess;
}

extern "C" vcollResult_t vcollMoeF32ToBf16(vcollComm_t comm, const char* op, const float* src, void* dst, size_t n,
                                           cudaStream_t stream) {
  if (n == 0) return vcollSuccess;
  __nv_bfloat16* d = (__nv_bfloat16*)dst;
  if (aligned16(src, dst)) toBf16Kernel<true><<<gridFor(n / 8), kThreads, 0, stream>>>(src, d, n);
  else toBf16Kernel<false><<<gridFor(n), kThreads, 0, stream>>>(src, d, n);
  LAUNCH_CHECK("toBf16Kernel");
  return vcollSuccess;
}
