/* The segment kernel's approximate sigmoid (src/moe/gate_device.cuh) against
 * the exact recipe both the kernel and the CPU reference use (vgSigmoid,
 * gate_common.h), on the device for all 2^32 floats, for test_gate_gpu.c. */
#include <cuda_runtime.h>
#include <stdint.h>
#include <string.h>

#include "gate_common.h"
#include "gate_device.cuh"

/* Largest |sigmoidApprox(x) - vgSigmoid(x)| over non-NaN x (as float bits,
 * which order like the values for non-negative floats) and an x reaching it;
 * and the count of x where exactly one of the two is NaN. */
__global__ void sigmoidApproxKernel(uint32_t* maxBits, uint32_t* worstX, unsigned long long* nanMismatch) {
  uint32_t best = 0, bestX = 0;
  unsigned long long nm = 0;
  const uint64_t n = 1ull << 32;
  for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x) {
    const float x = __uint_as_float((uint32_t)i);
    const float a = vcollGate::sigmoidApprox(x), r = vgSigmoid(x);
    if (isnan(a) || isnan(r)) {
      nm += isnan(a) != isnan(r);
      continue;
    }
    const uint32_t d = __float_as_uint(fabsf(__fsub_rn(a, r)));
    if (d > best) { best = d; bestX = (uint32_t)i; }
  }
  if (nm) atomicAdd(nanMismatch, nm);
  const uint32_t prev = atomicMax(maxBits, best);
  if (best > prev) *worstX = bestX; /* racy between equal maxima; any of them is a witness */
}

/* Returns a cudaError_t; *bound is the kernel's assumed bound. */
extern "C" int gateTestSigmoidApprox(float* maxErr, uint32_t* worstX, unsigned long long* nanMismatch, float* bound) {
  uint32_t* d = NULL;
  cudaError_t err = cudaMalloc(&d, 16);
  if (err != cudaSuccess) return err;
  uint32_t h[4];
  if ((err = cudaMemset(d, 0, 16)) != cudaSuccess) goto exit;
  sigmoidApproxKernel<<<4096, 256>>>(d, d + 1, (unsigned long long*)(d + 2));
  if ((err = cudaGetLastError()) != cudaSuccess) goto exit;
  if ((err = cudaMemcpy(h, d, 16, cudaMemcpyDeviceToHost)) != cudaSuccess) goto exit;
  memcpy(maxErr, &h[0], 4);
  *worstX = h[1];
  memcpy(nanMismatch, &h[2], 8);
  *bound = vcollGate::kSigApproxErr;
exit:
  cudaFree(d);
  return err;
}
