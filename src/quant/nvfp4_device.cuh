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

/* prmt.b32 with the full selector: a nibble with bit 3 set replicates the
 * sign bit of the byte it selects over the result byte (0xFF or 0x00). */
__device__ __forceinline__ uint32_t prmt(uint32_t a, uint32_t b, uint32_t sel) {
  uint32_t d;
  asm("prmt.b32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(sel));
  return d;
}

/* E2M1 magnitude code (0..7) of min(|p|, 6) in the low byte of the result
 * (the bits above it are not part of the code), round to nearest even.
 *
 * Below sm_100a, cuda_fp4.h emulates the conversion in double precision
 * (about 60 instructions per element), which would make the kernel compute
 * bound. Instead one fused multiply-add rounds: m = min(|p|, 6) has the
 * E2M1 binade e = floor(log2(max(m, 1))) in 0..2, spacing 2^(e-1). With
 * t = 2^e as bits, F = float(t + 256 + 2e) = 2^e (1 + (256 + 2e) 2^-23), so
 * F * 2^22 = 2^(e+22) + (256 + 2e) 2^(e-1), whose ulp is that spacing. The
 * FMA adds m and rounds once, ties to even (the offset 256 + 2e is even),
 * giving mantissa 256 + 2e + round(m / 2^(e-1)); its low byte is
 * 2e + round(m / 2^(e-1)), the E2M1 code (codes 0-4, 4-6, 6-7 per binade).
 * F's bits come from t | 2 plus (t | 2) >> 22 = 254 + 2e. A NaN p gives
 * m = 6 (fminf returns the number), code 7. The GPU test checks e2m1x8
 * against __nv_cvt_float_to_fp4 for all 2^32 floats. */
__device__ __forceinline__ uint32_t e2m1MagByte(float p) {
  const float m = fminf(fabsf(p), 6.0f);
  uint32_t t; /* (bits & 0xff800000) | 2 in one lop3 (the compiler would split it in two) */
  asm("lop3.b32 %0, %1, 0xff800000, %2, 0xea;" : "=r"(t) : "r"(__float_as_uint(fmaxf(m, 1.0f))), "r"(2u));
  return __float_as_uint(__fmaf_rn(__uint_as_float(t + (t >> 22)), 4194304.0f, m));
}

/* 8 magnitude bytes (low byte of b[i], element i) and the replicated sign
 * bytes of the even (sEven byte j: element 2j) and odd (sOdd byte j:
 * element 2j + 1) elements -> 8 codes, element i in bits 4i..4i+3. */
__device__ __forceinline__ uint32_t packCodes(const uint32_t (&b)[8], uint32_t sEven, uint32_t sOdd) {
  const uint32_t even = prmt(prmt(b[0], b[2], 0x0040u), prmt(b[4], b[6], 0x4000u), 0x7610u);
  const uint32_t odd = prmt(prmt(b[1], b[3], 0x0040u), prmt(b[5], b[7], 0x4000u), 0x7610u);
  return (even | (sEven & 0x08080808u)) + ((odd | (sOdd & 0x08080808u)) << 4);
}

/* Codes of p[0..7] (element i in bits 4i..4i+3), round to nearest even,
 * saturated at +-6, negative values that round to zero -> 0x8. A NaN gives
 * 0x7 or 0xF here; fixNan() clears the sign (callers run it only for blocks
 * holding a non-finite value, the only ones whose scaled values can be NaN).
 * haveSigns: the caller passes the signs of the 8 values as sEven/sOdd
 * (as packCodes takes them), which saves extracting them from p. */
__device__ __forceinline__ uint32_t e2m1x8(const float (&p)[8], bool haveSigns = false, uint32_t sEven = 0,
                                           uint32_t sOdd = 0) {
  uint32_t r = 0;
#if VCOLL_NVFP4_HW_E2M1
#pragma unroll
  for (int j = 0; j < 4; j++)
    r |= (uint32_t)__nv_cvt_float2_to_fp4x2(make_float2(p[2 * j], p[2 * j + 1]), __NV_E2M1, cudaRoundNearest)
         << (8 * j);
  (void)haveSigns; (void)sEven; (void)sOdd;
#else
  uint32_t b[8];
#pragma unroll
  for (int i = 0; i < 8; i++) b[i] = e2m1MagByte(p[i]);
  if (!haveSigns) { /* byte 3 of each float, sign replicated */
    uint32_t u[8];
#pragma unroll
    for (int i = 0; i < 8; i++) u[i] = __float_as_uint(p[i]);
    sEven = prmt(prmt(u[0], u[2], 0x00fbu), prmt(u[4], u[6], 0xfb00u), 0x7610u);
    sOdd = prmt(prmt(u[1], u[3], 0x00fbu), prmt(u[5], u[7], 0xfb00u), 0x7610u);
  }
  r = packCodes(b, sEven, sOdd);
#endif
  return r;
}

/* Replicated sign bytes (for e2m1x8) of 8 16-bit values in w[0..3] (value
 * 2j in the low half of w[j]): the signs of x * s for any s >= +0. */
__device__ __forceinline__ void signs16(const uint32_t* w, uint32_t& sEven, uint32_t& sOdd) {
  const uint32_t lo = prmt(w[0], w[1], 0xfdb9u); /* values 0, 1, 2, 3 */
  const uint32_t hi = prmt(w[2], w[3], 0xfdb9u); /* values 4, 5, 6, 7 */
  sEven = prmt(lo, hi, 0x6420u);
  sOdd = prmt(lo, hi, 0x7531u);
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

/* One block of 16 inputs, in two steps so that a kernel can issue the
 * loads of its next block before working on the current one: loadRaw()
 * reads the block's 32 (16-bit types) or 64 (fp32) bytes into a Raw (kVec:
 * x is 16-byte aligned, so 2 or 4 16-byte loads); decode() gives the values
 * as float and the NaN-dominant absolute maximum (max of |x| bit patterns:
 * NaN > Inf > finite), and with kSigns the replicated sign bytes of values
 * 0-7 (sg[0], sg[1]) and 8-15 (sg[2], sg[3]) for e2m1x8. */
template <typename T, bool kVec> struct Block;

/* 16 16-bit values as 8 words (value 2j in the low half of w[j]). */
struct Raw16 {
  uint32_t w[8];
};

template <bool kVec>
__device__ __forceinline__ void loadRaw16(const void* x, size_t blk, Raw16& r) {
  if (kVec) {
    const uint4* src = (const uint4*)x + blk * 2;
    const uint4 a = __ldg(src), b = __ldg(src + 1);
    r.w[0] = a.x; r.w[1] = a.y; r.w[2] = a.z; r.w[3] = a.w; r.w[4] = b.x; r.w[5] = b.y; r.w[6] = b.z; r.w[7] = b.w;
  } else {
    const unsigned short* src = (const unsigned short*)x + blk * 16;
#pragma unroll
    for (int j = 0; j < 8; j++) r.w[j] = __ldg(src + 2 * j) | ((uint32_t)__ldg(src + 2 * j + 1) << 16);
  }
}

__device__ __forceinline__ uint32_t absMax16(const Raw16& r) {
  uint32_t mx = 0;
#pragma unroll
  for (int j = 0; j < 8; j++) mx = __vmaxu2(mx, r.w[j] & 0x7fff7fffu);
  return max(mx & 0xffffu, mx >> 16);
}

template <bool kVec> struct Block<__nv_bfloat16, kVec> {
  typedef Raw16 Raw;
  static constexpr bool kSigns = true;
  static __device__ __forceinline__ void loadRaw(const void* x, size_t blk, Raw& r) { loadRaw16<kVec>(x, blk, r); }
  static __device__ __forceinline__ float decode(const Raw& r, float (&v)[16], uint32_t (&sg)[4]) {
#pragma unroll
    for (int j = 0; j < 8; j++) {
      v[2 * j] = __uint_as_float(r.w[j] << 16); /* bf16 -> fp32 is a shift */
      v[2 * j + 1] = __uint_as_float(r.w[j] & 0xffff0000u);
    }
    signs16(r.w, sg[0], sg[1]);
    signs16(r.w + 4, sg[2], sg[3]);
    return __uint_as_float(absMax16(r) << 16);
  }
};

template <bool kVec> struct Block<__half, kVec> {
  typedef Raw16 Raw;
  static constexpr bool kSigns = true;
  static __device__ __forceinline__ void loadRaw(const void* x, size_t blk, Raw& r) { loadRaw16<kVec>(x, blk, r); }
  static __device__ __forceinline__ float decode(const Raw& r, float (&v)[16], uint32_t (&sg)[4]) {
#pragma unroll
    for (int j = 0; j < 8; j++) {
      __half2 h;
      memcpy(&h, &r.w[j], 4);
      const float2 f = __half22float2(h);
      v[2 * j] = f.x;
      v[2 * j + 1] = f.y;
    }
    signs16(r.w, sg[0], sg[1]);
    signs16(r.w + 4, sg[2], sg[3]);
    return __half2float(__ushort_as_half((unsigned short)absMax16(r)));
  }
};

template <bool kVec> struct Block<float, kVec> {
  struct Raw {
    float v[16];
  };
  static constexpr bool kSigns = false; /* e2m1x8 takes them from the scaled values */
  static __device__ __forceinline__ void loadRaw(const void* x, size_t blk, Raw& r) {
    if (kVec) {
      const float4* src = (const float4*)x + blk * 4;
#pragma unroll
      for (int j = 0; j < 4; j++) {
        const float4 a = __ldg(src + j);
        r.v[4 * j] = a.x; r.v[4 * j + 1] = a.y; r.v[4 * j + 2] = a.z; r.v[4 * j + 3] = a.w;
      }
    } else {
      const float* src = (const float*)x + blk * 16;
#pragma unroll
      for (int j = 0; j < 16; j++) r.v[j] = __ldg(src + j);
    }
  }
  static __device__ __forceinline__ float decode(const Raw& r, float (&v)[16], uint32_t (&)[4]) {
    uint32_t mx = 0;
#pragma unroll
    for (int j = 0; j < 16; j++) {
      v[j] = r.v[j];
      mx = max(mx, __float_as_uint(v[j]) & 0x7fffffffu);
    }
    return __uint_as_float(mx);
  }
};

/* Both steps at once. */
template <typename T, bool kVec>
__device__ __forceinline__ float loadBlock(const void* x, size_t blk, float (&v)[16], uint32_t (&sg)[4]) {
  typename Block<T, kVec>::Raw r;
  Block<T, kVec>::loadRaw(x, blk, r);
  return Block<T, kVec>::decode(r, v, sg);
}

}  // namespace vcollNvfp4

#endif /* VCOLL_NVFP4_DEVICE_CUH_ */
