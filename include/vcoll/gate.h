/*
 * MoE routing gate (vcoll/gate.h): DeepSeek-V3-style biased grouped top-k
 * with fused shared experts. See docs/gate.md for the exact recipe.
 *
 * For each token t (row t of logits [T, E]):
 *   s[e]   = sigmoid(logit[t, e])                  (the fp32 recipe in docs/gate.md)
 *   b[e]   = s[e] + bias[e]                        (bias NULL: b = s + 0)
 *   group g (experts g*E/G .. (g+1)*E/G - 1) scores the sum of its two largest b;
 *   the topkGroup best groups are kept (equal scores: lower group index first);
 *   the topk largest b among experts of kept groups are chosen, in descending
 *   order of b (equal b: lower expert index first);
 *   weight of a chosen expert = s (not b); with renormalize, divided by the
 *   sum of the chosen s; with applyScalingInKernel, then multiplied by
 *   routedScalingFactor.
 *   numFusedSharedExperts slots follow, ids E, E+1, ..., weight
 *   1/routedScalingFactor (1 with applyScalingInKernel).
 * Outputs ids [T, K] int32 and weights [T, K] fp32, K = topk + numFusedSharedExperts.
 *
 * vcollMoeGate takes device pointers and is ordered on `stream` (no host
 * synchronization); vcollMoeGateRef is the CPU reference on host pointers.
 * Both produce bit-identical results (same fp32 operations on both sides).
 */
#ifndef VCOLL_GATE_H_
#define VCOLL_GATE_H_

#include "vcoll.h"

#ifdef __cplusplus
extern "C" {
#endif

#define VCOLL_MOE_GATE_MAX_EXPERTS 512

typedef struct {
  int numExperts;              /* E: 2 .. VCOLL_MOE_GATE_MAX_EXPERTS */
  int numExpertGroup;          /* G >= 1, divides E, E/G >= 2 */
  int topkGroup;               /* 1 .. G */
  int topk;                    /* routed experts per token: 1 .. topkGroup * E/G */
  int numFusedSharedExperts;   /* 0..1024 extra slots per token */
  int renormalize;             /* 0 or 1 */
  int applyScalingInKernel;    /* 0 or 1 */
  float routedScalingFactor;   /* finite, > 0 */
} vcollMoeGateParams_t;

/* Routes T tokens. logits [T, E] of logitsType (vcollFloat32 or
 * vcollBfloat16), bias [E] fp32 or NULL, ids and weights [T, K] (K = topk +
 * numFusedSharedExperts), all device pointers, rows contiguous. Outputs
 * must not overlap each other or the inputs. T == 0 is a no-op. */
VCOLL_API vcollResult_t vcollMoeGate(const void* logits, vcollDataType_t logitsType, const float* bias,
                                     size_t T, const vcollMoeGateParams_t* params, int32_t* ids,
                                     float* weights, cudaStream_t stream);

/* CPU reference: same arguments on host pointers. */
VCOLL_API vcollResult_t vcollMoeGateRef(const void* logits, vcollDataType_t logitsType, const float* bias,
                                        size_t T, const vcollMoeGateParams_t* params, int32_t* ids,
                                        float* weights);

#ifdef __cplusplus
}
#endif

#endif /* VCOLL_GATE_H_ */
