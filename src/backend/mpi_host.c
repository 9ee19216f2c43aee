/* The host backend over MPI (part of libvcoll_mpi): the same API on host
 * buffers, for machines without a GPU. Slow by design; correct first. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vcoll_hostfloat.h"
#include "vcoll_internal.h"
#include "vcoll_mpi.h"

struct hostState {
  MPI_Comm comm;
  MPI_Op op; /* one commutative user op; the element type comes from tls */
};

static __thread vcollDataType_t tlsType;
static __thread vcollRedOp_t tlsOp;
static __thread size_t tlsElemsPerUnit;

static vcollResult_t mpiErr(vcollComm_t comm, int err, const char* what) {
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(err, msg, &len);
  return vcollSetError(comm, vcollMpiError, "host backend: %s failed: %s", what, msg);
}

#define MPICHECK(comm, call)                                   \
  do {                                                         \
    int e_ = (call);                                           \
    if (e_ != MPI_SUCCESS) return mpiErr((comm), e_, #call);   \
  } while (0)

/* max/min propagate NaN, so the result does not depend on the order MPI
 * combines the ranks in (a > b ? a : b keeps a NaN only as b). */
static inline double applyOp(vcollRedOp_t op, double a, double b) {
  switch (op) {
    case vcollProd: return a * b;
    case vcollMax: return a != a ? a : b != b ? b : a > b ? a : b;
    case vcollMin: return a != a ? a : b != b ? b : a < b ? a : b;
    default: return a + b; /* sum, avg (divided afterwards) */
  }
}

/* Integers wrap (api.md): sums and products in the unsigned type of the
 * same width, since signed overflow is undefined in C. */
#define INT_LOOP(T, U)                                                                \
  do {                                                                                \
    const T* x = in;                                                                  \
    T* y = inout;                                                                     \
    for (size_t i = 0; i < n; i++) {                                                  \
      switch (tlsOp) {                                                                \
        case vcollProd: y[i] = (T)((U)x[i] * (U)y[i]); break;                         \
        case vcollMax: y[i] = x[i] > y[i] ? x[i] : y[i]; break;                       \
        case vcollMin: y[i] = x[i] < y[i] ? x[i] : y[i]; break;                       \
        default: y[i] = (T)((U)x[i] + (U)y[i]); break;                                \
      }                                                                               \
    }                                                                                 \
  } while (0)


static void hostReduceFn(void* in, void* inout, int* len, MPI_Datatype* dt) {
  (void)dt;
  size_t n = (size_t)*len * tlsElemsPerUnit;
  switch (tlsType) {
    case vcollInt8: INT_LOOP(int8_t, uint8_t); break;
    case vcollUint8: INT_LOOP(uint8_t, uint8_t); break;
    case vcollInt32: INT_LOOP(int32_t, uint32_t); break;
    case vcollUint32: INT_LOOP(uint32_t, uint32_t); break;
    case vcollInt64: INT_LOOP(int64_t, uint64_t); break;
    case vcollUint64: INT_LOOP(uint64_t, uint64_t); break;
    case vcollFloat32: {
      const float* x = in;
      float* y = inout;
      for (size_t i = 0; i < n; i++) y[i] = (float)applyOp(tlsOp, x[i], y[i]);
      break;
    }
    case vcollFloat64: {
      const double* x = in;
      double* y = inout;
      for (size_t i = 0; i < n; i++) y[i] = applyOp(tlsOp, x[i], y[i]);
      break;
    }
    default: break; /* fp16, bf16, fp8: reduced as fp32 (hostRsv widens them) */
  }
}

/* fp16, bf16 and fp8 are reduced in fp32 and rounded once at the end (fp8
 * saturating), the arithmetic of the p2p kernel (src/coll/reduce_elem.cuh),
 * not rounded after every pairwise step of MPI's reduction. */
static int isNarrowFloat(vcollDataType_t t) {
  return t == vcollFloat16 || t == vcollBfloat16 || t == vcollFloat8e4m3 || t == vcollFloat8e5m2;
}

static float narrowToF32(vcollDataType_t t, const void* p, size_t i) {
  switch (t) {
    case vcollFloat16: return vcollF16ToF32(((const uint16_t*)p)[i]);
    case vcollBfloat16: return vcollBf16ToF32(((const uint16_t*)p)[i]);
    case vcollFloat8e4m3: return vcollE4m3ToF32(((const uint8_t*)p)[i]);
    default: return vcollE5m2ToF32(((const uint8_t*)p)[i]);
  }
}

static void f32ToNarrow(vcollDataType_t t, void* p, size_t i, float f) {
  switch (t) {
    case vcollFloat16: ((uint16_t*)p)[i] = vcollF32ToF16(f); break;
    case vcollBfloat16: ((uint16_t*)p)[i] = vcollF32ToBf16(f); break;
    case vcollFloat8e4m3: ((uint8_t*)p)[i] = vcollF32ToE4m3Sat(f); break;
    default: ((uint8_t*)p)[i] = vcollF32ToE5m2Sat(f); break;
  }
}

/* avg: the sum (in fp32 or fp64) divided by the rank count. */
static void divideInPlace(void* buf, size_t n, int wide64, int by) {
  for (size_t i = 0; i < n; i++) {
    if (wide64) ((double*)buf)[i] /= (double)by;
    else ((float*)buf)[i] /= (float)by;
  }
}

static vcollResult_t rowsToInts(vcollComm_t comm, const size_t* counts, const size_t* displs, int* icounts,
                                int* idispls, const char* op) {
  for (int r = 0; r < comm->nranks; r++) {
    if (counts[r] > INT_MAX || displs[r] > INT_MAX)
      return vcollSetError(comm, vcollNotSupported, "%s : host backend supports at most %d rows (MPI counts)",
                           op, INT_MAX);
    icounts[r] = (int)counts[r];
    idispls[r] = (int)displs[r];
  }
  return vcollSuccess;
}

static vcollResult_t rowType(vcollComm_t comm, size_t rowBytes, MPI_Datatype* t, const char* op) {
  if (rowBytes > INT_MAX)
    return vcollSetError(comm, vcollNotSupported, "%s : host backend supports rows of at most %d bytes", op, INT_MAX);
  MPICHECK(comm, MPI_Type_contiguous((int)rowBytes, MPI_BYTE, t));
  MPICHECK(comm, MPI_Type_commit(t));
  return vcollSuccess;
}

static vcollResult_t hostAgv(vcollComm_t comm, const struct vcollAgvCall* c) {
  struct hostState* st = comm->backendState;
  int n = comm->nranks;
  vcollResult_t res = vcollSuccess;
  int* ints = malloc(sizeof(int) * 2 * (size_t)n);
  MPI_Request* reqs = calloc((size_t)c->ntensors, sizeof(MPI_Request));
  MPI_Datatype* types = calloc((size_t)c->ntensors, sizeof(MPI_Datatype));
  int started = 0;
  if (!ints || !reqs || !types) { res = vcollSetError(comm, vcollSystemError, "vcollAllGatherV : out of host memory"); goto out; }
  res = rowsToInts(comm, c->counts, c->displs, ints, ints + n, "vcollAllGatherV");
  if (res != vcollSuccess) goto out;
  /* Every limit before the first tensor starts: an error writes nothing. */
  for (int i = 0; i < c->ntensors; i++) {
    const size_t rowBytes = c->tensors[i].width * vcollTypeSize(c->tensors[i].datatype);
    if (rowBytes > INT_MAX) {
      res = vcollSetError(comm, vcollNotSupported,
                          "vcollAllGatherV : tensors[%d] has rows of %zu bytes; the host backend supports at most "
                          "%d (MPI counts)", i, rowBytes, INT_MAX);
      goto out;
    }
  }
  res = vcollAgvProduceSend(c);
  if (res != vcollSuccess) goto out;
  for (int i = 0; i < c->ntensors; i++) {
    const vcollTensor_t* t = c->tensors + i;
    res = rowType(comm, t->width * vcollTypeSize(t->datatype), &types[i], "vcollAllGatherV");
    if (res != vcollSuccess) goto out;
    started = i + 1;
    const void* send = c->inPlace[i] ? MPI_IN_PLACE : t->sendbuff;
    int e = MPI_Iallgatherv(send, ints[comm->rank], types[i], t->recvbuff, ints, ints + n, types[i], st->comm,
                            &reqs[i]);
    if (e != MPI_SUCCESS) { res = mpiErr(comm, e, "MPI_Iallgatherv"); started = i; MPI_Type_free(&types[i]); goto out; }
  }
  {
    int e = MPI_Waitall(started, reqs, MPI_STATUSES_IGNORE);
    if (e != MPI_SUCCESS) res = mpiErr(comm, e, "MPI_Waitall");
  }
  for (int i = 0; i < started; i++) MPI_Type_free(&types[i]);
  started = 0;
  comm->lastAlgo[vcollCollAllGatherV] = "mpi";
out:
  if (started) { MPI_Waitall(started, reqs, MPI_STATUSES_IGNORE); for (int i = 0; i < started; i++) MPI_Type_free(&types[i]); }
  free(ints);
  free(reqs);
  free(types);
  return res;
}

static vcollResult_t hostRsv(vcollComm_t comm, const struct vcollRsvCall* c) {
  struct hostState* st = comm->backendState;
  const int n = comm->nranks;
  const size_t mine = c->counts[comm->rank];
  const int narrow = isNarrowFloat(c->datatype);
  const vcollDataType_t redType = narrow ? vcollFloat32 : c->datatype; /* what MPI reduces */
  const size_t redRowBytes = narrow ? c->width * sizeof(float) : c->rowBytes;
  vcollResult_t res = vcollSuccess;
  MPI_Datatype rt = MPI_DATATYPE_NULL;
  void* wideSend = NULL;
  void* tmp = NULL;
  int* ints = malloc(sizeof(int) * 2 * (size_t)n);
  if (!ints) return vcollSetError(comm, vcollSystemError, "vcollReduceScatterV : out of host memory");
  res = rowsToInts(comm, c->counts, c->displs, ints, ints + n, "vcollReduceScatterV");
  if (res != vcollSuccess) goto out;
  size_t wideBytes;
  if (c->totalRows > INT_MAX || __builtin_mul_overflow(c->totalRows, redRowBytes, &wideBytes)) {
    res = vcollSetError(comm, vcollNotSupported,
                        "vcollReduceScatterV : counts sum to %zu rows; the host backend supports at most %d "
                        "(MPI counts)", c->totalRows, INT_MAX);
    goto out;
  }
  if (c->totalRows == 0) goto done;
  res = rowType(comm, redRowBytes, &rt, "vcollReduceScatterV");
  if (res != vcollSuccess) goto out;
  const void* src = c->sendbuff;
  if (narrow) {
    wideSend = malloc(wideBytes);
    if (!wideSend) { res = vcollSetError(comm, vcollSystemError, "vcollReduceScatterV : out of host memory"); goto out; }
    for (size_t e = 0; e < c->totalRows * c->width; e++)
      ((float*)wideSend)[e] = narrowToF32(c->datatype, c->sendbuff, e);
    src = wideSend;
  }
  /* MPI forbids aliased buffers: in place goes through a temporary, and so
   * do the narrow types (rounded into recvbuff at the end). */
  void* dst = c->recvbuff;
  if (c->inPlace || narrow) {
    tmp = malloc(mine * redRowBytes + 1);
    if (!tmp) { res = vcollSetError(comm, vcollSystemError, "vcollReduceScatterV : out of host memory"); goto out; }
    dst = tmp;
  }
  static char dummy;
  tlsType = redType;
  tlsOp = c->op;
  tlsElemsPerUnit = c->width;
  int e = MPI_Reduce_scatter(src, mine > 0 ? dst : &dummy, ints, rt, st->op, st->comm);
  if (e != MPI_SUCCESS) { res = mpiErr(comm, e, "MPI_Reduce_scatter"); goto out; }
  if (c->op == vcollAvg) divideInPlace(dst, mine * c->width, redType == vcollFloat64, n);
  if (narrow)
    for (size_t k = 0; k < mine * c->width; k++) f32ToNarrow(c->datatype, c->recvbuff, k, ((float*)dst)[k]);
  else if (c->inPlace)
    memcpy(c->recvbuff, tmp, mine * c->rowBytes);
done:
  comm->lastAlgo[vcollCollReduceScatterV] = "mpi";
out:
  if (rt != MPI_DATATYPE_NULL) MPI_Type_free(&rt);
  free(wideSend);
  free(tmp);
  free(ints);
  return res;
}

static vcollResult_t hostAllreduceMaxU64(vcollComm_t comm, uint64_t* vals, int n, cudaStream_t stream) {
  (void)stream;
  struct hostState* st = comm->backendState;
  MPICHECK(comm, MPI_Allreduce(MPI_IN_PLACE, vals, n, MPI_UINT64_T, MPI_MAX, st->comm));
  return vcollSuccess;
}

static vcollResult_t hostAllgatherU64(vcollComm_t comm, uint64_t val, uint64_t* out, cudaStream_t stream) {
  (void)stream;
  struct hostState* st = comm->backendState;
  MPICHECK(comm, MPI_Allgather(&val, 1, MPI_UINT64_T, out, 1, MPI_UINT64_T, st->comm));
  return vcollSuccess;
}

static void hostDestroy(vcollComm_t comm) {
  struct hostState* st = comm->backendState;
  if (!st) return;
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (!finalized) {
    MPI_Op_free(&st->op);
    MPI_Comm_free(&st->comm);
  }
  free(st);
  comm->backendState = NULL;
}

static const struct vcollBackendOps hostOps = {
    .name = "host",
    .allgatherv = hostAgv,
    .reducescatterv = hostRsv,
    .allreduceMaxU64 = hostAllreduceMaxU64,
    .allgatherU64 = hostAllgatherU64,
    .destroy = hostDestroy,
};

VCOLL_API vcollResult_t vcollCommInitHost(MPI_Comm mpiComm, vcollComm_t* comm) {
  return vcollCommInitMPI(mpiComm, vcollBackendHost, comm);
}

static vcollResult_t initHost(MPI_Comm mpiComm, vcollComm_t* out) {
  int rank, size;
  MPICHECK(NULL, MPI_Comm_rank(mpiComm, &rank));
  MPICHECK(NULL, MPI_Comm_size(mpiComm, &size));
  struct hostState* st = calloc(1, sizeof(*st));
  if (!st) return vcollSetError(NULL, vcollSystemError, "vcollCommInitMPI : out of host memory");
  MPICHECK(NULL, MPI_Comm_dup(mpiComm, &st->comm));
  MPI_Comm_set_errhandler(st->comm, MPI_ERRORS_RETURN);
  MPICHECK(NULL, MPI_Op_create(hostReduceFn, 1, &st->op));
  vcollComm_t c;
  vcollResult_t res = vcollCommCreateCommon(rank, size, vcollBackendHost, &hostOps, &c);
  if (res != vcollSuccess) {
    MPI_Op_free(&st->op);
    MPI_Comm_free(&st->comm);
    free(st);
    return res;
  }
  c->backendState = st;
  vcollLogVersion(c);
  VCOLL_INFO("comm %p rank %d nranks %d backend host (MPI)", (void*)c, rank, size);
  *out = c;
  return vcollSuccess;
}

/* Rank and size among the ranks of mpiComm on this node. */
static int localRanks(MPI_Comm mpiComm, int* localRank, int* localSize) {
  int rank, err;
  MPI_Comm local;
  if ((err = MPI_Comm_rank(mpiComm, &rank)) != MPI_SUCCESS) return err;
  if ((err = MPI_Comm_split_type(mpiComm, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &local)) != MPI_SUCCESS) return err;
  MPI_Comm_rank(local, localRank);
  MPI_Comm_size(local, localSize);
  MPI_Comm_free(&local);
  return MPI_SUCCESS;
}

static int visibleGpus(void) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    n = 0;
  }
  return n;
}

static vcollResult_t initNccl(MPI_Comm mpiComm, vcollComm_t* out) {
  int rank, size, localRank, localSize, ndev;
  MPICHECK(NULL, MPI_Comm_rank(mpiComm, &rank));
  MPICHECK(NULL, MPI_Comm_size(mpiComm, &size));
  MPICHECK(NULL, localRanks(mpiComm, &localRank, &localSize));
  ndev = visibleGpus();
  /* One GPU per rank: decide together, so that no rank enters NCCL's
   * initialization alone (it would wait for the others forever). */
  const int share = vcollParamShareGpu();
  int ok = ndev >= localSize || (share && ndev > 0);
  MPICHECK(NULL, MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, mpiComm));
  if (!ok) {
    if (ndev < localSize)
      return vcollSetError(NULL, vcollInvalidUsage,
                           "vcollCommInitMPI : backend nccl needs one GPU per rank, but this node has %d rank%s and "
                           "%d visible GPU%s",
                           localSize, localSize == 1 ? "" : "s", ndev, ndev == 1 ? "" : "s");
    return vcollSetError(NULL, vcollInvalidUsage,
                         "vcollCommInitMPI : backend nccl needs one GPU per rank, and another node has too few");
  }
  int dev = localRank % ndev; /* localRank itself unless VCOLL_SHARE_GPU */
  if (localSize > ndev) {
    /* NCCL refuses two ranks of one host on one GPU; a host id of its own
     * per rank makes each rank a node of its own to NCCL, which then moves
     * all data over its network transport (sockets on loopback, with
     * NCCL_SOCKET_IFNAME=lo): slow, but the same algorithms and kernels. */
    char hostId[64];
    snprintf(hostId, sizeof(hostId), "vcoll-share-gpu-rank-%d", rank);
    setenv("NCCL_HOSTID", hostId, 1);
    if (rank == 0)
      VCOLL_WARN("vcollCommInitMPI : VCOLL_SHARE_GPU: %d ranks share %d GPU(s) on this node, each rank a host of its "
                 "own to NCCL (NCCL_HOSTID); for tests only",
                 localSize, ndev);
  }
  if (cudaSetDevice(dev) != cudaSuccess)
    return vcollSetError(NULL, vcollUnhandledCudaError, "vcollCommInitMPI : cudaSetDevice(%d) failed", dev);
  struct { int ok; ncclUniqueId id; } uid;
  memset(&uid, 0, sizeof(uid));
  if (rank == 0) uid.ok = ncclGetUniqueId(&uid.id) == ncclSuccess;
  MPICHECK(NULL, MPI_Bcast(&uid, sizeof(uid), MPI_BYTE, 0, mpiComm));
  if (!uid.ok) return vcollSetError(NULL, vcollNcclError, "vcollCommInitMPI : ncclGetUniqueId failed on rank 0");
  ncclComm_t nccl = NULL;
  ncclResult_t nr = ncclCommInitRank(&nccl, size, uid.id, rank);
  /* ncclInProgress: NCCL_COMM_BLOCKING=0 made it non-blocking; the wrap
   * waits for its initialization. */
  if (nr != ncclSuccess && nr != ncclInProgress) {
    if (nccl != NULL) ncclCommDestroy(nccl);
    return vcollSetError(NULL, vcollNcclError, "vcollCommInitMPI : ncclCommInitRank failed: %s",
                         ncclGetErrorString(nr));
  }
  vcollResult_t res = vcollCommWrapNccl(nccl, 1, out);
  if (res != vcollSuccess) ncclCommDestroy(nccl);
  return res;
}

VCOLL_API vcollResult_t vcollCommInitMPI(MPI_Comm mpiComm, vcollBackend_t backend, vcollComm_t* comm) {
  static const char* op = "vcollCommInitMPI";
  if (comm == NULL) return VCOLL_ARGERR(NULL, op, "comm argument is NULL");
  *comm = NULL;
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) return vcollSetError(NULL, vcollInvalidUsage, "%s : MPI is not initialized", op);
  if (mpiComm == MPI_COMM_NULL) return VCOLL_ARGERR(NULL, op, "mpiComm is MPI_COMM_NULL");
  if (backend != vcollBackendNccl && backend != vcollBackendHost && backend != vcollBackendAuto)
    return VCOLL_ARGERR(NULL, op, "invalid backend %d", (int)backend);
  if (backend == vcollBackendAuto) {
    const char* env = vcollParamBackend();
    if (env && strcmp(env, "nccl") == 0) backend = vcollBackendNccl;
    else if (env && strcmp(env, "host") == 0) backend = vcollBackendHost;
    else if (env && strcmp(env, "auto") != 0) VCOLL_NOTICE("VCOLL_BACKEND=%s is not nccl, host or auto; ignored", env);
  }
  /* Every rank runs the same collectives here, whatever it asked for, and
   * the ranks agree: a backend argument, VCOLL_BACKEND or VCOLL_CHECK that
   * makes ranks differ is an error on every rank instead of a hang. */
  int localRank, localSize;
  MPICHECK(NULL, localRanks(mpiComm, &localRank, &localSize));
  const int ndev = visibleGpus();
  const int checked = vcollParamCheck() != 0;
  int v[3] = {ndev > 0 && (ndev >= localSize || vcollParamShareGpu()), checked, -checked};
  MPICHECK(NULL, MPI_Allreduce(MPI_IN_PLACE, v, 3, MPI_INT, MPI_MIN, mpiComm));
  if (backend == vcollBackendAuto) {
    if (!v[0] && ndev > 0)
      VCOLL_NOTICE("vcollCommInitMPI : %d ranks on this node but %d GPU(s) visible; backend auto uses the host backend "
                 "(NCCL needs one GPU per rank)",
                 localSize, ndev);
    backend = v[0] ? vcollBackendNccl : vcollBackendHost;
  }
  int b[2] = {(int)backend, -(int)backend};
  MPICHECK(NULL, MPI_Allreduce(MPI_IN_PLACE, b, 2, MPI_INT, MPI_MIN, mpiComm));
  if (b[0] != -b[1])
    return vcollSetError(NULL, vcollInvalidUsage,
                         "%s : the ranks chose different backends (this rank: %s; the backend argument or "
                         "VCOLL_BACKEND differs between ranks)", op, backend == vcollBackendNccl ? "nccl" : "host");
  if (v[1] != -v[2])
    return vcollSetError(NULL, vcollInvalidUsage,
                         "%s : VCOLL_CHECK is %d on this rank but not on every rank (checked mode must be the same on "
                         "all ranks)", op, checked);
  return backend == vcollBackendNccl ? initNccl(mpiComm, comm) : initHost(mpiComm, comm);
}
