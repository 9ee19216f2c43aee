/* Public entry points of the collectives: validate, agree (checked mode),
 * then hand the call to the communicator's backend. */
#include <stdlib.h>

#include "vcoll_internal.h"

/* What every rank must pass alike (checked mode's fields): sizes, types,
 * whether its buffers are registered, and on the NCCL backend the
 * algorithm, chosen here and handed to the backend in c->algo (registered buffers, VCOLL_ALGO,
 * vcollCommSetAlgo or VCOLL_NCCL_AVG on some ranks only would make ranks
 * pick different NCCL calls and hang); the algorithm follows from the
 * other fields, so it is named only when they agree. */
static const char* const kAlgoField =
    "algorithms (VCOLL_ALGO, vcollCommSetAlgo, VCOLL_NCCL_AVG or vcollCommSetStagingLimit differ between ranks)";
static const char* const kRegField = "buffers (registered through vcollMemAlloc on some ranks only)";

static int agvFields(vcollComm_t comm, struct vcollAgvCall* c, int nranks, struct vcollAgreeField* f) {
  if (comm->backend == vcollBackendNccl)
    c->algo = vcollAlgoChooseAuto(comm, vcollCollAllGatherV, c, vcollAgvSelect(comm, c), &c->algoAuto);
  const int reg = vcollAgvAllRegistered(comm, c); /* 0 without windows (host backend) */
  uint64_t t = vcollHashBytes(0, &c->ntensors, sizeof(c->ntensors));
  for (int i = 0; i < c->ntensors; i++) {
    t = vcollHashBytes(t, &c->tensors[i].width, sizeof(size_t));
    t = vcollHashBytes(t, &c->tensors[i].datatype, sizeof(vcollDataType_t));
  }
  f[0] = (struct vcollAgreeField){"counts", vcollHashBytes(0, c->counts, sizeof(size_t) * (size_t)nranks), 0};
  f[1] = (struct vcollAgreeField){"tensor counts, widths or types", t, 0};
  f[2] = (struct vcollAgreeField){kRegField, vcollHashBytes(0, &reg, sizeof(reg)), 0};
  f[3] = (struct vcollAgreeField){kAlgoField, vcollHashBytes(0, &c->algo, sizeof(c->algo)), 1};
  return 4;
}

static int rsvFields(vcollComm_t comm, struct vcollRsvCall* c, int nranks, struct vcollAgreeField* f) {
  if (comm->backend == vcollBackendNccl && c->algo < 0) /* not chosen by vcoll's own caller */
    c->algo = vcollAlgoChooseAuto(comm, vcollCollReduceScatterV, c, vcollRsvSelect(comm, c), &c->algoAuto);
  const int reg = vcollRsvAllRegistered(comm, c);
  uint64_t t = vcollHashBytes(0, &c->width, sizeof(c->width));
  t = vcollHashBytes(t, &c->datatype, sizeof(c->datatype));
  f[0] = (struct vcollAgreeField){"counts", vcollHashBytes(0, c->counts, sizeof(size_t) * (size_t)nranks), 0};
  f[1] = (struct vcollAgreeField){"widths or types", t, 0};
  f[2] = (struct vcollAgreeField){"reduction ops", vcollHashBytes(0, &c->op, sizeof(c->op)), 0};
  f[3] = (struct vcollAgreeField){kRegField, vcollHashBytes(0, &reg, sizeof(reg)), 0};
  f[4] = (struct vcollAgreeField){kAlgoField, vcollHashBytes(0, &c->algo, sizeof(c->algo)), 1};
  return 5;
}

static vcollResult_t allGatherV(const char* op, const vcollTensor_t* tensors, int ntensors, const size_t* counts,
                                vcollComm_t comm, cudaStream_t stream, vcollAgvProduceFn produce, void* ctx) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, op));
  struct vcollAgvCall call;
  char inPlaceSmall[64];
  char* inPlace = inPlaceSmall;
  vcollResult_t res = vcollSuccess;
  if (ntensors > (int)sizeof(inPlaceSmall)) {
    inPlace = malloc((size_t)ntensors);
    /* A local failure like any other: checked mode still agrees (no rank left waiting). */
    if (inPlace == NULL) res = vcollSetError(comm, vcollSystemError, "%s : out of host memory", op);
  }
  if (res == vcollSuccess) res = vcollCheckAllGatherV(comm, tensors, ntensors, counts, stream, &call, inPlace);
  if (res == vcollSuccess && produce != NULL && ntensors > VCOLL_AGV_PRODUCE_MAX_TENSORS)
    res = vcollSetError(comm, vcollInternalError, "%s : %d tensors with a producer (at most %d)", op, ntensors,
                        VCOLL_AGV_PRODUCE_MAX_TENSORS);
  call.produce = produce;
  call.produceCtx = ctx;
  if (comm->checked && !vcollStreamCapturing(comm, stream)) {
    struct vcollAgreeField f[VCOLL_AGREE_MAX_FIELDS];
    const int nf = res == vcollSuccess ? agvFields(comm, &call, comm->nranks, f) : 0;
    res = vcollCheckAgreement(comm, op, f, nf, res, stream);
  }
  if (res == vcollSuccess) res = comm->ops->allgatherv(comm, &call);
  if (inPlace != inPlaceSmall) free(inPlace);
  return res;
}

VCOLL_API vcollResult_t vcollAllGatherV(const vcollTensor_t* tensors, int ntensors,
                                        const size_t* counts, vcollComm_t comm,
                                        cudaStream_t stream) {
  return allGatherV("vcollAllGatherV", tensors, ntensors, counts, comm, stream, NULL, NULL);
}

vcollResult_t vcollAllGatherVProduced(const vcollTensor_t* tensors, int ntensors, const size_t* counts,
                                      vcollComm_t comm, cudaStream_t stream, vcollAgvProduceFn produce, void* ctx) {
  return allGatherV("vcollAllGatherV", tensors, ntensors, counts, comm, stream, produce, ctx);
}

VCOLL_INTERNAL_API vcollResult_t vcollAgvProduceSend(const struct vcollAgvCall* call) {
  if (call->produce == NULL) return vcollSuccess;
  void* dst[VCOLL_AGV_PRODUCE_MAX_TENSORS];
  for (int i = 0; i < call->ntensors; i++) dst[i] = (void*)call->tensors[i].sendbuff;
  return call->produce(call->produceCtx, dst, call->stream);
}

static vcollResult_t reduceScatterV(const void* sendbuff, void* recvbuff, const size_t* counts, size_t width,
                                    vcollDataType_t datatype, vcollRedOp_t redop, vcollComm_t comm,
                                    cudaStream_t stream, const char* algo) {
  static const char* op = "vcollReduceScatterV";
  VCOLL_CHECK_RES(vcollCheckComm(comm, op));
  struct vcollRsvCall call;
  vcollResult_t res = vcollCheckReduceScatterV(comm, sendbuff, recvbuff, counts, width, datatype,
                                               redop, stream, &call);
  if (res == vcollSuccess && algo != NULL && comm->backend == vcollBackendNccl) {
    const int idx = vcollAlgoFind(vcollCollReduceScatterV, algo);
    if (idx < 0 || !vcollRsvAlgos[idx].supported(comm, &call))
      res = vcollSetError(comm, vcollInternalError, "%s : algorithm %s cannot run this call", op, algo);
    else
      call.algo = idx, comm->lastAlgo[vcollCollReduceScatterV] = vcollRsvAlgos[idx].name;
  }
  if (comm->checked && !vcollStreamCapturing(comm, stream)) {
    struct vcollAgreeField f[VCOLL_AGREE_MAX_FIELDS];
    const int nf = res == vcollSuccess ? rsvFields(comm, &call, comm->nranks, f) : 0;
    res = vcollCheckAgreement(comm, op, f, nf, res, stream);
  }
  if (res != vcollSuccess) return res;
  return comm->ops->reducescatterv(comm, &call);
}

VCOLL_API vcollResult_t vcollReduceScatterV(const void* sendbuff, void* recvbuff,
                                            const size_t* counts, size_t width,
                                            vcollDataType_t datatype, vcollRedOp_t redop,
                                            vcollComm_t comm, cudaStream_t stream) {
  return reduceScatterV(sendbuff, recvbuff, counts, width, datatype, redop, comm, stream, NULL);
}

VCOLL_INTERNAL_API vcollResult_t vcollReduceScatterVAlgo(const void* sendbuff, void* recvbuff, const size_t* counts, size_t width,
                                      vcollDataType_t datatype, vcollRedOp_t redop, vcollComm_t comm,
                                      cudaStream_t stream, const char* algo) {
  return reduceScatterV(sendbuff, recvbuff, counts, width, datatype, redop, comm, stream, algo);
}

vcollResult_t vcollGatherCountsAs(const char* op, vcollComm_t comm, size_t localCount, size_t* counts,
                                  cudaStream_t stream) {
  VCOLL_CHECK_RES(vcollCheckComm(comm, op));
  if (counts == NULL) return VCOLL_ARGERR(comm, op, "counts argument is NULL");
  if (vcollStreamCapturing(comm, stream))
    return vcollSetError(comm, vcollInvalidUsage,
                         "%s : blocking, cannot run while the stream is captured (use fixed counts in graphs)", op);
  uint64_t* all = malloc(sizeof(uint64_t) * (size_t)comm->nranks);
  if (all == NULL) return vcollSetError(comm, vcollSystemError, "%s : out of host memory", op);
  vcollResult_t res = comm->ops->allgatherU64(comm, (uint64_t)localCount, all, stream);
  if (res == vcollSuccess)
    for (int r = 0; r < comm->nranks; r++) counts[r] = (size_t)all[r];
  free(all);
  return res;
}

VCOLL_API vcollResult_t vcollGatherCounts(vcollComm_t comm, size_t localCount, size_t* counts, cudaStream_t stream) {
  return vcollGatherCountsAs("vcollGatherCounts", comm, localCount, counts, stream);
}
