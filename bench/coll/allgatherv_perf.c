/* allgatherv benchmark: nccl-tests' table for vcollAllGatherV over a list
 * of tensors, every algorithm timed in the same run. See docs/algorithms.md.
 *   mpirun -np 4 allgatherv_perf -b 1K -e 256M -f 4 -s equal,skew,one,random,moe -c 1 */
#include "bench.h"

static size_t rowBytes(const struct benchPoint* p) { return p->width * vcollTypeSize(p->type); }

static size_t agvSend(const struct benchPoint* p, int t, int uniform) {
  (void)t;
  return (uniform ? p->maxRows : p->counts[p->rank]) * rowBytes(p);
}

static size_t agvRecv(const struct benchPoint* p, int t, int uniform) {
  (void)t; (void)uniform;
  return p->totalRows * rowBytes(p);
}

static int agvPrepare(const struct benchPoint* p, struct benchBufs* b, int dev) {
  size_t rb = rowBytes(p), mine = p->counts[p->rank] * rb, at = p->displs[p->rank] * rb;
  for (int t = 0; t < p->ntensors; t++) {
    char* recv = b->recv[t];
    b->recvArg[t] = recv;
    if (benchPoison(recv, p->totalRows * rb, dev)) return -1;
    b->sendArg[t] = p->inPlace ? recv + at : b->send[t];
    if (benchAgvFill(b->sendArg[t], mine, at, t, dev)) return -1;
  }
  return 0;
}

static vcollResult_t agvRun(const struct benchPoint* p, const struct benchBufs* b, vcollComm_t comm,
                            cudaStream_t stream) {
  vcollTensor_t ts[BENCH_MAX_TENSORS];
  for (int t = 0; t < p->ntensors; t++) {
    ts[t].sendbuff = b->sendArg[t];
    ts[t].recvbuff = b->recvArg[t];
    ts[t].width = p->width;
    ts[t].datatype = p->type;
  }
  return vcollAllGatherV(ts, p->ntensors, p->counts, comm, stream);
}

static long long agvCheck(const struct benchPoint* p, const struct benchBufs* b, int dev) {
  long long wrong = 0;
  for (int t = 0; t < p->ntensors; t++) {
    long long w = benchAgvCheck(b->recv[t], p->totalRows * rowBytes(p), t, dev);
    if (w < 0) return -1;
    wrong += w;
  }
  return wrong;
}

static const struct benchColl agv = {
    .name = "allgatherv",
    .coll = vcollCollAllGatherV,
    .baseline = "bcast",
    .reduces = 0,
    .ntensorsMax = BENCH_MAX_TENSORS,
    .sendBytes = agvSend,
    .recvBytes = agvRecv,
    .prepare = agvPrepare,
    .run = agvRun,
    .check = agvCheck,
};

int main(int argc, char** argv) { return benchMain(argc, argv, &agv); }
