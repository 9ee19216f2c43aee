/* Internal declarations shared by vcoll's sources. Not installed. */
#ifndef VCOLL_INTERNAL_H_
#define VCOLL_INTERNAL_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "vcoll.h"
#include "vcoll_debug.h"

#define VCOLL_MAX_ALGOS 16

/* 1 if [a, a + alen) and [b, b + blen) share a byte (empty or NULL ranges
 * never do): the argument checks' overlap test. */
static inline int vcollOverlaps(const void* a, size_t alen, const void* b, size_t blen) {
  if (alen == 0 || blen == 0 || a == NULL || b == NULL) return 0;
  const uintptr_t pa = (uintptr_t)a, pb = (uintptr_t)b;
  return pa < pb + blen && pb < pa + alen;
}

/* Writes this rank's rows of every tensor of an allgatherv on `stream`:
 * tensor i's rows to dst[i]. It runs inside the collective, which then
 * holds the communicator's staging buffer, copy descriptors and
 * displacements: it must only enqueue work on `stream` (no vcoll
 * collective, nothing that reads or grows comm state), and it must not fail
 * on one rank alone where the others would go on into NCCL (check what it
 * can fail on before the collective). */
typedef vcollResult_t (*vcollAgvProduceFn)(void* ctx, void* const* dst, cudaStream_t stream);
#define VCOLL_AGV_PRODUCE_MAX_TENSORS 8

/* A validated allgatherv call. displs[r] is rank r's first row; displs has
 * nranks + 1 entries, displs[nranks] = total rows. inPlace[i] is 1 when
 * tensor i's sendbuff already sits at this rank's slot of recvbuff. */
struct vcollAgvCall {
  const vcollTensor_t* tensors;
  int ntensors;
  const size_t* counts;
  const size_t* displs;
  size_t totalRows;
  size_t maxRows;
  size_t totalBytes; /* sum over tensors of totalRows * rowBytes */
  const char* inPlace;
  cudaStream_t stream;
  int algo; /* NCCL backend: the algorithm index already chosen (checked mode puts it in the digest), or -1 */
  int algoAuto; /* with algo >= 0: 1 when it is the automatic choice (may change for lack of staging) */
  /* NULL, or (vcoll's own callers: the MoE dispatch) the producer of this
   * rank's rows, run once per call after the checks: by the padded
   * algorithms straight into their staging segment, instead of their pack
   * copy; by every other algorithm and backend into the tensors' sendbuffs
   * first (vcollAgvProduceSend). At most VCOLL_AGV_PRODUCE_MAX_TENSORS. */
  vcollAgvProduceFn produce;
  void* produceCtx;
};

/* A validated reducescatterv call; same conventions. */
struct vcollRsvCall {
  const void* sendbuff;
  void* recvbuff;
  const size_t* counts;
  const size_t* displs;
  size_t totalRows;
  size_t maxRows;
  size_t width;
  size_t rowBytes;
  vcollDataType_t datatype;
  vcollRedOp_t op;
  int inPlace;
  cudaStream_t stream;
  int algo; /* as in vcollAgvCall */
  int algoAuto;
};

/* What a backend implements. Arguments reach it validated. */
struct vcollBackendOps {
  const char* name;
  vcollResult_t (*allgatherv)(vcollComm_t comm, const struct vcollAgvCall* call);
  vcollResult_t (*reducescatterv)(vcollComm_t comm, const struct vcollRsvCall* call);
  /* Element-wise max over ranks of `n` uint64 values, in place, result on
   * the host of every rank when it returns (blocking). Used by checked
   * mode and small host-side agreements. */
  vcollResult_t (*allreduceMaxU64)(vcollComm_t comm, uint64_t* vals, int n, cudaStream_t stream);
  /* All-gather of one uint64 per rank into out[nranks] on the host (blocking). */
  vcollResult_t (*allgatherU64)(vcollComm_t comm, uint64_t val, uint64_t* out, cudaStream_t stream);
  void (*destroy)(vcollComm_t comm);
};

/* A buffer from vcollMemAlloc (src/coll/window.c), or a staging buffer. */
struct vcollWindow {
  void* ptr;
  size_t size;
  ncclWindow_t win; /* NULL for a plain cudaMalloc buffer (and when NCCL registered nothing) */
  int fromNccl;     /* allocated by ncclMemAlloc: freed by ncclMemFree */
  struct vcollWindow* next;
};

struct vcollComm {
  int rank;
  int nranks;
  vcollBackend_t backend;
  const struct vcollBackendOps* ops;
  void* backendState; /* owned by the backend; freed by ops->destroy */

  ncclComm_t nccl;    /* NCCL backend: the communicator */
  int ownsNccl;       /* destroy nccl in vcollCommDestroy */
  int cudaDev;
  int ncclVersion;
  int checked;        /* checked mode (vcollCommSetChecked / VCOLL_CHECK) */
  size_t stagingLimit; /* each staging buffer's largest size (vcollCommSetStagingLimit / VCOLL_STAGING_MAX) */

  /* Per-call scratch, sized nranks + 1 at creation (calls on one
   * communicator are not thread-safe, as in NCCL). */
  size_t* displs;

  /* NCCL backend helpers for checked mode and count gathering. */
  void* devScratch;   /* device, scratchWords uint64 */
  void* hostScratch;  /* pinned host, scratchWords uint64 */
  int scratchWords;   /* max(64, nranks + 1): an allgather of one word per rank fits */

  /* Algorithm forced on this communicator (-1: automatic). */
  int forcedAlgo[2];
  const char* lastAlgo[2];

  /* Symmetric windows registered through vcollMemAlloc. */
  struct vcollWindow* windows;
  /* State of the algorithms in src/coll/ (staging buffers, ...), owned
   * there and released by vcollCollStateFree. */
  void* collState;

  char lastError[512];
};

/* Functions libvcoll_mpi (or a unit test) calls: exported from libvcoll
 * but not part of the public API (no public header declares them). */
#define VCOLL_INTERNAL_API VCOLL_API

/* comm.c */
VCOLL_INTERNAL_API vcollResult_t vcollCommCreateCommon(int rank, int nranks, vcollBackend_t backend,
                                    const struct vcollBackendOps* ops, vcollComm_t* comm);
VCOLL_INTERNAL_API void vcollCommFreeCommon(vcollComm_t comm);
/* VCOLL_DEBUG=VERSION (as NCCL_DEBUG=VERSION): one line per communicator,
 * by its rank 0, with vcoll's version, the backend and NCCL's version. */
VCOLL_INTERNAL_API void vcollLogVersion(vcollComm_t comm);
/* Wraps `nccl`; with owns = 1, vcollCommDestroy destroys it. */
VCOLL_INTERNAL_API vcollResult_t vcollCommWrapNccl(ncclComm_t nccl, int owns, vcollComm_t* comm);

/* argcheck.c: validate, fill the call structs. On failure, sets the last
 * error naming `opName` and the argument, and returns its code. */
vcollResult_t vcollCheckComm(vcollComm_t comm, const char* opName);
vcollResult_t vcollCheckAllGatherV(vcollComm_t comm, const vcollTensor_t* tensors, int ntensors,
                                   const size_t* counts, cudaStream_t stream,
                                   struct vcollAgvCall* call, char* inPlace);
/* collectives.c: vcollAllGatherV whose rows of this rank `produce` writes
 * (see struct vcollAgvCall); the tensors' sendbuffs are where the
 * non-padded algorithms read them. */
vcollResult_t vcollAllGatherVProduced(const vcollTensor_t* tensors, int ntensors, const size_t* counts,
                                      vcollComm_t comm, cudaStream_t stream, vcollAgvProduceFn produce, void* ctx);
/* vcollReduceScatterV with the algorithm `algo` on the NCCL backend (vcoll's
 * own callers that need its arithmetic, whatever the communicator forces);
 * vcollInternalError where it cannot run the call. Other backends ignore it. */
VCOLL_INTERNAL_API vcollResult_t vcollReduceScatterVAlgo(const void* sendbuff, void* recvbuff, const size_t* counts, size_t width,
                                      vcollDataType_t datatype, vcollRedOp_t redop, vcollComm_t comm,
                                      cudaStream_t stream, const char* algo);
/* Runs the call's producer, if any, into the tensors' sendbuffs. */
VCOLL_INTERNAL_API vcollResult_t vcollAgvProduceSend(const struct vcollAgvCall* call);
/* vcollGatherCounts, its messages naming `op` (vcollMoeGatherCounts too). */
vcollResult_t vcollGatherCountsAs(const char* op, vcollComm_t comm, size_t localCount, size_t* counts,
                                  cudaStream_t stream);
vcollResult_t vcollCheckReduceScatterV(vcollComm_t comm, const void* sendbuff, void* recvbuff,
                                       const size_t* counts, size_t width,
                                       vcollDataType_t datatype, vcollRedOp_t op,
                                       cudaStream_t stream, struct vcollRsvCall* call);
/* One thing the ranks of a checked call must pass alike: what the error
 * message calls it, and a hash of this rank's value. */
struct vcollAgreeField {
  const char* name;
  uint64_t hash;
  int derived; /* follows from the other fields (the algorithm): named only when none of them differs */
};
#define VCOLL_AGREE_MAX_FIELDS 8
/* Checked mode (VCOLL_CHECK=1): all ranks agree that they passed the same
 * fields (nf <= VCOLL_AGREE_MAX_FIELDS; unread when localRes fails), and
 * that none of them failed its local checks (localRes), in one small
 * allreduce. Returns on every rank vcollArgumentMismatch naming the fields
 * that differ, or vcollInvalidArgument naming the lowest rank whose own
 * checks failed (that rank returns its own error). */
vcollResult_t vcollCheckAgreement(vcollComm_t comm, const char* opName, const struct vcollAgreeField* fields,
                                  int nf, vcollResult_t localRes, cudaStream_t stream);
uint64_t vcollHashBytes(uint64_t h, const void* data, size_t len);
/* a * b and a + b with overflow detection: return 0 on overflow. */
int vcollMulOk(size_t a, size_t b, size_t* out);
int vcollAddOk(size_t a, size_t b, size_t* out);

/* dtype.c */
int vcollTypeIsFloat(vcollDataType_t type);

/* param.c: environment tunables, read once. */
VCOLL_INTERNAL_API int64_t vcollParamCheck(void); /* VCOLL_CHECK */
const char* vcollParamAlgo(void);     /* VCOLL_ALGO */
/* VCOLL_STAGING_MAX: bytes, with an optional K, M, G or T suffix (powers of
 * 1024); SIZE_MAX when unset, "none" or not a size (with a notice). Read at
 * every communicator creation. */
VCOLL_INTERNAL_API size_t vcollParamStagingMax(void);
/* VCOLL_MOE_COMBINE32: how the fp32-accumulated MoE combine runs on the NCCL
 * backend ("widen", the default, or "p2p"); read at each call. */
const char* vcollParamMoeCombine32(void);
VCOLL_INTERNAL_API const char* vcollParamBackend(void);  /* VCOLL_BACKEND */
/* VCOLL_SHARE_GPU: for testing multi-rank code on fewer GPUs than ranks
 * (README: Environment); vcollCommInitMPI then puts local rank i on GPU
 * i % count instead of refusing. */
VCOLL_INTERNAL_API int vcollParamShareGpu(void);
VCOLL_INTERNAL_API int vcollParamGateKernel(void); /* VCOLL_GATE_KERNEL: 0 auto, 1 warp, 2 seg (read at every call: tests switch it) */
/* VCOLL_NCCL_AVG=1: trust ncclReduceScatter's avg on NCCL >= 2.31 (docs/
 * algorithms.md, "NCCL releases"); read at every avg call on those releases. */
int vcollParamNcclAvg(void);

/* Algorithm tables (src/coll/). */
struct vcollAlgo {
  const char* name;
  const char* description;
  /* 1 if this algorithm can run this call on this comm. */
  int (*supported)(vcollComm_t comm, const void* call);
  vcollResult_t (*run)(vcollComm_t comm, const void* call);
  /* allgatherv: 1 if run() calls the call's producer itself. */
  int runsProducer;
};
extern const struct vcollAlgo vcollAgvAlgos[];
extern const int vcollAgvAlgoCount;
extern const struct vcollAlgo vcollRsvAlgos[];
extern const int vcollRsvAlgoCount;
/* Picks the algorithm index for a call on the NCCL backend. Exported for
 * the unit test of the selection (tests/unit/test_select.c). */
VCOLL_INTERNAL_API int vcollAgvSelect(vcollComm_t comm, const struct vcollAgvCall* call);
VCOLL_INTERNAL_API int vcollRsvSelect(vcollComm_t comm, const struct vcollRsvCall* call);
/* 1 when this rank's buffers of the call (the bytes it reads and writes) lie
 * in windows from vcollMemAlloc (then equal counts run the native call on
 * them); 0 when no rows move. Every rank must agree: checked mode includes
 * it in the digest. */
VCOLL_INTERNAL_API int vcollAgvAllRegistered(vcollComm_t comm, const struct vcollAgvCall* call);
VCOLL_INTERNAL_API int vcollRsvAllRegistered(vcollComm_t comm, const struct vcollRsvCall* call);
VCOLL_INTERNAL_API int vcollAlgoFind(vcollCollective_t coll, const char* name);
/* Row i of the selection table in force for NCCL version `ncclVersion`
 * (tests): 1 and its fields, or 0 when there is no row i. */
VCOLL_INTERNAL_API int vcollAgvRule(int ncclVersion, int i, size_t* maxBytesPerRank, double* maxImbalance,
                                    const char** algo);
VCOLL_INTERNAL_API int vcollRsvRule(int ncclVersion, int i, size_t* maxBytesPerRank, double* maxImbalance,
                                    int* symmOpOnly, const char** algo);
/* A notice for every part of VCOLL_ALGO that names nothing, once per value,
 * at communicator creation on every backend (the host backend has no
 * algorithms to choose, but a typo must not pass unseen there either). */
void vcollAlgoEnvCheck(void);
/* The algorithm to run: the forced one (comm, then VCOLL_ALGO) when it
 * supports the call, else autoIdx. Records it as the last algorithm. */
VCOLL_INTERNAL_API int vcollAlgoChoose(vcollComm_t comm, vcollCollective_t coll, const void* call, int autoIdx);
/* The same; *isAuto = 1 when the choice is autoIdx (nothing forced, or the
 * forced algorithm cannot run the call). */
int vcollAlgoChooseAuto(vcollComm_t comm, vcollCollective_t coll, const void* call, int autoIdx, int* isAuto);

/* moe/dispatch.c, for tests: the workspace's amax kernel scratch on the
 * device (two words, 0 between dispatches), NULL on the host backend. */
struct vcollMoeWorkspace;
VCOLL_INTERNAL_API uint32_t* vcollMoeAmaxScratch(struct vcollMoeWorkspace* ws);

/* backend/nccl.c */
extern const struct vcollBackendOps vcollNcclOps;
ncclDataType_t vcollToNcclType(vcollDataType_t type);
ncclRedOp_t vcollToNcclOp(vcollRedOp_t op);
/* 1 if `stream` is being captured into a CUDA graph (NCCL backend only). */
int vcollStreamCapturing(vcollComm_t comm, cudaStream_t stream);
/* Whether `stream` is being captured into a CUDA graph; the legacy stream
 * during another thread's global-mode capture counts as captured. */
int vcollStreamIsCapturing(cudaStream_t stream);

/* Kernel grids that loop over their work (misc/device.c): blocks of
 * `threads` threads and `smem` bytes of dynamic shared memory of `kernel`
 * that the current device holds at once (SMs x resident blocks per SM, at
 * least 1), or `need` when that is fewer. resident: the caller's cache of
 * that count, 64 zero-initialized entries (one per device) for each kernel;
 * it is queried once per device (a benign race: every thread stores the
 * same value), so later calls make no CUDA call but cudaGetDevice. */
vcollResult_t vcollResidentGrid(const void* kernel, int threads, size_t smem, int* resident, size_t need,
                                unsigned* grid);

/* coll/window.c: windows registered through vcollMemAlloc. */
void vcollWindowsReleaseAll(vcollComm_t comm);
void vcollCollStateFree(vcollComm_t comm);
/* The staging limit changed: forget which growths failed. */
void vcollStagingLimitChanged(vcollComm_t comm);
/* Bytes of staging buffers held (live and replaced). */
size_t vcollStagingHeld(vcollComm_t comm);
/* Count of failed growths (agreed by every rank) on this communicator: a
 * call that sees it change knows its staging could not be had. */
VCOLL_INTERNAL_API uint64_t vcollStagingGrowFailures(vcollComm_t comm);

#define VCOLL_CHECK_RES(call)                  \
  do {                                         \
    vcollResult_t res_ = (call);               \
    if (res_ != vcollSuccess) return res_;     \
  } while (0)

#define VCOLL_CUDACHECK(comm, call)                                                      \
  do {                                                                                   \
    cudaError_t err_ = (call);                                                           \
    if (err_ != cudaSuccess) {                                                           \
      vcollSetError((comm), vcollUnhandledCudaError, "%s:%d: %s failed: %s", __FILE__,   \
                    __LINE__, #call, cudaGetErrorString(err_));                          \
      return vcollUnhandledCudaError;                                                    \
    }                                                                                    \
  } while (0)

static inline ncclComm_t vcollNcclOf(vcollComm_t comm) { return comm ? comm->nccl : NULL; }

/* A non-blocking NCCL communicator (config.blocking = 0) answers
 * ncclInProgress while a call goes on in the background, and takes no other
 * call until ncclCommGetAsyncError says it is done. vcoll waits there, so
 * every vcoll call returns with the communicator ready, as with a blocking
 * one. Returns the call's final result (r itself for a blocking one). */
VCOLL_INTERNAL_API ncclResult_t vcollNcclWait(ncclComm_t nccl, ncclResult_t r);

#define VCOLL_NCCLCHECK(comm, call)                                                      \
  do {                                                                                   \
    ncclResult_t nres_ = vcollNcclWait(vcollNcclOf(comm), (call));                       \
    if (nres_ != ncclSuccess) {                                                          \
      vcollSetError((comm), vcollNcclError, "%s:%d: %s failed: %s", __FILE__, __LINE__,  \
                    #call, ncclGetErrorString(nres_));                                   \
      return vcollNcclError;                                                             \
    }                                                                                    \
  } while (0)

#define VCOLL_NCCLCHECKGOTO(comm, call, res, label)                                      \
  do {                                                                                   \
    ncclResult_t nres_ = vcollNcclWait(vcollNcclOf(comm), (call));                       \
    if (nres_ != ncclSuccess) {                                                          \
      vcollSetError((comm), vcollNcclError, "%s:%d: %s failed: %s", __FILE__, __LINE__,  \
                    #call, ncclGetErrorString(nres_));                                   \
      (res) = vcollNcclError;                                                            \
      goto label;                                                                        \
    }                                                                                    \
  } while (0)

#endif /* VCOLL_INTERNAL_H_ */
