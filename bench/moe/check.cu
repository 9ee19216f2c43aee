/* Device-side inputs and checks of moe_dispatch_perf: every rank can
 * regenerate any rank's inputs from (seed, element index), so results are
 * checked on the device without moving them to the host. */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <stdint.h>

namespace {

constexpr int kThreads = 256;

__host__ __device__ inline uint64_t mix(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

/* Hidden value: a multiple of 1/64 in (-4, 4), never all zero. */
__device__ inline float hiddenVal(uint64_t seed, size_t i) {
  return (float)((int)(mix(seed * 0x1000003ull + i) % 511) - 255) * (1.0f / 64.0f);
}
/* Partial output value: an integer in [-4, 4]; sums over ranks are exact in bf16. */
__device__ inline float partialVal(uint64_t seed, size_t e) { return (float)((int)(mix(seed * 0x2000003ull + e) % 9) - 4); }

unsigned gridFor(size_t n) {
  size_t g = (n + kThreads - 1) / kThreads;
  return (unsigned)(g == 0 ? 1 : g > 8192 ? 8192 : g);
}

__global__ void fillKernel(__nv_bfloat16* dst, size_t n, uint64_t seed, int partial) {
  for (size_t i = (size_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (size_t)gridDim.x * kThreads)
    dst[i] = __float2bfloat16_rn(partial ? partialVal(seed, i) : hiddenVal(seed, i));
}

__global__ void fillWordsKernel(uint32_t* dst, size_t n, uint64_t seed, uint32_t mod) {
  for (size_t i = (size_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (size_t)gridDim.x * kThreads) {
    uint32_t v = (uint32_t)mix(seed * 0x3000003ull + i);
    dst[i] = mod ? v % mod : 0x3c000000u | (v & 0x7fffffu); /* ids < mod, or floats in [2^-7, 2^-6) */
  }
}

__global__ void diffKernel(const uint8_t* a, const uint8_t* b, size_t n, unsigned long long* wrong) {
  unsigned long long w = 0;
  for (size_t i = (size_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (size_t)gridDim.x * kThreads)
    w += a[i] != b[i];
  if (w) atomicAdd(wrong, w);
}

__global__ void checkHiddenKernel(const __nv_bfloat16* got, size_t n, uint64_t seed, unsigned long long* wrong) {
  unsigned long long w = 0;
  for (size_t i = (size_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (size_t)gridDim.x * kThreads)
    w += __bfloat162float(got[i]) != hiddenVal(seed, i);
  if (w) atomicAdd(wrong, w);
}

__global__ void checkCombineKernel(const __nv_bfloat16* got, size_t n, size_t e0, uint64_t seed0, int nranks,
                                   unsigned long long* wrong) {
  unsigned long long w = 0;
  for (size_t i = (size_t)blockIdx.x * kThreads + threadIdx.x; i < n; i += (size_t)gridDim.x * kThreads) {
    float want = 0.0f;
    for (int r = 0; r < nranks; r++) want += partialVal(seed0 + (uint64_t)r, e0 + i);
    w += __bfloat162float(got[i]) != want;
  }
  if (w) atomicAdd(wrong, w);
}

}  // namespace

extern "C" {

/* Each returns a cudaError_t as int (launch errors). */
int benchMoeFill(void* dst, size_t n, uint64_t seed, int partial, cudaStream_t s) {
  fillKernel<<<gridFor(n), kThreads, 0, s>>>((__nv_bfloat16*)dst, n, seed, partial);
  return (int)cudaGetLastError();
}
int benchMoeFillWords(void* dst, size_t n, uint64_t seed, uint32_t mod, cudaStream_t s) {
  fillWordsKernel<<<gridFor(n), kThreads, 0, s>>>((uint32_t*)dst, n, seed, mod);
  return (int)cudaGetLastError();
}
int benchMoeDiff(const void* a, const void* b, size_t n, unsigned long long* wrong, cudaStream_t s) {
  if (n == 0) return 0;
  diffKernel<<<gridFor(n), kThreads, 0, s>>>((const uint8_t*)a, (const uint8_t*)b, n, wrong);
  return (int)cudaGetLastError();
}
int benchMoeCheckHidden(const void* got, size_t n, uint64_t seed, unsigned long long* wrong, cudaStream_t s) {
  if (n == 0) return 0;
  checkHiddenKernel<<<gridFor(n), kThreads, 0, s>>>((const __nv_bfloat16*)got, n, seed, wrong);
  return (int)cudaGetLastError();
}
int benchMoeCheckCombine(const void* got, size_t n, size_t e0, uint64_t seed0, int nranks, unsigned long long* wrong,
                         cudaStream_t s) {
  if (n == 0) return 0;
  checkCombineKernel<<<gridFor(n), kThreads, 0, s>>>((const __nv_bfloat16*)got, n, e0, seed0, nranks, wrong);
  return (int)cudaGetLastError();
}

}  // extern "C"
