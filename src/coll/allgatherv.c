/* allgatherv algorithms on the NCCL backend, side by side.
 * Byte-level: the gather never looks at element values, so every tensor
 * travels as ncclUint8 and any vcoll type (or packed FP4) works. */
#include <string.h>

#include "vcoll_internal.h"

static size_t rowBytesOf(const vcollTensor_t* t) { return t->width * vcollTypeSize(t->datatype); }

static int agvAlways(vcollComm_t comm, const void* call) {
  (void)comm; (void)call;
  return 1;
}

/* Baseline: one ncclBroadcast per root and tensor, all in one group. */
static vcollResult_t agvBcastRun(vcollComm_t comm, const void* vcall) {
  const struct vcollAgvCall* c = vcall;
  vcollResult_t res = vcollSuccess;
  VCOLL_NCCLCHECK(comm, ncclGroupStart());
  for (int i = 0; i < c->ntensors; i++) {
    const vcollTensor_t* t = c->tensors + i;
    size_t rb = rowBytesOf(t);
    for (int r = 0; r < comm->nranks; r++) {
      if (c->counts[r] == 0) continue;
      char* recv = (char*)t->recvbuff + c->displs[r] * rb;
      const void* send = (r == comm->rank) ? t->sendbuff : recv;
      VCOLL_NCCLCHECKGOTO(comm, ncclBroadcast(send, recv, c->counts[r] * rb, ncclUint8, r, comm->nccl, c->stream),
                          res, end);
    }
  }
end:
  VCOLL_NCCLCHECK(comm, ncclGroupEnd());
  return res;
}

/* Grouped ncclSend/ncclRecv to and from every peer, plus a local copy. */
static vcollResult_t agvP2pRun(vcollComm_t comm, const void* vcall) {
  const struct vcollAgvCall* c = vcall;
  vcollResult_t res = vcollSuccess;
  size_t mine = c->counts[comm->rank];
  for (int i = 0; i < c->ntensors; i++) {
    const vcollTensor_t* t = c->tensors + i;
    size_t rb = rowBytesOf(t);
    if (mine > 0 && !c->inPlace[i])
      VCOLL_CUDACHECK(comm, cudaMemcpyAsync((char*)t->recvbuff + c->displs[comm->rank] * rb, t->sendbuff,
                                            mine * rb, cudaMemcpyDeviceToDevice, c->stream));
  }
  VCOLL_NCCLCHECK(comm, ncclGroupStart());
  for (int i = 0; i < c->ntensors; i++) {
    const vcollTensor_t* t = c->tensors + i;
    size_t rb = rowBytesOf(t);
    for (int d = 1; d < comm->nranks; d++) {
      int to = (comm->rank + d) % comm->nranks;
      int from = (comm->rank - d + comm->nranks) % comm->nranks;
      if (mine > 0)
        VCOLL_NCCLCHECKGOTO(comm, ncclSend(t->sendbuff, mine * rb, ncclUint8, to, comm->nccl, c->stream), res, end);
      if (c->counts[from] > 0)
        VCOLL_NCCLCHECKGOTO(comm, ncclRecv((char*)t->recvbuff + c->displs[from] * rb, c->counts[from] * rb,
                                           ncclUint8, from, comm->nccl, c->stream), res, end);
    }
  }
end:
  VCOLL_NCCLCHECK(comm, ncclGroupEnd());
  return res;
}

/* All counts equal: the native ncclAllGather, one per tensor in a group. */
static int agvEqualSupported(vcollComm_t comm, const void* vcall) {
  const struct vcollAgvCall* c = vcall;
  return c->maxRows * (size_t)comm->nranks == c->totalRows;
}

static vcollResult_t agvNativeRun(vcollComm_t comm, const void* vcall) {
  const struct vcollAgvCall* c = vcall;
  vcollResult_t res = vcollSuccess;
  if (c->totalRows == 0) return vcollSuccess;
  VCOLL_NCCLCHECK(comm, ncclGroupStart());
  for (int i = 0; i < c->ntensors; i++) {
    const vcollTensor_t* t = c->tensors + i;
    size_t bytes = c->maxRows * rowBytesOf(t);
    VCOLL_NCCLCHECKGOTO(comm, ncclAllGather(t->sendbuff, t->recvbuff, bytes, ncclUint8, comm->nccl, c->stream),
                        res, end);
  }
end:
  VCOLL_NCCLCHECK(comm, ncclGroupEnd());
  return res;
}

const struct vcollAlgo vcollAgvAlgos[] = {
    {"bcast", "one ncclBroadcast per root and tensor in a group (baseline)", agvAlways, agvBcastRun},
    {"p2p", "grouped ncclSend/ncclRecv with every peer", agvAlways, agvP2pRun},
    {"native", "ncclAllGather; only when all counts are equal", agvEqualSupported, agvNativeRun},
};
const int vcollAgvAlgoCount = sizeof(vcollAgvAlgos) / sizeof(vcollAgvAlgos[0]);

/* Automatic choice. Placeholder rule until the measured table lands:
 * the native call for equal counts, the baseline otherwise. */
int vcollAgvSelect(vcollComm_t comm, const struct vcollAgvCall* call) {
  if (agvEqualSupported(comm, call)) return vcollAlgoFind(vcollCollAllGatherV, "native");
  return vcollAlgoFind(vcollCollAllGatherV, "bcast");
}
