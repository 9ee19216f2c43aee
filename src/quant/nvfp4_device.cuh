/* NVFP4 device helpers: block loads, the E2M1 conversion of 8 scaled values
 * and the swizzle. Included by nvfp4.cu and by the GPU test that checks the
 * conversion against CUDA's own (cuda_fp4.h) for every float. */
#ifndef VCOLL_NVFP4_DEVICE_CUH_
#define VCOLL_NVFP4_DEVICE_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#if defined(__GNUC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter" /* in cuda_fp4.hpp's host code */
#endif
#include <cuda_fp4.h>
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif
#include <cuda_fp8.h>
#include <stdint.h>

/* Blackwell family-specific targets (sm_100a, ...) convert to E2M1 in
 * hardware (cvt.rn.satfinite.e2m1x2.f32, reached through cuda_fp4.h). */
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 1000 && defined(__CUDA_ARCH_FAMILY_SPECIFIC__)
#define VCOLL_NVFP4_HW_E2M1 1
#else
#define VCOLL_NVFP4_HW_E2M1 0
#endif

namespace vcollNvfp4 {

/* Codes of p[0..7] (element i in bits 4i..4i+3), round to nearest even,
 * saturated at +-6, negative values that round to zero -> 0x8. A NaN gives
 * 0x7 or 0xF here; fixNan() clears the sign (callers run it only for blocks
 * holding a non-finite value, the only ones whose scaled values can be NaN).
 *
 * Below sm_100a, cuda_fp4.h emulates the conversion in double precision
 * (about 60 instructions per element), which would make the kernel compute
 * bound. Instead: m = min(|p|, 6) has a binade e (clamped to [1, 2) below 1);
 * adding C = 2^(e+22), whose ulp is the E2M1 spacing in that binade (0.5,
 * 1 or 2), makes the FP32 adder round m to that spacing, ties to even, and
 * bits(m + C) - bits(C) is m rounded, in units of the spacing. The code is
 * that count plus 2 per binade above [1, 2) (codes 0-4, 4-6, 6-7). The GPU
 * test checks this against __nv_cvt_float_to_fp4 for all 2^32 floats. */
__device__ __forceinline__ uint32_t e2m1x8(const float (&p)[8]) {
  uint32_t r = 0;
#if VCOLL_NVFP4_HW_E2M1
#pragma unroll
  for (int j = 0; j < 4; j++)
    r |= (uint32_t)__nv_cvt_float2_to_fp4x2(make_float2(p[2 * j], p[2 * j + 1]), __NV_E2M1, cudaRoundNearest)
         << (8 * j);
#else
  /* code_i = bits(m + C) - bits(C) + 2 * (e - 127) + 8 * sign, bits(C) = (e + 22) << 23,
   * summed as code_i << 4i; the parts that do not depend on the element are
   * folded into kBias (all arithmetic mod 2^32, the total is the exact sum). */
  constexpr uint32_t kPer = 0u - (22u << 23) - 254u;
  constexpr uint32_t kBias = kPer * 0x11111111u;
  r = kBias;
  uint32_t signs = 0;
#pragma unroll
  for (int i = 0; i < 8; i++) {
    const float m = fminf(fabsf(p[i]), 6.0f);
    const uint32_t e = max(__float_as_uint(m) >> 23, 127u);
    const float c = __uint_as_float((e << 23) + (22u << 23));
    r += __float_as_uint(__fadd_rn(m, c)) << (4 * i);
    r += e * ((2u - (1u << 23)) << (4 * i));
    signs |= (__float_as_uint(p[i]) >> (28 - 4 * i)) & (8u << (4 * i));
  }
  r |= signs; /* codes are <= 7: bit 3 of each nibble is free */
#endif
  return r;
}

/* NaN -> 0x7 (positive), as cuda_fp4.h does, for the 8 values of e2m1x8.
 * Not inlined, and the values passed in registers: it runs only for blocks
 * with Inf or NaN, and inlined the compiler would predicate it into every
 * block. */
__device__ __noinline__ uint32_t fixNan(uint32_t codes, float4 a, float4 b) {
  const float p[8] = {a.x, a.y, a.z, a.w, b.x, b.y, b.z, b.w};
#pragma unroll
  for (int i = 0; i < 8; i++)
    if (isnan(p[i])) codes &= ~(8u << (4 * i));
  return codes;
}

/* Offset of scale (m, k) in the 128x4 layout; kTiles = ceil(kc / 4). */
__device__ __forceinline__ size_t swizzle(size_t m, size_t k, size_t kTiles) {
  return ((m >> 7) * kTiles + (k >> 2)) * 512 + (m & 31) * 16 + ((m >> 5) & 3) * 4 + (k & 3);
}

/* One block of 16 inputs: values as float and the NaN-dominant absolute
 * maximum (max of |x| bit patterns: NaN > Inf > finite). kVec: x is 16-byte
 * aligned, so the block is 2 (16-bit types) or 4 (fp32) 16-byte loads. */
template <typename T, bool kVec> struct Block;

template <bool kVec> struct Block<__nv_bfloat16, kVec> {
  static __device__ __forceinline__ float load(const void* x, size_t blk, float (&v)[16]) {
    uint32_t w[8];
    if (kVec) {
      const uint4* src = (const uint4*)x + blk * 2;
      const uint4 a = __ldg(src), b = __ldg(src + 1);
      w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    } else {
      const unsigned short* src = (const unsigned short*)x + blk * 16;
#pragma unroll
      for (int j = 0; j < 8; j++) w[j] = __ldg(src + 2 * j) | ((uint32_t)__ldg(src + 2 * j + 1) << 16);
    }
    uint32_t mx = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      mx = __vmaxu2(mx, w[j] & 0x7fff7fffu);
      __nv_bfloat162 h;
      memcpy(&h, &w[j], 4);
      const float2 f = __bfloat1622float2(h);
      v[2 * j] = f.x;
      v[2 * j + 1] = f.y;
    }
    const __nv_bfloat16 amax = __ushort_as_bfloat16((unsigned short)max(mx & 0xffffu, mx >> 16));
    return __bfloat162float(amax);
  }
};

template <bool kVec> struct Block<__half, kVec> {
  static __device__ __forceinline__ float load(const void* x, size_t blk, float (&v)[16]) {
    uint32_t w[8];
    if (kVec) {
      const uint4* src = (const uint4*)x + blk * 2;
      const uint4 a = __ldg(src), b = __ldg(src + 1);
      w[0] = a.x; w[1] = a.y; w[2] = a.z; w[3] = a.w; w[4] = b.x; w[5] = b.y; w[6] = b.z; w[7] = b.w;
    } else {
      const unsigned short* src = (const unsigned short*)x + blk * 16;
#pragma unroll
      for (int j = 0; j < 8; j++) w[j] = __ldg(src + 2 * j) | ((uint32_t)__ldg(src + 2 * j + 1) << 16);
    }
    uint32_t mx = 0;
#pragma unroll
    for (int j = 0; j < 8; j++) {
      mx = __vmaxu2(mx, w[j] & 0x7fff7fffu);
      __half2 h;
      memcpy(&h, &w[j], 4);
      const float2 f = __half22float2(h);
      v[2 * j] = f.x;
      v[2 * j + 1] = f.y;
    }
    return __half2float(__ushort_as_half((unsigned short)max(mx & 0xffffu, mx >> 16)));
  }
};

template <bool kVec> struct Block<float, kVec> {
  static __device__ __forceinline__ float load(const void* x, size_t blk, float (&v)[16]) {
    if (kVec) {
      const float4* src = (const float4*)x + blk * 4;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float4 a = __ldg(src + j);
        v[4 * j] = a.x; v[4 * j + 1] = a.y; v[4 * j + 2] = a.z; v[4 * j + 3] = a.w;
      }
    } else {
      const float* src = (const float*)x + blk * 16;
#pragma unroll
      for (int j = 0; j < 16; j++) v[j] = __ldg(src + j);
    }
    uint32_t mx = 0;
#pragma unroll
    for (int j = 0; j < 16; j++) mx = max(mx, __float_as_uint(v[j]) & 0x7fffffffu);
    return __uint_as_float(mx);
  }
};

}  // namespace vcollNvfp4

#endif /* VCOLL_NVFP4_DEVICE_CUH_ */
