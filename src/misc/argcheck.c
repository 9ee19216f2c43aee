/* Argument checks, all in one place. Each failure records one line naming
 * the operation and the argument, and nothing is communicated or written. */
#include <stdint.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "vcoll_internal.h"

int vcollMulOk(size_t a, size_t b, size_t* out) { return !__builtin_mul_overflow(a, b, out); }
int vcollAddOk(size_t a, size_t b, size_t* out) { return !__builtin_add_overflow(a, b, out); }

uint64_t vcollHashBytes(uint64_t h, const void* data, size_t len) {
  const unsigned char* p = (const unsigned char*)data;
  if (h == 0) h = 1469598103934665603ull;
  for (size_t i = 0; i < len; i++) { h ^= p[i]; h *= 1099511628211ull; }
  return h;
}

vcollResult_t vcollCheckComm(vcollComm_t comm, const char* op) {
  if (comm == NULL) return VCOLL_ARGERR(NULL, op, "comm argument is NULL");
  if (comm->ops == NULL || comm->nranks <= 0 || comm->rank < 0 || comm->rank >= comm->nranks)
    return VCOLL_ARGERR(NULL, op, "comm %p is not a valid vcoll communicator (destroyed?)", (void*)comm);
  return vcollSuccess;
}

/* Fills comm->displs from counts; checks sums and byte sizes for overflow. */
static vcollResult_t checkCounts(vcollComm_t comm, const char* op, const size_t* counts,
                                 size_t* totalRows, size_t* maxRows) {
  if (counts == NULL) return VCOLL_ARGERR(comm, op, "counts argument is NULL");
  size_t sum = 0, mx = 0;
  for (int r = 0; r < comm->nranks; r++) {
    comm->displs[r] = sum;
    if (counts[r] > (size_t)PTRDIFF_MAX)
      return VCOLL_ARGERR(comm, op, "counts[%d] = %zu is above PTRDIFF_MAX (a negative count cast to size_t?)", r,
                          counts[r]);
    if (!vcollAddOk(sum, counts[r], &sum))
      return VCOLL_ARGERR(comm, op, "counts[%d] = %zu makes the total row count overflow", r, counts[r]);
    if (counts[r] > mx) mx = counts[r];
  }
  comm->displs[comm->nranks] = sum;
  *totalRows = sum;
  *maxRows = mx;
  return vcollSuccess;
}

static vcollResult_t checkType(vcollComm_t comm, const char* op, const char* what, vcollDataType_t t) {
  if ((unsigned)t >= vcollNumTypes)
    return VCOLL_ARGERR(comm, op, "invalid %s %d (must be in 0..%d)", what, (int)t, vcollNumTypes - 1);
  return vcollSuccess;
}

vcollResult_t vcollCheckAllGatherV(vcollComm_t comm, const vcollTensor_t* tensors, int ntensors,
                                   const size_t* counts, cudaStream_t stream,
                                   struct vcollAgvCall* call, char* inPlace) {
  static const char* op = "vcollAllGatherV";
  if (tensors == NULL) return VCOLL_ARGERR(comm, op, "tensors argument is NULL");
  if (ntensors <= 0) return VCOLL_ARGERR(comm, op, "invalid ntensors %d (must be >= 1)", ntensors);
  size_t totalRows = 0, maxRows = 0;
  VCOLL_CHECK_RES(checkCounts(comm, op, counts, &totalRows, &maxRows));
  size_t mine = counts[comm->rank], myDispl = comm->displs[comm->rank];
  size_t totalBytes = 0;
  for (int i = 0; i < ntensors; i++) {
    const vcollTensor_t* t = tensors + i;
    char what[48];
    snprintf(what, sizeof(what), "tensors[%d].datatype", i);
    VCOLL_CHECK_RES(checkType(comm, op, what, t->datatype));
    if (t->width == 0) return VCOLL_ARGERR(comm, op, "tensors[%d].width is 0 (must be >= 1)", i);
    size_t rowBytes, bytes;
    if (!vcollMulOk(t->width, vcollTypeSize(t->datatype), &rowBytes) ||
        !vcollMulOk(totalRows, rowBytes, &bytes) || !vcollAddOk(totalBytes, bytes, &totalBytes))
      return VCOLL_ARGERR(comm, op,
                          "tensors[%d]: %zu rows x width %zu x %zu bytes overflows the byte size", i,
                          totalRows, t->width, vcollTypeSize(t->datatype));
    if (mine > 0 && t->sendbuff == NULL)
      return VCOLL_ARGERR(comm, op, "tensors[%d].sendbuff is NULL but this rank (%d) sends %zu rows", i,
                          comm->rank, mine);
    if (totalRows > 0 && t->recvbuff == NULL)
      return VCOLL_ARGERR(comm, op, "tensors[%d].recvbuff is NULL but %zu rows are gathered", i, totalRows);
    const char* slot = (const char*)t->recvbuff + myDispl * rowBytes;
    inPlace[i] = (mine > 0 && t->sendbuff == slot);
    if (!inPlace[i] && vcollOverlaps(t->sendbuff, mine * rowBytes, t->recvbuff, bytes))
      return VCOLL_ARGERR(comm, op,
                          "tensors[%d].sendbuff overlaps recvbuff but is not this rank's slot "
                          "(in place needs sendbuff == recvbuff + %zu bytes)", i, myDispl * rowBytes);
    for (int j = 0; j < i; j++) {
      size_t jRowBytes = tensors[j].width * vcollTypeSize(tensors[j].datatype);
      if (vcollOverlaps(t->recvbuff, bytes, tensors[j].recvbuff, totalRows * jRowBytes))
        return VCOLL_ARGERR(comm, op, "tensors[%d].recvbuff overlaps tensors[%d].recvbuff", i, j);
      /* All tensors go out in one group: one tensor's rows must not be read
       * from where another tensor's rows are being written. */
      if (vcollOverlaps(t->sendbuff, mine * rowBytes, tensors[j].recvbuff, totalRows * jRowBytes))
        return VCOLL_ARGERR(comm, op, "tensors[%d].sendbuff overlaps tensors[%d].recvbuff", i, j);
      if (vcollOverlaps(tensors[j].sendbuff, mine * jRowBytes, t->recvbuff, bytes))
        return VCOLL_ARGERR(comm, op, "tensors[%d].sendbuff overlaps tensors[%d].recvbuff", j, i);
    }
  }
  call->tensors = tensors;
  call->ntensors = ntensors;
  call->counts = counts;
  call->displs = comm->displs;
  call->totalRows = totalRows;
  call->maxRows = maxRows;
  call->totalBytes = totalBytes;
  call->inPlace = inPlace;
  call->stream = stream;
  call->algo = -1;
  call->algoAuto = 0;
  call->produce = NULL;
  call->produceCtx = NULL;
  return vcollSuccess;
}

vcollResult_t vcollCheckReduceScatterV(vcollComm_t comm, const void* sendbuff, void* recvbuff,
                                       const size_t* counts, size_t width,
                                       vcollDataType_t datatype, vcollRedOp_t redop,
                                       cudaStream_t stream, struct vcollRsvCall* call) {
  static const char* op = "vcollReduceScatterV";
  VCOLL_CHECK_RES(checkType(comm, op, "datatype", datatype));
  if ((unsigned)redop >= vcollNumOps)
    return VCOLL_ARGERR(comm, op, "invalid op %d (must be in 0..%d)", (int)redop, vcollNumOps - 1);
  if (redop == vcollAvg && !vcollTypeIsFloat(datatype))
    return VCOLL_ARGERR(comm, op, "op avg needs a floating-point datatype, not %s", vcollTypeName(datatype));
  if (width == 0) return VCOLL_ARGERR(comm, op, "width is 0 (must be >= 1)");
  size_t totalRows = 0, maxRows = 0;
  VCOLL_CHECK_RES(checkCounts(comm, op, counts, &totalRows, &maxRows));
  size_t rowBytes, bytes;
  if (!vcollMulOk(width, vcollTypeSize(datatype), &rowBytes) || !vcollMulOk(totalRows, rowBytes, &bytes))
    return VCOLL_ARGERR(comm, op, "%zu rows x width %zu x %zu bytes overflows the byte size", totalRows,
                        width, vcollTypeSize(datatype));
  size_t mine = counts[comm->rank], myDispl = comm->displs[comm->rank];
  if (totalRows > 0 && sendbuff == NULL)
    return VCOLL_ARGERR(comm, op, "sendbuff is NULL but %zu rows are reduced", totalRows);
  if (mine > 0 && recvbuff == NULL)
    return VCOLL_ARGERR(comm, op, "recvbuff is NULL but this rank (%d) receives %zu rows", comm->rank, mine);
  const char* slot = (const char*)sendbuff + myDispl * rowBytes;
  int inPlace = (mine > 0 && recvbuff == slot);
  if (!inPlace && vcollOverlaps(recvbuff, mine * rowBytes, sendbuff, bytes))
    return VCOLL_ARGERR(comm, op,
                        "recvbuff overlaps sendbuff but is not this rank's slot "
                        "(in place needs recvbuff == sendbuff + %zu bytes)", myDispl * rowBytes);
  call->sendbuff = sendbuff;
  call->recvbuff = recvbuff;
  call->counts = counts;
  call->displs = comm->displs;
  call->totalRows = totalRows;
  call->maxRows = maxRows;
  call->width = width;
  call->rowBytes = rowBytes;
  call->datatype = datatype;
  call->op = redop;
  call->inPlace = inPlace;
  call->stream = stream;
  call->algo = -1;
  call->algoAuto = 0;
  return vcollSuccess;
}

vcollResult_t vcollCheckAgreement(vcollComm_t comm, const char* op, const struct vcollAgreeField* fields, int nf,
                                  vcollResult_t localRes, cudaStream_t stream) {
  if (localRes == vcollSuccess && (nf < 0 || nf > VCOLL_AGREE_MAX_FIELDS)) /* a local failure: still agree */
    localRes = vcollSetError(comm, vcollInternalError, "%s : %d agreement fields (at most %d)", op, nf,
                             VCOLL_AGREE_MAX_FIELDS);
  /* Field 0 is the function itself, then the caller's; per field its hash
   * and the hash's complement (a rank whose value differs sees the max of
   * one of them differ from its own); last the lowest failing rank as
   * nranks - rank. Always the same length, whatever the function, so that
   * ranks in different functions still meet in the same allreduce. */
  enum { kF = VCOLL_AGREE_MAX_FIELDS + 1 };
  struct vcollAgreeField f[kF];
  uint64_t vals[2 * kF + 1];
  const int ok = localRes == vcollSuccess;
  f[0] = (struct vcollAgreeField){"functions (one rank called another one)", vcollHashBytes(0, op, strlen(op)), 0};
  for (int i = 1; i < kF; i++) f[i] = ok && i <= nf ? fields[i - 1] : (struct vcollAgreeField){NULL, 0, 0};
  for (int i = 0; i < kF; i++) {
    vals[2 * i] = ok || i == 0 ? f[i].hash : 0;
    vals[2 * i + 1] = ok || i == 0 ? ~f[i].hash : 0;
  }
  vals[2 * kF] = ok ? 0 : (uint64_t)(comm->nranks - comm->rank);
  vcollResult_t res = comm->ops->allreduceMaxU64(comm, vals, 2 * kF + 1, stream);
  if (res != vcollSuccess) return res;
  if (!ok) return localRes; /* its message is already recorded */
  const int sameFn = vals[0] == f[0].hash && vals[1] == ~f[0].hash;
  if (vals[2 * kF] != 0 && sameFn)
    return VCOLL_ARGERR(comm, op, "rank %d's arguments failed validation (checked mode; the lowest such rank); "
                        "nothing was communicated", comm->nranks - (int)vals[2 * kF]);
  char which[512];
  size_t o = 0;
  int differ = 0;
  which[0] = '\0';
  /* Derived fields (the algorithm, chosen from the others) are named only
   * when nothing they follow from differs. */
  for (int pass = 0; pass < 2 && !differ; pass++)
    for (int i = 0; i < (sameFn ? kF : 1); i++)
      if (f[i].name && f[i].derived == pass && (vals[2 * i] != f[i].hash || vals[2 * i + 1] != ~f[i].hash)) {
        int w = snprintf(which + o, sizeof(which) - o, "%s%s", differ ? ", and different " : "", f[i].name);
        o += w > 0 && (size_t)w < sizeof(which) - o ? (size_t)w : 0;
        differ = 1;
      }
  if (differ)
    return vcollSetError(comm, vcollArgumentMismatch,
                         "%s : ranks passed different %s (checked mode); nothing was communicated", op,
                         which);
  return vcollSuccess;
}
