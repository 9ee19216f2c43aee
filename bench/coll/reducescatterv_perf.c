/* reducescatterv benchmark: nccl-tests' table for vcollReduceScatterV, every
 * algorithm timed in the same run. See docs/algorithms.md.
 *   mpirun -np 4 reducescatterv_perf -b 1K -e 256M -f 4 -d bfloat16 -o sum -c 1 */
#include "bench.h"

static size_t rowBytes(const struct benchPoint* p) { return p->width * vcollTypeSize(p->type); }

static size_t rsvSend(const struct benchPoint* p, int t, int uniform) {
  (void)t; (void)uniform;
  return p->totalRows * rowBytes(p);
}

static size_t rsvRecv(const struct benchPoint* p, int t, int uniform) {
  (void)t;
  return (uniform ? p->maxRows : p->counts[p->rank]) * rowBytes(p);
}

static int rsvPrepare(const struct benchPoint* p, struct benchBufs* b, int dev) {
  size_t rb = rowBytes(p);
  char* send = b->send[0];
  b->sendArg[0] = send;
  b->recvArg[0] = p->inPlace ? send + p->displs[p->rank] * rb : b->recv[0];
  if (benchRsvFill(send, p->totalRows, p->width, p->type, p->rank, p->nranks, p->op, dev)) return -1;
  if (!p->inPlace && benchPoison(b->recv[0], p->counts[p->rank] * rb, dev)) return -1;
  return 0;
}

static vcollResult_t rsvRun(const struct benchPoint* p, const struct benchBufs* b, vcollComm_t comm,
                            cudaStream_t stream) {
  return vcollReduceScatterV(b->sendArg[0], b->recvArg[0], p->counts, p->width, p->type, p->op, comm, stream);
}

static long long rsvCheck(const struct benchPoint* p, const struct benchBufs* b, int dev) {
  return benchRsvCheck(b->recvArg[0], p->counts[p->rank], p->displs[p->rank], p->width, p->type, p->nranks, p->op,
                       dev);
}

static const struct benchColl rsv = {
    .name = "reducescatterv",
    .coll = vcollCollReduceScatterV,
    .baseline = "reduce",
    .reduces = 1,
    .ntensorsMax = 1,
    .sendBytes = rsvSend,
    .recvBytes = rsvRecv,
    .prepare = rsvPrepare,
    .run = rsvRun,
    .check = rsvCheck,
};

int main(int argc, char** argv) { return benchMain(argc, argv, &rsv); }
