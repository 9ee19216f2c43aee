/* NVFP4 CPU reference (suite unit): hand-derived vectors for the element and
 * scale conversions and the whole block recipe, the conversions against
 * CUDA's own host implementations (cuda_fp4.h / cuda_fp8.h), layouts,
 * dequantization, a quantize/dequantize error bound on random data, and
 * argument errors (right code, message naming the function and argument,
 * nothing written). */
#include "vt.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4_ref.h"
#include "vcoll/nvfp4.h"

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter" /* cuda_fp4.hpp */
#include <cuda_fp4.h>
#include <cuda_fp8.h>
#pragma GCC diagnostic pop

static float f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static uint32_t bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* ---------------------------------------------------------------------- */
/* Element and scale conversions                                            */

static void test_e2m1_vectors(void** state) {
  (void)state;
  static const struct { float in; uint8_t code; } v[] = {
      {0.0f, 0x0}, {-0.0f, 0x8}, {0.5f, 0x1}, {1.0f, 0x2}, {1.5f, 0x3}, {2.0f, 0x4}, {3.0f, 0x5}, {4.0f, 0x6},
      {6.0f, 0x7}, {-6.0f, 0xF}, {-0.5f, 0x9}, {-4.0f, 0xE},
      /* every tie goes to the even code */
      {0.25f, 0x0}, {0.75f, 0x2}, {1.25f, 0x2}, {1.75f, 0x4}, {2.5f, 0x4}, {3.5f, 0x6}, {5.0f, 0x6},
      {-0.25f, 0x8}, {-0.75f, 0xA}, {-1.25f, 0xA}, {-1.75f, 0xC}, {-2.5f, 0xC}, {-3.5f, 0xE}, {-5.0f, 0xE},
      /* one ulp either side of each tie */
      {0x1.000002p-2f, 0x1}, {0x1.fffffep-3f, 0x0}, {0x1.7ffffep-1f, 0x1}, {0x1.400002p+0f, 0x3},
      {0x1.3ffffep+0f, 0x2}, {0x1.bffffep+0f, 0x3}, {0x1.400002p+1f, 0x5}, {0x1.bffffep+1f, 0x5},
      {0x1.400002p+2f, 0x7}, {0x1.3ffffep+2f, 0x6},
      /* saturation, infinities, NaN, negative values that round to zero, subnormals */
      {6.5f, 0x7}, {7.0f, 0x7}, {1e30f, 0x7}, {FLT_MAX, 0x7}, {-1e30f, 0xF}, {INFINITY, 0x7}, {-INFINITY, 0xF},
      {-0.1f, 0x8}, {0x1p-149f, 0x0}, {-0x1p-149f, 0x8}, {0x1p-126f, 0x0},
  };
  for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
    const uint8_t got = vcollE2m1Ref(v[i].in);
    if (got != v[i].code) fail_msg("e2m1(%a): got 0x%x want 0x%x", (double)v[i].in, got, v[i].code);
  }
  assert_int_equal(vcollE2m1Ref(NAN), 0x7);
  assert_int_equal(vcollE2m1Ref(-NAN), 0x7);
  assert_int_equal(vcollE2m1Ref(f32(0xffc00001u)), 0x7);
  for (int c = 0; c < 16; c++) assert_int_equal(vcollE2m1Ref(vcollE2m1Value((uint8_t)c)), c); /* codes round-trip */
  assert_true(signbit(vcollE2m1Value(0x8)) && vcollE2m1Value(0x8) == 0.0f);
}

/* CUDA's host conversion, as an independent check of the reference: every
 * float of magnitude in [2^-4, 16) (where all rounding decisions are), and a
 * stride through all 2^32 bit patterns for the rest. */
static void test_e2m1_vs_cuda(void** state) {
  (void)state;
  size_t n = 0, bad = 0;
  for (uint32_t sign = 0; sign < 2; sign++) {
    for (uint32_t u = 0x3d800000u; u < 0x41800000u; u++, n++) {
      const float f = f32(u | (sign << 31));
      const uint8_t want = __nv_cvt_float_to_fp4(f, __NV_E2M1, cudaRoundNearest);
      if (vcollE2m1Ref(f) != want && bad++ < 5)
        print_error("e2m1(%a): ref 0x%x cuda 0x%x\n", (double)f, vcollE2m1Ref(f), want);
    }
  }
  for (uint64_t u = 0; u <= 0xffffffffull; u += 4099, n++) {
    const float f = f32((uint32_t)u);
    const uint8_t want = __nv_cvt_float_to_fp4(f, __NV_E2M1, cudaRoundNearest);
    if (vcollE2m1Ref(f) != want && bad++ < 5)
      print_error("e2m1(%a): ref 0x%x cuda 0x%x\n", (double)f, vcollE2m1Ref(f), want);
  }
  print_message("# e2m1: %zu inputs, %zu differ from __nv_cvt_float_to_fp4\n", n, bad);
  assert_int_equal(bad, 0);
}

static void test_e4m3_vectors(void** state) {
  (void)state;
  static const struct { float in; uint8_t code; } v[] = {
      {0.0f, 0x00}, {1.0f, 0x38}, {2.0f, 0x40}, {1.125f, 0x39}, {1.0625f, 0x38}, {1.1875f, 0x3a},
      {448.0f, 0x7e}, {449.0f, 0x7e}, {464.0f, 0x7e}, {1e9f, 0x7e}, {INFINITY, 0x7e}, {FLT_MAX, 0x7e},
      {0x1p-6f, 0x08},                    /* smallest normal */
      {0x1p-9f, 0x01}, {0x1.cp-7f, 0x07}, /* subnormals: 1/512 and 7/512 */
      {0x1p-10f, 0x00},                   /* tie between 0 and 2^-9: even */
      {0x1.000002p-10f, 0x01}, {0x1.8p-9f, 0x02} /* 1.5 x 2^-9: tie, even */, {0x1.4p-9f, 0x01},
      {0x1.ep-7f, 0x08},                  /* 7.5/512: tie between 7/512 and 2^-6: even (0x08) */
      {0x1p-149f, 0x00}, {240.0f, 0x77}, {248.0f, 0x78} /* tie 240|256: even */,
  };
  for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
    const uint8_t got = vcollE4m3ScaleRef(v[i].in);
    if (got != v[i].code) fail_msg("e4m3(%a): got 0x%02x want 0x%02x", (double)v[i].in, got, v[i].code);
  }
  assert_int_equal(vcollE4m3ScaleRef(NAN), 0x7f);
  assert_int_equal(vcollE4m3ScaleRef(-NAN), 0x7f);
  assert_true(isnan(vcollE4m3ToF32(0x7f)));
}

/* Non-negative scales (what the recipe produces for gs > 0): every 3rd float
 * from 2^-12 to 2^10, every tie point and its neighbours, and a stride
 * through all patterns; against __nv_cvt_float_to_fp8(satfinite). */
static void test_e4m3_vs_cuda(void** state) {
  (void)state;
  size_t n = 0, bad = 0;
#define E4M3_CHECK(f)                                                                         \
  do {                                                                                        \
    const float f_ = (f);                                                                     \
    const uint8_t want_ = __nv_cvt_float_to_fp8(f_, __NV_SATFINITE, __NV_E4M3);               \
    const uint8_t got_ = vcollE4m3ScaleRef(f_);                                               \
    n++;                                                                                      \
    if (got_ != want_ && !(isnan(f_) && (want_ & 0x7f) == 0x7f) && bad++ < 5)                 \
      print_error("e4m3(%a): ref 0x%02x cuda 0x%02x\n", (double)f_, got_, want_);             \
  } while (0)
  for (uint32_t u = 0x39800000u; u < 0x44800000u; u += 3) E4M3_CHECK(f32(u));
  for (uint32_t e = 100; e < 140; e++)
    for (uint32_t m = 0; m < 8; m++)
      for (int d = -2; d <= 2; d++) E4M3_CHECK(f32((e << 23) + (m << 20) + (1u << 19) + (uint32_t)d));
  for (uint64_t u = 0; u <= 0x7fffffffull; u += 4099) E4M3_CHECK(f32((uint32_t)u));
#undef E4M3_CHECK
  print_message("# e4m3: %zu inputs, %zu differ from __nv_cvt_float_to_fp8\n", n, bad);
  assert_int_equal(bad, 0);
}

/* ---------------------------------------------------------------------- */
/* The block recipe, hand-derived                                          */

/* Quantizes one row of 16 fp32 values with a given gs; returns the scale
 * and fills codes[16]. */
static uint8_t quantBlock(const float* x, float gs, uint8_t* codes) {
  uint8_t pay[8], sc;
  assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, 1, 16, &gs, 0, pay, &sc, vcollScaleLinear), vcollSuccess);
  for (int i = 0; i < 16; i++) codes[i] = (i & 1) ? pay[i / 2] >> 4 : pay[i / 2] & 0xf;
  return sc;
}

static void expectBlock(const float* x, float gs, uint8_t wantScale, const uint8_t* want) {
  uint8_t codes[16];
  const uint8_t sc = quantBlock(x, gs, codes);
  if (sc != wantScale) fail_msg("gs %a: scale 0x%02x want 0x%02x", (double)gs, sc, wantScale);
  for (int i = 0; i < 16; i++)
    if (codes[i] != want[i]) fail_msg("gs %a, x[%d] = %a: code 0x%x want 0x%x", (double)gs, i, (double)x[i], codes[i], want[i]);
}

static void test_recipe_vectors(void** state) {
  (void)state;
  /* gs = 1: SF = 6 * (1 * 0x1.555556p-3) rounds to 1.0 (0x38), outScale = 1,
   * so every element is e2m1(x) itself. */
  {
    const float x[16] = {6.0f, 0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f,
                         -0.25f, -0.75f, -5.0f, 0.0f, -0.0f, 0.1f, 5.5f, -6.0f};
    const uint8_t w[16] = {0x7, 0x0, 0x2, 0x2, 0x4, 0x4, 0x6, 0x6, 0x8, 0xA, 0xE, 0x0, 0x8, 0x0, 0x7, 0xF};
    expectBlock(x, 1.0f, 0x38, w);
  }
  /* gs = 6: gs * (1/6) = 1 exactly, 1/gs = 0x1.555556p-3. amax 2: scale 2.0
   * (0x40), 1 / (2 * 0x1.555556p-3) = 2.99999991 rounds to 3: p = 3x. */
  {
    const float x[16] = {2.0f, 1.0f, -0.5f, 0.25f, 0.4f, 0.5f, 1.0f / 3, -2.0f,
                         0.0f, 1.5f, 0.0833333f, 0.0833334f, -1.0f, 0.6f, 1.25f, 1.9f};
    const uint8_t w[16] = {0x7, 0x5, 0xB, 0x2, 0x2, 0x3, 0x2, 0xF, 0x0, 0x6, 0x0, 0x1, 0xD, 0x4, 0x6, 0x7};
    expectBlock(x, 6.0f, 0x40, w);
  }
  /* Subnormal scales, gs = 6: amax 2^-8 -> 0x02, outScale 6 * 2^8 = 1536. */
  {
    const float x[16] = {0x1p-8f, 0x1p-9f, -0x1p-10f, 0x1.8p-9f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t w[16] = {0x7, 0x5, 0xB, 0x6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expectBlock(x, 6.0f, 0x02, w);
  }
  /* amax 1.5 x 2^-9: tie between subnormal codes 1 and 2 -> 2 (2^-8), outScale 1536. */
  {
    const float x[16] = {0x1.8p-9f, -0x1.8p-9f, 0x1p-12f, 0x1p-13f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t w[16] = {0x6, 0xE, 0x1, 0x0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}; /* 4.5, -4.5, 0.375, 0.1875 */
    expectBlock(x, 6.0f, 0x02, w);
  }
  /* Tiny gs: SF underflows to scale 0, outScale = min(1/0, FLT_MAX) =
   * FLT_MAX; 2^-127 * FLT_MAX = 1.99999988 -> 2.0. */
  {
    const float x[16] = {1.0f, -1.0f, 0x1p-127f, 0.0f, 0x1p-130f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t w[16] = {0x7, 0xF, 0x4, 0x0, 0x0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expectBlock(x, 0x1.8p-98f /* 6 x 2^-100 */, 0x00, w);
  }
  /* Huge gs: SF = 2^100 saturates at 448 (0x7E); outScale ~ 0.0134 x 2^100. */
  {
    const float x[16] = {1.0f, 0.5f, -1.0f, 0.0f, 0x1p-100f, -0x1p-120f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t w[16] = {0x7, 0x7, 0xF, 0x0, 0x0, 0x8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expectBlock(x, 0x1.8p+102f /* 6 x 2^100 */, 0x7e, w);
  }
  /* Blocks of zeros: scale 0, outScale 0, codes 0 (negative zeros: 0x8). */
  {
    const float z[16] = {0};
    const uint8_t w[16] = {0};
    expectBlock(z, 1.0f, 0x00, w);
    float nz[16];
    uint8_t wn[16];
    for (int i = 0; i < 16; i++) { nz[i] = (i & 1) ? -0.0f : 0.0f; wn[i] = (i & 1) ? 0x8 : 0x0; }
    expectBlock(nz, 1.0f, 0x00, wn);
  }
  /* NaN in a block: amax NaN -> scale 0x7F, outScale FLT_MAX: finite
   * non-zero values saturate, NaN -> 0x7, zeros stay zeros. */
  {
    const float x[16] = {1.0f, NAN, -0.001f, 0.0f, -NAN, -0.0f, 1e-30f, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t w[16] = {0x7, 0x7, 0xF, 0x0, 0x7, 0x8, 0x7, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expectBlock(x, 6.0f, 0x7f, w);
  }
  /* Inf in a block, gs = 6: SF = Inf -> 448 (0x7E), outScale =
   * 1/(448 x 0x1.555556p-3) ~ 0.01339: Inf -> 6, 80 -> 1.07 -> 1.0. */
  {
    const float x[16] = {INFINITY, -INFINITY, 80.0f, 1.0f, -300.0f, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    const uint8_t w[16] = {0x7, 0xF, 0x2, 0x0, 0xE, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    expectBlock(x, 6.0f, 0x7e, w);
  }
}

/* bf16 and fp16 inputs holding the same values give the fp32 result. */
static void test_input_types(void** state) {
  (void)state;
  vtRng rng = vtRngMake(vtSeed(), 1);
  enum { R = 3, C = 64 };
  float x[R * C];
  uint16_t xb[R * C], xh[R * C];
  for (int i = 0; i < R * C; i++) {
    x[i] = vcollBf16ToF32(vcollF32ToBf16((float)(vtNormal(&rng) * 3.0)));
    x[i] = vcollF16ToF32(vcollF32ToF16(x[i])); /* representable in both */
    xb[i] = vcollF32ToBf16(x[i]);
    xh[i] = vcollF32ToF16(x[i]);
    assert_true(vcollBf16ToF32(xb[i]) == x[i] && vcollF16ToF32(xh[i]) == x[i]);
  }
  uint8_t p[3][R * C / 2], s[3][R * C / 16];
  float gs[3];
  assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, R, C, &gs[0], 1, p[0], s[0], vcollScaleLinear), 0);
  assert_int_equal(vcollNvfp4QuantizeRef(xb, vcollBfloat16, R, C, &gs[1], 1, p[1], s[1], vcollScaleLinear), 0);
  assert_int_equal(vcollNvfp4QuantizeRef(xh, vcollFloat16, R, C, &gs[2], 1, p[2], s[2], vcollScaleLinear), 0);
  for (int t = 1; t < 3; t++) {
    assert_true(bits(gs[t]) == bits(gs[0]));
    assert_memory_equal(p[t], p[0], sizeof(p[0]));
    assert_memory_equal(s[t], s[0], sizeof(s[0]));
  }
}

static void test_global_scale(void** state) {
  (void)state;
  float x[32] = {0}, gs = -1.0f;
  uint8_t p[16], s[2];
  /* amax over finite values: 4 -> 2688 / 4 = 672; Inf and NaN are skipped. */
  x[3] = -4.0f; x[7] = 1.0f; x[20] = INFINITY; x[21] = NAN; x[22] = -INFINITY;
  assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, 1, 32, &gs, 1, p, s, vcollScaleLinear), vcollSuccess);
  assert_true(gs == 672.0f);
  /* all zeros (and no finite non-zero value) -> 1.0 */
  memset(x, 0, sizeof(x));
  x[5] = NAN;
  gs = -1.0f;
  assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 16, &gs, 1, p, s, vcollScaleLinear), vcollSuccess);
  assert_true(gs == 1.0f);
  /* rows == 0 -> 1.0, nothing else touched (NULL buffers allowed) */
  gs = -1.0f;
  assert_int_equal(vcollNvfp4QuantizeRef(NULL, vcollFloat32, 0, 16, &gs, 1, NULL, NULL, vcollScaleLinear), 0);
  assert_true(gs == 1.0f);
  /* tiny amax: 2688 / 1e-38 overflows, clamped to FLT_MAX */
  memset(x, 0, sizeof(x));
  x[0] = 1e-38f;
  assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, 1, 32, &gs, 1, p, s, vcollScaleLinear), vcollSuccess);
  assert_true(gs == FLT_MAX);
  /* a given scale is read, not written */
  gs = 3.0f;
  assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, 1, 32, &gs, 0, p, s, vcollScaleLinear), vcollSuccess);
  assert_true(gs == 3.0f);
}

/* ---------------------------------------------------------------------- */
/* Layouts                                                                  */

static void test_sizes_and_swizzle(void** state) {
  (void)state;
  assert_int_equal(vcollNvfp4PayloadBytes(3, 32), 48);
  assert_int_equal(vcollNvfp4PayloadBytes(3, 24), 0);
  assert_int_equal(vcollNvfp4PayloadBytes(0, 7168), 0);
  assert_int_equal(vcollNvfp4ScaleBytes(3, 32, vcollScaleLinear), 6);
  assert_int_equal(vcollNvfp4ScaleBytes(3, 32, vcollScaleSwizzled128x4), 128 * 4);
  assert_int_equal(vcollNvfp4ScaleBytes(129, 7168, vcollScaleSwizzled128x4), 256 * 448);
  assert_int_equal(vcollNvfp4ScaleBytes(128, 80, vcollScaleSwizzled128x4), 128 * 8);
  assert_int_equal(vcollNvfp4ScaleBytes(0, 16, vcollScaleSwizzled128x4), 0);
  assert_int_equal(vcollNvfp4ScaleBytes(1, 17, vcollScaleLinear), 0);
  assert_int_equal(vcollNvfp4ScaleBytes(1, 16, (vcollScaleLayout_t)7), 0);
  assert_int_equal(vcollNvfp4PayloadBytes(SIZE_MAX / 8, 32), 0); /* overflow */
  /* offset = ((m/128) * ceil(Kc/4) + k/4) * 512 + (m%32)*16 + ((m%128)/32)*4 + k%4 */
  static const struct { size_t m, k, kc, off; } v[] = {
      {0, 0, 8, 0},     {0, 1, 8, 1},     {0, 3, 8, 3},       {0, 4, 8, 512},   {1, 0, 8, 16},
      {31, 0, 8, 496},  {32, 0, 8, 4},    {64, 0, 8, 8},      {96, 3, 8, 15},   {127, 0, 8, 508},
      {128, 0, 8, 1024}, {129, 5, 8, 1024 + 512 + 16 + 1},  {200, 2, 5, (1 * 2 + 0) * 512 + 8 * 16 + 2 * 4 + 2},
  };
  for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
    if (vcollNvfp4SwizzleOffset(v[i].m, v[i].k, v[i].kc) != v[i].off)
      fail_msg("swizzle(%zu, %zu, Kc %zu) = %zu, want %zu", v[i].m, v[i].k, v[i].kc,
               vcollNvfp4SwizzleOffset(v[i].m, v[i].k, v[i].kc), v[i].off);
}

/* Swizzled quantization = linear quantization + conversion; padding is
 * zero; conversions round-trip. */
static void test_layouts(void** state) {
  (void)state;
  vtRng rng = vtRngMake(vtSeed(), 2);
  static const size_t shapes[][2] = {{1, 16}, {5, 48}, {127, 32}, {128, 64}, {129, 80}, {300, 208}};
  for (size_t si = 0; si < sizeof(shapes) / sizeof(shapes[0]); si++) {
    const size_t R = shapes[si][0], C = shapes[si][1];
    const size_t lin = vcollNvfp4ScaleBytes(R, C, vcollScaleLinear);
    const size_t swz = vcollNvfp4ScaleBytes(R, C, vcollScaleSwizzled128x4);
    float* x = malloc(R * C * 4);
    uint8_t *p1 = malloc(R * C / 2), *p2 = malloc(R * C / 2);
    uint8_t *s1 = malloc(lin), *s2 = malloc(swz), *s3 = malloc(swz), *s4 = malloc(lin);
    for (size_t i = 0; i < R * C; i++) x[i] = (float)vtNormal(&rng);
    float gs = 100.0f;
    /* Different poison in the two runs' outputs: equal bytes were written by both. */
    vtPoison(p1, R * C / 2);
    vtPoison(s1, lin);
    memset(p2, 0x5A, R * C / 2);
    vtPoison(s2, swz);
    assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, R, C, &gs, 0, p1, s1, vcollScaleLinear), 0);
    assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, R, C, &gs, 0, p2, s2, vcollScaleSwizzled128x4), 0);
    assert_memory_equal(p1, p2, R * C / 2);
    vtPoison(s3, swz);
    assert_int_equal(vcollNvfp4ConvertScalesRef(s1, vcollScaleLinear, s3, vcollScaleSwizzled128x4, R, C), 0);
    assert_memory_equal(s2, s3, swz); /* padding included: zeros in both */
    const size_t kc = C / 16;
    for (size_t m = 0; m < (R + 127) / 128 * 128; m++)
      for (size_t k = 0; k < (kc + 3) / 4 * 4; k++) {
        const uint8_t b = s2[vcollNvfp4SwizzleOffset(m, k, kc)];
        if (m < R && k < kc) assert_int_equal(b, s1[m * kc + k]);
        else assert_int_equal(b, 0);
      }
    vtPoison(s4, lin);
    assert_int_equal(vcollNvfp4ConvertScalesRef(s2, vcollScaleSwizzled128x4, s4, vcollScaleLinear, R, C), 0);
    assert_memory_equal(s1, s4, lin);
    free(x); free(p1); free(p2); free(s1); free(s2); free(s3); free(s4);
  }
}

/* ---------------------------------------------------------------------- */
/* Dequantization                                                           */

static void test_dequant_vectors(void** state) {
  (void)state;
  /* codes 0..15 in one block; scale 2.0 (0x40), gs 6: out = (v * 2) / 6. */
  uint8_t pay[8], sc = 0x40;
  for (int j = 0; j < 8; j++) pay[j] = (uint8_t)((2 * j) | ((2 * j + 1) << 4));
  float gs = 6.0f, out[16];
  assert_int_equal(vcollNvfp4DequantizeRef(pay, &sc, vcollScaleLinear, &gs, 1, 16, out, vcollFloat32), 0);
  static const float mag[8] = {0, 0.5f, 1, 1.5f, 2, 3, 4, 6};
  for (int i = 0; i < 16; i++) {
    const float want = ((i & 8) ? -mag[i & 7] : mag[i & 7]) * 2.0f / 6.0f;
    assert_true(bits(out[i]) == bits(want));
  }
  assert_true(out[8] == 0.0f && signbit(out[8])); /* code 0x8 -> -0.0 */
  assert_true(out[7] == 2.0f && out[5] == 1.0f && out[3] == 0.5f);
  /* (value * scale) / gs with one rounding, not value * (scale / gs) with
   * two: scale 1.0, gs 7 (1.5 / 7 rounds differently the two ways). */
  sc = 0x38;
  float gs7 = 7.0f;
  assert_int_equal(vcollNvfp4DequantizeRef(pay, &sc, vcollScaleLinear, &gs7, 1, 16, out, vcollFloat32), 0);
  for (int i = 0; i < 16; i++) {
    const float want = (float)(((i & 8) ? -(double)mag[i & 7] : (double)mag[i & 7]) / 7.0);
    assert_true(bits(out[i]) == bits(want));
  }
  /* bf16 and fp16 outputs: 1/3 (code 1 at scale 4, gs 6) rounds to nearest even */
  uint16_t o16[16];
  sc = 0x48; /* 4.0 */
  assert_int_equal(vcollNvfp4DequantizeRef(pay, &sc, vcollScaleLinear, &gs, 1, 16, o16, vcollBfloat16), 0);
  assert_int_equal(o16[1], 0x3eab);  /* 0.5 * 4 / 6 = 1/3 -> bf16 0x3EAB */
  assert_int_equal(o16[15], 0xc080); /* -6 * 4 / 6 = -4 */
  assert_int_equal(vcollNvfp4DequantizeRef(pay, &sc, vcollScaleLinear, &gs, 1, 16, o16, vcollFloat16), 0);
  assert_int_equal(o16[1], 0x3555);  /* 1/3 -> fp16 0x3555 */
  assert_int_equal(o16[8], 0x8000);  /* -0 */
  /* NaN scale -> NaN outputs (canonical), zero codes included */
  sc = 0x7f;
  assert_int_equal(vcollNvfp4DequantizeRef(pay, &sc, vcollScaleLinear, &gs, 1, 16, out, vcollFloat32), 0);
  for (int i = 0; i < 16; i++) assert_true(bits(out[i]) == 0x7fffffffu);
}

/* Quantize then dequantize random data (normal, heavy tailed, all-equal
 * blocks). With u = sf / gs the decoded unit of a block, x / u is rounded
 * to an E2M1 value, so |x - x'| <= u * max(1, amax_b / u - 6): half the
 * largest E2M1 spacing, or what saturation cuts off when sf rounded down. */
static void test_roundtrip_bound(void** state) {
  (void)state;
  vtRng rng = vtRngMake(vtSeed(), 3);
  enum { R = 200, C = 256 };
  float* x = malloc(R * C * 4);
  float* y = malloc(R * C * 4);
  uint8_t* p = malloc(R * C / 2);
  uint8_t* s = malloc(R * C / 16);
  for (int dist = 0; dist < 3; dist++) {
    for (size_t i = 0; i < R * C; i++) {
      double v = vtNormal(&rng);
      if (dist == 1) v = v / (fabs(vtNormal(&rng)) + 1e-3); /* ratio of normals: heavy tails */
      if (dist == 2) v = (double)((i / 16) % 7) - 3.0;      /* all-equal blocks */
      x[i] = (float)v;
    }
    float gs;
    assert_int_equal(vcollNvfp4QuantizeRef(x, vcollFloat32, R, C, &gs, 1, p, s, vcollScaleLinear), 0);
    assert_int_equal(vcollNvfp4DequantizeRef(p, s, vcollScaleLinear, &gs, R, C, y, vcollFloat32), 0);
    double sumSq = 0, sumX = 0;
    for (size_t i = 0; i < R * C; i++) {
      double amax = 0;
      for (size_t j = i / 16 * 16; j < i / 16 * 16 + 16; j++) amax = fmax(amax, fabs((double)x[j]));
      const double unit = (double)vcollE4m3ToF32(s[i / 16]) / gs;
      const double bound = unit * fmax(1.0, amax / unit - 6.0) * (1 + 1e-5);
      const double err = fabs((double)x[i] - y[i]);
      if (err > bound) fail_msg("dist %d, x[%zu] = %g -> %g: error %g > %g", dist, i, x[i], y[i], err, bound);
      sumSq += err * err;
      sumX += (double)x[i] * x[i];
    }
    print_message("# roundtrip dist %d: gs %g, relative rms error %.4f\n", dist, gs, sqrt(sumSq / sumX));
  }
  free(x); free(y); free(p); free(s);
}

/* ---------------------------------------------------------------------- */
/* Argument errors                                                          */

static void expectArgErr(vcollResult_t res, const char* fn, const char* arg) {
  assert_int_equal(res, vcollInvalidArgument);
  const char* msg = vcollGetLastError(NULL);
  if (!strstr(msg, fn) || !strstr(msg, arg)) fail_msg("message \"%s\" should name %s and %s", msg, fn, arg);
}

static void test_arg_errors(void** state) {
  (void)state;
  float x[64];
  uint8_t pay[32], sc[1024];
  float gs = 1.0f;
  for (int i = 0; i < 64; i++) x[i] = (float)i;
  vtPoison(pay, sizeof(pay));
  vtPoison(sc, sizeof(sc));
  const char* Q = "vcollNvfp4QuantizeRef";
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollInt32, 2, 32, &gs, 0, pay, sc, vcollScaleLinear), Q, "dtype");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat8e4m3, 2, 32, &gs, 0, pay, sc, vcollScaleLinear), Q, "dtype");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 24, &gs, 0, pay, sc, vcollScaleLinear), Q, "cols");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 0, &gs, 0, pay, sc, vcollScaleLinear), Q, "cols");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, &gs, 0, pay, sc, (vcollScaleLayout_t)2), Q, "layout");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, NULL, 1, pay, sc, vcollScaleLinear), Q, "globalScale");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, (float*)((char*)&gs + 1), 0, pay, sc, vcollScaleLinear), Q,
               "globalScale");
  expectArgErr(vcollNvfp4QuantizeRef(NULL, vcollFloat32, 2, 32, &gs, 0, pay, sc, vcollScaleLinear), Q, "x");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, &gs, 0, NULL, sc, vcollScaleLinear), Q, "payload");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, &gs, 0, pay, NULL, vcollScaleLinear), Q, "scales");
  expectArgErr(vcollNvfp4QuantizeRef((char*)x + 2, vcollFloat32, 2, 32, &gs, 0, pay, sc, vcollScaleLinear), Q, "x");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, &gs, 0, x + 8, sc, vcollScaleLinear), Q, "payload");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, &gs, 0, pay, pay + 31, vcollScaleLinear), Q, "scales");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, x + 3, 1, pay, sc, vcollScaleLinear), Q, "globalScale");
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, SIZE_MAX / 4, 32, &gs, 0, pay, sc, vcollScaleLinear), Q,
               "overflow");
  /* swizzled scales of 2 rows take 512 bytes: pay + 0 .. 31 overlaps them */
  expectArgErr(vcollNvfp4QuantizeRef(x, vcollFloat32, 2, 32, &gs, 0, sc + 100, sc, vcollScaleSwizzled128x4), Q,
               "scales");
  assert_true(vtIsPoisoned(pay, sizeof(pay)) && vtIsPoisoned(sc, sizeof(sc)));
  assert_true(gs == 1.0f);

  const char* D = "vcollNvfp4DequantizeRef";
  float out[64];
  vtPoison(out, sizeof(out));
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, vcollScaleLinear, &gs, 2, 32, out, vcollInt8), D, "outType");
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, vcollScaleLinear, &gs, 2, 40, out, vcollFloat32), D, "cols");
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, (vcollScaleLayout_t)-1, &gs, 2, 32, out, vcollFloat32), D, "layout");
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, vcollScaleLinear, NULL, 2, 32, out, vcollFloat32), D, "globalScale");
  expectArgErr(vcollNvfp4DequantizeRef(NULL, sc, vcollScaleLinear, &gs, 2, 32, out, vcollFloat32), D, "payload");
  expectArgErr(vcollNvfp4DequantizeRef(pay, NULL, vcollScaleLinear, &gs, 2, 32, out, vcollFloat32), D, "scales");
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, vcollScaleLinear, &gs, 2, 32, NULL, vcollFloat32), D, "out");
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, vcollScaleLinear, &gs, 2, 32, (char*)out + 1, vcollBfloat16), D,
               "out");
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, vcollScaleLinear, &gs, 2, 32, pay + 4, vcollFloat32), D, "out");
  expectArgErr(vcollNvfp4DequantizeRef(pay, sc, vcollScaleLinear, out + 7, 2, 32, out, vcollFloat32), D,
               "overlaps globalScale");
  expectArgErr(vcollNvfp4DequantizeRef(pay, (const uint8_t*)(out + 40), vcollScaleLinear, &gs, 2, 32, out,
                                       vcollFloat32), D, "overlaps scales");
  assert_true(vtIsPoisoned(out, sizeof(out)));

  const char* V = "vcollNvfp4ConvertScalesRef";
  uint8_t dst[1024];
  vtPoison(dst, sizeof(dst));
  expectArgErr(vcollNvfp4ConvertScalesRef(sc, (vcollScaleLayout_t)5, dst, vcollScaleLinear, 2, 32), V, "srcLayout");
  expectArgErr(vcollNvfp4ConvertScalesRef(sc, vcollScaleLinear, dst, (vcollScaleLayout_t)5, 2, 32), V, "dstLayout");
  expectArgErr(vcollNvfp4ConvertScalesRef(sc, vcollScaleLinear, dst, vcollScaleSwizzled128x4, 2, 33), V, "cols");
  expectArgErr(vcollNvfp4ConvertScalesRef(NULL, vcollScaleLinear, dst, vcollScaleSwizzled128x4, 2, 32), V, "src");
  expectArgErr(vcollNvfp4ConvertScalesRef(sc, vcollScaleLinear, NULL, vcollScaleSwizzled128x4, 2, 32), V, "dst");
  expectArgErr(vcollNvfp4ConvertScalesRef(sc, vcollScaleLinear, sc + 2, vcollScaleSwizzled128x4, 2, 32), V, "dst");
  assert_true(vtIsPoisoned(dst, sizeof(dst)));
  /* rows == 0: nothing to do, NULL buffers fine */
  assert_int_equal(vcollNvfp4ConvertScalesRef(NULL, vcollScaleLinear, NULL, vcollScaleSwizzled128x4, 0, 32), 0);
  assert_int_equal(vcollNvfp4DequantizeRef(NULL, NULL, vcollScaleLinear, &gs, 0, 32, NULL, vcollFloat32), 0);
}

/* The device entry points validate the same way, before touching the GPU
 * (so this runs without one): nothing is launched. */
static void test_device_arg_errors(void** state) {
  (void)state;
  char buf[256] = {0};
  float* gs = (float*)buf;
  void* x = buf + 16;
  expectArgErr(vcollNvfp4Quantize(x, vcollBfloat16, 1, 40, gs, 0, buf + 128, buf + 200, vcollScaleLinear, 0),
               "vcollNvfp4Quantize", "cols");
  expectArgErr(vcollNvfp4Quantize(x, vcollInt8, 1, 32, gs, 1, buf + 128, buf + 200, vcollScaleLinear, 0),
               "vcollNvfp4Quantize", "dtype");
  expectArgErr(vcollNvfp4Quantize(x, vcollBfloat16, 1, 32, NULL, 1, buf + 128, buf + 200, vcollScaleLinear, 0),
               "vcollNvfp4Quantize", "globalScale");
  expectArgErr(vcollNvfp4Quantize(x, vcollBfloat16, 1, 32, gs, 1, buf + 128, NULL, vcollScaleLinear, 0),
               "vcollNvfp4Quantize", "scales");
  expectArgErr(vcollNvfp4Quantize(x, vcollBfloat16, 1, 32, gs, 1, buf + 20, buf + 200, vcollScaleLinear, 0),
               "vcollNvfp4Quantize", "payload");
  expectArgErr(vcollNvfp4Dequantize(buf + 128, buf + 200, vcollScaleLinear, gs, 1, 32, NULL, vcollFloat16, 0),
               "vcollNvfp4Dequantize", "out");
  expectArgErr(vcollNvfp4Dequantize(buf + 128, buf + 200, (vcollScaleLayout_t)3, gs, 1, 32, x, vcollFloat16, 0),
               "vcollNvfp4Dequantize", "layout");
  expectArgErr(vcollNvfp4ConvertScales(buf, vcollScaleLinear, buf + 1, vcollScaleSwizzled128x4, 1, 32, 0),
               "vcollNvfp4ConvertScales", "dst");
  expectArgErr(vcollNvfp4ConvertScales(buf, vcollScaleLinear, NULL, vcollScaleSwizzled128x4, 1, 32, 0),
               "vcollNvfp4ConvertScales", "dst");
  /* nothing to do: no launch, success */
  assert_int_equal(vcollNvfp4Quantize(NULL, vcollFloat32, 0, 32, gs, 0, NULL, NULL, vcollScaleLinear, 0), 0);
  assert_int_equal(vcollNvfp4ConvertScales(NULL, vcollScaleLinear, NULL, vcollScaleLinear, 0, 16, 0), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_e2m1_vectors),      cmocka_unit_test(test_e2m1_vs_cuda),
      cmocka_unit_test(test_e4m3_vectors),      cmocka_unit_test(test_e4m3_vs_cuda),
      cmocka_unit_test(test_recipe_vectors),    cmocka_unit_test(test_input_types),
      cmocka_unit_test(test_global_scale),      cmocka_unit_test(test_sizes_and_swizzle),
      cmocka_unit_test(test_layouts),           cmocka_unit_test(test_dequant_vectors),
      cmocka_unit_test(test_roundtrip_bound),   cmocka_unit_test(test_arg_errors),
      cmocka_unit_test(test_device_arg_errors),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
