/* Batched row gather for MoE weight layouts: dst row n = src row perm[n],
 * for many (src, dst) tensors sharing one permutation, in one kernel.
 * The 1-D grid is split into per-tensor block ranges sized by each
 * tensor's bytes (payload and scale tensors differ 8x or 16x), so no
 * block idles; a block finds its tensor by binary search.
 * Each tensor moves in the widest vectors (16, 8, 4, 2 or 1 bytes) that
 * its pointers and row size allow. Loads and stores are streaming
 * (evict-first): the weights are touched once, the permutation is reused. */
#include <cuda_runtime.h>
#include <stdint.h>

#include "vcoll.h"
extern "C" {
#include "vcoll_internal.h"
}

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;     /* independent vectors in flight per thread */
constexpr int kMaxJobs = 128;  /* tensors per launch: the parameters stay under 4 KB */
constexpr uint32_t kMaxJobBlocks = 1u << 16; /* then blocks stride over the tensor */

struct GatherParams {
  const int32_t* perm;
  uint32_t rows;
  int numJobs;
  const uint8_t* src[kMaxJobs];
  uint8_t* dst[kMaxJobs];
  uint32_t rowVecs[kMaxJobs]; /* vectors per row */
  uint32_t blockStart[kMaxJobs + 1]; /* tensor j has blocks blockStart[j] .. blockStart[j+1] - 1 */
  uint8_t shift[kMaxJobs];           /* log2 of the vector bytes */
};
static_assert(sizeof(GatherParams) <= 4096, "kernel parameters over 4 KB");

template <typename V>
__device__ __forceinline__ void gatherJob(const int32_t* __restrict__ perm, uint32_t rows,
                                          const V* __restrict__ src, V* __restrict__ dst, uint32_t rowVecs,
                                          uint32_t block, uint32_t blocks) {
  const uint64_t total = (uint64_t)rows * rowVecs;
  const bool small = total <= 0xffffffffull; /* 32-bit division suffices */
  const uint64_t stride = (uint64_t)blocks * kThreads * kUnroll;
  for (uint64_t base = (uint64_t)block * kThreads * kUnroll + threadIdx.x; base < total; base += stride) {
    V v[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const uint64_t i = base + (uint64_t)u * kThreads;
      if (i < total) {
        const uint64_t n = small ? (uint64_t)((uint32_t)i / rowVecs) : i / rowVecs;
        const uint64_t c = i - n * rowVecs;
        const uint32_t s = (uint32_t)perm[n];
        if (s < rows) {
          v[u] = __ldcs(src + (uint64_t)s * rowVecs + c);
        } else {
          v[u] = V{}; /* out-of-range entry: zero row, never a stray read */
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; u++) {
      const uint64_t i = base + (uint64_t)u * kThreads;
      if (i < total) __stcs(dst + i, v[u]);
    }
  }
}

__global__ void __launch_bounds__(kThreads) gatherKernel(const __grid_constant__ GatherParams p) {
  int j = 0, hi = p.numJobs - 1; /* last tensor whose range starts at or before this block */
  while (j < hi) {
    const int mid = (j + hi + 1) >> 1;
    if (p.blockStart[mid] <= blockIdx.x) j = mid;
    else hi = mid - 1;
  }
  const uint32_t b = blockIdx.x - p.blockStart[j], nb = p.blockStart[j + 1] - p.blockStart[j];
  const uint8_t* s = p.src[j];
  uint8_t* d = p.dst[j];
  const uint32_t rv = p.rowVecs[j];
  switch (p.shift[j]) {
    case 4: gatherJob<uint4>(p.perm, p.rows, (const uint4*)s, (uint4*)d, rv, b, nb); break;
    case 3: gatherJob<uint2>(p.perm, p.rows, (const uint2*)s, (uint2*)d, rv, b, nb); break;
    case 2: gatherJob<unsigned int>(p.perm, p.rows, (const unsigned int*)s, (unsigned int*)d, rv, b, nb); break;
    case 1: gatherJob<unsigned short>(p.perm, p.rows, (const unsigned short*)s, (unsigned short*)d, rv, b, nb); break;
    default: gatherJob<unsigned char>(p.perm, p.rows, (const unsigned char*)s, (unsigned char*)d, rv, b, nb); break;
  }
}

/* Widest vector (log2 bytes, up to 16) that divides both addresses and the row size. */
int vectorShift(const void* src, const void* dst, size_t rowBytes) {
  const uintptr_t bits = (uintptr_t)src | (uintptr_t)dst | (uintptr_t)rowBytes;
  int shift = 4;
  while (shift > 0 && (bits & ((1u << shift) - 1)) != 0) shift--;
  return shift;
}

}  // namespace

/* Declared in weight_layout.c. Arguments come validated: M in 1..INT32_MAX,
 * every rowBytes in 1..UINT32_MAX, pointers non-NULL and disjoint. */
extern "C" vcollResult_t vcollWeightGatherRows(const int32_t* perm, size_t M, int numJobs, const void* const* src,
                                               void* const* dst, const size_t* rowBytes, cudaStream_t stream) {
  for (int j0 = 0; j0 < numJobs; j0 += kMaxJobs) {
    GatherParams p;
    p.perm = perm;
    p.rows = (uint32_t)M;
    p.numJobs = numJobs - j0 < kMaxJobs ? numJobs - j0 : kMaxJobs;
    const uint64_t perBlock = (uint64_t)kThreads * kUnroll;
    uint32_t blocks = 0; /* at most kMaxJobs * kMaxJobBlocks < 2^31 */
    for (int j = 0; j < p.numJobs; j++) {
      const int shift = vectorShift(src[j0 + j], dst[j0 + j], rowBytes[j0 + j]);
      p.src[j] = (const uint8_t*)src[j0 + j];
      p.dst[j] = (uint8_t*)dst[j0 + j];
      p.shift[j] = (uint8_t)shift;
      p.rowVecs[j] = (uint32_t)(rowBytes[j0 + j] >> shift);
      const uint64_t need = ((uint64_t)M * p.rowVecs[j] + perBlock - 1) / perBlock;
      p.blockStart[j] = blocks;
      blocks += (uint32_t)(need < kMaxJobBlocks ? need : kMaxJobBlocks);
    }
    p.blockStart[p.numJobs] = blocks;
    gatherKernel<<<blocks, kThreads, 0, stream>>>(p);
    VCOLL_CUDACHECK(NULL, cudaGetLastError());
  }
  return vcollSuccess;
}
