/* The routing gate's fp32 arithmetic, shared by the CPU reference (gate.c)
 * and the kernel (gate.cu) so that both compute bit-identical scores.
 *
 * Every step is an IEEE-754 operation rounded to nearest (add, multiply,
 * fused multiply-add, reciprocal), written with intrinsics on the device
 * so that neither -use_fast_math nor FMA contraction can change it; the
 * host side compiles gate.c with contraction off (see there). No libm
 * transcendental is used: host expf and device expf may differ by an ulp,
 * which could flip a near-tie in the selection. */
#ifndef VCOLL_GATE_COMMON_H_
#define VCOLL_GATE_COMMON_H_

#include <stdint.h>
#include <string.h>

#include "vcoll/gate.h"

#if defined(__CUDA_ARCH__)
#define VG_FMA(a, b, c) __fmaf_rn((a), (b), (c))
#define VG_ADD(a, b) __fadd_rn((a), (b))
#define VG_MUL(a, b) __fmul_rn((a), (b))
#define VG_RCP(a) __frcp_rn(a)
#else
#include <math.h>
#define VG_FMA(a, b, c) fmaf((a), (b), (c))
#define VG_ADD(a, b) ((a) + (b))
#define VG_MUL(a, b) ((a) * (b))
#define VG_RCP(a) (1.0f / (a))
#endif

#if defined(__CUDACC__)
#define VG_FN static __host__ __device__ __forceinline__
#else
#define VG_FN static inline
#endif

VG_FN uint32_t vgBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

VG_FN float vgFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  memcpy(&f, &u, 4);
  return f;
#endif
}

#define VG_NAN_BITS 0x7fc00000u
#define VG_ROUND_MAGIC 12582912.0f /* 1.5 * 2^23: adding it rounds |t| < 2^22 to an integer */

/* 1 / d rounded to nearest, for d in [1, 2^118] (its reciprocal is a normal
 * float). On the device: the approximate reciprocal and one Newton step with
 * fused multiply-adds, which is what __frcp_rn runs for such d (it checks
 * the exponent first and takes a slower path only near the ends of the
 * range), without that check and its branch. */
VG_FN float vgRcpNormal(float d) {
#if defined(__CUDA_ARCH__)
  float r;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(d));
  return __fmaf_rn(r, __fmaf_rn(-d, r, 1.0f), r);
#else
  return VG_RCP(d);
#endif
}

/* sigmoid(x) = 1 / (1 + exp(-x)) in fp32, within 2 ulp of the correctly
 * rounded value (up to about 2.5 ulp of the exact one) for x >= -80 (it saturates at sigmoid(-80) ~ 1.8e-35 below, and is 1 from
 * x = 20 on, where the exact value rounds to 1 anyway). exp(y) = 2^k e^r with
 * k = rint(y / ln 2), r = y - k ln 2 (two-constant Cody-Waite reduction) and
 * e^r from Cephes' expf polynomial. NaN gives NaN. */
VG_FN float vgSigmoid(float x) {
  /* Clamped to [-20, 80], which keeps 1 + exp(y) and its reciprocal normal
   * floats. A NaN x goes through without a branch (fminf/fmaxf, one
   * instruction each on the device, map it to a bound) and NaN is returned
   * at the end. */
  const float y = fminf(fmaxf(-x, -20.0f), 80.0f);
  float t = VG_MUL(y, 1.44269504088896341f);
  float tm = VG_ADD(t, VG_ROUND_MAGIC);
  float kf = VG_ADD(tm, -VG_ROUND_MAGIC);
  float r = VG_FMA(kf, -0.693359375f, y);
  r = VG_FMA(kf, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = VG_FMA(p, r, 1.3981999507e-3f);
  p = VG_FMA(p, r, 8.3334519073e-3f);
  p = VG_FMA(p, r, 4.1665795894e-2f);
  p = VG_FMA(p, r, 1.6666665459e-1f);
  p = VG_FMA(p, r, 5.0000001201e-1f);
  p = VG_FMA(p, r, 1.0f);
  float e = VG_FMA(p, r, 1.0f);
  /* The low mantissa bits of tm hold k; shifting them into the exponent
   * field and adding the bias gives 2^k (k in -29..116). */
  float scale = vgFloat((vgBits(tm) << 23) + 0x3f800000u);
  const float sig = vgRcpNormal(VG_FMA(e, scale, 1.0f)); /* e * 2^k is exact, so one rounding */
  return x != x ? vgFloat(VG_NAN_BITS) : sig;
}

/* A total order on fp32 scores as unsigned keys: larger float, larger key;
 * equal floats (0 and -0 too), equal keys; every NaN is key 1, below all
 * numbers (-inf is 0x007fffff). Key 0 means "not a candidate". */
VG_FN uint32_t vgKey(float f) {
  if (f != f) return 1u;
  uint32_t u = vgBits(VG_ADD(f, 0.0f)); /* -0 + 0 = +0 */
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

VG_FN float vgUnkey(uint32_t k) { return vgFloat((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k); }

/* Score of a group from the keys of its two largest biased scores. */
VG_FN uint32_t vgGroupKey(uint32_t k1, uint32_t k2) { return vgKey(VG_ADD(vgUnkey(k1), vgUnkey(k2))); }

#ifdef __cplusplus
extern "C" {
#endif
/* gate.c: validates the arguments of `op` (vcollMoeGate or vcollMoeGateRef);
 * on failure records the error naming op and the argument. */
vcollResult_t vcollMoeGateCheckArgs(const char* op, const void* logits, vcollDataType_t logitsType,
                                    const float* bias, size_t T, const vcollMoeGateParams_t* p,
                                    const int32_t* ids, const float* weights);
#ifdef __cplusplus
}
#endif

#endif /* VCOLL_GATE_COMMON_H_ */
