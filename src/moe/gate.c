/* Routing gate: argument checks and the CPU reference, written from the
 * rules in vcoll/gate.h and docs/gate.md. The kernel (gate.cu) matches it
 * bit for bit. */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
/* gnu11 lets GCC fuse a*b+c into an FMA on targets that have one (aarch64,
 * x86 with -mfma); the reference must round exactly where the kernel does. */
#pragma GCC optimize("fp-contract=off")
#endif

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "gate_common.h"
#include "vcoll_hostfloat.h"
#include "vcoll_internal.h"

enum { kGateMaxFusedShared = 1024 }; /* shared experts fused into one call (ids E .. E+1023) */

vcollResult_t vcollMoeGateCheckArgs(const char* op, const void* logits, vcollDataType_t logitsType,
                                    const float* bias, size_t T, const vcollMoeGateParams_t* p,
                                    const int32_t* ids, const float* weights) {
  if (p == NULL) return VCOLL_ARGERR(NULL, op, "params argument is NULL");
  const int E = p->numExperts, G = p->numExpertGroup;
  if (E < 2 || E > VCOLL_MOE_GATE_MAX_EXPERTS)
    return VCOLL_ARGERR(NULL, op, "invalid params->numExperts %d (must be in 2..%d)", E,
                        VCOLL_MOE_GATE_MAX_EXPERTS);
  if (G < 1 || E % G != 0)
    return VCOLL_ARGERR(NULL, op, "invalid params->numExpertGroup %d (must be >= 1 and divide numExperts %d)",
                        G, E);
  if (E / G < 2)
    return VCOLL_ARGERR(NULL, op,
                        "invalid params->numExpertGroup %d: groups of %d expert(s), the group score needs >= 2",
                        G, E / G);
  if (p->topkGroup < 1 || p->topkGroup > G)
    return VCOLL_ARGERR(NULL, op, "invalid params->topkGroup %d (must be in 1..numExpertGroup = %d)",
                        p->topkGroup, G);
  const int candidates = p->topkGroup * (E / G);
  if (p->topk < 1 || p->topk > candidates)
    return VCOLL_ARGERR(NULL, op, "invalid params->topk %d (must be in 1..%d, the experts in %d kept group(s))",
                        p->topk, candidates, p->topkGroup);
  /* Bounded far below INT32_MAX - E (ids past INT32_MAX) so that the
   * kernels' int loops over K = topk + numFusedSharedExperts stay exact. */
  if (p->numFusedSharedExperts < 0 || p->numFusedSharedExperts > kGateMaxFusedShared)
    return VCOLL_ARGERR(NULL, op, "invalid params->numFusedSharedExperts %d (must be in 0..%d)",
                        p->numFusedSharedExperts, kGateMaxFusedShared);
  if (p->renormalize != 0 && p->renormalize != 1)
    return VCOLL_ARGERR(NULL, op, "invalid params->renormalize %d (must be 0 or 1)", p->renormalize);
  if (p->applyScalingInKernel != 0 && p->applyScalingInKernel != 1)
    return VCOLL_ARGERR(NULL, op, "invalid params->applyScalingInKernel %d (must be 0 or 1)",
                        p->applyScalingInKernel);
  if (!isfinite(p->routedScalingFactor) || !(p->routedScalingFactor > 0.0f))
    return VCOLL_ARGERR(NULL, op, "invalid params->routedScalingFactor %g (must be finite and > 0)",
                        (double)p->routedScalingFactor);
  if (logitsType != vcollFloat32 && logitsType != vcollBfloat16)
    return VCOLL_ARGERR(NULL, op, "invalid logitsType %d (must be vcollFloat32 or vcollBfloat16)",
                        (int)logitsType);

  const size_t esize = vcollTypeSize(logitsType);
  const size_t K = (size_t)p->topk + (size_t)p->numFusedSharedExperts;
  size_t inElems, inBytes, outElems, outBytes;
  if (!vcollMulOk(T, (size_t)E, &inElems) || !vcollMulOk(inElems, esize, &inBytes))
    return VCOLL_ARGERR(NULL, op, "T = %zu tokens of %d experts overflow the logits size", T, E);
  if (!vcollMulOk(T, K, &outElems) || !vcollMulOk(outElems, 4, &outBytes))
    return VCOLL_ARGERR(NULL, op, "T = %zu tokens of %zu slots overflow the output size", T, K);
  if (bias != NULL && ((uintptr_t)bias % 4) != 0)
    return VCOLL_ARGERR(NULL, op, "bias %p is not 4-byte aligned", (const void*)bias);
  if (T == 0) return vcollSuccess;
  if (logits == NULL) return VCOLL_ARGERR(NULL, op, "logits argument is NULL");
  if (ids == NULL) return VCOLL_ARGERR(NULL, op, "ids argument is NULL");
  if (weights == NULL) return VCOLL_ARGERR(NULL, op, "weights argument is NULL");
  if ((uintptr_t)logits % esize != 0)
    return VCOLL_ARGERR(NULL, op, "logits %p is not aligned to its %zu-byte elements", logits, esize);
  if ((uintptr_t)ids % 4 != 0) return VCOLL_ARGERR(NULL, op, "ids %p is not 4-byte aligned", (const void*)ids);
  if ((uintptr_t)weights % 4 != 0)
    return VCOLL_ARGERR(NULL, op, "weights %p is not 4-byte aligned", (const void*)weights);
  const size_t biasBytes = bias ? (size_t)E * 4 : 0;
  if (vcollOverlaps(ids, outBytes, weights, outBytes))
    return VCOLL_ARGERR(NULL, op, "ids %p and weights %p overlap", (const void*)ids, (const void*)weights);
  if (vcollOverlaps(ids, outBytes, logits, inBytes) || vcollOverlaps(weights, outBytes, logits, inBytes))
    return VCOLL_ARGERR(NULL, op, "ids or weights overlap logits %p", logits);
  if (vcollOverlaps(ids, outBytes, bias, biasBytes) || vcollOverlaps(weights, outBytes, bias, biasBytes))
    return VCOLL_ARGERR(NULL, op, "ids or weights overlap bias %p", (const void*)bias);
  return vcollSuccess;
}

/* One token. key and s are scratch of E entries. */
static void gateRow(const void* logits, vcollDataType_t type, const float* bias, const vcollMoeGateParams_t* p,
                    size_t t, uint32_t* key, float* s, int32_t* ids, float* weights) {
  const int E = p->numExperts, G = p->numExpertGroup, gs = E / G;
  const size_t row = t * (size_t)E;
  for (int e = 0; e < E; e++) {
    float x = type == vcollFloat32 ? ((const float*)logits)[row + e]
                                   : vcollBf16ToF32(((const uint16_t*)logits)[row + e]);
    s[e] = vgSigmoid(x);
    key[e] = vgKey(VG_ADD(s[e], bias ? bias[e] : 0.0f));
  }

  /* Group scores, then keep the topkGroup best: a group's rank is the
   * number of groups that beat it (higher score, or equal and lower index). */
  uint32_t gkey[VCOLL_MOE_GATE_MAX_EXPERTS / 2];
  for (int g = 0; g < G; g++) {
    uint32_t a1 = 0, a2 = 0;
    for (int i = g * gs; i < (g + 1) * gs; i++) {
      if (key[i] > a1) { a2 = a1; a1 = key[i]; }
      else if (key[i] > a2) a2 = key[i];
    }
    gkey[g] = vgGroupKey(a1, a2);
  }
  for (int g = 0; g < G; g++) {
    int rank = 0;
    for (int o = 0; o < G; o++) rank += gkey[o] > gkey[g] || (gkey[o] == gkey[g] && o < g);
    if (rank >= p->topkGroup)
      for (int i = g * gs; i < (g + 1) * gs; i++) key[i] = 0; /* no longer a candidate */
  }

  /* topk rounds of argmax; strict > over ascending e keeps the lower index on ties. */
  const size_t K = (size_t)p->topk + (size_t)p->numFusedSharedExperts;
  int32_t* idRow = ids + t * K;
  float* wRow = weights + t * K;
  float sum = 0.0f;
  for (int r = 0; r < p->topk; r++) {
    int best = -1;
    uint32_t bk = 0;
    for (int e = 0; e < E; e++)
      if (key[e] > bk) { bk = key[e]; best = e; }
    key[best] = 0; /* validation guarantees topk candidates, so best >= 0 */
    idRow[r] = best;
    wRow[r] = s[best];
    sum = VG_ADD(sum, s[best]);
  }
  for (int r = 0; r < p->topk; r++) {
    float w = wRow[r];
    if (p->renormalize) w = w / sum;
    if (p->applyScalingInKernel) w = VG_MUL(w, p->routedScalingFactor);
    wRow[r] = w;
  }
  const float sharedW = p->applyScalingInKernel ? 1.0f : 1.0f / p->routedScalingFactor;
  for (int j = 0; j < p->numFusedSharedExperts; j++) {
    idRow[p->topk + j] = E + j;
    wRow[p->topk + j] = sharedW;
  }
}

vcollResult_t vcollMoeGateRef(const void* logits, vcollDataType_t logitsType, const float* bias, size_t T,
                              const vcollMoeGateParams_t* params, int32_t* ids, float* weights) {
  VCOLL_CHECK_RES(vcollMoeGateCheckArgs("vcollMoeGateRef", logits, logitsType, bias, T, params, ids, weights));
  uint32_t key[VCOLL_MOE_GATE_MAX_EXPERTS];
  float s[VCOLL_MOE_GATE_MAX_EXPERTS];
  for (size_t t = 0; t < T; t++) gateRow(logits, logitsType, bias, params, t, key, s, ids, weights);
  return vcollSuccess;
}
