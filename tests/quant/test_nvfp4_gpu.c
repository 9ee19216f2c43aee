/* NVFP4 kernels against the CPU reference (suite gpu). Fresh random inputs
 * every run (normal, heavy tailed, all-equal blocks, zero blocks, Inf/NaN/
 * subnormals sprinkled in); payload, scales (padding included) and the
 * computed global scale must be bit-identical, dequantized outputs too (NaN
 * payloads aside). Outputs are poisoned, with a guard after each that must
 * stay poisoned. The E2M1 conversion is checked for all 2^32 floats against
 * CUDA's. Without a GPU every test is skipped and the program exits 77. */
#include "vt.h"

#include <cuda_runtime_api.h>
#include <float.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nvfp4_ref.h"
#include "vcoll/nvfp4.h"

#define CUDA_OK(call)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess) fail_msg("%s failed: %s", #call, cudaGetErrorString(e_));         \
  } while (0)

int nvfp4TestE2m1Exhaustive(unsigned long long* mismatches, uint32_t* firstBad);
int nvfp4TestE2m1Codes(uint32_t first, uint64_t groups, uint32_t* devOut);

enum { kGuard = 64 };

static float f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

static void test_e2m1_exhaustive(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  unsigned long long bad = 0;
  uint32_t first = 0;
  CUDA_OK((cudaError_t)nvfp4TestE2m1Exhaustive(&bad, &first));
  print_message("# e2m1 kernel conversion vs __nv_cvt_float_to_fp4: %llu of 2^29 groups of 8 differ\n", bad);
  if (bad) fail_msg("first differing group starts at 0x%08x", first);
  /* and against the CPU reference where the rounding decisions are, both signs */
  const uint64_t groups = (0x41800000u - 0x3d800000u) / 8;
  uint32_t* d;
  uint32_t* h = malloc(groups * 4);
  assert_non_null(h);
  CUDA_OK(cudaMalloc((void**)&d, groups * 4));
  for (uint32_t sign = 0; sign < 2; sign++) {
    const uint32_t base = 0x3d800000u | (sign << 31);
    CUDA_OK((cudaError_t)nvfp4TestE2m1Codes(base, groups, d));
    CUDA_OK(cudaMemcpy(h, d, groups * 4, cudaMemcpyDeviceToHost));
    for (uint64_t g = 0; g < groups; g++)
      for (int i = 0; i < 8; i++) {
        const float x = f32(base + (uint32_t)(g * 8 + i));
        const uint32_t got = (h[g] >> (4 * i)) & 0xf;
        if (got != vcollE2m1Ref(x)) fail_msg("e2m1(%a): kernel 0x%x, reference 0x%x", (double)x, got, vcollE2m1Ref(x));
      }
  }
  CUDA_OK(cudaFree(d));
  free(h);
}

typedef enum { kNormal = 0, kHeavy, kEqualBlocks, kZeroBlocks, kSpecials, kNumDists } Dist;
static const char* distName[] = {"normal", "heavy", "equal", "zeros", "specials"};

static float sample(vtRng* rng, Dist d, size_t i) {
  double v = vtNormal(rng);
  switch (d) {
    case kHeavy: return (float)(v / (fabs(vtNormal(rng)) + 1e-4)); /* ratio of normals */
    case kEqualBlocks: {
      vtRng b = vtRngMake(vtSeed() ^ (i / 16), 7); /* one value per block */
      const double m = (double)vtRange(&b, 1, 1000) / 64.0;
      return (float)(vtNext(&b) & 1 ? -m : m);
    }
    case kZeroBlocks: return ((i / 16) % 3 == 0) ? ((vtNext(rng) & 1) ? -0.0f : 0.0f) : (float)v;
    case kSpecials: {
      const uint64_t r = vtNext(rng) % 400;
      if (r == 0) return NAN;
      if (r == 1) return INFINITY;
      if (r == 2) return -INFINITY;
      if (r == 3) return -0.0f;
      if (r == 4) return (float)(v * 1e-40);
      return (float)(v * 1e3);
    }
    default: return (float)v;
  }
}

static size_t esizeOf(vcollDataType_t t) { return t == vcollFloat32 ? 4 : 2; }

static void storeAs(void* buf, vcollDataType_t t, size_t i, float f) {
  if (t == vcollFloat32) { memcpy((char*)buf + 4 * i, &f, 4); return; }
  const uint16_t h = t == vcollBfloat16 ? vcollF32ToBf16(f) : vcollF32ToF16(f);
  memcpy((char*)buf + 2 * i, &h, 2);
}

static int sameOut(const void* a, const void* b, vcollDataType_t t, size_t i) {
  if (t == vcollFloat32) {
    float x, y;
    memcpy(&x, (const char*)a + 4 * i, 4);
    memcpy(&y, (const char*)b + 4 * i, 4);
    return (isnan(x) && isnan(y)) || memcmp(&x, &y, 4) == 0;
  }
  uint16_t x, y;
  memcpy(&x, (const char*)a + 2 * i, 2);
  memcpy(&y, (const char*)b + 2 * i, 2);
  const uint16_t e = t == vcollBfloat16 ? 0x7f80 : 0x7c00;
  const int nx = (x & 0x7fff) > e, ny = (y & 0x7fff) > e;
  return (nx && ny) || x == y;
}

typedef struct {
  vcollDataType_t type;
  size_t rows, cols;
  Dist dist;
  int computed;
  vcollScaleLayout_t layout;
  int misalign; /* x, payload and out 2 (16-bit types) or 4 bytes off their 16-byte alignment */
} Case;

/* Device memory with kGuard poisoned bytes after n bytes, `off` bytes in. */
static void* devAlloc(size_t n, size_t off, void** base) {
  CUDA_OK(cudaMalloc(base, n + off + kGuard));
  CUDA_OK(cudaMemset(*base, 0xA5, n + off + kGuard));
  return (char*)*base + off;
}

static void expectGuard(const void* devEnd, const char* what) {
  unsigned char g[kGuard];
  CUDA_OK(cudaMemcpy(g, devEnd, kGuard, cudaMemcpyDeviceToHost));
  if (!vtIsPoisoned(g, kGuard)) fail_msg("%s: write past the end", what);
}

static double gErrSum[3], gErrRef[3];

static void runCase(const Case* c, vtRng* rng, cudaStream_t stream) {
  const size_t R = c->rows, C = c->cols, es = esizeOf(c->type), n = R * C;
  const size_t pBytes = vcollNvfp4PayloadBytes(R, C), sBytes = vcollNvfp4ScaleBytes(R, C, c->layout);
  const size_t off = c->misalign ? es : 0;
  void* hx = malloc(n * es + 1);
  uint8_t *hp = malloc(pBytes + 1), *rp = malloc(pBytes + 1), *hs = malloc(sBytes + 1), *rs = malloc(sBytes + 1);
  void *ho = malloc(n * es + 1), *ro = malloc(n * es + 1);
  assert_true(hx && hp && rp && hs && rs && ho && ro);
  for (size_t i = 0; i < n; i++) storeAs(hx, c->type, i, sample(rng, c->dist, i));

  float gs = 1.0f;
  if (!c->computed) {
    static const float given[] = {1.0f, 6.0f, 448.0f, 0.37f, 1e-30f, 1e30f, 2688.0f / 7.5f};
    gs = given[vtRange(rng, 0, 6)];
  }
  void *bx, *bp, *bs, *bo, *bg;
  void* dx = devAlloc(n * es, off, &bx);
  void* dp = devAlloc(pBytes, off, &bp);
  void* ds = devAlloc(sBytes, 0, &bs);
  void* dout = devAlloc(n * es, off * 2, &bo);
  float* dgs = devAlloc(4, 0, &bg);
  if (n) CUDA_OK(cudaMemcpy(dx, hx, n * es, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dgs, &gs, 4, cudaMemcpyHostToDevice));

  assert_int_equal(vcollNvfp4Quantize(dx, c->type, R, C, dgs, c->computed, dp, ds, c->layout, stream), vcollSuccess);
  assert_int_equal(vcollNvfp4Dequantize(dp, ds, c->layout, dgs, R, C, dout, c->type, stream), vcollSuccess);
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaGetLastError());
  float dgsHost;
  CUDA_OK(cudaMemcpy(&dgsHost, dgs, 4, cudaMemcpyDeviceToHost));
  if (pBytes) CUDA_OK(cudaMemcpy(hp, dp, pBytes, cudaMemcpyDeviceToHost));
  if (sBytes) CUDA_OK(cudaMemcpy(hs, ds, sBytes, cudaMemcpyDeviceToHost));
  if (n) CUDA_OK(cudaMemcpy(ho, dout, n * es, cudaMemcpyDeviceToHost));
  expectGuard((char*)dp + pBytes, "payload");
  expectGuard((char*)ds + sBytes, "scales");
  expectGuard((char*)dout + n * es, "out");
  expectGuard((char*)dgs + 4, "globalScale");

  float rgs = gs;
  assert_int_equal(vcollNvfp4QuantizeRef(hx, c->type, R, C, &rgs, c->computed, rp, rs, c->layout), vcollSuccess);
  assert_int_equal(vcollNvfp4DequantizeRef(rp, rs, c->layout, &rgs, R, C, ro, c->type), vcollSuccess);
  char what[160];
  snprintf(what, sizeof(what), "%s %zu x %zu %s, %s gs %g, %s%s", vcollTypeName(c->type), R, C, distName[c->dist],
           c->computed ? "computed" : "given", (double)rgs,
           c->layout == vcollScaleLinear ? "linear" : "swizzled", c->misalign ? ", misaligned" : "");
  if (memcmp(&dgsHost, &rgs, 4) != 0) fail_msg("%s: global scale %a, reference %a", what, (double)dgsHost, (double)rgs);
  for (size_t i = 0; i < pBytes; i++)
    if (hp[i] != rp[i]) fail_msg("%s: payload byte %zu (row %zu) 0x%02x, reference 0x%02x", what, i, i * 2 / C, hp[i], rp[i]);
  for (size_t i = 0; i < sBytes; i++)
    if (hs[i] != rs[i]) fail_msg("%s: scale byte %zu 0x%02x, reference 0x%02x", what, i, hs[i], rs[i]);
  for (size_t i = 0; i < n; i++)
    if (!sameOut(ho, ro, c->type, i)) fail_msg("%s: dequantized element %zu differs from the reference", what, i);

  /* dequantization error of normal inputs under the recipe's global scale
   * (computed; the given scales include deliberately bad ones like 1e-30) */
  const int ti = c->type == vcollFloat32 ? 0 : c->type == vcollBfloat16 ? 1 : 2;
  for (size_t i = 0; i < n && c->dist == kNormal && c->computed; i++) {
    float x = 0, y = 0;
    if (c->type == vcollFloat32) { memcpy(&x, (char*)hx + 4 * i, 4); memcpy(&y, (char*)ho + 4 * i, 4); }
    else {
      uint16_t a, b;
      memcpy(&a, (char*)hx + 2 * i, 2);
      memcpy(&b, (char*)ho + 2 * i, 2);
      x = c->type == vcollBfloat16 ? vcollBf16ToF32(a) : vcollF16ToF32(a);
      y = c->type == vcollBfloat16 ? vcollBf16ToF32(b) : vcollF16ToF32(b);
    }
    gErrSum[ti] += ((double)x - y) * ((double)x - y);
    gErrRef[ti] += (double)x * x;
  }

  CUDA_OK(cudaFree(bx)); CUDA_OK(cudaFree(bp)); CUDA_OK(cudaFree(bs)); CUDA_OK(cudaFree(bo)); CUDA_OK(cudaFree(bg));
  free(hx); free(hp); free(rp); free(hs); free(rs); free(ho); free(ro);
}

static void test_quantize_vs_ref(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng rng = vtRngMake(vtSeed(), 11);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  static const vcollDataType_t types[] = {vcollBfloat16, vcollFloat16, vcollFloat32};
  static const size_t rowsList[] = {0, 1, 127, 128, 129};
  static const size_t colsList[] = {16, 32, 48, 80, 208, 2048, 7168};
  int count = 0;
  for (int t = 0; t < 3; t++) {
    for (size_t r = 0; r < sizeof(rowsList) / sizeof(rowsList[0]); r++)
      for (size_t k = 0; k < sizeof(colsList) / sizeof(colsList[0]); k++)
        for (int v = 0; v < 2; v++) {
          Case c = {types[t], rowsList[r], colsList[k], (Dist)vtRange(&rng, 0, kNumDists - 1), (int)vtRange(&rng, 0, 1),
                    v ? vcollScaleSwizzled128x4 : vcollScaleLinear, vtRange(&rng, 0, 5) == 0};
          runCase(&c, &rng, stream);
          count++;
        }
    /* 10000 rows, every distribution */
    for (int d = 0; d < kNumDists; d++) {
      static const size_t wide[] = {16, 48, 528, 7168, 2064};
      Case c = {types[t], 10000, wide[d], (Dist)d, d & 1, (d >> 1) & 1 ? vcollScaleSwizzled128x4 : vcollScaleLinear,
                d == 4};
      runCase(&c, &rng, stream);
      count++;
    }
  }
  print_message("# %d cases bit-identical to the reference\n", count);
  static const char* tn[] = {"fp32", "bf16", "fp16"};
  for (int i = 0; i < 3; i++)
    if (gErrRef[i] > 0)
      print_message("# dequantization error (normal inputs, computed global scale), %s: relative rms %.4f\n", tn[i], sqrt(gErrSum[i] / gErrRef[i]));
  CUDA_OK(cudaStreamDestroy(stream));
}

static void test_convert_scales(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng rng = vtRngMake(vtSeed(), 12);
  static const size_t shapes[][2] = {{1, 16}, {127, 48}, {128, 64}, {129, 7168}, {1000, 80}, {300, 1024}};
  /* Every shape with aligned and misaligned source and destination (the
   * kernels take word loads and 16-byte stores only where both fit). */
  for (size_t sa = 0; sa < 4 * sizeof(shapes) / sizeof(shapes[0]); sa++) {
    const size_t si = sa / 4, al = sa % 4;
    const size_t srcOff = (al & 1) ? 1 + si % 3 : 0, dstOff = (al & 2) ? 4 * (1 + si % 3) : 0;
    const size_t R = shapes[si][0], C = shapes[si][1];
    const size_t lin = vcollNvfp4ScaleBytes(R, C, vcollScaleLinear), swz = vcollNvfp4ScaleBytes(R, C, vcollScaleSwizzled128x4);
    uint8_t *hl = malloc(lin), *hsw = malloc(swz), *rsw = malloc(swz), *hl2 = malloc(lin);
    for (size_t i = 0; i < lin; i++) hl[i] = (uint8_t)vtNext(&rng);
    void *bl, *bs, *bl2;
    uint8_t* dl = devAlloc(lin, srcOff, &bl);
    uint8_t* ds = devAlloc(swz, dstOff, &bs);
    uint8_t* dl2 = devAlloc(lin, srcOff, &bl2);
    CUDA_OK(cudaMemcpy(dl, hl, lin, cudaMemcpyHostToDevice));
    assert_int_equal(vcollNvfp4ConvertScales(dl, vcollScaleLinear, ds, vcollScaleSwizzled128x4, R, C, 0), 0);
    assert_int_equal(vcollNvfp4ConvertScales(ds, vcollScaleSwizzled128x4, dl2, vcollScaleLinear, R, C, 0), 0);
    CUDA_OK(cudaDeviceSynchronize());
    CUDA_OK(cudaMemcpy(hsw, ds, swz, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(hl2, dl2, lin, cudaMemcpyDeviceToHost));
    assert_int_equal(vcollNvfp4ConvertScalesRef(hl, vcollScaleLinear, rsw, vcollScaleSwizzled128x4, R, C), 0);
    assert_memory_equal(hsw, rsw, swz);
    assert_memory_equal(hl2, hl, lin);
    expectGuard(ds + swz, "swizzled scales");
    expectGuard(dl2 + lin, "linear scales");
    CUDA_OK(cudaFree(bl)); CUDA_OK(cudaFree(bs)); CUDA_OK(cudaFree(bl2));
    free(hl); free(hsw); free(rsw); free(hl2);
  }
}

/* The computed-scale path (memset, amax kernel, quantize kernel) captured
 * in a CUDA graph and replayed on new data; rows == 0 writes 1.0. */
static void test_graph_capture(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng rng = vtRngMake(vtSeed(), 13);
  enum { R = 300, C = 512 };
  const size_t n = (size_t)R * C;
  uint16_t* hx = malloc(n * 2);
  uint8_t *hp = malloc(n / 2), *rp = malloc(n / 2), *hs = malloc(n / 16), *rs = malloc(n / 16);
  void *dx, *dp, *ds;
  float* dgs;
  CUDA_OK(cudaMalloc(&dx, n * 2));
  CUDA_OK(cudaMalloc(&dp, n / 2));
  CUDA_OK(cudaMalloc(&ds, n / 16));
  CUDA_OK(cudaMalloc((void**)&dgs, 4));
  cudaStream_t stream;
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  assert_int_equal(vcollNvfp4Quantize(dx, vcollBfloat16, R, C, dgs, 1, dp, ds, vcollScaleLinear, stream), 0);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int rep = 0; rep < 2; rep++) {
    for (size_t i = 0; i < n; i++) hx[i] = vcollF32ToBf16((float)(vtNormal(&rng) * (rep ? 1e-3 : 50.0)));
    CUDA_OK(cudaMemcpy(dx, hx, n * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaGraphLaunch(exec, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    float g, rg;
    CUDA_OK(cudaMemcpy(&g, dgs, 4, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(hp, dp, n / 2, cudaMemcpyDeviceToHost));
    CUDA_OK(cudaMemcpy(hs, ds, n / 16, cudaMemcpyDeviceToHost));
    assert_int_equal(vcollNvfp4QuantizeRef(hx, vcollBfloat16, R, C, &rg, 1, rp, rs, vcollScaleLinear), 0);
    assert_memory_equal(&g, &rg, 4);
    assert_memory_equal(hp, rp, n / 2);
    assert_memory_equal(hs, rs, n / 16);
  }
  /* rows == 0 with a computed scale: 1.0; all zeros: 1.0 */
  float g = -5.0f;
  CUDA_OK(cudaMemcpy(dgs, &g, 4, cudaMemcpyHostToDevice));
  assert_int_equal(vcollNvfp4Quantize(NULL, vcollBfloat16, 0, C, dgs, 1, NULL, NULL, vcollScaleLinear, stream), 0);
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaMemcpy(&g, dgs, 4, cudaMemcpyDeviceToHost));
  assert_true(g == 1.0f);
  CUDA_OK(cudaMemset(dx, 0, n * 2));
  assert_int_equal(vcollNvfp4Quantize(dx, vcollBfloat16, R, C, dgs, 1, dp, ds, vcollScaleLinear, stream), 0);
  CUDA_OK(cudaStreamSynchronize(stream));
  CUDA_OK(cudaMemcpy(&g, dgs, 4, cudaMemcpyDeviceToHost));
  assert_true(g == 1.0f);
  CUDA_OK(cudaGraphExecDestroy(exec));
  CUDA_OK(cudaGraphDestroy(graph));
  CUDA_OK(cudaStreamDestroy(stream));
  CUDA_OK(cudaFree(dx)); CUDA_OK(cudaFree(dp)); CUDA_OK(cudaFree(ds)); CUDA_OK(cudaFree(dgs));
  free(hx); free(hp); free(rp); free(hs); free(rs);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_e2m1_exhaustive),
      cmocka_unit_test(test_quantize_vs_ref),
      cmocka_unit_test(test_convert_scales),
      cmocka_unit_test(test_graph_capture),
  };
  int failed = cmocka_run_group_tests(tests, NULL, NULL);
  if (failed) return 1;
  return vtHaveGpu() ? 0 : 77; /* meson: skipped, never passed, without a GPU */
}
