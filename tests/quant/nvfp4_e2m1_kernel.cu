/* The quantize kernel's E2M1 conversion (src/quant/nvfp4_device.cuh) run on
 * given floats, for test_nvfp4_gpu.c: against CUDA's __nv_cvt_float_to_fp4
 * on the device for all 2^32 inputs, and into a buffer for the host to
 * check against the CPU reference. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "nvfp4_device.cuh"

using namespace vcollNvfp4;

/* Codes of the 8 floats with bit patterns first .. first + 7 (a NaN among
 * them: fixNan, as the quantize kernel does for non-finite blocks). */
__device__ __forceinline__ uint32_t codes8(uint64_t first) {
  float p[8];
  bool nan = false;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    p[i] = __uint_as_float((uint32_t)(first + i));
    nan |= isnan(p[i]);
  }
  uint32_t c = e2m1x8(p);
  if (nan) c = fixNan(c, make_float4(p[0], p[1], p[2], p[3]), make_float4(p[4], p[5], p[6], p[7]));
  return c;
}

__global__ void exhaustiveKernel(unsigned long long* mismatches, uint32_t* firstBad) {
  const uint64_t groups = 1ull << 29;
  for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (uint64_t)gridDim.x * blockDim.x) {
    const uint32_t c = codes8(g * 8);
    uint32_t want = 0;
#pragma unroll
    for (int i = 0; i < 8; i++)
      want |= (uint32_t)__nv_cvt_float_to_fp4(__uint_as_float((uint32_t)(g * 8 + i)), __NV_E2M1, cudaRoundNearest)
              << (4 * i);
    if (c != want) {
      if (atomicAdd(mismatches, 1ull) == 0) *firstBad = (uint32_t)(g * 8);
    }
  }
}

__global__ void codesKernel(uint32_t first, uint64_t groups, uint32_t* out) {
  for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < groups; g += (uint64_t)gridDim.x * blockDim.x)
    out[g] = codes8((uint64_t)first + g * 8);
}

/* All 2^32 floats against __nv_cvt_float_to_fp4; returns a cudaError_t. */
extern "C" int nvfp4TestE2m1Exhaustive(unsigned long long* mismatches, uint32_t* firstBad) {
  unsigned long long* d = NULL;
  cudaError_t err = cudaMalloc(&d, 16);
  if (err != cudaSuccess) return err;
  if ((err = cudaMemset(d, 0, 16)) != cudaSuccess) goto exit;
  exhaustiveKernel<<<4096, 256>>>(d, (uint32_t*)(d + 1));
  if ((err = cudaGetLastError()) != cudaSuccess) goto exit;
  if ((err = cudaMemcpy(mismatches, d, 8, cudaMemcpyDeviceToHost)) != cudaSuccess) goto exit;
  err = cudaMemcpy(firstBad, d + 1, 4, cudaMemcpyDeviceToHost);
exit:
  cudaFree(d);
  return err;
}

/* Codes of the 8 * groups floats from bit pattern `first` (a multiple of
 * 8) into devOut[groups]. */
extern "C" int nvfp4TestE2m1Codes(uint32_t first, uint64_t groups, uint32_t* devOut) {
  codesKernel<<<4096, 256>>>(first, groups, devOut);
  cudaError_t err = cudaGetLastError();
  if (err == cudaSuccess) err = cudaDeviceSynchronize();
  return err;
}
