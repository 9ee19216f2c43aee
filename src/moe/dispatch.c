/* MoE dispatch (NVFP4 quantize or bf16, then one allgatherv of the token
 * list) and combine (reducescatterv of the partial expert outputs, in bf16
 * or fp32), on either backend: the NCCL backend runs the kernels of
 * dispatch.cu and vcollNvfp4*, the host backend the same steps in C with
 * the NVFP4 CPU reference. See docs/moe.md. */
#include <limits.h>
#include <stdint.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../coll/coll.h"
#include "../quant/nvfp4_internal.h"
#include "../quant/nvfp4_ref.h"
#include "dispatch.h"
#include "vcoll/moe.h"
#include "vcoll_hostfloat.h"
#include "vcoll_internal.h"

#define MOE_ALIGN 256 /* offset of each buffer in the workspace allocation */

struct vcollMoeWorkspace {
  vcollComm_t comm;
  vcollMoeConfig_t cfg;
  size_t maxTokens;
  int onDevice;
  void* mem;           /* the one allocation (device or host) */
  uint32_t* amaxLocal; /* computed scale: this rank's amax bits, then all ranks' */
  uint32_t* amaxAll;
  uint32_t* amaxAcc;   /* device: the amax kernel's two words of scratch, 0 between calls */
  float* f32;          /* fp32 combine: [maxTokens, H] */
  size_t* ones;        /* host: nranks counts of 1 (the amax gather) */
  int hasBuffers;
  vcollMoeBuffers_t bufs;
};

static size_t alignUp(size_t x) { return (x + MOE_ALIGN - 1) / MOE_ALIGN * MOE_ALIGN; }

/* Row bytes of the gathered hidden states. */
static size_t hiddenRowBytes(const vcollMoeConfig_t* c) { return c->format == vcollMoeFp4 ? c->hidden / 2 : c->hidden * 2; }
static size_t routingWidth(const vcollMoeConfig_t* c) {
  return c->routing == vcollMoeRoutingTopk ? (size_t)c->topk : (size_t)c->numExperts;
}

static vcollResult_t checkConfig(vcollComm_t comm, const char* op, const vcollMoeConfig_t* c) {
  if (c == NULL) return VCOLL_ARGERR(comm, op, "config argument is NULL");
  if (c->format != vcollMoeFp4 && c->format != vcollMoeBf16)
    return VCOLL_ARGERR(comm, op, "invalid config->format %d (must be vcollMoeFp4 or vcollMoeBf16)", (int)c->format);
  if (c->hidden == 0 || (c->format == vcollMoeFp4 && c->hidden % 16 != 0))
    return VCOLL_ARGERR(comm, op, "invalid config->hidden %zu (must be %s)", c->hidden,
                        c->format == vcollMoeFp4 ? "a positive multiple of 16 for vcollMoeFp4" : ">= 1");
  if (c->routing == vcollMoeRoutingTopk) {
    if (c->topk < 1) return VCOLL_ARGERR(comm, op, "invalid config->topk %d (must be >= 1)", c->topk);
  } else if (c->routing == vcollMoeRoutingLogits) {
    if (c->numExperts < 1)
      return VCOLL_ARGERR(comm, op, "invalid config->numExperts %d (must be >= 1)", c->numExperts);
  } else {
    return VCOLL_ARGERR(comm, op, "invalid config->routing %d (must be vcollMoeRoutingTopk or vcollMoeRoutingLogits)",
                        (int)c->routing);
  }
  if (c->format == vcollMoeFp4 && c->scale != vcollMoeScaleGiven && c->scale != vcollMoeScaleComputed)
    return VCOLL_ARGERR(comm, op, "invalid config->scale %d (must be vcollMoeScaleGiven or vcollMoeScaleComputed)",
                        (int)c->scale);
  if (c->swizzledScales != 0 && c->swizzledScales != 1)
    return VCOLL_ARGERR(comm, op, "invalid config->swizzledScales %d (must be 0 or 1)", c->swizzledScales);
  if (c->swizzledScales && c->format != vcollMoeFp4)
    return VCOLL_ARGERR(comm, op, "config->swizzledScales needs config->format vcollMoeFp4");
  if (c->accum != vcollMoeAccumBf16 && c->accum != vcollMoeAccumFp32)
    return VCOLL_ARGERR(comm, op, "invalid config->accum %d (must be vcollMoeAccumBf16 or vcollMoeAccumFp32)",
                        (int)c->accum);
  if (c->allocBuffers != 0 && c->allocBuffers != 1)
    return VCOLL_ARGERR(comm, op, "invalid config->allocBuffers %d (must be 0 or 1)", c->allocBuffers);
  return vcollSuccess;
}

static vcollResult_t combine32Mode(vcollMoeWorkspace_t ws, const char* op, int* p2p);

/* ---------------------------------------------------------------------- */
/* Workspace                                                                */

/* Byte offsets of everything in the allocation; returns 0 on overflow. */
struct layout {
  size_t amax, f32, hidden, scales, swz, gs, ids, weights, logits, partials, combined, total;
};

static int addRegion(size_t* cursor, size_t bytes, size_t* off) {
  size_t end;
  *off = *cursor;
  if (bytes == 0) return 1;
  if (!vcollAddOk(*cursor, bytes, &end) || end > SIZE_MAX - MOE_ALIGN) return 0;
  *cursor = alignUp(end);
  return 1;
}

/* The intermediates, then the buffer set; the set's sizes are checked for
 * overflow even when it is not allocated (dispatch and combine rely on it). */
static int makeLayout(const vcollMoeConfig_t* c, size_t maxTokens, int nranks, struct layout* L) {
  const size_t H = c->hidden, rw = routingWidth(c);
  size_t cur = 0, b, hb, pb;
  memset(L, 0, sizeof(*L));
  int ok = vcollMulOk(maxTokens, H, &hb) && vcollMulOk(hb, 2, &pb); /* hb elements, pb bf16 bytes */
  ok = ok && addRegion(&cur, sizeof(uint32_t) * ((size_t)nranks + 3), &L->amax);
  if (c->accum == vcollMoeAccumFp32) ok = ok && vcollMulOk(hb, 4, &b) && addRegion(&cur, b, &L->f32);
  const size_t intermediates = cur;
  ok = ok && vcollMulOk(maxTokens, hiddenRowBytes(c), &b) && addRegion(&cur, b, &L->hidden);
  if (c->format == vcollMoeFp4) {
    ok = ok && vcollMulOk(maxTokens, H / 16, &b) && addRegion(&cur, b, &L->scales);
    ok = ok && addRegion(&cur, sizeof(float), &L->gs);
    if (c->swizzledScales) {
      b = vcollNvfp4ScaleBytes(maxTokens, H, vcollScaleSwizzled128x4);
      ok = ok && b != 0 && addRegion(&cur, b, &L->swz);
    }
  }
  ok = ok && vcollMulOk(maxTokens, rw * 4, &b);
  if (c->routing == vcollMoeRoutingTopk) ok = ok && addRegion(&cur, b, &L->ids) && addRegion(&cur, b, &L->weights);
  else ok = ok && addRegion(&cur, b, &L->logits);
  ok = ok && addRegion(&cur, pb, &L->partials) && addRegion(&cur, pb, &L->combined);
  L->total = c->allocBuffers ? cur : intermediates;
  return ok;
}

VCOLL_API vcollResult_t vcollMoeWorkspaceCreate(vcollComm_t comm, const vcollMoeConfig_t* config, size_t maxTokens,
                                                vcollMoeWorkspace_t* ws) {
  static const char* op = "vcollMoeWorkspaceCreate";
  VCOLL_CHECK_RES(vcollCheckComm(comm, op));
  if (ws == NULL) return VCOLL_ARGERR(comm, op, "ws argument is NULL");
  VCOLL_CHECK_RES(checkConfig(comm, op, config));
  if (maxTokens == 0) return VCOLL_ARGERR(comm, op, "maxTokens is 0 (must be >= 1)");
  struct layout L;
  if (!makeLayout(config, maxTokens, comm->nranks, &L))
    return VCOLL_ARGERR(comm, op, "maxTokens %zu x hidden %zu overflows the workspace size", maxTokens,
                        config->hidden);
  /* MPI counts are ints: refuse here what the host backend's collectives
   * would refuse only after dispatch has quantized into its outputs. */
  if (comm->backend == vcollBackendHost &&
      (maxTokens > INT_MAX || config->hidden > INT_MAX / 4 || routingWidth(config) > INT_MAX / 4))
    return vcollSetError(comm, vcollNotSupported,
                         "%s : the host backend moves at most %d tokens and rows of at most %d bytes (MPI counts); "
                         "here maxTokens %zu, hidden %zu (up to 4 bytes per element), %s %zu (4 bytes each)",
                         op, INT_MAX, INT_MAX, maxTokens, config->hidden,
                         config->routing == vcollMoeRoutingTopk ? "topk" : "numExperts", routingWidth(config));

  vcollResult_t res = vcollSuccess;
  struct vcollMoeWorkspace* w = calloc(1, sizeof(*w));
  if (w == NULL) return vcollSetError(comm, vcollSystemError, "%s : out of host memory", op);
  w->ones = malloc(sizeof(size_t) * (size_t)comm->nranks);
  if (w->ones == NULL) {
    res = vcollSetError(comm, vcollSystemError, "%s : out of host memory", op);
    goto fail;
  }
  for (int r = 0; r < comm->nranks; r++) w->ones[r] = 1;
  w->comm = comm;
  w->cfg = *config;
  w->maxTokens = maxTokens;
  w->onDevice = comm->backend == vcollBackendNccl;
  if (config->accum == vcollMoeAccumFp32) { /* an unreadable VCOLL_MOE_COMBINE32 fails here already */
    int p2p;
    if ((res = combine32Mode(w, op, &p2p)) != vcollSuccess) goto fail;
  }
  if (w->onDevice) {
    cudaError_t err = cudaMalloc(&w->mem, L.total);
    /* Defined padding and the amax scratch's zeros, before any stream uses
     * them (cudaMemset may return before it is done). Once. */
    if (err == cudaSuccess) err = cudaMemset(w->mem, 0, L.total);
    if (err == cudaSuccess && (err = cudaStreamSynchronize(0)) != cudaSuccess) {
      res = vcollSetError(comm, vcollUnhandledCudaError, "%s : zeroing the workspace failed: %s", op,
                          cudaGetErrorString(err));
      goto fail;
    }
    if (err != cudaSuccess) {
      res = vcollSetError(comm, vcollUnhandledCudaError, "%s : cannot allocate %zu bytes of device memory: %s", op,
                          L.total, cudaGetErrorString(err));
      goto fail;
    }
  } else {
    if (posix_memalign(&w->mem, MOE_ALIGN, L.total) != 0) {
      w->mem = NULL;
      res = vcollSetError(comm, vcollSystemError, "%s : cannot allocate %zu bytes of host memory", op, L.total);
      goto fail;
    }
    memset(w->mem, 0, L.total);
  }
  char* base = w->mem;
  w->amaxLocal = (uint32_t*)(base + L.amax);
  w->amaxAll = w->amaxLocal + 1;
  w->amaxAcc = w->amaxAll + comm->nranks;
  w->f32 = config->accum == vcollMoeAccumFp32 ? (float*)(base + L.f32) : NULL;
  if (config->allocBuffers) {
    int fp4 = config->format == vcollMoeFp4, topk = config->routing == vcollMoeRoutingTopk;
    w->hasBuffers = 1;
    w->bufs.tokens.hidden = base + L.hidden;
    w->bufs.tokens.scales = fp4 ? base + L.scales : NULL;
    w->bufs.tokens.globalScale = fp4 ? (float*)(base + L.gs) : NULL;
    w->bufs.tokens.scalesSwizzled = fp4 && config->swizzledScales ? base + L.swz : NULL;
    w->bufs.tokens.topkIds = topk ? (int32_t*)(base + L.ids) : NULL;
    w->bufs.tokens.topkWeights = topk ? (float*)(base + L.weights) : NULL;
    w->bufs.tokens.logits = topk ? NULL : (float*)(base + L.logits);
    w->bufs.partials = base + L.partials;
    w->bufs.combined = base + L.combined;
  }
  VCOLL_INFO("%s: %s, H %zu, maxTokens %zu, %zu bytes on the %s", op, config->format == vcollMoeFp4 ? "fp4" : "bf16",
             config->hidden, maxTokens, L.total, w->onDevice ? "device" : "host");
  *ws = w;
  return vcollSuccess;
fail:
  if (w->mem && w->onDevice) cudaFree(w->mem);
  free(w->ones);
  free(w);
  return res;
}

VCOLL_API vcollResult_t vcollMoeWorkspaceDestroy(vcollMoeWorkspace_t ws) {
  if (ws == NULL) return vcollSuccess;
  vcollResult_t res = vcollSuccess;
  if (ws->onDevice) {
    cudaError_t err = cudaFree(ws->mem);
    if (err != cudaSuccess)
      res = vcollSetError(ws->comm, vcollUnhandledCudaError, "vcollMoeWorkspaceDestroy : cudaFree failed: %s",
                          cudaGetErrorString(err));
  } else {
    free(ws->mem);
  }
  free(ws->ones);
  free(ws);
  return res;
}

VCOLL_API vcollResult_t vcollMoeWorkspaceBuffers(vcollMoeWorkspace_t ws, vcollMoeBuffers_t* buffers) {
  static const char* op = "vcollMoeWorkspaceBuffers";
  if (ws == NULL) return VCOLL_ARGERR(NULL, op, "ws argument is NULL");
  if (buffers == NULL) return VCOLL_ARGERR(ws->comm, op, "buffers argument is NULL");
  if (!ws->hasBuffers)
    return vcollSetError(ws->comm, vcollInvalidUsage, "%s : the workspace was created with config->allocBuffers 0", op);
  *buffers = ws->bufs;
  return vcollSuccess;
}

/* ---------------------------------------------------------------------- */
/* Argument checks shared by dispatch and combine                           */

/* Validates ws and counts; sets *total, *mine and *displ. */
static vcollResult_t checkCounts(const char* op, vcollMoeWorkspace_t ws, const size_t* counts, size_t* total,
                                 size_t* mine, size_t* displ) {
  if (ws == NULL) return VCOLL_ARGERR(NULL, op, "ws argument is NULL");
  vcollComm_t comm = ws->comm;
  if (counts == NULL) return VCOLL_ARGERR(comm, op, "counts argument is NULL");
  size_t sum = 0;
  for (int r = 0; r < comm->nranks; r++) {
    if (r == comm->rank) *displ = sum;
    if (counts[r] > (size_t)PTRDIFF_MAX)
      return VCOLL_ARGERR(comm, op, "counts[%d] = %zu is above PTRDIFF_MAX (a negative count cast to size_t?)", r,
                          counts[r]);
    if (!vcollAddOk(sum, counts[r], &sum))
      return VCOLL_ARGERR(comm, op, "counts[%d] = %zu makes the token total overflow", r, counts[r]);
  }
  if (sum > ws->maxTokens)
    return VCOLL_ARGERR(comm, op, "counts sum to %zu tokens, more than the workspace's maxTokens %zu", sum,
                        ws->maxTokens);
  *total = sum;
  *mine = counts[comm->rank];
  return vcollSuccess;
}

static vcollResult_t checkPtr(vcollComm_t comm, const char* op, const char* name, const void* p, size_t rows,
                              const char* whose, size_t align) {
  if (rows == 0) return vcollSuccess;
  if (p == NULL) return VCOLL_ARGERR(comm, op, "%s is NULL but %s %zu tokens", name, whose, rows);
  if ((uintptr_t)p % align != 0)
    return VCOLL_ARGERR(comm, op, "%s %p is not aligned to %zu bytes", name, p, align);
  return vcollSuccess;
}

/* Checked mode: all ranks agree on the sizes and on every rank's local
 * checks before anything is communicated (skipped under graph capture). */
static vcollResult_t agree(vcollMoeWorkspace_t ws, const char* op, const size_t* counts, vcollResult_t localRes,
                           uint64_t mode, cudaStream_t stream) {
  vcollComm_t comm = ws->comm;
  if (!comm->checked || vcollStreamCapturing(comm, stream)) return localRes;
  const vcollMoeConfig_t* c = &ws->cfg;
  /* Config fields, not the struct: its padding is undefined. */
  const uint64_t shape[8] = {c->hidden, (uint64_t)c->format, (uint64_t)c->routing, routingWidth(c),
                             (uint64_t)c->scale, (uint64_t)c->swizzledScales, (uint64_t)c->accum, ws->maxTokens};
  const struct vcollAgreeField f[3] = {
      {"counts", localRes == vcollSuccess ? vcollHashBytes(0, counts, sizeof(size_t) * (size_t)comm->nranks) : 0, 0},
      {"workspace configs or maxTokens", vcollHashBytes(0, shape, sizeof(shape)), 0},
      {"VCOLL_MOE_COMBINE32 values", vcollHashBytes(0, &mode, sizeof(mode)), 0}};
  return vcollCheckAgreement(comm, op, f, 3, localRes, stream);
}

struct region {
  const char* name;
  const void* p;
  size_t bytes;
};

/* ---------------------------------------------------------------------- */
/* Dispatch                                                                 */

static vcollResult_t checkDispatch(const char* op, vcollMoeWorkspace_t ws, const size_t* counts,
                                   const vcollMoeLocal_t* in, const vcollMoeTokens_t* out, size_t* total,
                                   size_t* mine, size_t* displ) {
  VCOLL_CHECK_RES(checkCounts(op, ws, counts, total, mine, displ));
  vcollComm_t comm = ws->comm;
  const vcollMoeConfig_t* c = &ws->cfg;
  const int fp4 = c->format == vcollMoeFp4, topk = c->routing == vcollMoeRoutingTopk;
  const size_t N = *total, n = *mine, H = c->hidden, rw = routingWidth(c);
  if (in == NULL) return VCOLL_ARGERR(comm, op, "in argument is NULL");
  if (out == NULL) return VCOLL_ARGERR(comm, op, "out argument is NULL");
  char whose[64];
  snprintf(whose, sizeof(whose), "this rank (%d) has", comm->rank);
  VCOLL_CHECK_RES(checkPtr(comm, op, "in->hidden", in->hidden, n, whose, 2));
  if (topk) {
    VCOLL_CHECK_RES(checkPtr(comm, op, "in->topkIds", in->topkIds, n, whose, 4));
    VCOLL_CHECK_RES(checkPtr(comm, op, "in->topkWeights", in->topkWeights, n, whose, 4));
  } else {
    VCOLL_CHECK_RES(checkPtr(comm, op, "in->logits", in->logits, n, whose, 4));
  }
  const int given = fp4 && c->scale == vcollMoeScaleGiven;
  if (given) VCOLL_CHECK_RES(checkPtr(comm, op, "in->globalScale", in->globalScale, N, "the ranks gather", 4));

  /* Outputs: present, aligned, disjoint. */
  struct region o[7];
  int no = 0;
  o[no++] = (struct region){"out->hidden", out->hidden, N * hiddenRowBytes(c)};
  if (fp4) {
    o[no++] = (struct region){"out->scales", out->scales, N * (H / 16)};
    o[no++] = (struct region){"out->globalScale", out->globalScale, N ? sizeof(float) : 0};
    if (c->swizzledScales)
      o[no++] = (struct region){"out->scalesSwizzled", out->scalesSwizzled,
                                N ? vcollNvfp4ScaleBytes(N, H, vcollScaleSwizzled128x4) : 0};
  }
  if (topk) {
    o[no++] = (struct region){"out->topkIds", out->topkIds, N * rw * 4};
    o[no++] = (struct region){"out->topkWeights", out->topkWeights, N * rw * 4};
  } else {
    o[no++] = (struct region){"out->logits", out->logits, N * rw * 4};
  }
  for (int i = 0; i < no; i++) {
    size_t align = strstr(o[i].name, "scales") ? 1 : strstr(o[i].name, "hidden") ? (fp4 ? 1 : 2) : 4;
    VCOLL_CHECK_RES(checkPtr(comm, op, o[i].name, o[i].p, N, "the ranks gather", align));
    for (int j = 0; j < i; j++)
      if (vcollOverlaps(o[i].p, o[i].bytes, o[j].p, o[j].bytes))
        return VCOLL_ARGERR(comm, op, "%s overlaps %s", o[i].name, o[j].name);
  }

  /* Inputs: disjoint from every output, except an input already at this
   * rank's rows of its own output (in place; never for the quantized hidden). */
  struct region inr[4];
  const void* slot[4];
  int ni = 0;
  inr[ni] = (struct region){"in->hidden", in->hidden, n * H * 2};
  slot[ni++] = fp4 ? NULL : (const char*)out->hidden + *displ * H * 2;
  if (topk) {
    inr[ni] = (struct region){"in->topkIds", in->topkIds, n * rw * 4};
    slot[ni++] = (const char*)out->topkIds + *displ * rw * 4;
    inr[ni] = (struct region){"in->topkWeights", in->topkWeights, n * rw * 4};
    slot[ni++] = (const char*)out->topkWeights + *displ * rw * 4;
  } else {
    inr[ni] = (struct region){"in->logits", in->logits, n * rw * 4};
    slot[ni++] = (const char*)out->logits + *displ * rw * 4;
  }
  if (given) {
    inr[ni] = (struct region){"in->globalScale", in->globalScale, N ? sizeof(float) : 0};
    slot[ni++] = out->globalScale;
  }
  for (int i = 0; i < ni; i++) {
    if (slot[i] != NULL && inr[i].p == slot[i]) continue; /* in place: inside its own output only */
    for (int j = 0; j < no; j++)
      if (vcollOverlaps(inr[i].p, inr[i].bytes, o[j].p, o[j].bytes))
        return VCOLL_ARGERR(comm, op, "%s overlaps %s%s", inr[i].name, o[j].name,
                            slot[i] ? " (in place needs it exactly at this rank's rows)" : "");
  }
  /* The quantization reads the given scale beside the tokens (the check of
   * the quantize kernel, which runs inside the gather, would fail on this
   * rank alone). */
  if (given && vcollOverlaps(in->globalScale, sizeof(float), in->hidden, n * H * 2))
    return VCOLL_ARGERR(comm, op, "in->globalScale overlaps in->hidden");
  return vcollSuccess;
}

/* Largest |x| over the finite values of x[n] bf16, as float bits (0 if none). */
static uint32_t hostAmaxBits(const uint16_t* x, size_t n) {
  float m = 0.0f;
  for (size_t i = 0; i < n; i++) {
    const float a = fabsf(vcollBf16ToF32(x[i]));
    if (a <= FLT_MAX && a > m) m = a;
  }
  return vcollF32Bits(m);
}

/* All ranks' amax bits in ws->amaxAll, gathered (one uint32 per rank)
 * without a host round trip. The device derives the computed global scale
 * from them inside the quantize launch (fp4Producer.amaxBits); the host
 * backend writes it to *gs here. */
static vcollResult_t gatherAmax(vcollMoeWorkspace_t ws, const char* op, const void* x, size_t elems, float* gs,
                                cudaStream_t stream) {
  vcollComm_t comm = ws->comm;
  if (ws->onDevice) VCOLL_CHECK_RES(vcollMoeAmaxBf16(comm, op, x, elems, ws->amaxAcc, ws->amaxLocal, stream));
  else *ws->amaxLocal = hostAmaxBits(x, elems);
  vcollTensor_t t = {ws->amaxLocal, ws->amaxAll, 1, vcollUint32};
  VCOLL_CHECK_RES(vcollAllGatherV(&t, 1, ws->ones, comm, stream));
  if (ws->onDevice) return vcollSuccess;
  uint32_t m = 0;
  for (int r = 0; r < comm->nranks; r++) m = ws->amaxAll[r] > m ? ws->amaxAll[r] : m;
  *gs = vcollNvfp4GsRef(vcollBitsF32(m));
  return vcollSuccess;
}

VCOLL_INTERNAL_API uint32_t* vcollMoeAmaxScratch(struct vcollMoeWorkspace* ws) {
  return ws && ws->onDevice ? ws->amaxAcc : NULL;
}

/* The FP4 dispatch's producer of this rank's rows on the device (see
 * struct vcollAgvCall): one quantize launch writes the payload and scales
 * to dst[0] and dst[1] and copies the routing rows to dst[2..] and a given
 * global scale to the output (or derives a computed one from the gathered
 * amax and writes it there: every rank launches it, tokens or not). Inside the padded algorithms the quantize and
 * the pack copy are then one kernel, so FP4 issues no more kernels than
 * bf16; elsewhere dst[0], dst[1] are this rank's rows of the outputs and
 * the routing rows stay where they are (dst[i] == src, no copy). */
struct fp4Producer {
  const void* hidden;   /* this rank's bf16 tokens */
  size_t n, H;
  float* gsRead;        /* the global scale the quantization reads (or, with amaxBits, writes) */
  const float* gsCopy;  /* given scale to copy to gsOut, or NULL */
  float* gsOut;
  const uint32_t* amaxBits; /* computed scale: all ranks' amax bits (nranks) */
  int nranks;
  uint32_t* amaxAcc;        /* the amax kernel's scratch, zeroed by the launch */
  const void* routing[2];
  size_t routingBytes[2];
  int nrouting;
};

static vcollResult_t produceFp4(void* vctx, void* const* dst, cudaStream_t stream) {
  const struct fp4Producer* p = vctx;
  vcollNvfp4SideCopy copies[VCOLL_NVFP4_MAX_SIDE_COPIES];
  int nc = 0;
  for (int i = 0; i < p->nrouting; i++) copies[nc++] = (vcollNvfp4SideCopy){p->routing[i], dst[2 + i], p->routingBytes[i]};
  if (p->gsCopy) copies[nc++] = (vcollNvfp4SideCopy){p->gsCopy, p->gsOut, sizeof(float)};
  return vcollNvfp4QuantizeCopies("vcollMoeDispatch", p->hidden, vcollBfloat16, p->n, p->H, p->gsRead, 0, dst[0],
                                  dst[1], vcollScaleLinear, copies, nc, p->amaxBits, p->nranks, p->amaxAcc, stream);
}

VCOLL_API vcollResult_t vcollMoeDispatch(vcollMoeWorkspace_t ws, const size_t* counts, const vcollMoeLocal_t* in,
                                         const vcollMoeTokens_t* out, cudaStream_t stream) {
  static const char* op = "vcollMoeDispatch";
  size_t N = 0, n = 0, displ = 0;
  if (ws == NULL) return VCOLL_ARGERR(NULL, op, "ws argument is NULL");
  VCOLL_CHECK_RES(agree(ws, op, counts, checkDispatch(op, ws, counts, in, out, &N, &n, &displ), 0, stream));
  if (N == 0) return vcollSuccess;
  const vcollMoeConfig_t* c = &ws->cfg;
  const size_t H = c->hidden, rw = routingWidth(c);
  vcollTensor_t t[4];
  int nt = 0;
  struct fp4Producer prod;
  int produced = 0;
  if (c->format == vcollMoeFp4) {
    /* This rank's rows of the outputs are the send buffers (in place). */
    uint8_t* payload = (uint8_t*)out->hidden + displ * (H / 2);
    uint8_t* scales = (uint8_t*)out->scales + displ * (H / 16);
    if (c->scale == vcollMoeScaleComputed)
      VCOLL_CHECK_RES(gatherAmax(ws, op, in->hidden, n * H, out->globalScale, stream));
    if (ws->onDevice) {
      /* Quantized inside the gather (produceFp4). */
      memset(&prod, 0, sizeof(prod));
      prod.hidden = in->hidden;
      prod.n = n;
      prod.H = H;
      if (c->scale == vcollMoeScaleComputed) {
        prod.gsRead = out->globalScale;
        prod.amaxBits = ws->amaxAll;
        prod.nranks = ws->comm->nranks;
        prod.amaxAcc = ws->amaxAcc;
      } else {
        prod.gsRead = (float*)in->globalScale;
        if (in->globalScale != out->globalScale) prod.gsCopy = in->globalScale;
        prod.gsOut = out->globalScale;
      }
      produced = 1;
    } else {
      if (c->scale == vcollMoeScaleGiven) *out->globalScale = *in->globalScale;
      if (n > 0)
        VCOLL_CHECK_RES(vcollNvfp4QuantizeRef(in->hidden, vcollBfloat16, n, H, out->globalScale, 0, payload, scales,
                                              vcollScaleLinear));
    }
    t[nt++] = (vcollTensor_t){payload, out->hidden, H / 2, vcollUint8};
    t[nt++] = (vcollTensor_t){scales, out->scales, H / 16, vcollUint8};
  } else {
    t[nt++] = (vcollTensor_t){in->hidden, out->hidden, H, vcollBfloat16};
  }
  if (c->routing == vcollMoeRoutingTopk) {
    t[nt++] = (vcollTensor_t){in->topkIds, out->topkIds, rw, vcollInt32};
    t[nt++] = (vcollTensor_t){in->topkWeights, out->topkWeights, rw, vcollFloat32};
  } else {
    t[nt++] = (vcollTensor_t){in->logits, out->logits, rw, vcollFloat32};
  }
  if (produced) {
    for (int i = 2; i < nt; i++) {
      prod.routing[prod.nrouting] = t[i].sendbuff;
      prod.routingBytes[prod.nrouting++] = n * rw * 4;
    }
    VCOLL_CHECK_RES(vcollAllGatherVProduced(t, nt, counts, ws->comm, stream, produceFp4, &prod));
  } else {
    VCOLL_CHECK_RES(vcollAllGatherV(t, nt, counts, ws->comm, stream));
  }
  if (c->format == vcollMoeFp4 && c->swizzledScales) {
    if (ws->onDevice)
      VCOLL_CHECK_RES(vcollNvfp4ConvertScales(out->scales, vcollScaleLinear, out->scalesSwizzled,
                                              vcollScaleSwizzled128x4, N, H, stream));
    else
      VCOLL_CHECK_RES(vcollNvfp4ConvertScalesRef(out->scales, vcollScaleLinear, out->scalesSwizzled,
                                                 vcollScaleSwizzled128x4, N, H));
  }
  return vcollSuccess;
}

/* ---------------------------------------------------------------------- */
/* Combine                                                                  */

static vcollResult_t checkCombine(const char* op, vcollMoeWorkspace_t ws, const size_t* counts, const void* partials,
                                  const void* out, size_t* total, size_t* mine, size_t* displ) {
  VCOLL_CHECK_RES(checkCounts(op, ws, counts, total, mine, displ));
  vcollComm_t comm = ws->comm;
  const size_t rowBytes = ws->cfg.hidden * 2;
  char whose[64];
  snprintf(whose, sizeof(whose), "this rank (%d) receives", comm->rank);
  VCOLL_CHECK_RES(checkPtr(comm, op, "partials", partials, *total, "the ranks reduce", 2));
  VCOLL_CHECK_RES(checkPtr(comm, op, "out", out, *mine, whose, 2));
  const void* slot = (const char*)partials + *displ * rowBytes;
  if (out != slot && vcollOverlaps(out, *mine * rowBytes, partials, *total * rowBytes))
    return VCOLL_ARGERR(comm, op, "out overlaps partials but is not this rank's rows (in place needs out == "
                        "partials + %zu bytes)", *displ * rowBytes);
  return vcollSuccess;
}

/* VCOLL_MOE_COMBINE32 for an fp32 combine: *p2p = 1 where the p2p way runs
 * (NCCL backend, 2 to VCOLL_REDUCE_MAX_SRCS ranks; one rank would be a
 * copy, which keeps NaN payloads); an unknown value is vcollInvalidUsage. */
static vcollResult_t combine32Mode(vcollMoeWorkspace_t ws, const char* op, int* p2p) {
  const char* mode = vcollParamMoeCombine32();
  *p2p = 0;
  if (mode == NULL || strcmp(mode, "widen") == 0) return vcollSuccess;
  if (strcmp(mode, "p2p") != 0)
    return vcollSetError(ws->comm, vcollInvalidUsage, "%s : VCOLL_MOE_COMBINE32=%s (must be widen or p2p)", op,
                         mode);
  *p2p = ws->onDevice && ws->comm->nranks > 1 && ws->comm->nranks <= VCOLL_REDUCE_MAX_SRCS;
  return vcollSuccess;
}

VCOLL_API vcollResult_t vcollMoeCombine(vcollMoeWorkspace_t ws, const size_t* counts, const void* partials, void* out,
                                        cudaStream_t stream) {
  static const char* op = "vcollMoeCombine";
  size_t N = 0, n = 0, displ = 0;
  if (ws == NULL) return VCOLL_ARGERR(NULL, op, "ws argument is NULL");
  vcollResult_t local = checkCombine(op, ws, counts, partials, out, &N, &n, &displ);
  int p2p = 0;
  if (local == vcollSuccess && ws->cfg.accum == vcollMoeAccumFp32) local = combine32Mode(ws, op, &p2p);
  /* The mode is part of the agreement: ranks that would run different collectives fail together. */
  VCOLL_CHECK_RES(agree(ws, op, counts, local, (uint64_t)p2p, stream));
  if (N == 0) return vcollSuccess;
  const size_t H = ws->cfg.hidden;
  if (ws->cfg.accum == vcollMoeAccumBf16)
    return vcollReduceScatterV(partials, out, counts, H, vcollBfloat16, vcollSum, ws->comm, stream);

  /* fp32, VCOLL_MOE_COMBINE32=p2p: the bf16 partials travel as they are
   * (half the bytes of fp32) through the p2p reducescatterv, whose one
   * reduction kernel sums every rank's rows in fp32 (ranks in order) and
   * rounds once: fp32 accumulation with one rounding, as widen, without the
   * widening, the fp32 reduce-scatter and the rounding kernel (widen's sum
   * runs in NCCL's order, so the last bit can differ where partial sums are
   * inexact). Where its staging buffer cannot be had (under graph capture,
   * where it cannot grow; beyond the staging limit or the device memory,
   * vcollCommSetStagingLimit), the widen path runs instead (the same
   * decision on every rank: the staging size and its failures only change
   * collectively). */
  if (p2p) {
    size_t maxRows = 0, need = SIZE_MAX;
    const char* why = "its size overflows";
    for (int r = 0; r < ws->comm->nranks; r++) maxRows = counts[r] > maxRows ? counts[r] : maxRows;
    if (!vcollRsvP2pStagingBytes(ws->comm->nranks, maxRows, H * 2, &need) ||
        !vcollStagingCanHave(ws->comm, vcollStagingPlain, need, stream, &why)) {
      VCOLL_INFO("%s: VCOLL_MOE_COMBINE32=p2p: %s; widen", op, why);
      p2p = 0;
    }
  }
  if (p2p) {
    const uint64_t failures = vcollStagingGrowFailures(ws->comm);
    const vcollResult_t res =
        vcollReduceScatterVAlgo(partials, out, counts, H, vcollBfloat16, vcollSum, ws->comm, stream, "p2p");
    /* Its staging could not grow (on every rank alike, nothing enqueued): widen. */
    if (res == vcollSuccess || vcollStagingGrowFailures(ws->comm) == failures) return res;
    VCOLL_WARN("%s: VCOLL_MOE_COMBINE32=p2p: %s; widen instead", op, vcollGetLastError(ws->comm));
  }

  /* fp32 (widen): widen all N rows, reduce-scatter in place in the fp32 buffer, round this rank's rows once. */
  float* mineF32 = ws->f32 + displ * H;
  if (ws->onDevice) {
    VCOLL_CHECK_RES(vcollMoeBf16ToF32(ws->comm, op, partials, ws->f32, N * H, stream));
  } else {
    const uint16_t* p = partials;
    for (size_t i = 0; i < N * H; i++) ws->f32[i] = vcollBf16ToF32(p[i]);
  }
  VCOLL_CHECK_RES(vcollReduceScatterV(ws->f32, mineF32, counts, H, vcollFloat32, vcollSum, ws->comm, stream));
  if (ws->onDevice) return vcollMoeF32ToBf16(ws->comm, op, mineF32, out, n * H, stream);
  uint16_t* o = out;
  for (size_t i = 0; i < n * H; i++) /* NaN as the device kernel writes it (0x7fff) */
    o[i] = mineF32[i] != mineF32[i] ? 0x7fff : vcollF32ToBf16(mineF32[i]);
  return vcollSuccess;
}

/* ---------------------------------------------------------------------- */
/* Token counts                                                             */

VCOLL_API vcollResult_t vcollMoeGatherCounts(vcollComm_t comm, size_t localCount, size_t* counts,
                                             cudaStream_t stream) {
  return vcollGatherCountsAs("vcollMoeGatherCounts", comm, localCount, counts, stream);
}
