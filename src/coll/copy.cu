/* Batched device copies for the pack/unpack steps of the padded
 * algorithms: one launch moves every tensor of every rank. The copies are
 * cut into 16 KiB chunks numbered across all copies, so a skewed batch
 * (one large copy, many small ones) still spreads over the whole GPU. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "coll.h"

#define COPY_THREADS 256
#define COPY_UNROLL 4
#define COPY_CHUNK ((size_t)COPY_THREADS * 16 * COPY_UNROLL)
#define COPY_MAX_DESCS 64
#define COPY_BLOCKS_PER_SM 4

/* Passed by value (about 2 KB of the 4 KB parameter space), so a launch
 * captured into a CUDA graph carries its own copy list. */
struct CopyBatch {
  int n;
  long long chunkStart[COPY_MAX_DESCS + 1]; /* prefix sums of chunks per copy */
  const char* src[COPY_MAX_DESCS];
  char* dst[COPY_MAX_DESCS];
  size_t bytes[COPY_MAX_DESCS];
};

static __device__ __forceinline__ void copyChunk(const char* __restrict__ src, char* __restrict__ dst,
                                                 size_t len) {
  uintptr_t both = (uintptr_t)src | (uintptr_t)dst;
  size_t done = 0;
  if ((both & 15) == 0) {
    const uint4* s = (const uint4*)src;
    uint4* d = (uint4*)dst;
    size_t nvec = len / 16; /* <= COPY_THREADS * COPY_UNROLL */
    uint4 v[COPY_UNROLL];
#pragma unroll
    for (int u = 0; u < COPY_UNROLL; u++) {
      size_t i = threadIdx.x + (size_t)u * COPY_THREADS;
      if (i < nvec) v[u] = s[i];
    }
#pragma unroll
    for (int u = 0; u < COPY_UNROLL; u++) {
      size_t i = threadIdx.x + (size_t)u * COPY_THREADS;
      if (i < nvec) d[i] = v[u];
    }
    done = nvec * 16;
  } else if ((both & 3) == 0) {
    size_t nw = len / 4;
    for (size_t i = threadIdx.x; i < nw; i += COPY_THREADS) ((uint32_t*)dst)[i] = ((const uint32_t*)src)[i];
    done = nw * 4;
  }
  for (size_t i = done + threadIdx.x; i < len; i += COPY_THREADS) dst[i] = src[i];
}

static __global__ void __launch_bounds__(COPY_THREADS) batchCopyKernel(const __grid_constant__ CopyBatch b) {
  const long long total = b.chunkStart[b.n];
  for (long long c = blockIdx.x; c < total; c += gridDim.x) {
    /* Last copy whose first chunk is <= c (empty copies are never listed). */
    int lo = 0, hi = b.n - 1;
    while (lo < hi) {
      int mid = (lo + hi + 1) >> 1;
      if (b.chunkStart[mid] <= c) lo = mid;
      else hi = mid - 1;
    }
    size_t off = (size_t)(c - b.chunkStart[lo]) * COPY_CHUNK;
    size_t len = b.bytes[lo] - off;
    if (len > COPY_CHUNK) len = COPY_CHUNK;
    copyChunk(b.src[lo] + off, b.dst[lo] + off, len);
  }
}

static vcollResult_t launchBatch(vcollComm_t comm, CopyBatch* b, int numSms, cudaStream_t stream) {
  long long total = b->chunkStart[b->n];
  long long maxBlocks = (long long)(numSms > 0 ? numSms : 1) * COPY_BLOCKS_PER_SM;
  unsigned blocks = (unsigned)(total < maxBlocks ? total : maxBlocks);
  batchCopyKernel<<<blocks, COPY_THREADS, 0, stream>>>(*b);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    return vcollSetError(comm, vcollUnhandledCudaError, "batched copy kernel launch (%d copies, %lld chunks) failed: %s",
                         b->n, total, cudaGetErrorString(err));
  return vcollSuccess;
}

extern "C" vcollResult_t vcollBatchCopy(vcollComm_t comm, const struct vcollCopyDesc* descs, int n, int numSms,
                                        cudaStream_t stream) {
  CopyBatch b;
  b.n = 0;
  b.chunkStart[0] = 0;
  for (int i = 0; i < n; i++) {
    if (descs[i].bytes == 0) continue;
    int k = b.n;
    b.src[k] = (const char*)descs[i].src;
    b.dst[k] = (char*)descs[i].dst;
    b.bytes[k] = descs[i].bytes;
    b.chunkStart[k + 1] = b.chunkStart[k] + (long long)((descs[i].bytes + COPY_CHUNK - 1) / COPY_CHUNK);
    b.n = k + 1;
    if (b.n == COPY_MAX_DESCS) {
      VCOLL_CHECK_RES(launchBatch(comm, &b, numSms, stream));
      b.n = 0;
    }
  }
  if (b.n > 0) VCOLL_CHECK_RES(launchBatch(comm, &b, numSms, stream));
  return vcollSuccess;
}
