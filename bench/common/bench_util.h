/* Helpers shared by the single-GPU benchmarks (gate_perf, nvfp4_perf,
 * weight_layout_perf): exit-on-error checks, a seeded PRNG and medians;
 * float to bf16/fp16 conversions of inputs come from vcoll_hostfloat.h.
 * Header only; every function is static. */
#ifndef VCOLL_BENCH_UTIL_H_
#define VCOLL_BENCH_UTIL_H_

#include <cuda_runtime_api.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll.h"
#include "vcoll_hostfloat.h" /* float to bf16/fp16 for inputs */

#define CUDACHECK(cmd)                                                                              \
  do {                                                                                              \
    cudaError_t e_ = (cmd);                                                                         \
    if (e_ != cudaSuccess) {                                                                        \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #cmd, cudaGetErrorString(e_));  \
      exit(1);                                                                                      \
    }                                                                                               \
  } while (0)
#define VCOLLCHECK(cmd)                                                                             \
  do {                                                                                              \
    vcollResult_t r_ = (cmd);                                                                       \
    if (r_ != vcollSuccess) {                                                                       \
      fprintf(stderr, "%s:%d: %s failed: %s\n", __FILE__, __LINE__, #cmd, vcollGetLastError(NULL)); \
      exit(1);                                                                                      \
    }                                                                                               \
  } while (0)

/* splitmix64 stream: uniform in [0, 1) and standard normal (Box-Muller). */
static uint64_t benchRngState = 0x2545f4914f6cdd1dull;
static inline double benchUniform(void) {
  uint64_t z = (benchRngState += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return (double)((z ^ (z >> 31)) >> 11) * (1.0 / 9007199254740992.0);
}
static inline double benchNormal(void) {
  double u1 = benchUniform(), u2 = benchUniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

static int benchCmpFloat(const void* a, const void* b) {
  float x = *(const float*)a, y = *(const float*)b;
  return (x > y) - (x < y);
}
/* Median of v[0..n) (sorts v). */
static inline float benchMedian(float* v, int n) {
  qsort(v, (size_t)n, sizeof(float), benchCmpFloat);
  return n % 2 ? v[n / 2] : 0.5f * (v[n / 2 - 1] + v[n / 2]);
}

#endif /* VCOLL_BENCH_UTIL_H_ */
