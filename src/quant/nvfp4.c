/* NVFP4: size helpers, argument checks and the CPU reference, written from
 * the recipe in docs/nvfp4.md. The kernels (nvfp4.cu) match it bit for bit. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
/* The recipe has no a*b+c, but keep GCC from fusing anything it might find. */
#pragma GCC optimize("fp-contract=off")
#endif

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "nvfp4_internal.h"
#include "nvfp4_ref.h"
#include "vcoll_hostfloat.h"
#include "vcoll_internal.h"

VCOLL_API size_t vcollNvfp4PayloadBytes(size_t rows, size_t cols) {
  size_t n;
  if (cols % VCOLL_NVFP4_BLOCK != 0 || !vcollMulOk(rows, cols / 2, &n)) return 0;
  return n;
}

VCOLL_API size_t vcollNvfp4ScaleBytes(size_t rows, size_t cols, vcollScaleLayout_t layout) {
  size_t n;
  if (cols % VCOLL_NVFP4_BLOCK != 0) return 0;
  const size_t kc = cols / VCOLL_NVFP4_BLOCK;
  switch (layout) {
    case vcollScaleLinear:
      return vcollMulOk(rows, kc, &n) ? n : 0;
    case vcollScaleSwizzled128x4:
      if (rows == 0 || kc == 0 || rows > SIZE_MAX - 127) return 0;
      return vcollMulOk((rows + 127) / 128 * 128, (kc + 3) / 4 * 4, &n) ? n : 0;
    default:
      return 0;
  }
}

/* ---------------------------------------------------------------------- */
/* Argument checks                                                          */

static int isElemType(vcollDataType_t t) { return t == vcollBfloat16 || t == vcollFloat16 || t == vcollFloat32; }

static vcollResult_t checkShape(const char* op, size_t rows, size_t cols, vcollScaleLayout_t layout, size_t esize,
                                size_t* elemBytes, size_t* payloadBytes, size_t* scaleBytes) {
  *elemBytes = *payloadBytes = *scaleBytes = 0;
  if (layout != vcollScaleLinear && layout != vcollScaleSwizzled128x4)
    return VCOLL_ARGERR(NULL, op, "invalid layout %d (must be vcollScaleLinear or vcollScaleSwizzled128x4)",
                        (int)layout);
  if (cols == 0 || cols % VCOLL_NVFP4_BLOCK != 0)
    return VCOLL_ARGERR(NULL, op, "invalid cols %zu (must be a positive multiple of %d)", cols, VCOLL_NVFP4_BLOCK);
  size_t elems;
  if (!vcollMulOk(rows, cols, &elems) || !vcollMulOk(elems, esize, elemBytes) || rows > SIZE_MAX - 127)
    return VCOLL_ARGERR(NULL, op, "rows %zu x cols %zu overflow the buffer size", rows, cols);
  *payloadBytes = vcollNvfp4PayloadBytes(rows, cols);
  *scaleBytes = vcollNvfp4ScaleBytes(rows, cols, layout);
  if (rows != 0 && *scaleBytes == 0)
    return VCOLL_ARGERR(NULL, op, "rows %zu x cols %zu overflow the scale size", rows, cols);
  return vcollSuccess;
}

static vcollResult_t checkGlobalScale(const char* op, const float* gs) {
  if (gs == NULL) return VCOLL_ARGERR(NULL, op, "globalScale argument is NULL");
  if ((uintptr_t)gs % 4 != 0) return VCOLL_ARGERR(NULL, op, "globalScale %p is not 4-byte aligned", (const void*)gs);
  return vcollSuccess;
}

vcollResult_t vcollNvfp4CheckQuantize(const char* op, const void* x, vcollDataType_t dtype, size_t rows, size_t cols,
                                      const float* globalScale, const void* payload, const void* scales,
                                      vcollScaleLayout_t layout) {
  if (!isElemType(dtype))
    return VCOLL_ARGERR(NULL, op, "invalid dtype %d (must be vcollBfloat16, vcollFloat16 or vcollFloat32)", (int)dtype);
  const size_t esize = vcollTypeSize(dtype);
  size_t xBytes, pBytes, sBytes;
  VCOLL_CHECK_RES(checkShape(op, rows, cols, layout, esize, &xBytes, &pBytes, &sBytes));
  VCOLL_CHECK_RES(checkGlobalScale(op, globalScale));
  if (rows == 0) return vcollSuccess;
  if (x == NULL) return VCOLL_ARGERR(NULL, op, "x argument is NULL");
  if (payload == NULL) return VCOLL_ARGERR(NULL, op, "payload argument is NULL");
  if (scales == NULL) return VCOLL_ARGERR(NULL, op, "scales argument is NULL");
  if ((uintptr_t)x % esize != 0)
    return VCOLL_ARGERR(NULL, op, "x %p is not aligned to its %zu-byte elements", x, esize);
  if (vcollOverlaps(x, xBytes, payload, pBytes)) return VCOLL_ARGERR(NULL, op, "payload %p overlaps x %p", payload, x);
  if (vcollOverlaps(x, xBytes, scales, sBytes)) return VCOLL_ARGERR(NULL, op, "scales %p overlaps x %p", scales, x);
  if (vcollOverlaps(payload, pBytes, scales, sBytes))
    return VCOLL_ARGERR(NULL, op, "scales %p overlaps payload %p", scales, payload);
  if (vcollOverlaps(globalScale, 4, x, xBytes) || vcollOverlaps(globalScale, 4, payload, pBytes) ||
      vcollOverlaps(globalScale, 4, scales, sBytes))
    return VCOLL_ARGERR(NULL, op, "globalScale %p overlaps x, payload or scales", (const void*)globalScale);
  return vcollSuccess;
}

vcollResult_t vcollNvfp4CheckDequantize(const char* op, const void* payload, const void* scales,
                                        vcollScaleLayout_t layout, const float* globalScale, size_t rows, size_t cols,
                                        const void* out, vcollDataType_t outType) {
  if (!isElemType(outType))
    return VCOLL_ARGERR(NULL, op, "invalid outType %d (must be vcollBfloat16, vcollFloat16 or vcollFloat32)",
                        (int)outType);
  const size_t esize = vcollTypeSize(outType);
  size_t oBytes, pBytes, sBytes;
  VCOLL_CHECK_RES(checkShape(op, rows, cols, layout, esize, &oBytes, &pBytes, &sBytes));
  VCOLL_CHECK_RES(checkGlobalScale(op, globalScale));
  if (rows == 0) return vcollSuccess;
  if (payload == NULL) return VCOLL_ARGERR(NULL, op, "payload argument is NULL");
  if (scales == NULL) return VCOLL_ARGERR(NULL, op, "scales argument is NULL");
  if (out == NULL) return VCOLL_ARGERR(NULL, op, "out argument is NULL");
  if ((uintptr_t)out % esize != 0)
    return VCOLL_ARGERR(NULL, op, "out %p is not aligned to its %zu-byte elements", out, esize);
  if (vcollOverlaps(out, oBytes, payload, pBytes)) return VCOLL_ARGERR(NULL, op, "out %p overlaps payload %p", out, payload);
  if (vcollOverlaps(out, oBytes, scales, sBytes)) return VCOLL_ARGERR(NULL, op, "out %p overlaps scales %p", out, scales);
  if (vcollOverlaps(out, oBytes, globalScale, 4))
    return VCOLL_ARGERR(NULL, op, "out %p overlaps globalScale %p", out, (const void*)globalScale);
  return vcollSuccess;
}

vcollResult_t vcollNvfp4CheckConvert(const char* op, const void* src, vcollScaleLayout_t srcLayout, const void* dst,
                                     vcollScaleLayout_t dstLayout, size_t rows, size_t cols) {
  size_t eBytes, pBytes, srcBytes, dstBytes;
  if (srcLayout != vcollScaleLinear && srcLayout != vcollScaleSwizzled128x4)
    return VCOLL_ARGERR(NULL, op, "invalid srcLayout %d (must be vcollScaleLinear or vcollScaleSwizzled128x4)",
                        (int)srcLayout);
  if (dstLayout != vcollScaleLinear && dstLayout != vcollScaleSwizzled128x4)
    return VCOLL_ARGERR(NULL, op, "invalid dstLayout %d (must be vcollScaleLinear or vcollScaleSwizzled128x4)",
                        (int)dstLayout);
  VCOLL_CHECK_RES(checkShape(op, rows, cols, srcLayout, 1, &eBytes, &pBytes, &srcBytes));
  VCOLL_CHECK_RES(checkShape(op, rows, cols, dstLayout, 1, &eBytes, &pBytes, &dstBytes));
  if (rows == 0) return vcollSuccess;
  if (src == NULL) return VCOLL_ARGERR(NULL, op, "src argument is NULL");
  if (dst == NULL) return VCOLL_ARGERR(NULL, op, "dst argument is NULL");
  if (vcollOverlaps(src, srcBytes, dst, dstBytes))
    return VCOLL_ARGERR(NULL, op, "dst %p overlaps src %p (no in-place conversion)", dst, src);
  return vcollSuccess;
}

/* ---------------------------------------------------------------------- */
/* CPU reference                                                            */

static float loadElem(const void* x, vcollDataType_t t, size_t i) {
  if (t == vcollFloat32) {
    float f;
    memcpy(&f, (const char*)x + i * 4, 4);
    return f;
  }
  uint16_t h;
  memcpy(&h, (const char*)x + i * 2, 2);
  return t == vcollBfloat16 ? vcollBf16ToF32(h) : vcollF16ToF32(h);
}

static void storeElem(void* out, vcollDataType_t t, size_t i, float f) {
  if (t == vcollFloat32) {
    if (isnan(f)) f = vcollBitsF32(0x7fffffffu); /* the GPU's canonical NaN */
    memcpy((char*)out + i * 4, &f, 4);
    return;
  }
  uint16_t h = isnan(f) ? 0x7fff : t == vcollBfloat16 ? vcollF32ToBf16(f) : vcollF32ToF16(f);
  memcpy((char*)out + i * 2, &h, 2);
}

static size_t scaleOffset(vcollScaleLayout_t layout, size_t m, size_t k, size_t kc) {
  return layout == vcollScaleLinear ? m * kc + k : vcollNvfp4SwizzleOffset(m, k, kc);
}

VCOLL_API vcollResult_t vcollNvfp4QuantizeRef(const void* x, vcollDataType_t dtype, size_t rows, size_t cols,
                                              float* globalScale, int computeGlobalScale, void* payload, void* scales,
                                              vcollScaleLayout_t layout) {
  VCOLL_CHECK_RES(vcollNvfp4CheckQuantize("vcollNvfp4QuantizeRef", x, dtype, rows, cols, globalScale, payload,
                                          scales, layout));
  const size_t kc = cols / VCOLL_NVFP4_BLOCK;
  float gs;
  if (computeGlobalScale) {
    /* amax over the finite elements: NaN and +-Inf do not set the scale. */
    float amax = 0.0f;
    for (size_t i = 0; i < rows * cols; i++) {
      const float a = fabsf(loadElem(x, dtype, i));
      if (isfinite(a) && a > amax) amax = a;
    }
    gs = vcollNvfp4GsRef(amax);
    *globalScale = gs;
  } else {
    gs = *globalScale;
  }
  if (rows == 0) return vcollSuccess;

  const float gsDiv6 = gs * (1.0f / 6.0f);
  const float invGs = 1.0f / gs;
  uint8_t* pay = (uint8_t*)payload;
  uint8_t* sc = (uint8_t*)scales;
  if (layout == vcollScaleSwizzled128x4) memset(sc, 0, vcollNvfp4ScaleBytes(rows, cols, layout)); /* padding */
  for (size_t m = 0; m < rows; m++) {
    for (size_t k = 0; k < kc; k++) {
      const size_t first = m * cols + k * VCOLL_NVFP4_BLOCK;
      float v[VCOLL_NVFP4_BLOCK];
      /* Block amax; a NaN anywhere makes it NaN (the block's scale becomes NaN). */
      float amax = 0.0f;
      int nan = 0;
      for (int i = 0; i < VCOLL_NVFP4_BLOCK; i++) {
        v[i] = loadElem(x, dtype, first + i);
        const float a = fabsf(v[i]);
        if (isnan(a)) nan = 1;
        else if (a > amax) amax = a;
      }
      if (nan) amax = NAN;
      const uint8_t sf = vcollE4m3ScaleRef(amax * gsDiv6);
      const float sfv = vcollE4m3ToF32(sf);
      const float outScale = amax != 0.0f ? fminf(1.0f / (sfv * invGs), FLT_MAX) : 0.0f;
      sc[scaleOffset(layout, m, k, kc)] = sf;
      for (int i = 0; i < VCOLL_NVFP4_BLOCK; i += 2) {
        const uint8_t lo = vcollE2m1Ref(v[i] * outScale), hi = vcollE2m1Ref(v[i + 1] * outScale);
        pay[first / 2 + i / 2] = (uint8_t)(lo | (hi << 4));
      }
    }
  }
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollNvfp4DequantizeRef(const void* payload, const void* scales, vcollScaleLayout_t layout,
                                                const float* globalScale, size_t rows, size_t cols, void* out,
                                                vcollDataType_t outType) {
  VCOLL_CHECK_RES(vcollNvfp4CheckDequantize("vcollNvfp4DequantizeRef", payload, scales, layout, globalScale, rows,
                                            cols, out, outType));
  if (rows == 0) return vcollSuccess;
  const size_t kc = cols / VCOLL_NVFP4_BLOCK;
  const float gs = *globalScale;
  const uint8_t* pay = (const uint8_t*)payload;
  const uint8_t* sc = (const uint8_t*)scales;
  for (size_t m = 0; m < rows; m++) {
    for (size_t k = 0; k < kc; k++) {
      const float s = vcollE4m3ToF32(sc[scaleOffset(layout, m, k, kc)]);
      const size_t first = m * cols + k * VCOLL_NVFP4_BLOCK;
      for (int i = 0; i < VCOLL_NVFP4_BLOCK; i++) {
        const uint8_t b = pay[(first + i) / 2];
        const uint8_t code = (i & 1) ? (uint8_t)(b >> 4) : (uint8_t)(b & 0xf);
        /* value * scale is exact (2 x 4 significant bits); one rounding in the division. */
        storeElem(out, outType, first + i, (vcollE2m1Value(code) * s) / gs);
      }
    }
  }
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollNvfp4ConvertScalesRef(const void* src, vcollScaleLayout_t srcLayout, void* dst,
                                                   vcollScaleLayout_t dstLayout, size_t rows, size_t cols) {
  VCOLL_CHECK_RES(vcollNvfp4CheckConvert("vcollNvfp4ConvertScalesRef", src, srcLayout, dst, dstLayout, rows, cols));
  if (rows == 0) return vcollSuccess;
  const size_t kc = cols / VCOLL_NVFP4_BLOCK;
  if (dstLayout == vcollScaleSwizzled128x4) memset(dst, 0, vcollNvfp4ScaleBytes(rows, cols, dstLayout));
  for (size_t m = 0; m < rows; m++)
    for (size_t k = 0; k < kc; k++)
      ((uint8_t*)dst)[scaleOffset(dstLayout, m, k, kc)] = ((const uint8_t*)src)[scaleOffset(srcLayout, m, k, kc)];
  return vcollSuccess;
}
