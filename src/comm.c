#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll_internal.h"

vcollResult_t vcollCommCreateCommon(int rank, int nranks, vcollBackend_t backend,
                                    const struct vcollBackendOps* ops, vcollComm_t* out) {
  vcollComm_t comm = calloc(1, sizeof(*comm));
  if (comm == NULL) return vcollSetError(NULL, vcollSystemError, "vcollCommInit : out of host memory");
  comm->displs = calloc((size_t)nranks + 1, sizeof(size_t));
  if (comm->displs == NULL) {
    free(comm);
    return vcollSetError(NULL, vcollSystemError, "vcollCommInit : out of host memory");
  }
  comm->rank = rank;
  comm->nranks = nranks;
  comm->backend = backend;
  comm->ops = ops;
  comm->cudaDev = -1;
  comm->forcedAlgo[0] = comm->forcedAlgo[1] = -1;
  comm->checked = (int)vcollParamCheck();
  comm->stagingLimit = vcollParamStagingMax();
  vcollAlgoEnvCheck();
  *out = comm;
  return vcollSuccess;
}

void vcollCommFreeCommon(vcollComm_t comm) {
  free(comm->displs);
  comm->ops = NULL; /* a stale handle fails vcollCheckComm while the memory lasts */
  comm->nranks = 0;
  free(comm);
}

ncclResult_t vcollNcclWait(ncclComm_t nccl, ncclResult_t r) {
  if (r != ncclInProgress) return r;
  if (nccl == NULL) return r; /* nothing to ask: the caller sees ncclInProgress */
  for (;;) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t q = ncclCommGetAsyncError(nccl, &state);
    if (q != ncclSuccess) return q;
    if (state != ncclInProgress) return state;
    sched_yield();
  }
}

void vcollLogVersion(vcollComm_t comm) {
  if (comm->rank != 0 || vcollLogLevel() < VCOLL_LOG_VERSION) return;
  const int v = comm->ncclVersion;
  char nccl[48] = "";
  if (comm->backend == vcollBackendNccl) snprintf(nccl, sizeof(nccl), ", NCCL %d.%d.%d", v / 10000, v / 100 % 100, v % 100);
  vcollLog(VCOLL_LOG_VERSION, __FILE__, __LINE__, "vcoll version %d.%d.%d, backend %s%s, %d rank%s", VCOLL_MAJOR,
           VCOLL_MINOR, VCOLL_PATCH, comm->backend == vcollBackendNccl ? "nccl" : "host (MPI)", nccl, comm->nranks,
           comm->nranks == 1 ? "" : "s");
}

VCOLL_API vcollResult_t vcollCommInitNccl(ncclComm_t nccl, vcollComm_t* comm) {
  return vcollCommWrapNccl(nccl, 0, comm);
}

vcollResult_t vcollCommWrapNccl(ncclComm_t nccl, int owns, vcollComm_t* comm) {
  static const char* op = "vcollCommInitNccl";
  if (comm == NULL) return VCOLL_ARGERR(NULL, op, "comm argument is NULL");
  *comm = NULL;
  if (nccl == NULL) return VCOLL_ARGERR(NULL, op, "nccl argument is NULL");
  int rank, nranks, dev;
  /* A non-blocking communicator may still be initializing (or have failed). */
  const ncclResult_t state = vcollNcclWait(nccl, ncclInProgress);
  if (state != ncclSuccess)
    return vcollSetError(NULL, vcollNcclError, "%s : the NCCL communicator reports %s (ncclCommGetAsyncError)", op,
                         ncclGetErrorString(state));
  VCOLL_NCCLCHECK(NULL, ncclCommUserRank(nccl, &rank));
  VCOLL_NCCLCHECK(NULL, ncclCommCount(nccl, &nranks));
  VCOLL_NCCLCHECK(NULL, ncclCommCuDevice(nccl, &dev));
  vcollComm_t c;
  VCOLL_CHECK_RES(vcollCommCreateCommon(rank, nranks, vcollBackendNccl, &vcollNcclOps, &c));
  c->nccl = nccl;
  c->ownsNccl = owns;
  c->cudaDev = dev;
  ncclGetVersion(&c->ncclVersion);
  int cur = -1;
  cudaGetDevice(&cur);
  vcollResult_t res = vcollSuccess;
  if (cur != dev) {
    res = VCOLL_ARGERR(NULL, op, "the current CUDA device is %d but the NCCL communicator is on device %d", cur, dev);
    goto fail;
  }
  c->scratchWords = nranks + 1 > 64 ? nranks + 1 : 64;
  const size_t scratchBytes = sizeof(uint64_t) * (size_t)c->scratchWords;
  if (cudaMalloc(&c->devScratch, scratchBytes) != cudaSuccess ||
      cudaMallocHost(&c->hostScratch, scratchBytes) != cudaSuccess) {
    res = vcollSetError(NULL, vcollUnhandledCudaError, "%s : could not allocate %zu bytes of scratch", op,
                        scratchBytes);
    goto fail;
  }
  vcollLogVersion(c);
  VCOLL_INFO("comm %p rank %d nranks %d cudaDev %d NCCL version %d backend nccl (%s)", (void*)c, rank,
             nranks, dev, c->ncclVersion, owns ? "owned" : "wrapped, not owned");
  *comm = c;
  return vcollSuccess;
fail:
  cudaGetLastError();
  if (c->devScratch) cudaFree(c->devScratch);
  if (c->hostScratch) cudaFreeHost(c->hostScratch);
  vcollCommFreeCommon(c);
  return res;
}

VCOLL_API vcollResult_t vcollCommDestroy(vcollComm_t comm) {
  if (comm == NULL) return vcollSuccess;
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommDestroy"));
  if (comm->ops->destroy) comm->ops->destroy(comm);
  vcollCommFreeCommon(comm);
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollCommCount(vcollComm_t comm, int* count) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommCount"));
  if (count == NULL) return VCOLL_ARGERR(comm, "vcollCommCount", "count argument is NULL");
  *count = comm->nranks;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollCommUserRank(vcollComm_t comm, int* rank) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommUserRank"));
  if (rank == NULL) return VCOLL_ARGERR(comm, "vcollCommUserRank", "rank argument is NULL");
  *rank = comm->rank;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollCommBackend(vcollComm_t comm, vcollBackend_t* backend) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommBackend"));
  if (backend == NULL) return VCOLL_ARGERR(comm, "vcollCommBackend", "backend argument is NULL");
  *backend = comm->backend;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollCommGetNccl(vcollComm_t comm, ncclComm_t* nccl) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommGetNccl"));
  if (nccl == NULL) return VCOLL_ARGERR(comm, "vcollCommGetNccl", "nccl argument is NULL");
  *nccl = comm->nccl;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollCommSetChecked(vcollComm_t comm, int enable) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommSetChecked"));
  if (enable != 0 && enable != 1)
    return VCOLL_ARGERR(comm, "vcollCommSetChecked", "enable is %d (must be 0 or 1)", enable);
  comm->checked = enable;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollCommSetStagingLimit(vcollComm_t comm, size_t bytes) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommSetStagingLimit"));
  comm->stagingLimit = bytes;
  vcollStagingLimitChanged(comm);
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollCommGetStagingBytes(vcollComm_t comm, size_t* bytes) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, "vcollCommGetStagingBytes"));
  if (bytes == NULL) return VCOLL_ARGERR(comm, "vcollCommGetStagingBytes", "bytes argument is NULL");
  *bytes = vcollStagingHeld(comm);
  return vcollSuccess;
}
