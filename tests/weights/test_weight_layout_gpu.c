/* Weight-layout GPU kernel and device copies against the CPU version
 * (suite gpu). Fresh random shapes, alignments and weights every run;
 * outputs poisoned with a guard after each that must stay poisoned; every
 * byte compared. Without a GPU every test is skipped and the program exits
 * 77 (meson: skipped). */
#include "vt.h"

#include <cuda_runtime_api.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll/weight_layout.h"

#define CUDA_OK(call)                                                                \
  do {                                                                               \
    cudaError_t e_ = (call);                                                         \
    if (e_ != cudaSuccess) fail_msg("%s failed: %s", #call, cudaGetErrorString(e_)); \
  } while (0)
#define VCOLL_OK(call)                                                                         \
  do {                                                                                         \
    vcollResult_t r_ = (call);                                                                 \
    if (r_ != vcollSuccess) fail_msg("%s failed: %s", #call, vcollGetLastError(NULL));         \
  } while (0)

enum { kGuard = 64 };

static uint64_t seed;
static int setupSeed(void** state) {
  (void)state;
  seed = vtSeed();
  return 0;
}

static void* xmalloc(size_t n) {
  void* p = malloc(n ? n : 1);
  assert_non_null(p);
  return p;
}

static void fillRandom(vtRng* r, uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)vtNext(r);
}

/* One expert's four tensors on host and device; device pointers may sit at
 * an odd offset into their allocation to exercise the narrow copy paths. */
typedef struct {
  size_t bytes[4]; /* payload, scales, payloadOut, scalesOut */
  size_t off[4];
  uint8_t* h[4];
  uint8_t* dBase[4];
} Exp;

static uint8_t* dptr(const Exp* x, int i) { return x->dBase[i] + x->off[i]; }

static void expMake(Exp* x, vtRng* r, size_t pb, size_t sIn, size_t sOut, int misalign) {
  static const size_t offs[5] = {0, 1, 2, 4, 8};
  const size_t b[4] = {pb, sIn, pb, sOut};
  for (int i = 0; i < 4; i++) {
    x->bytes[i] = b[i];
    x->off[i] = misalign ? offs[vtRange(r, 0, 4)] : 0;
    x->h[i] = xmalloc(b[i] + kGuard);
    CUDA_OK(cudaMalloc((void**)&x->dBase[i], b[i] + 16 + kGuard));
    if (i < 2) {
      fillRandom(r, x->h[i], b[i]);
      CUDA_OK(cudaMemcpy(dptr(x, i), x->h[i], b[i], cudaMemcpyHostToDevice));
    } else {
      CUDA_OK(cudaMemset(x->dBase[i], 0xA5, b[i] + 16 + kGuard));
    }
  }
  /* cudaMemset may still run on the legacy stream, unordered with the non-blocking test streams. */
  CUDA_OK(cudaDeviceSynchronize());
}

static void expFree(Exp* x) {
  for (int i = 0; i < 4; i++) {
    free(x->h[i]);
    CUDA_OK(cudaFree(x->dBase[i]));
  }
}

/* Device outputs of x against the host reference outputs in want[2]. */
static void expCheck(const Exp* x, const uint8_t* wantPay, const uint8_t* wantSc, const char* what) {
  for (int i = 2; i < 4; i++) {
    uint8_t* got = xmalloc(x->bytes[i] + kGuard);
    CUDA_OK(cudaMemcpy(got, dptr(x, i), x->bytes[i] + kGuard, cudaMemcpyDeviceToHost));
    const uint8_t* want = i == 2 ? wantPay : wantSc;
    for (size_t b = 0; b < x->bytes[i]; b++)
      if (got[b] != want[b])
        fail_msg("%s: %s byte %zu: got 0x%02x, want 0x%02x (offset %zu)", what, i == 2 ? "payload" : "scales", b,
                 got[b], want[b], x->off[i]);
    assert_true(vtIsPoisoned(got + x->bytes[i], kGuard));
    free(got);
  }
}

/* Random batches: formats, layouts, kinds, tiles, shapes (row bytes not
 * multiples of 16 included), misaligned pointers, more experts than one
 * launch takes. */
static void test_apply_random(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng r = vtRngMake(seed, 11);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  for (int iter = 0; iter < 32; iter++) {
    const vcollWeightFormat_t fmt = iter & 1 ? vcollWeightMxfp4 : vcollWeightNvfp4;
    const vcollScaleLayout_t lay = iter & 2 ? vcollScaleSwizzled128x4 : vcollScaleLinear;
    const vcollWeightKind_t kind = iter & 4 ? vcollWeightW2 : vcollWeightW13;
    const int tile = iter & 8 ? 64 : 128;
    const int misalign = iter % 3 == 0;
    const size_t blk = fmt == vcollWeightMxfp4 ? 32 : 16;
    const size_t M = (size_t)tile * (size_t)vtRange(&r, 1, 6), K = blk * (size_t)vtRange(&r, 1, 40);
    const int E = iter % 5 == 0 ? (int)vtRange(&r, 65, 150) : (int)vtRange(&r, 1, 8);
    const size_t pb = M * K / 2, sIn = M * (K / blk), sOut = vcollWeightScaleBytes(fmt, M, K, lay);
    int32_t* P = xmalloc(M * 4);
    int32_t* dP;
    VCOLL_OK(vcollWeightPermutation(kind, M, tile, P));
    CUDA_OK(cudaMalloc((void**)&dP, M * 4));
    CUDA_OK(cudaMemcpy(dP, P, M * 4, cudaMemcpyHostToDevice));
    Exp* x = xmalloc((size_t)E * sizeof(Exp));
    vcollWeightExpert_t* dx = xmalloc((size_t)E * sizeof(*dx));
    for (int e = 0; e < E; e++) {
      expMake(&x[e], &r, pb, sIn, sOut, misalign);
      dx[e] = (vcollWeightExpert_t){dptr(&x[e], 0), dptr(&x[e], 1), dptr(&x[e], 2), dptr(&x[e], 3)};
    }
    VCOLL_OK(vcollWeightApply(dP, M, K, fmt, lay, dx, E, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaGetLastError());
    char what[160];
    snprintf(what, sizeof(what), "fmt %d layout %d kind %d tile %d M %zu K %zu E %d misalign %d", fmt, lay, kind, tile,
             M, K, E, misalign);
    for (int e = 0; e < E; e++) {
      vcollWeightExpert_t hx = {x[e].h[0], x[e].h[1], x[e].h[2], x[e].h[3]};
      VCOLL_OK(vcollWeightApplyRef(P, M, K, fmt, lay, &hx, 1));
      expCheck(&x[e], x[e].h[2], x[e].h[3], what);
      expFree(&x[e]);
    }
    CUDA_OK(cudaFree(dP));
    free(P); free(x); free(dx);
  }
  CUDA_OK(cudaStreamDestroy(stream));
}

/* Out-of-range entries give zero rows; the others are gathered. */
static void test_out_of_range(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng r = vtRngMake(seed, 12);
  const size_t M = 256, K = 256, pb = M * K / 2, sb = M * K / 16;
  int32_t P[256], *dP;
  VCOLL_OK(vcollWeightPermutation(vcollWeightW13, M, 128, P));
  P[3] = (int32_t)M;
  P[100] = -1;
  P[255] = INT32_MAX;
  CUDA_OK(cudaMalloc((void**)&dP, sizeof(P)));
  CUDA_OK(cudaMemcpy(dP, P, sizeof(P), cudaMemcpyHostToDevice));
  Exp x;
  expMake(&x, &r, pb, sb, sb, 0);
  vcollWeightExpert_t dx = {dptr(&x, 0), dptr(&x, 1), dptr(&x, 2), dptr(&x, 3)};
  VCOLL_OK(vcollWeightApply(dP, M, K, vcollWeightNvfp4, vcollScaleLinear, &dx, 1, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  uint8_t *wp = xmalloc(pb), *ws = xmalloc(sb);
  for (size_t n = 0; n < M; n++) {
    const int ok = P[n] >= 0 && (size_t)P[n] < M;
    if (ok) {
      memcpy(wp + n * K / 2, x.h[0] + (size_t)P[n] * K / 2, K / 2);
      memcpy(ws + n * K / 16, x.h[1] + (size_t)P[n] * K / 16, K / 16);
    } else {
      memset(wp + n * K / 2, 0, K / 2);
      memset(ws + n * K / 16, 0, K / 16);
    }
  }
  expCheck(&x, wp, ws, "out of range");
  expFree(&x);
  free(wp); free(ws);
  CUDA_OK(cudaFree(dP));
}

static void test_inverse_gpu(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng r = vtRngMake(seed, 13);
  const size_t M = 2048, K = 1024, pb = M * K / 2, sb = M * K / 16;
  int32_t *P = xmalloc(M * 4), *inv = xmalloc(M * 4), *dP, *dInv;
  VCOLL_OK(vcollWeightPermutation(vcollWeightW13, M, 128, P));
  for (size_t n = 0; n < M; n++) inv[P[n]] = (int32_t)n;
  CUDA_OK(cudaMalloc((void**)&dP, M * 4));
  CUDA_OK(cudaMalloc((void**)&dInv, M * 4));
  CUDA_OK(cudaMemcpy(dP, P, M * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dInv, inv, M * 4, cudaMemcpyHostToDevice));
  Exp a, b;
  expMake(&a, &r, pb, sb, sb, 0);
  expMake(&b, &r, pb, sb, sb, 0);
  vcollWeightExpert_t fwd = {dptr(&a, 0), dptr(&a, 1), dptr(&a, 2), dptr(&a, 3)};
  vcollWeightExpert_t back = {dptr(&a, 2), dptr(&a, 3), dptr(&b, 2), dptr(&b, 3)};
  VCOLL_OK(vcollWeightApply(dP, M, K, vcollWeightNvfp4, vcollScaleLinear, &fwd, 1, NULL));
  VCOLL_OK(vcollWeightApply(dInv, M, K, vcollWeightNvfp4, vcollScaleLinear, &back, 1, NULL));
  CUDA_OK(cudaDeviceSynchronize());
  expCheck(&b, a.h[0], a.h[1], "inverse");
  expFree(&a);
  expFree(&b);
  CUDA_OK(cudaFree(dP));
  CUDA_OK(cudaFree(dInv));
  free(P); free(inv);
}

static void test_perm_device(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  int ndev = 0, cur = 0;
  CUDA_OK(cudaGetDeviceCount(&ndev));
  CUDA_OK(cudaGetDevice(&cur));
  VCOLL_OK(vcollWeightCacheClear());
  vcollWeightCacheStats_t st0, st;
  VCOLL_OK(vcollWeightCacheGetStats(&st0));
  vcollWeightPerm_t p;
  const int32_t *h, *d0, *d1;
  size_t M;
  VCOLL_OK(vcollWeightPermGet(vcollWeightW13, 4096, 128, &p));
  VCOLL_OK(vcollWeightPermHost(p, &h, &M));
  for (int dev = 0; dev < ndev; dev++) {
    CUDA_OK(cudaSetDevice(dev));
    VCOLL_OK(vcollWeightPermDevice(p, &d0));
    VCOLL_OK(vcollWeightPermDevice(p, &d1));
    assert_ptr_equal(d0, d1);
    struct cudaPointerAttributes attr;
    CUDA_OK(cudaPointerGetAttributes(&attr, d0));
    assert_int_equal(attr.device, dev);
    int32_t* back = xmalloc(M * 4);
    CUDA_OK(cudaMemcpy(back, d0, M * 4, cudaMemcpyDeviceToHost));
    assert_memory_equal(back, h, M * 4);
    free(back);
  }
  CUDA_OK(cudaSetDevice(cur));
  VCOLL_OK(vcollWeightCacheGetStats(&st));
  assert_int_equal(st.uploads, st0.uploads + (uint64_t)ndev);
  /* Cleared while held: the device copy stays valid until released. */
  VCOLL_OK(vcollWeightCacheClear());
  VCOLL_OK(vcollWeightPermDevice(p, &d1));
  int32_t* back = xmalloc(M * 4);
  CUDA_OK(cudaMemcpy(back, d1, M * 4, cudaMemcpyDeviceToHost));
  assert_memory_equal(back, h, M * 4);
  free(back);
  VCOLL_OK(vcollWeightPermRelease(p));
}

/* A layer through the cache on the GPU against uncached per-expert CPU
 * preparation. The last case is DeepSeek-V3's w13/w2 shape with enough
 * experts that the swizzle workspace takes several passes. */
typedef struct {
  vcollWeightFormat_t fmt;
  vcollScaleLayout_t lay;
  int tile, E;
  size_t H, I;
} LayerCase;

static void runLayer(const LayerCase* c, vtRng* r, cudaStream_t stream, int graph) {
  const size_t blk = c->fmt == vcollWeightMxfp4 ? 32 : 16, E = (size_t)c->E;
  const size_t in[4] = {2 * c->I * c->H / 2, 2 * c->I * (c->H / blk), c->H * c->I / 2, c->H * (c->I / blk)};
  const size_t out[4] = {in[0], vcollWeightScaleBytes(c->fmt, 2 * c->I, c->H, c->lay), in[2],
                         vcollWeightScaleBytes(c->fmt, c->H, c->I, c->lay)};
  uint8_t *h[4], *hw[4], *d[4], *dOut[4];
  for (int i = 0; i < 4; i++) {
    h[i] = xmalloc(in[i] * E);
    hw[i] = xmalloc(out[i] * E);
    fillRandom(r, h[i], in[i] * E);
    CUDA_OK(cudaMalloc((void**)&d[i], in[i] * E));
    CUDA_OK(cudaMalloc((void**)&dOut[i], out[i] * E + kGuard));
    CUDA_OK(cudaMemcpy(d[i], h[i], in[i] * E, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemset(dOut[i], 0xA5, out[i] * E + kGuard));
  }
  CUDA_OK(cudaDeviceSynchronize()); /* the poison lands before the non-blocking stream writes */
  vcollWeightLayer_t L = {c->fmt, c->lay, c->tile, c->E, c->H, c->I, d[0], d[1], d[2], d[3],
                          dOut[0], dOut[1], dOut[2], dOut[3]};
  if (graph) {
    /* Warm the cache and its device copies first: capture then records only kernels and stream-ordered allocations. */
    VCOLL_OK(vcollWeightPrepareLayer(&L, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    for (int i = 0; i < 4; i++) CUDA_OK(cudaMemset(dOut[i], 0xA5, out[i] * E + kGuard));
    CUDA_OK(cudaDeviceSynchronize());
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    VCOLL_OK(vcollWeightPrepareLayer(&L, stream));
    CUDA_OK(cudaStreamEndCapture(stream, &g));
    CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
    CUDA_OK(cudaGraphLaunch(ge, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
    CUDA_OK(cudaGraphExecDestroy(ge));
    CUDA_OK(cudaGraphDestroy(g));
  } else {
    VCOLL_OK(vcollWeightPrepareLayer(&L, stream));
    CUDA_OK(cudaStreamSynchronize(stream));
  }
  CUDA_OK(cudaGetLastError());
  /* Uncached CPU version: fresh permutation, one expert at a time. */
  const size_t M[2] = {2 * c->I, c->H}, K[2] = {c->H, c->I};
  for (int w = 0; w < 2; w++) {
    int32_t* P = xmalloc(M[w] * 4);
    VCOLL_OK(vcollWeightPermutation(w ? vcollWeightW2 : vcollWeightW13, M[w], c->tile, P));
    for (size_t e = 0; e < E; e++) {
      vcollWeightExpert_t x = {h[2 * w] + e * in[2 * w], h[2 * w + 1] + e * in[2 * w + 1], hw[2 * w] + e * out[2 * w],
                               hw[2 * w + 1] + e * out[2 * w + 1]};
      VCOLL_OK(vcollWeightApplyRef(P, M[w], K[w], c->fmt, c->lay, &x, 1));
    }
    free(P);
  }
  for (int i = 0; i < 4; i++) {
    uint8_t* got = xmalloc(out[i] * E + kGuard);
    CUDA_OK(cudaMemcpy(got, dOut[i], out[i] * E + kGuard, cudaMemcpyDeviceToHost));
    for (size_t b = 0; b < out[i] * E; b++)
      if (got[b] != hw[i][b])
        fail_msg("layer fmt %d layout %d tile %d E %d H %zu I %zu graph %d: tensor %d byte %zu: 0x%02x, want 0x%02x",
                 c->fmt, c->lay, c->tile, c->E, c->H, c->I, graph, i, b, got[b], hw[i][b]);
    assert_true(vtIsPoisoned(got + out[i] * E, kGuard));
    free(got);
    free(h[i]);
    free(hw[i]);
    CUDA_OK(cudaFree(d[i]));
    CUDA_OK(cudaFree(dOut[i]));
  }
}

static void test_layer(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng r = vtRngMake(seed, 14);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  VCOLL_OK(vcollWeightCacheClear());
  for (int iter = 0; iter < 8; iter++) {
    LayerCase c = {iter & 1 ? vcollWeightMxfp4 : vcollWeightNvfp4,
                   iter & 2 ? vcollScaleSwizzled128x4 : vcollScaleLinear, iter & 4 ? 64 : 128, 0, 0, 0};
    c.E = (int)vtRange(&r, 1, 20);
    c.H = (size_t)c.tile * (size_t)vtRange(&r, 1, 8);
    c.I = (size_t)c.tile / 2 * (size_t)vtRange(&r, 1, 12);
    runLayer(&c, &r, stream, 0);
    runLayer(&c, &r, stream, 0); /* warm cache */
  }
  /* gpt-oss-like MXFP4 (padded to 3072) and DeepSeek-V3 NVFP4: 80 experts'
   * w13 scales (147 MB) exceed one 128 MiB workspace pass. */
  const LayerCase big[2] = {{vcollWeightMxfp4, vcollScaleSwizzled128x4, 128, 8, 3072, 3072},
                            {vcollWeightNvfp4, vcollScaleSwizzled128x4, 128, 80, 7168, 2048}};
  for (int i = 0; i < 2; i++) runLayer(&big[i], &r, stream, 0);
  vcollWeightCacheStats_t st;
  VCOLL_OK(vcollWeightCacheGetStats(&st));
  assert_true(st.hits > 0);
  CUDA_OK(cudaStreamDestroy(stream));
}

static void test_graph_capture(void** state) {
  (void)state;
  VT_REQUIRE_GPU();
  vtRng r = vtRngMake(seed, 15);
  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  const LayerCase c[2] = {{vcollWeightNvfp4, vcollScaleSwizzled128x4, 128, 5, 1024, 512},
                          {vcollWeightMxfp4, vcollScaleLinear, 64, 3, 512, 256}};
  for (int i = 0; i < 2; i++) runLayer(&c[i], &r, stream, 1);
  /* A cache of one entry: the eager call leaves only w2's permutation, so
   * the captured call finds w13's missing. It must say so and leave the
   * capture intact (no upload, eviction or cudaFree inside it), and write
   * nothing when the graph runs. */
  const LayerCase k = {vcollWeightNvfp4, vcollScaleLinear, 128, 2, 256, 128};
  const size_t E = 2, inW13 = 2 * k.I * k.H / 2, sW13 = 2 * k.I * (k.H / 16), inW2 = k.H * k.I / 2,
               sW2 = k.H * (k.I / 16);
  const size_t bytes[4] = {inW13 * E, sW13 * E, inW2 * E, sW2 * E};
  uint8_t *d[4], *dOut[4];
  for (int i = 0; i < 4; i++) {
    CUDA_OK(cudaMalloc((void**)&d[i], bytes[i]));
    CUDA_OK(cudaMalloc((void**)&dOut[i], bytes[i]));
    CUDA_OK(cudaMemset(d[i], 0x11, bytes[i]));
  }
  vcollWeightLayer_t L = {k.fmt, k.lay, k.tile, k.E, k.H, k.I, d[0], d[1], d[2], d[3], dOut[0], dOut[1], dOut[2], dOut[3]};
  VCOLL_OK(vcollWeightCacheClear());
  VCOLL_OK(vcollWeightCacheSetCapacity(1));
  VCOLL_OK(vcollWeightPrepareLayer(&L, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  for (int i = 0; i < 4; i++) CUDA_OK(cudaMemset(dOut[i], 0xA5, bytes[i]));
  CUDA_OK(cudaDeviceSynchronize());
  vcollWeightCacheStats_t before, after;
  VCOLL_OK(vcollWeightCacheGetStats(&before));
  cudaGraph_t g;
  cudaGraphExec_t ge;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  const vcollResult_t res = vcollWeightPrepareLayer(&L, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &g)); /* fails if the call broke the capture */
  VCOLL_OK(vcollWeightCacheGetStats(&after));
  assert_int_equal(res, vcollInvalidUsage);
  assert_non_null(strstr(vcollGetLastError(NULL), "w13 permutation (M 256, tile 128) is not cached on device"));
  assert_true(after.misses == before.misses && after.uploads == before.uploads && after.evictions == before.evictions);
  CUDA_OK(cudaGraphInstantiate(&ge, g, 0));
  CUDA_OK(cudaGraphLaunch(ge, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  for (int i = 0; i < 4; i++) {
    uint8_t* got = xmalloc(bytes[i]);
    CUDA_OK(cudaMemcpy(got, dOut[i], bytes[i], cudaMemcpyDeviceToHost));
    assert_true(vtIsPoisoned(got, bytes[i])); /* nothing written */
    free(got);
    CUDA_OK(cudaFree(d[i]));
    CUDA_OK(cudaFree(dOut[i]));
  }
  CUDA_OK(cudaGraphExecDestroy(ge));
  CUDA_OK(cudaGraphDestroy(g));
  VCOLL_OK(vcollWeightCacheSetCapacity(VCOLL_WEIGHT_CACHE_DEFAULT_CAPACITY));
  CUDA_OK(cudaStreamDestroy(stream));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_apply_random),
      cmocka_unit_test(test_out_of_range),
      cmocka_unit_test(test_inverse_gpu),
      cmocka_unit_test(test_perm_device),
      cmocka_unit_test(test_layer),
      cmocka_unit_test(test_graph_capture),
  };
  int failed = cmocka_run_group_tests(tests, setupSeed, NULL);
  if (failed) return 1;
  return vtHaveGpu() ? 0 : 77; /* meson: skipped, never passed, without a GPU */
}
