/* Buffers allocated and registered through vcoll (NCCL symmetric windows),
 * and the per-communicator state of the algorithms (staging buffers). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coll.h"

#define SYMM_MIN_NCCL 22700 /* ncclCommWindowRegister and symmetric kernels: NCCL 2.27 */
#define STAGING_MIN_BYTES ((size_t)1 << 20)

struct vcollCollState {
  struct vcollWindow staging[2]; /* vcollStagingPlain, vcollStagingSymm */
  struct vcollWindow* retired;   /* replaced staging buffers, freed at destroy */
  int symmFailed;                /* symmetric registration failed: no pad_symm from then on */
  /* Agreed by every rank: staging[kind] cannot grow to cannotGrow[kind]
   * bytes or more (a power of two: an allocation of that size failed on
   * some rank, or it exceeds the smallest rank's staging limit), so calls
   * needing that much take an algorithm without staging (0: none failed).
   * Reset by vcollCommSetStagingLimit. */
  size_t cannotGrow[2];
  uint64_t growFailures; /* agreed failed growths so far (vcollStagingGrowFailures) */
  int numSms;
  struct vcollCopyDesc* descs;
  int descCap;
  /* Orders a call on a new stream after the previous call's use of the
   * staging buffers (eager calls only; see docs/algorithms.md). */
  cudaEvent_t lastUse;
  cudaStream_t lastStream;
  int haveLastUse;
};

/* ---- buffers of one window: allocate, register, release ----------------- */

/* Whether the allocation succeeded on every rank: one small blocking
 * allreduce on `stream`, so that a failure on some ranks only (one GPU
 * short of memory) makes every rank give up together instead of leaving
 * the others waiting in the collective that follows. Sets *allOk, and
 * *minLimit (may be NULL) to the smallest `limit` of all ranks (their
 * staging limits, in the same allreduce). */
static vcollResult_t agreeAllocated(vcollComm_t comm, int localOk, size_t limit, cudaStream_t stream, int* allOk,
                                    size_t* minLimit) {
  uint64_t v[2] = {localOk ? 0 : 1, (uint64_t)(SIZE_MAX - limit)};
  vcollResult_t res = comm->ops->allreduceMaxU64(comm, v, 2, stream);
  *allOk = res == vcollSuccess && v[0] == 0;
  if (minLimit) *minLimit = res == vcollSuccess ? SIZE_MAX - (size_t)v[1] : limit;
  return res;
}

/* What winAlloc's caller passes: why this rank refuses the allocation
 * (NULL: it does not) and its staging limit (SIZE_MAX: none); winAlloc sets
 * agreedFail (1: every rank knows the allocation failed, the agreement
 * itself went through) and minLimit (the smallest of the ranks' limits). */
struct winGrow {
  const char* refuse;
  size_t limit;
  int agreedFail;
  size_t minLimit;
};

#if NCCL_VERSION_CODE >= 22700
/* The result of a window (de)registration once the communicator is ready:
 * NCCL 2.28.3 can leave a non-blocking one busy after such a call even when
 * it returned ncclSuccess, so this waits whatever the call returned. */
static ncclResult_t winSettle(vcollComm_t comm, ncclResult_t r) {
  return r == ncclSuccess || r == ncclInProgress ? vcollNcclWait(comm->nccl, ncclInProgress) : r;
}
#endif

/* The error of a rank whose allocation another rank's staging limit
 * refused: the same code as on the refusing rank. */
static vcollResult_t refusedElsewhere(vcollComm_t comm, const char* op, size_t size, size_t minLimit) {
  return vcollSetError(comm, vcollInvalidUsage,
                       "%s : a staging buffer may not grow to %zu bytes: another rank's staging limit is %zu bytes "
                       "(vcollCommSetStagingLimit / VCOLL_STAGING_MAX)", op, size, minLimit);
}

/* Allocates (and for `symmetric` registers) a buffer of `size` bytes on
 * every rank of comm; collective. On failure nothing stays allocated on
 * any rank and every rank returns an error. With grow->refuse, this rank
 * allocates nothing and takes part in the agreement as a rank whose
 * allocation failed, with grow->refuse as its error message. */
static vcollResult_t winAlloc(vcollComm_t comm, size_t size, int symmetric, struct vcollWindow* w,
                              cudaStream_t stream, const char* op, struct winGrow* grow) {
  memset(w, 0, sizeof(*w));
  int allOk;
  const char* refuse = grow->refuse;
  const size_t limit = grow->limit;
  size_t* minLimit = &grow->minLimit;
  int* agreedFail = &grow->agreedFail;
  *agreedFail = 0;
  if (!symmetric) {
    cudaError_t err = cudaSuccess;
    if (refuse == NULL) {
      err = cudaMalloc(&w->ptr, size);
      if (err != cudaSuccess) {
        cudaGetLastError();
        w->ptr = NULL;
      }
    }
    vcollResult_t ares = agreeAllocated(comm, refuse == NULL && err == cudaSuccess, limit, stream, &allOk, minLimit);
    if (!allOk) {
      if (w->ptr && cudaFree(w->ptr) != cudaSuccess) cudaGetLastError();
      w->ptr = NULL;
      if (ares == vcollSuccess) *agreedFail = 1;
      if (refuse != NULL) return vcollSetError(comm, vcollInvalidUsage, "%s : %s", op, refuse);
      if (ares == vcollSuccess && *minLimit < size) return refusedElsewhere(comm, op, size, *minLimit);
      if (err != cudaSuccess)
        return vcollSetError(comm, vcollUnhandledCudaError, "%s : cudaMalloc of %zu staging bytes failed: %s", op,
                             size, cudaGetErrorString(err));
      return ares != vcollSuccess ? ares
                                  : vcollSetError(comm, vcollUnhandledCudaError,
                                                  "%s : cudaMalloc of %zu staging bytes failed on another rank", op,
                                                  size);
    }
    w->size = size;
    return vcollSuccess;
  }
#if NCCL_VERSION_CODE >= 22700
  /* Windows are registered in whole pages of NCCL_WIN_REQUIRED_ALIGNMENT. */
  size = (size + NCCL_WIN_REQUIRED_ALIGNMENT - 1) / NCCL_WIN_REQUIRED_ALIGNMENT * NCCL_WIN_REQUIRED_ALIGNMENT;
  ncclResult_t nr = ncclSuccess;
  if (refuse == NULL) {
    nr = ncclMemAlloc(&w->ptr, size);
    if (nr != ncclSuccess) w->ptr = NULL;
  }
  /* Registration is collective: enter it only where every rank has memory. */
  vcollResult_t ares = agreeAllocated(comm, refuse == NULL && nr == ncclSuccess, limit, stream, &allOk, minLimit);
  if (!allOk) {
    if (w->ptr) ncclMemFree(w->ptr);
    w->ptr = NULL;
    if (ares == vcollSuccess) *agreedFail = 1;
    if (refuse != NULL) return vcollSetError(comm, vcollInvalidUsage, "%s : %s", op, refuse);
    if (ares == vcollSuccess && *minLimit < size) return refusedElsewhere(comm, op, size, *minLimit);
    if (nr != ncclSuccess)
      return vcollSetError(comm, vcollNcclError, "%s : ncclMemAlloc of %zu bytes failed: %s", op, size,
                           ncclGetErrorString(nr));
    return ares != vcollSuccess ? ares
                                : vcollSetError(comm, vcollNcclError, "%s : ncclMemAlloc of %zu bytes failed on another rank",
                                                op, size);
  }
  w->fromNccl = 1;
  nr = winSettle(comm, ncclCommWindowRegister(comm->nccl, w->ptr, size, &w->win, NCCL_WIN_COLL_SYMMETRIC));
  /* w->win stays as NCCL set it (NULL if it registered nothing): a window
   * registered before a later error is deregistered below. */
  /* Every rank uses the window, or none: one rank's failed registration
   * would otherwise send it down another algorithm than the others.
   * (NCCL 2.28's deregistration is local to the rank, so the ranks that
   * registered may undo it alone.) */
  ares = agreeAllocated(comm, nr == ncclSuccess, SIZE_MAX, stream, &allOk, NULL);
  if (!allOk) {
    if (w->win) {
      const ncclResult_t dr = winSettle(comm, ncclCommWindowDeregister(comm->nccl, w->win));
      if (dr != ncclSuccess) VCOLL_WARN("ncclCommWindowDeregister(%p) failed: %s", w->ptr, ncclGetErrorString(dr));
    }
    ncclMemFree(w->ptr);
    w->ptr = NULL;
    w->win = NULL;
    w->fromNccl = 0;
    if (nr != ncclSuccess)
      return vcollSetError(comm, vcollNcclError, "%s : ncclCommWindowRegister of %zu bytes failed: %s", op, size,
                           ncclGetErrorString(nr));
    return ares != vcollSuccess ? ares
                                : vcollSetError(comm, vcollNcclError,
                                                "%s : ncclCommWindowRegister of %zu bytes failed on another rank", op,
                                                size);
  }
  w->size = size;
  return vcollSuccess;
#else
  (void)refuse, (void)limit, (void)minLimit, (void)agreedFail;
  return vcollSetError(comm, vcollNotSupported, "%s : vcoll was built against NCCL %d, symmetric windows need 2.27",
                       op, NCCL_VERSION_CODE);
#endif
}

/* The caller makes sure no work that uses the buffer is pending. */
static void winRelease(vcollComm_t comm, struct vcollWindow* w) {
  if (w->ptr == NULL) return;
#if NCCL_VERSION_CODE >= 22700
  if (w->fromNccl) {
    /* NCCL may register nothing (no symmetric support) and leave win NULL. */
    ncclResult_t nr = w->win ? winSettle(comm, ncclCommWindowDeregister(comm->nccl, w->win)) : ncclSuccess;
    if (nr != ncclSuccess) VCOLL_WARN("ncclCommWindowDeregister(%p) failed: %s", w->ptr, ncclGetErrorString(nr));
    nr = ncclMemFree(w->ptr);
    if (nr != ncclSuccess) VCOLL_WARN("ncclMemFree(%p) failed: %s", w->ptr, ncclGetErrorString(nr));
  } else
#endif
  {
    (void)comm;
    if (cudaFree(w->ptr) != cudaSuccess) cudaGetLastError();
  }
  w->ptr = NULL;
  w->win = NULL;
  w->fromNccl = 0;
  w->size = 0;
}

static void syncDevice(void) {
  if (cudaDeviceSynchronize() != cudaSuccess) cudaGetLastError();
}

/* ---- public: vcollMemAlloc / vcollMemFree ------------------------------ */

VCOLL_API vcollResult_t vcollMemAlloc(vcollComm_t comm, size_t size, void** ptr) {
  static const char* op = "vcollMemAlloc";
  VCOLL_CHECK_RES(vcollCheckComm(comm, op));
  if (ptr == NULL) return VCOLL_ARGERR(comm, op, "ptr argument is NULL");
  if (size == 0) return VCOLL_ARGERR(comm, op, "size is 0 (must be >= 1)");
  if (comm->backend != vcollBackendNccl)
    return vcollSetError(comm, vcollNotSupported, "%s : registered buffers need the NCCL backend", op);
  if (comm->ncclVersion < SYMM_MIN_NCCL)
    return vcollSetError(comm, vcollNotSupported, "%s : the loaded NCCL (%d) has no symmetric windows (needs 2.27)",
                         op, comm->ncclVersion);
  struct vcollWindow* w = calloc(1, sizeof(*w));
  if (w == NULL) return vcollSetError(comm, vcollSystemError, "%s : out of host memory", op);
  struct winGrow any = {NULL, SIZE_MAX, 0, SIZE_MAX}; /* a user's buffer: no staging limit */
  vcollResult_t res = winAlloc(comm, size, 1, w, 0, op, &any);
  if (res != vcollSuccess) {
    free(w);
    return res;
  }
  w->next = comm->windows;
  comm->windows = w;
  *ptr = w->ptr;
  VCOLL_INFO("%s: %zu bytes at %p registered as a symmetric window", op, size, w->ptr);
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollMemFree(vcollComm_t comm, void* ptr) {
  static const char* op = "vcollMemFree";
  VCOLL_CHECK_RES(vcollCheckComm(comm, op));
  if (ptr == NULL) return vcollSuccess;
  struct vcollWindow** link = &comm->windows;
  while (*link && (*link)->ptr != ptr) link = &(*link)->next;
  if (*link == NULL)
    return VCOLL_ARGERR(comm, op, "ptr %p was not returned by vcollMemAlloc on this communicator (or was freed)",
                        ptr);
  struct vcollWindow* w = *link;
  *link = w->next;
  syncDevice(); /* like cudaFree: pending work on the buffer completes first */
  winRelease(comm, w);
  free(w);
  return vcollSuccess;
}

int vcollInWindow(vcollComm_t comm, const void* p, size_t bytes) {
  uintptr_t a = (uintptr_t)p;
  for (struct vcollWindow* w = comm->windows; w; w = w->next) {
    uintptr_t base = (uintptr_t)w->ptr;
    if (a >= base && a - base <= w->size && bytes <= w->size - (a - base)) return 1;
  }
  return 0;
}

void vcollWindowsReleaseAll(vcollComm_t comm) {
  if (comm->windows) syncDevice();
  while (comm->windows) {
    struct vcollWindow* w = comm->windows;
    comm->windows = w->next;
    winRelease(comm, w);
    free(w);
  }
}

/* ---- staging buffers ---------------------------------------------------- */

static vcollResult_t getState(vcollComm_t comm, struct vcollCollState** out) {
  struct vcollCollState* st = comm->collState;
  if (st == NULL) {
    st = calloc(1, sizeof(*st));
    if (st == NULL) return vcollSetError(comm, vcollSystemError, "vcoll staging state : out of host memory");
    cudaError_t err = cudaEventCreateWithFlags(&st->lastUse, cudaEventDisableTiming);
    if (err != cudaSuccess) {
      cudaGetLastError();
      free(st);
      return vcollSetError(comm, vcollUnhandledCudaError, "cudaEventCreateWithFlags failed: %s",
                           cudaGetErrorString(err));
    }
    int sms = 0;
    if (cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, comm->cudaDev) != cudaSuccess) {
      cudaGetLastError();
      sms = 0;
    }
    st->numSms = sms > 0 ? sms : 132;
    comm->collState = st;
  }
  *out = st;
  return vcollSuccess;
}

int vcollNumSms(vcollComm_t comm) {
  struct vcollCollState* st = NULL;
  return getState(comm, &st) == vcollSuccess ? st->numSms : 132;
}

/* Staging sizes: powers of two from 1 MiB; SIZE_MAX above 2^62 (no such buffer). */
static size_t nextPow2(size_t x) {
  if (x > ((size_t)1 << (sizeof(size_t) * 8 - 2))) return SIZE_MAX;
  size_t p = STAGING_MIN_BYTES;
  while (p < x) p <<= 1;
  return p;
}

/* Whether staging[kind] was found unable to grow to `size` (a power of
 * two) or more: the rule that both the selection (vcollStagingCanHave) and
 * the acquisition apply, so that they agree. */
static int refusedBefore(const struct vcollCollState* st, int kind, size_t size) {
  return st->cannotGrow[kind] != 0 && size >= st->cannotGrow[kind];
}

int vcollStagingCanHave(vcollComm_t comm, int kind, size_t bytes, cudaStream_t stream, const char** why) {
  struct vcollCollState* st = comm->collState;
  const size_t size = st ? st->staging[kind].size : 0;
  if (bytes <= size) return 1;
  if (vcollStreamCapturing(comm, stream)) {
    if (why) *why = "staging too small to grow during graph capture";
    return 0;
  }
  if (st && refusedBefore(st, kind, nextPow2(bytes))) {
    if (why) *why = "staging cannot grow that far (an earlier growth failed: device memory or the staging limit)";
    return 0;
  }
  return 1;
}

VCOLL_INTERNAL_API uint64_t vcollStagingGrowFailures(vcollComm_t comm) {
  struct vcollCollState* st = comm->collState;
  return st ? st->growFailures : 0;
}

void vcollStagingLimitChanged(vcollComm_t comm) {
  struct vcollCollState* st = comm->collState;
  if (st) st->cannotGrow[0] = st->cannotGrow[1] = 0;
}

size_t vcollStagingHeld(vcollComm_t comm) {
  struct vcollCollState* st = comm->collState;
  if (st == NULL) return 0;
  size_t total = st->staging[0].size + st->staging[1].size;
  for (struct vcollWindow* w = st->retired; w; w = w->next) total += w->size;
  return total;
}

const char* vcollStagedChoice(vcollComm_t comm, const char* algo, size_t bytes, cudaStream_t stream,
                              const char* without, const char** why) {
  if (strcmp(algo, "pad_symm") == 0 &&
      (!vcollSymmAvailable(comm) || !vcollStagingCanHave(comm, vcollStagingSymm, bytes, stream, NULL)))
    algo = "pad";
  if (strcmp(algo, "pad") == 0 && !vcollStagingCanHave(comm, vcollStagingPlain, bytes, stream, why)) algo = without;
  return algo;
}

int vcollSymmAvailable(vcollComm_t comm) {
  if (comm->backend != vcollBackendNccl || comm->ncclVersion < SYMM_MIN_NCCL || NCCL_VERSION_CODE < 22700) return 0;
  struct vcollCollState* st = comm->collState;
  return st == NULL || !st->symmFailed;
}

vcollResult_t vcollCopyDescs(vcollComm_t comm, int n, struct vcollCopyDesc** descs) {
  struct vcollCollState* st = NULL;
  VCOLL_CHECK_RES(getState(comm, &st));
  if (n > st->descCap) {
    struct vcollCopyDesc* d = realloc(st->descs, sizeof(*d) * (size_t)n);
    if (d == NULL) return vcollSetError(comm, vcollSystemError, "copy descriptors : out of host memory");
    st->descs = d;
    st->descCap = n;
  }
  *descs = st->descs;
  return vcollSuccess;
}

vcollResult_t vcollStagingAcquire(vcollComm_t comm, int kind, size_t bytes, cudaStream_t stream,
                                  const char* opName, void** ptr, int* denied) {
  struct vcollCollState* st = NULL;
  if (denied) *denied = 0;
  VCOLL_CHECK_RES(getState(comm, &st));
  struct vcollWindow* buf = &st->staging[kind];
  const char* what = kind == vcollStagingSymm ? "symmetric" : "plain";
  int capturing = vcollStreamCapturing(comm, stream);
  if (bytes > buf->size) {
    if (capturing)
      return vcollSetError(comm, vcollInvalidUsage,
                           "%s : the %s staging buffer must grow from %zu to %zu bytes, which cannot happen during "
                           "CUDA graph capture; make one call of this size (or larger) before capturing",
                           opName, what, buf->size, bytes);
    if (bytes > ((size_t)1 << (sizeof(size_t) * 8 - 2)))
      return vcollSetError(comm, vcollInvalidArgument, "%s : %zu staging bytes is too large", opName, bytes);
    /* Sizes are powers of two from 1 MiB, the same on every rank whatever
     * its limit (which only decides whether it refuses). */
    const size_t size = nextPow2(bytes);
    if (refusedBefore(st, kind, size)) { /* the same on every rank: no agreement */
      if (denied) *denied = 1;
      return vcollSetError(comm, vcollInvalidUsage,
                           "%s : the %s staging buffer cannot grow from %zu to %zu bytes (growing it to %zu bytes or "
                           "more failed earlier on this communicator: out of device memory on some rank, or the "
                           "staging limit, vcollCommSetStagingLimit / VCOLL_STAGING_MAX)",
                           opName, what, buf->size, size, st->cannotGrow[kind]);
    }
    struct vcollWindow* old = NULL;
    if (buf->ptr) {
      old = malloc(sizeof(*old));
      if (old == NULL) return vcollSetError(comm, vcollSystemError, "%s : out of host memory", opName);
    }
    struct vcollWindow fresh;
    char refuse[256];
    struct winGrow grow = {NULL, comm->stagingLimit, 0, SIZE_MAX};
    if (size > grow.limit) {
      snprintf(refuse, sizeof(refuse),
               "the %s staging buffer may not grow to %zu bytes (%zu needed, in powers of two from 1 MiB): the "
               "communicator's staging limit is %zu bytes (vcollCommSetStagingLimit / VCOLL_STAGING_MAX)",
               what, size, bytes, grow.limit);
      grow.refuse = refuse;
    }
    vcollResult_t res = winAlloc(comm, size, kind == vcollStagingSymm, &fresh, stream, opName, &grow);
    if (res != vcollSuccess) {
      free(old);
      if (grow.agreedFail) { /* every rank records the same */
        /* Beyond the smallest of the ranks' limits nothing can be had
         * either, in both buffers (the limit covers both). */
        const size_t pastLimit = grow.minLimit < SIZE_MAX ? nextPow2(grow.minLimit + 1) : SIZE_MAX;
        for (int k = 0; k < 2; k++) {
          const size_t never = k == kind && size < pastLimit ? size : pastLimit;
          if (never != SIZE_MAX && (st->cannotGrow[k] == 0 || never < st->cannotGrow[k])) st->cannotGrow[k] = never;
        }
        st->growFailures++;
        if (denied) *denied = 1;
      } else if (kind == vcollStagingSymm) {
        st->symmFailed = 1;
      }
      return res;
    }
    if (old) {
      *old = *buf;
      old->next = st->retired;
      st->retired = old;
    }
    *buf = fresh;
    VCOLL_INFO("%s: %s staging buffer grown to %zu bytes (%p)", opName, what, size, buf->ptr);
  }
  if (!capturing && st->haveLastUse && st->lastStream != stream)
    VCOLL_CUDACHECK(comm, cudaStreamWaitEvent(stream, st->lastUse, 0));
  *ptr = buf->ptr;
  return vcollSuccess;
}

vcollResult_t vcollStagingAcquirePad(vcollComm_t comm, int* kind, size_t bytes, cudaStream_t stream,
                                     const char* opName, void** ptr, int* denied) {
  const uint64_t failures = vcollStagingGrowFailures(comm);
  vcollResult_t res = vcollStagingAcquire(comm, *kind, bytes, stream, opName, ptr, denied);
  if (res != vcollSuccess && *kind == vcollStagingSymm && !vcollStreamCapturing(comm, stream)) {
    /* Nor the plain one (a staging limit refuses both): no second try. */
    if (!vcollStagingCanHave(comm, vcollStagingPlain, bytes, stream, NULL)) {
      if (denied) *denied = 1;
      return res;
    }
    /* A failure of this call is news; one an earlier call recorded is not. */
    if (vcollStagingGrowFailures(comm) != failures || !vcollSymmAvailable(comm))
      VCOLL_WARN("%s: no symmetric staging buffer (%s); using the plain one", opName, vcollGetLastError(comm));
    else
      VCOLL_INFO("%s: no symmetric staging buffer (%s); using the plain one", opName, vcollGetLastError(comm));
    *kind = vcollStagingPlain;
    res = vcollStagingAcquire(comm, *kind, bytes, stream, opName, ptr, denied);
  }
  return res;
}

vcollResult_t vcollStagingRelease(vcollComm_t comm, cudaStream_t stream, vcollResult_t res) {
  struct vcollCollState* st = comm->collState;
  if (st == NULL || vcollStreamCapturing(comm, stream)) return res;
  const cudaError_t err = cudaEventRecord(st->lastUse, stream);
  if (err == cudaSuccess) {
    st->lastStream = stream;
    st->haveLastUse = 1;
    return res;
  }
  cudaGetLastError();
  if (res != vcollSuccess) return res; /* the first error stays the one reported */
  return vcollSetError(comm, vcollUnhandledCudaError, "%s:%d: cudaEventRecord failed: %s", __FILE__, __LINE__,
                       cudaGetErrorString(err));
}

void vcollCollStateFree(vcollComm_t comm) {
  struct vcollCollState* st = comm->collState;
  if (st == NULL) return;
  syncDevice();
  for (int k = 0; k < 2; k++) winRelease(comm, &st->staging[k]);
  while (st->retired) {
    struct vcollWindow* w = st->retired;
    st->retired = w->next;
    winRelease(comm, w);
    free(w);
  }
  cudaEventDestroy(st->lastUse);
  free(st->descs);
  free(st);
  comm->collState = NULL;
}
