/* The reduction step of the p2p reducescatterv: this rank's rows of every
 * rank, received side by side in a staging buffer, reduced into recvbuff
 * by one kernel (element arithmetic in reduce_elem.cuh). */
#include <cuda_runtime.h>

#include "coll.h"
#include "reduce_elem.cuh"

#define REDUCE_THREADS 256
#define REDUCE_BLOCKS_PER_SM 8

/* Passed by value (about 0.5 KB of parameter space), so a launch captured
 * into a CUDA graph carries its own source list. */
struct ReduceArgs {
  void* dst;
  const void* src[VCOLL_REDUCE_MAX_SRCS];
  int nsrc;
  int op;
  int divisor;
  int vec; /* dst and every source 16-byte aligned: reduceRangeVec */
  size_t n;
};

template <typename T>
static __global__ void __launch_bounds__(REDUCE_THREADS) reduceKernel(const __grid_constant__ ReduceArgs a) {
  const size_t begin = (size_t)blockIdx.x * REDUCE_THREADS + threadIdx.x, stride = (size_t)gridDim.x * REDUCE_THREADS;
  if (a.vec) vcollReduce::reduceRangeVec<T>((T*)a.dst, a.src, a.nsrc, a.n, a.op, a.divisor, begin, stride);
  else vcollReduce::reduceRange<T>((T*)a.dst, a.src, a.nsrc, a.n, a.op, a.divisor, begin, stride);
}

template <typename T>
static void launch(const ReduceArgs& a, unsigned blocks, cudaStream_t stream) {
  reduceKernel<T><<<blocks, REDUCE_THREADS, 0, stream>>>(a);
}

extern "C" vcollResult_t vcollBatchReduce(vcollComm_t comm, void* dst, const void* const* srcs, int nsrc,
                                          size_t elems, vcollDataType_t type, vcollRedOp_t op, int avgDivisor,
                                          int numSms, cudaStream_t stream) {
  if (nsrc < 1 || nsrc > VCOLL_REDUCE_MAX_SRCS)
    return vcollSetError(comm, vcollInternalError, "vcollBatchReduce: %d sources (1..%d)", nsrc,
                         VCOLL_REDUCE_MAX_SRCS);
  if (elems == 0) return vcollSuccess;
  ReduceArgs a;
  a.dst = dst;
  uintptr_t any = (uintptr_t)dst;
  for (int k = 0; k < nsrc; k++) {
    a.src[k] = srcs[k];
    any |= (uintptr_t)srcs[k];
  }
  a.vec = (any % 16) == 0;
  a.nsrc = nsrc;
  a.op = (int)op;
  a.divisor = avgDivisor > 0 ? avgDivisor : 1;
  a.n = elems;
  const size_t es = vcollTypeSize(type), perThread = a.vec && es > 0 ? 16 / es : 1; /* elements per step */
  const size_t need = (elems / perThread + REDUCE_THREADS) / REDUCE_THREADS; /* >= 1: the tail's threads */
  const size_t cap = (size_t)(numSms > 0 ? numSms : 1) * REDUCE_BLOCKS_PER_SM;
  const unsigned blocks = (unsigned)(need < cap ? need : cap);
  const bool known = vcollReduce::byType(type, [&](auto* tag) {
    launch<std::remove_pointer_t<decltype(tag)>>(a, blocks, stream);
  });
  if (!known) return vcollSetError(comm, vcollInternalError, "vcollBatchReduce: type %d", (int)type);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return vcollSetError(comm, vcollUnhandledCudaError, "reduction kernel launch (%d sources, %zu elements) failed: %s",
                         nsrc, elems, cudaGetErrorString(err));
  return vcollSuccess;
}
