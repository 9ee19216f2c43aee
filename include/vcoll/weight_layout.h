/*
 * FP4 MoE weight-layout preparation (vcoll/weight_layout.h): the row
 * permutations that fused MoE GEMM kernels expect of each expert's packed
 * FP4 weights and block scales, a host cache of those permutations (they
 * depend only on the shape), and batched application on the GPU and CPU.
 * See docs/weight_layout.md.
 *
 * Every permutation is a row gather, dst row n = src row P[n]:
 *   gated interleave (M rows [w3 (up); w1 (gate)]):  G[r] = (r & 1) * (M/2) + (r >> 1)
 *   epilogue-tile shuffle, tile 128 (blocks of 32):  S[n] = (n/32)*32 + (n%8)*4 + (n%32)/8
 *   epilogue-tile shuffle, tile 64  (blocks of 16):  S[n] = (n/16)*16 + (n%8)*2 + (n%16)/8
 *   vcollWeightW13 (first GEMM):  P[n] = G[S[n]]
 *   vcollWeightW2  (second GEMM): P[n] = S[n]
 * The same P applies to the payload rows [M, K/2] and the linear scale rows
 * [M, K/block]; scales may then be converted to the 128x4 swizzled layout
 * with vcollNvfp4ConvertScales (vcoll/nvfp4.h).
 */
#ifndef VCOLL_WEIGHT_LAYOUT_H_
#define VCOLL_WEIGHT_LAYOUT_H_

#include "vcoll.h"
#include "vcoll/nvfp4.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  vcollWeightW13 = 0, /* first GEMM, M rows [w3; w1]: interleave, then tile shuffle */
  vcollWeightW2 = 1   /* second GEMM: tile shuffle */
} vcollWeightKind_t;

typedef enum {
  vcollWeightNvfp4 = 0, /* E2M1 payload, one E4M3 scale per 16 elements: scales [M, K/16] */
  vcollWeightMxfp4 = 1  /* E2M1 payload, one E8M0 scale per 32 elements: scales [M, K/32] */
} vcollWeightFormat_t;

/* Writes the permutation P of `kind` (M int32 entries) to the host array
 * `perm`. tile is 128 or 64; M must be a positive multiple of tile (and
 * even for vcollWeightW13), at most INT32_MAX. */
VCOLL_API vcollResult_t vcollWeightPermutation(vcollWeightKind_t kind, size_t M, int tile, int32_t* perm);

/* ---------------------------------------------------------------------- */
/* Cache                                                                    */

/* A cached permutation. Handles are reference counted: an entry evicted
 * from the cache (or cleared) stays valid, host and device copies
 * included, until every handle to it is released. */
typedef struct vcollWeightPerm* vcollWeightPerm_t;

/* Default number of cached permutations (least recently used evicted). */
#define VCOLL_WEIGHT_CACHE_DEFAULT_CAPACITY 64

/* The permutation of (kind, M, tile) from the process-wide host cache,
 * computed on a miss. Thread-safe. Release the handle when done. */
VCOLL_API vcollResult_t vcollWeightPermGet(vcollWeightKind_t kind, size_t M, int tile, vcollWeightPerm_t* perm);
/* The M host entries of a handle (valid while the handle is held). */
VCOLL_API vcollResult_t vcollWeightPermHost(vcollWeightPerm_t perm, const int32_t** host, size_t* M);
/* The entries on the current CUDA device, uploaded once per device and
 * kept with the entry (valid while the handle is held). The first call on
 * a device allocates and copies synchronously: do it before capturing a
 * CUDA graph. */
VCOLL_API vcollResult_t vcollWeightPermDevice(vcollWeightPerm_t perm, const int32_t** dev);
/* Drops a reference; NULL is a no-op. */
VCOLL_API vcollResult_t vcollWeightPermRelease(vcollWeightPerm_t perm);

/* Bounds the cache to `entries` (>= 1) permutations, evicting the least
 * recently used ones beyond it. */
VCOLL_API vcollResult_t vcollWeightCacheSetCapacity(int entries);
/* Drops every entry (entries still held by handles live on until released). */
VCOLL_API vcollResult_t vcollWeightCacheClear(void);

typedef struct {
  int entries;        /* permutations in the cache now */
  int capacity;
  uint64_t hits;      /* vcollWeightPermGet found the key */
  uint64_t misses;    /* ... computed it */
  uint64_t evictions; /* entries dropped for capacity */
  uint64_t uploads;   /* device copies made */
} vcollWeightCacheStats_t;
VCOLL_API vcollResult_t vcollWeightCacheGetStats(vcollWeightCacheStats_t* stats);

/* ---------------------------------------------------------------------- */
/* Applying a permutation to a batch of experts                             */

/* One expert's tensors, rows contiguous:
 *   payload   [M, K/2] bytes, packed FP4;   payloadOut the same shape;
 *   scales    [M, K/block] bytes, linear;   scalesOut in the requested
 *   layout, vcollWeightScaleBytes(format, M, K, layout) bytes. */
typedef struct {
  const void* payload;
  const void* scales;
  void* payloadOut;
  void* scalesOut;
} vcollWeightExpert_t;

/* Bytes of one expert's scales in `layout` (vcollScaleSwizzled128x4: the
 * [M, K/block] scale matrix in 128x4 tiles, M padded to 128 and K/block to
 * 4, as vcollNvfp4ScaleBytes); 0 for an invalid shape. */
VCOLL_API size_t vcollWeightScaleBytes(vcollWeightFormat_t format, size_t M, size_t K, vcollScaleLayout_t layout);

/* For each of numExperts experts: payloadOut row n = payload row perm[n]
 * and scale row n = scales row perm[n], the scales then written in
 * `scaleLayout` (swizzle padding as zeros). perm is a device array of M
 * entries in [0, M) (a row whose entry is out of range is written as
 * zeros); expert tensors are device pointers; outputs must not overlap any
 * input or each other. One kernel moves the rows of up to 64 experts,
 * 16 bytes at a time when pointers and row sizes allow. Ordered on
 * `stream`; the swizzled layout uses a stream-ordered workspace
 * (cudaMallocAsync). numExperts == 0 is a no-op. */
VCOLL_API vcollResult_t vcollWeightApply(const int32_t* perm, size_t M, size_t K, vcollWeightFormat_t format,
                                         vcollScaleLayout_t scaleLayout, const vcollWeightExpert_t* experts,
                                         int numExperts, cudaStream_t stream);

/* CPU version: host pointers; perm entries out of range are an error. */
VCOLL_API vcollResult_t vcollWeightApplyRef(const int32_t* perm, size_t M, size_t K, vcollWeightFormat_t format,
                                            vcollScaleLayout_t scaleLayout, const vcollWeightExpert_t* experts,
                                            int numExperts);

/* ---------------------------------------------------------------------- */
/* A whole MoE layer                                                        */

/* Expert tensors packed back to back ([E, ...]), with H = hidden and
 * I = intermediate (per expert; both multiples of the format's block):
 *   w13 [E, 2I, H/2], w13Scales [E, 2I, H/block]  -> vcollWeightW13, M = 2I, K = H
 *   w2  [E, H, I/2],  w2Scales  [E, H, I/block]   -> vcollWeightW2,  M = H,  K = I
 * Outputs have the same shapes, except the scales: each expert takes
 * vcollWeightScaleBytes(format, M, K, scaleLayout) bytes. */
typedef struct {
  vcollWeightFormat_t format;
  vcollScaleLayout_t scaleLayout; /* of the output scales */
  int tile;                       /* 128 or 64 */
  int numExperts;                 /* >= 0 */
  size_t hidden;
  size_t intermediate;
  const void* w13;
  const void* w13Scales;
  const void* w2;
  const void* w2Scales;
  void* w13Out;
  void* w13ScalesOut;
  void* w2Out;
  void* w2ScalesOut;
} vcollWeightLayer_t;

/* Prepares a layer's w13 and w2 on the GPU with the cached permutations
 * (vcollWeightApply twice). Device pointers, ordered on `stream`. */
VCOLL_API vcollResult_t vcollWeightPrepareLayer(const vcollWeightLayer_t* layer, cudaStream_t stream);
/* CPU version (host pointers), also through the cache. */
VCOLL_API vcollResult_t vcollWeightPrepareLayerRef(const vcollWeightLayer_t* layer);

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_WEIGHT_LAYOUT_H_ */
