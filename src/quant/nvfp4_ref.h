/* NVFP4 host helpers written from the format's definition (docs/nvfp4.md):
 * the CPU reference's element and scale conversions and the 128x4 scale
 * swizzle. Shared by nvfp4.c, the MoE dispatch's host backend (the scale)
 * and the tests; the kernels do not use them. */
#ifndef VCOLL_NVFP4_REF_H_
#define VCOLL_NVFP4_REF_H_

#include <float.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "vcoll_hostfloat.h"

#define VCOLL_NVFP4_BLOCK 16
#define VCOLL_NVFP4_GS_NUM 2688.0f /* 448 * 6: the global scale is 2688 / amax */

/* The computed global scale of tokens whose largest finite |x| is amax:
 * min(2688 / amax, FLT_MAX), 1.0 when amax is 0 (no finite non-zero). */
static inline float vcollNvfp4GsRef(float amax) {
  return amax > 0.0f ? fminf(VCOLL_NVFP4_GS_NUM / amax, FLT_MAX) : 1.0f;
}

/* E2M1 code (sign bit 3; 0..7 = 0, 0.5, 1, 1.5, 2, 3, 4, 6) of v, rounded to
 * nearest with ties to even and saturated at +-6. The bounds below are the
 * midpoints between neighbouring values: a tie goes to the even code (0, 1.0,
 * 2.0, 4.0), hence <= at 0.25, 1.25, 2.5, 5 and < at 0.75, 1.75, 3.5.
 * Values that round to zero keep their sign (-0.1 -> 0x8); NaN -> 0x7. */
static inline uint8_t vcollE2m1Ref(float v) {
  if (isnan(v)) return 0x7;
  const uint8_t sign = signbit(v) ? 0x8 : 0x0;
  const float a = fabsf(v);
  uint8_t c;
  if (a <= 0.25f) c = 0;
  else if (a < 0.75f) c = 1;
  else if (a <= 1.25f) c = 2;
  else if (a < 1.75f) c = 3;
  else if (a <= 2.5f) c = 4;
  else if (a < 3.5f) c = 5;
  else if (a <= 5.0f) c = 6;
  else c = 7;
  return (uint8_t)(sign | c);
}

static inline float vcollE2m1Value(uint8_t code) {
  static const float mag[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
  const float v = mag[code & 7];
  return (code & 8) ? -v : v;
}

/* E4M3 (fn) scale code: round to nearest even, saturate at +-448, any NaN
 * -> 0x7F (the kernels' hardware conversion gives the canonical NaN). */
static inline uint8_t vcollE4m3ScaleRef(float v) { return isnan(v) ? 0x7f : vcollF32ToE4m3Sat(v); }

/* Byte offset of scale (m, k) in the 128x4 swizzled layout; kc = cols / 16. */
static inline size_t vcollNvfp4SwizzleOffset(size_t m, size_t k, size_t kc) {
  const size_t kTiles = (kc + 3) / 4;
  return ((m / 128) * kTiles + k / 4) * 512 + (m % 32) * 16 + ((m % 128) / 32) * 4 + k % 4;
}

#endif /* VCOLL_NVFP4_REF_H_ */
