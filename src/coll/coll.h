/* Shared by the algorithms of src/coll/: staging buffers owned by vcoll
 * (comm->collState), the batched copy kernel, and lookups of windows
 * registered through vcollMemAlloc. Not installed. */
#ifndef VCOLL_COLL_H_
#define VCOLL_COLL_H_

#include "vcoll.h"

/* vcoll_internal.h has no C++ guards of its own (copy.cu includes this). */
#ifdef __cplusplus
extern "C" {
#endif

#include "vcoll_internal.h"

/* One copy of `bytes` bytes; src and dst must not overlap. */
struct vcollCopyDesc {
  const void* src;
  void* dst;
  size_t bytes;
};

/* copy.cu: all of descs[0..n) on `stream` in as few launches as possible
 * (one per 64 non-empty copies). 16-byte vector accesses where both sides
 * are 16-byte aligned, 4-byte or byte accesses otherwise. */
vcollResult_t vcollBatchCopy(vcollComm_t comm, const struct vcollCopyDesc* descs, int n, int numSms,
                             cudaStream_t stream);

/* reduce.cu: dst[i] = op over k = 0 .. nsrc-1 of srcs[k][i], for `elems`
 * elements of `type` (avg: the sum divided by avgDivisor), on `stream`, one
 * launch. dst may be one of the sources (element-wise in place). */
#define VCOLL_REDUCE_MAX_SRCS 64
vcollResult_t vcollBatchReduce(vcollComm_t comm, void* dst, const void* const* srcs, int nsrc, size_t elems,
                               vcollDataType_t type, vcollRedOp_t op, int avgDivisor, int numSms,
                               cudaStream_t stream);

/* Staging buffers. The plain one comes from cudaMalloc; the symmetric one
 * from ncclMemAlloc, registered with NCCL_WIN_COLL_SYMMETRIC (collective:
 * every rank grows it at the same call, which holds because all ranks pass
 * the same counts and widths). Both grow to the next power of two, never
 * during graph capture. A buffer that is replaced stays allocated until
 * the communicator is destroyed, since graphs captured earlier may still
 * use it (at most the size of the live buffer again). */
enum { vcollStagingPlain = 0, vcollStagingSymm = 1 };

/* Host-side descriptor scratch of at least n entries, owned by collState. */
vcollResult_t vcollCopyDescs(vcollComm_t comm, int n, struct vcollCopyDesc** descs);
/* Returns in *ptr a staging buffer of at least `bytes` bytes on which work
 * may be enqueued on `stream` (orders it after the previous call's use on
 * another stream). Fails with vcollInvalidUsage when it would have to grow
 * while `stream` is being captured, or beyond the staging limit, or as far
 * as a growth that failed before. *denied (may be NULL) = 1 when it failed
 * because the buffer could not grow, alike on every rank (device memory
 * short on some rank, the limit, an earlier failure): nothing is enqueued
 * then, and the caller may take a path without staging. */
vcollResult_t vcollStagingAcquire(vcollComm_t comm, int kind, size_t bytes, cudaStream_t stream,
                                  const char* opName, void** ptr, int* denied);
/* pad's staging: vcollStagingAcquire of `kind`, falling back (with a
 * warning when the failure is this call's) to the plain kind when the
 * symmetric one cannot be had outside capture; *kind tells which it got. */
vcollResult_t vcollStagingAcquirePad(vcollComm_t comm, int* kind, size_t bytes, cudaStream_t stream,
                                     const char* opName, void** ptr, int* denied);
/* allgatherv.c / reducescatterv.c: an automatically chosen algorithm whose
 * staging was denied chooses again (which now avoids that staging) and
 * runs that instead, with a warning; `res` (its error) otherwise. */
vcollResult_t vcollAgvStagingDenied(vcollComm_t comm, const struct vcollAgvCall* c, const char* algo,
                                    vcollResult_t res);
vcollResult_t vcollRsvStagingDenied(vcollComm_t comm, const struct vcollRsvCall* c, const char* algo,
                                    vcollResult_t res);
/* Marks the end of this call's use of the staging buffers on `stream`,
 * after its work returned `res` (enqueued work is ordered after a failure
 * too); returns res, or the marking's own error after a success. */
vcollResult_t vcollStagingRelease(vcollComm_t comm, cudaStream_t stream, vcollResult_t res);
/* 1 when a call may have `bytes` of staging[kind] on `stream`: the buffer
 * is that large, or may grow (not under graph capture, and no earlier
 * growth to that size or more failed on this communicator); 0 with *why
 * (may be NULL) set otherwise. The same on every rank, so automatic
 * selection can use it. */
int vcollStagingCanHave(vcollComm_t comm, int kind, size_t bytes, cudaStream_t stream, const char** why);
/* The automatic choice `algo` where its staging of `bytes` cannot be had
 * (graph capture, an earlier refusal): pad_symm becomes pad (also without
 * symmetric windows), pad becomes `without` (*why set); any other algo
 * stays. The same on every rank. */
const char* vcollStagedChoice(vcollComm_t comm, const char* algo, size_t bytes, cudaStream_t stream,
                              const char* without, const char** why);
/* 1 when the symmetric staging buffer can be used on this communicator:
 * NCCL >= 2.27 and no earlier registration failed (nor an allocation whose
 * failure the ranks could not agree on; an agreed one is remembered by
 * size instead: vcollStagingCanHave). */
int vcollSymmAvailable(vcollComm_t comm);
/* Multiprocessor count of the communicator's device (cached). */
int vcollNumSms(vcollComm_t comm);

/* 1 if [p, p + bytes) lies inside one buffer from vcollMemAlloc. */
int vcollInWindow(vcollComm_t comm, const void* p, size_t bytes);

static inline size_t vcollAlign16(size_t x) { return (x + 15) & ~(size_t)15; }

/* *bytes = the staging the p2p reducescatterv asks for: nranks - 1 slots of
 * maxRows rows of rowBytes, each slot on 16 bytes. 0 on overflow. */
static inline int vcollRsvP2pStagingBytes(int nranks, size_t maxRows, size_t rowBytes, size_t* bytes) {
  size_t slot;
  return vcollMulOk(maxRows, rowBytes, &slot) && slot <= SIZE_MAX - 15 &&
         vcollMulOk(vcollAlign16(slot), (size_t)(nranks - 1), bytes);
}

/* maxRows * nranks / totalRows for the selection tables: exactly 1 when all
 * counts are equal and above 1 otherwise, also where the ratio of large
 * counts rounds to 1 in double (the rows for equal counts pick algorithms
 * that only run on equal counts). totalRows > 0. */
static inline double vcollImbalance(size_t maxRows, int nranks, size_t totalRows, int equal) {
  const double ratio = (double)maxRows * nranks / (double)totalRows;
  return equal ? 1.0 : (ratio > 1.0 ? ratio : 1.0 + 0x1p-52);
}

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_COLL_H_ */
