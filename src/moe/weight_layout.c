/* MoE FP4 weight layouts: the permutations (from the formulas in
 * vcoll/weight_layout.h), their host cache with per-device copies,
 * argument checks, the CPU version of the gather and the host side of the
 * GPU one (the kernel is in weight_layout.cu). The 128x4 scale swizzle is
 * vcollNvfp4ConvertScales[Ref] (src/quant/nvfp4.*), applied after the row
 * gather. */
#include <pthread.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll/nvfp4.h"
#include "vcoll/weight_layout.h"
#include "vcoll_internal.h"

/* weight_layout.cu: dst[j] row n = src[j] row perm[n] for numJobs tensors
 * of M rows of rowBytes[j] bytes. Arguments come validated. */
vcollResult_t vcollWeightGatherRows(const int32_t* perm, size_t M, int numJobs, const void* const* src,
                                    void* const* dst, const size_t* rowBytes, cudaStream_t stream);

/* Linear scales of this many bytes (a chunk of experts) go through one
 * workspace before the swizzle. */
#define WEIGHT_WORKSPACE_BYTES ((size_t)128 << 20)

static size_t scaleBlock(vcollWeightFormat_t f) { return f == vcollWeightMxfp4 ? 32 : 16; }

/* ---------------------------------------------------------------------- */
/* Permutations                                                             */

static vcollResult_t checkPermShape(const char* op, vcollWeightKind_t kind, size_t M, int tile) {
  if (kind != vcollWeightW13 && kind != vcollWeightW2)
    return VCOLL_ARGERR(NULL, op, "invalid kind %d (must be vcollWeightW13 or vcollWeightW2)", (int)kind);
  if (tile != 128 && tile != 64) return VCOLL_ARGERR(NULL, op, "invalid tile %d (must be 128 or 64)", tile);
  if (M == 0 || M > INT32_MAX)
    return VCOLL_ARGERR(NULL, op, "invalid M %zu (must be in 1..%d)", M, INT32_MAX);
  if (kind == vcollWeightW13 && M % 2 != 0)
    return VCOLL_ARGERR(NULL, op, "invalid M %zu for vcollWeightW13: the gated [w3; w1] interleave needs an even M",
                        M);
  if (M % (size_t)tile != 0)
    return VCOLL_ARGERR(NULL, op, "invalid M %zu (must be a multiple of tile %d)", M, tile);
  return vcollSuccess;
}

static void computePerm(vcollWeightKind_t kind, size_t M, int tile, int32_t* perm) {
  for (size_t n = 0; n < M; n++) {
    size_t s = tile == 128 ? (n / 32) * 32 + (n % 8) * 4 + (n % 32) / 8 : (n / 16) * 16 + (n % 8) * 2 + (n % 16) / 8;
    if (kind == vcollWeightW13) s = (s & 1) * (M / 2) + (s >> 1);
    perm[n] = (int32_t)s;
  }
}

VCOLL_API vcollResult_t vcollWeightPermutation(vcollWeightKind_t kind, size_t M, int tile, int32_t* perm) {
  const char* op = "vcollWeightPermutation";
  VCOLL_CHECK_RES(checkPermShape(op, kind, M, tile));
  if (perm == NULL) return VCOLL_ARGERR(NULL, op, "perm argument is NULL");
  computePerm(kind, M, tile, perm);
  return vcollSuccess;
}

/* ---------------------------------------------------------------------- */
/* Cache: an LRU list under one mutex. An entry holds one reference for
 * being in the list and one per handle; it is freed at zero. */

struct vcollWeightPerm {
  vcollWeightKind_t kind;
  size_t M;
  int tile;
  int32_t* host;
  int refs;
  int ndev;
  int32_t** dev; /* [ndev], copies on each device, made on demand */
  struct vcollWeightPerm* prev;
  struct vcollWeightPerm* next;
};

static pthread_mutex_t cacheLock = PTHREAD_MUTEX_INITIALIZER;
static struct vcollWeightPerm* cacheHead; /* most recently used first */
static struct vcollWeightPerm* cacheTail;
static int cacheCount;
static int cacheCapacity = VCOLL_WEIGHT_CACHE_DEFAULT_CAPACITY;
static uint64_t cacheHits, cacheMisses, cacheEvictions, cacheUploads;

static void entryFree(struct vcollWeightPerm* e) {
  int cur = -1;
  if (e->dev != NULL && cudaGetDevice(&cur) != cudaSuccess) cur = -1;
  for (int d = 0; e->dev != NULL && d < e->ndev; d++) {
    if (e->dev[d] == NULL) continue;
    /* cudaFree waits for the device's pending work, so a kernel already
     * enqueued with these indices finishes first. */
    if (cudaSetDevice(d) != cudaSuccess || cudaFree(e->dev[d]) != cudaSuccess) {
      VCOLL_WARN("weight layout cache: freeing the indices on device %d failed: %s", d,
                 cudaGetErrorString(cudaGetLastError()));
    }
  }
  if (cur >= 0) cudaSetDevice(cur);
  free(e->dev);
  free(e->host);
  free(e);
}

/* Frees a chain of entries linked through `next` (called without the lock). */
static void freeChain(struct vcollWeightPerm* e) {
  while (e != NULL) {
    struct vcollWeightPerm* next = e->next;
    entryFree(e);
    e = next;
  }
}

static void unlink_(struct vcollWeightPerm* e) {
  if (e->prev) e->prev->next = e->next;
  else cacheHead = e->next;
  if (e->next) e->next->prev = e->prev;
  else cacheTail = e->prev;
  e->prev = e->next = NULL;
  cacheCount--;
}

static void pushFront(struct vcollWeightPerm* e) {
  e->prev = NULL;
  e->next = cacheHead;
  if (cacheHead) cacheHead->prev = e;
  cacheHead = e;
  if (cacheTail == NULL) cacheTail = e;
  cacheCount++;
}

/* Drops the list's reference to e (unlinked); adds it to *dead at zero. */
static void dropRef(struct vcollWeightPerm* e, struct vcollWeightPerm** dead) {
  if (--e->refs == 0) {
    e->next = *dead;
    *dead = e;
  }
}

/* With the lock held: evicts down to the capacity. */
static void evictLocked(struct vcollWeightPerm** dead) {
  while (cacheCount > cacheCapacity) {
    struct vcollWeightPerm* e = cacheTail;
    VCOLL_INFO("weight layout cache: evicting kind %d M %zu tile %d", (int)e->kind, e->M, e->tile);
    unlink_(e);
    cacheEvictions++;
    dropRef(e, dead);
  }
}

static struct vcollWeightPerm* findLocked(vcollWeightKind_t kind, size_t M, int tile) {
  for (struct vcollWeightPerm* e = cacheHead; e != NULL; e = e->next)
    if (e->kind == kind && e->M == M && e->tile == tile) return e;
  return NULL;
}

VCOLL_API vcollResult_t vcollWeightPermGet(vcollWeightKind_t kind, size_t M, int tile, vcollWeightPerm_t* perm) {
  const char* op = "vcollWeightPermGet";
  VCOLL_CHECK_RES(checkPermShape(op, kind, M, tile));
  if (perm == NULL) return VCOLL_ARGERR(NULL, op, "perm argument is NULL");

  pthread_mutex_lock(&cacheLock);
  struct vcollWeightPerm* e = findLocked(kind, M, tile);
  if (e != NULL) {
    if (e != cacheHead) {
      unlink_(e);
      pushFront(e);
    }
    e->refs++;
    cacheHits++;
    pthread_mutex_unlock(&cacheLock);
    *perm = e;
    return vcollSuccess;
  }
  pthread_mutex_unlock(&cacheLock);

  /* Computed outside the lock; another thread may insert the same key meanwhile. */
  struct vcollWeightPerm* fresh = calloc(1, sizeof(*fresh));
  int32_t* host = malloc(M * sizeof(int32_t));
  if (fresh == NULL || host == NULL) {
    free(fresh);
    free(host);
    return vcollSetError(NULL, vcollSystemError, "%s: out of host memory for %zu indices", op, M);
  }
  computePerm(kind, M, tile, host);
  fresh->kind = kind;
  fresh->M = M;
  fresh->tile = tile;
  fresh->host = host;

  struct vcollWeightPerm* dead = NULL;
  pthread_mutex_lock(&cacheLock);
  e = findLocked(kind, M, tile);
  if (e != NULL) {
    e->refs++;
    cacheHits++;
    fresh->next = dead;
    dead = fresh;
  } else {
    e = fresh;
    e->refs = 2; /* the list's and the caller's */
    pushFront(e);
    cacheMisses++;
    VCOLL_INFO("weight layout cache: computed kind %d M %zu tile %d", (int)kind, M, tile);
    evictLocked(&dead);
  }
  pthread_mutex_unlock(&cacheLock);
  freeChain(dead);
  *perm = e;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollWeightPermHost(vcollWeightPerm_t perm, const int32_t** host, size_t* M) {
  const char* op = "vcollWeightPermHost";
  if (perm == NULL) return VCOLL_ARGERR(NULL, op, "perm argument is NULL");
  if (host == NULL) return VCOLL_ARGERR(NULL, op, "host argument is NULL");
  *host = perm->host;
  if (M != NULL) *M = perm->M;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollWeightPermDevice(vcollWeightPerm_t perm, const int32_t** dev) {
  const char* op = "vcollWeightPermDevice";
  vcollResult_t res = vcollSuccess;
  cudaError_t err = cudaSuccess;
  const char* what = "";
  if (perm == NULL) return VCOLL_ARGERR(NULL, op, "perm argument is NULL");
  if (dev == NULL) return VCOLL_ARGERR(NULL, op, "dev argument is NULL");
  int d = 0, ndev = 0;
  VCOLL_CUDACHECK(NULL, cudaGetDevice(&d));
  VCOLL_CUDACHECK(NULL, cudaGetDeviceCount(&ndev));

  pthread_mutex_lock(&cacheLock);
  if (perm->dev == NULL) {
    perm->dev = calloc((size_t)ndev, sizeof(int32_t*));
    if (perm->dev == NULL) {
      res = vcollSetError(NULL, vcollSystemError, "%s: out of host memory", op);
      goto exit;
    }
    perm->ndev = ndev;
  }
  if (d >= perm->ndev) {
    res = vcollSetError(NULL, vcollInternalError, "%s: device %d beyond the %d counted", op, d, perm->ndev);
    goto exit;
  }
  if (perm->dev[d] == NULL) {
    int32_t* p = NULL;
    const size_t bytes = perm->M * sizeof(int32_t);
    if ((err = cudaMalloc((void**)&p, bytes)) != cudaSuccess) {
      what = "cudaMalloc";
      goto cudafail;
    }
    /* A pageable cudaMemcpy may return before the data lands, and kernels
     * on non-blocking streams are not ordered after it: copy on a private
     * stream and wait for it. */
    cudaStream_t s;
    if ((err = cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking)) != cudaSuccess) {
      cudaFree(p);
      what = "cudaStreamCreateWithFlags";
      goto cudafail;
    }
    err = cudaMemcpyAsync(p, perm->host, bytes, cudaMemcpyHostToDevice, s);
    if (err == cudaSuccess) err = cudaStreamSynchronize(s);
    cudaStreamDestroy(s);
    if (err != cudaSuccess) {
      cudaFree(p);
      what = "upload";
      goto cudafail;
    }
    perm->dev[d] = p;
    cacheUploads++;
  }
  *dev = perm->dev[d];
exit:
  pthread_mutex_unlock(&cacheLock);
  return res;
cudafail:
  pthread_mutex_unlock(&cacheLock);
  return vcollSetError(NULL, vcollUnhandledCudaError, "%s: %s of %zu indices on device %d failed: %s", op, what,
                       perm->M, d, cudaGetErrorString(err));
}

VCOLL_API vcollResult_t vcollWeightPermRelease(vcollWeightPerm_t perm) {
  if (perm == NULL) return vcollSuccess;
  pthread_mutex_lock(&cacheLock);
  const int last = --perm->refs == 0;
  pthread_mutex_unlock(&cacheLock);
  if (last) entryFree(perm);
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollWeightCacheSetCapacity(int entries) {
  if (entries < 1)
    return VCOLL_ARGERR(NULL, "vcollWeightCacheSetCapacity", "invalid entries %d (must be >= 1)", entries);
  struct vcollWeightPerm* dead = NULL;
  pthread_mutex_lock(&cacheLock);
  cacheCapacity = entries;
  evictLocked(&dead);
  pthread_mutex_unlock(&cacheLock);
  freeChain(dead);
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollWeightCacheClear(void) {
  struct vcollWeightPerm* dead = NULL;
  pthread_mutex_lock(&cacheLock);
  while (cacheHead != NULL) {
    struct vcollWeightPerm* e = cacheHead;
    unlink_(e);
    dropRef(e, &dead);
  }
  pthread_mutex_unlock(&cacheLock);
  freeChain(dead);
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollWeightCacheGetStats(vcollWeightCacheStats_t* stats) {
  if (stats == NULL) return VCOLL_ARGERR(NULL, "vcollWeightCacheGetStats", "stats argument is NULL");
  pthread_mutex_lock(&cacheLock);
  stats->entries = cacheCount;
  stats->capacity = cacheCapacity;
  stats->hits = cacheHits;
  stats->misses = cacheMisses;
  stats->evictions = cacheEvictions;
  stats->uploads = cacheUploads;
  pthread_mutex_unlock(&cacheLock);
  return vcollSuccess;
}

/* ---------------------------------------------------------------------- */
/* Shapes and argument checks                                               */

struct weightShape {
  size_t M, K;
  size_t payloadRow; /* K / 2 */
  size_t scaleRow;   /* K / block */
  size_t payloadBytes, scaleInBytes, scaleOutBytes;
};

VCOLL_API size_t vcollWeightScaleBytes(vcollWeightFormat_t format, size_t M, size_t K, vcollScaleLayout_t layout) {
  size_t n;
  if (format != vcollWeightNvfp4 && format != vcollWeightMxfp4) return 0;
  const size_t blk = scaleBlock(format);
  if (K == 0 || K % blk != 0) return 0;
  switch (layout) {
    case vcollScaleLinear:
      return vcollMulOk(M, K / blk, &n) ? n : 0;
    case vcollScaleSwizzled128x4:
      /* The swizzle depends only on the scale matrix's shape [M, K/block]:
       * as NVFP4 scales of a [M, K/block * 16] tensor. */
      return vcollMulOk(K / blk, 16, &n) ? vcollNvfp4ScaleBytes(M, n, layout) : 0;
    default:
      return 0;
  }
}

static vcollResult_t checkShape(const char* op, const char* mName, const char* kName, size_t M, size_t K,
                                vcollWeightFormat_t format, vcollScaleLayout_t layout, struct weightShape* sh) {
  if (format != vcollWeightNvfp4 && format != vcollWeightMxfp4)
    return VCOLL_ARGERR(NULL, op, "invalid format %d (must be vcollWeightNvfp4 or vcollWeightMxfp4)", (int)format);
  if (layout != vcollScaleLinear && layout != vcollScaleSwizzled128x4)
    return VCOLL_ARGERR(NULL, op, "invalid scaleLayout %d (must be vcollScaleLinear or vcollScaleSwizzled128x4)",
                        (int)layout);
  if (M == 0 || M > INT32_MAX) return VCOLL_ARGERR(NULL, op, "invalid %s %zu (must be in 1..%d)", mName, M, INT32_MAX);
  const size_t blk = scaleBlock(format);
  if (K == 0 || K % blk != 0 || K / 2 > UINT32_MAX)
    return VCOLL_ARGERR(NULL, op, "invalid %s %zu (must be a positive multiple of the %s block %zu, at most %llu)",
                        kName, K, format == vcollWeightMxfp4 ? "MXFP4" : "NVFP4", blk,
                        2ull * UINT32_MAX);
  sh->M = M;
  sh->K = K;
  sh->payloadRow = K / 2;
  sh->scaleRow = K / blk;
  sh->scaleOutBytes = vcollWeightScaleBytes(format, M, K, layout);
  if (!vcollMulOk(M, sh->payloadRow, &sh->payloadBytes) || !vcollMulOk(M, sh->scaleRow, &sh->scaleInBytes) ||
      sh->scaleOutBytes == 0)
    return VCOLL_ARGERR(NULL, op, "%s %zu x %s %zu overflows the address space", mName, M, kName, K);
  return vcollSuccess;
}

/* Byte ranges that must not overlap: outputs against everything. */
struct range {
  uintptr_t lo, hi;
  int out;   /* 1: written */
  int index; /* for the message */
  const char* name;
};

static int cmpRange(const void* a, const void* b) {
  const struct range *x = a, *y = b;
  return (x->lo > y->lo) - (x->lo < y->lo);
}

static void rangeLabel(char* buf, size_t len, const char* prefix, const struct range* r) {
  if (prefix != NULL && r->index >= 0) snprintf(buf, len, "%s[%d].%s %p", prefix, r->index, r->name, (void*)r->lo);
  else snprintf(buf, len, "%s %p", r->name, (void*)r->lo);
}

/* Sorts by start; each range is checked against the furthest-reaching
 * earlier output (and, for outputs, any earlier range). */
static vcollResult_t checkOverlaps(const char* op, const char* prefix, struct range* r, size_t n) {
  qsort(r, n, sizeof(*r), cmpRange);
  const struct range *maxAll = NULL, *maxOut = NULL;
  for (size_t i = 0; i < n; i++) {
    const struct range* hit = NULL;
    if (r[i].out && maxAll && r[i].lo < maxAll->hi) hit = maxAll;
    else if (maxOut && r[i].lo < maxOut->hi) hit = maxOut;
    if (hit != NULL) {
      const struct range* w = r[i].out ? &r[i] : hit;
      const struct range* o = w == &r[i] ? hit : &r[i];
      char a[96], b[96];
      rangeLabel(a, sizeof(a), prefix, w);
      rangeLabel(b, sizeof(b), prefix, o);
      return VCOLL_ARGERR(NULL, op, "%s overlaps %s", a, b);
    }
    if (maxAll == NULL || r[i].hi > maxAll->hi) maxAll = &r[i];
    if (r[i].out && (maxOut == NULL || r[i].hi > maxOut->hi)) maxOut = &r[i];
  }
  return vcollSuccess;
}

static void setRange(struct range* r, const void* p, size_t bytes, int out, int index, const char* name) {
  r->lo = (uintptr_t)p;
  r->hi = (uintptr_t)p + bytes;
  r->out = out;
  r->index = index;
  r->name = name;
}

static vcollResult_t checkApply(const char* op, const int32_t* perm, size_t M, size_t K, vcollWeightFormat_t format,
                                vcollScaleLayout_t layout, const vcollWeightExpert_t* experts, int numExperts,
                                struct weightShape* sh) {
  VCOLL_CHECK_RES(checkShape(op, "M", "K", M, K, format, layout, sh));
  if (numExperts < 0) return VCOLL_ARGERR(NULL, op, "invalid numExperts %d (must be >= 0)", numExperts);
  if (numExperts == 0) return vcollSuccess;
  if (perm == NULL) return VCOLL_ARGERR(NULL, op, "perm argument is NULL");
  if (experts == NULL) return VCOLL_ARGERR(NULL, op, "experts argument is NULL");
  for (int i = 0; i < numExperts; i++) {
    const vcollWeightExpert_t* x = &experts[i];
    if (x->payload == NULL) return VCOLL_ARGERR(NULL, op, "experts[%d].payload is NULL", i);
    if (x->scales == NULL) return VCOLL_ARGERR(NULL, op, "experts[%d].scales is NULL", i);
    if (x->payloadOut == NULL) return VCOLL_ARGERR(NULL, op, "experts[%d].payloadOut is NULL", i);
    if (x->scalesOut == NULL) return VCOLL_ARGERR(NULL, op, "experts[%d].scalesOut is NULL", i);
  }
  const size_t n = (size_t)numExperts * 4 + 1;
  struct range* r = malloc(n * sizeof(*r));
  if (r == NULL) return vcollSetError(NULL, vcollSystemError, "%s: out of host memory", op);
  for (int i = 0; i < numExperts; i++) {
    const vcollWeightExpert_t* x = &experts[i];
    setRange(&r[4 * i + 0], x->payload, sh->payloadBytes, 0, i, "payload");
    setRange(&r[4 * i + 1], x->scales, sh->scaleInBytes, 0, i, "scales");
    setRange(&r[4 * i + 2], x->payloadOut, sh->payloadBytes, 1, i, "payloadOut");
    setRange(&r[4 * i + 3], x->scalesOut, sh->scaleOutBytes, 1, i, "scalesOut");
  }
  /* The permutation is read throughout: no output may cover it either. */
  setRange(&r[n - 1], perm, M * sizeof(int32_t), 0, -1, "perm");
  const vcollResult_t res = checkOverlaps(op, "experts", r, n);
  free(r);
  return res;
}

/* ---------------------------------------------------------------------- */
/* CPU                                                                      */

static vcollResult_t applyRefChecked(const int32_t* perm, const struct weightShape* sh, vcollScaleLayout_t layout,
                                     const vcollWeightExpert_t* experts, int numExperts) {
  const char* op = "vcollWeightApplyRef";
  uint8_t* tmp = NULL;
  if (layout == vcollScaleSwizzled128x4 && numExperts > 0) {
    tmp = malloc(sh->scaleInBytes);
    if (tmp == NULL) return vcollSetError(NULL, vcollSystemError, "%s: out of host memory", op);
  }
  vcollResult_t res = vcollSuccess;
  for (int i = 0; i < numExperts; i++) {
    const vcollWeightExpert_t* x = &experts[i];
    uint8_t* sdst = layout == vcollScaleLinear ? (uint8_t*)x->scalesOut : tmp;
    for (size_t n = 0; n < sh->M; n++) {
      const size_t s = (size_t)perm[n];
      memcpy((uint8_t*)x->payloadOut + n * sh->payloadRow, (const uint8_t*)x->payload + s * sh->payloadRow,
             sh->payloadRow);
      memcpy(sdst + n * sh->scaleRow, (const uint8_t*)x->scales + s * sh->scaleRow, sh->scaleRow);
    }
    if (layout == vcollScaleSwizzled128x4) {
      res = vcollNvfp4ConvertScalesRef(tmp, vcollScaleLinear, x->scalesOut, vcollScaleSwizzled128x4, sh->M,
                                       sh->scaleRow * 16);
      if (res != vcollSuccess) break;
    }
  }
  free(tmp);
  return res;
}

VCOLL_API vcollResult_t vcollWeightApplyRef(const int32_t* perm, size_t M, size_t K, vcollWeightFormat_t format,
                                            vcollScaleLayout_t scaleLayout, const vcollWeightExpert_t* experts,
                                            int numExperts) {
  const char* op = "vcollWeightApplyRef";
  struct weightShape sh;
  VCOLL_CHECK_RES(checkApply(op, perm, M, K, format, scaleLayout, experts, numExperts, &sh));
  if (numExperts == 0) return vcollSuccess;
  for (size_t n = 0; n < M; n++)
    if (perm[n] < 0 || (size_t)perm[n] >= M)
      return VCOLL_ARGERR(NULL, op, "perm[%zu] = %d is out of range (must be in 0..%zu)", n, perm[n], M - 1);
  return applyRefChecked(perm, &sh, scaleLayout, experts, numExperts);
}

/* ---------------------------------------------------------------------- */
/* GPU                                                                      */

static vcollResult_t applyChecked(const int32_t* perm, const struct weightShape* sh, vcollScaleLayout_t layout,
                                  const vcollWeightExpert_t* experts, int numExperts, cudaStream_t stream) {
  const char* op = "vcollWeightApply";
  const int swz = layout == vcollScaleSwizzled128x4;
  /* Experts per pass: all of them for linear scales; for swizzled ones, as
   * many as the workspace holds (their linear scales land there first). */
  size_t chunk = (size_t)numExperts;
  uint8_t* ws = NULL;
  vcollResult_t res = vcollSuccess;
  cudaError_t err;
  if (swz) {
    const size_t fit = WEIGHT_WORKSPACE_BYTES / sh->scaleInBytes;
    chunk = fit < 1 ? 1 : fit < chunk ? fit : chunk;
    if ((err = cudaMallocAsync((void**)&ws, chunk * sh->scaleInBytes, stream)) != cudaSuccess)
      return vcollSetError(NULL, vcollUnhandledCudaError, "%s: cudaMallocAsync of a %zu-byte workspace failed: %s",
                           op, chunk * sh->scaleInBytes, cudaGetErrorString(err));
  }
  const void** src = malloc(2 * chunk * sizeof(void*));
  void** dst = malloc(2 * chunk * sizeof(void*));
  size_t* rowBytes = malloc(2 * chunk * sizeof(size_t));
  if (src == NULL || dst == NULL || rowBytes == NULL) {
    res = vcollSetError(NULL, vcollSystemError, "%s: out of host memory", op);
    goto exit;
  }
  VCOLL_TRACE("%s: %d experts, M %zu K %zu, %s scales, %zu per pass", op, numExperts, sh->M, sh->K,
              swz ? "swizzled" : "linear", chunk);
  for (size_t e0 = 0; e0 < (size_t)numExperts; e0 += chunk) {
    const size_t ne = (size_t)numExperts - e0 < chunk ? (size_t)numExperts - e0 : chunk;
    for (size_t i = 0; i < ne; i++) {
      const vcollWeightExpert_t* x = &experts[e0 + i];
      src[2 * i] = x->payload;
      dst[2 * i] = x->payloadOut;
      rowBytes[2 * i] = sh->payloadRow;
      src[2 * i + 1] = x->scales;
      dst[2 * i + 1] = swz ? ws + i * sh->scaleInBytes : x->scalesOut;
      rowBytes[2 * i + 1] = sh->scaleRow;
    }
    res = vcollWeightGatherRows(perm, sh->M, (int)(2 * ne), src, dst, rowBytes, stream);
    if (res != vcollSuccess) goto exit;
    /* With M a multiple of 128, the swizzle of experts stacked as one
     * [run * M, K/block] matrix is each expert's swizzle back to back: one
     * conversion per run of experts whose outputs are contiguous. */
    for (size_t i = 0, run; swz && i < ne; i += run) {
      const uint8_t* first = experts[e0 + i].scalesOut;
      for (run = 1; sh->M % 128 == 0 && i + run < ne &&
                    (const uint8_t*)experts[e0 + i + run].scalesOut == first + run * sh->scaleOutBytes;
           run++) {
      }
      res = vcollNvfp4ConvertScales(ws + i * sh->scaleInBytes, vcollScaleLinear, experts[e0 + i].scalesOut,
                                    vcollScaleSwizzled128x4, run * sh->M, sh->scaleRow * 16, stream);
      if (res != vcollSuccess) goto exit;
    }
  }
exit:
  if (ws != NULL && (err = cudaFreeAsync(ws, stream)) != cudaSuccess && res == vcollSuccess)
    res = vcollSetError(NULL, vcollUnhandledCudaError, "%s: cudaFreeAsync of the workspace failed: %s", op,
                        cudaGetErrorString(err));
  free(src);
  free(dst);
  free(rowBytes);
  return res;
}

VCOLL_API vcollResult_t vcollWeightApply(const int32_t* perm, size_t M, size_t K, vcollWeightFormat_t format,
                                         vcollScaleLayout_t scaleLayout, const vcollWeightExpert_t* experts,
                                         int numExperts, cudaStream_t stream) {
  struct weightShape sh;
  VCOLL_CHECK_RES(checkApply("vcollWeightApply", perm, M, K, format, scaleLayout, experts, numExperts, &sh));
  if (numExperts == 0) return vcollSuccess;
  return applyChecked(perm, &sh, scaleLayout, experts, numExperts, stream);
}

/* ---------------------------------------------------------------------- */
/* Layers                                                                   */

struct layerShape {
  struct weightShape w13, w2;
};

static vcollResult_t checkLayer(const char* op, const vcollWeightLayer_t* L, struct layerShape* ls) {
  if (L == NULL) return VCOLL_ARGERR(NULL, op, "layer argument is NULL");
  if (L->tile != 128 && L->tile != 64)
    return VCOLL_ARGERR(NULL, op, "invalid layer->tile %d (must be 128 or 64)", L->tile);
  if (L->numExperts < 0) return VCOLL_ARGERR(NULL, op, "invalid layer->numExperts %d (must be >= 0)", L->numExperts);
  const size_t H = L->hidden, I = L->intermediate;
  if (I == 0 || I > INT32_MAX / 2)
    return VCOLL_ARGERR(NULL, op, "invalid layer->intermediate %zu (must be in 1..%d)", I, INT32_MAX / 2);
  VCOLL_CHECK_RES(checkShape(op, "2 * layer->intermediate", "layer->hidden", 2 * I, H, L->format, L->scaleLayout,
                             &ls->w13));
  VCOLL_CHECK_RES(checkShape(op, "layer->hidden", "layer->intermediate", H, I, L->format, L->scaleLayout, &ls->w2));
  if ((2 * I) % (size_t)L->tile != 0)
    return VCOLL_ARGERR(NULL, op, "invalid layer->intermediate %zu: w13 has 2 * %zu rows, not a multiple of tile %d",
                        I, I, L->tile);
  if (H % (size_t)L->tile != 0)
    return VCOLL_ARGERR(NULL, op, "invalid layer->hidden %zu: w2 has %zu rows, not a multiple of tile %d", H, H,
                        L->tile);
  if (L->numExperts == 0) return vcollSuccess;
  const void* in[4] = {L->w13, L->w13Scales, L->w2, L->w2Scales};
  const void* out[4] = {L->w13Out, L->w13ScalesOut, L->w2Out, L->w2ScalesOut};
  static const char* inName[4] = {"layer->w13", "layer->w13Scales", "layer->w2", "layer->w2Scales"};
  static const char* outName[4] = {"layer->w13Out", "layer->w13ScalesOut", "layer->w2Out", "layer->w2ScalesOut"};
  const size_t per[8] = {ls->w13.payloadBytes, ls->w13.scaleInBytes, ls->w2.payloadBytes, ls->w2.scaleInBytes,
                         ls->w13.payloadBytes, ls->w13.scaleOutBytes, ls->w2.payloadBytes, ls->w2.scaleOutBytes};
  struct range r[8];
  for (int i = 0; i < 8; i++) {
    const void* p = i < 4 ? in[i] : out[i - 4];
    const char* name = i < 4 ? inName[i] : outName[i - 4];
    size_t bytes;
    if (p == NULL) return VCOLL_ARGERR(NULL, op, "%s is NULL", name);
    if (!vcollMulOk(per[i], (size_t)L->numExperts, &bytes) || (uintptr_t)p > UINTPTR_MAX - bytes)
      return VCOLL_ARGERR(NULL, op, "%s: %d experts of %zu bytes overflow the address space", name, L->numExperts,
                          per[i]);
    setRange(&r[i], p, bytes, i >= 4, -1, name);
  }
  return checkOverlaps(op, NULL, r, 8);
}

/* Expert e's tensors in the packed layout of vcollWeightLayer_t. */
static void layerExperts(const void* in, const void* inScales, void* out, void* outScales,
                         const struct weightShape* sh, int numExperts, vcollWeightExpert_t* x) {
  for (int e = 0; e < numExperts; e++) {
    x[e].payload = (const uint8_t*)in + (size_t)e * sh->payloadBytes;
    x[e].scales = (const uint8_t*)inScales + (size_t)e * sh->scaleInBytes;
    x[e].payloadOut = (uint8_t*)out + (size_t)e * sh->payloadBytes;
    x[e].scalesOut = (uint8_t*)outScales + (size_t)e * sh->scaleOutBytes;
  }
}

/* While `stream` captures a CUDA graph: the cached device indices of both
 * permutations with a reference each, or vcollInvalidUsage without
 * touching the cache (a miss would compute, upload with cudaMalloc and a
 * synchronization, and may evict and cudaFree another entry: calls that
 * break a capture or free what it records). */
static vcollResult_t capturedPerms(const char* op, const struct layerShape* ls, int tile, vcollWeightPerm_t* p13,
                                   const int32_t** i13, vcollWeightPerm_t* p2, const int32_t** i2) {
  int d = 0;
  VCOLL_CUDACHECK(NULL, cudaGetDevice(&d));
  pthread_mutex_lock(&cacheLock);
  struct vcollWeightPerm* e[2] = {findLocked(vcollWeightW13, ls->w13.M, tile), findLocked(vcollWeightW2, ls->w2.M, tile)};
  for (int w = 0; w < 2; w++)
    if (e[w] == NULL || e[w]->dev == NULL || d >= e[w]->ndev || e[w]->dev[d] == NULL) {
      pthread_mutex_unlock(&cacheLock);
      return vcollSetError(NULL, vcollInvalidUsage,
                           "%s : the stream is capturing a CUDA graph and the %s permutation (M %zu, tile %d) is not "
                           "cached on device %d%s: make one call per shape and device before capturing "
                           "(docs/weight_layout.md, Semantics)",
                           op, w ? "w2" : "w13", w ? ls->w2.M : ls->w13.M, tile, d,
                           e[w] == NULL ? " (never prepared, or evicted: see vcollWeightCacheSetCapacity)" : "");
    }
  e[0]->refs++;
  e[1]->refs++;
  cacheHits += 2;
  pthread_mutex_unlock(&cacheLock);
  *p13 = e[0];
  *p2 = e[1];
  *i13 = e[0]->dev[d];
  *i2 = e[1]->dev[d];
  return vcollSuccess;
}

static vcollResult_t prepareLayer(const char* op, const vcollWeightLayer_t* L, int gpu, cudaStream_t stream) {
  struct layerShape ls;
  VCOLL_CHECK_RES(checkLayer(op, L, &ls));
  if (L->numExperts == 0) return vcollSuccess;
  vcollResult_t res = vcollSuccess;
  vcollWeightPerm_t p13 = NULL, p2 = NULL;
  const int32_t *i13, *i2;
  vcollWeightExpert_t* x = malloc((size_t)L->numExperts * sizeof(*x));
  if (x == NULL) return vcollSetError(NULL, vcollSystemError, "%s: out of host memory", op);
  if (gpu && vcollStreamIsCapturing(stream)) {
    if ((res = capturedPerms(op, &ls, L->tile, &p13, &i13, &p2, &i2)) != vcollSuccess) goto exit;
  } else {
    if ((res = vcollWeightPermGet(vcollWeightW13, ls.w13.M, L->tile, &p13)) != vcollSuccess) goto exit;
    if ((res = vcollWeightPermGet(vcollWeightW2, ls.w2.M, L->tile, &p2)) != vcollSuccess) goto exit;
    if (gpu) {
      if ((res = vcollWeightPermDevice(p13, &i13)) != vcollSuccess) goto exit;
      if ((res = vcollWeightPermDevice(p2, &i2)) != vcollSuccess) goto exit;
    } else {
      i13 = p13->host;
      i2 = p2->host;
    }
  }
  layerExperts(L->w13, L->w13Scales, L->w13Out, L->w13ScalesOut, &ls.w13, L->numExperts, x);
  res = gpu ? applyChecked(i13, &ls.w13, L->scaleLayout, x, L->numExperts, stream)
            : applyRefChecked(i13, &ls.w13, L->scaleLayout, x, L->numExperts);
  if (res != vcollSuccess) goto exit;
  layerExperts(L->w2, L->w2Scales, L->w2Out, L->w2ScalesOut, &ls.w2, L->numExperts, x);
  res = gpu ? applyChecked(i2, &ls.w2, L->scaleLayout, x, L->numExperts, stream)
            : applyRefChecked(i2, &ls.w2, L->scaleLayout, x, L->numExperts);
exit:
  /* The device indices outlive these handles while queued work may still
   * read them: releasing an evicted entry frees them with cudaFree, which
   * waits for that work. */
  vcollWeightPermRelease(p13);
  vcollWeightPermRelease(p2);
  free(x);
  return res;
}

VCOLL_API vcollResult_t vcollWeightPrepareLayer(const vcollWeightLayer_t* layer, cudaStream_t stream) {
  return prepareLayer("vcollWeightPrepareLayer", layer, 1, stream);
}

VCOLL_API vcollResult_t vcollWeightPrepareLayerRef(const vcollWeightLayer_t* layer) {
  return prepareLayer("vcollWeightPrepareLayerRef", layer, 0, NULL);
}
