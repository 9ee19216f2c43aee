/* Weight-layout permutations, cache and CPU apply (suite unit). Fresh
 * random shapes and weights every run (seed printed); outputs poisoned,
 * with a poisoned guard after each that must survive. */
#include "vt.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll/weight_layout.h"

enum { kGuard = 64 };

static uint64_t seed;
static int setupSeed(void** state) {
  (void)state;
  seed = vtSeed();
  return 0;
}

/* The formulas, written out here. */
static size_t shuffleS(size_t n, int tile) {
  return tile == 128 ? (n / 32) * 32 + (n % 8) * 4 + (n % 32) / 8 : (n / 16) * 16 + (n % 8) * 2 + (n % 16) / 8;
}
static size_t interleaveG(size_t r, size_t M) { return (r & 1) * (M / 2) + (r >> 1); }

/* 128x4 swizzle as the NVFP4 docs define it (kc = scales per row). */
static size_t swizzleOffset(size_t m, size_t k, size_t kc) {
  const size_t kTiles = (kc + 3) / 4;
  return ((m / 128) * kTiles + k / 4) * 512 + (m % 32) * 16 + ((m % 128) / 32) * 4 + k % 4;
}

static void fillRandom(vtRng* r, uint8_t* p, size_t n) {
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)vtNext(r);
}

static void* xmalloc(size_t n) {
  void* p = malloc(n ? n : 1);
  assert_non_null(p);
  return p;
}

/* Random multiple of tile in [tile, maxTiles * tile]. */
static size_t randomM(vtRng* r, int tile, int maxTiles) { return (size_t)tile * (size_t)vtRange(r, 1, maxTiles); }

static void expectError(vcollResult_t res, const char* fn, const char* what) {
  assert_int_equal(res, vcollInvalidArgument);
  const char* msg = vcollGetLastError(NULL);
  if (strstr(msg, fn) == NULL || strstr(msg, what) == NULL)
    fail_msg("error message \"%s\" should name %s and %s", msg, fn, what);
}

/* ---------------------------------------------------------------------- */

static void test_perm_hand_vectors(void** state) {
  (void)state;
  int32_t p[256];
  /* W2, tile 128: rows 0..31 go (n%8)*4 + n/8. */
  static const int32_t w2t128[12] = {0, 4, 8, 12, 16, 20, 24, 28, 1, 5, 9, 13};
  assert_int_equal(vcollWeightPermutation(vcollWeightW2, 256, 128, p), vcollSuccess);
  assert_memory_equal(p, w2t128, sizeof(w2t128));
  assert_int_equal(p[31], 31);
  assert_int_equal(p[32], 32);
  assert_int_equal(p[33], 36);
  assert_int_equal(p[40], 33);
  /* W2, tile 64: (n%8)*2 + n/8 within 16. */
  static const int32_t w2t64[10] = {0, 2, 4, 6, 8, 10, 12, 14, 1, 3};
  assert_int_equal(vcollWeightPermutation(vcollWeightW2, 128, 64, p), vcollSuccess);
  assert_memory_equal(p, w2t64, sizeof(w2t64));
  assert_int_equal(p[15], 15);
  assert_int_equal(p[16], 16);
  assert_int_equal(p[17], 18);
  /* W13, M 128, tile 64: G[r] = (r&1)*64 + r/2 after the shuffle. */
  static const int32_t w13t64[18] = {0, 1, 2, 3, 4, 5, 6, 7, 64, 65, 66, 67, 68, 69, 70, 71, 8, 9};
  assert_int_equal(vcollWeightPermutation(vcollWeightW13, 128, 64, p), vcollSuccess);
  assert_memory_equal(p, w13t64, sizeof(w13t64));
  /* W13, M 256, tile 128: S = 0,4,8,...; G(4k) = 2k, G(1) = 128, G(5) = 130. */
  assert_int_equal(vcollWeightPermutation(vcollWeightW13, 256, 128, p), vcollSuccess);
  static const int32_t w13t128[10] = {0, 2, 4, 6, 8, 10, 12, 14, 128, 130};
  assert_memory_equal(p, w13t128, sizeof(w13t128));
}

static void test_perm_formulas(void** state) {
  (void)state;
  vtRng r = vtRngMake(seed, 1);
  for (int iter = 0; iter < 40; iter++) {
    const vcollWeightKind_t kind = iter & 1 ? vcollWeightW2 : vcollWeightW13;
    const int tile = iter & 2 ? 64 : 128;
    const size_t M = randomM(&r, tile, 80);
    int32_t* p = xmalloc(M * 4);
    char* seen = calloc(M, 1);
    assert_non_null(seen);
    assert_int_equal(vcollWeightPermutation(kind, M, tile, p), vcollSuccess);
    for (size_t n = 0; n < M; n++) {
      const size_t s = shuffleS(n, tile);
      const size_t want = kind == vcollWeightW13 ? interleaveG(s, M) : s;
      if ((size_t)p[n] != want) fail_msg("kind %d M %zu tile %d: P[%zu] = %d, want %zu", kind, M, tile, n, p[n], want);
      assert_false(seen[p[n]]); /* a bijection */
      seen[p[n]] = 1;
    }
    free(p);
    free(seen);
  }
}

/* Gather of rows of `w` bytes with an arbitrary index array. */
static void gather(const uint8_t* src, uint8_t* dst, const size_t* idx, size_t M, size_t w) {
  for (size_t n = 0; n < M; n++) memcpy(dst + n * w, src + idx[n] * w, w);
}

/* The interleave, then the shuffle, as two separate gathers, against
 * vcollWeightApplyRef with the composed permutation, on payload and scales. */
static void test_two_gathers(void** state) {
  (void)state;
  vtRng r = vtRngMake(seed, 2);
  for (int iter = 0; iter < 24; iter++) {
    const vcollWeightKind_t kind = iter & 1 ? vcollWeightW2 : vcollWeightW13;
    const int tile = iter & 2 ? 64 : 128;
    const vcollWeightFormat_t fmt = iter & 4 ? vcollWeightMxfp4 : vcollWeightNvfp4;
    const size_t blk = fmt == vcollWeightMxfp4 ? 32 : 16;
    const size_t M = randomM(&r, tile, 12), K = blk * (size_t)vtRange(&r, 1, 24);
    const size_t pw = K / 2, sw = K / blk;
    size_t* G = xmalloc(M * sizeof(size_t));
    size_t* S = xmalloc(M * sizeof(size_t));
    for (size_t n = 0; n < M; n++) {
      G[n] = kind == vcollWeightW13 ? interleaveG(n, M) : n;
      S[n] = shuffleS(n, tile);
    }
    uint8_t *pay = xmalloc(M * pw), *sc = xmalloc(M * sw), *t1 = xmalloc(M * pw), *want = xmalloc(M * pw);
    uint8_t *s1 = xmalloc(M * sw), *swant = xmalloc(M * sw);
    uint8_t *out = xmalloc(M * pw + kGuard), *sout = xmalloc(M * sw + kGuard);
    fillRandom(&r, pay, M * pw);
    fillRandom(&r, sc, M * sw);
    gather(pay, t1, G, M, pw);
    gather(t1, want, S, M, pw);
    gather(sc, s1, G, M, sw);
    gather(s1, swant, S, M, sw);
    int32_t* P = xmalloc(M * 4);
    assert_int_equal(vcollWeightPermutation(kind, M, tile, P), vcollSuccess);
    vtPoison(out, M * pw + kGuard);
    vtPoison(sout, M * sw + kGuard);
    vcollWeightExpert_t x = {pay, sc, out, sout};
    assert_int_equal(vcollWeightApplyRef(P, M, K, fmt, vcollScaleLinear, &x, 1), vcollSuccess);
    assert_memory_equal(out, want, M * pw);
    assert_memory_equal(sout, swant, M * sw);
    assert_true(vtIsPoisoned(out + M * pw, kGuard));
    assert_true(vtIsPoisoned(sout + M * sw, kGuard));
    free(G); free(S); free(pay); free(sc); free(t1); free(want); free(s1); free(swant); free(out); free(sout);
    free(P);
  }
}

/* Swizzled scales: byte (m, k) of the 128x4 layout holds source scale
 * (P[m], k); padding is zero. */
static void test_swizzled_scales(void** state) {
  (void)state;
  vtRng r = vtRngMake(seed, 3);
  for (int iter = 0; iter < 16; iter++) {
    const int tile = iter & 1 ? 64 : 128;
    const vcollWeightFormat_t fmt = iter & 2 ? vcollWeightMxfp4 : vcollWeightNvfp4;
    const vcollWeightKind_t kind = iter & 4 ? vcollWeightW2 : vcollWeightW13;
    const size_t blk = fmt == vcollWeightMxfp4 ? 32 : 16;
    const size_t M = randomM(&r, tile, 6), K = blk * (size_t)vtRange(&r, 1, 13), kc = K / blk;
    const size_t outBytes = vcollWeightScaleBytes(fmt, M, K, vcollScaleSwizzled128x4);
    assert_int_equal(outBytes, (M + 127) / 128 * 128 * ((kc + 3) / 4 * 4));
    int32_t* P = xmalloc(M * 4);
    assert_int_equal(vcollWeightPermutation(kind, M, tile, P), vcollSuccess);
    uint8_t *pay = xmalloc(M * K / 2), *sc = xmalloc(M * kc), *out = xmalloc(M * K / 2);
    uint8_t* sout = xmalloc(outBytes + kGuard);
    char* covered = calloc(outBytes, 1);
    assert_non_null(covered);
    fillRandom(&r, pay, M * K / 2);
    for (size_t i = 0; i < M * kc; i++) sc[i] = (uint8_t)vtRange(&r, 1, 255); /* non-zero: padding tells apart */
    vtPoison(sout, outBytes + kGuard);
    vcollWeightExpert_t x = {pay, sc, out, sout};
    assert_int_equal(vcollWeightApplyRef(P, M, K, fmt, vcollScaleSwizzled128x4, &x, 1), vcollSuccess);
    for (size_t m = 0; m < M; m++)
      for (size_t k = 0; k < kc; k++) {
        const size_t o = swizzleOffset(m, k, kc);
        assert_true(o < outBytes);
        assert_int_equal(sout[o], sc[(size_t)P[m] * kc + k]);
        covered[o] = 1;
      }
    for (size_t o = 0; o < outBytes; o++)
      if (!covered[o]) assert_int_equal(sout[o], 0);
    assert_true(vtIsPoisoned(sout + outBytes, kGuard));
    free(P); free(pay); free(sc); free(out); free(sout); free(covered);
  }
}

static void test_inverse(void** state) {
  (void)state;
  vtRng r = vtRngMake(seed, 4);
  for (int iter = 0; iter < 12; iter++) {
    const vcollWeightKind_t kind = iter & 1 ? vcollWeightW2 : vcollWeightW13;
    const int tile = iter & 2 ? 64 : 128;
    const vcollWeightFormat_t fmt = iter & 4 ? vcollWeightMxfp4 : vcollWeightNvfp4;
    const size_t blk = fmt == vcollWeightMxfp4 ? 32 : 16;
    const size_t M = randomM(&r, tile, 16), K = blk * (size_t)vtRange(&r, 1, 16);
    const size_t pb = M * K / 2, sb = M * (K / blk);
    int32_t *P = xmalloc(M * 4), *inv = xmalloc(M * 4);
    assert_int_equal(vcollWeightPermutation(kind, M, tile, P), vcollSuccess);
    for (size_t n = 0; n < M; n++) inv[P[n]] = (int32_t)n;
    uint8_t *pay = xmalloc(pb), *sc = xmalloc(sb), *p1 = xmalloc(pb), *s1 = xmalloc(sb);
    uint8_t *p2 = xmalloc(pb), *s2 = xmalloc(sb);
    fillRandom(&r, pay, pb);
    fillRandom(&r, sc, sb);
    vtPoison(p2, pb);
    vtPoison(s2, sb);
    vcollWeightExpert_t fwd = {pay, sc, p1, s1}, back = {p1, s1, p2, s2};
    assert_int_equal(vcollWeightApplyRef(P, M, K, fmt, vcollScaleLinear, &fwd, 1), vcollSuccess);
    assert_int_equal(vcollWeightApplyRef(inv, M, K, fmt, vcollScaleLinear, &back, 1), vcollSuccess);
    assert_memory_equal(p2, pay, pb);
    assert_memory_equal(s2, sc, sb);
    assert_memory_not_equal(p1, pay, pb); /* the permutation did move rows */
    free(P); free(inv); free(pay); free(sc); free(p1); free(s1); free(p2); free(s2);
  }
}

/* ---------------------------------------------------------------------- */
/* Cache                                                                    */

static void test_cache_basic(void** state) {
  (void)state;
  vcollWeightCacheStats_t st0, st;
  assert_int_equal(vcollWeightCacheClear(), vcollSuccess);
  assert_int_equal(vcollWeightCacheGetStats(&st0), vcollSuccess);
  assert_int_equal(st0.entries, 0);
  vcollWeightPerm_t a, b;
  const size_t M = 4096;
  assert_int_equal(vcollWeightPermGet(vcollWeightW13, M, 128, &a), vcollSuccess);
  assert_int_equal(vcollWeightPermGet(vcollWeightW13, M, 128, &b), vcollSuccess);
  assert_ptr_equal(a, b);
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_int_equal(st.entries, 1);
  assert_int_equal(st.misses, st0.misses + 1);
  assert_int_equal(st.hits, st0.hits + 1);
  const int32_t* h;
  size_t m = 0;
  assert_int_equal(vcollWeightPermHost(a, &h, &m), vcollSuccess);
  assert_int_equal(m, M);
  expectError(vcollWeightPermHost(a, NULL, &m), "vcollWeightPermHost", "host argument is NULL");
  expectError(vcollWeightPermDevice(a, NULL), "vcollWeightPermDevice", "dev argument is NULL");
  int32_t* want = xmalloc(M * 4);
  assert_int_equal(vcollWeightPermutation(vcollWeightW13, M, 128, want), vcollSuccess);
  assert_memory_equal(h, want, M * 4);
  /* Other keys are other entries: kind, M and tile all count. */
  vcollWeightPerm_t c, d, e;
  assert_int_equal(vcollWeightPermGet(vcollWeightW2, M, 128, &c), vcollSuccess);
  assert_int_equal(vcollWeightPermGet(vcollWeightW13, M, 64, &d), vcollSuccess);
  assert_int_equal(vcollWeightPermGet(vcollWeightW13, M + 128, 128, &e), vcollSuccess);
  assert_true(c != a && d != a && e != a && c != d && d != e && c != e);
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_int_equal(st.entries, 4);
  /* Cleared while held: the handles stay readable. */
  assert_int_equal(vcollWeightCacheClear(), vcollSuccess);
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_int_equal(st.entries, 0);
  assert_memory_equal(h, want, M * 4);
  vcollWeightPerm_t a2;
  assert_int_equal(vcollWeightPermGet(vcollWeightW13, M, 128, &a2), vcollSuccess);
  assert_ptr_not_equal(a2, a); /* a new entry after the clear */
  for (vcollWeightPerm_t* p = (vcollWeightPerm_t[]){a, b, c, d, e, a2}, *end = p + 6; p < end; p++)
    assert_int_equal(vcollWeightPermRelease(*p), vcollSuccess);
  assert_int_equal(vcollWeightPermRelease(NULL), vcollSuccess);
  free(want);
}

static void test_cache_eviction(void** state) {
  (void)state;
  vcollWeightCacheStats_t st0, st;
  assert_int_equal(vcollWeightCacheClear(), vcollSuccess);
  assert_int_equal(vcollWeightCacheSetCapacity(2), vcollSuccess);
  assert_int_equal(vcollWeightCacheGetStats(&st0), vcollSuccess);
  assert_int_equal(st0.capacity, 2);
  vcollWeightPerm_t p[3], q;
  for (int i = 0; i < 3; i++) assert_int_equal(vcollWeightPermGet(vcollWeightW2, 128 * (size_t)(i + 1), 128, &p[i]), vcollSuccess);
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_int_equal(st.entries, 2);
  assert_int_equal(st.evictions, st0.evictions + 1);
  /* p[0] was evicted (least recent) but is still held and intact. */
  const int32_t* h;
  size_t m;
  assert_int_equal(vcollWeightPermHost(p[0], &h, &m), vcollSuccess);
  assert_int_equal(m, 128);
  for (size_t n = 0; n < 128; n++) assert_int_equal(h[n], (int32_t)shuffleS(n, 128));
  /* p[1] is still cached: a hit; touching it makes p[2] the LRU one. */
  assert_int_equal(vcollWeightPermGet(vcollWeightW2, 256, 128, &q), vcollSuccess);
  assert_ptr_equal(q, p[1]);
  assert_int_equal(vcollWeightPermRelease(q), vcollSuccess);
  assert_int_equal(vcollWeightPermGet(vcollWeightW2, 128, 128, &q), vcollSuccess); /* miss: evicts p[2] */
  assert_ptr_not_equal(q, p[0]);
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_int_equal(st.evictions, st0.evictions + 2);
  assert_int_equal(st.misses, st0.misses + 4);
  vcollWeightPerm_t again;
  assert_int_equal(vcollWeightPermGet(vcollWeightW2, 256, 128, &again), vcollSuccess);
  assert_ptr_equal(again, p[1]);
  assert_int_equal(vcollWeightPermRelease(again), vcollSuccess);
  /* Shrinking evicts at once. */
  assert_int_equal(vcollWeightCacheSetCapacity(1), vcollSuccess);
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_int_equal(st.entries, 1);
  for (int i = 0; i < 3; i++) assert_int_equal(vcollWeightPermRelease(p[i]), vcollSuccess);
  assert_int_equal(vcollWeightPermRelease(q), vcollSuccess);
  assert_int_equal(vcollWeightCacheSetCapacity(VCOLL_WEIGHT_CACHE_DEFAULT_CAPACITY), vcollSuccess);
  assert_int_equal(vcollWeightCacheClear(), vcollSuccess);
}

/* Many threads get, check and release random keys of a small cache while
 * one of them clears it now and then. */
enum { kThreadsN = 8, kOps = 3000, kKeys = 12 };
static int threadFailures;

static void* cacheWorker(void* arg) {
  const int id = (int)(intptr_t)arg;
  vtRng r = vtRngMake(seed, 100 + (uint64_t)id);
  for (int i = 0; i < kOps; i++) {
    const int key = (int)vtRange(&r, 0, kKeys - 1);
    const vcollWeightKind_t kind = key & 1 ? vcollWeightW2 : vcollWeightW13;
    const int tile = key & 2 ? 64 : 128;
    const size_t M = (size_t)tile * (size_t)(1 + key / 4);
    vcollWeightPerm_t p;
    const int32_t* h;
    size_t m;
    if (vcollWeightPermGet(kind, M, tile, &p) != vcollSuccess || vcollWeightPermHost(p, &h, &m) != vcollSuccess ||
        m != M) {
      __atomic_add_fetch(&threadFailures, 1, __ATOMIC_RELAXED);
      continue;
    }
    for (size_t n = 0; n < M; n++) {
      const size_t s = shuffleS(n, tile);
      if ((size_t)h[n] != (kind == vcollWeightW13 ? interleaveG(s, M) : s)) {
        __atomic_add_fetch(&threadFailures, 1, __ATOMIC_RELAXED);
        break;
      }
    }
    if (id == 0 && i % 97 == 0) vcollWeightCacheClear();
    vcollWeightPermRelease(p);
  }
  return NULL;
}

static void test_cache_threads(void** state) {
  (void)state;
  pthread_t t[kThreadsN];
  vcollWeightCacheStats_t st;
  assert_int_equal(vcollWeightCacheSetCapacity(4), vcollSuccess);
  threadFailures = 0;
  for (int i = 0; i < kThreadsN; i++) assert_int_equal(pthread_create(&t[i], NULL, cacheWorker, (void*)(intptr_t)i), 0);
  for (int i = 0; i < kThreadsN; i++) assert_int_equal(pthread_join(t[i], NULL), 0);
  assert_int_equal(threadFailures, 0);
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_true(st.entries <= 4);
  assert_int_equal(vcollWeightCacheSetCapacity(VCOLL_WEIGHT_CACHE_DEFAULT_CAPACITY), vcollSuccess);
  assert_int_equal(vcollWeightCacheClear(), vcollSuccess);
}

/* ---------------------------------------------------------------------- */
/* A layer: through the cache (cold, then warm) against uncached per-expert
 * preparation, byte for byte. */

typedef struct {
  vcollWeightLayer_t L;
  size_t in[4], out[4]; /* bytes of w13, w13Scales, w2, w2Scales and their outputs */
  uint8_t *src[4], *dst[4];
} Layer;

static void layerMake(Layer* y, vtRng* r, vcollWeightFormat_t fmt, vcollScaleLayout_t lay, int tile, int E, size_t H,
                      size_t I) {
  memset(y, 0, sizeof(*y));
  const size_t blk = fmt == vcollWeightMxfp4 ? 32 : 16;
  y->L.format = fmt;
  y->L.scaleLayout = lay;
  y->L.tile = tile;
  y->L.numExperts = E;
  y->L.hidden = H;
  y->L.intermediate = I;
  y->in[0] = 2 * I * H / 2;
  y->in[1] = 2 * I * (H / blk);
  y->in[2] = H * I / 2;
  y->in[3] = H * (I / blk);
  y->out[0] = y->in[0];
  y->out[1] = vcollWeightScaleBytes(fmt, 2 * I, H, lay);
  y->out[2] = y->in[2];
  y->out[3] = vcollWeightScaleBytes(fmt, H, I, lay);
  for (int i = 0; i < 4; i++) {
    assert_true(y->out[i] > 0);
    y->src[i] = xmalloc(y->in[i] * (size_t)E);
    y->dst[i] = xmalloc(y->out[i] * (size_t)E + kGuard);
    fillRandom(r, y->src[i], y->in[i] * (size_t)E);
    vtPoison(y->dst[i], y->out[i] * (size_t)E + kGuard);
  }
  y->L.w13 = y->src[0];
  y->L.w13Scales = y->src[1];
  y->L.w2 = y->src[2];
  y->L.w2Scales = y->src[3];
  y->L.w13Out = y->dst[0];
  y->L.w13ScalesOut = y->dst[1];
  y->L.w2Out = y->dst[2];
  y->L.w2ScalesOut = y->dst[3];
}

static void layerFree(Layer* y) {
  for (int i = 0; i < 4; i++) {
    free(y->src[i]);
    free(y->dst[i]);
  }
}

/* Uncached: a fresh permutation and one vcollWeightApplyRef per expert. */
static void layerUncached(const Layer* y, uint8_t* out[4]) {
  const vcollWeightLayer_t* L = &y->L;
  const size_t M[2] = {2 * L->intermediate, L->hidden}, K[2] = {L->hidden, L->intermediate};
  for (int w = 0; w < 2; w++) {
    int32_t* P = xmalloc(M[w] * 4);
    for (int e = 0; e < L->numExperts; e++) {
      assert_int_equal(vcollWeightPermutation(w ? vcollWeightW2 : vcollWeightW13, M[w], L->tile, P), vcollSuccess);
      vcollWeightExpert_t x = {y->src[2 * w] + (size_t)e * y->in[2 * w], y->src[2 * w + 1] + (size_t)e * y->in[2 * w + 1],
                               out[2 * w] + (size_t)e * y->out[2 * w], out[2 * w + 1] + (size_t)e * y->out[2 * w + 1]};
      assert_int_equal(vcollWeightApplyRef(P, M[w], K[w], L->format, L->scaleLayout, &x, 1), vcollSuccess);
    }
    free(P);
  }
}

static void test_layer_cached_vs_uncached(void** state) {
  (void)state;
  vtRng r = vtRngMake(seed, 5);
  assert_int_equal(vcollWeightCacheClear(), vcollSuccess);
  for (int iter = 0; iter < 16; iter++) {
    const vcollWeightFormat_t fmt = iter & 1 ? vcollWeightMxfp4 : vcollWeightNvfp4;
    const vcollScaleLayout_t lay = iter & 2 ? vcollScaleSwizzled128x4 : vcollScaleLinear;
    const int tile = iter & 4 ? 64 : 128;
    const int E = (int)vtRange(&r, 1, 5);
    /* The tile is a multiple of both blocks: H (w2's rows, w13's K) a
     * multiple of the tile, I a multiple of half of it (2I rows of w13). */
    const size_t H = (size_t)tile * (size_t)vtRange(&r, 1, 3), I = (size_t)tile / 2 * (size_t)vtRange(&r, 1, 5);
    Layer y;
    layerMake(&y, &r, fmt, lay, tile, E, H, I);
    uint8_t* want[4];
    for (int i = 0; i < 4; i++) {
      want[i] = xmalloc(y.out[i] * (size_t)E);
      vtPoison(want[i], y.out[i] * (size_t)E);
    }
    layerUncached(&y, want);
    for (int pass = 0; pass < 2; pass++) { /* cold or warm cache, then warm */
      for (int i = 0; i < 4; i++) vtPoison(y.dst[i], y.out[i] * (size_t)E + kGuard);
      assert_int_equal(vcollWeightPrepareLayerRef(&y.L), vcollSuccess);
      for (int i = 0; i < 4; i++) {
        assert_memory_equal(y.dst[i], want[i], y.out[i] * (size_t)E);
        assert_true(vtIsPoisoned(y.dst[i] + y.out[i] * (size_t)E, kGuard));
      }
    }
    for (int i = 0; i < 4; i++) free(want[i]);
    layerFree(&y);
  }
  vcollWeightCacheStats_t st;
  assert_int_equal(vcollWeightCacheGetStats(&st), vcollSuccess);
  assert_true(st.hits > 0);
}

/* ---------------------------------------------------------------------- */
/* Errors: every one names the function and the argument, writes nothing. */

static void test_errors_perm(void** state) {
  (void)state;
  int32_t p[512];
  vcollWeightPerm_t h = NULL;
  vtPoison(p, sizeof(p));
  expectError(vcollWeightPermutation(vcollWeightW13, 4097 - 128 * 24, 128, p), "vcollWeightPermutation", "even M");
  expectError(vcollWeightPermutation(vcollWeightW13, 200, 128, p), "vcollWeightPermutation", "multiple of tile 128");
  expectError(vcollWeightPermutation(vcollWeightW2, 96, 64, p), "vcollWeightPermutation", "multiple of tile 64");
  expectError(vcollWeightPermutation(vcollWeightW2, 0, 128, p), "vcollWeightPermutation", "invalid M 0");
  expectError(vcollWeightPermutation(vcollWeightW2, (size_t)1 << 31, 128, p), "vcollWeightPermutation", "invalid M");
  expectError(vcollWeightPermutation(vcollWeightW2, 256, 32, p), "vcollWeightPermutation", "tile 32");
  expectError(vcollWeightPermutation((vcollWeightKind_t)7, 256, 128, p), "vcollWeightPermutation", "kind 7");
  expectError(vcollWeightPermutation(vcollWeightW2, 256, 128, NULL), "vcollWeightPermutation", "perm");
  assert_true(vtIsPoisoned(p, sizeof(p)));
  expectError(vcollWeightPermGet(vcollWeightW13, 130, 64, &h), "vcollWeightPermGet", "multiple of tile 64");
  expectError(vcollWeightPermGet(vcollWeightW13, 256, 128, NULL), "vcollWeightPermGet", "perm");
  assert_null(h);
  expectError(vcollWeightPermHost(NULL, NULL, NULL), "vcollWeightPermHost", "perm");
  expectError(vcollWeightPermDevice(NULL, NULL), "vcollWeightPermDevice", "perm");
  expectError(vcollWeightCacheSetCapacity(0), "vcollWeightCacheSetCapacity", "entries 0");
  expectError(vcollWeightCacheGetStats(NULL), "vcollWeightCacheGetStats", "stats");
}

/* Apply errors, on the CPU version (buffers checked untouched) and on the
 * GPU one, whose checks run before any CUDA call (so this runs without a
 * GPU; the pointers are never dereferenced). */
static void test_errors_apply(void** state) {
  (void)state;
  enum { M = 128, K = 64 };
  int32_t P[M], bad[M];
  uint8_t pay[M * K / 2], sc[M * K / 16], out[M * K / 2 + kGuard], sout[M * 4 * 16 * 2];
  assert_int_equal(vcollWeightPermutation(vcollWeightW2, M, 128, P), vcollSuccess);
  memcpy(bad, P, sizeof(P));
  bad[77] = M;
  memset(pay, 1, sizeof(pay));
  memset(sc, 2, sizeof(sc));
  vtPoison(out, sizeof(out));
  vtPoison(sout, sizeof(sout));
  vcollWeightExpert_t x[2] = {{pay, sc, out, sout}, {pay, sc, out, sout}};
  vcollWeightExpert_t y = x[0];
  for (int gpu = 0; gpu < 2; gpu++) {
    const char* fn = gpu ? "vcollWeightApply" : "vcollWeightApplyRef";
#define APPLY(perm, m, k, fmt, lay, ex, n) \
  (gpu ? vcollWeightApply(perm, m, k, fmt, lay, ex, n, NULL) : vcollWeightApplyRef(perm, m, k, fmt, lay, ex, n))
    expectError(APPLY(P, M, 40, vcollWeightNvfp4, vcollScaleLinear, x, 1), fn, "invalid K 40");
    expectError(APPLY(P, M, 48, vcollWeightMxfp4, vcollScaleLinear, x, 1), fn, "MXFP4 block 32");
    expectError(APPLY(P, M, 0, vcollWeightNvfp4, vcollScaleLinear, x, 1), fn, "invalid K 0");
    expectError(APPLY(P, 0, K, vcollWeightNvfp4, vcollScaleLinear, x, 1), fn, "invalid M 0");
    expectError(APPLY(P, M, K, (vcollWeightFormat_t)3, vcollScaleLinear, x, 1), fn, "format 3");
    expectError(APPLY(P, M, K, vcollWeightNvfp4, (vcollScaleLayout_t)5, x, 1), fn, "scaleLayout 5");
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, x, -1), fn, "numExperts -1");
    expectError(APPLY(NULL, M, K, vcollWeightNvfp4, vcollScaleLinear, x, 1), fn, "perm");
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, NULL, 1), fn, "experts");
    y = x[0]; y.payload = NULL;
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, &y, 1), fn, "experts[0].payload is NULL");
    y = x[0]; y.scales = NULL;
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, &y, 1), fn, "experts[0].scales is NULL");
    y = x[0]; y.payloadOut = NULL;
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, &y, 1), fn, "experts[0].payloadOut is NULL");
    y = x[0]; y.scalesOut = NULL;
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, &y, 1), fn, "experts[0].scalesOut is NULL");
    /* Two experts writing the same outputs; an output over an input; over perm. */
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, x, 2), fn, "overlaps experts[");
    y = x[0]; y.payloadOut = pay + 16;
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, &y, 1), fn, "experts[0].payloadOut");
    y = x[0]; y.scalesOut = (uint8_t*)P + 4;
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleLinear, &y, 1), fn, "perm");
    y = x[0]; y.scalesOut = out + M * K / 2 - 8;
    expectError(APPLY(P, M, K, vcollWeightNvfp4, vcollScaleSwizzled128x4, &y, 1), fn, "experts[0].scalesOut");
    assert_true(vtIsPoisoned(out, sizeof(out)));
    assert_true(vtIsPoisoned(sout, sizeof(sout)));
#undef APPLY
  }
  expectError(vcollWeightApplyRef(bad, M, K, vcollWeightNvfp4, vcollScaleLinear, x, 1), "vcollWeightApplyRef",
              "perm[77] = 128 is out of range");
  assert_true(vtIsPoisoned(out, sizeof(out)));
  /* No experts: nothing to do, even without buffers. */
  assert_int_equal(vcollWeightApplyRef(NULL, M, K, vcollWeightNvfp4, vcollScaleLinear, NULL, 0), vcollSuccess);
  assert_int_equal(vcollWeightApply(NULL, M, K, vcollWeightNvfp4, vcollScaleLinear, NULL, 0, NULL), vcollSuccess);
}

static void test_errors_layer(void** state) {
  (void)state;
  vtRng r = vtRngMake(seed, 6);
  Layer y;
  layerMake(&y, &r, vcollWeightNvfp4, vcollScaleSwizzled128x4, 128, 2, 256, 128);
  vcollWeightLayer_t L;
  for (int gpu = 0; gpu < 2; gpu++) {
    const char* fn = gpu ? "vcollWeightPrepareLayer" : "vcollWeightPrepareLayerRef";
#define PREP(l) (gpu ? vcollWeightPrepareLayer(l, NULL) : vcollWeightPrepareLayerRef(l))
    expectError(PREP(NULL), fn, "layer");
    L = y.L; L.tile = 100;
    expectError(PREP(&L), fn, "layer->tile 100");
    L = y.L; L.numExperts = -2;
    expectError(PREP(&L), fn, "layer->numExperts -2");
    L = y.L; L.hidden = 200; /* a multiple of 8 and not of 16 */
    expectError(PREP(&L), fn, "layer->hidden 200");
    L = y.L; L.hidden = 320; /* block-aligned, not a multiple of the tile */
    expectError(PREP(&L), fn, "not a multiple of tile 128");
    L = y.L; L.intermediate = 96; /* 2I = 192 */
    expectError(PREP(&L), fn, "layer->intermediate 96");
    L = y.L; L.intermediate = 0;
    expectError(PREP(&L), fn, "layer->intermediate 0");
    L = y.L; L.tile = 64; L.intermediate = 40; /* w2's K = I: not a multiple of 16 */
    expectError(PREP(&L), fn, "layer->intermediate 40");
    L = y.L; L.format = vcollWeightMxfp4; L.intermediate = 48; /* I/32 not whole */
    expectError(PREP(&L), fn, "layer->intermediate 48");
    L = y.L; L.w2Scales = NULL;
    expectError(PREP(&L), fn, "layer->w2Scales is NULL");
    L = y.L; L.w13ScalesOut = NULL;
    expectError(PREP(&L), fn, "layer->w13ScalesOut is NULL");
    L = y.L; L.w2Out = (uint8_t*)L.w13Out + 8;
    expectError(PREP(&L), fn, "layer->w2Out");
    L = y.L; L.w13Out = (uint8_t*)L.w13Scales + 1;
    expectError(PREP(&L), fn, "layer->w13Out");
    L = y.L; L.scaleLayout = (vcollScaleLayout_t)9;
    expectError(PREP(&L), fn, "scaleLayout 9");
#undef PREP
  }
  for (int i = 0; i < 4; i++) assert_true(vtIsPoisoned(y.dst[i], y.out[i] * 2 + kGuard));
  L = y.L;
  L.numExperts = 0;
  assert_int_equal(vcollWeightPrepareLayerRef(&L), vcollSuccess);
  assert_int_equal(vcollWeightPrepareLayer(&L, NULL), vcollSuccess);
  for (int i = 0; i < 4; i++) assert_true(vtIsPoisoned(y.dst[i], y.out[i] * 2 + kGuard));
  layerFree(&y);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_perm_hand_vectors),
      cmocka_unit_test(test_perm_formulas),
      cmocka_unit_test(test_two_gathers),
      cmocka_unit_test(test_swizzled_scales),
      cmocka_unit_test(test_inverse),
      cmocka_unit_test(test_cache_basic),
      cmocka_unit_test(test_cache_eviction),
      cmocka_unit_test(test_cache_threads),
      cmocka_unit_test(test_layer_cached_vs_uncached),
      cmocka_unit_test(test_errors_perm),
      cmocka_unit_test(test_errors_apply),
      cmocka_unit_test(test_errors_layer),
  };
  return cmocka_run_group_tests(tests, setupSeed, NULL);
}
