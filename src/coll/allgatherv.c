/* allgatherv algorithms on the NCCL backend, side by side.
 * Byte-level: the gather never looks at element values, so every tensor
 * travels as ncclUint8 and any vcoll type (or packed FP4) works. */
#include <float.h>
#include <limits.h>
#include <stdint.h>
#include <string.h>

#include "coll.h"

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

/* Padded: every rank's rows of every tensor are packed into one segment of
 * the same size (maxRows rows per tensor, each tensor's slot rounded to 16
 * bytes), one ncclAllGather carries the segments of all ranks, and one
 * copy kernel unpacks them. The staging buffer holds this rank's segment
 * followed by all nranks segments, at the same offsets on every rank (as
 * symmetric windows need). Moves nranks * maxRows rows: pays when the
 * counts are nearly equal. */
static size_t agvSegBytes(const struct vcollAgvCall* c) {
  size_t seg = 0;
  for (int i = 0; i < c->ntensors; i++) seg += vcollAlign16(c->maxRows * rowBytesOf(c->tensors + i));
  return seg;
}

/* Staging bytes of the padded layout, or 0 when it would overflow. */
static size_t agvStagingBytes(vcollComm_t comm, const struct vcollAgvCall* c) {
  size_t total;
  if (!vcollMulOk(agvSegBytes(c), (size_t)comm->nranks + 1, &total)) return 0;
  return total;
}

/* pad's work on an acquired staging buffer: pack, ncclAllGather, unpack. */
static vcollResult_t agvPadStaged(vcollComm_t comm, const struct vcollAgvCall* c, char* stage, size_t seg) {
  const int n = comm->nranks, me = comm->rank;
  struct vcollCopyDesc* d;
  if ((size_t)n * (size_t)c->ntensors > (size_t)INT_MAX)
    return vcollSetError(comm, vcollInvalidArgument, "vcollAllGatherV : %d ranks x %d tensors is too many for pad",
                         n, c->ntensors);
  VCOLL_CHECK_RES(vcollCopyDescs(comm, n * c->ntensors, &d));

  /* Pack this rank's rows of every tensor into segment 0 (or let the
   * caller's producer write them there). */
  size_t off = 0;
  void* seg0[VCOLL_AGV_PRODUCE_MAX_TENSORS];
  for (int i = 0; i < c->ntensors; i++) {
    size_t rb = rowBytesOf(c->tensors + i);
    d[i].src = c->tensors[i].sendbuff;
    d[i].dst = stage + off;
    d[i].bytes = c->counts[me] * rb;
    if (c->produce) seg0[i] = stage + off;
    off += vcollAlign16(c->maxRows * rb);
  }
  if (c->produce) VCOLL_CHECK_RES(c->produce(c->produceCtx, seg0, c->stream));
  else VCOLL_CHECK_RES(vcollBatchCopy(comm, d, c->ntensors, vcollNumSms(comm), c->stream));
  /* Alone in its group: NCCL's symmetric kernels take one collective per group. */
  VCOLL_NCCLCHECK(comm, ncclAllGather(stage, stage + seg, seg, ncclUint8, comm->nccl, c->stream));

  /* Unpack segment 1 + r into rank r's rows of every tensor (this rank's
   * too where a producer wrote them only to the staging buffer). */
  int nd = 0;
  for (int r = 0; r < n; r++) {
    const char* src = stage + seg * (size_t)(r + 1);
    off = 0;
    for (int i = 0; i < c->ntensors; i++) {
      size_t rb = rowBytesOf(c->tensors + i);
      if (!(r == me && c->inPlace[i] && !c->produce) && c->counts[r] > 0) {
        d[nd].src = src + off;
        d[nd].dst = (char*)c->tensors[i].recvbuff + c->displs[r] * rb;
        d[nd].bytes = c->counts[r] * rb;
        nd++;
      }
      off += vcollAlign16(c->maxRows * rb);
    }
  }
  VCOLL_CHECK_RES(vcollBatchCopy(comm, d, nd, vcollNumSms(comm), c->stream));
  return vcollSuccess;
}

static vcollResult_t agvPadRunKind(vcollComm_t comm, const struct vcollAgvCall* c, int kind) {
  if (c->totalRows == 0) return vcollAgvProduceSend(c);
  size_t seg = agvSegBytes(c), total = agvStagingBytes(comm, c);
  if (total == 0) return vcollSetError(comm, vcollInvalidArgument, "vcollAllGatherV : padded staging size overflows");
  char* stage;
  int denied = 0;
  const vcollResult_t res =
      vcollStagingAcquirePad(comm, &kind, total, c->stream, "vcollAllGatherV", (void**)&stage, &denied);
  if (res != vcollSuccess) return denied ? vcollAgvStagingDenied(comm, c, "pad", res) : res;
  /* The staging buffer's last use is recorded on every return from here,
   * so that the next call on another stream waits for what this one
   * enqueued even after a failure. */
  return vcollStagingRelease(comm, c->stream, agvPadStaged(comm, c, stage, seg));
}

static vcollResult_t agvPadRun(vcollComm_t comm, const void* vcall) {
  return agvPadRunKind(comm, vcall, vcollStagingPlain);
}

static int agvSymmSupported(vcollComm_t comm, const void* vcall) {
  (void)vcall;
  return vcollSymmAvailable(comm);
}

static vcollResult_t agvPadSymmRun(vcollComm_t comm, const void* vcall) {
  return agvPadRunKind(comm, vcall, vcollStagingSymm);
}

vcollResult_t vcollAgvStagingDenied(vcollComm_t comm, const struct vcollAgvCall* c, const char* algo,
                                    vcollResult_t res) {
  if (!c->algoAuto) return res; /* forced: the caller asked for this algorithm */
  const int again = vcollAgvSelect(comm, c);
  if (again < 0 || strncmp(vcollAgvAlgos[again].name, algo, strlen(algo)) == 0) return res;
  VCOLL_WARN("vcollAllGatherV: %s could not have its staging buffer (%s); running %s instead", algo,
             vcollGetLastError(comm), vcollAgvAlgos[again].name);
  comm->lastAlgo[vcollCollAllGatherV] = vcollAgvAlgos[again].name;
  if (!vcollAgvAlgos[again].runsProducer) VCOLL_CHECK_RES(vcollAgvProduceSend(c));
  return vcollAgvAlgos[again].run(comm, c);
}

const struct vcollAlgo vcollAgvAlgos[] = {
    {"bcast", "one ncclBroadcast per root and tensor in a group (baseline)", agvAlways, agvBcastRun, 0},
    {"p2p", "grouped ncclSend/ncclRecv with every peer", agvAlways, agvP2pRun, 0},
    {"native", "ncclAllGather; only when all counts are equal", agvEqualSupported, agvNativeRun, 0},
    {"pad", "pack all tensors padded to maxRows, one ncclAllGather, unpack", agvAlways, agvPadRun, 1},
    {"pad_symm", "pad over vcoll's staging buffer in an NCCL symmetric window (NCCL >= 2.27)", agvSymmSupported,
     agvPadSymmRun, 1},
};
const int vcollAgvAlgoCount = sizeof(vcollAgvAlgos) / sizeof(vcollAgvAlgos[0]);

/* ---- automatic selection -------------------------------------------------
 * PROVISIONAL until re-measured with `allgatherv_perf --selection` (bench/coll)
 * on 2 and 4 H200s. Source: the table of issue 7, 4x H200 (NVSwitch, NVLS
 * off), NCCL 2.28.3, time per call on the slowest rank, bytes per rank:
 *
 *   per rank  shape  ncclAllGather(pad)  symmetric  grouped bcast  send/recv
 *   64 KB     equal   10.2 us             7.9 us     12.5 us        17.9 us
 *   1 MB      equal   36.0                16.7       50.3           25.2
 *   4 MB      equal   64.4                44.2      115             66
 *   16 MB     equal  191                 158        224            207
 *   1 MB      skew    41.7                23.3       66.4           30.5
 *   256 MB    skew  4258                4316       2850           4133
 *   4 MB      one    190                 158         66            154
 *
 * (skew = per-rank sizes 1.75:1.25:0.75:0.25, one = one rank holds all.)
 * The padded algorithms move nranks * maxRows rows, i.e. `imbalance` times
 * the data (imbalance = maxRows * nranks / totalRows, 1 when equal); grouped
 * broadcasts move the exact rows but run at 1.2-1.8x the time of an equal
 * ncclAllGather of the same bytes (1.15x at 256 MB). So: pad while the
 * imbalance is below that ratio, broadcast when one rank holds (almost)
 * everything, send/recv in between. The pad variants also pay two copies
 * (about 1+nranks times the bytes per rank at ~3 TB/s), which is why the
 * native call takes over for equal counts from 2 MB.
 *
 * First matching row wins; "pad_symm" becomes "pad" where symmetric windows
 * are unavailable. Before these rows: all counts equal and every buffer in
 * a window from vcollMemAlloc -> "native" (NCCL's symmetric kernels run on
 * the user's buffers directly, no copies); imbalance >= 3/4 nranks (one
 * rank holds almost everything) -> "bcast". */
struct agvRule {
  size_t maxBytesPerRank; /* mean bytes per rank, inclusive */
  double maxImbalance;    /* inclusive */
  const char* algo;
};

static const struct agvRule agvRules[] = {
    {(size_t)2 << 20, 1.0, "pad_symm"},  /* equal <= 2 MB: 7.9 vs 10.2 us (64K), 16.7 vs 36 us (1M) */
    {SIZE_MAX, 1.0, "native"},           /* equal > 2 MB: copies eat the symmetric gain */
    {(size_t)8 << 20, 1.8, "pad_symm"},  /* skew 1 MB: 23.3 us vs p2p 30.5, bcast 66.4 */
    {(size_t)16 << 20, 1.15, "pad_symm"},
    {SIZE_MAX, 1.15, "pad"},             /* large, nearly equal: padding costs < bcast's inefficiency */
    {(size_t)8 << 20, DBL_MAX, "p2p"},   /* moderate imbalance, mid sizes: exact bytes, better than bcast */
    {SIZE_MAX, DBL_MAX, "bcast"},        /* skew 256 MB: 2850 us vs 4133-4316 */
};

/* NCCL 2.29+ runs grouped broadcasts as one AllGatherV kernel: not measured
 * yet; assume it wins for any imbalance above small sizes. */
static const struct agvRule agvRules229[] = {
    {(size_t)64 << 10, 1.5, "pad_symm"},
    {(size_t)2 << 20, 1.0, "pad_symm"},
    {SIZE_MAX, 1.0, "native"},
    {SIZE_MAX, DBL_MAX, "bcast"},
};

static const struct agvRule* agvTable(int ncclVersion, int* n) {
  if (ncclVersion >= 22900) { *n = (int)(sizeof(agvRules229) / sizeof(agvRules229[0])); return agvRules229; }
  *n = (int)(sizeof(agvRules) / sizeof(agvRules[0]));
  return agvRules;
}

int vcollAgvRule(int ncclVersion, int i, size_t* maxBytesPerRank, double* maxImbalance, const char** algo) {
  int n;
  const struct agvRule* t = agvTable(ncclVersion, &n);
  if (i < 0 || i >= n) return 0;
  *maxBytesPerRank = t[i].maxBytesPerRank;
  *maxImbalance = t[i].maxImbalance;
  *algo = t[i].algo;
  return 1;
}

int vcollAgvAllRegistered(vcollComm_t comm, const struct vcollAgvCall* c) {
  if (comm->windows == NULL || c->totalRows == 0) return 0; /* nothing moves; buffers may be NULL */
  for (int i = 0; i < c->ntensors; i++) {
    size_t rb = rowBytesOf(c->tensors + i);
    if (!vcollInWindow(comm, c->tensors[i].recvbuff, c->totalRows * rb)) return 0;
    if (c->counts[comm->rank] > 0 && !vcollInWindow(comm, c->tensors[i].sendbuff, c->counts[comm->rank] * rb))
      return 0;
  }
  return 1;
}

int vcollAgvSelect(vcollComm_t comm, const struct vcollAgvCall* call) {
  const int n = comm->nranks;
  const int equal = agvEqualSupported(comm, call);
  if (call->totalRows == 0 || n == 1) return vcollAlgoFind(vcollCollAllGatherV, "native");
  const double imbalance = vcollImbalance(call->maxRows, n, call->totalRows, equal);
  const size_t perRank = call->totalBytes / (size_t)n;
  const char* algo = NULL;
  const char* why = "table";
  if (equal && vcollAgvAllRegistered(comm, call)) {
    algo = "native";
    why = "registered buffers";
  } else if (!equal && imbalance >= 0.75 * n) {
    algo = "bcast";
    why = "one rank holds almost all rows";
  } else {
    int nrules;
    const struct agvRule* rules = agvTable(comm->ncclVersion, &nrules);
    for (int i = 0; i < nrules && algo == NULL; i++)
      if (perRank <= rules[i].maxBytesPerRank && imbalance <= rules[i].maxImbalance) algo = rules[i].algo;
    if (algo == NULL) algo = "bcast";
  }
  /* Staging that cannot be had (a graph capture, where it cannot grow; a
   * growth that failed before): the plain buffer, or a path without. */
  const size_t staging = strncmp(algo, "pad", 3) == 0 ? agvStagingBytes(comm, call) : 0;
  algo = vcollStagedChoice(comm, algo, staging, call->stream, equal ? "native" : "bcast", &why);
  VCOLL_INFO("allgatherv auto: %s (%s; %zu bytes/rank, imbalance %.2f, nranks %d, ntensors %d, NCCL %d)", algo, why,
             perRank, imbalance, n, call->ntensors, comm->ncclVersion);
  return vcollAlgoFind(vcollCollAllGatherV, algo);
}
