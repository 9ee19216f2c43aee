/* reducescatterv algorithms on the NCCL backend, side by side. */
#include <float.h>
#include <stdint.h>
#include <string.h>

#include "coll.h"

static int rsvAlways(vcollComm_t comm, const void* call) {
  (void)comm; (void)call;
  return 1;
}

/* ncclReduceScatter with ncclAvg returns the sum, not the average, in NCCL
 * 2.31.2 and 2.32.3 when NCCL runs it with its PAT algorithm (one GPU per
 * node; found with 8 ranks, each its own host); 2.28.3, 2.29.7 and 2.30.7
 * are correct. From 2.31 on, the algorithms that would hand ncclAvg
 * to ncclReduceScatter (native, pad, pad_symm) do not take avg, and the
 * automatic choice is the grouped ncclReduce, unless VCOLL_NCCL_AVG=1 (a
 * job that never runs PAT, or a test of whether a release is affected). */
#define RSV_NCCL_AVG_SUSPECT 23100
static int rsvNcclAvgOk(vcollComm_t comm, const struct vcollRsvCall* c) {
  return c->op != vcollAvg || comm->ncclVersion < RSV_NCCL_AVG_SUSPECT || vcollParamNcclAvg();
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

static int rsvEqual(vcollComm_t comm, const struct vcollRsvCall* c) {
  return c->maxRows * (size_t)comm->nranks == c->totalRows;
}

static int rsvEqualSupported(vcollComm_t comm, const void* vcall) {
  return rsvEqual(comm, vcall) && rsvNcclAvgOk(comm, vcall);
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

/* Padded: rank r's rows are copied to slot r of a staging buffer, every
 * slot holding maxRows rows (rounded up so slots stay 16-byte aligned);
 * one ncclReduceScatter reduces the slots into a recv slot at the end of
 * the same buffer (same offsets on every rank, as symmetric windows need),
 * and this rank's rows are copied out. Rows past counts[r] hold whatever
 * the buffer held: reduced element-wise, they only land in padding. */
static size_t rsvSlotRows(const struct vcollRsvCall* c) {
  size_t rb = c->rowBytes, g = 16;
  while (g > 1 && rb % g) g >>= 1; /* gcd(rowBytes, 16) */
  size_t step = 16 / g;
  return (c->maxRows + step - 1) / step * step;
}

static size_t rsvStagingBytes(vcollComm_t comm, const struct vcollRsvCall* c) {
  size_t slot, total;
  if (!vcollMulOk(rsvSlotRows(c), c->rowBytes, &slot) || !vcollMulOk(slot, (size_t)comm->nranks + 1, &total))
    return 0;
  return total;
}

/* pad's work on an acquired staging buffer: copy in, ncclReduceScatter, copy out. */
static vcollResult_t rsvPadStaged(vcollComm_t comm, const struct vcollRsvCall* c, char* stage) {
  const int n = comm->nranks, me = comm->rank;
  const size_t slotRows = rsvSlotRows(c), slot = slotRows * c->rowBytes;
  struct vcollCopyDesc* d;
  VCOLL_CHECK_RES(vcollCopyDescs(comm, n, &d));
  for (int r = 0; r < n; r++) {
    d[r].src = (const char*)c->sendbuff + c->displs[r] * c->rowBytes;
    d[r].dst = stage + slot * (size_t)r;
    d[r].bytes = c->counts[r] * c->rowBytes;
  }
  VCOLL_CHECK_RES(vcollBatchCopy(comm, d, n, vcollNumSms(comm), c->stream));
  /* Alone in its group: NCCL's symmetric kernels take one collective per group. */
  char* recvSlot = stage + slot * (size_t)n;
  VCOLL_NCCLCHECK(comm, ncclReduceScatter(stage, recvSlot, slotRows * c->width, vcollToNcclType(c->datatype),
                                          vcollToNcclOp(c->op), comm->nccl, c->stream));
  /* In place, recvbuff lies inside sendbuff: the pack above already read it. */
  d[0].src = recvSlot;
  d[0].dst = c->recvbuff;
  d[0].bytes = c->counts[me] * c->rowBytes;
  VCOLL_CHECK_RES(vcollBatchCopy(comm, d, 1, vcollNumSms(comm), c->stream));
  return vcollSuccess;
}

static vcollResult_t rsvPadRunKind(vcollComm_t comm, const struct vcollRsvCall* c, int kind) {
  if (c->totalRows == 0) return vcollSuccess;
  const size_t total = rsvStagingBytes(comm, c);
  if (total == 0) return vcollSetError(comm, vcollInvalidArgument, "vcollReduceScatterV : padded staging size overflows");
  char* stage;
  int denied = 0;
  const vcollResult_t res =
      vcollStagingAcquirePad(comm, &kind, total, c->stream, "vcollReduceScatterV", (void**)&stage, &denied);
  if (res != vcollSuccess) return denied ? vcollRsvStagingDenied(comm, c, "pad", res) : res;
  /* the last use recorded after a failure too (as allgatherv's pad) */
  return vcollStagingRelease(comm, c->stream, rsvPadStaged(comm, c, stage));
}

static vcollResult_t rsvPadRun(vcollComm_t comm, const void* vcall) {
  return rsvPadRunKind(comm, vcall, vcollStagingPlain);
}

static int rsvPadSupported(vcollComm_t comm, const void* vcall) {
  return rsvNcclAvgOk(comm, vcall);
}

static int rsvSymmSupported(vcollComm_t comm, const void* vcall) {
  return vcollSymmAvailable(comm) && rsvNcclAvgOk(comm, vcall);
}

static vcollResult_t rsvPadSymmRun(vcollComm_t comm, const void* vcall) {
  return rsvPadRunKind(comm, vcall, vcollStagingSymm);
}

/* Point to point: every rank sends each peer that peer's rows
 * (ncclSend), receives its own rows from every peer into a staging
 * buffer (ncclRecv, one slot of counts[me] rows per peer), all in one
 * group, then one kernel reduces its own rows and the n - 1 slots, in rank
 * order, into recvbuff. Moves exactly the rows each rank needs, whatever
 * the imbalance. Up to VCOLL_REDUCE_MAX_SRCS ranks. */
static int rsvP2pSupported(vcollComm_t comm, const void* vcall) {
  (void)vcall;
  return comm->nranks <= VCOLL_REDUCE_MAX_SRCS;
}

/* Peer r's slot (r != me) in the p2p staging buffer, slots `stride` bytes apart. */
static char* rsvP2pSlot(char* stage, int r, int me, size_t stride) {
  return stage + (size_t)(r < me ? r : r - 1) * stride;
}

/* p2p's sends, receives and reduction, on the staging buffer `stage`
 * (slots `mine` bytes apart; NULL where this rank receives nothing). */
static vcollResult_t rsvP2pStaged(vcollComm_t comm, const struct vcollRsvCall* c, char* stage, size_t mine) {
  const int n = comm->nranks, me = comm->rank;
  const size_t mineElems = c->counts[me] * c->width;
  const ncclDataType_t dt = vcollToNcclType(c->datatype);
  const char* send = c->sendbuff;
  vcollResult_t res = vcollSuccess;
  VCOLL_NCCLCHECK(comm, ncclGroupStart());
  for (int k = 1; k < n; k++) { /* peers in ring order: every rank starts with a different one */
    const int to = (me + k) % n, from = (me - k + n) % n;
    if (c->counts[to] > 0)
      VCOLL_NCCLCHECKGOTO(comm, ncclSend(send + c->displs[to] * c->rowBytes, c->counts[to] * c->width, dt, to,
                                         comm->nccl, c->stream), res, end);
    if (mine > 0)
      VCOLL_NCCLCHECKGOTO(comm, ncclRecv(rsvP2pSlot(stage, from, me, mine), mineElems, dt, from, comm->nccl,
                                         c->stream), res, end);
  }
end:
  VCOLL_NCCLCHECK(comm, ncclGroupEnd());
  VCOLL_CHECK_RES(res);
  if (mine > 0) {
    const void* srcs[VCOLL_REDUCE_MAX_SRCS];
    for (int r = 0; r < n; r++)
      srcs[r] = r == me ? (const void*)(send + c->displs[me] * c->rowBytes) : rsvP2pSlot(stage, r, me, mine);
    /* In place, recvbuff is srcs[me]: each element is read before it is written. */
    VCOLL_CHECK_RES(vcollBatchReduce(comm, c->recvbuff, srcs, n, mineElems, c->datatype, c->op, n,
                                     vcollNumSms(comm), c->stream));
  }
  return vcollSuccess;
}

static vcollResult_t rsvP2pRun(vcollComm_t comm, const void* vcall) {
  const struct vcollRsvCall* c = vcall;
  if (c->totalRows == 0) return vcollSuccess;
  /* The size asked for is the same on every rank, as growing the staging
   * buffer is collective (vcollRsvP2pStagingBytes); slots of this rank's
   * counts[me] rows are used, each starting on 16 bytes so that the
   * reduction kernel can load 16-byte vectors (when recvbuff and this
   * rank's rows of sendbuff are aligned too). */
  size_t total = 0;
  if (!vcollRsvP2pStagingBytes(comm->nranks, c->maxRows, c->rowBytes, &total))
    return vcollSetError(comm, vcollInvalidArgument, "vcollReduceScatterV : p2p staging size overflows");
  const size_t mine = vcollAlign16(c->counts[comm->rank] * c->rowBytes); /* slot stride */
  char* stage = NULL;
  if (total == 0) return rsvP2pStaged(comm, c, NULL, mine);
  int denied = 0;
  const vcollResult_t res =
      vcollStagingAcquire(comm, vcollStagingPlain, total, c->stream, "vcollReduceScatterV", (void**)&stage, &denied);
  if (res != vcollSuccess) return denied ? vcollRsvStagingDenied(comm, c, "p2p", res) : res;
  return vcollStagingRelease(comm, c->stream, rsvP2pStaged(comm, c, stage, mine)); /* after a failure too */
}

vcollResult_t vcollRsvStagingDenied(vcollComm_t comm, const struct vcollRsvCall* c, const char* algo,
                                    vcollResult_t res) {
  if (!c->algoAuto) return res; /* forced (by the caller, or by vcoll's MoE combine) */
  const int again = vcollRsvSelect(comm, c);
  if (again < 0 || strncmp(vcollRsvAlgos[again].name, algo, strlen(algo)) == 0) return res;
  VCOLL_WARN("vcollReduceScatterV: %s could not have its staging buffer (%s); running %s instead", algo,
             vcollGetLastError(comm), vcollRsvAlgos[again].name);
  comm->lastAlgo[vcollCollReduceScatterV] = vcollRsvAlgos[again].name;
  return vcollRsvAlgos[again].run(comm, c);
}

const struct vcollAlgo vcollRsvAlgos[] = {
    {"reduce", "one ncclReduce per root in a group (baseline)", rsvAlways, rsvReduceRun, 0},
    {"native", "ncclReduceScatter; only when all counts are equal, and no avg on NCCL >= 2.31", rsvEqualSupported,
     rsvNativeRun, 0},
    {"pad", "pack rows padded to maxRows, one ncclReduceScatter, copy out; no avg on NCCL >= 2.31", rsvPadSupported,
     rsvPadRun, 0},
    {"pad_symm", "pad over vcoll's staging buffer in an NCCL symmetric window (NCCL >= 2.27); no avg on NCCL >= 2.31",
     rsvSymmSupported, rsvPadSymmRun, 0},
    {"p2p", "grouped ncclSend/ncclRecv of each rank's rows, then one reduction kernel", rsvP2pSupported, rsvP2pRun, 0},
};
const int vcollRsvAlgoCount = sizeof(vcollRsvAlgos) / sizeof(vcollRsvAlgos[0]);

/* ---- automatic selection -------------------------------------------------
 * PROVISIONAL until re-measured with `reducescatterv_perf --selection`
 * (bench/coll) on 2 and 4 H200s. Source: issue 7, 4x H200 (NVSwitch, NVLS
 * off), NCCL 2.28.3: grouped ncclReduce is 1.3-1.6x slower than an equal
 * ncclReduceScatter at 1-4 MB per rank; the allgatherv measurements (see
 * allgatherv.c) for the sizes and shapes not measured here. The padded
 * algorithms reduce nranks * maxRows rows, `imbalance` times the data, so
 * they win while the imbalance stays under that ratio. NCCL 2.28's
 * symmetric kernels reduce only sum/avg on floating-point types of 32 bits
 * or less ("symmetric op" below); elsewhere pad_symm would only add copies.
 * Bytes per rank = total rows * row bytes / nranks.
 *
 * First matching row wins; before the table: equal counts with sendbuff and
 * recvbuff in windows from vcollMemAlloc -> "native"; imbalance >= 3/4
 * nranks -> "reduce" (one ncclReduce does it). */
struct rsvRule {
  size_t maxBytesPerRank; /* inclusive */
  double maxImbalance;    /* inclusive */
  int symmOpOnly;         /* row applies only to a symmetric op */
  const char* algo;
};

static const struct rsvRule rsvRules[] = {
    {(size_t)1 << 20, 1.0, 1, "pad_symm"}, /* allgatherv: 7.9 vs 10.2 us at 64K, 16.7 vs 36 at 1M */
    {SIZE_MAX, 1.0, 0, "native"},
    {(size_t)4 << 20, 1.5, 1, "pad_symm"},
    {(size_t)16 << 20, 1.4, 0, "pad"},     /* reduce is 1.3-1.6x an equal ncclReduceScatter */
    {SIZE_MAX, 1.15, 0, "pad"},
    {SIZE_MAX, DBL_MAX, 0, "reduce"},
};

int vcollRsvRule(int ncclVersion, int i, size_t* maxBytesPerRank, double* maxImbalance, int* symmOpOnly,
                 const char** algo) {
  (void)ncclVersion; /* one table for every release so far */
  if (i < 0 || i >= (int)(sizeof(rsvRules) / sizeof(rsvRules[0]))) return 0;
  *maxBytesPerRank = rsvRules[i].maxBytesPerRank;
  *maxImbalance = rsvRules[i].maxImbalance;
  *symmOpOnly = rsvRules[i].symmOpOnly;
  *algo = rsvRules[i].algo;
  return 1;
}

static int rsvSymmOp(const struct vcollRsvCall* c) {
  if (c->op != vcollSum && c->op != vcollAvg) return 0;
  switch (c->datatype) {
    case vcollFloat32: case vcollFloat16: case vcollBfloat16: case vcollFloat8e4m3: case vcollFloat8e5m2: return 1;
    default: return 0;
  }
}

int vcollRsvAllRegistered(vcollComm_t comm, const struct vcollRsvCall* call) {
  const size_t mine = call->counts[comm->rank]; /* recvbuff holds this rank's rows only (NULL when 0) */
  return comm->windows && call->totalRows > 0 &&
         vcollInWindow(comm, call->sendbuff, call->totalRows * call->rowBytes) &&
         (mine == 0 || vcollInWindow(comm, call->recvbuff, mine * call->rowBytes));
}

int vcollRsvSelect(vcollComm_t comm, const struct vcollRsvCall* call) {
  const int n = comm->nranks;
  const int equal = rsvEqual(comm, call);
  /* Nothing to reduce, or one rank (the backend copies): any algorithm that accepts the call. */
  if (call->totalRows == 0 || n == 1)
    return vcollAlgoFind(vcollCollReduceScatterV, rsvNcclAvgOk(comm, call) ? "native" : "reduce");
  const double imbalance = vcollImbalance(call->maxRows, n, call->totalRows, equal);
  const size_t perRank = call->totalRows * call->rowBytes / (size_t)n;
  const int symmOp = rsvSymmOp(call);
  const char* algo = NULL;
  const char* why = "table";
  if (!rsvNcclAvgOk(comm, call)) {
    algo = "reduce";
    why = "avg: ncclReduceScatter's avg is not trusted from NCCL 2.31 on";
  } else if (equal && vcollRsvAllRegistered(comm, call)) {
    algo = "native";
    why = "registered buffers";
  } else if (!equal && imbalance >= 0.75 * n) {
    algo = "reduce";
    why = "one rank holds almost all rows";
  } else {
    for (size_t i = 0; i < sizeof(rsvRules) / sizeof(rsvRules[0]) && algo == NULL; i++)
      if (perRank <= rsvRules[i].maxBytesPerRank && imbalance <= rsvRules[i].maxImbalance &&
          (symmOp || !rsvRules[i].symmOpOnly))
        algo = rsvRules[i].algo;
    if (algo == NULL) algo = "reduce";
  }
  /* Staging that cannot be had (as allgatherv's): the plain buffer, or a path without. */
  const size_t staging = strncmp(algo, "pad", 3) == 0 ? rsvStagingBytes(comm, call) : 0;
  algo = vcollStagedChoice(comm, algo, staging, call->stream, equal ? "native" : "reduce", &why);
  VCOLL_INFO("reducescatterv auto: %s (%s; %zu bytes/rank, imbalance %.2f, nranks %d, %s %s, NCCL %d)", algo, why,
             perRank, imbalance, n, vcollTypeName(call->datatype), vcollOpName(call->op), comm->ncclVersion);
  return vcollAlgoFind(vcollCollReduceScatterV, algo);
}
