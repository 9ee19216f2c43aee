/*
 * MoE dispatch and combine (vcoll/moe.h): what data-parallel MoE runtimes
 * call around their expert layer. See docs/moe.md.
 *
 * Each rank r holds counts[r] tokens (any of them may be 0) of hidden size H
 * in bf16, with their routing: top-k expert ids and weights, or the router
 * logits. N = sum(counts) is the number of tokens of all ranks; rank r's
 * tokens are rows displ[r] .. displ[r] + counts[r] - 1 of every gathered
 * tensor, displ[r] = counts[0] + ... + counts[r-1].
 *
 *   dispatch: (NVFP4 only) quantize the local hidden states, then one
 *     vcollAllGatherV of the list (hidden or payload, scales, routing) so
 *     every rank holds all N tokens.
 *   combine: one vcollReduceScatterV of [N, H] bf16 partial expert outputs:
 *     every rank receives the sum over ranks of its own counts[rank] rows.
 *
 * Pointers are device pointers ordered on `stream` on the NCCL backend and
 * host pointers on the host backend (stream ignored); see
 * vcollCommBackend. Calls are collective: every rank passes the same counts
 * and a workspace made with the same config and maxTokens.
 */
#ifndef VCOLL_MOE_H_
#define VCOLL_MOE_H_

#include "vcoll.h"
#include "vcoll/nvfp4.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
  vcollMoeFp4 = 0, /* NVFP4 payload [N, H/2] bytes + e4m3 scales [N, H/16] + one fp32 global scale */
  vcollMoeBf16 = 1 /* hidden states [N, H] bf16, no quantization */
} vcollMoeFormat_t;

typedef enum {
  vcollMoeRoutingTopk = 0,  /* ids [n, topk] int32 and weights [n, topk] fp32 travel with the tokens */
  vcollMoeRoutingLogits = 1 /* router logits [n, numExperts] fp32 travel with the tokens */
} vcollMoeRouting_t;

typedef enum {
  vcollMoeScaleGiven = 0,   /* the caller's global scale (static calibration, same value on every rank) */
  vcollMoeScaleComputed = 1 /* 2688 / amax over the finite values of all ranks' tokens (one extra tiny gather) */
} vcollMoeScale_t;

typedef enum {
  vcollMoeAccumBf16 = 0, /* reduce-scatter in bf16 (each reduction step rounds to bf16) */
  vcollMoeAccumFp32 = 1  /* widen to fp32, reduce-scatter in fp32, round once to bf16 (2x the bytes) */
} vcollMoeAccum_t;

typedef struct {
  size_t hidden;                /* H: >= 1; a multiple of 16 for vcollMoeFp4 */
  vcollMoeFormat_t format;
  vcollMoeRouting_t routing;
  int topk;                     /* vcollMoeRoutingTopk: width of ids and weights, >= 1 */
  int numExperts;               /* vcollMoeRoutingLogits: width of logits, >= 1 */
  vcollMoeScale_t scale;        /* vcollMoeFp4 only */
  int swizzledScales;           /* vcollMoeFp4: also write the gathered scales in vcollScaleSwizzled128x4 */
  vcollMoeAccum_t accum;        /* combine */
  int allocBuffers;             /* 1: the workspace also holds a vcollMoeBuffers_t set for maxTokens */
} vcollMoeConfig_t;

/* This rank's tokens (n = counts[rank] rows each). */
typedef struct {
  const void* hidden;        /* [n, H] bf16 */
  const int32_t* topkIds;    /* [n, topk]       (vcollMoeRoutingTopk) */
  const float* topkWeights;  /* [n, topk]       (vcollMoeRoutingTopk) */
  const float* logits;       /* [n, numExperts] (vcollMoeRoutingLogits) */
  const float* globalScale;  /* one float       (vcollMoeFp4 with vcollMoeScaleGiven) */
} vcollMoeLocal_t;

/* All ranks' tokens after dispatch, N rows each, in rank order. */
typedef struct {
  void* hidden;              /* vcollMoeFp4: payload [N, H/2] bytes; vcollMoeBf16: [N, H] bf16 */
  void* scales;              /* vcollMoeFp4: e4m3 scales, vcollScaleLinear [N, H/16] */
  void* scalesSwizzled;      /* vcollMoeFp4 with swizzledScales: vcollNvfp4ScaleBytes(N, H, vcollScaleSwizzled128x4) bytes */
  float* globalScale;        /* vcollMoeFp4: the scale of every gathered token (one float, written by dispatch) */
  int32_t* topkIds;          /* [N, topk]       (vcollMoeRoutingTopk) */
  float* topkWeights;        /* [N, topk]       (vcollMoeRoutingTopk) */
  float* logits;             /* [N, numExperts] (vcollMoeRoutingLogits) */
} vcollMoeTokens_t;

/* The buffers a workspace made with allocBuffers holds, sized for maxTokens. */
typedef struct {
  vcollMoeTokens_t tokens;   /* dispatch output */
  void* partials;            /* combine input: [N, H] bf16, this rank's experts' outputs */
  void* combined;            /* combine output: [counts[rank], H] bf16 */
} vcollMoeBuffers_t;

typedef struct vcollMoeWorkspace* vcollMoeWorkspace_t;

/* Called alike on every rank of `comm` (it communicates nothing: a rank's
 * different config or maxTokens shows at the first dispatch or combine, as
 * vcollArgumentMismatch in checked mode): the same config and maxTokens
 * (the largest N = sum(counts) any later call may use). Allocates, once,
 * all the intermediate buffers dispatch and combine need (and, with
 * allocBuffers, a vcollMoeBuffers_t set): on the device for the NCCL
 * backend (current device), on the host for the host backend. Later calls
 * allocate nothing of their own, so they can be captured in a CUDA graph
 * (the core collectives inside grow their staging buffers at the first
 * call with a new maximum size: warm up at the largest counts first;
 * docs/moe.md). The workspace
 * keeps `comm`, which must outlive it. */
VCOLL_API vcollResult_t vcollMoeWorkspaceCreate(vcollComm_t comm, const vcollMoeConfig_t* config, size_t maxTokens,
                                                vcollMoeWorkspace_t* ws);
/* Successive calls on one workspace must be stream-ordered (one stream, or
 * an event between streams): its scratch is not guarded. Batches meant to
 * overlap need a workspace and a communicator each (the collectives'
 * staging is per communicator; docs/api.md, CUDA graphs). */
/* Frees the workspace (waits for the device). NULL is a no-op. */
VCOLL_API vcollResult_t vcollMoeWorkspaceDestroy(vcollMoeWorkspace_t ws);
/* The workspace's buffer set (allocBuffers == 1); vcollInvalidUsage otherwise. */
VCOLL_API vcollResult_t vcollMoeWorkspaceBuffers(vcollMoeWorkspace_t ws, vcollMoeBuffers_t* buffers);

/* Dispatch: every rank receives all N tokens in `out`, gathered in one
 * vcollAllGatherV (list: hidden or payload, [scales,] ids and weights or
 * logits). vcollMoeFp4 first quantizes the local tokens with vcollNvfp4Quantize
 * (vcollNvfp4QuantizeRef on the host backend) straight into this rank's rows
 * of out->hidden and out->scales, and writes the scale to *out->globalScale:
 *   vcollMoeScaleGiven: *in->globalScale (copied unless it is out->globalScale);
 *   vcollMoeScaleComputed: fminf(2688 / amax, FLT_MAX), amax the largest |x|
 *     over the finite values of all ranks' tokens (1.0 if none is non-zero):
 *     the scale vcollNvfp4Quantize would compute on the gathered [N, H]
 *     tensor. Costs one read of the local tokens and one gather of one value
 *     per rank before the quantization.
 * With swizzledScales, out->scalesSwizzled then receives the gathered scales
 * in the 128x4 layout (vcollNvfp4ConvertScales). The gathered payload and
 * scales equal vcollNvfp4QuantizeRef of the concatenated tokens with that
 * scale, bit for bit. N == 0 writes nothing. */
VCOLL_API vcollResult_t vcollMoeDispatch(vcollMoeWorkspace_t ws, const size_t* counts, const vcollMoeLocal_t* in,
                                         const vcollMoeTokens_t* out, cudaStream_t stream);

/* Combine: partials [N, H] bf16 on every rank; `out` [counts[rank], H] bf16
 * receives the sum over ranks of rows displ[rank] .. displ[rank] +
 * counts[rank] - 1. In place when out == partials + displ[rank] * H
 * elements. Accumulation as config->accum: vcollMoeAccumFp32 widens the
 * partials into the workspace's fp32 buffer, reduce-scatters fp32 and
 * rounds the result once to bf16. */
VCOLL_API vcollResult_t vcollMoeCombine(vcollMoeWorkspace_t ws, const size_t* counts, const void* partials,
                                        void* out, cudaStream_t stream);

/* vcollGatherCounts (vcoll.h) under the MoE module's name: every rank's
 * localCount into counts[nranks] (host array). Blocking: not for use
 * during CUDA graph capture (vcollInvalidUsage). */
VCOLL_API vcollResult_t vcollMoeGatherCounts(vcollComm_t comm, size_t localCount, size_t* counts,
                                             cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_MOE_H_ */
