/* Shared driver of the collective benchmarks (nccl-tests style): each
 * collective plugs a struct benchColl into benchMain(), which owns the
 * flags, shapes, timing, checking and output. */
#ifndef VCOLL_BENCH_COLL_H_
#define VCOLL_BENCH_COLL_H_

#include <stddef.h>

#include "vcoll.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BENCH_MAX_TENSORS 8

/* One measured point: the per-rank row counts and the element layout. */
struct benchPoint {
  int rank, nranks;
  const size_t* counts;
  const size_t* displs; /* nranks + 1 entries */
  size_t totalRows, maxRows;
  size_t width;         /* elements per row of each tensor */
  vcollDataType_t type;
  vcollRedOp_t op;
  int ntensors;
  int inPlace;
};

/* Buffers of one point, allocated by the driver from the sizes the
 * collective asks for (device memory, vcollMemAlloc with -R, or host). */
struct benchBufs {
  void* send[BENCH_MAX_TENSORS];
  void* recv[BENCH_MAX_TENSORS];
  /* In place: the send pointer the collective is given (inside recv/send). */
  void* sendArg[BENCH_MAX_TENSORS];
  void* recvArg[BENCH_MAX_TENSORS];
};

struct benchColl {
  const char* name;          /* "allgatherv" */
  vcollCollective_t coll;
  const char* baseline;      /* algorithm the speedup is measured against */
  int reduces;               /* uses -o */
  int ntensorsMax;           /* 1 when the collective takes one buffer */
  /* Bytes of tensor t's send and recv buffers on this rank (out of place;
   * registered buffers use the same size on every rank: pass maxRows). */
  size_t (*sendBytes)(const struct benchPoint* p, int t, int uniform);
  size_t (*recvBytes)(const struct benchPoint* p, int t, int uniform);
  /* Sets sendArg/recvArg for p->inPlace, writes the inputs, and poisons
   * what the collective must write. Returns 0 on success. */
  int (*prepare)(const struct benchPoint* p, struct benchBufs* b, int onDevice);
  vcollResult_t (*run)(const struct benchPoint* p, const struct benchBufs* b, vcollComm_t comm,
                       cudaStream_t stream);
  /* Wrong elements of this rank's output (-1 if the check itself failed). */
  long long (*check)(const struct benchPoint* p, const struct benchBufs* b, int onDevice);
};

int benchMain(int argc, char** argv, const struct benchColl* coll);

/* check.cu */
int benchAgvFill(void* buf, size_t bytes, size_t g0, int tensor, int onDevice);
long long benchAgvCheck(const void* buf, size_t bytes, int tensor, int onDevice);
int benchRsvFill(void* buf, size_t rows, size_t width, vcollDataType_t type, int rank, int nranks, vcollRedOp_t op,
                 int onDevice);
long long benchRsvCheck(const void* buf, size_t rows, size_t row0, size_t width, vcollDataType_t type, int nranks,
                        vcollRedOp_t op, int onDevice);
/* Poison (0xA5 bytes), on the device or the host. */
int benchPoison(void* buf, size_t bytes, int onDevice);

#ifdef __cplusplus
}
#endif

#endif
