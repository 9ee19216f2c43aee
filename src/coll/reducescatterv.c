/* reducescatterv algorithms on the NCCL backend, side by side. */
#include "vcoll_internal.h"

static int rsvAlways(vcollComm_t comm, const void* call) {
  (void)comm; (void)call;
  return 1;
}

/* Baseline: one ncclReduce per root in a group; root r receives its rows. */
static vcollResult_t rsvReduceRun(vcollComm_t comm, const void* vcall) {
  const struct vcollRsvCall* c = vcall;
  vcollResult_t res = vcollSuccess;
  ncclDataType_t dt = vcollToNcclType(c->datatype);
  ncclRedOp_t op = vcollToNcclOp(c->op);
  VCOLL_NCCLCHECK(comm, ncclGroupStart());
  for (int r = 0; r < comm->nranks; r++) {
    if (c->counts[r] == 0) continue;
    const char* send = (const char*)c->sendbuff + c->displs[r] * c->rowBytes;
    void* recv = (r == comm->rank) ? c->recvbuff : (void*)send;
    VCOLL_NCCLCHECKGOTO(comm, ncclReduce(send, recv, c->counts[r] * c->width, dt, op, r, comm->nccl, c->stream),
                        res, end);
  }
end:
  VCOLL_NCCLCHECK(comm, ncclGroupEnd());
  return res;
}

static int rsvEqualSupported(vcollComm_t comm, const void* vcall) {
  const struct vcollRsvCall* c = vcall;
  return c->maxRows * (size_t)comm->nranks == c->totalRows;
}

/* All counts equal: the native ncclReduceScatter. */
static vcollResult_t rsvNativeRun(vcollComm_t comm, const void* vcall) {
  const struct vcollRsvCall* c = vcall;
  if (c->totalRows == 0) return vcollSuccess;
  VCOLL_NCCLCHECK(comm, ncclReduceScatter(c->sendbuff, c->recvbuff, c->maxRows * c->width,
                                          vcollToNcclType(c->datatype), vcollToNcclOp(c->op), comm->nccl,
                                          c->stream));
  return vcollSuccess;
}

const struct vcollAlgo vcollRsvAlgos[] = {
    {"reduce", "one ncclReduce per root in a group (baseline)", rsvAlways, rsvReduceRun},
    {"native", "ncclReduceScatter; only when all counts are equal", rsvEqualSupported, rsvNativeRun},
};
const int vcollRsvAlgoCount = sizeof(vcollRsvAlgos) / sizeof(vcollRsvAlgos[0]);

int vcollRsvSelect(vcollComm_t comm, const struct vcollRsvCall* call) {
  if (rsvEqualSupported(comm, call)) return vcollAlgoFind(vcollCollReduceScatterV, "native");
  return vcollAlgoFind(vcollCollReduceScatterV, "reduce");
}
