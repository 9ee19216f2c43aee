/* Host conversions between float and the 8/16-bit float formats, written
 * from the IEEE-754 / OCP FP8 definitions. Round to nearest, ties to even.
 * Used by the host backend's reductions and by the CPU references. */
#ifndef VCOLL_HOSTFLOAT_H_
#define VCOLL_HOSTFLOAT_H_

#include <math.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t vcollF32Bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
static inline float vcollBitsF32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static inline float vcollBf16ToF32(uint16_t h) { return vcollBitsF32((uint32_t)h << 16); }

static inline uint16_t vcollF32ToBf16(float f) {
  uint32_t u = vcollF32Bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
  u += 0x7fffu + ((u >> 16) & 1u);
  return (uint16_t)(u >> 16);
}

static inline float vcollF16ToF32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return vcollBitsF32(sign | 0x7f800000u | (man << 13));
  if (exp == 0) return (sign ? -1.0f : 1.0f) * ldexpf((float)man, -24);
  return vcollBitsF32(sign | ((exp + 112u) << 23) | (man << 13));
}

static inline uint16_t vcollF32ToF16(float f) {
  uint32_t u = vcollF32Bits(f);
  uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
  uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x477ff000u) return sign | 0x7c00u; /* rounds to >= 65520: inf */
  if (a < 0x38800000u) {                        /* subnormal or zero in half */
    float m = vcollBitsF32(a) * 16777216.0f;    /* units of 2^-24, exact */
    float r = nearbyintf(m);                    /* ties to even (default mode) */
    return sign | (uint16_t)r;
  }
  uint32_t rounded = a + 0xfffu + ((a >> 13) & 1u);
  return sign | (uint16_t)((rounded - 0x38000000u) >> 13);
}

/* OCP FP8 E4M3 (fn): bias 7, no infinities, 0x7f/0xff NaN, max 448. */
static inline float vcollE4m3ToF32(uint8_t v) {
  float s = (v & 0x80) ? -1.0f : 1.0f;
  int e = (v >> 3) & 0xf, m = v & 7;
  if (e == 0xf && m == 7) return NAN;
  if (e == 0) return s * ldexpf((float)m, -9);
  return s * ldexpf((float)(8 + m), e - 10);
}

/* OCP FP8 E5M2: bias 15, IEEE-like with inf and NaN. */
static inline float vcollE5m2ToF32(uint8_t v) {
  uint16_t h = (uint16_t)v << 8;
  return vcollF16ToF32(h);
}

/* Magnitude code of |f| (finite) in a small float format with `mbits`
 * mantissa bits and exponent bias `bias`, rounded to nearest even and
 * saturated at `maxv`. The caller adds the sign bit. */
static inline uint8_t vcollSmallFloatCode(float a, int mbits, int bias, float maxv) {
  int minExp = 1 - bias, e;
  frexpf(a, &e);
  int exp = e - 1;
  if (a == 0.0f || exp < minExp) exp = minExp;
  float quantum = ldexpf(1.0f, exp - mbits);
  float r = nearbyintf(a / quantum) * quantum; /* exact: scaling by powers of two */
  if (r > maxv) r = maxv;
  if (r == 0.0f) return 0;
  frexpf(r, &e);
  int rexp = e - 1;
  if (rexp < minExp) return (uint8_t)(r / ldexpf(1.0f, minExp - mbits));
  int man = (int)(r / ldexpf(1.0f, rexp - mbits)) - (1 << mbits);
  return (uint8_t)(((rexp + bias) << mbits) | man);
}

static inline uint8_t vcollF32ToE4m3Sat(float f) {
  if (isnan(f)) return 0x7f | (signbit(f) ? 0x80 : 0);
  float a = fabsf(f);
  uint8_t sign = signbit(f) ? 0x80 : 0;
  if (a >= 448.0f) return sign | 0x7e;
  return sign | vcollSmallFloatCode(a, 3, 7, 448.0f);
}

static inline uint8_t vcollF32ToE5m2Sat(float f) {
  if (isnan(f)) return 0x7f | (signbit(f) ? 0x80 : 0);
  float a = fabsf(f);
  uint8_t sign = signbit(f) ? 0x80 : 0;
  if (a >= 57344.0f) return sign | 0x7b;
  return sign | vcollSmallFloatCode(a, 2, 15, 57344.0f);
}

#endif /* VCOLL_HOSTFLOAT_H_ */
