/* The NCCL backend: device buffers, work ordered on the caller's stream. */
#include <string.h>

#include "vcoll_internal.h"

ncclDataType_t vcollToNcclType(vcollDataType_t type) {
  static const ncclDataType_t map[vcollNumTypes] = {
      ncclInt8, ncclUint8, ncclInt32, ncclUint32, ncclInt64, ncclUint64,
      ncclFloat16, ncclFloat32, ncclFloat64, ncclBfloat16, ncclFloat8e4m3, ncclFloat8e5m2};
  return map[type];
}

ncclRedOp_t vcollToNcclOp(vcollRedOp_t op) {
  static const ncclRedOp_t map[vcollNumOps] = {ncclSum, ncclProd, ncclMax, ncclMin, ncclAvg};
  return map[op];
}

/* The algorithms see the call with its choice (algo, algoAuto) filled in. */
static vcollResult_t ncclAgv(vcollComm_t comm, const struct vcollAgvCall* vcall) {
  struct vcollAgvCall c = *vcall, *call = &c;
  if (c.algo < 0)
    c.algo = vcollAlgoChooseAuto(comm, vcollCollAllGatherV, call, vcollAgvSelect(comm, call), &c.algoAuto);
  const int idx = c.algo;
  VCOLL_INFO("allgatherv ntensors %d rows %zu (max %zu) bytes %zu algo %s", call->ntensors,
              call->totalRows, call->maxRows, call->totalBytes, vcollAgvAlgos[idx].name);
  if (!vcollAgvAlgos[idx].runsProducer) VCOLL_CHECK_RES(vcollAgvProduceSend(call));
  return vcollAgvAlgos[idx].run(comm, call);
}

static vcollResult_t ncclRsv(vcollComm_t comm, const struct vcollRsvCall* vcall) {
  struct vcollRsvCall c = *vcall, *call = &c;
  if (c.algo < 0)
    c.algo = vcollAlgoChooseAuto(comm, vcollCollReduceScatterV, call, vcollRsvSelect(comm, call), &c.algoAuto);
  const int idx = c.algo;
  if (comm->nranks == 1) {
    /* Reducing over one rank is the identity for every op (avg included):
     * a copy, or nothing in place. NCCL 2.28's one-rank path rejects avg on
     * fp8 types (it has no pre-multiply kernel for them), and before 2.29.7
     * it drops trailing elements of avg (NVIDIA/nccl#1950). */
    size_t bytes = call->counts[0] * call->rowBytes;
    if (!call->inPlace && bytes > 0)
      VCOLL_CUDACHECK(comm, cudaMemcpyAsync(call->recvbuff, call->sendbuff, bytes, cudaMemcpyDeviceToDevice,
                                            call->stream));
    return vcollSuccess;
  }
  VCOLL_INFO("reducescatterv rows %zu (max %zu) width %zu %s %s algo %s", call->totalRows, call->maxRows,
              call->width, vcollTypeName(call->datatype), vcollOpName(call->op), vcollRsvAlgos[idx].name);
  return vcollRsvAlgos[idx].run(comm, call);
}

static vcollResult_t ncclAllreduceMaxU64(vcollComm_t comm, uint64_t* vals, int n, cudaStream_t stream) {
  if (n > comm->scratchWords)
    return vcollSetError(comm, vcollInternalError, "allreduceMaxU64: n %d > %d", n, comm->scratchWords);
  uint64_t* host = comm->hostScratch;
  memcpy(host, vals, sizeof(uint64_t) * (size_t)n);
  VCOLL_CUDACHECK(comm, cudaMemcpyAsync(comm->devScratch, host, sizeof(uint64_t) * (size_t)n,
                                        cudaMemcpyHostToDevice, stream));
  VCOLL_NCCLCHECK(comm, ncclAllReduce(comm->devScratch, comm->devScratch, (size_t)n, ncclUint64, ncclMax,
                                      comm->nccl, stream));
  VCOLL_CUDACHECK(comm, cudaMemcpyAsync(host, comm->devScratch, sizeof(uint64_t) * (size_t)n,
                                        cudaMemcpyDeviceToHost, stream));
  VCOLL_CUDACHECK(comm, cudaStreamSynchronize(stream));
  memcpy(vals, host, sizeof(uint64_t) * (size_t)n);
  return vcollSuccess;
}

static vcollResult_t ncclAllgatherU64(vcollComm_t comm, uint64_t val, uint64_t* out, cudaStream_t stream) {
  /* devScratch: this rank's value, then every rank's (nranks + 1 words). */
  uint64_t* host = comm->hostScratch;
  host[0] = val;
  uint64_t* dev = comm->devScratch;
  VCOLL_CUDACHECK(comm, cudaMemcpyAsync(dev, host, sizeof(uint64_t), cudaMemcpyHostToDevice, stream));
  VCOLL_NCCLCHECK(comm, ncclAllGather(dev, dev + 1, 1, ncclUint64, comm->nccl, stream));
  VCOLL_CUDACHECK(comm, cudaMemcpyAsync(host, dev + 1, sizeof(uint64_t) * (size_t)comm->nranks,
                                        cudaMemcpyDeviceToHost, stream));
  VCOLL_CUDACHECK(comm, cudaStreamSynchronize(stream));
  memcpy(out, host, sizeof(uint64_t) * (size_t)comm->nranks);
  return vcollSuccess;
}

static void ncclDestroy(vcollComm_t comm) {
  vcollCollStateFree(comm);
  vcollWindowsReleaseAll(comm);
  if (comm->devScratch) cudaFree(comm->devScratch);
  if (comm->hostScratch) cudaFreeHost(comm->hostScratch);
  if (comm->ownsNccl && comm->nccl) {
    /* Finalize first and wait: a non-blocking communicator (NCCL_COMM_BLOCKING=0)
     * finishes its operations in the background. */
    const ncclResult_t r = vcollNcclWait(comm->nccl, ncclCommFinalize(comm->nccl));
    if (r != ncclSuccess) VCOLL_WARN("ncclCommFinalize failed: %s", ncclGetErrorString(r));
    ncclCommDestroy(comm->nccl);
  }
  comm->nccl = NULL;
}

int vcollStreamCapturing(vcollComm_t comm, cudaStream_t stream) {
  return comm->backend == vcollBackendNccl && vcollStreamIsCapturing(stream);
}

int vcollStreamIsCapturing(cudaStream_t stream) {
  enum cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
  const cudaError_t err = cudaStreamIsCapturing(stream, &st);
  if (err != cudaSuccess) {
    /* The legacy stream while another thread captures in global mode:
     * allocating or synchronizing now would break that capture, so count
     * it as capturing. Other errors (no device) are not capture. */
    cudaGetLastError();
    return err == cudaErrorStreamCaptureImplicit;
  }
  return st != cudaStreamCaptureStatusNone;
}

const struct vcollBackendOps vcollNcclOps = {
    .name = "nccl",
    .allgatherv = ncclAgv,
    .reducescatterv = ncclRsv,
    .allreduceMaxU64 = ncclAllreduceMaxU64,
    .allgatherU64 = ncclAllgatherU64,
    .destroy = ncclDestroy,
};
